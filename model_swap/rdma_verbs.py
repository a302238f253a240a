"""Real RDMA verbs through pyverbs: one RC queue pair with a buffer ring.

With ``rdma_ports`` (loading pyverbs, finding the port and GID, the memlock
check; re-exported here) this is the only code that touches pyverbs, and it
imports it lazily, inside functions: the project installs, runs and passes
its tests where pyverbs is missing, and RDMA then reports
``RdmaUnavailable`` naming the cause. It owns its failures: whatever pyverbs
raises (a ``PyverbsError``, or a ``TypeError`` or ``AttributeError`` from a
pyverbs release with another API) leaves this module as ``RdmaUnavailable``
or ``TransferFailed``.

``RcEndpoint`` (an ``model_swap.rdma_protocol.RdmaEndpoint``) owns, for one
push: a device context on the chosen port (``PortChoice``: RDMA_DEVICE,
RDMA_DEVICE_PORT, RDMA_GID_INDEX; by default the first active port and its
best GID), a protection domain, one completion queue, a small ring of equal
registered buffers (one memory region, reused chunk after chunk) and a
reliable-connected queue pair. The store posts SENDs from the ring; the worker
posts RECVs into its ring. Neither side is thread-safe: one session drives one
endpoint.
"""

from __future__ import annotations

import ctypes
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

from model_swap.rdma_ports import (
    ZERO_GID,
    Port,
    PortChoice,
    Verbs,
    check_memlock,
    find_port,
    load_pyverbs,
)
from model_swap.rdma_protocol import Endpoint, RdmaError, RdmaUnavailable, TransferFailed

__all__ = ["Port", "PortChoice", "RcEndpoint", "VerbsEndpoints", "check_memlock", "find_port"]

logger = logging.getLogger(__name__)

# ibv_rc_pingpong's values: ~67 ms ACK timeout, 7 retries, infinite RNR retries.
ACK_TIMEOUT = 14
RETRY_COUNT = 7
RNR_RETRY = 7
MIN_RNR_TIMER = 12


def _wc_status(v: Verbs, status: int) -> str:
    names = {getattr(v.e, n): n for n in dir(v.e) if n == "IBV_WC_SUCCESS" or n.endswith("_ERR")}
    return names.get(status, f"status {status}")


class VerbsEndpoints:
    """An ``EndpointFactory`` of real ``RcEndpoint``s on the port ``choice`` names."""

    def __init__(self, choice: PortChoice = PortChoice()):  # noqa: B008 - frozen
        self.choice = choice

    def __call__(self, slots: int, chunk_bytes: int) -> RcEndpoint:
        return RcEndpoint(slots, chunk_bytes, self.choice)

    def check_start(self, needed: int, what: str) -> tuple[bool, str]:
        """At a service's start: (True, the port pushes will use) or (False, why RDMA is not
        usable here). Raises RdmaUnavailable if it is usable but RLIMIT_MEMLOCK is below
        ``needed`` bytes (``what`` names who needs them)."""
        try:
            port = find_port(self.choice)
        except RdmaUnavailable as err:
            return False, str(err)
        check_memlock(needed, what)
        return True, port.describe()


class RcEndpoint:
    """One RC queue pair on the chosen port, with ``slots`` buffers of ``chunk_bytes``.

    Construction raises RdmaUnavailable (nothing usable here) or TransferFailed
    (a verbs call failed); later calls raise TransferFailed, whatever pyverbs
    raised. ``close`` releases everything and is safe to call twice. Not
    thread-safe.
    """

    def __init__(
        self,
        slots: int,
        chunk_bytes: int,
        choice: PortChoice = PortChoice(),  # noqa: B008 - frozen
    ):
        self.slots = slots
        self.chunk_bytes = chunk_bytes
        self.port = find_port(choice)
        self._v = v = load_pyverbs()
        self._closed = False
        self._ctx = self._pd = self._cq = self._mr = self._qp = None
        self._views: list[memoryview] = []
        self.psn = random.getrandbits(24)
        try:
            with self._verbs("set up the queue pair"):
                self._ctx = v.device.Context(name=self.port.device)
                self._pd = v.PD(self._ctx)
                self._cq = v.CQ(self._ctx, 2 * slots, None, None, 0)
                self._mr = v.MR(self._pd, slots * chunk_bytes, v.e.IBV_ACCESS_LOCAL_WRITE)
                ring = (ctypes.c_ubyte * (slots * chunk_bytes)).from_address(self._mr.buf)
                whole = memoryview(ring)
                self._views = [whole[i * chunk_bytes : (i + 1) * chunk_bytes] for i in range(slots)]
                cap = v.QPCap(max_send_wr=slots, max_recv_wr=slots, max_send_sge=1, max_recv_sge=1)
                init = v.QPInitAttr(qp_type=v.e.IBV_QPT_RC, scq=self._cq, rcq=self._cq, cap=cap)
                attr = v.QPAttr(port_num=self.port.port)
                attr.qp_access_flags = v.e.IBV_ACCESS_LOCAL_WRITE
                # With a QPAttr, pyverbs moves an RC queue pair to INIT.
                self._qp = v.QP(self._pd, init, attr)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _verbs(self, what: str) -> Iterator[None]:
        try:
            yield
        except RdmaError:
            raise
        except self._v.Error as err:
            raise TransferFailed(f"could not {what} on {self.port.describe()}: {err}") from err
        except Exception as err:  # e.g. TypeError from a pyverbs with another API
            raise TransferFailed(f"could not {what} on {self.port.describe()}: {err!r}") from err

    def local(self) -> Endpoint:
        """This queue pair's address, for the peer."""
        with self._verbs("read the queue pair number"):
            qpn = self._qp.qp_num
        return Endpoint(
            lid=self.port.lid,
            gid=self.port.gid,
            qpn=qpn,
            psn=self.psn,
            mtu=self.port.mtu,
            gid_type=self.port.gid_type,
        )

    def connect(self, remote: Endpoint) -> None:
        """Move the queue pair to RTR then RTS, connected to ``remote``."""
        v = self._v
        with self._verbs(f"connect to queue pair {remote.qpn}"):
            attr = v.QPAttr(port_num=self.port.port)
            attr.qp_access_flags = v.e.IBV_ACCESS_LOCAL_WRITE
            attr.path_mtu = min(self.port.mtu, remote.mtu)
            attr.dest_qp_num = remote.qpn
            attr.rq_psn = remote.psn
            attr.sq_psn = self.psn
            attr.max_dest_rd_atomic = 1
            attr.max_rd_atomic = 1
            attr.min_rnr_timer = MIN_RNR_TIMER
            attr.timeout = ACK_TIMEOUT
            attr.retry_cnt = RETRY_COUNT
            attr.rnr_retry = RNR_RETRY
            if remote.gid != ZERO_GID:
                route = v.GlobalRoute(dgid=v.GID(remote.gid), sgid_index=self.port.gid_index)
                attr.ah_attr = v.AHAttr(
                    port_num=self.port.port, is_global=1, gr=route, dlid=remote.lid
                )
            else:
                attr.ah_attr = v.AHAttr(port_num=self.port.port, is_global=0, dlid=remote.lid)
            self._qp.to_rts(attr)

    def view(self, slot: int) -> memoryview:
        """The registered buffer of ``slot`` (``chunk_bytes`` long), for reading or filling."""
        return self._views[slot]

    def post_recv(self, slot: int) -> None:
        v = self._v
        with self._verbs("post a receive"):
            sge = v.SGE(self._mr.buf + slot * self.chunk_bytes, self.chunk_bytes, self._mr.lkey)
            self._qp.post_recv(v.RecvWR(wr_id=slot, num_sge=1, sg=[sge]), None)

    def post_send(self, slot: int, length: int) -> None:
        v = self._v
        with self._verbs("post a send"):
            sge = v.SGE(self._mr.buf + slot * self.chunk_bytes, length, self._mr.lkey)
            wr = v.SendWR(
                wr_id=slot,
                opcode=v.e.IBV_WR_SEND,
                num_sge=1,
                sg=[sge],
                send_flags=v.e.IBV_SEND_SIGNALED,
            )
            self._qp.post_send(wr, None)

    def poll(self, wait: float = 0.0) -> list[tuple[int, int]]:
        """Completed work requests as (slot, byte_len), polling up to ``wait`` seconds.

        Returns an empty list if nothing completed in time; TransferFailed on
        a completion with an error status.
        """
        deadline = time.monotonic() + wait
        while True:
            with self._verbs("poll the completion queue"):
                count, completions = self._cq.poll(self.slots)
            if count:
                done = []
                with self._verbs("read the completions"):
                    for wc in completions[:count]:
                        if wc.status != self._v.e.IBV_WC_SUCCESS:
                            raise TransferFailed(
                                f"work request on slot {wc.wr_id} completed with "
                                f"{_wc_status(self._v, wc.status)} (vendor error {wc.vendor_err})"
                            )
                        done.append((wc.wr_id, wc.byte_len))
                return done
            if time.monotonic() >= deadline:
                return []
            time.sleep(0.0001)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for view in self._views:
            view.release()
        self._views = []
        for handle in (self._qp, self._mr, self._cq, self._pd, self._ctx):
            if handle is not None:
                try:
                    handle.close()
                except Exception as err:  # noqa: BLE001 - teardown continues
                    logger.debug("closing %s failed: %s", type(handle).__name__, err)

    def __enter__(self) -> RcEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
