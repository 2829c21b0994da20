"""The "bad input" table: every way a user can get a job wrong, as a CLI subprocess each.

Each case is what a new user would type (files written as they would have them), and what must come out:
exit code 2, exactly one line on stderr (``blockprune: error: …``) naming the file or value at fault, no
traceback, and no sign on stdout that the job went on to load model weights (``input checked; loading``).
Used by ``test_bad_input.py``; importable on its own to run the table against another checkout
(``PYTHONPATH=<checkout>``) for a before/after comparison.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SMALL = ["--corpus", "lee-news", "--n-samples", "4", "--seq-len", "64", "--sample-rows", "128", "--eval-windows",
         "2", "--quiet"]
WEIGHTS_LOADING = "input checked; loading"  # what the CLIs print right before they load weights


@dataclass
class Case:
    """One bad input. ``args`` may contain ``{tmp}``; ``setup(tmp)`` writes the files it needs."""

    name: str
    issue: str  # "#18.n" for the issue's numbered cases, "" for ones that already behaved
    args: list[str]
    expect: list[str]  # substrings of the error line (the file or name at fault)
    setup: Callable[[Path], None] | None = None
    tmpfs: dict[str, int] = field(default_factory=dict)  # path (with {tmp}) → MiB
    readonly: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _opt_model(tmp: Path) -> None:
    from transformers import AutoConfig

    AutoConfig.for_model("opt", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         ffn_dim=32).save_pretrained(tmp / "opt")


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def _plan(**changes: Any) -> dict[str, Any]:
    plan = {"model_id": "smollm2-135m", "n_blocks": 30, "blocks": [12, 13], "granularity": "layer",
            "method": "shortgpt", "estimator": None, "estimator_params": {}, "calibration": None, "revision": None,
            "scores": {}, "run_scores": {}, "info": {}, "format_version": 1}
    for k, v in changes.items():
        if v is None:
            plan.pop(k)
        else:
            plan[k] = v
    return plan


def _plan_file(name: str, content: Any) -> Callable[[Path], None]:
    return _write(name, content if isinstance(content, str) else json.dumps(content))


def _dirs(*names: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for n in names:
            (tmp / n).mkdir(parents=True, exist_ok=True)

    return setup


def _both(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for fn in fns:
            fn(tmp)

    return setup


BINARY = random.Random(0).randbytes(400_000)  # 400 KB of binary data saved as .txt (enough tokens to calibrate on)
CAL = ["calibrate", "--model", "smollm2-135m", "--store-root", "{tmp}/stores"]
EVAL = ["evaluate", "--model", "smollm2-135m", "--corpus", "lee-news", "--seq-len", "64", "--eval-windows", "2",
        "--no-tracking", "--quiet"]
NT = ["--no-tracking"]

CASES: list[Case] = [
    # ------------------------------------------------------------------ the issue's numbered cases
    Case("estimator param unknown", "#18.4", [*CAL, *SMALL, *NT, "--method", "entrodrop", "--estimator", "entropy.knn",
                                              "--estimator-params", '{"bogus": 5}'], ["'bogus'", "entropy.knn"]),
    Case("estimator params a list", "#18.4", [*CAL, *SMALL, *NT, "--method", "entrodrop", "--estimator-params",
                                              "[1, 2]"], ["--estimator-params", "JSON object"]),
    Case("params for shortgpt", "#18.4", [*CAL, *SMALL, *NT, "--method", "shortgpt", "--estimator-params",
                                          '{"k": 5}'], ["shortgpt", "would be ignored"]),
    Case("--save-dir is a file", "#18.4", [*CAL, *SMALL, *NT, "--save-dir", "{tmp}/taken"], ["{tmp}/taken", "file"],
         setup=_write("taken", "x")),
    Case("store root disk full", "#18.2", [*CAL, *SMALL, *NT], ["disk space", "{tmp}/stores"],
         setup=_dirs("stores"), tmpfs={"{tmp}/stores": 8}),
    Case("--save-dir disk full", "#18.2", [*CAL, *SMALL, *NT, "--save-dir", "{tmp}/pruned"],
         ["disk space", "{tmp}/pruned", "pruned model"], setup=_dirs("pruned"), tmpfs={"{tmp}/pruned": 16}),
    Case("read-only tracking folder", "#18.6", [*CAL, *SMALL, "--tracking-uri", "sqlite:///{tmp}/ro/mlflow.db"],
         ["{tmp}/ro", "not writable"], setup=_dirs("ro"), readonly=["{tmp}/ro"]),
    Case("plan: missing key", "#18.8", [*EVAL, "--plan", "{tmp}/p.json"], ["{tmp}/p.json", "missing key(s) blocks"],
         setup=_plan_file("p.json", _plan(blocks=None))),
    Case("plan: extra key", "#18.8", [*EVAL, "--plan", "{tmp}/p.json"], ["{tmp}/p.json", "unknown key(s) layers"],
         setup=_plan_file("p.json", _plan(layers=[1]))),
    Case("plan: a list", "#18.8", [*EVAL, "--plan", "{tmp}/p.json"], ["{tmp}/p.json", "JSON object"],
         setup=_plan_file("p.json", [_plan()])),
    Case("plan: truncated JSON", "#18.8", [*EVAL, "--plan", "{tmp}/p.json"], ["{tmp}/p.json", "not valid JSON"],
         setup=_plan_file("p.json", json.dumps(_plan())[:60])),
    Case("plan: 40-layer model", "#18.8", [*EVAL, "--plan", "{tmp}/p.json"], ["{tmp}/p.json", "40 layers"],
         setup=_plan_file("p.json", _plan(n_blocks=40, blocks=[30, 31]))),
    Case("corpus: non-UTF-8 .jsonl", "#18.8", [*CAL, *SMALL, *NT, "--corpus", "{tmp}/latin1.jsonl"],
         ["{tmp}/latin1.jsonl", "UTF-8"],
         setup=_write("latin1.jsonl", '{"text": "caf\xe9 au lait"}\n'.encode("latin-1") * 50)),
    Case("corpus: binary .txt", "#18.12", [*CAL, *SMALL, *NT, "--corpus", "{tmp}/garbage.txt"],
         ["{tmp}/garbage.txt", "does not look like text"], setup=_write("garbage.txt", BINARY)),
    # ------------------------------------------------------------------ more of the same kinds
    Case("corpus: truncated .jsonl line", "", [*CAL, *SMALL, *NT, "--corpus", "{tmp}/cut.jsonl"],
         ["{tmp}/cut.jsonl", "line 3"], setup=_write("cut.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c')),
    Case("plan: missing file", "", [*EVAL, "--plan", "{tmp}/nope.json"], ["{tmp}/nope.json", "does not exist"]),
    Case("plan: another model", "", [*EVAL, "--plan", "{tmp}/p.json"], ["{tmp}/p.json", "gemma3-270m"],
         setup=_plan_file("p.json", _plan(model_id="gemma3-270m", n_blocks=18, blocks=[3]))),
    Case("estimator params invalid JSON", "", [*CAL, *SMALL, *NT, "--method", "entrodrop", "--estimator-params",
                                               "{k: 5"], ["--estimator-params", "not valid JSON"]),
    Case("--plan-out is a folder", "", [*CAL, *SMALL, *NT, "--plan-out", "{tmp}/plans"], ["{tmp}/plans", "folder"],
         setup=_dirs("plans")),
    # ------------------------------------------------------------------ cases that already behaved
    Case("unknown model", "", [*CAL[:2], "gpt-17", *CAL[3:], *SMALL, *NT], ["gpt-17"]),
    Case("unknown corpus", "", [*CAL, *SMALL, *NT, "--corpus", "no-such-corpus"], ["no-such-corpus"]),
    Case("unknown method", "", [*CAL, *SMALL, *NT, "--method", "nope"], ["'nope'"]),
    Case("unknown estimator", "", [*CAL, *SMALL, *NT, "--method", "entrodrop", "--estimator", "entropy.nope"],
         ["entropy.nope"]),
    Case("estimator of the wrong kind", "", [*CAL, *SMALL, *NT, "--method", "entrodrop", "--estimator", "mi.ksg"],
         ["mi.ksg"]),
    Case("unknown architecture", "", [*CAL[:2], "{tmp}/opt", *CAL[3:], *SMALL, *NT], ["'opt'"], setup=_opt_model),
    Case("--prune too large", "", [*CAL, *SMALL, *NT, "--prune", "30"], ["between 1 and 29"]),
    Case("--prune zero", "", [*CAL, *SMALL, *NT, "--prune", "0"], ["between 1 and 29"]),
    Case("run method at attention granularity", "", [*CAL, *SMALL, *NT, "--method", "mi_fbs", "--granularity",
                                                     "attention"], ["mi_fbs", "whole layers"]),
    Case("corpus too short", "", [*CAL, *SMALL, *NT, "--n-samples", "5000", "--seq-len", "512"], ["5000 × 512"]),
    Case("unknown lm-eval task", "", [*CAL, *SMALL, *NT, "--tasks", "piqa,no_such_task"], ["no_such_task"]),
    Case("unreachable tracking server", "", [*CAL, *SMALL, "--tracking-uri", "http://127.0.0.1:{port}"],
         ["http://127.0.0.1:{port}"]),
    Case("missing tracking folder", "", [*CAL, *SMALL, "--tracking-uri", "sqlite:///{tmp}/no/dir/mlflow.db"],
         ["{tmp}/no/dir", "does not exist"]),
    Case("missing --config file", "", ["calibrate", "--config", "{tmp}/job.yaml", *NT], ["{tmp}/job.yaml"]),
    Case("evaluate: unknown model", "", ["evaluate", "--model", "gpt-17", "--no-tracking"], ["gpt-17"]),
]


@dataclass
class Outcome:
    code: int
    stderr: list[str]
    stdout: str
    seconds: float

    @property
    def reached_weights(self) -> bool:
        return WEIGHTS_LOADING in self.stdout


def run_case(case: Case, tmp: Path, env: dict[str, str] | None = None, timeout: float = 300,
             wrap: Callable[..., list[str]] | None = None) -> tuple[Outcome, list[str]]:
    """Run one case in a fresh ``tmp``; returns the outcome and the expected substrings with paths filled in."""
    tmp.mkdir(parents=True, exist_ok=True)
    subs = {"tmp": str(tmp), "port": str(_free_port())}
    if case.setup:
        case.setup(tmp)
    def fill(text: str) -> str:
        for k, v in subs.items():
            text = text.replace("{" + k + "}", v)
        return text

    args = [fill(a) for a in case.args]
    cmd = [sys.executable, "-m", "blockprune.jobs.cli", *args]
    if case.tmpfs or case.readonly:
        assert wrap is not None, f"case {case.name!r} needs mounts"
        cmd = wrap(cmd, tmpfs={fill(p): mib for p, mib in case.tmpfs.items()}, readonly=[fill(p) for p in case.readonly])
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp,
                              env={**os.environ, **(env or {})})
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = -999, (e.stdout or b"").decode(errors="replace"), (e.stderr or b"").decode(errors="replace")
    seconds = time.perf_counter() - t0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return Outcome(code, lines, out, seconds), [fill(x) for x in case.expect]
