"""The cluster definitions parse, have what Ray / KubeRay need, and start modules and specs that exist."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
OWN_YAML = sorted(p for p in INFRA.rglob("*.yaml") if "mlflow" not in p.relative_to(INFRA).parts)


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _check_entrypoint(command: str) -> None:
    """``python -m <module> args``: the module exists, its parser accepts the args, the spec is valid."""
    argv = shlex.split(command)
    assert argv[0] == "python" and argv[1] == "-m", argv
    module, args = argv[2], argv[3:]
    assert importlib.util.find_spec(module) is not None, f"entrypoint module {module} does not exist"
    if module == "blockprune.jobs.sweep":
        from blockprune.jobs.sweep import build_parser, load_spec, validate_spec

        parsed = build_parser().parse_args(args)
        spec_path = REPO / parsed.spec
        assert spec_path.exists(), f"the entrypoint's spec {parsed.spec} is not in the repository"
        validate_spec(load_spec(spec_path), resolve_models=False)
    elif module == "blockprune.jobs.calibrate":
        from blockprune.jobs.calibrate import build_parser as calibrate_parser

        calibrate_parser().parse_args(args)


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    containers = pod_template["spec"]["containers"]
    assert containers and all(c.get("image") and c.get("name") for c in containers)
    return containers


def _gpus(container: dict[str, Any]) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def _check_ray_cluster_spec(spec: dict[str, Any]) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__, "manifests must track the Ray version blockprune pins"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "the head runs the driver only"
    _containers(head["template"])
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = [g for g in groups.values() if any(_gpus(c) > 0 for c in _containers(g["template"]))]
    cpu = [g for g in groups.values() if all(_gpus(c) == 0 for c in _containers(g["template"]))]
    assert gpu and cpu, "one GPU worker group (model actors) and one CPU worker group (scoring)"
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for c in _containers(g["template"]):
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/mnt/shared" in mounts, f"group {g['groupName']} must mount the shared store path"


@pytest.mark.parametrize("path", OWN_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_every_infra_yaml_parses(path: Path) -> None:
    assert _load_all(path)


def test_cluster_launcher_has_head_gpu_and_cpu_groups() -> None:
    (cfg,) = _load_all(INFRA / "ray" / "cluster.yaml")
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert any(v["resources"].get("GPU", 0) > 0 for v in workers.values())
    assert any(v["resources"].get("GPU", 0) == 0 for v in workers.values())
    for name, t in types.items():
        assert "node_config" in t and "resources" in t, name
        if name != cfg["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    assert sum(t.get("max_workers", 0) for t in workers.values()) == cfg["max_workers"]
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head and "--port=6379" in head
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(cfg["worker_start_ray_commands"])


def test_kuberay_raycluster() -> None:
    docs = _load_all(INFRA / "kuberay" / "raycluster.yaml")
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    _check_ray_cluster_spec(cluster["spec"])
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert pvc["metadata"]["name"] in claims


def test_kuberay_rayjob_runs_a_real_sweep() -> None:
    (job,) = _load_all(INFRA / "kuberay" / "rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    _check_entrypoint(spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values())
    _check_ray_cluster_spec(spec["rayClusterSpec"])


def test_runtime_env_ships_source_not_environments() -> None:
    env = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    for must in (".venv", ".git", "*.db", "mlruns", "benchmarks/results"):
        assert must in env["excludes"], must
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "Ray wants string env values"
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules", "config"}


def test_readme_submit_lines_run_real_modules_and_specs() -> None:
    text = (INFRA / "README.md").read_text()
    blocks = re.findall(r"ray job submit .*?-- (python -m .+?)(?:\n```|\nray stop)", text, flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        command = " ".join(line.strip().rstrip("\\").strip() for line in block.splitlines())
        command = command.replace("$PWD", "/tmp").replace("$HOME", "/tmp")
        _check_entrypoint(command)


@pytest.mark.parametrize("path", sorted((REPO / "blockprune" / "jobs" / "configs").glob("sweep-*.yaml")),
                         ids=lambda p: p.name)  # study*.yaml are study specs (tests/study)
def test_example_sweep_specs_are_valid(path: Path) -> None:
    from blockprune.jobs.sweep import load_spec, validate_spec

    spec = load_spec(path)
    validate_spec(spec, resolve_models=False)
    assert spec.jobs() and spec.trials


@pytest.mark.parametrize("doc", ["README.md", "infra/README.md"])
def test_every_documented_ray_job_submit_exports_the_auth_mode_first(doc: str) -> None:
    """Ray 2.60's `ray job submit` sends the cluster token only with RAY_AUTH_MODE=token; a cluster started
    where ~/.ray/auth_token exists requires it (issue #18, case 10). The netns test runs the block itself."""
    text = (REPO / doc).read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    submits = [b for b in blocks if re.search(r"^ray job submit", b, flags=re.M)]
    assert submits
    for b in submits:
        before = b[: re.search(r"^ray job submit", b, flags=re.M).start()]
        assert "export RAY_AUTH_MODE=token" in before, b
