"""The three renderings of a :class:`Comparison`: an aligned terminal table, GitHub Markdown (figures as PNG
files beside it) and one self-contained HTML page (inline CSS, figures as base64 PNG, no scripts, no
external assets). They format what the comparison holds and compute nothing new.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Sequence
from pathlib import Path

from blockprune.tracking.compare.comparison import CompareConfig, Comparison, DenseRow

STAR = "★"
LEGEND = ("★ best in its column among plans of the same model, granularity and k: lowest perplexity, ppl ratio "
          "and seconds; highest accuracy, parameters removed and tokens/s (ties all marked, nothing when all "
          "equal). Dense rows are references, never marked. "
          "exact scores: estimator calls the selection asked for (0 for methods that read per-block "
          "statistics); brute-force scores: what exhaustive search over the same runs would ask.")


def _cells(cmp: Comparison, i: int) -> list[str]:
    r = cmp.rows[i]
    out = []
    for c in cmp.columns:
        s = c.format(c.value(r))
        if i in cmp.best.get(c.key, ()):
            s += " " + STAR
        out.append(s)
    return out


def _dense_cells(cmp: Comparison, d: DenseRow) -> list[str]:
    return [c.format(c.dense_value(d)) if c.dense_value(d) is not None else "" for c in cmp.columns]


def _title(cmp: Comparison) -> str:
    scope = f"job {cmp.parent}" if cmp.parent else f"experiment {cmp.config.experiment!r}"
    return f"blockprune compare · {scope}"


def _common(cmp: Comparison) -> str:
    return " · ".join(f"{c.header} {c.format(v)}" for c, v in cmp.common)


def _filters(cfg: CompareConfig) -> str:
    parts = [f"{k}={','.join(map(str, v))}" for k, v in (("model", cfg.models), ("method", cfg.methods),
             ("estimator", cfg.estimators), ("granularity", cfg.granularities), ("k", cfg.n_prune)) if v]
    return "; ".join(parts) or "none"


def render_terminal(cmp: Comparison) -> str:
    """Aligned text table (numbers right-aligned) and the agreement matrices."""
    headers = [c.header for c in cmp.columns]
    body = [_dense_cells(cmp, d) for d in cmp.dense if _dense_relevant(cmp, d)]
    body += [_cells(cmp, i) for i in range(len(cmp.rows))]
    widths = [max(len(h), *(len(row[j]) for row in body)) for j, h in enumerate(headers)]
    numeric = [c.fmt != "" for c in cmp.columns]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True))

    lines = [_title(cmp), f"{len(cmp.rows)} plans · tracking {cmp.tracking_uri} · filters: {_filters(cmp.config)}"]
    if cmp.common:
        lines.append(f"common to all plans: {_common(cmp)}")
    lines += ["", line(headers), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in body]
    lines += ["", LEGEND]
    for a in cmp.agreements:
        lines += ["", f"agreement (Jaccard of dropped blocks) · {a.title}"]
        w = max(len(lbl) for lbl in a.labels)
        lines.append(" " * (w + 2) + "  ".join(f"{j:>5d}" for j in range(len(a.labels))))
        for j, (lbl, row) in enumerate(zip(a.labels, a.matrix, strict=True)):
            lines.append(f"{lbl:<{w}}  " + "  ".join(f"{v:5.2f}" for v in row) + f"   [{j}]")
    return "\n".join(lines)


def _dense_relevant(cmp: Comparison, d: DenseRow) -> bool:
    return any(r.parent_run_id == d.run_id for r in cmp.rows)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(cmp: Comparison, figure_dir: str | None = "figures") -> str:
    """GitHub-flavoured Markdown; figures referenced as files under ``figure_dir``."""
    align = ["---:" if c.fmt else ":---" for c in cmp.columns]
    out = [f"# {_title(cmp)}", "",
           f"- tracking: `{cmp.tracking_uri}` · experiment `{cmp.config.experiment}` (id {cmp.experiment_id})",
           f"- plans: {len(cmp.rows)} · filters: {_filters(cmp.config)} · generated "
           f"{dt.datetime.now().isoformat(timespec='seconds')}",
           *([f"- common to all plans: {_md_escape(_common(cmp))}"] if cmp.common else []), "", "## Plans", "",
           "| " + " | ".join(_md_escape(c.header) for c in cmp.columns) + " |", "| " + " | ".join(align) + " |"]
    for d in cmp.dense:
        if _dense_relevant(cmp, d):
            out.append("| " + " | ".join(f"*{_md_escape(s)}*" if s else "" for s in _dense_cells(cmp, d)) + " |")
    for i in range(len(cmp.rows)):
        cells = _cells(cmp, i)
        cells = [f"**{s}**" if s.endswith(STAR) else s for s in cells]
        out.append("| " + " | ".join(_md_escape(s) for s in cells) + " |")
    out += ["", LEGEND]
    if cmp.agreements:
        out += ["", "## Agreement of dropped blocks (Jaccard)"]
        for a in cmp.agreements:
            out += ["", f"### {a.title}", "", "| | " + " | ".join(map(_md_escape, a.labels)) + " |",
                    "|---|" + "---:|" * len(a.labels)]
            for lbl, row in zip(a.labels, a.matrix, strict=True):
                out.append(f"| {_md_escape(lbl)} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    if cmp.figures and figure_dir:
        out += ["", "## Figures"]
        for stem, title, _ in cmp.figures:
            out += ["", f"### {title}", "", f"![{title}]({figure_dir}/{stem}.png)"]
    out += ["", "## Runs", ""]
    for r in cmp.rows:
        out.append(f"- `{r.run_id}` {_md_escape(r.run_name)}: drops {r.granularity}s {list(r.blocks)}")
    return "\n".join(out) + "\n"


WIDE_FIGURES = ("dropped_blocks",)  # one row per plan, one column per block: needs the page width

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#556;margin:2px 0}.meta code{background:#f3f4f7;padding:1px 4px}
.wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:6px 0}
th,td{border:1px solid #d6d9e0;padding:4px 8px;white-space:nowrap}
th{background:#eef1f6;position:sticky;top:0;font-weight:600;text-align:center;white-space:normal;max-width:7.5em;
font-size:13px;line-height:1.2;overflow-wrap:break-word}
table.agree th{max-width:11em}
td.num{text-align:right}td.txt{text-align:left}tr:nth-child(even) td{background:#fafbfc}
tr.dense td{background:#f4f4f4;color:#555;font-style:italic}
td.best{background:#dff3e3 !important;font-weight:700;color:#0b5d1e}
.legend{color:#556;font-size:13px}
table.agree td{min-width:48px;text-align:center}
figure{display:inline-block;margin:8px 14px 16px 0;vertical-align:top;max-width:calc(50% - 18px)}
figure.wide{display:block;max-width:100%}
figure img{max-width:100%;border:1px solid #e3e5ea}figcaption{font-size:13px;color:#445}
"""


def render_html(cmp: Comparison) -> str:
    """One self-contained page: inline CSS, figures as base64 PNG, no scripts, no external assets."""
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(_title(cmp))}</title><style>{CSS}</style></head><body>", f"<h1>{e(_title(cmp))}</h1>",
             f"<p class='meta'>tracking <code>{e(cmp.tracking_uri)}</code> · experiment "
             f"<code>{e(cmp.config.experiment)}</code> (id {e(cmp.experiment_id)}) · {len(cmp.rows)} plans · "
             f"filters: {e(_filters(cmp.config))} · generated {e(dt.datetime.now().isoformat(timespec='seconds'))}</p>",
             *([f"<p class='meta'>common to all plans: {e(_common(cmp))}</p>"] if cmp.common else []),
             "<h2>Plans</h2><div class='wrap'><table><thead><tr>"]
    parts += [f"<th>{e(c.header)}</th>" for c in cmp.columns]
    parts.append("</tr></thead><tbody>")
    for d in cmp.dense:
        if _dense_relevant(cmp, d):
            parts.append("<tr class='dense'>" + "".join(
                f"<td class='{'num' if c.fmt else 'txt'}'>{e(s)}</td>"
                for c, s in zip(cmp.columns, _dense_cells(cmp, d), strict=True)) + "</tr>")
    for i, r in enumerate(cmp.rows):
        tds = []
        for c in cmp.columns:
            s = c.format(c.value(r))
            best = i in cmp.best.get(c.key, ())
            cls = ("num" if c.fmt else "txt") + (" best" if best else "")
            title = f" title='{e(r.run_id)}'" if c.key == "plan" else ""
            tds.append(f"<td class='{cls}'{title}>{e(s)}{' ' + STAR if best else ''}</td>")
        parts.append("<tr>" + "".join(tds) + "</tr>")
    parts.append(f"</tbody></table></div><p class='legend'>{e(LEGEND)}</p>")
    if cmp.agreements:
        parts.append("<h2>Agreement of dropped blocks (Jaccard)</h2>")
        for a in cmp.agreements:
            parts.append(f"<h3>{e(a.title)}</h3><table class='agree'><tr><th></th>"
                         + "".join(f"<th>{e(lbl)}</th>" for lbl in a.labels) + "</tr>")
            for lbl, row in zip(a.labels, a.matrix, strict=True):
                cells = "".join(f"<td style='background:{_blue(v)};color:{'#fff' if v > 0.6 else '#000'}'>{v:.2f}</td>"
                                for v in row)
                parts.append(f"<tr><th>{e(lbl)}</th>{cells}</tr>")
            parts.append("</table>")
    if cmp.figures:
        parts.append("<h2>Figures</h2>")
        for stem, title, png in cmp.figures:
            b64 = base64.b64encode(png).decode("ascii")
            cls = " class='wide'" if stem.startswith(WIDE_FIGURES) else ""
            parts.append(f"<figure{cls}><img alt='{e(title)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{e(title)}</figcaption></figure>")
    parts.append("<h2>Runs</h2><ul>")
    for r in cmp.rows:
        parts.append(f"<li><code>{e(r.run_id)}</code> {e(r.run_name)}: drops {e(r.granularity)}s "
                     f"{e(str(list(r.blocks)))}</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def _blue(v: float) -> str:
    """White → blue for 0 → 1 (inline style; no colour library needed in the page)."""
    v = min(max(v, 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * v) for c in (33, 102, 172))
    return f"#{r:02x}{g:02x}{b:02x}"


def write_report(cmp: Comparison, out: str | Path) -> dict[str, Path]:
    """``compare.md`` (+ ``figures/*.png``) and ``compare.html`` under ``out``."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for stem, _, png in cmp.figures:
        (out / "figures" / f"{stem}.png").write_bytes(png)
    md = out / "compare.md"
    md.write_text(render_markdown(cmp))
    page = out / "compare.html"
    page.write_text(render_html(cmp))
    return {"markdown": md, "html": page, "figures": out / "figures"}
