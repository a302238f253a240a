"""The seed's entry point: ``cd inference_worker && uv run inference_worker.py``.

Same as the ``inference-worker`` command. The script's own directory is taken
off ``sys.path`` first, because this file's name would otherwise shadow the
``inference_worker`` package it starts.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

from inference_worker.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
