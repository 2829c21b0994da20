"""Where one study's conclusions differ from another's: the same counts side by side, and the flips named.

The Qwen study asks whether what the small models showed still holds at 1.5B. Both reports are generated, so
the comparison is too: each study's claims are counted by :func:`~blockprune.study.claims.count_claims` from
its own rows, and a conclusion "changes" when a claim holds in most cells of one study and not the other, or
when the dense model's accuracy clears the best constant answer by three standard errors in one and not
the other (then accuracy differences between plans mean something in one study only). Half of the cells counts
as neither.
"""

from __future__ import annotations

from collections import Counter

from blockprune.study.claims import ClaimCounts, count_claims, margin_over_constant
from blockprune.study.markdown import fmt, table
from blockprune.study.tables import Study

CLAIMS = (  # (key in ClaimCounts.claims / .acc, what it says)
    ("entro_ref", "EntroDrop (authors' reading) beats ShortGPT"),
    ("mi_ref", "MI-PRUN (authors' reading) beats ShortGPT"),
    ("mi_vs_entro_ref", "MI-PRUN beats EntroDrop (authors' readings)"),
    ("entro", "EntroDrop (best of its readings) beats ShortGPT"),
    ("mi", "MI-PRUN (best of its readings) beats ShortGPT"),
    ("mi_vs_entro", "MI-PRUN beats EntroDrop (best of their readings)"),
)
READABLE = 3.0  # dense accuracy this many combined standard errors above the best constant answer


def _count(v: list[bool]) -> str:
    return f"{sum(v)} of {len(v)}" if v else "–"


def _share(v: list[bool]) -> str | None:
    """"most", "half" or "few" of the cells; None where the claim could not be judged."""
    if not v:
        return None
    return "most" if sum(v) * 2 > len(v) else "half" if sum(v) * 2 == len(v) else "few"


def _margins(study: Study) -> dict[str, float]:
    return {m: z[2] for m in study.models if (z := margin_over_constant(study, m)) is not None}


def _winners(study: Study, counted: ClaimCounts) -> str:
    """The methods with the lowest perplexity in the most layer cells."""
    wins = Counter(study.name(best.method) for _, gran, _, best, _ in counted.winners if gran == "layer")
    if not wins:
        return "–"
    top = max(wins.values())
    return ", ".join(f"{name} ({k} of {sum(wins.values())})" for name, k in wins.most_common() if k == top)


def contrast_section(here: Study, other: Study, other_name: str, partial: str | None = None) -> list[str]:
    """``## Compared with <other_name>``: the claims, the dense accuracy margins, the usual winner and the
    perplexity/accuracy rank correlation of both studies, then the conclusions that change. ``partial``: a
    sentence saying the other study is not finished (its counts cover fewer cells than they will)."""
    a, b = count_claims(other), count_claims(here)
    rows = []
    for key, text in CLAIMS:
        if a.claims[key] or b.claims[key]:
            rows.append([f"*{text}*, by perplexity (cells)", _count(a.claims[key]), _count(b.claims[key])])
        acc_a, acc_b = a.acc.get(key, []), b.acc.get(key, [])
        if acc_a or acc_b:
            rows.append([f"*{text}*, by average accuracy (cells)", _count([d > 0 for d in acc_a]),
                         _count([d > 0 for d in acc_b])])
    za, zb = _margins(other), _margins(here)
    rows.append(["dense average accuracy above the best constant answer (combined standard errors)",
                 "; ".join(f"{m} {z:.1f}" for m, z in za.items()) or "–",
                 "; ".join(f"{m} {z:.1f}" for m, z in zb.items()) or "–"])
    rho = [{m: study.ppl_accuracy_correlation(m, plans)["avg"] for m in study.models
            if len(plans := study.measured_plans(m)) >= 3} for study in (other, here)]
    rows.append(["Spearman ρ, perplexity vs average accuracy over plans",
                 *("; ".join(f"{m} {fmt(v)}" for m, v in r.items()) or "–" for r in rho)])
    rows.append(["lowest perplexity in the most layer cells", _winners(other, a), _winners(here, b)])
    lines = [f"## Compared with {other_name}", "",
             f"The same counts over {other_name}'s reference plans (its own models, block counts and lm-eval limits) "
             "and over this page's." + (f" {partial}" if partial else ""), "",
             *table(["", other_name, "this page"], rows), ""]
    changed = []
    for key, text in CLAIMS:
        sa, sb = _share(a.claims[key]), _share(b.claims[key])
        if {sa, sb} == {"most", "few"}:  # half of the cells is neither: no flip from or to it
            changed.append(f"*{text}* held in {sa} cells there ({_count(a.claims[key])}) and in {sb} here "
                           f"({_count(b.claims[key])})")
    if za and zb and (max(za.values()) >= READABLE) != (max(zb.values()) >= READABLE):
        here_ok = max(zb.values()) >= READABLE
        changed.append(f"the dense model's accuracy {'clears' if here_ok else 'does not clear'} the best constant "
                       f"answer by {READABLE:g} combined standard errors here (largest margin "
                       f"{max(zb.values()):.1f}) and {'did not' if here_ok else 'did'} there (largest "
                       f"{max(za.values()):.1f}), so accuracy "
                       f"differences between plans mean {'more' if here_ok else 'less'} here")
    same = "no claim moves between holding in most cells and in few (by perplexity)" + (
        ", and the dense accuracy clears the best constant answer as clearly here as there" if za and zb else "")
    lines += [f"**What changes**: {'; '.join(changed) if changed else same}.", ""]
    return lines
