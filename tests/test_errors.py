"""The error envelope for failures nobody anticipated: a 500 that names a request id
and never the exception's text, which goes to the log under the same id."""

from __future__ import annotations

import logging

from model_store_server.app import create_app
from model_store_server.config import StoreSettings

SECRET = "/srv/private/path-with-a-token-abc123"


def test_unexpected_error_is_a_500_with_a_request_id_and_no_exception_text(tmp_path, caplog):
    app = create_app(StoreSettings(models_dir=tmp_path, worker_url="http://127.0.0.1:9"))

    @app.get("/broken")
    def broken():
        raise RuntimeError(f"cannot open {SECRET}")

    with caplog.at_level(logging.ERROR, logger="model_swap.errors"):
        r = app.test_client().get("/broken")
    assert r.status_code == 500
    error = r.get_json()["error"]
    assert error["type"] == "internal_error"
    request_id = r.headers["X-Request-Id"]
    assert request_id in error["message"]
    assert SECRET not in r.get_data(as_text=True)
    assert "RuntimeError" not in r.get_data(as_text=True)
    logged = [record for record in caplog.records if request_id in record.getMessage()]
    assert len(logged) == 1
    assert SECRET in logged[0].exc_text
