"""A setting that only building the app can check stops start-up with one line, as at start."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from model_swap.probes import free_port


def test_settings_error_while_building_the_app_is_one_line_and_exit_code(tmp_path):
    script = textwrap.dedent(
        f"""
        from types import SimpleNamespace
        from model_swap.service_main import run_service
        from model_swap.settings import SettingsError

        settings = SimpleNamespace(
            log_level="INFO", server_threads=2, shutdown_grace_seconds=1, stream_write_timeout=5,
            header_timeout=10, keepalive_timeout=5, max_connections=64, min_upload_rate=1e6,
            min_download_rate=1000, max_queued_requests=256,
        )

        def create_app(_settings):
            raise SettingsError("RDMA_DEVICE: no such device (test)")

        address = ("127.0.0.1", {free_port()})
        raise SystemExit(run_service("demo", lambda: settings, create_app, lambda s: address))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "demo: invalid setting RDMA_DEVICE: no such device (test)" in result.stderr
    assert "Traceback" not in result.stderr
