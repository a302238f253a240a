"""Setting RDMA up at a service's start, the same way on both sides.

The worker's listener (WORKER_RDMA=1) and the store's transport
(TRANSPORT=rdma) each build their endpoint factory from the settings they
share (RDMA_DEVICE, RDMA_DEVICE_PORT, RDMA_GID_INDEX: ``endpoints_for``) and
check at start (``check_start``) which port pushes will use, or why RDMA is
not usable here, and that RLIMIT_MEMLOCK can pin the rings they need.
"""

from __future__ import annotations

import logging

from model_swap.rdma_channel import EndpointFactory
from model_swap.rdma_messages import RdmaUnavailable
from model_swap.rdma_verbs import PortChoice, VerbsEndpoints
from model_swap.settings import SettingsError

logger = logging.getLogger(__name__)


def endpoints_for(settings) -> VerbsEndpoints:
    """Real verbs endpoints on the port a service's settings name."""
    return VerbsEndpoints(PortChoice.from_settings(settings))


def check_start(
    endpoints: EndpointFactory,
    needed: int,
    who: str,
    setting: str,
    *,
    unusable: str,
    fallback: str = "",
) -> bool:
    """Log the port ``who`` will push over, or (a warning) why RDMA is not usable here
    and what follows (``unusable``); returns whether it is usable.

    Where RDMA is usable but RLIMIT_MEMLOCK cannot pin ``needed`` bytes: SettingsError
    naming ``setting``, or, with ``fallback`` (what happens instead), a warning.
    """
    try:
        usable, where = endpoints.check_start(needed, who)
    except RdmaUnavailable as err:
        if not fallback:
            raise SettingsError(f"{setting}: {err}") from err
        logger.warning("%s, but %s: %s", setting, fallback, err)
        return False
    if usable:
        logger.info("%s uses %s", who, where)
    else:
        logger.warning("%s, but RDMA is not usable here (%s): %s", setting, where, unusable)
    return usable
