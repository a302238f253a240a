"""The cache policy interface, kept at this path for existing imports.

The policies live in ``model_store_server/policies/``.
"""

from model_store_server.policies import *  # noqa: F403
from model_store_server.policies import __all__  # noqa: F401
