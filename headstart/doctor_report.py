"""What the doctor writes for people: the fix script, the HTML gallery and flat rows for CSV.

The fix script is plain ``sh``: one ``mkdir -p ... && mv -n -- SRC DST`` line
per image, grouped by finding, the uncertain ones commented out for review.
Quarantined files go to ``<parent>/_quarantine/<folder name>/``, outside the
image folder, so retrain never mistakes the quarantine for a class.  The
gallery embeds every thumbnail as a ``data:`` URI and its few lines of script
inline: it opens offline and fetches nothing.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from .doctor_results import FINDING_KINDS, OUTLIER_CERTAIN_Z, DoctorReport, summary_line

log = logging.getLogger("headstart")

# A label fix is an active line only when the out-of-sample head is this sure of
# the suggested class; below, it is left commented for review (docs/DOCTOR.md).
LABEL_FIX_CONFIDENCE = 0.9
MAX_PER_SECTION = 200  # findings shown per section of the gallery; doctor.json has them all
MAX_THUMBS = 6  # thumbnails per group
THUMB_PX = 96
QUARANTINE = "_quarantine"
ACTIVE_IMAGE_ISSUES = frozenset({"unreadable", "near_blank"})


@dataclass(frozen=True)
class Fix:
    """Move ``source`` (relative to the image folder) to ``target`` (absolute)."""

    source: str
    target: Path
    kind: str
    reason: str
    active: bool  # False: written commented out, for a person to decide

    def line(self, root: Path) -> str:
        src = root / self.source
        return (
            f"mkdir -p {shlex.quote(str(self.target.parent))} && "
            f"mv -n -- {shlex.quote(str(src))} {shlex.quote(str(self.target))}"
        )


def quarantine_dir(root: Path) -> Path:
    return root.parent / QUARANTINE / root.name


def plan_fixes(report: DoctorReport) -> list[Fix]:
    """One move per image at most, the most certain finding first: duplicates and unusable files to the
    quarantine, then outliers, then label errors to their suggested class."""
    root = report.image_dir
    quarantine = quarantine_dir(root)
    planned: dict[str, Fix] = {}
    targets: set[Path] = set()

    def add(rel: str, kind: str, reason: str, active: bool, label: str | None = None) -> None:
        if rel in planned:
            return
        parts = PurePosixPath(rel).parts
        target = root.joinpath(label, *parts[1:]) if label else quarantine.joinpath(*parts)
        n = 1
        while target in targets or target.exists():  # never overwrite, never two files to one name
            stem = PurePosixPath(parts[-1]).stem
            target = target.with_name(f"{stem}.doctor{n}{target.suffix}")
            n += 1
        targets.add(target)
        planned[rel] = Fix(rel, target, kind, reason, active)

    for d in report.exact_duplicates:
        if not d.conflict:
            for rel in d.paths[1:]:
                add(rel, "exact_duplicates", f"same bytes as {d.paths[0]}", True)
            continue
        keep = next((p for p, c in zip(d.paths, d.classes) if c == d.suggested), None)
        for rel in d.paths:
            if rel != keep:
                kept = f"; kept in '{d.suggested}'" if keep else ""
                add(rel, "exact_duplicates", d.reason + kept, keep is not None)
    for issue in report.image_issues:
        add(issue.path, "image_issues", issue.reason, issue.kind in ACTIVE_IMAGE_ISSUES)
    for g in report.near_duplicates:
        for rel in g.paths[1:]:
            add(rel, "near_duplicates", f"near-duplicate of {g.path}", True)
    for leak in report.leaks:
        add(leak.path, "leaks", leak.reason, True)
    for o in report.outliers:
        add(o.path, "outliers", o.reason, o.z >= OUTLIER_CERTAIN_Z)
    for li in report.label_issues:
        add(
            li.path,
            "label_issues",
            li.reason,
            li.confident and li.suggested_probability >= LABEL_FIX_CONFIDENCE,
            label=li.suggested,
        )
    return list(planned.values())


def render_fix_script(report: DoctorReport, fixes: list[Fix] | None = None) -> str:
    """The reviewable shell script; running it moves files, never deletes them."""
    fixes = plan_fixes(report) if fixes is None else fixes
    root = report.image_dir
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [
        "#!/bin/sh",
        f"# headstart doctor: suggested fixes for {root}",
        f"# written {stamp}; {summary_line(report)}.",
        "# Nothing has been moved yet. Read every line, then run: sh " + "THIS_FILE",
        "# Commented lines ('# mkdir ...') are less certain: uncomment the ones you agree with.",
        f"# Quarantined files go to {quarantine_dir(root)} (outside the image folder, so retrain ignores them).",
        "# mv -n never overwrites a file; moving a file back undoes a line.",
        "set -u",
    ]
    titles = {
        "exact_duplicates": "exact duplicates",
        "image_issues": "unusable or odd images",
        "near_duplicates": "near-duplicates (the first of each group stays)",
        "leaks": "leaks across splits",
        "outliers": "outliers",
        "label_issues": "likely label errors (to the suggested class)",
    }
    for kind, title in titles.items():
        chosen = [f for f in fixes if f.kind == kind]
        if not chosen:
            continue
        lines += ["", f"# --- {title}: {len(chosen)} ({sum(f.active for f in chosen)} active)"]
        for f in chosen:
            lines.append(f"# {f.source}: {' '.join(f.reason.split())}")
            lines.append(("" if f.active else "# ") + f.line(root))
    if not fixes:
        lines += ["", "# nothing to fix"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- rows (CSV)


def finding_rows(report: DoctorReport) -> list[dict[str, Any]]:
    """One flat row per finding: kind, path, reason, score, label, suggested, split, paths."""
    rows = []
    for kind in FINDING_KINDS:
        for f in getattr(report, kind):
            label = (
                getattr(f, "given", None) or getattr(f, "label", None) or (";".join(getattr(f, "classes", ())) or None)
            )
            rows.append(
                {
                    "kind": kind,
                    "path": f.path,
                    "reason": f.reason,
                    "score": f.score,
                    "label": label or "",
                    "suggested": getattr(f, "suggested", None) or "",
                    "split": getattr(f, "split", "") or "",
                    "paths": ";".join(getattr(f, "paths", ()) or getattr(f, "matches", ())),
                }
            )
    return rows


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1150px;padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}.sub{color:#555;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.8em}.card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em}
.card b{display:block;font-size:1.5em}.card span{color:#555;font-size:.85em}
.finding{border:1px solid #ddd;border-radius:6px;padding:.5em;margin:.5em 0;display:flex;gap:.8em;
align-items:flex-start}.thumbs{display:flex;gap:4px;flex-wrap:wrap;max-width:620px}
.thumbs figure{margin:0;width:100px;font-size:.72em;word-wrap:break-word;color:#555}
.thumbs img,.none{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#f3f3f3;
display:block;border:1px solid #eee}.none{display:flex;align-items:center;justify-content:center;color:#999}
.text{font-size:.9em;flex:1}.text code{font-size:.85em;word-break:break-all;background:#f7f7f7;display:block;
padding:.2em .4em;margin:.2em 0}button{font-size:.8em;cursor:pointer}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ddd;padding:.2em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.bad td{background:#fdecea}
"""

_SCRIPT = """
function copyLine(b){var t=b.getAttribute('data-line');
if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(t).then(function(){done(b)},
function(){fallback(t,b)})}else{fallback(t,b)}}
function fallback(t,b){var a=document.createElement('textarea');a.value=t;document.body.appendChild(a);a.select();
try{document.execCommand('copy')}catch(e){}document.body.removeChild(a);done(b)}
function done(b){var o=b.textContent;b.textContent='copied';setTimeout(function(){b.textContent=o},1200)}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


class _Thumbs:
    """Small JPEG/PNG data URIs, each image made once however many findings show it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[str, str | None] = {}

    def __call__(self, rel: str) -> str | None:
        if rel not in self.done:
            self.done[rel] = self._make(self.root / rel)
        return self.done[rel]

    @staticmethod
    def _make(path: Path) -> str | None:
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as opened:
                if opened.width * opened.height > 100_000_000:
                    return None
                opened.draft("RGB", (THUMB_PX, THUMB_PX))
                img: Image.Image = ImageOps.exif_transpose(opened)
                img.thumbnail((THUMB_PX, THUMB_PX))
                img = img.convert("RGB")
                buf = io.BytesIO()
                small = max(img.size) <= 64  # tiny images (Fashion-MNIST) stay sharp as PNG
                img.save(buf, "PNG" if small else "JPEG", **({} if small else {"quality": 80}))
        except Exception as exc:
            log.debug("no thumbnail for %s: %s", path, exc)
            return None
        mime = "image/png" if small else "image/jpeg"
        return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(thumbs: _Thumbs, rel: str, caption: str) -> str:
    uri = thumbs(rel)
    img = f"<img alt='{_e(rel)}' src='{uri}'>" if uri else "<div class='none'>no preview</div>"
    return f"<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>"


def _finding_html(kind: str, f: Any, thumbs: _Thumbs, fixes: dict[str, Fix], root: Path) -> str:
    if kind in ("exact_duplicates", "near_duplicates"):
        members = list(zip(f.paths, f.classes))[:MAX_THUMBS]
        figs = "".join(_figure(thumbs, p, f"{p} [{c}]") for p, c in members)
        extra = f" (+{len(f.paths) - MAX_THUMBS} more)" if len(f.paths) > MAX_THUMBS else ""
        lines_for = list(f.paths)
        head = f"<b>{len(f.paths)} images</b>{extra}"
    elif kind == "leaks":
        figs = _figure(thumbs, f.path, f"{f.path} [{f.split}]") + "".join(
            _figure(thumbs, m, f"{m} [{s}]") for m, s in list(zip(f.matches, f.match_splits))[: MAX_THUMBS - 1]
        )
        lines_for = [f.path]
        head = f"<b>{_e(f.path)}</b> ({_e(f.split)}, class {_e(f.label)})"
    elif kind == "class_balance":
        return ""
    else:
        figs = _figure(thumbs, f.path, f.path)
        lines_for = [f.path]
        if kind == "label_issues":
            head = f"<b>{_e(f.path)}</b>: given <b>{_e(f.given)}</b>, suggested <b>{_e(f.suggested)}</b>"
        else:
            head = f"<b>{_e(f.path)}</b> (class {_e(getattr(f, 'label', ''))})"
    rows = []
    for rel in lines_for:
        fix = fixes.get(rel)
        if fix is None:
            continue
        line = fix.line(root)
        note = "" if fix.active else " (commented out in the fix script: review)"
        rows.append(
            f"<code>{_e(line)}</code><button type='button' data-line='{_e(line)}' "
            f"onclick='copyLine(this)'>copy mv line</button>{_e(note)}"
        )
    return (
        f"<div class='finding'><div class='thumbs'>{figs}</div><div class='text'>{head}<br>"
        f"{_e(f.reason)}<br>score {f.score:.4g}{''.join(rows)}</div></div>"
    )


def _balance_table(report: DoctorReport) -> str:
    head = (
        "<tr><th class='l'>class</th><th>training</th><th>validation</th><th>testing</th><th class='l'>note</th></tr>"
    )
    body = "".join(
        f"<tr{' class=bad' if c.flagged else ''}><td class='l'>{_e(c.label)}</td><td>{c.training}</td>"
        f"<td>{c.validation}</td><td>{c.testing}</td><td class='l'>{_e(c.reason)}</td></tr>"
        for c in sorted(report.class_balance, key=lambda c: c.label)
    )
    return f"<table>{head}{body}</table>"


def render_html(report: DoctorReport) -> str:
    """The self-contained gallery: every finding with its thumbnails, labels, score and ``mv`` line."""
    root = report.image_dir
    fixes = {f.source: f for f in plan_fixes(report)}
    thumbs = _Thumbs(root)
    titles = {
        "label_issues": "Label issues",
        "leaks": "Leaks across splits",
        "near_duplicates": "Near-duplicates",
        "exact_duplicates": "Exact duplicates",
        "outliers": "Outliers",
        "image_issues": "Image problems",
        "class_balance": "Class balance",
    }
    likely = sum(f.confident for f in report.label_issues)
    counts = {k: str(len(getattr(report, k))) for k in titles}
    counts["label_issues"] += f" ({likely} likely)"
    cards = "".join(
        f"<div class='card'><span>{_e(titles[k])}</span><b>{_e(counts[k])}</b></div>"
        for k in titles
        if k != "class_balance"
    )
    acc = ""
    if report.test_accuracy is not None:
        acc = f"<p>Test accuracy {100 * report.test_accuracy:.1f} %"
        if report.test_accuracy_without_leaks is not None and report.leaks:
            acc += f", {100 * report.test_accuracy_without_leaks:.1f} % without the leaked test images"
        acc += " (a head trained as retrain trains it, on the training split).</p>"
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
    sections = []
    for kind, title in titles.items():
        items = getattr(report, kind)
        if kind == "class_balance":
            sections.append(f"<section><h2>{title}</h2>{_balance_table(report)}</section>")
            continue
        body = "".join(_finding_html(kind, f, thumbs, fixes, root) for f in items[:MAX_PER_SECTION])
        if len(items) > MAX_PER_SECTION:
            body += f"<p class='sub'>... and {len(items) - MAX_PER_SECTION} more in doctor.json.</p>"
        sections.append(f"<section><h2>{title} ({len(items)})</h2>{body or '<p class=sub>none found</p>'}</section>")
    from . import __version__

    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>headstart doctor: {_e(root.name)}</title><style>{_CSS}</style><script>{_SCRIPT}</script>"
        f"</head><body><h1>Data doctor: {_e(root.name)}</h1>"
        f"<p class='sub'>{_e(root)}: {report.n_images} images, {len(report.labels)} classes, "
        f"{len(report.skipped)} skipped. {_e(summary_line(report))}.</p><div class='cards'>{cards}</div>{acc}"
        f"<ul class='sub'>{notes}</ul>"
        + "".join(sections)
        + f"<hr><p class='sub'>Written by headstart {_e(__version__)} on {_e(stamp)}. Nothing was moved: "
        "the copy buttons give each image's <code>mv</code> line, and <code>--write_fix_script</code> "
        "writes them all. Self-contained: opens offline.</p></body></html>\n"
    )
