"""The README's second "Using it" example, run as written (issue #18, case 7): it failed with an OverflowError
traceback at h_010 after 50 s; it must finish, saying in one WARNING line that the store fell back to float32.

Substitutions: ``.venv/bin/blockprune`` → this interpreter's ``-m blockprune.jobs.cli``, and ``--store-root`` /
``--results-dir`` in the test's folder (the command's own defaults write into the shared cache).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Using it"):]
    block = section[section.index("```bash") + 7: section.index("```", section.index("```bash") + 7)]
    return [ln.split("#")[0].strip() for ln in block.strip().splitlines() if "blockprune calibrate" in ln]


def test_readme_example_two_runs_with_float32_fallback(tmp_path: Path) -> None:
    (example,) = [e for e in readme_examples() if "gemma3-270m" in e]
    assert example == (".venv/bin/blockprune calibrate --model gemma3-270m --corpus lambada --method entrodrop "
                       "--estimator entropy.knn --prune 3")
    args = example.split()[1:]
    cmd = [sys.executable, "-m", "blockprune.jobs.cli", *args, "--store-root", str(tmp_path / "stores"),
           "--results-dir", str(tmp_path / "results")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    fallback = [ln for ln in done.stderr.splitlines() if " WARNING " in ln and "float16" in ln]
    assert len(fallback) == 1 and re.search(r"activations at h_\d+ exceed the float16 range", fallback[0])
    (line,) = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert len(line["blocks"]) == 3 and line["ppl_pruned"] > line["ppl_dense"] > 1
    (manifest,) = (tmp_path / "stores").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["settings"]["store_dtype"] == "float32"
