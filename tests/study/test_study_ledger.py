"""runs.json is a ledger: its runs can be recreated in another MLflow store, once, and only for the same grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockprune.study.record import (
    IMPORTED_FROM,
    LM_EVAL_CPU,
    MERGED_FROM,
    ORIGIN,
    RECHECK,
    LedgerMismatchError,
    StudyLog,
    export,
    import_runs,
    traced,
)


def _log(tmp_path: Path, name: str, fingerprint: str = "fp1") -> StudyLog:
    return StudyLog(f"sqlite:///{tmp_path / name}", "exp", "study", fingerprint)


def _fill(slog: StudyLog) -> None:
    cal = slog.start("calibration", "m|a|s0|8x64", "cal", {"model": "m"})
    slog.log(cal, {"capture_seconds": 3.25})
    slog.finish(cal)
    sel = slog.start("selection", "m|a|s0|8x64|shortgpt|-|layer|k=2", "sel",
                     {"model": "m", "blocks": "3,4", "plan_key": "m|layer|3,4"}, params={"k": 2, "opts": {"a": 1}},
                     parent=cal)
    slog.log(sel, {"scoring_seconds": 0.5})
    slog.finish(sel)
    ev = slog.start("evaluation", "m|layer|3,4", "ev", {"model": "m"})
    slog.log(ev, {"ppl.a": 12.345678901234, "piqa.acc": 0.5}, tags={"tasks_done": "piqa:10"})
    slog.finish(ev)
    failed = slog.start("evaluation", "m|layer|5,6", "broken", {"model": "m"})
    slog.finish(failed, ok=False)  # unfinished work is not part of the ledger


def test_round_trip_recreates_every_finished_run(tmp_path: Path) -> None:
    src = _log(tmp_path, "a.db")
    _fill(src)
    ledger = {"fingerprint": "fp1", "runs": export(src.runs())}
    assert len(ledger["runs"]) == 3
    dst = _log(tmp_path, "b.db")
    assert import_runs(dst, ledger, "runs.json") == (3, 0, 0)
    a = {(r.kind, r.key): r for r in src.runs()}
    b = {(r.kind, r.key): r for r in dst.runs()}
    assert a.keys() == b.keys()
    for k, ra in a.items():
        rb = b[k]
        assert rb.metrics == ra.metrics  # exact floats, logged_at included (it orders reruns of a key)
        assert rb.params == ra.params
        assert {t: v for t, v in rb.tags.items() if t in ra.tags and not t.startswith("mlflow.")} == \
            {t: v for t, v in ra.tags.items() if not t.startswith("mlflow.")}
        assert rb.tags[ORIGIN] == ra.run_id and rb.tags[IMPORTED_FROM] == "runs.json"
    assert dst.by_key("evaluation")["m|layer|3,4"].tags["tasks_done"] == "piqa:10"
    # the store's export is the ledger it came from (first ids, no store provenance), and a report names the
    # runs by those ids: moving a study to another machine renumbers nothing
    assert export(dst.runs()) == ledger["runs"]  # same order too: a regenerated ledger does not churn
    assert {traced(r).run_id for r in dst.runs()} == {r.run_id for r in src.runs()}
    third = _log(tmp_path, "c.db")  # a second move keeps the first ids too
    import_runs(third, {"fingerprint": "fp1", "runs": export(dst.runs())}, "runs.json")
    assert {traced(r).run_id for r in third.runs()} == {r.run_id for r in src.runs()}
    # a second import is a no-op; a run logged later in the destination is kept, not duplicated
    assert import_runs(dst, ledger, "runs.json") == (0, 0, 3)
    assert len(dst.runs(finished_only=False)) == 3


def test_import_refuses_another_grid_and_keyless_runs(tmp_path: Path) -> None:
    src = _log(tmp_path, "a.db")
    _fill(src)
    runs = export(src.runs())
    with pytest.raises(LedgerMismatchError, match="grid 'fp1'.*'fp2'"):
        import_runs(_log(tmp_path, "c.db", "fp2"), {"fingerprint": "fp1", "runs": runs}, "runs.json")
    bad = [dict(runs[0], tags={"model": "m"})]
    with pytest.raises(LedgerMismatchError, match="no 'study.kind'"):
        import_runs(_log(tmp_path, "d.db"), {"fingerprint": "fp1", "runs": bad}, "runs.json")


def _ppl_only(slog: StudyLog, ppl: float, seconds: float) -> str:
    rid = slog.start("evaluation", "m|layer|3,4", "ev", {"model": "m", "blocks": "3,4"})
    slog.log(rid, {"ppl.a": ppl, "ppl_seconds": seconds})
    slog.finish(rid)
    return rid


def test_import_adds_lm_eval_measured_elsewhere_to_the_same_plan(tmp_path: Path) -> None:
    """Perplexity measured on both machines, lm-eval only on the other: the store's run gains it."""
    here, there = _log(tmp_path, "here.db"), _log(tmp_path, "there.db")
    mine = _ppl_only(here, 12.5, 40.0)
    theirs = _ppl_only(there, 12.5, 55.0)  # same number, another machine's timing
    there.log(theirs, {"piqa.acc": 0.62, "lm_eval_seconds": 70.0}, tags={"tasks_done": "piqa:10;bfloat16"})
    ledger = {"fingerprint": "fp1", "runs": export(there.runs())}
    before = here.runs()[0].metrics["logged_at"]
    assert import_runs(here, ledger, "runs.json") == (0, 1, 0)
    (run,) = here.runs(finished_only=False)  # no second run of the key
    assert run.run_id == mine
    assert run.metrics["piqa.acc"] == 0.62 and run.tags["tasks_done"] == "piqa:10;bfloat16"
    assert run.metrics["ppl_seconds"] == 40.0  # the store's own timing is kept
    assert run.metrics["logged_at"] == ledger["runs"][0]["metrics"]["logged_at"] > before
    assert run.tags[MERGED_FROM] == "runs.json"
    assert here.by_key("evaluation")["m|layer|3,4"].metrics["piqa.acc"] == 0.62
    assert import_runs(here, ledger, "runs.json") == (0, 0, 1)  # nothing left to add


def test_import_never_overwrites_a_number_measured_differently(tmp_path: Path) -> None:
    here, there = _log(tmp_path, "here.db"), _log(tmp_path, "there.db")
    _ppl_only(here, 12.5, 40.0)
    theirs = _ppl_only(there, 13.0, 40.0)
    there.log(theirs, {"piqa.acc": 0.62}, tags={"tasks_done": "piqa:10;bfloat16"})
    assert import_runs(here, {"fingerprint": "fp1", "runs": export(there.runs())}, "runs.json") == (0, 0, 1)
    (run,) = here.runs()
    assert run.metrics["ppl.a"] == 12.5 and "piqa.acc" not in run.metrics and "tasks_done" not in run.tags


def test_where_a_number_was_measured_never_blocks_an_import(tmp_path: Path) -> None:
    """The dense run rechecked on two machines carries two different ``recheck.*`` notes (and maybe lm-eval
    CPUs): notes are not measurements, so lm-eval measured there still merges and the store's note stays."""
    here, there = _log(tmp_path, "here.db"), _log(tmp_path, "there.db")
    mine, theirs = _ppl_only(here, 12.5, 40.0), _ppl_only(there, 12.5, 40.0)
    here.log(mine, tags={f"{RECHECK}.ppl": "equal (recomputed on CPU A)"})
    there.log(theirs, {"piqa.acc": 0.62}, tags={f"{RECHECK}.ppl": "equal (recomputed on CPU B)",
                                                LM_EVAL_CPU: "CPU B, AVX512, native bfloat16"})
    assert import_runs(here, {"fingerprint": "fp1", "runs": export(there.runs())}, "runs.json") == (0, 1, 0)
    (run,) = here.runs()
    assert run.metrics["piqa.acc"] == 0.62 and run.tags[LM_EVAL_CPU] == "CPU B, AVX512, native bfloat16"
    assert run.tags[f"{RECHECK}.ppl"] == "equal (recomputed on CPU A)"
