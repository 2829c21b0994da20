"""Everything a job checks and tokenises before a single weight is loaded, and where its store lives.

``prepare`` is the one place bad input is caught: unknown model, architecture, method or estimator, an
estimator parameter the estimator does not take, ``--prune`` out of range, a corpus too short, unknown
lm-eval tasks, a ``--save-dir`` that is a file, too little disk space for the store or the pruned models.
Both backends call it first, so a mistake costs seconds, never a capture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from blockprune import estimators
from blockprune.calibration.capture import capture, store_key
from blockprune.calibration.corpora import Corpus, load_corpus
from blockprune.calibration.settings import CaptureSettings, for_window_pooling
from blockprune.calibration.store import MANIFEST, ActivationStore, open_or_capture
from blockprune.calibration.windows import TokenWindows, calibration_windows, heldout_windows
from blockprune.env import cache_dir
from blockprune.errors import BadInputError
from blockprune.evaluation.lm_eval_tasks import resolve_task_names
from blockprune.models.adapters import Adapter, adapter_for_config, text_config
from blockprune.models.zoo import ResolvedModel, load_tokenizer, resolve_model
from blockprune.pipeline.config import JobConfig, TrialSpec
from blockprune.pipeline.space import check_job_space, store_bytes
from blockprune.selection.entrodrop import STAGE_RULES
from blockprune.selection.methods import METHODS

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A job with everything resolved and tokenised: what every later stage reads."""

    job: JobConfig
    resolved: ResolvedModel
    adapter: Adapter
    n_layers: int
    tokenizer: Any
    corpus: Corpus
    windows: TokenWindows
    eval_windows: TokenWindows
    eval_corpus: str


def validate_trial(trial: TrialSpec, n_layers: int) -> None:
    """Every check a trial can fail without touching the model, read from the method and estimator specs."""
    spec = METHODS.get(trial.method)  # unknown method → lists the known ones
    if not 1 <= trial.n_prune < n_layers:
        raise BadInputError(
            f"--prune must be between 1 and {n_layers - 1} for a model with {n_layers} layers, got {trial.n_prune}")
    if trial.granularity != "layer" and spec.layer_only:
        raise BadInputError(f"method {trial.method!r} scores runs of whole layers; use granularity 'layer'")
    if not isinstance(trial.estimator_params, dict):
        raise BadInputError(f"estimator parameters must be a JSON object such as {{\"k\": 5}}, got "
                            f"{trial.estimator_params!r}")
    if trial.estimator is not None:
        est = estimators.get(trial.estimator)  # unknown estimator → lists the known ones
        if spec.estimator_kind is None:
            raise BadInputError(f"method {trial.method!r} takes no estimator, got {trial.estimator!r}")
        if est.kind != spec.estimator_kind:
            raise BadInputError(
                f"{trial.method} needs {'an' if spec.estimator_kind[0] in 'aeiou' else 'a'} {spec.estimator_kind} "
                f"estimator ({', '.join(estimators.names(spec.estimator_kind))}), got {trial.estimator!r}")
        est.check_params(trial.estimator_params)
    elif trial.estimator_params:
        raise BadInputError(f"method {trial.method!r} uses no estimator here, so estimator parameters "
                            f"{trial.estimator_params} would be ignored")
    if trial.s_start is not None and trial.method != "entrodrop":
        raise BadInputError("s_start applies to entrodrop only")
    if trial.stage_rule is not None:

        if trial.method != "entrodrop":
            raise BadInputError("stage_rule applies to entrodrop only")
        if trial.stage_rule not in STAGE_RULES:
            raise BadInputError(f"stage_rule must be one of {', '.join(STAGE_RULES)}, got {trial.stage_rule!r}")


def prepare(job: JobConfig) -> Prepared:
    """Resolve, validate and tokenise; raises before any forward pass on bad input."""
    from transformers import AutoConfig

    resolved = resolve_model(job.model)
    config = AutoConfig.from_pretrained(resolved.path)
    adapter = adapter_for_config(config)
    n_layers = adapter.n_layers(config)
    for t in job.trials:
        validate_trial(t, n_layers)
    ev = job.evaluation
    if ev.tasks:

        resolve_task_names(list(ev.tasks))
    if job.heal is not None:
        from blockprune.healing.run import precheck_heal

        precheck_heal(job.model, job.heal)  # LoRA targets and the training budget, before any weights load
    tokenizer = load_tokenizer(resolved)
    cal = job.calibration
    corpus = load_corpus(cal.corpus, job.text_field)
    windows = calibration_windows(tokenizer, corpus, cal.n_samples, cal.seq_len, cal.seed)
    eval_name = ev.corpus or cal.corpus
    eval_corpus = corpus if eval_name == cal.corpus else load_corpus(eval_name, job.text_field)
    eval_windows = heldout_windows(tokenizer, eval_corpus, ev.seq_len or cal.seq_len, ev.windows)
    p = Prepared(job, resolved, adapter, n_layers, tokenizer, corpus, windows, eval_windows, eval_name)
    check_space(p, int(text_config(config).hidden_size))
    return p


def check_space(p: Prepared, hidden: int) -> None:
    """Room for the store (unless it is finished already) and for every pruned model ``save_dir`` will hold."""

    cap = p.job.capture
    path = store_path(p)
    needed = None
    if not (path / MANIFEST).exists():
        ids = p.windows.input_ids
        per_window = ids.shape[1] - (1 if p.windows.has_bos and not cap.include_bos else 0)
        n_rows = min(cap.sample_rows, ids.shape[0] * per_window)
        needed = store_bytes(p.n_layers, hidden, n_rows, cap.capture_mid, cap.store_dtype)
    check_job_space(path, needed, p.job.save_dir, p.resolved.path, p.job.dtype, p.job.trials)


# ----------------------------------------------------------------------------------- the store


def store_meta(p: Prepared) -> dict[str, Any]:
    """What a store's content depends on besides the capture settings: its identity."""
    cal = p.job.calibration
    return {
        "model": p.resolved.name,
        "revision": p.resolved.revision,
        "corpus": cal.corpus,
        "corpus_fingerprint": p.corpus.fingerprint(),
        "n_samples": cal.n_samples,
        "seq_len": cal.seq_len,
        "seed": cal.seed,
        "dtype": p.job.dtype,
    }


def trial_capture(trial: TrialSpec, settings: CaptureSettings) -> CaptureSettings:
    """The capture a trial reads: whole windows with position 0 kept for a per-window estimator
    (EntroDrop's reference reading), the job's own capture for everything else.

    Why a second store rather than one for all: pooled estimators want rows spread over every window,
    per-window ones want every row of fewer windows; one sample cannot be both."""
    if trial.estimator and estimators.get(trial.estimator).pooling == "window":
        return for_window_pooling(settings)
    return settings


def with_capture(p: Prepared, settings: CaptureSettings) -> Prepared:
    """``p`` with other capture settings (its store path follows them); windows and model are shared."""
    return p if settings == p.job.capture else replace(p, job=replace(p.job, capture=settings))


def trial_store(p: Prepared, trial: TrialSpec, stores: dict[CaptureSettings, ActivationStore],
                capture: Callable[[Prepared, TrialSpec], ActivationStore]) -> tuple[Prepared, ActivationStore]:
    """(the job as this trial reads it, its store) from ``stores`` (keyed by capture settings, the job's own
    store in it); a capture a trial needs and no earlier trial did is made (or reused) by ``capture`` once."""
    settings = trial_capture(trial, p.job.capture)
    t_p = with_capture(p, settings)
    if settings not in stores:
        stores[settings] = capture(t_p, trial)
    return t_p, stores[settings]


def store_path(p: Prepared) -> Path:
    root = Path(p.job.store_root or Path(cache_dir()) / "stores")
    return root / f"{p.resolved.name.replace('/', '__')}-{store_key(store_meta(p), p.job.capture)}"


def capture_or_reuse(p: Prepared, model: Any, progress: bool = True,
                     load: Callable[[], Any] | None = None, *,
                     streamed_device: str | None = None) -> tuple[ActivationStore, bool]:
    """(store, reused): a finished store with the same settings is verified and reused, never recaptured.

    Through :func:`~blockprune.calibration.store.open_or_capture`, as the distributed path: under the store's
    file lock, a corrupt store is moved aside and captured again, partial folders of crashed captures are
    removed, and a float16 capture that overflows is repeated in float32 at the same path. ``load`` gives
    the model when ``model`` is None and a capture turns out to be needed (a caller that expected reuse).
    ``streamed_device`` captures layer by layer from the checkpoint on that device (``model`` unused): the
    same store, for a model larger than memory."""

    def run(store_dtype: str) -> ActivationStore:
        settings = replace(p.job.capture, store_dtype=store_dtype)
        meta = store_meta(p)
        if store_dtype != p.job.capture.store_dtype:
            meta["store_dtype_requested"] = p.job.capture.store_dtype
        if streamed_device is not None:
            from blockprune.calibration.streamed import capture_streamed

            return capture_streamed(p.resolved.path, p.adapter, p.windows, store_path(p), meta, settings,
                                    dtype=p.job.dtype, device=streamed_device, progress=progress)
        m = model if model is not None or load is None else load()
        return capture(m, p.adapter, p.windows, store_path(p), meta, settings, progress=progress)

    return open_or_capture(store_path(p), run, p.job.capture.store_dtype)
