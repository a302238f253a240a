"""Real RDMA verbs through pyverbs: port discovery and one RC queue pair with a buffer ring.

This is the only module that touches pyverbs, and it imports it lazily, inside
functions: the project installs, runs and passes its tests where pyverbs is
missing, and RDMA then reports ``RdmaUnavailable`` naming the cause. It owns
its failures: whatever pyverbs raises (a ``PyverbsError``, or a ``TypeError``
or ``AttributeError`` from a pyverbs release with another API) leaves this
module as ``RdmaUnavailable`` or ``TransferFailed``.

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
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from model_swap.rdma_protocol import Endpoint, RdmaError, RdmaUnavailable, TransferFailed

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
        raise RdmaUnavailable(f"pyverbs is not installed ({err}); see docs/rdma.md") from err
    except ImportError as err:  # e.g. PyPI's pyverbs next to an older rdma-core
        raise RdmaUnavailable(
            f"pyverbs could not be loaded ({err}); it must match the system's rdma-core"
        ) from err
    except Exception as err:  # a pyverbs that fails while importing
        raise RdmaUnavailable(f"pyverbs could not be loaded: {err!r}") from err
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
class PortChoice:
    """Which device, port and GID to use; the defaults pick the first active port and its
    best GID (RoCE v2 with an IPv4 address first). On GPU servers the first active port is
    often not the NIC the peer is reachable through: name it."""

    device: str = ""  # RDMA_DEVICE, e.g. mlx5_1; "" = any
    port: int = 0  # RDMA_DEVICE_PORT, from 1; 0 = the first active one
    gid_index: int = -1  # RDMA_GID_INDEX; -1 = choose

    @classmethod
    def from_settings(cls, settings) -> PortChoice:
        """From a service's settings (``rdma_device``, ``rdma_device_port``, ``rdma_gid_index``)."""
        return cls(settings.rdma_device, settings.rdma_device_port, settings.rdma_gid_index)

    def describe(self) -> str:
        parts = [
            f"device {self.device}" if self.device else "any device",
            f"port {self.port}" if self.port else "the first active port",
            f"gid index {self.gid_index}" if self.gid_index >= 0 else "the best GID",
        ]
        return ", ".join(parts)


@dataclass(frozen=True)
class Port:
    """An active RDMA port and the GID (index and type) this host is addressed by."""

    device: str
    port: int
    gid_index: int
    gid: str
    lid: int
    mtu: int
    link_layer: str
    gid_type: str = "ib"  # one of rdma_protocol.GID_TYPES

    def describe(self) -> str:
        where = f"{self.link_layer}, gid[{self.gid_index}] {self.gid} {self.gid_type}"
        return f"{self.device} port {self.port} ({where})"


def _gid_type(v: _Verbs, ctx, port: int, index: int, ethernet: bool) -> str:
    if not ethernet:
        return "ib"
    try:
        v2 = ctx.query_gid_type(port, index) == v.e.IBV_GID_TYPE_SYSFS_ROCE_V2
    except v.Error:
        v2 = False
    return "roce-v2" if v2 else "roce-v1"


def _gid_rank(gid_type: str, gid: str) -> int:
    """Lower is better: on RoCE prefer RoCE v2 GIDs carrying an IPv4 address (routable)."""
    if gid_type == "ib":
        return 0
    ipv4 = gid.startswith(IPV4_MAPPED_PREFIX)
    return (0 if gid_type == "roce-v2" else 2) + (0 if ipv4 else 1)


def _choose_gid(v: _Verbs, ctx, port: int, attr, wanted: int) -> tuple[int, str, str]:
    """(index, gid, gid type): index ``wanted`` if >= 0, else the best non-zero GID."""
    ethernet = attr.link_layer == v.e.IBV_LINK_LAYER_ETHERNET
    if wanted >= 0:
        if wanted >= attr.gid_tbl_len:
            raise RdmaUnavailable(
                f"port {port} has {attr.gid_tbl_len} GIDs; RDMA_GID_INDEX={wanted} is not one"
            )
        gid = str(ctx.query_gid(port, wanted))
        if gid == ZERO_GID and ethernet:
            raise RdmaUnavailable(f"port {port} has no GID at RDMA_GID_INDEX={wanted}")
        return wanted, gid, _gid_type(v, ctx, port, wanted, ethernet)
    candidates = []
    for index in range(attr.gid_tbl_len):
        try:
            gid = str(ctx.query_gid(port, index))
        except v.Error:
            continue
        if gid != ZERO_GID:
            gid_type = _gid_type(v, ctx, port, index, ethernet)
            candidates.append((_gid_rank(gid_type, gid), index, gid, gid_type))
    if not candidates:
        if ethernet:
            raise RdmaUnavailable(f"port {port} has no usable GID (RoCE needs an IP address)")
        return 0, ZERO_GID, "ib"  # InfiniBand without a GID table: LID routing only
    _, index, gid, gid_type = min(candidates)
    return index, gid, gid_type


def find_port(choice: PortChoice = PortChoice()) -> Port:  # noqa: B008 - frozen
    """The port ``choice`` names, or the first active port of the first device that has one.

    Raises RdmaUnavailable when pyverbs is missing, there is no such device or
    port, it is not active, or the GID is unusable; the message says which.
    """
    try:
        return _find_port(choice)
    except RdmaError:
        raise
    except Exception as err:  # an unexpected pyverbs: still RDMA's failure
        raise RdmaUnavailable(f"looking for an RDMA port failed: {err!r}") from err


def _find_port(choice: PortChoice) -> Port:
    v = _pyverbs()
    try:
        devices = v.device.get_device_list()
    except v.Error as err:
        raise RdmaUnavailable(f"no RDMA device: {err}") from err
    if not devices:
        raise RdmaUnavailable("no RDMA device: the device list is empty")
    names = [dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name) for dev in devices]
    if choice.device and choice.device not in names:
        raise RdmaUnavailable(
            f"RDMA_DEVICE={choice.device} is not an RDMA device here (found {', '.join(names)})"
        )
    seen = []
    for name in [choice.device] if choice.device else names:
        try:
            with v.device.Context(name=name) as ctx:
                count = ctx.query_device().phys_port_cnt
                if choice.port > count:
                    seen.append(f"{name} has {count} ports, not {choice.port}")
                    continue
                for port in [choice.port] if choice.port else range(1, count + 1):
                    attr = ctx.query_port(port)
                    if attr.state != v.e.IBV_PORT_ACTIVE:
                        seen.append(f"{name} port {port} not active")
                        continue
                    try:
                        index, gid, gid_type = _choose_gid(v, ctx, port, attr, choice.gid_index)
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
                        gid_type=gid_type,
                    )
        except v.Error as err:
            seen.append(f"{name}: {err}")
    raise RdmaUnavailable(f"no usable RDMA port for {choice.describe()} ({'; '.join(seen)})")


def check_memlock(needed: int, what: str) -> None:
    """RdmaUnavailable, saying how to fix it, unless RLIMIT_MEMLOCK allows ``needed`` bytes.

    Registering a memory region pins it; past the limit ``ibv_reg_mr`` fails
    with an opaque ENOMEM on the first push, so both services check at start.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RdmaUnavailable(
            f"RLIMIT_MEMLOCK is {soft // 1024} KiB, but {what} must pin "
            f"{needed // 1024} KiB of registered buffers: raise it (ulimit -l unlimited; "
            "LimitMEMLOCK=infinity in a systemd unit; --ulimit memlock=-1 for docker run)"
        )


def _wc_status(v: _Verbs, status: int) -> str:
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
