"""Healing asked for in a job: every trial is healed after it is measured, as a ``heal`` child run of the trial,
and ``blockprune compare`` shows pruned and healed numbers side by side."""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml

from blockprune.jobs.calibrate import main as calibrate
from blockprune.jobs.compare import main as compare

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEAL = {"steps": 2, "corpora": ["lee-news"], "seq_len": 64, "batch_size": 2, "micro_batch": 2, "eval_windows": 2,
        "val_every": 0, "warmup": 0, "lr": 1e-3}


def test_calibrate_heals_each_trial_and_compare_shows_both(tmp_path, capsys) -> None:
    job = {"model": "smollm2-135m", "calibration": {"corpus": "lee-news", "n_samples": 4, "seq_len": 64},
           "capture": {"sample_rows": 128}, "methods": ["shortgpt"], "n_prune": [2],
           "evaluation": {"windows": 2}, "save_dir": str(tmp_path / "pruned"), "store_root": str(tmp_path / "stores"),
           "heal": HEAL}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert calibrate(["--config", str(tmp_path / "job.yaml"), "--tracking-uri", uri, "--quiet"]) == 0
    line = json.loads(next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")))
    assert set(line["healed"]) == {"ppl_ratio_after.lee-news"} and 0 < line["healed"]["ppl_ratio_after.lee-news"] < 100
    assert (tmp_path / "pruned").is_dir() and line["healed_to"].startswith(str(tmp_path / "pruned"))

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("blockprune").experiment_id])
    kinds = {r.data.tags["blockprune.kind"]: r for r in runs}
    assert set(kinds) == {"job", "trial", "heal"}
    assert kinds["heal"].data.tags["mlflow.parentRunId"] == kinds["trial"].info.run_id == line["mlflow_run"]
    assert kinds["heal"].data.metrics["steps"] == 2 and kinds["heal"].info.status == "FINISHED"

    assert compare(["--tracking-uri", uri, "--experiment", "blockprune", "--out", str(tmp_path / "cmp"),
                    "--no-figures"]) == 0
    table = capsys.readouterr().out
    assert "healed ppl ×dense" in table and "log-gap recovered %" in table
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "heal: ppl ×dense before" in md
