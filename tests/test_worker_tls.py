"""``dns+https`` discovery verifies each worker's certificate against the DNS name.

A discovered worker is dialled by address (``https://<IP>:port``), so a check against
the IP would accept any certificate for that address, or none. With a throwaway CA
(made here with ``openssl``) the store, trusting only that CA (SSL_CERT_FILE), takes
the worker whose certificate names ``workers.test`` and refuses one whose certificate
names another host, though that one holds WORKER_TOKEN too: it never receives a byte
of HTTP.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from model_swap.probes import free_port
from tests.conftest import A, ask, store_status
from tests.test_worker_trust import TOKEN, RecordingRelay


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.pem (a CA trusted by nothing else), and good/wrong .pem/.key: certificates it
    signed for ``workers.test`` and ``elsewhere.test``."""
    where = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=model-swap test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign",
        cwd=where,
    )  # fmt: skip
    for label, name in (("good", "workers.test"), ("wrong", "elsewhere.test")):
        (where / f"{label}.ext").write_text(f"subjectAltName=DNS:{name}\n")
        _openssl(
            "req", *ec, "-keyout", f"{label}.key", "-out", f"{label}.csr", "-subj", f"/CN={name}",
            cwd=where,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{label}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{label}.pem", "-days", "1",
            "-extfile", f"{label}.ext",
            cwd=where,
        )  # fmt: skip
    return where


class TLSRelay(RecordingRelay):
    """A TLS server on ``host:port`` with ``cert`` that relays the plain bytes it
    decrypts to ``target`` (and keeps them); a failed handshake relays nothing."""

    def __init__(self, host: str, port: int, target: tuple[str, int], cert: Path, key: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.handshakes_failed = 0
        super().__init__(host, port, target)

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_failed += 1
            with contextlib.suppress(OSError):
                raw.close()
            return
        upstream = socket.create_connection(self.target)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()


def test_dns_https_verifies_the_certificate_against_the_name(
    pki, start_worker, start_store, tmp_path, monkeypatch
):
    port = free_port()
    relays = []
    for host, label in (("127.0.0.2", "good"), ("127.0.0.3", "wrong")):
        worker = start_worker(model_cache_dir=tmp_path / label, worker_token=TOKEN)
        relays.append(
            TLSRelay(
                host, port, ("127.0.0.1", worker.port), pki / f"{label}.pem", pki / f"{label}.key"
            )
        )
    good, wrong = relays
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))  # the store trusts only this CA
    try:
        store = start_store(
            worker_url="",
            discovery=f"dns+https://workers.test:{port}",
            worker_token=TOKEN,
            resolver=lambda host, _port: (
                ["127.0.0.2", "127.0.0.3"] if host == "workers.test" else []
            ),
        )
        for _ in range(3):
            r = ask(store, A)
            assert r.status_code == 200, r.text
            assert r.headers["X-Worker"] == f"https://127.0.0.2:{port}"
        assert [w["id"] for w in store_status(store)["workers"]] == [f"127.0.0.2:{port}"]
        assert b"/identity" in bytes(good.carried) and b"/infer" in bytes(good.carried)
        # The certificate for another name: the handshake failed, no HTTP went through.
        assert wrong.handshakes_failed >= 1 and bytes(wrong.carried) == b""
    finally:
        for relay in relays:
            relay.close()
