"""Which addresses a ``dns+`` WORKER_URLS may turn into workers (pure), and the resolver.

An address is admissible if it is loopback or inside one of WORKER_NETWORKS; the fleet
then admits at most MAX_DISCOVERED_WORKERS, each only after it proves WORKER_TOKEN.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

Resolver = Callable[[str, int], Iterable[str]]


def resolve_ipv4(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to now (a headless Service: one per ready pod)."""
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def admissible(addresses: Iterable[str], networks: Iterable[str]) -> tuple[list[str], list[str]]:
    """Pure: (admitted, refused) of ``addresses`` by ``networks`` (CIDRs; loopback always)."""
    nets = [ipaddress.ip_network(net) for net in networks]
    admitted, refused = [], []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            refused.append(address)
            continue
        ok = ip.is_loopback or any(ip.version == net.version and ip in net for net in nets)
        (admitted if ok else refused).append(address)
    return admitted, refused
