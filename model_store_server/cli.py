"""``model-store-server``: run the model store server in the foreground (settings from env)."""

from __future__ import annotations

import sys

from model_store_server.config import StoreSettings
from model_swap.service_main import service_command

main = service_command(
    "model-store-server",
    StoreSettings.from_env,
    "model_store_server.app",
    lambda s: (s.store_host, s.store_port),
)


if __name__ == "__main__":
    sys.exit(main())
