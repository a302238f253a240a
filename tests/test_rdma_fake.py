"""RDMA pushes over the in-memory FAKE verbs (model_swap/rdma_fake.py), on every commit.

Everything but the verbs is real: the store's RdmaTransport, the TCP control
channel, the worker's RdmaListener writing through a real ModelCache, the
store and worker apps. The fake joins the two queue pairs in memory and
injects what hardware does when it fails: a lost transport ACK (the data
arrived, the completion says it did not), a dropped SEND, and exceptions of
unexpected types from any verb (a pyverbs with another API).
"""

from __future__ import annotations

import logging
import resource

import pytest

from inference_worker.rdma_listener import RdmaListener
from model_store_server.transport.factory import FallbackTransport
from model_store_server.transport.http import HttpTransport
from model_store_server.transport.rdma import RdmaPushFailed, RdmaTransport
from model_store_server.worker_client import WorkerClient
from model_swap.digest import file_digest
from model_swap.rdma_fake import FakeFabric, FakeFaults
from model_swap.rdma_protocol import (
    Abort,
    Accept,
    ControlChannel,
    Endpoint,
    Offer,
    RdmaUnavailable,
    Refuse,
    encode,
    sign_offer,
)
from model_swap.rdma_verbs import check_memlock
from tests.conftest import (
    A,
    B,
    ask,
    assert_agree,
    files_on_disk,
    store_status,
    wait_for,
    worker_status,
)

CHUNK = 64 * 1024  # the 473,600-byte tiny model takes 8 chunks: two laps of a 4-slot ring


@pytest.fixture
def fabric() -> FakeFabric:
    return FakeFabric()


@pytest.fixture
def listen(worker, fabric, request):
    """Start an RdmaListener on ``worker``'s cache over the fake fabric; returns it."""

    def start(
        faults: FakeFaults | None = None,
        gid_type: str = "roce-v2",
        max_offers: int = 2,
        token: str = "",
    ):
        listener = RdmaListener(
            worker.app.extensions["model_cache"],
            "127.0.0.1",
            0,
            token=token,
            endpoints=fabric.endpoints(gid_type=gid_type, faults=faults),
            max_offers=max_offers,
        ).start()
        request.addfinalizer(listener.stop)
        return listener

    return start


def client_for(worker) -> WorkerClient:
    return WorkerClient(worker.url, connect_timeout=5, read_timeout=30)


def rdma(worker, listener, fabric, faults=None, gid_type="roce-v2", read_timeout=30.0, token=""):
    return RdmaTransport(
        client_for(worker),
        "127.0.0.1",
        listener.port,
        connect_timeout=5,
        read_timeout=read_timeout,
        chunk_bytes=CHUNK,
        token=token,
        endpoints=fabric.endpoints(gid_type=gid_type, faults=faults),
    )


def received(worker) -> dict:
    return worker_status(worker)["received"]


def nothing_kept(worker) -> bool:
    """The worker removes its temporary file when it reads the store's abort: wait for it."""
    return wait_for(lambda: files_on_disk(worker) == [], timeout=10)


def test_a_push_wraps_the_ring_and_lands_verified(worker, listen, fabric, models_dir, caplog):
    transport = rdma(worker, listen(), fabric)
    path = models_dir / B
    with caplog.at_level(logging.INFO):
        result = transport.push(B, path, digest=file_digest(path), load=False)
        # The worker logs once the store has hung up.
        assert wait_for(lambda: f"received {B}: {path.stat().st_size} bytes in" in caplog.text)
    assert (result.transport, result.nbytes) == ("rdma", path.stat().st_size)
    assert files_on_disk(worker) == [B]
    cache = worker.app.extensions["model_cache"]
    assert file_digest(cache.path(B)) == file_digest(path)
    assert received(worker) == {"uploads": 1, "bytes": path.stat().st_size}
    assert "over rdma" in caplog.text
    assert wait_for(lambda: all(endpoint.closed for endpoint in fabric.created))
    assert len(fabric.created) == 2


def test_the_store_serves_a_model_pushed_over_the_fake(worker, listen, fabric, start_store):
    store = start_store(worker)
    store.app.extensions["swap_service"].fleet.first().executor.transport = rdma(
        worker, listen(), fabric
    )
    r = ask(store, A)
    assert r.status_code == 200, r.text
    assert (r.headers["X-Transport"], r.headers["X-Model"]) == ("rdma", A)
    assert r.text
    assert_agree(store, worker)


def test_a_lost_transport_ack_after_the_last_chunk_is_not_a_failure(
    worker, listen, fabric, models_dir, caplog
):
    """The worker acks size and digest; the store's last send then completes with an error.

    The ack is final: the push succeeds once, with no fallback and no second transfer."""
    path = models_dir / A
    last = -(-path.stat().st_size // CHUNK) - 1
    primary = rdma(worker, listen(), fabric, FakeFaults(lost_ack_sends={last}))
    transport = FallbackTransport(primary, HttpTransport(client_for(worker)))
    with caplog.at_level(logging.INFO):
        result = transport.push(A, path, digest=file_digest(path), load=False)
    assert result.transport == "rdma"
    assert "the worker acknowledged the whole file despite" in caplog.text
    assert "falling back" not in caplog.text
    assert received(worker) == {"uploads": 1, "bytes": path.stat().st_size}
    assert files_on_disk(worker) == [A]


@pytest.mark.parametrize(
    "faults",
    [
        FakeFaults(lost_ack_sends={2}),  # the queue pair errors out mid-transfer
        FakeFaults(dropped_sends={3}),  # a chunk never arrives
    ],
    ids=["lost-ack-mid-transfer", "dropped-send"],
)
def test_a_completion_error_mid_transfer_keeps_nothing_and_falls_back_once(
    worker, listen, fabric, models_dir, faults, caplog
):
    path = models_dir / A
    primary = rdma(worker, listen(), fabric, faults)
    with pytest.raises(RdmaPushFailed, match="completed with IBV_WC_RETRY_EXC_ERR"):
        primary.push(A, path, digest=file_digest(path), load=False)
    assert nothing_kept(worker)  # no model file, no temporary file
    assert received(worker)["uploads"] == 0
    transport = FallbackTransport(primary, HttpTransport(client_for(worker)))
    with caplog.at_level(logging.INFO):
        result = transport.push(A, path, digest=file_digest(path), load=False)
    assert result.transport == "http"
    assert "falling back to http" in caplog.text
    assert received(worker)["uploads"] == 1
    assert files_on_disk(worker) == [A]


@pytest.mark.parametrize("verb", ["__init__", "local", "connect", "post_send", "poll"])
@pytest.mark.parametrize("error", [TypeError("an argument changed"), AttributeError("no qp_num")])
def test_any_exception_from_the_stores_verbs_is_an_rdma_failure(
    worker, listen, fabric, models_dir, verb, error
):
    path = models_dir / A
    transport = rdma(worker, listen(), fabric, FakeFaults(raises={verb: error}))
    with pytest.raises(RdmaPushFailed) as failure:
        transport.push(A, path, digest=file_digest(path), load=False)
    assert failure.value.type == "rdma_failed"
    # The client learns the kind of failure, never the exception's own text (it is logged).
    assert f"unexpected {type(error).__name__}" in failure.value.message
    assert str(error) not in failure.value.message
    assert nothing_kept(worker)


@pytest.mark.parametrize("verb", ["__init__", "local", "connect", "post_recv", "poll"])
def test_any_exception_from_the_workers_verbs_is_a_refusal_or_a_nack(
    worker, listen, fabric, models_dir, verb
):
    path = models_dir / A
    listener = listen(FakeFaults(raises={verb: TypeError("pyverbs changed")}))
    transport = rdma(worker, listener, fabric)
    with pytest.raises(RdmaPushFailed, match="TypeError"):
        transport.push(A, path, digest=file_digest(path), load=False)
    assert nothing_kept(worker)
    # The listener survives and serves the next push.
    healthy = RdmaListener(
        worker.app.extensions["model_cache"], "127.0.0.1", 0, endpoints=fabric.endpoints()
    ).start()
    try:
        rdma(worker, healthy, fabric).push(A, path, digest=file_digest(path), load=False)
    finally:
        healthy.stop()
    assert files_on_disk(worker) == [A]


def test_without_fallback_the_store_answers_502_rdma_failed(worker, listen, fabric, start_store):
    store = start_store(worker)
    store.app.extensions["swap_service"].fleet.first().executor.transport = rdma(
        worker, listen(), fabric, FakeFaults(raises={"post_send": TypeError("bad SGE")})
    )
    r = ask(store, A)
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["type"] == "rdma_failed"
    assert "unexpected TypeError" in error["message"] and "bad SGE" not in error["message"]
    assert store_status(store)["cached"] == []
    assert nothing_kept(worker)


def test_with_fallback_the_store_serves_over_http(worker, listen, fabric, start_store):
    store = start_store(worker)
    primary = rdma(worker, listen(), fabric, FakeFaults(raises={"poll": AttributeError("wc")}))
    http = HttpTransport(client_for(worker))
    executor = store.app.extensions["swap_service"].fleet.first().executor
    executor.transport = FallbackTransport(primary, http)
    r = ask(store, A)
    assert r.status_code == 200, r.text
    assert r.headers["X-Transport"] == "http"
    assert_agree(store, worker)


def test_gid_types_that_differ_are_refused(worker, listen, fabric, models_dir):
    path = models_dir / A
    transport = rdma(worker, listen(gid_type="roce-v2"), fabric, gid_type="roce-v1")
    with pytest.raises(RdmaPushFailed, match="GID types differ: this side uses roce-v2"):
        transport.push(A, path, digest=file_digest(path), load=False)
    assert nothing_kept(worker)


def test_offers_beyond_the_bound_are_refused(worker, listen, fabric, models_dir):
    listener = listen(max_offers=1)
    path = models_dir / A
    holder = fabric.endpoints()(4, CHUNK)
    offer = Offer(A, path.stat().st_size, file_digest(path), CHUNK, holder.local())
    with ControlChannel.connect("127.0.0.1", listener.port, connect_timeout=5, timeout=10) as first:
        first.send(offer)  # accepted, then holds the only slot without sending
        assert isinstance(first.receive(), Accept)
        with pytest.raises(RdmaPushFailed, match="WORKER_RDMA_MAX_OFFERS"):
            rdma(worker, listener, fabric).push(A, path, digest=file_digest(path), load=False)
        first.send(Abort("done holding"))
        first.receive()  # the nack for the aborted push

    def pushed() -> bool:
        try:
            rdma(worker, listener, fabric).push(A, path, digest=file_digest(path), load=False)
        except RdmaPushFailed as err:  # the slot is freed once the first ring is let go,
            assert "WORKER_RDMA_MAX_OFFERS" in str(err)  # just after the store hangs up
            return False
        return True

    assert wait_for(pushed, timeout=10, interval=0.05)
    assert files_on_disk(worker) == [A]


def test_a_too_small_memlock_limit_is_named_with_the_fix():
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, hard))
    try:
        with pytest.raises(RdmaUnavailable) as err:
            check_memlock(8 * 1024 * 1024, "the RDMA listener")
        check_memlock(32 * 1024, "a small ring")  # fits: no error
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))
    message = str(err.value)
    assert "RLIMIT_MEMLOCK is 64 KiB, but the RDMA listener must pin 8192 KiB" in message
    assert "ulimit -l unlimited" in message and "LimitMEMLOCK=infinity" in message


def test_the_fake_is_named_as_a_fake(fabric):
    usable, where = fabric.endpoints().check_start(1 << 20, "a test")
    assert usable and "FAKE" in where
    endpoint = fabric.endpoints(gid_type="ib")(4, CHUNK)
    assert isinstance(endpoint.local(), Endpoint) and endpoint.local().gid_type == "ib"
    endpoint.close()


# -- WORKER_TOKEN over the handshake (issue 32) ------------------------------------------

TOKEN = "worker-secret-0123456789"


def test_with_the_token_on_both_sides_a_signed_push_lands(worker, listen, fabric, models_dir):
    transport = rdma(worker, listen(token=TOKEN), fabric, token=TOKEN)
    path = models_dir / B
    result = transport.push(B, path, digest=file_digest(path), load=False)
    assert (result.transport, result.nbytes) == ("rdma", path.stat().st_size)
    assert files_on_disk(worker) == [B]


@pytest.mark.parametrize("store_token", ["", "another-secret-0123456789"])
def test_a_worker_with_the_token_takes_no_push_from_a_store_without_it(
    worker, listen, fabric, models_dir, store_token, caplog
):
    transport = rdma(worker, listen(token=TOKEN), fabric, token=store_token)
    path = models_dir / B
    with pytest.raises(RdmaPushFailed, match="refused the push: unauthorized"):
        transport.push(B, path, digest=file_digest(path), load=False)
    assert files_on_disk(worker) == []
    assert received(worker) == {"uploads": 0, "bytes": 0}
    # Refused at the offer: the worker never set up a queue pair for it.
    assert len(fabric.created) == 1  # the store's
    assert "refused an RDMA push" in caplog.text


def test_a_listener_without_the_token_is_sent_no_byte(worker, listen, fabric, models_dir):
    """An impostor's listener (no WORKER_TOKEN) accepts anything: the store sends it
    nothing, because its accept proves nothing."""
    transport = rdma(worker, listen(token=""), fabric, token=TOKEN)
    path = models_dir / B
    with pytest.raises(RdmaPushFailed, match="did not prove it holds WORKER_TOKEN"):
        transport.push(B, path, digest=file_digest(path), load=False)
    assert all(endpoint._sends == 0 for endpoint in fabric.created)
    assert nothing_kept(worker)
    assert received(worker) == {"uploads": 0, "bytes": 0}


def test_a_replayed_signed_offer_is_refused(worker, listen, fabric, models_dir):
    """What crosses the control connection is a signature, never the token, and a
    recorded offer cannot be sent again."""
    listener = listen(token=TOKEN)
    path = models_dir / B
    store_side = fabric.endpoints()(4, CHUNK)
    offer = sign_offer(
        Offer(B, path.stat().st_size, file_digest(path), CHUNK, store_side.local()), TOKEN
    )
    assert TOKEN.encode() not in encode(offer)
    replies = []
    for _ in range(2):
        with ControlChannel.connect(
            "127.0.0.1", listener.port, connect_timeout=5, timeout=10
        ) as channel:
            channel.send(offer)
            replies.append(channel.receive())
            channel.send_quietly(Abort("test"))
    assert isinstance(replies[0], Accept) and replies[0].proof
    assert replies[1] == Refuse("unauthorized: replayed signature")
    store_side.close()
