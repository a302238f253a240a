"""The seed's entry point: ``cd model_store_server && uv run model_store_server.py``.

Same as the ``model-store-server`` command. The script's own directory is
taken off ``sys.path`` first, because this file's name would otherwise shadow
the ``model_store_server`` package it starts.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

from model_store_server.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
