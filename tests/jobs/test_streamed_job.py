"""``calibrate --streamed``: the job runs the model layer by layer from its checkpoint and gives the resident
run's plan and perplexity; the log line says which path was taken and why."""

from __future__ import annotations

import json

import pytest

from blockprune.jobs.calibrate import main

pytestmark = pytest.mark.integration

SMALL = ["--model", "smollm2-135m", "--corpus", "lee-news", "--n-samples", "4", "--seq-len", "64",
         "--sample-rows", "128", "--eval-windows", "2", "--quiet", "--no-tracking", "--method", "shortgpt",
         "--method", "relative_magnitude", "--prune", "4"]


def _run(tmp_path, name, *flags, capsys):
    assert main([*SMALL, "--store-root", str(tmp_path / name), *flags]) == 0
    out = capsys.readouterr().out
    return out, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_streamed_job_equals_resident_job(tmp_path, capsys) -> None:
    out_r, resident = _run(tmp_path, "resident", "--no-streamed", capsys=capsys)
    out_s, streamed = _run(tmp_path, "streamed", "--streamed", capsys=capsys)
    assert "resident (resident path requested)" in out_r
    assert "layer-streamed (streamed path requested (--streamed))" in out_s
    for a, b in zip(resident, streamed, strict=True):
        assert a["blocks"] == b["blocks"] and a["trial"] == b["trial"]
        assert b["ppl_dense"] == pytest.approx(a["ppl_dense"], rel=1e-4)
        assert b["ppl_pruned"] == pytest.approx(a["ppl_pruned"], rel=1e-4)


def test_automatic_choice_stays_resident_when_the_model_fits(tmp_path, capsys) -> None:
    out, _ = _run(tmp_path, "auto", capsys=capsys)
    assert "resident (the float32 weights" in out and "fit the" in out
