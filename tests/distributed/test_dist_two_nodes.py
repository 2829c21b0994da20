"""A 2-node ``ray.cluster_utils.Cluster`` (1 CPU each): replicas on both nodes, transport on both,
every Ray address on loopback inside the private network namespace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from dist_helpers import TRIALS, in_private_netns, require_private_netns, tiny_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]



def _loopback_or_wildcard(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    addr = mapped or addr
    return addr.is_loopback or addr.is_unspecified


@pytest.fixture(scope="module")
def two_nodes(ray_temp_dir: str) -> Iterator[Any]:
    require_private_netns()
    import ray
    from ray.cluster_utils import Cluster

    from blockprune.distributed.cluster import connect

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": ray_temp_dir})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        info = connect(cluster.address)  # the explicit-address path, probe included
        assert len([n for n in info.nodes if n.alive]) == 2
        yield info
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_every_ray_address_is_loopback_inside_the_namespace(two_nodes) -> None:
    import psutil
    import ray

    assert in_private_netns(), "loopback must be the only interface"
    assert two_nodes.address.split(":")[0] == "127.0.0.1"
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening, "a running cluster listens somewhere"
    outside = [c.laddr for c in listening if not _loopback_or_wildcard(c.laddr.ip)]
    assert not outside, f"sockets bound beyond loopback: {outside}"
    # wildcard binds exist only in this namespace, whose one interface is loopback
    assert set(psutil.net_if_addrs()) == {"lo"}


def test_replicas_on_two_nodes_capture_the_single_process_store(two_nodes, reference, tmp_path) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from blockprune.calibration.store import ActivationStore
    from blockprune.distributed.capture import capture_with_actors
    from blockprune.distributed.model_actor import ActorPlacement, ModelGroup
    from blockprune.distributed.scoring import BoundaryRefs, RayScoring, ScoringOptions, inspect_transport
    from blockprune.pipeline.prepare import prepare, store_meta, store_path

    job = tiny_job(tmp_path / "stores")
    p = prepare(job)
    with ModelGroup(job, ActorPlacement(num_cpus=1), 0, 2, info=two_nodes, name="two-node") as group:
        where = ray.get([a.describe.remote() for a in group.actors])
        assert len({w["node_id"] for w in where}) == 2, "one replica per node"
        store = capture_with_actors(p, group.actors, store_path(p), store_meta(p))
    store = ActivationStore.open(store.path, verify=True)
    for name in ("h_000", "h_010", "h_030", "m_005"):
        ref = reference.store.array(name)
        np.testing.assert_allclose(store.array(name), ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))

    refs = BoundaryRefs(store)
    for node in two_nodes.nodes:
        seen = inspect_transport(refs, "h_004", NodeAffinitySchedulingStrategy(node.node_id, soft=False))
        assert seen["writeable"] is False and seen["owndata"] is False, (node.node_id, seen)

    from blockprune.pipeline.scoring import score_and_select

    scoring = RayScoring(ScoringOptions(num_cpus=1))
    fbs = TRIALS[2]
    scored = score_and_select(store, fbs, scoring)
    assert scored.blocks == reference.plans[fbs.name].blocks
    assert scoring.tasks == scored.selection.evaluations


def test_strict_pack_larger_than_any_node_is_refused(two_nodes) -> None:
    from blockprune.distributed.cluster import InsufficientResourcesError
    from blockprune.distributed.model_actor import ActorPlacement, check_bundles_fit, placement_bundles

    placement = ActorPlacement(num_cpus=1, colocate=True, scorer_slots=1)
    bundles = placement_bundles(placement, 0, 1, scorer_cpus=1, with_scorers=True)
    with pytest.raises(InsufficientResourcesError, match="STRICT_PACK needs 2 CPUs"):
        check_bundles_fit(bundles, "STRICT_PACK", two_nodes, "colocated job")
