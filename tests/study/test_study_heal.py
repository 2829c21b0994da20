"""Healing in the study, on hand-made runs: which plans are healed, how a healing is keyed (and resumed), and the
report's "What healing recovers" section. The healing itself is replaced by a recording function here (the
real LoRA healing is tested in tests/healing/); the study log is a real sqlite MLflow store."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from blockprune.study.heal import (
    heal_key,
    heal_section,
    heal_settings_tag,
    heal_study,
    heal_summary,
    heal_targets,
)
from blockprune.study.markdown import fmt
from blockprune.study.record import RunRecord, StudyLog, calibration_key, plan_key, trial_key
from blockprune.study.report import render, study_from_runs
from blockprune.study.spec import StudySpecError, parse_spec
from blockprune.study.tables import Study

MODEL = "smollm2-135m"  # resolvable without weights; a 30-layer model
CORPORA = ["a", "b"]
DENSE = {"a": 10.0, "b": 20.0}


def _spec(**heal: Any) -> Any:
    return parse_spec({"name": "t", "models": {MODEL: {"layer": [6, 8]}},
                       "calibration": {"corpora": ["wikipedia", "lambada"], "seeds": [0], "n_samples": 8,
                                       "seq_len": 64},
                       "methods": {"layer": ["shortgpt", "angular", "entrodrop", "mi_fbs"]},
                       "evaluation": {"corpora": CORPORA, "windows": 4, "seq_len": 64},
                       "heal": {"n_prune": [6, 8], "steps": 5, "batch_size": 4, "micro_batch": 2, "seq_len": 64,
                                **heal}})


def _sel(i: int, method: str, est: str | None, n: int, blocks: tuple[int, ...], ref: bool = True) -> RunRecord:
    corpus = "wikipedia" if ref else "lambada"
    ck = calibration_key(MODEL, corpus, 0, 8, 64)
    tags = {"study.kind": "selection", "study.key": trial_key(ck, method, est, "layer", n), "model": MODEL,
            "corpus": corpus, "seed": "0", "reference": str(int(ref)), "method": method, "estimator": est or "none",
            "granularity": "layer", "n_prune": str(n), "blocks": ",".join(map(str, blocks)),
            "plan_key": plan_key(MODEL, "layer", blocks)}
    return RunRecord(f"sel{i:05d}xxxx", tags, {"scoring_seconds": 1.0, "logged_at": float(i)})


def _eval(i: int, blocks: tuple[int, ...] | None, ratio: float) -> RunRecord:
    key = plan_key(MODEL, "layer" if blocks else "", blocks)
    return RunRecord(f"ev{i:06d}yyyy", {"study.kind": "evaluation", "study.key": key},
                     {f"ppl.{c}": d * ratio for c, d in DENSE.items()} | {"logged_at": 100.0 + i})


# n = 6: ShortGPT (ppl× 2.0) beats angular (3.0) in the baseline family; EntroDrop 2.5; MI-PRUN FBS chose ShortGPT's
# blocks (one plan, one healing for two families). A non-reference plan with ppl× 1.1 must not be picked.
# n = 8: angular (4.0) beats ShortGPT (5.0); EntroDrop's plan has no perplexity yet; MI-PRUN 6.0.
S6, A6, E6, X6 = (10, 11, 12, 13, 14, 15), (20, 21, 22, 23, 24, 25), (2, 3, 4, 5, 6, 7), (1, 2, 3, 4, 5, 6)
S8, A8, E8, M8 = (10, 11, 12, 13, 14, 15, 16, 17), (18, 19, 20, 21, 22, 23, 24, 25), (2, 3, 4, 5, 6, 7, 8, 9), \
    (3, 4, 5, 6, 7, 8, 9, 10)


def _runs() -> list[RunRecord]:
    return [
        _sel(1, "shortgpt", None, 6, S6), _sel(2, "angular", "angular", 6, A6),
        _sel(3, "entrodrop", "entropy.knn_window", 6, E6), _sel(4, "mi_fbs", "mi.perdim", 6, S6),
        _sel(5, "shortgpt", None, 6, X6, ref=False),
        _sel(6, "shortgpt", None, 8, S8), _sel(7, "angular", "angular", 8, A8),
        _sel(8, "entrodrop", "entropy.knn_window", 8, E8), _sel(9, "mi_fbs", "mi.perdim", 8, M8),
        _eval(0, None, 1.0), _eval(1, S6, 2.0), _eval(2, A6, 3.0), _eval(3, E6, 2.5), _eval(4, X6, 1.1),
        _eval(5, S8, 5.0), _eval(6, A8, 4.0), _eval(8, M8, 6.0),
    ]


def _study(runs: list[RunRecord], spec: Any) -> Study:
    return study_from_runs(spec, runs)


def test_targets_are_each_familys_best_reference_plan() -> None:
    spec = _spec()
    targets = heal_targets(_study(_runs(), spec), spec.heal)
    got = [(t.n_prune, t.family, t.method, t.blocks, round(t.ppl_ratio, 6)) for t in targets]
    assert got == [(6, "base", "shortgpt", S6, 2.0), (6, "entrodrop", "entrodrop/entropy.knn_window", E6, 2.5),
                   (6, "mi", "mi_fbs/mi.perdim", S6, 2.0),
                   (8, "base", "angular", A8, 4.0), (8, "mi", "mi_fbs/mi.perdim", M8, 6.0)]
    # ShortGPT and MI-PRUN chose the same blocks at n = 6: one healing serves both rows
    assert len({heal_key(t.plan_key, spec.heal) for t in targets}) == 4


def test_heal_key_names_the_plan_and_the_settings() -> None:
    spec = _spec()
    key = heal_key(plan_key(MODEL, "layer", S6), spec.heal)
    assert key.startswith(f"heal|{MODEL}|layer|10,11,12,13,14,15|")
    assert heal_key(plan_key(MODEL, "layer", S6), _spec().heal) == key  # stable across parses
    assert heal_key(plan_key(MODEL, "layer", S6), _spec(steps=6).heal) != key  # another budget heals again
    assert heal_key(plan_key(MODEL, "layer", S6), _spec(lr=1e-3).heal) != key
    # which plans to heal is not part of how they are healed
    assert heal_settings_tag(_spec(n_prune=[6]).heal) == heal_settings_tag(spec.heal)


class _FakeHeal:
    """Records each call and returns what heal_plan would: perplexity ÷ dense halves in log (4 → 2)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, plan: Any, model: str, cfg: Any, out_dir: str, **kw: Any) -> Any:
        self.calls.append({"plan": plan, "model": model, "cfg": cfg, "out_dir": out_dir, **kw})
        merged = Path(out_dir) / "merged"
        merged.mkdir(parents=True)
        before = {c: 4.0 * d for c, d in DENSE.items()}
        after = {c: 2.0 * d for c, d in DENSE.items()}
        m = {"steps": float(cfg.total_steps), "tokens_trained": float(cfg.budget_tokens), "wall_seconds": 90.0}
        for c, d in DENSE.items():
            m |= {f"ppl_before.{c}": before[c], f"ppl_after.{c}": after[c], f"ppl_dense.{c}": d,
                  f"ppl_ratio_before.{c}": 4.0, f"ppl_ratio_after.{c}": 2.0, f"log_gap_recovered.{c}": 0.5}
        return SimpleNamespace(metrics=lambda: m, wall_seconds=90.0, merged_path=str(merged),
                               fit=SimpleNamespace(stopped=None))


def test_heal_study_logs_keyed_runs_and_resumes(tmp_path: Path) -> None:
    spec = _spec()
    slog = StudyLog(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", spec.name, spec.fingerprint)
    study = _study(_runs(), spec)
    fake, released = _FakeHeal(), []
    done, stopped = heal_study(spec, slog, study, {MODEL: 30}, deadline=lambda: False, echo=lambda _: None,
                               release=lambda: released.append(1), heal_fn=fake, root=tmp_path / "heal")
    assert (done, stopped) == (4, False) and released == [1]
    plans = [(c["plan"].blocks, c["plan"].n_blocks, c["plan"].model_id) for c in fake.calls]
    assert plans == [(S6, 30, MODEL), (E6, 30, MODEL), (A8, 30, MODEL), (M8, 30, MODEL)]
    # the first healing measures the dense model; the later ones reuse its numbers
    assert fake.calls[0]["dense"] is True and fake.calls[1]["dense"] == DENSE
    assert all(not Path(c["out_dir"], "merged").exists() for c in fake.calls)  # keep_merged: false
    runs = slog.by_key("heal")
    assert set(runs) == {heal_key(plan_key(MODEL, "layer", b), spec.heal) for b in (S6, E6, A8, M8)}
    shared = runs[heal_key(plan_key(MODEL, "layer", S6), spec.heal)]
    assert shared.tags["families"] == "base,mi" and shared.tags["methods"] == "shortgpt,mi_fbs/mi.perdim"
    assert shared.metrics["heal_minutes"] == pytest.approx(1.5) and shared.metrics["ppl_after.a"] == 20.0
    # resumed: nothing left to heal, no model released
    fake2 = _FakeHeal()
    assert heal_study(spec, slog, study, {MODEL: 30}, deadline=lambda: False, echo=lambda _: None,
                      release=lambda: released.append(2), heal_fn=fake2, root=tmp_path / "heal") == (0, False)
    assert fake2.calls == [] and released == [1]
    # another budget heals every plan again, reusing the dense numbers only from runs of the same settings
    other = _spec(steps=6)
    fake3 = _FakeHeal()
    assert heal_study(other, slog, study, {MODEL: 30}, deadline=lambda: False, echo=lambda _: None,
                      heal_fn=fake3, root=tmp_path / "heal")[0] == 4
    assert fake3.calls[0]["dense"] is True


def test_heal_study_stops_at_the_deadline(tmp_path: Path) -> None:
    spec = _spec()
    slog = StudyLog(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", spec.name, spec.fingerprint)
    fake, ticks = _FakeHeal(), iter([False, True])
    assert heal_study(spec, slog, _study(_runs(), spec), {MODEL: 30}, deadline=lambda: next(ticks),
                      echo=lambda _: None, heal_fn=fake, root=tmp_path / "heal") == (1, True)
    assert len(slog.by_key("heal")) == 1


def test_an_interrupted_healing_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """A SIGTERM mid-training (heal raises HealingInterrupted once its checkpoint is written) stops the study
    without a run; the next study run hands that checkpoint to the same plan's healing instead of starting over.
    A healing that died before any checkpoint starts over in an emptied folder."""
    from blockprune.healing.run import HealingInterrupted

    spec = _spec()
    slog = StudyLog(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", spec.name, spec.fingerprint)
    study = _study(_runs(), spec)

    def interrupted(plan: Any, model: str, cfg: Any, out_dir: str, **kw: Any) -> Any:
        ckpt = Path(out_dir) / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"step 3")
        raise HealingInterrupted(3, ckpt)

    assert heal_study(spec, slog, study, {MODEL: 30}, deadline=lambda: False, echo=lambda _: None,
                      heal_fn=interrupted, root=tmp_path / "heal") == (0, True)
    assert slog.by_key("heal") == {}
    fake = _FakeHeal()
    assert heal_study(spec, slog, study, {MODEL: 30}, deadline=lambda: False, echo=lambda _: None,
                      heal_fn=fake, root=tmp_path / "heal") == (4, False)
    first = fake.calls[0]
    assert first["plan"].blocks == S6 and first["resume"] == Path(first["out_dir"]) / "checkpoints" / "last.ckpt"
    assert all(c["resume"] is None for c in fake.calls[1:])
    # a folder left without a checkpoint (killed while loading): emptied, healed from the start
    stale = _spec(steps=7)
    key = heal_key(heal_targets(study, stale.heal)[0].plan_key, stale.heal)
    folder = tmp_path / "heal2" / f"t-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    (folder / "partial").mkdir(parents=True)
    fake2 = _FakeHeal()
    heal_study(stale, slog, study, {MODEL: 30}, deadline=lambda: False, echo=lambda _: None, heal_fn=fake2,
               root=tmp_path / "heal2")
    assert fake2.calls[0]["out_dir"] == str(folder) and fake2.calls[0]["resume"] is None
    assert not (folder / "partial").exists()


def _heal_run(spec: Any, blocks: tuple[int, ...], before: float, after: float, rid: str) -> RunRecord:
    m = {"steps": 5.0, "tokens_trained": 1280.0, "heal_minutes": 3.0, "logged_at": 500.0}
    for c, d in DENSE.items():
        m |= {f"ppl_ratio_before.{c}": before, f"ppl_ratio_after.{c}": after, f"ppl_dense.{c}": d}
    return RunRecord(rid, {"study.kind": "heal", "study.key": heal_key(plan_key(MODEL, "layer", blocks), spec.heal),
                           "heal_settings": heal_settings_tag(spec.heal)}, m)


def test_section_rows_gap_pending_and_cost(tmp_path: Path) -> None:
    spec = _spec()
    runs = _runs() + [_heal_run(spec, S6, 2.0, 1.25, "hA000001zz"), _heal_run(spec, A8, 4.0, 2.0, "hB000002zz"),
                      _heal_run(_spec(steps=9), E6, 3.0, 1.0, "hC000003zz")]  # other settings: not this study's
    text = "\n".join(heal_section(_study(runs, spec), spec))
    assert text.startswith("## What healing recovers")
    gap = 1 - math.log(1.25) / math.log(2.0)  # 68%
    assert f"| {MODEL} | ShortGPT and baselines | 6 | ShortGPT (BI): 10 11 12 13 14 15 | 2.00 | 1.25 | " \
           f"{100 * gap:.0f}% | 5 steps, 1,280 tokens, 3 min | `hA000001` |" in text
    assert f"| {MODEL} | MI-PRUN | 6 | MI-PRUN FBS: 10 11 12 13 14 15 | 2.00 | 1.25 | 68% |" in text
    assert f"| {MODEL} | ShortGPT and baselines | 8 | angular distance: {' '.join(map(str, A8))} | 4.00 | 2.00 | " \
           "50% |" in text
    assert "| EntroDrop | 6 | EntroDrop · KNN per window: 2 3 4 5 6 7 | – | – | – | not healed yet | `–` |" in text
    # the shared healing is counted once in the cost
    assert "Cost: 2 healings (2,560 tokens trained) took 6 min of wall time in all" in text
    assert "2 plans still to heal." in text
    assert "Above 100%" not in text  # every healed plan here stays above the dense perplexity
    # a healing that ends below dense is flagged as adaptation to the evaluation corpora
    below = heal_section(_study(runs + [_heal_run(spec, E6, 2.0, 0.9, "hD000004zz")], spec), spec)
    flagged = "\n".join(below)
    assert "| 2.00 | 0.90 | 115% |" in flagged
    assert "Above 100%: 1 healed plan ends below the dense model's perplexity." in flagged
    spec_no_heal = replace(spec, heal=None)
    assert heal_section(_study(runs, spec_no_heal), spec_no_heal) == []
    page = render(_study(runs, spec), spec, runs, tmp_path, "figs", "cmd", {MODEL: 30})
    assert "## What healing recovers" in page and "3 of 5 healings" in page  # partial until every target is healed


def test_dense_reference_is_healed_last_and_compared_like_for_like(tmp_path: Path) -> None:
    """``dense_reference``: the dense model, no block dropped, is LoRA-tuned with the same budget; its run keys on
    the dense plan, and the report divides each healed plan's perplexity by the tuned dense model's."""
    spec = _spec(dense_reference=True)
    assert not _spec().heal.dense_reference
    assert heal_settings_tag(spec.heal) == heal_settings_tag(_spec().heal)  # the plans' healings stay valid
    study = _study(_runs(), spec)
    targets = heal_targets(study, spec.heal)
    dense = targets[-1]
    assert (dense.family, dense.blocks, dense.n_prune, dense.plan_key) == ("dense", (), 0, f"{MODEL}|dense")
    assert [t.family for t in targets[:-1]] == [t.family for t in heal_targets(study, _spec().heal)]
    slog = StudyLog(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", spec.name, spec.fingerprint)
    fake, said = _FakeHeal(), []
    assert heal_study(spec, slog, study, {MODEL: 30}, deadline=lambda: False, echo=said.append, heal_fn=fake,
                      root=tmp_path / "heal") == (5, False)
    assert fake.calls[-1]["plan"].blocks == () and fake.calls[-1]["plan"].n_blocks == 30
    assert fake.calls[-1]["dense"] == DENSE  # measured by the first healing, not again
    assert "the dense model, the like-for-like reference" in said[-1]
    assert heal_key(f"{MODEL}|dense", spec.heal) in slog.by_key("heal")

    runs = _runs() + [_heal_run(spec, S6, 2.0, 0.9, "hA000001zz"), _heal_run(spec, A8, 4.0, 2.0, "hB000002zz")]
    pending = "\n".join(heal_section(_study(runs, spec), spec))
    assert f"| {MODEL} | dense model, same budget | 0 | none | – | – | – | – | not healed yet | `–` |" in pending
    assert "is the like-for-like reference (not tuned yet)." in pending
    tuned = RunRecord("hE000005zz", {"study.kind": "heal", "study.key": heal_key(f"{MODEL}|dense", spec.heal),
                                     "heal_settings": heal_settings_tag(spec.heal)},
                      {"steps": 5.0, "tokens_trained": 1280.0, "heal_minutes": 3.0, "logged_at": 600.0}
                      | {f"ppl_ratio_before.{c}": 1.0 for c in DENSE} | {f"ppl_ratio_after.{c}": 0.8 for c in DENSE})
    text = "\n".join(heal_section(_study(runs + [tuned], spec), spec))
    assert "*÷ tuned dense*" in text and "| log-gap recovered | ÷ tuned dense | budget | run |" in text
    # 0.9 below the untuned dense model is still 0.9 / 0.8 = 1.125 above the tuned one
    assert f"| {MODEL} | ShortGPT and baselines | 6 | ShortGPT (BI): 10 11 12 13 14 15 | 2.00 | 0.90 | 115% | " \
           f"{fmt(0.9 / 0.8)} |" in text
    assert f"| {MODEL} | ShortGPT and baselines | 8 | angular distance: {' '.join(map(str, A8))} | 4.00 | 2.00 | " \
           f"50% | {fmt(2.0 / 0.8)} |" in text
    assert f"| {MODEL} | dense model, same budget | 0 | none | 1.00 | 0.80 | – | 1.00 | 5 steps" in text
    assert "Above 100%: 1 healed plan ends below the dense model's perplexity." in text  # not the dense row
    assert f"(after tuning: {MODEL} ppl× 0.80; column *÷ tuned dense*)." in text
    assert "Cost: 3 healings" in text
    # the summary's line: per block count the healed plan that ends lowest, and its cost against the tuned dense
    summary = "\n".join(heal_summary(_study(runs + [tuned], spec), spec))
    assert f"{MODEL}, 6 layers: ShortGPT (BI), ppl× 2.00 → 0.90, {fmt(0.9 / 0.8)}× the tuned dense model's " \
           f"perplexity; {MODEL}, 8 layers: angular distance, ppl× 4.00 → 2.00, {fmt(2.0 / 0.8)}×" in summary
    before_tuning = "\n".join(heal_summary(_study(runs, spec), spec))
    assert "ppl× 2.00 → 0.90;" in before_tuning and "tuned dense" not in before_tuning
    assert heal_summary(_study(_runs(), spec), spec) == []  # nothing healed: no line


@pytest.mark.parametrize(("heal", "match"), [
    ({"dense_reference": "yes"}, "true or false"),
    ({"n_prune": []}, "lists no block counts"),
    ({"granularity": "mlp"}, "layer or attention"),
    ({"keep_merged": "yes"}, "true or false"),
    ({"ckpt": 3}, "unknown key"),
    ({"steps": 0}, "steps"),
])
def test_heal_section_errors(heal: dict[str, Any], match: str) -> None:
    with pytest.raises(StudySpecError, match=match):
        _spec(**heal)


def test_heal_defaults_to_the_studys_held_out_windows() -> None:
    cfg = _spec().heal.config
    assert cfg.eval_corpora == ("a", "b") and cfg.eval_windows == 4
    assert _spec(eval_windows=8).heal.config.eval_windows == 8
