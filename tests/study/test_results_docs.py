"""The committed reports: every row's numbers equal the MLflow run it names (exported beside the report)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from blockprune.study.markdown import fmt
from blockprune.study.tables import geomean

DOCS = Path(__file__).resolve().parents[2] / "docs"
SPECS = {"RESULTS.md": (False, False), "RESULTS-quick.md": (True, False),  # report → (quick, qwen) spec
         "RESULTS-qwen-quick.md": (True, True), "RESULTS-qwen.md": (False, True)}
REPORTS = list(SPECS)


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and line.rstrip().endswith("` |")]


def _header_before(text: str, row_line: str) -> list[str]:
    lines = text.splitlines()
    i = lines.index(row_line)
    while not lines[i - 1].startswith("|---"):
        i -= 1
    return [c.strip() for c in lines[i - 2].strip().strip("|").split("|")]


@pytest.mark.parametrize("name", REPORTS)
def test_report_cells_match_their_runs(name: str) -> None:
    text = (DOCS / name).read_text()
    runs = json.loads((DOCS / name.removesuffix(".md").lower() / "runs.json").read_text())["runs"]
    by_prefix = {r["run_id"][:8]: r for r in runs}
    assert len(by_prefix) == len(runs)  # short ids are unambiguous
    dense = {r["tags"]["study.key"].split("|")[0]: r for r in runs if r["tags"]["study.key"].endswith("|dense")}
    checked = checked_acc = checked_baseline = 0
    for line in text.splitlines():
        if not (line.startswith("| ") and line.rstrip().endswith("` |")):
            continue
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        hdr = _header_before(text, line)
        if row[-1] == "`–`":  # not evaluated yet: then no measurement may be printed in that row
            assert all(row[hdr.index(c)] == "–" for c in hdr if c.startswith("ppl") or c.startswith(("avg acc", "rel.")))
            continue
        run = by_prefix[row[-1].strip("`")]  # every cited run is in the export
        kind = run["tags"]["study.kind"]
        m = run["metrics"]
        for col, cell in zip(hdr, row, strict=True):
            if col.startswith("ppl ") and col != "ppl× all cal." and kind == "evaluation":
                assert cell == fmt(m[f"ppl.{col[4:]}"]), (name, row, col)
                checked += 1
        if kind == "evaluation" and "ppl×" in hdr and row[0] != "dense":
            model = run["tags"]["study.key"].split("|")[0]
            corpora = [c[4:] for c in hdr if c.startswith("ppl ") and c != "ppl× all cal."]
            ratio = geomean([m[f"ppl.{c}"] / dense[model]["metrics"][f"ppl.{c}"] for c in corpora])
            assert row[hdr.index("ppl×")] == fmt(ratio)
            blocks = run["tags"]["study.key"].split("|")[2].replace(",", " ")
            assert row[hdr.index("dropped (ref.)")] == blocks
            checked += 1
        if kind == "baseline":  # chance / best constant answer under a dense row
            what = "chance" if row[0].startswith("chance") else "constant"
            tasks = [c for c in hdr if f"{c}.{what}" in m]
            assert tasks and all(row[hdr.index(t)] == fmt(m[f"{t}.{what}"], 3) for t in tasks), (name, row)
            assert row[hdr.index("avg acc")] == fmt(sum(m[f"{t}.{what}"] for t in tasks) / len(tasks), 3)
            checked_baseline += 1
        if kind == "evaluation" and "avg acc" in hdr:
            tasks = sorted({k.rsplit(".", 1)[0] for k in m if k.endswith(".acc")})
            if tasks:  # lm-eval done: acc_norm where the task has it, else acc
                avg = sum(m.get(f"{t}.acc_norm", m[f"{t}.acc"]) for t in tasks) / len(tasks)
                assert row[hdr.index("avg acc")] == fmt(avg, 3), (name, row)
                checked_acc += 1
            else:
                assert row[hdr.index("avg acc")] == "–"
    assert checked >= 20, f"only {checked} cells checked in {name}"
    if any(r["tags"]["study.kind"] == "baseline" for r in runs):  # two rows under each model's dense row
        assert checked_baseline == 2 * len(dense), (name, checked_baseline)
    if "lm-eval for 0 of" not in text:  # a partial report may have fewer plans with lm-eval than 5
        with_acc = sum(1 for r in runs if r["tags"]["study.kind"] == "evaluation"
                       and any(k.endswith(".acc") for k in r["metrics"]))
        assert checked_acc >= min(5, with_acc) and with_acc > 0, f"only {checked_acc} accuracy cells checked in {name}"


@pytest.mark.parametrize("name", REPORTS)
def test_report_is_what_the_code_renders_from_its_runs(name: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The committed page, byte for byte, is what the report code renders from the committed ``runs.json``
    (no MLflow: the ledger's runs are the store's runs). Guards refactors of the report and the study tables:
    a changed sentence, table, label or number fails here. Only the generation date is taken from the page."""
    import datetime as dt

    from blockprune.study.report import ledger_runs, render, study_from_runs
    from blockprune.study.spec import default_spec_path, load_spec, validate

    monkeypatch.chdir(DOCS.parent)  # the page names its spec relative to the checkout
    text = (DOCS / name).read_text()
    command, date = re.search(r"Generated by `([^`]*)` on (\d{4}-\d\d-\d\d) ", text).groups()  # type: ignore[union-attr]
    quick, qwen = SPECS[name]
    spec = load_spec(default_spec_path(quick=quick, qwen=qwen))
    rel_dir = name.removesuffix(".md").lower()
    runs = ledger_runs(DOCS / rel_dir / "runs.json")
    page = render(study_from_runs(spec, runs), spec, runs, tmp_path, rel_dir, command, validate(spec))
    page = page.replace(f" on {dt.date.today().isoformat()} from", f" on {date} from", 1)
    assert page.splitlines() == text.splitlines()  # a list diff names the first line that differs
    assert page == text
    committed = {p.name for p in (DOCS / rel_dir).glob("*.png")}
    assert {p.name for p in tmp_path.glob("*.png")} == committed and committed
