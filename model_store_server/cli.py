"""``model-store-server``: run the model store server in the foreground (settings from env)."""

from __future__ import annotations

import sys

from model_store_server.config import StoreSettings
from model_swap.service_main import run_service


def create_app(settings: StoreSettings):
    # Imported here: settings are checked (and an error reported) before the app
    # module and what it needs (llama.cpp, on the worker) are loaded.
    from model_store_server.app import create_app

    return create_app(settings)


def main() -> int:
    return run_service(
        "model-store-server",
        StoreSettings.from_env,
        create_app,
        lambda s: (s.store_host, s.store_port),
    )


if __name__ == "__main__":
    sys.exit(main())
