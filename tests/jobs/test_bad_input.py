"""Every bad input, through the real CLI in a subprocess: exit 2, one line on stderr naming the file or value,
no traceback, and never as far as loading weights. The table is in ``bad_input_cases.py``.

The time to each error is measured and printed (``pytest -s`` shows the table); the bound asserted is
"before weights load" (the CLI's own "input checked; loading" line never appears), not a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bad_input_cases import CASES, Case, run_case

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMES: list[tuple[str, str, int, float, str]] = []


@pytest.fixture(scope="module", autouse=True)
def print_table() -> Any:
    yield
    print("\n\ncase                                      issue   exit  seconds  message")
    for name, issue, code, seconds, line in TIMES:
        print(f"{name:<42}{issue:<8}{code:>4}{seconds:>9.1f}  {line[:150]}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_before_weights_load(case: Case, tmp_path: Path, mounts: Any) -> None:
    out, expect = run_case(case, tmp_path / "case", wrap=mounts)
    line = out.stderr[0] if out.stderr else ""
    TIMES.append((case.name, case.issue, out.code, out.seconds, line))
    assert out.code == 2, (out.code, out.stderr[-20:])
    assert len(out.stderr) == 1, f"expected one line on stderr, got {len(out.stderr)}: {out.stderr[:20]}"
    assert line.startswith("blockprune: error: "), line
    assert "Traceback" not in line
    for needle in expect:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert not out.reached_weights, "the job went on to load weights before rejecting the input"
