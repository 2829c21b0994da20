"""EntroDrop's default (per-window entropies, the released code's reading) in a real job: the trial reads a
second store of whole windows with position 0 kept, captured once beside the job's own, and its plan equals
what the reference mode selects from that store directly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blockprune.calibration.store import ActivationStore
from blockprune.jobs.calibrate import main
from blockprune.pipeline.config import TrialSpec
from blockprune.pipeline.scoring import score_and_select

pytestmark = pytest.mark.integration

SMALL = ["--model", "smollm2-135m", "--corpus", "lee-news", "--n-samples", "4", "--seq-len", "64",
         "--sample-rows", "256", "--eval-windows", "2", "--quiet", "--no-tracking", "--prune", "4"]


def test_default_entrodrop_trial_reads_a_whole_window_store(tmp_path, capsys) -> None:
    root = tmp_path / "stores"
    assert main([*SMALL, "--store-root", str(root), "--method", "shortgpt", "--method", "entrodrop",
                 "--results-dir", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["trial"] for r in rows] == ["shortgpt/layer/k=4", "entrodrop/entropy.knn_window/layer/k=4"]
    stores = sorted(p for p in root.iterdir() if (p / "manifest.json").exists())
    assert len(stores) == 2, "the job's store and the per-window one"
    by_sampling = {ActivationStore.open(p).manifest["settings"].get("sampling", "tokens"): ActivationStore.open(p)
                   for p in stores}
    window = by_sampling["windows"]
    assert window.manifest["bos_row_kept"] is True
    pos = window.positions()
    # 256 rows hold 4 whole windows of 64 positions (BOS kept): every position of each window
    assert len(pos) == 256 and sorted(set(pos[:, 0].tolist())) == [0, 1, 2, 3]
    assert np.array_equal(pos[:64, 1], np.arange(64))
    # the job's plan is the one the reference mode selects from that store
    direct = score_and_select(window, TrialSpec("entrodrop", 4)).selection
    assert rows[1]["blocks"] == sorted(direct.blocks)
    # reused, not captured again, by a second job
    assert main([*SMALL, "--store-root", str(root), "--method", "entrodrop"]) == 0
    assert "per-window store for entropy.knn_window reused" in capsys.readouterr().out


def test_stage_rule_reaches_the_selection(tmp_path, capsys) -> None:
    """--stage-rule curve detects the stage boundary; the default protects blocks 0, 1 and the last."""
    root = tmp_path / "stores"
    assert main([*SMALL, "--store-root", str(root), "--method", "entrodrop", "--estimator", "entropy.bucket",
                 "--prune", "8"]) == 0
    fixed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")][0]
    assert not {0, 1, 29} & set(fixed["blocks"])
    assert main([*SMALL, "--store-root", str(root), "--method", "entrodrop", "--estimator", "entropy.bucket",
                 "--prune", "8", "--stage-rule", "curve"]) == 0
    curve = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")][0]
    assert 29 not in curve["blocks"]
