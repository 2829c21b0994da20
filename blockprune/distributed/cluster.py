"""Connecting to a Ray cluster, and what its nodes offer.

``ray.init(address=...)`` against an address where nothing listens can block for a long time
while GCS retries; a sweep should say "no cluster there" within seconds instead. So an explicit
address is probed with a plain TCP connect first. With no address, ``RAY_ADDRESS`` (set by
``ray job submit`` for the entrypoint) is honoured, otherwise a local cluster is started: the
embedded default of the design.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from blockprune.env import apply_env_defaults
from blockprune.errors import BadInputError, ResourceError

apply_env_defaults()

log = logging.getLogger(__name__)


class ClusterUnreachableError(ResourceError, ConnectionError):
    """An explicit Ray address that does not answer."""


class InsufficientResourcesError(BadInputError):
    """A request (GPUs per actor, …) that no node of the cluster can satisfy."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    cpus: float
    gpus: float
    alive: bool


@dataclass(frozen=True)
class ClusterInfo:
    """Where we are connected and whether we started the cluster ourselves."""

    address: str
    started_local: bool
    nodes: tuple[NodeInfo, ...]

    @property
    def total_cpus(self) -> float:
        return sum(n.cpus for n in self.nodes if n.alive)

    @property
    def total_gpus(self) -> float:
        return sum(n.gpus for n in self.nodes if n.alive)

    @property
    def max_gpus_per_node(self) -> float:
        return max((n.gpus for n in self.nodes if n.alive), default=0.0)


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit address; ``None`` for ``auto``/``local``.

    Accepts ``host:port`` (GCS) and ``ray://host:port`` (Ray client). A dashboard URL
    (``http://…:8265``) is what ``ray job submit`` wants, not ``ray.init``: say so.
    """
    a = address.strip()
    if a in ("auto", "local", ""):
        return None
    if a.startswith(("http://", "https://")):
        raise BadInputError(
            f"{address!r} looks like a dashboard URL (used by `ray job submit --address`); "
            "--address here wants the GCS address host:6379 or a Ray client address ray://host:10001"
        )
    parsed = urlparse(a if "://" in a else f"gcs://{a}")
    if parsed.scheme not in ("gcs", "ray"):
        raise BadInputError(f"unsupported Ray address scheme in {address!r}; use host:port or ray://host:port")
    if not parsed.hostname or parsed.port is None:
        raise BadInputError(f"Ray address {address!r} needs a host and a port, e.g. 127.0.0.1:6379")
    return parsed.hostname, parsed.port


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Raise :class:`ClusterUnreachableError` unless a TCP connect to the address succeeds in time."""
    hp = parse_address(address)
    if hp is None:
        return
    host, port = hp
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ClusterUnreachableError(
            f"cannot reach a Ray cluster at {address} ({why} after {time.monotonic() - t0:.1f} s); "
            "start one with `ray start --head`, fix --address / RAY_ADDRESS, or omit --address to start a "
            "local cluster"
        ) from None


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            timeout_s: float = 3.0, namespace: str | None = None, **init_kwargs: Any) -> ClusterInfo:
    """Connect to ``address`` (or ``RAY_ADDRESS``) or start a local cluster; idempotent.

    ``num_cpus``/``num_gpus`` only apply to a cluster started here.
    """
    import ray

    if ray.is_initialized():
        return cluster_info(started_local=False)
    target = address if address is not None else os.environ.get("RAY_ADDRESS")
    if target not in (None, "", "local"):
        check_reachable(target, timeout_s)
        ray.init(address=target, namespace=namespace, **init_kwargs)
        return cluster_info(started_local=False)
    # no cluster named: start one in this process's session (the embedded default)
    init_kwargs.setdefault("include_dashboard", False)
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, namespace=namespace, **init_kwargs)
    info = cluster_info(started_local=True)
    log.info("started a local Ray cluster: %g CPUs, %g GPUs", info.total_cpus, info.total_gpus)
    return info


def cluster_info(started_local: bool = False) -> ClusterInfo:
    import ray

    nodes = tuple(
        NodeInfo(
            node_id=n["NodeID"],
            address=n.get("NodeManagerAddress", ""),
            cpus=float(n.get("Resources", {}).get("CPU", 0.0)),
            gpus=float(n.get("Resources", {}).get("GPU", 0.0)),
            alive=bool(n.get("Alive", False)),
        )
        for n in ray.nodes()
    )
    address = ray.get_runtime_context().gcs_address
    return ClusterInfo(address=address, started_local=started_local, nodes=nodes)


def check_gpu_request(num_gpus: float, what: str, info: ClusterInfo | None = None) -> None:
    """Refuse, before any work, an actor that asks for more GPUs than the largest node has.

    One model actor lives on one node (accelerate shards over the GPUs it can see), so the
    limit is per node, not the cluster total.
    """
    if num_gpus <= 0:
        return
    info = info or cluster_info()
    biggest = info.max_gpus_per_node
    if num_gpus > biggest:
        per_node = ", ".join(f"{n.address}: {n.gpus:g}" for n in info.nodes if n.alive) or "no live nodes"
        raise InsufficientResourcesError(
            f"{what} needs {num_gpus:g} GPU(s) on one node, but the largest node has {biggest:g} "
            f"(GPUs per node: {per_node}); lower num_gpus, use a bigger node type, or let blockprune "
            "choose (num_gpus: auto)"
        )


def shutdown() -> None:
    """Disconnect (and stop the cluster if this process started it)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
