"""A drift-watch pass as one self-contained HTML file, under ``SURGFLOW_HOME/reports/drift/``.

It renders what ``surgflow drift show --json`` prints (each source's window against the
production version's reference: per-feature PSI, the test's p-value where there is one, and
the verdict) with the pass's counts. The file is named after a hash of what it shows, so a
pass that found what the last one found writes nothing new.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from surgflow.drift.stats import FEATURES
from surgflow.storage import write_exclusive

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{background:#fbe3e3}.ok{background:#e5f4e5}.note{color:#666}"""


def _e(v: Any) -> str:
    return html.escape("–" if v is None else str(v))


def _row(r: Mapping[str, Any]) -> str:
    cells = [_e(r["procedure"]), _e(r["source"]), _e(r["model"]),
             f"<td class='num'>{r['videos']}</td>", f"<td class='num'>{r['reference_videos']}</td>"]
    for name in FEATURES:
        f = r["features"].get(name)
        if f is None:
            cells.append("<td class='num'>–</td>")
            continue
        over = f["psi"] > r["psi_above"]
        p = f"<br><span class='note'>{f['test']} p {f['p']:.3g}</span>" if f.get("test") else ""
        cells.append(f"<td class='num{' bad' if over else ''}'>{f['psi']:.3f}{p}</td>")
    verdict = "drifted" if r["drifted"] else "stable"
    cells.append(f"<td class='{'bad' if r['drifted'] else 'ok'}'>{verdict}</td>")
    return "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>"


def render(result: Mapping[str, Any]) -> str:
    """The HTML of a pass (:meth:`surgflow.drift.watch.WatchResult.as_json`)."""
    reports: Sequence[Mapping[str, Any]] = result["reports"]
    head = ("<tr><th>procedure</th><th>source</th><th>model</th><th>videos</th>"
            "<th>reference videos</th>"
            + "".join(f"<th title='{_e(f.description)}'>{_e(n)} PSI</th>"
                      for n, f in FEATURES.items()) + "<th>verdict</th></tr>")
    rule = (f"drifted: at least {reports[0]['min_videos']} videos and a PSI above "
            f"{reports[0]['psi_above']:g}" if reports else "")
    body = ("<table>" + head + "".join(_row(r) for r in reports) + "</table>"
            if reports else "<p>No source has been observed by a production model yet.</p>")
    skipped = ", ".join(f"{k} {v}" for k, v in result.get("skipped", {}).items()) or "none"
    problems = "".join(f"<li>{_e(p)}</li>" for p in result.get("problems", []))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>surgflow drift watch"
            f"</title><style>{STYLE}</style></head><body><h1>Drift watch</h1>"
            f"<p class='note'>Each source's latest videos, as the production version analysed "
            f"them, against that version's own training view. {_e(rule)}</p>{body}"
            f"<p class='note'>{result.get('read', 0)} inference events read, "
            f"{result.get('observed', 0)} newly observed, "
            f"{result.get('already_observed', 0)} observed before; skipped: {_e(skipped)}</p>"
            + (f"<h2>Problems</h2><ul>{problems}</ul>" if problems else "")
            + "</body></html>\n")


def write_report(home: Path, result: Mapping[str, Any]) -> Path:
    """Write the pass's report (unless the same one exists) and return its path."""
    text = render(result)
    digest = hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode())
    path = Path(home) / "reports" / "drift" / f"drift-{digest.hexdigest()[:16]}.html"
    if not path.is_file():
        write_exclusive(path, text.encode())
    return path
