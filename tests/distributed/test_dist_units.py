"""Pieces of the Ray layer that need no cluster: sizing, splitting, writing rows, addresses, specs."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from blockprune.distributed.capture import RowWriter, SharedStoreWriter, split_windows
from blockprune.distributed.cluster import (
    ClusterInfo,
    ClusterUnreachableError,
    InsufficientResourcesError,
    NodeInfo,
    check_gpu_request,
    check_reachable,
    parse_address,
)
from blockprune.distributed.model_actor import ActorPlacement, gpus_needed, max_memory_map, model_bytes

pytestmark = pytest.mark.unit

GiB = 2**30


def _cluster(*gpus: float) -> ClusterInfo:
    nodes = tuple(NodeInfo(f"n{i}", f"10.0.0.{i}", 8.0, g, True) for i, g in enumerate(gpus))
    return ClusterInfo("127.0.0.1:6379", False, nodes)


@pytest.mark.parametrize(("n", "bs", "parts"), [(4, 2, 2), (5, 2, 2), (32, 4, 3), (3, 4, 2), (7, 1, 7), (8, 2, 10)])
def test_split_windows_gives_contiguous_whole_batches(n: int, bs: int, parts: int) -> None:
    split = split_windows(n, bs, parts)
    assert [w for part in split for w in part] == list(range(n))
    assert 1 <= len(split) <= min(parts, -(-n // bs))
    for part in split:
        assert part[0] % bs == 0 and part == list(range(part[0], part[-1] + 1))
    sizes = [len(p) for p in split]
    assert max(sizes) - min(sizes) <= 2 * bs  # balanced by batches


def test_gpu_count_from_model_size() -> None:
    seven_b = model_bytes(7_000_000_000, "bfloat16", 1.2)
    assert seven_b == pytest.approx(16.8e9, rel=1e-6)
    assert gpus_needed(seven_b, 80 * GiB, 0.15) == 1
    seventy_b = model_bytes(70_000_000_000, "bfloat16", 1.2)
    assert gpus_needed(seventy_b, 80 * GiB, 0.15) == 3  # 168 GB over 68 GiB usable per GPU
    assert gpus_needed(seventy_b, 24 * GiB, 0.15) == 8
    assert max_memory_map([80 * GiB, 80 * GiB], 0.25) == {0: 60 * GiB, 1: 60 * GiB}
    with pytest.raises(ValueError, match="unknown dtype"):
        model_bytes(1, "int3", 1.0)


def test_gpu_request_is_checked_per_node_not_per_cluster() -> None:
    info = _cluster(4, 4)  # 8 GPUs in total, but an actor lives on one node
    check_gpu_request(4, "actor", info)
    with pytest.raises(InsufficientResourcesError, match=r"needs 5 GPU\(s\) on one node, but the largest node has 4"):
        check_gpu_request(5, "actor", info)
    with pytest.raises(InsufficientResourcesError, match="largest node has 0"):
        check_gpu_request(1, "actor", _cluster(0))
    check_gpu_request(0, "cpu actor", _cluster(0))


def test_param_count_and_device_map_from_config_alone() -> None:
    """The real smollm2 config: 134.5 M parameters; accelerate never splits a decoder layer."""
    from blockprune.distributed.model_actor import device_map_for, param_count
    from blockprune.models.zoo import resolve_model

    path = resolve_model("smollm2-135m").path
    assert param_count(path) == 134_515_008
    dmap = device_map_for(path, "float32", {0: 400 * 2**20, 1: 400 * 2**20}, ["LlamaDecoderLayer"])
    assert set(dmap.values()) == {0, 1}
    layers = {k: v for k, v in dmap.items() if k.startswith("model.layers.")}
    assert all(k.count(".") == 2 for k in layers), "a decoder layer was split across devices"
    assert dmap["model.embed_tokens"] == dmap["lm_head"]  # tied weights stay together
    with pytest.raises(InsufficientResourcesError, match="does not fit"):
        device_map_for(path, "float32", {0: 100 * 2**20}, ["LlamaDecoderLayer"])


def test_rows_written_by_offset_land_where_a_memmap_would_put_them(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for dtype in ("float16", "float32"):
        w = SharedStoreWriter(tmp_path / f"s-{dtype}", ["h_000", "h_001"], 10, 6, dtype)
        rows = RowWriter(w.tmp, dtype)
        a, b, c = rng.standard_normal((4, 6)), rng.standard_normal((4, 6)), rng.standard_normal((10, 6))
        rows.write_rows("h_000", 6, b)  # out of order, as replicas finish
        rows.write_rows("h_000", 0, a)
        rows.write_rows("h_001", 0, c)
        with pytest.raises(IndexError, match="rows 8..11 of h_000, which has 10"):
            rows.write_rows("h_000", 8, a)
        rows.close()
        w.save_array("positions", np.zeros((10, 2), dtype=np.int64))
        store = w.commit({"n_layers": 1, "capture_mid": False, "stats": {}})
        got = store.h(0)
        np.testing.assert_array_equal(got[:4], a.astype(dtype))
        np.testing.assert_array_equal(got[6:], b.astype(dtype))
        np.testing.assert_array_equal(got[4:6], 0)
        np.testing.assert_array_equal(store.h(1), c.astype(dtype))
        store.verify()
    with pytest.raises(OverflowError, match="float16 range"):
        w = SharedStoreWriter(tmp_path / "big", ["h_000"], 2, 3, "float16")
        RowWriter(w.tmp, "float16").write_rows("h_000", 0, np.full((1, 3), 1e6))


def test_addresses_are_parsed_and_unreachable_ones_fail_fast() -> None:
    assert parse_address("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert parse_address("ray://head:10001") == ("head", 10001)
    assert parse_address("auto") is None
    with pytest.raises(ValueError, match="dashboard URL"):
        parse_address("http://127.0.0.1:8265")
    with pytest.raises(ValueError, match="needs a host and a port"):
        parse_address("headnode")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}", timeout_s=3)
    assert time.monotonic() - t0 < 5


def test_placement_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="replicas"):
        ActorPlacement(replicas=0)
    with pytest.raises(ValueError, match="engine"):
        ActorPlacement(engine="vllm")
    with pytest.raises(ValueError, match="headroom"):
        ActorPlacement(headroom=1.0)


def test_submission_id_comes_from_the_job_config(monkeypatch) -> None:
    from blockprune.tracking.tracker import submission_id

    monkeypatch.delenv("RAY_JOB_SUBMISSION_ID", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert submission_id() is None
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_123"}}))
    assert submission_id() == "raysubmit_123"


def test_actors_never_leave_scoring_without_a_cpu() -> None:
    from blockprune.distributed.backend import check_scoring_capacity
    from blockprune.distributed.scoring import ScoringOptions
    from blockprune.distributed.sweep import concurrency_cap
    from blockprune.pipeline.sweep_spec import parse_spec

    two_cpus = ClusterInfo("127.0.0.1:6379", False, (NodeInfo("n", "127.0.0.1", 2.0, 0.0, True),))
    check_scoring_capacity(ActorPlacement(num_cpus=1), ScoringOptions(num_cpus=1), two_cpus)
    with pytest.raises(InsufficientResourcesError, match="leaving less than the 1 a scoring task needs"):
        check_scoring_capacity(ActorPlacement(num_cpus=2), ScoringOptions(num_cpus=1), two_cpus)
    check_scoring_capacity(ActorPlacement(num_cpus=1, colocate=True), ScoringOptions(num_cpus=1), two_cpus)
    with pytest.raises(InsufficientResourcesError, match="largest node has 2"):
        check_scoring_capacity(ActorPlacement(num_cpus=0), ScoringOptions(num_cpus=4), two_cpus)
    spec = {"models": ["a", "b", "c"], "methods": ["shortgpt"], "calibration": ["lee-news"]}
    assert concurrency_cap(parse_spec({**spec, "placement": {"num_cpus": 1}}), 2.0) == 1
    assert concurrency_cap(parse_spec({**spec, "placement": {"num_cpus": 0.5}}), 2.0) == 2
    assert concurrency_cap(parse_spec({**spec, "placement": {"num_cpus": 1, "replicas": 2}}), 9.0) == 4
    assert concurrency_cap(parse_spec({**spec, "placement": {"num_cpus": 1, "colocate": True}}), 2.0) == 3
