"""``blockprune compare`` on a real sqlite store: the numbers in the table are the runs' numbers."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
from tracking_helpers import LoggedJob

from blockprune.jobs import cli, compare
from blockprune.tracking.compare import CompareConfig, DenseRow, PlanRow, assemble, build, render_markdown
from blockprune.tracking.figures import jaccard

pytestmark = pytest.mark.integration


def markdown_table(md: str, section: str = "## Plans") -> list[dict[str, str]]:
    """Rows of the first pipe table after ``section``, as {header: cell} (emphasis and ★ stripped)."""
    lines = md[md.index(section):].splitlines()
    end = next((i for i, ln in enumerate(lines[1:]) if ln.startswith("#")), len(lines))
    rows = [ln for ln in lines[1:end + 1] if ln.startswith("|")]

    def split(ln: str) -> list[str]:
        cells = re.split(r"(?<!\\)\|", ln.strip())[1:-1]
        return [c.strip().replace("\\|", "|").strip("*").replace(" ★", "").strip("*") for c in cells]

    header = split(rows[0])
    return [dict(zip(header, split(r), strict=True)) for r in rows[2:]]


def run_metrics(job: LoggedJob) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=job.uri)
    return {r.run_id: client.get_run(r.run_id).data for r in job.results}


def test_compare_cli_prints_and_writes_reports(sqlite_job: LoggedJob, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    rc = cli.main(["compare", "--tracking-uri", sqlite_job.uri, "--experiment", sqlite_job.experiment,
                   "--parent-run", sqlite_job.parent_id, "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    md = (out / "compare.md").read_text()
    page = (out / "compare.html").read_text()
    data = run_metrics(sqlite_job)

    rows = markdown_table(md)
    assert len(rows) == 4  # dense reference + 3 plans
    assert rows[0]["plan"] == "dense (unpruned)" and rows[0]["perplexity"] == "21.700"
    by_label = {r["plan"]: r for r in rows[1:]}
    for res in sqlite_job.results:
        m = data[res.run_id].metrics
        label = f"{res.plan.method}/{res.plan.estimator}" if res.plan.estimator else res.plan.method
        row = by_label[label]
        expected = {
            "k": str(res.plan.n_prune),
            "blocks dropped": ",".join(map(str, res.plan.blocks)),
            "params removed (M)": f"{m['params_removed'] / 1e6:.2f}",
            "removed %": f"{100 * m['params_removed_frac']:.1f}",
            "perplexity": f"{m['ppl_pruned']:.3f}",
            "ppl ×dense": f"{m['ppl_ratio']:.3f}",
            "piqa acc": f"{m['pruned.piqa.acc']:.3f}",
            "piqa acc_norm": f"{m['pruned.piqa.acc_norm']:.3f}",
            "arc_easy acc": f"{m['pruned.arc_easy.acc']:.3f}",
            "prefill tok/s": f"{m['latency.prefill_tokens_per_s']:.1f}",
            "decode tok/s": f"{m['latency.decode_tokens_per_s']:.1f}",
            "exact scores": str(round(m["exact_scores"])),
            "score+select s": f"{m['scoring_selection_seconds']:.3f}",
        }
        assert {k: row[k] for k in expected} == expected, label
        for k, v in expected.items():
            if k not in ("k", "blocks dropped"):
                assert v in printed
    # Columns shared by every plan are folded into one line.
    assert "common to all plans: model smollm2-135m · gran. layer · capture s 3.5 · tokens calibrated 256" in md
    # Best marks: lowest perplexity, highest accuracy; equal values (params removed) not marked.
    best = min(sqlite_job.results, key=lambda r: data[r.run_id].metrics["ppl_pruned"])
    assert f"**{data[best.run_id].metrics['ppl_pruned']:.3f} ★**" in md
    assert md.count("★**") >= 2 and "10.62 ★" not in md
    # Agreement matrix = Jaccard of the dropped blocks.
    agree = markdown_table(md, "### smollm2-135m · layer · k=3")
    plans = {(f"{r.plan.method}/{r.plan.estimator}" if r.plan.estimator else r.plan.method): r.plan.blocks
             for r in sqlite_job.results}
    for row in agree:
        a = row[""]
        for b, cell in row.items():
            if b:
                assert cell == f"{jaccard(plans[a], plans[b]):.2f}"
    # Markdown figures exist beside it; the HTML page embeds them and references nothing outside.
    for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / ref).stat().st_size > 1000
    assert "<script" not in page and "<link" not in page
    assert not re.findall(r"""(?:src|href)\s*=\s*['"](?!data:)""", page)
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(imgs) >= 4 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in imgs)
    assert "class='num best'" in page and "perplexity vs" not in page  # one k: no k-sweep plot


def test_compare_filters_and_parent_selection(sqlite_job: LoggedJob, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--tracking-uri", sqlite_job.uri, "--experiment", sqlite_job.experiment, "--no-files"]
    assert compare.main([*base, "--method", "shortgpt", "--method", "mi_fbs"]) == 0
    out = capsys.readouterr().out
    assert "2 plans" in out and "entrodrop" not in out
    cmp = build(CompareConfig(experiment=sqlite_job.experiment, tracking_uri=sqlite_job.uri,
                              parent_run="latest", figures=False))
    assert cmp.parent == sqlite_job.parent_id and len(cmp.rows) == 3
    assert {r.run_id for r in cmp.rows} == {r.run_id for r in sqlite_job.results}
    by_name = build(CompareConfig(experiment=sqlite_job.experiment, tracking_uri=sqlite_job.uri,
                                  parent_run="synthetic-job", figures=False, estimators=("mi.ksg",)))
    assert [r.method for r in by_name.rows] == ["mi_fbs"]
    assert by_name.rows[0].plan == sqlite_job.results[2].plan


def test_compare_errors_are_clear(sqlite_job: LoggedJob, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main(["--tracking-uri", sqlite_job.uri, "--experiment", "nope", "--no-files"]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err
    assert compare.main(["--tracking-uri", sqlite_job.uri, "--experiment", sqlite_job.experiment,
                         "--model", "gemma3-270m", "--no-files"]) == 2
    assert "match the filters" in capsys.readouterr().err
    assert compare.main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--no-files"]) == 2
    assert "no MLflow store" in capsys.readouterr().err


@pytest.mark.unit
def test_cli_registers_compare_and_keeps_calibrate() -> None:
    for cmd in ("compare", "calibrate"):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0


@pytest.mark.unit
def test_tables_and_renderers_are_functions_of_the_rows() -> None:
    """Everything after reading is pure: rows in, sorted rows, columns, best marks and agreement out (no MLflow)."""
    def row(i: int, method: str, est: str | None, blocks: tuple[int, ...], ppl: float) -> PlanRow:
        return PlanRow(f"{i:032x}", f"t{i}", "p" * 32, "m", method, est, "layer", len(blocks), 12, blocks,
                       {"ppl_pruned": ppl, "capture_seconds": 3.0})

    rows = [row(1, "shortgpt", None, (3, 4), 20.0), row(2, "sequential", None, (1, 2, 3), 10.0),
            row(3, "mi_fbs", "mi.ksg", (4, 5), 25.0)]
    cmp = assemble(CompareConfig(experiment="x"), "sqlite:///x.db", "1", None, rows,
                   [DenseRow("p" * 32, "m", {"ppl": 15.0})])
    assert [r.label for r in cmp.rows] == ["mi_fbs/mi.ksg", "shortgpt", "sequential"]  # by k, then label
    assert cmp.best == {"ppl_pruned": {1}}  # shortgpt beats mi_fbs at k=2; sequential (k=3) is not compared
    assert [c.key for c, _ in cmp.common] == ["model", "granularity", "capture_seconds"]
    assert [(a.n_prune, a.matrix[0][1]) for a in cmp.agreements] == [(2, pytest.approx(1 / 3))]
    md = render_markdown(cmp)
    assert "| **20.000 ★** |" in md and "10.000 ★" not in md and "| *15.000* |" in md
    with pytest.raises(ValueError, match="match the filters"):
        assemble(CompareConfig(experiment="x"), "sqlite:///x.db", "1", None, [], [])
