"""The gate's comparison report: one self-contained HTML file, its figures embedded as PNGs.

It shows what a reviewer needs to trust or overrule a seal: the verdict and every check, the
standard and relaxed figures side by side, per-phase F1 of candidate, production and the
candidate's encoder alone, both confusion matrices, the per-source table, and a phase ribbon
per field video (ground truth, production, candidate). Matplotlib draws on its own
:class:`~matplotlib.figure.Figure` objects (no pyplot state, no backend to configure).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from surgflow.evaluation.checks import title
from surgflow.evaluation.metrics import BASE_METRICS
from surgflow.storage import write_atomic

UNSCORED_COLOUR = "#d9d9d9"
CANDIDATE, PRODUCTION, ENCODER = "#1f77b4", "#ff7f0e", "#9ecae1"


def render_report(*, seal: Mapping, labels: Sequence[str], candidate: Mapping,
                  baseline: Mapping | None = None, encoder: Mapping | None = None,
                  timelines: Sequence[Mapping] = ()) -> str:
    """The report's HTML. ``candidate``/``baseline``/``encoder`` are
    :func:`~surgflow.evaluation.metrics.evaluate` results; ``timelines`` hold per field video
    ``video_id``, ``source``, ``fps`` and per-frame arrays ``truth`` (-1 unscored),
    ``candidate`` and optionally ``production`` and ``encoder`` (class indices)."""
    labels = list(labels)
    colours = _phase_colours(len(labels))
    approved = seal.get("verdict") == "approved"
    parts = [
        f"<h1>{_e(seal.get('model'))} <span class='verdict {'ok' if approved else 'bad'}'>"
        f"{_e(seal.get('verdict'))}</span></h1>",
        "<p class='meta'>baseline <b>" + _e(seal.get("baseline") or "none (first model)")
        + "</b> · field suite <b>" + _e(seal.get("field_suite")) + "</b> · "
        + f"{len(candidate.get('per_video', []))} videos · sealed "
        + _e(seal.get("sealed_at")) + "</p>",
        "<h2>Checks</h2>", _checks_table(seal.get("checks", [])),
        "<h2>Field-suite figures</h2>",
        "<p class='note'>Per video, phases absent from a video's ground truth skipped; per-phase "
        "means over videos, then the mean over phases. Relaxed: confusions between the two "
        f"phases of a true transition within ±{candidate.get('window_s', 0):g} s of it are "
        "forgiven. Only human labels are ground truth.</p>",
        _summary_table(candidate, baseline, encoder),
        "<h2>Per-phase F1</h2>", _img(_phase_bars(labels, candidate, baseline, encoder)),
        "<h2>Confusion matrices</h2>",
        "<p class='note'>Rows: true phase; columns: predicted; each row sums to 100%.</p>",
        _img(_confusions(labels, candidate, baseline)),
        "<h2>Per source</h2>", _source_table(candidate, baseline),
    ]
    if timelines:
        parts += ["<h2>Phase timelines</h2>", _legend(labels, colours)]
        for t in timelines:
            parts.append(f"<h3>{_e(t['video_id'])} <small>({_e(t['source'])})</small></h3>")
            parts.append(_img(_ribbon(t, colours)))
    return _PAGE.format(title=_e(f"{seal.get('model')}: {seal.get('verdict')}"),
                        body="\n".join(parts))


def write_report(path: Path, **kwargs) -> Path:
    """Write :func:`render_report` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    write_atomic(path, render_report(**kwargs).encode())
    return path


# -- tables --------------------------------------------------------------------------------


def _checks_table(checks: Sequence[Mapping]) -> str:
    rows = "".join(
        f"<tr class='{'ok' if c['passed'] else 'bad'}'><td>{'✔' if c['passed'] else '✘'}</td>"
        f"<td><code>{_e(c['name'])}</code></td><td class='n'>{_f(c.get('value'))}</td>"
        f"<td class='n'>{_f(c.get('baseline'))}</td><td class='n'>{_f(c.get('threshold'))}</td>"
        f"<td>{_e(c.get('reason'))}</td></tr>" for c in checks)
    return ("<table><tr><th></th><th>check</th><th>value</th><th>baseline</th>"
            f"<th>threshold</th><th>reason</th></tr>{rows}</table>")


def _summary_table(candidate: Mapping, baseline: Mapping | None,
                   encoder: Mapping | None) -> str:
    cols = [("candidate", candidate), ("production", baseline), ("candidate encoder alone",
                                                                 encoder)]
    cols = [(n, m) for n, m in cols if m is not None]
    head = "".join(f"<th colspan=2>{_e(n)}</th>" for n, _ in cols)
    sub = "<th>standard</th><th>relaxed</th>" * len(cols)
    rows = ""
    for metric in BASE_METRICS:
        cells = "".join(f"<td>{_f(m['summary'].get(metric))}</td>"
                        f"<td>{_f(m['summary'].get('relaxed_' + metric))}</td>" for _, m in cols)
        rows += f"<tr><td>{_e(title(metric))}</td>{cells}</tr>"
    return f"<table><tr><th rowspan=2>metric</th>{head}</tr><tr>{sub}</tr>{rows}</table>"


def _source_table(candidate: Mapping, baseline: Mapping | None) -> str:
    videos: dict[str, int] = {}
    for e in candidate.get("per_video", []):
        videos[e["source"]] = videos.get(e["source"], 0) + 1
    head = ("<tr><th>source</th><th>videos</th><th>candidate macro F1</th>"
            + ("<th>production macro F1</th><th>Δ</th>" if baseline else "")
            + "<th>candidate relaxed macro F1</th>"
            + ("<th>production relaxed macro F1</th>" if baseline else "")
            + "<th>candidate accuracy</th>"
            + ("<th>production accuracy</th>" if baseline else "") + "</tr>")
    rows = ""
    for src, c in candidate.get("per_source", {}).items():
        b = (baseline or {}).get("per_source", {}).get(src, {})
        cells = f"<td>{_e(src)}</td><td>{videos.get(src, 0)}</td><td>{_f(c.get('macro_f1'))}</td>"
        if baseline:
            d = (None if c.get("macro_f1") is None or b.get("macro_f1") is None
                 else c["macro_f1"] - b["macro_f1"])
            cls = "" if d is None else ("ok" if d >= 0 else "bad")
            cells += (f"<td>{_f(b.get('macro_f1'))}</td><td class='{cls}'>"
                      f"{'' if d is None else f'{d:+.3f}'}</td>")
        cells += f"<td>{_f(c.get('relaxed_macro_f1'))}</td>"
        if baseline:
            cells += f"<td>{_f(b.get('relaxed_macro_f1'))}</td>"
        cells += f"<td>{_f(c.get('accuracy'))}</td>"
        if baseline:
            cells += f"<td>{_f(b.get('accuracy'))}</td>"
        rows += f"<tr>{cells}</tr>"
    return f"<table>{head}{rows}</table>"


def _legend(labels: Sequence[str], colours: Sequence[str]) -> str:
    items = [(lbl, c) for lbl, c in zip(labels, colours, strict=True)]
    items.append(("not scored (no human label)", UNSCORED_COLOUR))
    return "<p class='legend'>" + "".join(
        f"<span><i style='background:{c}'></i>{_e(lbl)}</span>" for lbl, c in items) + "</p>"


# -- figures -------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _phase_bars(labels: Sequence[str], candidate: Mapping, baseline: Mapping | None,
                encoder: Mapping | None):
    series = [("candidate", candidate, CANDIDATE), ("production", baseline, PRODUCTION),
              ("candidate encoder alone", encoder, ENCODER)]
    series = [s for s in series if s[1] is not None]
    fig = _figure(10.5, 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, (name, m, colour) in enumerate(series):
        per = m["per_phase"]["standard"]
        f1 = [per.get(lbl, {}).get("f1", np.nan) for lbl in labels]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, f1, width, label=name,
                      color=colour)
        # printed values tell a phase scored 0 from one absent from every field video
        ax.bar_label(bars, labels=["–" if np.isnan(v) else f"{v:.2f}" for v in f1],
                     fontsize=6, padding=1)
    ax.set_xticks(x, [_wrap(lbl) for lbl in labels], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("F1 (mean over videos)")
    ax.grid(axis="y", alpha=0.3)
    # above the axes: inside, it would hide the bars of the last phases
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), fontsize=8,
              frameon=False)
    return fig


def _confusions(labels: Sequence[str], candidate: Mapping, baseline: Mapping | None):
    mats = [("candidate", candidate)] + ([("production", baseline)] if baseline else [])
    fig = _figure(5.2 * len(mats), 4.8)
    short = [_wrap(lbl) for lbl in labels]
    for k, (name, m) in enumerate(mats):
        ax = fig.add_subplot(1, len(mats), k + 1)
        cm = np.asarray(m["confusion"], dtype=float)
        rows = cm.sum(axis=1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                if cm[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(labels)), short, fontsize=6, rotation=90)
        ax.set_yticks(range(len(labels)), short, fontsize=6)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    return fig


def _ribbon(t: Mapping, colours: Sequence[str]):
    from matplotlib.colors import ListedColormap

    rows = [("ground truth", t["truth"]), ("production", t.get("production")),
            ("candidate", t["candidate"]), ("candidate encoder", t.get("encoder"))]
    rows = [(n, np.asarray(a)) for n, a in rows if a is not None]
    n = min(len(a) for _, a in rows)
    img = np.stack([np.where(a[:n] >= 0, a[:n], len(colours)) for _, a in rows])
    cmap = ListedColormap([*colours, UNSCORED_COLOUR])
    fig = _figure(10.5, 0.35 * len(rows) + 0.55)
    ax = fig.add_subplot()
    duration = n / float(t["fps"])
    ax.imshow(img, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5,
              vmax=len(colours) + 0.5, extent=(0, duration, len(rows) - 0.5, -0.5))
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    ax.set_xlabel("time (s)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    return fig


def _img(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img alt='figure' src='data:image/png;base64,{data}'>"


def _phase_colours(n: int) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [to_hex(cmap(i % cmap.N)) for i in range(n)]


def _wrap(label: str) -> str:
    """CamelCase phase names broken into lines (``CalotTriangleDissection`` -> 3 lines)."""
    words, cur = [], ""
    for ch in label:
        if ch.isupper() and cur:
            words.append(cur)
            cur = ""
        cur += ch
    words.append(cur)
    lines, line = [], ""
    for w in words:
        if line and len(line) + len(w) > 12:
            lines.append(line)
            line = ""
        line += w
    lines.append(line)
    return "\n".join(lines)


def _f(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return _e(v)


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1100px; color: #222; padding: 0 16px; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }} h2 {{ font-size: 17px; margin-top: 28px;
     border-bottom: 1px solid #ddd; padding-bottom: 3px; }} h3 {{ font-size: 14px;
     margin: 14px 0 2px; }}
.verdict {{ font-size: 15px; padding: 2px 10px; border-radius: 10px; vertical-align: middle;
           color: white; }}
.verdict.ok {{ background: #2e7d32; }} .verdict.bad {{ background: #c62828; }}
.meta, .note {{ color: #555; }} .note {{ font-size: 12px; }}
table {{ border-collapse: collapse; margin: 6px 0; font-size: 13px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
td:first-child, td code, td.n {{ white-space: nowrap; }}
th {{ background: #f4f4f4; }}
tr.bad td, td.bad {{ background: #fdecea; }} tr.ok td:first-child, td.ok {{ color: #2e7d32; }}
tr.bad td:first-child {{ color: #c62828; font-weight: bold; }}
img {{ max-width: 100%; display: block; }}
.legend span {{ display: inline-block; margin-right: 14px; font-size: 12px; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px;
            vertical-align: -1px; border: 1px solid #999; }}
</style></head><body>
{body}
</body></html>
"""
