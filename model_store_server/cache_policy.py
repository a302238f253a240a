"""The cache policy interface, kept at this path for existing imports.

The policies live in ``model_store_server/policies/``. Besides the package's
names, the few this module also held before the move stay reachable here.
"""

from model_store_server.policies import *  # noqa: F403
from model_store_server.policies import __all__  # noqa: F401
from model_store_server.policies.adaptive import EXPERTS  # noqa: F401
from model_store_server.policies.cost_model import CostModel  # noqa: F401
from model_store_server.policies.greedy_dual import DEFAULT_FREQ_HALF_LIFE_S  # noqa: F401
