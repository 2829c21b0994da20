"""The package's shape: dependencies point one way, the CLI imports nothing heavy, public names are there.

Layers, from the bottom (a module may import its own layer and the ones below, never above):

    0  errors, registry, env                       shared basics
    1  estimators, selection, models               arrays, plans, model adapters
    2  calibration, evaluation, tracking, healing  what the pipeline is made of
    3  pipeline                                    the one job loop, the configuration schema
    4  distributed, study                          the Ray backend and sweeps, the results study
    5  jobs                                        entry points

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "blockprune"
LAYERS = {
    "errors": 0, "registry": 0, "env": 0,
    "estimators": 1, "selection": 1, "models": 1,
    "calibration": 2, "evaluation": 2, "tracking": 2, "healing": 2,
    "pipeline": 3,
    "distributed": 4, "study": 4,
    "jobs": 5,
}
HEAVY = ("torch", "ray", "mlflow", "transformers", "lm_eval", "matplotlib")


def _part(module: str) -> str | None:
    """The layer key of a ``blockprune.x…`` module name (None for the package facade itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported blockprune module, line) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("blockprune")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("blockprune"):
                out.append((base, node.lineno))
    return out


def _modules() -> list[tuple[Path, str]]:
    out = []
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((f, ".".join(parts)))
    return out


def test_every_package_has_a_layer() -> None:
    parts = {_part(m) for _, m in _modules()} - {None}
    assert parts <= set(LAYERS), f"packages without a layer: {sorted(parts - set(LAYERS))}"


def test_no_upward_import_between_layers() -> None:
    upward = []
    for path, module in _modules():
        here = _part(module)
        if here is None:
            continue  # the package facade re-exports public names (lazily)
        for target, line in _imports(path, module):
            there = _part(target)
            if there is not None and LAYERS[there] > LAYERS[here]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_nothing_below_jobs_imports_jobs() -> None:
    """The acceptance point of the architecture issue, stated directly."""
    offenders = [f"{p.relative_to(PACKAGE.parent)}:{line}" for p, m in _modules() if _part(m) not in ("jobs", None)
                 for t, line in _imports(p, m) if _part(t) == "jobs"]
    assert not offenders


def test_the_layering_check_catches_an_upward_edge(tmp_path) -> None:
    """The walker above would see a lazy import of jobs/ from selection/ (it cannot pass vacuously)."""
    f = tmp_path / "fake.py"
    f.write_text("def f():\n    from blockprune.jobs.cli import main\n    from ..pipeline import config\n")
    found = _imports(f, "blockprune.selection.fake")
    assert found == [("blockprune.jobs.cli", 2), ("blockprune.pipeline", 3)]
    assert all(LAYERS[_part(t)] > LAYERS["selection"] for t, _ in found)


@pytest.mark.parametrize("module", ["blockprune.jobs.cli", "blockprune", "blockprune.pipeline.config",
                                    "blockprune.pipeline.sweep_spec"])
def test_light_modules_load_nothing_heavy(module) -> None:
    code = (f"import sys, {module}; import blockprune; "
            "blockprune.PrunePlan; blockprune.apply_plan; blockprune.load_pruned; blockprune.save_pruned; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"


def test_public_names_at_the_top_level(tmp_path) -> None:
    import blockprune
    from blockprune.models import apply
    from blockprune.selection.plan import PrunePlan

    assert blockprune.PrunePlan is PrunePlan
    for name in ("apply_plan", "save_pruned", "load_pruned"):
        assert callable(getattr(blockprune, name))
        assert getattr(apply, name).__name__ == name
    assert set(blockprune.__all__) >= {"PrunePlan", "apply_plan", "save_pruned", "load_pruned"}
    with pytest.raises(AttributeError):
        _ = blockprune.no_such_name


def test_top_level_load_pruned_calls_the_real_one(tmp_path) -> None:
    """The lazy wrappers reach the real functions: a tiny pruned model saved and reloaded through them."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    import blockprune

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    plan = blockprune.PrunePlan(model_id="tiny", n_blocks=4, blocks=(1,), granularity="attention")
    blockprune.apply_plan(model, plan)
    blockprune.save_pruned(model, plan, tmp_path / "pruned")
    again = blockprune.load_pruned(tmp_path / "pruned")
    ids = torch.arange(8).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
