"""Real RDMA verbs through pyverbs: port discovery and one RC queue pair with a buffer ring.

This is the only module that touches pyverbs, and it imports it lazily, inside
functions: the project installs, runs and passes its tests where pyverbs is
missing, and RDMA then reports ``RdmaUnavailable`` naming the cause.

``RcEndpoint`` owns, for one push: a device context on the first active port,
a protection domain, one completion queue, a small ring of equal registered
buffers (one memory region, reused chunk after chunk) and a reliable-connected
queue pair. The store posts SENDs from the ring; the worker posts RECVs into
its ring. Neither side is thread-safe: one session drives one endpoint.
"""

from __future__ import annotations

import ctypes
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from model_swap.rdma_protocol import Endpoint, RdmaUnavailable, TransferFailed

logger = logging.getLogger(__name__)

ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"
IPV4_MAPPED_PREFIX = "0000:0000:0000:0000:0000:ffff:"
# ibv_rc_pingpong's values: ~67 ms ACK timeout, 7 retries, infinite RNR retries.
ACK_TIMEOUT = 14
RETRY_COUNT = 7
RNR_RETRY = 7
MIN_RNR_TIMER = 12


def _pyverbs():
    """The pyverbs modules this file uses, or RdmaUnavailable naming why they cannot load."""
    try:
        import pyverbs.device as device
        import pyverbs.enums as enums
        from pyverbs.addr import GID, AHAttr, GlobalRoute
        from pyverbs.cq import CQ
        from pyverbs.mr import MR
        from pyverbs.pd import PD
        from pyverbs.pyverbs_error import PyverbsError
        from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
        from pyverbs.wr import SGE, RecvWR, SendWR
    except ModuleNotFoundError as err:
        raise RdmaUnavailable(
            f"pyverbs is not installed ({err}); see the README's RDMA transport section"
        ) from err
    except ImportError as err:  # e.g. PyPI's pyverbs next to an older rdma-core
        raise RdmaUnavailable(
            f"pyverbs could not be loaded ({err}); it must match the system's rdma-core"
        ) from err
    return _Verbs(
        device,
        enums,
        GID,
        AHAttr,
        GlobalRoute,
        CQ,
        MR,
        PD,
        PyverbsError,
        QP,
        QPAttr,
        QPCap,
        QPInitAttr,
        SGE,
        RecvWR,
        SendWR,
    )


@dataclass(frozen=True)
class _Verbs:
    device: object
    e: object
    GID: type
    AHAttr: type
    GlobalRoute: type
    CQ: type
    MR: type
    PD: type
    Error: type
    QP: type
    QPAttr: type
    QPCap: type
    QPInitAttr: type
    SGE: type
    RecvWR: type
    SendWR: type


@dataclass(frozen=True)
class Port:
    """An active RDMA port and the GID index this host is addressed by."""

    device: str
    port: int
    gid_index: int
    gid: str
    lid: int
    mtu: int
    link_layer: str

    def describe(self) -> str:
        where = f"{self.link_layer}, gid[{self.gid_index}] {self.gid}"
        return f"{self.device} port {self.port} ({where})"


def _gid_rank(v: _Verbs, ctx, port: int, index: int, gid: str, ethernet: bool) -> int:
    """Lower is better: on RoCE prefer RoCE v2 GIDs carrying an IPv4 address (routable)."""
    if not ethernet:
        return 0
    try:
        v2 = ctx.query_gid_type(port, index) == v.e.IBV_GID_TYPE_SYSFS_ROCE_V2
    except v.Error:
        v2 = False
    ipv4 = gid.startswith(IPV4_MAPPED_PREFIX)
    return (0 if v2 else 2) + (0 if ipv4 else 1)


def _choose_gid(v: _Verbs, ctx, port: int, attr) -> tuple[int, str]:
    ethernet = attr.link_layer == v.e.IBV_LINK_LAYER_ETHERNET
    candidates = []
    for index in range(attr.gid_tbl_len):
        try:
            gid = str(ctx.query_gid(port, index))
        except v.Error:
            continue
        if gid != ZERO_GID:
            candidates.append((_gid_rank(v, ctx, port, index, gid, ethernet), index, gid))
    if not candidates:
        if ethernet:
            raise RdmaUnavailable(f"port {port} has no usable GID (RoCE needs an IP address)")
        return 0, ZERO_GID  # InfiniBand without a GID table: LID routing only
    _, index, gid = min(candidates)
    return index, gid


def find_port() -> Port:
    """The first active port of the first RDMA device that has one.

    Raises RdmaUnavailable when pyverbs is missing, there is no device, or no
    port is active; the message says which.
    """
    v = _pyverbs()
    try:
        devices = v.device.get_device_list()
    except v.Error as err:
        raise RdmaUnavailable(f"no RDMA device: {err}") from err
    if not devices:
        raise RdmaUnavailable("no RDMA device: the device list is empty")
    seen = []
    for dev in devices:
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        try:
            with v.device.Context(name=name) as ctx:
                for port in range(1, ctx.query_device().phys_port_cnt + 1):
                    attr = ctx.query_port(port)
                    if attr.state != v.e.IBV_PORT_ACTIVE:
                        seen.append(f"{name} port {port} not active")
                        continue
                    try:
                        index, gid = _choose_gid(v, ctx, port, attr)
                    except RdmaUnavailable as err:
                        seen.append(f"{name}: {err}")
                        continue
                    ethernet = attr.link_layer == v.e.IBV_LINK_LAYER_ETHERNET
                    return Port(
                        device=name,
                        port=port,
                        gid_index=index,
                        gid=gid,
                        lid=attr.lid,
                        mtu=attr.active_mtu,
                        link_layer="ethernet" if ethernet else "infiniband",
                    )
        except v.Error as err:
            seen.append(f"{name}: {err}")
    raise RdmaUnavailable(f"no active RDMA port ({'; '.join(seen)})")


def _wc_status(v: _Verbs, status: int) -> str:
    names = {getattr(v.e, n): n for n in dir(v.e) if n == "IBV_WC_SUCCESS" or n.endswith("_ERR")}
    return names.get(status, f"status {status}")


class RcEndpoint:
    """One RC queue pair on the first active port, with ``slots`` buffers of ``chunk_bytes``.

    Construction raises RdmaUnavailable (nothing usable here) or TransferFailed
    (a verbs call failed); later calls raise TransferFailed. ``close`` releases
    everything and is safe to call twice. Not thread-safe.
    """

    def __init__(self, slots: int, chunk_bytes: int):
        self.slots = slots
        self.chunk_bytes = chunk_bytes
        self.port = find_port()
        self._v = v = _pyverbs()
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
        except self._v.Error as err:
            raise TransferFailed(f"could not {what} on {self.port.describe()}: {err}") from err

    def local(self) -> Endpoint:
        """This queue pair's address, for the peer."""
        return Endpoint(
            lid=self.port.lid,
            gid=self.port.gid,
            qpn=self._qp.qp_num,
            psn=self.psn,
            mtu=self.port.mtu,
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
        for resource in (self._qp, self._mr, self._cq, self._pd, self._ctx):
            if resource is not None:
                try:
                    resource.close()
                except Exception as err:  # noqa: BLE001 - teardown continues
                    logger.debug("closing %s failed: %s", type(resource).__name__, err)

    def __enter__(self) -> RcEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
