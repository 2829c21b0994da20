"""Healing in the study: after evaluation, LoRA-heal the plan a user would deploy and report what it recovers.

Which plans: for each model, each block count in the spec's ``heal.n_prune`` and each method family (the
paper a method comes from: ShortGPT and the baselines, EntroDrop, MI-PRUN), the reference calibration's
plan with the lowest ppl×. Two families that chose the same blocks share one healing (one run per plan).
With ``heal.dense_reference`` the dense model is LoRA-tuned with the same budget too: healing trains on the
corpora the perplexity is measured on, so that run, not the untuned dense model, is what a healed plan is
compared with like for like.

Each healing is a study run of kind ``heal``, keyed by the plan and a digest of the healing settings
(:func:`heal_key`), so a study resumes past finished healings and a change of budget heals again. Its
metrics are those of :meth:`blockprune.healing.run.HealResult.metrics` (perplexity before / after / dense
per corpus on the held-out windows, tokens trained, seconds) plus ``heal_minutes``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockprune.env import cache_dir
from blockprune.models.zoo import resolve_model
from blockprune.selection.plan import PrunePlan
from blockprune.study.markdown import fmt, short, table
from blockprune.study.record import RunRecord, StudyLog, blocks_text, plan_key
from blockprune.study.spec import StudyHeal, StudySpec
from blockprune.study.tables import Study, family, geomean

FAMILY_NAMES = {"base": "ShortGPT and baselines", "entrodrop": "EntroDrop", "mi": "MI-PRUN"}
DENSE_FAMILY = "dense"  # the dense-reference target's family: the dense model, tuned with the same budget
HealFn = Callable[..., Any]  # heal_plan's signature: (plan, model, cfg, out_dir, **kwargs) -> HealResult


@dataclass(frozen=True)
class HealTarget:
    """One family's best reference plan at one block count: what the report's healing row is about."""

    model: str
    family: str
    method: str  # the method id whose plan it is (the first in the report's order among equals); "dense": none
    n_prune: int
    granularity: str
    blocks: tuple[int, ...]
    plan_key: str
    ppl_ratio: float


def heal_settings_tag(heal: StudyHeal) -> str:
    """A digest of everything that changes a healing's numbers (the whole HealConfig)."""
    payload = json.dumps(heal.config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def heal_key(plan_key: str, heal: StudyHeal) -> str:
    return f"heal|{plan_key}|{heal_settings_tag(heal)}"


def heal_targets(study: Study, heal: StudyHeal) -> list[HealTarget]:
    """Per model, block count and family (in that order), the reference plan with the lowest ppl×; ties go to
    the method listed first. Families without a measured plan at that count are left out. With
    ``dense_reference``, each model's list ends with the dense model (no blocks dropped, ppl× 1)."""
    out = []
    for m in study.models:
        for n in heal.n_prune:
            best: dict[str, HealTarget] = {}
            for r in study.rows(m, heal.granularity, n):
                if r.ppl_ratio is None:
                    continue
                fam = family(r.method)
                if fam not in best or r.ppl_ratio < best[fam].ppl_ratio:
                    best[fam] = HealTarget(m, fam, r.method, n, heal.granularity, r.blocks, r.plan_key, r.ppl_ratio)
            out += [best[f] for f in FAMILY_NAMES if f in best]
        if heal.dense_reference:
            out.append(HealTarget(m, DENSE_FAMILY, DENSE_FAMILY, 0, heal.granularity, (), plan_key(m, "", None), 1.0))
    return out


def _dense_from(runs: list[RunRecord], model: str) -> dict[str, float] | None:
    """The dense perplexities an earlier healing of the same model and settings measured (saves a model load)."""
    for r in runs:
        if r.tags.get("model") == model:
            dense = {k.removeprefix("ppl_dense."): v for k, v in r.metrics.items() if k.startswith("ppl_dense.")}
            if dense:
                return dense
    return None


def heal_study(spec: StudySpec, slog: StudyLog, study: Study, n_layers: dict[str, int], *,
               deadline: Callable[[], bool],
               echo: Callable[[str], None], release: Callable[[], None] = lambda: None,
               heal_fn: HealFn | None = None, root: str | Path | None = None) -> tuple[int, bool]:
    """Heal every target not healed yet under these settings; returns (healings done, stopped at the deadline).

    ``n_layers``: each model's depth (what :func:`~blockprune.study.spec.validate` returns). ``release`` frees the study's loaded models first (healing loads its own float32 copy and trains it);
    ``heal_fn`` defaults to :func:`blockprune.healing.run.heal_plan`; ``root``: where healing outputs go
    (default ``$BLOCKPRUNE_CACHE/study-heal``). Without ``keep_merged`` the merged weights are deleted once
    measured; the adapter and ``heal.json`` stay."""
    heal = spec.heal
    if heal is None:
        return 0, False
    tag = heal_settings_tag(heal)
    finished = [r for r in slog.runs("heal") if r.tags.get("heal_settings") == tag]
    done_keys = {r.key for r in finished}
    targets = heal_targets(study, heal)
    todo: dict[str, list[HealTarget]] = {}
    for t in targets:
        key = heal_key(t.plan_key, heal)
        if key not in done_keys:
            todo.setdefault(key, []).append(t)
    if not todo:
        return 0, False
    from blockprune.healing.run import HealingInterrupted, last_checkpoint  # torch, lightning: when healing

    if heal_fn is None:
        from blockprune.healing.run import heal_plan as heal_fn
    release()
    out_root = Path(root or Path(cache_dir()) / "study-heal")
    count = 0
    for key, group in todo.items():
        if deadline():
            return count, True
        t = group[0]
        resolved = resolve_model(t.model)
        plan = PrunePlan(model_id=resolved.name, revision=resolved.revision, n_blocks=n_layers[t.model],
                         blocks=t.blocks, granularity=t.granularity,  # type: ignore[arg-type]
                         method=t.method.partition("/")[0])
        out_dir = out_root / f"{spec.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        resume = last_checkpoint(out_dir)  # an interrupted healing of this key continues from its checkpoint
        if out_dir.exists() and resume is None:  # one that died before any checkpoint: start it over
            shutil.rmtree(out_dir)
        dense = _dense_from(finished, t.model) or True
        what = ("the dense model, the like-for-like reference" if t.family == DENSE_FAMILY else
                f"best plan of {', '.join(FAMILY_NAMES[g.family] for g in group)} "
                f"({study.name(t.method)}, ppl× {t.ppl_ratio:.2f})")
        echo(f"[study] heal {key}: {what}" + (f"; resuming {resume}" if resume else ""))
        try:
            result = heal_fn(plan, resolved.name, heal.config, str(out_dir), tracker=None, dense=dense,
                             progress=False, echo=echo, resume=resume)
        except HealingInterrupted as e:  # SIGINT/SIGTERM: the checkpoint is written, the next run resumes it
            echo(f"[study] heal {key}: interrupted after step {e.step}; run the study again to resume")
            return count, True
        metrics = dict(result.metrics())
        metrics["heal_minutes"] = float(result.wall_seconds) / 60
        if not heal.keep_merged and result.merged_path:
            shutil.rmtree(result.merged_path, ignore_errors=True)
        tags = {"model": t.model, "granularity": t.granularity, "blocks": blocks_text(t.blocks),
                "n_prune": t.n_prune, "plan_key": t.plan_key, "heal_settings": tag,
                "families": ",".join(g.family for g in group), "methods": ",".join(g.method for g in group),
                "heal_dir": str(out_dir), "heal.status": "completed" if result.fit.stopped is None else "time_budget"}
        rid = slog.start("heal", key, f"heal {key}", tags, params={"heal": heal.config.to_dict()})
        slog.log(rid, metrics)
        slog.finish(rid)
        finished.append(RunRecord(rid, tags, metrics))
        count += 1
    return count, False


def _ratio(metrics: dict[str, float], when: str) -> float | None:
    vals = [v for k, v in metrics.items() if k.startswith(f"ppl_ratio_{when}.")]
    return geomean(vals) if vals and all(v > 0 for v in vals) else None


def heal_rows(study: Study, heal: StudyHeal) -> list[tuple[HealTarget, RunRecord | None]]:
    """Each target with its finished healing under the spec's settings (None: not healed yet)."""
    tag = heal_settings_tag(heal)
    by_key = {r.key: r for r in study.heals if r.tags.get("heal_settings") == tag}
    return [(t, by_key.get(heal_key(t.plan_key, heal))) for t in heal_targets(study, heal)]


def _tuned_dense(rows: list[tuple[HealTarget, RunRecord | None]]) -> dict[str, float | None]:
    """Per model, the ppl× after of its dense-reference healing (the dense model tuned with the same budget)."""
    return {t.model: _ratio(r.metrics, "after") for t, r in rows if t.family == DENSE_FAMILY and r is not None}


def heal_summary(study: Study, spec: StudySpec) -> list[str]:
    """The summary's line on healing: per model and block count, the healed plan that ends lowest, its ppl×
    before → after, and (with ``dense_reference``) what it still costs against the dense model tuned the same
    way, the number a user deploying a healed plan compares with."""
    heal = spec.heal
    if heal is None:
        return []
    done = [(t, r) for t, r in heal_rows(study, heal) if r is not None]
    tuned = _tuned_dense(done)
    best: dict[tuple[str, int], tuple[HealTarget, float, float | None]] = {}
    for t, r in done:
        after = _ratio(r.metrics, "after")
        if t.family == DENSE_FAMILY or after is None:
            continue
        if (t.model, t.n_prune) not in best or after < best[(t.model, t.n_prune)][1]:
            best[(t.model, t.n_prune)] = (t, after, _ratio(r.metrics, "before"))
    if not best:
        return []
    parts = []
    for (m, n), (t, after, before) in best.items():
        vs = f", {fmt(after / tuned[m])}× the tuned dense model's perplexity" if tuned.get(m) else ""
        parts.append(f"{m}, {n} {heal.granularity}s: {study.name(t.method)}, ppl× {fmt(before)} → {fmt(after)}{vs}")
    cfg = heal.config
    return [f"**Healing** (LoRA, {cfg.budget_tokens:,} tokens; *What healing recovers*), the healed plan that ends "
            "lowest per block count: " + "; ".join(parts) + "." + (
                " The dense model tuned with the same budget gains too (healing trains on the evaluated corpora), "
                "so the last number, not ppl× after, is what pruning still costs." if tuned else ""), ""]


PRECISION_TEXT = {"bf16-mixed": "; float32 weights and optimizer, forward and backward under bf16 autocast",
                  "bf16-true": "; weights and compute in bf16", "16-mixed": "; forward and backward under fp16 autocast"}


def heal_section(study: Study, spec: StudySpec) -> list[str]:
    """"What healing recovers": before / after per healed plan, the share of the log-perplexity gap to the
    dense model it closes, the budget, and what it all cost."""
    heal = spec.heal
    if heal is None:
        return []
    rows_in = heal_rows(study, heal)
    if not rows_in:
        return []
    cfg = heal.config
    lines = ["## What healing recovers", "",
             f"The reference-calibration plan with the lowest ppl× of each method family at "
             f"{', '.join(map(str, heal.n_prune))} {heal.granularity} blocks, LoRA-healed (rank {cfg.lora.rank}, "
             f"α {cfg.lora.alpha:g}, lr {cfg.lr:g}, {cfg.total_steps} steps × {cfg.batch_size} × {cfg.seq_len} = "
             f"{cfg.budget_tokens:,} tokens of the training split of {', '.join(cfg.corpora)}; never the held-out "
             f"documents{PRECISION_TEXT.get(cfg.precision, '')}). *ppl× before / after*: perplexity ÷ dense, geometric mean over "
             f"{', '.join(cfg.evaluation_corpora)}, measured by the healing run on {cfg.eval_windows} held-out "
             f"windows of {cfg.seq_len} tokens. *log-gap recovered*: 1 − log(ppl× after) / log(ppl× before), the "
             "share of the distance to the dense model (in log perplexity) healing closes; 100% = back to dense.",
             ""]
    if heal.dense_reference:
        lines[-2] += (" *÷ tuned dense*: the healed plan's perplexity ÷ that of the dense model LoRA-tuned with the "
                      "same budget (the last row per model), geometric mean over the corpora: what pruning still costs "
                      "after healing, like for like.")
    tuned = _tuned_dense(rows_in)
    rows, minutes, tokens, n_done, below_dense = [], 0.0, 0.0, set(), 0
    for t, run in rows_in:
        dense_row = t.family == DENSE_FAMILY
        name = "dense model, same budget" if dense_row else FAMILY_NAMES[t.family]
        plan = "none" if dense_row else f"{study.name(t.method)}: {' '.join(map(str, t.blocks))}"
        if run is None:
            rows.append([t.model, name, str(t.n_prune), plan, "–", "–", "–"] + ["–"] * heal.dense_reference
                        + ["not healed yet", "`–`"])
            continue
        m = run.metrics
        before, after = _ratio(m, "before"), _ratio(m, "after")
        gap = (1 - math.log(after) / math.log(before)) if before and after and before > 1 else None
        vs_tuned = after / tuned[t.model] if after and tuned.get(t.model) else None
        budget = (f"{m.get('steps', 0):.0f} steps, {m.get('tokens_trained', 0):,.0f} tokens, "
                  f"{fmt(m.get('heal_minutes'), 0)} min")
        rows.append([t.model, name, str(t.n_prune), plan, fmt(before), fmt(after),
                     "–" if gap is None else f"{100 * gap:.0f}%"] + [fmt(vs_tuned)] * heal.dense_reference
                    + [budget, f"`{short(run.run_id)}`"])
        if run.run_id not in n_done:
            n_done.add(run.run_id)
            below_dense += not dense_row and after is not None and after < 1
            minutes += m.get("heal_minutes", 0.0)
            tokens += m.get("tokens_trained", 0.0)
    lines += table(["model", "family", "n", "plan (blocks dropped)", "ppl× before", "ppl× after",
                    "log-gap recovered"] + ["÷ tuned dense"] * heal.dense_reference + ["budget", "run"], rows) + [""]
    if below_dense:
        # Why a recovery above 100% is not "better than dense": the adapter learnt the evaluation corpora's style.
        reference = ("the dense model LoRA-tuned with the same budget would be the like-for-like reference (not run "
                     "here)." if not heal.dense_reference else
                     "the dense model LoRA-tuned with the same budget is the like-for-like reference" +
                     (f" (after tuning: {'; '.join(f'{mod} ppl× {fmt(v)}' for mod, v in tuned.items())}; column *÷ tuned dense*)."
                      if tuned else " (not tuned yet)."))
        lines += [f"Above 100%: {below_dense} healed plan{'s end' if below_dense > 1 else ' ends'} below the dense "
                  "model's perplexity. Healing trains on the training split of the same corpora the perplexity is "
                  "measured on, and the dense model was never tuned on them, so part of what healing gains here is "
                  f"adaptation to these corpora, not recovery of what pruning removed; {reference}", ""]
    pending = len({heal_key(t.plan_key, heal) for t, r in rows_in if r is None})
    if n_done:
        lines += [f"Cost: {len(n_done)} healing{'s' if len(n_done) > 1 else ''} ({tokens:,.0f} tokens trained) took "
                  f"{fmt(minutes, 0)} min of wall time in all (loading, perplexity before, training, merging and "
                  f"perplexity after), {fmt(minutes / len(n_done), 1)} min per healing"
                  + (f"; {pending} plan{'s' if pending > 1 else ''} still to heal." if pending else "."), ""]
    return lines
