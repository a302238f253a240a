"""Finding the RDMA port a push uses, and loading pyverbs to do it.

``PortChoice`` names the device, port and GID index (RDMA_DEVICE,
RDMA_DEVICE_PORT, RDMA_GID_INDEX; by default the first active port and its
best GID, RoCE v2 with an IPv4 address first); ``find_port`` resolves it to
a ``Port`` or raises ``RdmaUnavailable`` saying why none is usable.
``check_memlock`` checks at start that RLIMIT_MEMLOCK can pin the rings.
pyverbs is imported lazily (``load_pyverbs``), so all of this runs where it is
missing and then reports the cause.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from model_swap.rdma_protocol import RdmaError, RdmaUnavailable

ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"
IPV4_MAPPED_PREFIX = "0000:0000:0000:0000:0000:ffff:"


def load_pyverbs():
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
    return Verbs(
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
class Verbs:
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


def _gid_type(v: Verbs, ctx, port: int, index: int, ethernet: bool) -> str:
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


def _choose_gid(v: Verbs, ctx, port: int, attr, wanted: int) -> tuple[int, str, str]:
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
    v = load_pyverbs()
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
