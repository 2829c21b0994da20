"""Healing through Ray Train (2 CPU workers, RayDDPStrategy) equals one process with the same seed and global batch.

Tolerance: the two runs differ only in how a step's gradient is summed: DDP averages the two workers'
micro-batch gradients, (g0 + g1)/2, the single process accumulates g0/2 + g1/2. Each worker computes its
micro-batch exactly as the single process does, and halving is exact in binary floating point, so with 2
workers the results agree to the last bit (measured: 0 on step losses, adapter weights and merged logits).
The bars (step loss 1e-5, adapter weights 1e-4, merged logits 1e-3) leave room for other worker counts,
where the all-reduce's summation order does change the rounding (~1e-7 relative per step in float32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from dist_helpers import require_private_netns


def _tiny(tmp: Path) -> tuple[Any, Any]:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "healing"))
    from heal_helpers import save_tiny_pruned, smollm2_tokenizer, tiny_config

    tok = smollm2_tokenizer()
    path = save_tiny_pruned(tmp / "pruned", tok)
    return path, tiny_config(steps=4, val_every=2, micro_batch=2, batch_size=4)


@pytest.mark.integration
@pytest.mark.slow
def test_two_ray_workers_match_one_process(ray_local: Any, tmp_path: Path) -> None:
    require_private_netns()
    from blockprune.distributed.heal import RayHealSettings, fit_on_ray
    from blockprune.healing.lora import adapter_state
    from blockprune.healing.run import adapter_from_checkpoint, fit_lora, merge_from_checkpoint, prepare_heal
    from blockprune.healing.source import resolve_source
    from blockprune.healing.trainer import TrainerSetup

    path, cfg = _tiny(tmp_path)
    inputs = prepare_heal(resolve_source(pruned=str(path)), cfg, world_size=2)
    # one process: 2 windows per micro-batch, accumulation 2
    model, _ = inputs.source.load()
    single, peft_model = fit_lora(inputs, model, TrainerSetup(out_dir=tmp_path / "single", accelerator="cpu",
                                                              progress=False))
    # Ray Train: 2 workers × 2 windows, accumulation 1
    ray_out = fit_on_ray(inputs, tmp_path / "ray", RayHealSettings(workers=2, cpus_per_worker=1), progress=False)
    assert ray_out.steps == single.steps == 4 and ray_out.tokens == single.tokens
    assert (single.world_size, single.accumulation, ray_out.world_size, ray_out.accumulation) == (1, 2, 2, 1)
    loss_diff = max(abs(a[1] - b[1]) for a, b in zip(single.history, ray_out.history, strict=True))
    state_single = adapter_state(peft_model)
    state_ray = adapter_from_checkpoint(ray_out.checkpoint)
    assert set(state_ray) == set(state_single)
    w_diff = max(float((state_single[k] - state_ray[k]).abs().max()) for k in state_single)
    merged_single = merge_from_checkpoint(inputs, tmp_path / "single" / "checkpoints" / "last.ckpt")
    merged_ray = merge_from_checkpoint(inputs, ray_out.checkpoint)
    ids = torch.from_numpy(inputs.eval_sets["lee-news"].input_ids)
    with torch.no_grad():
        logit_diff = float((merged_single(input_ids=ids).logits - merged_ray(input_ids=ids).logits).abs().max())
    print(f"max |Δ| step loss {loss_diff:.2e}, adapter weight {w_diff:.2e}, merged logits {logit_diff:.2e}")
    assert loss_diff <= 1e-5
    assert w_diff <= 1e-4
    assert logit_diff <= 1e-3
    # the adapter actually moved (so agreement is not two untouched copies)
    assert max(float(v.abs().max()) for k, v in state_ray.items() if "lora_B" in k) > 1e-3


@pytest.mark.unit
def test_resource_requests_beyond_the_cluster_are_refused() -> None:
    from blockprune.distributed.cluster import ClusterInfo, InsufficientResourcesError, NodeInfo
    from blockprune.distributed.heal import RayHealSettings, check_resources

    info = ClusterInfo("127.0.0.1:6379", True, (NodeInfo("a", "10.0.0.1", 8, 2, True), NodeInfo("b", "10.0.0.2", 8, 2, True)))
    check_resources(RayHealSettings(workers=4, gpus_per_worker=1, strategy="fsdp"), info)
    with pytest.raises(InsufficientResourcesError, match="= 5 GPUs, the Ray cluster has 4"):
        check_resources(RayHealSettings(workers=5, gpus_per_worker=1), info)
    with pytest.raises(InsufficientResourcesError, match="= 17 CPUs, the Ray cluster has 16"):
        check_resources(RayHealSettings(workers=17), info)
    with pytest.raises(ValueError, match="fsdp shards over GPUs"):
        RayHealSettings(workers=2, strategy="fsdp")


@pytest.mark.unit
@pytest.mark.parametrize(("family", "layer_cls"), [("llama", "LlamaDecoderLayer"), ("gemma3_text", "Gemma3DecoderLayer")])
def test_fsdp_wraps_each_decoder_layer(family: str, layer_cls: str) -> None:
    """The FSDP option shards at decoder-layer granularity (built here; running it needs GPUs)."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from blockprune.distributed.heal import _strategy

    cfg = AutoConfig.for_model(family)
    strategy = _strategy("fsdp", SimpleNamespace(source=SimpleNamespace(config=cfg)))
    assert type(strategy).__name__ == "RayFSDPStrategy"
    policy = strategy.kwargs["auto_wrap_policy"]  # Lightning turns the class set into a ModuleWrapPolicy
    assert {c.__name__ for c in policy._module_classes} == {layer_cls}
    assert strategy.kwargs["use_orig_params"] and strategy.sharding_strategy.name == "FULL_SHARD"
    assert strategy._state_dict_type == "full"  # the driver merges from a full (gathered) adapter state


@pytest.mark.integration
@pytest.mark.slow
def test_cli_devices_2_trains_through_ray_and_logs_from_the_rank0_worker(ray_local: Any, tmp_path: Path) -> None:
    """``blockprune heal --devices 2``: Ray Train on the running cluster; Lightning's MLflow logger on rank 0."""
    require_private_netns()
    from mlflow import MlflowClient

    from blockprune.jobs import heal as heal_job

    path, _ = _tiny(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = heal_job.main(["--pruned", str(path), "--out", str(tmp_path / "healed"), "--devices", "2", "--accelerator",
                        "cpu", "--corpus", "lee-news", "--seq-len", "64", "--batch-size", "4", "--micro-batch", "2",
                        "--steps", "3", "--rank", "4", "--eval-windows", "2", "--val-windows", "2", "--val-every", "3",
                        "--tracking-uri", uri, "--no-dense", "--quiet"])
    assert rc == 0
    import ray

    assert ray.is_initialized()  # the CLI joined the fixture's cluster and left it running
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("blockprune").experiment_id])
    assert run.data.tags["heal.backend"] == "ray" and run.data.tags["heal.devices"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    assert "ppl_after.lee-news" in run.data.metrics
