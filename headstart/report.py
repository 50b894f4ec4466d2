"""HTML reports: one self-contained file per run or experiment.

A report must open anywhere, years later, offline and from an e-mail
attachment: so every plot is a PNG and every thumbnail a JPEG/PNG embedded as a
``data:`` URI, the style sheet is inline, and there are no scripts, web fonts
or links to fetch.  The plots come from :mod:`headstart.plots` (re-exported
here), PNG bytes the lab guide saves too.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .plots import (
    LOSS_FLOOR,
    plot_compare,
    plot_confusion_matrix,
    plot_curve,
    plot_reliability,
    plot_sweep,
    plot_training_curves,
)

log = logging.getLogger("headstart")

MAX_GALLERY = 120  # misclassified thumbnails shown; the rest are counted
THUMBNAIL_PX = 128

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}
.sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
tr.bad td{background:#fdecea}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(9.5em,1fr));gap:.8em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em;min-width:0}
.card b{display:block;font-size:1.45em;white-space:nowrap}
.card span,.card small{color:#555;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6em}
.shot{font-size:.8em;border:1px solid #ddd;border-radius:4px;padding:4px;min-width:0}
.shot img,.missing{width:100%;aspect-ratio:1;object-fit:contain;background:#f7f7f7;display:block}
.shot img{image-rendering:pixelated}
.missing{background:#eee;color:#888;display:flex;align-items:center;justify-content:center}
.name span{display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;color:#555}
.warn{color:#a00;font-weight:bold}
.note{color:#8a5300}
code{white-space:nowrap;font-size:.95em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
"""


# ---------------------------------------------------------------- small helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def _page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    from . import __version__

    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><p class='sub'>{subtitle}</p>" + "".join(sections)
            + f"<hr><p class='sub'>Written by headstart {_e(__version__)} on {_e(stamp)}. "
              "Self-contained: opens offline.</p></body></html>\n")


def _flags(text: str) -> str:
    """Escaped text with each ``--flag`` kept on one line (browsers break after a hyphen)."""
    return re.sub(r"(--[A-Za-z0-9_]+)", r"<code>\1</code>", _e(text))


def _seconds(value: Any, places: int) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{value:.{places}f}"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _cards(items: Sequence[tuple[str, ...]]) -> str:
    """Summary cards: a label, a big value and, optionally, a small note under it (such as N)."""
    cards = []
    for label, value, *note in items:
        small = f"<small>{_e(note[0])}</small>" if note and note[0] else ""
        cards.append(f"<div class='card'><span>{_e(label)}</span><b>{_e(value)}</b>{small}</div>")
    return "<div class='cards'>" + "".join(cards) + "</div>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1,
           bad: Sequence[bool] | None = None) -> str:
    head = "".join(f"<th class='l'>{_e(h)}</th>" if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        cls = " class='bad'" if bad is not None and bad[n] else ""
        cells = "".join(f"<td class='l'>{_e(_num(v))}</td>" if i < left else f"<td>{_e(_num(v))}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(png: bytes | None, caption: str, alt: str) -> str:
    if not png:
        return f"<p class='sub'>({_e(alt)}: nothing to plot)</p>"
    return (f"<figure><img alt='{_e(alt)}' src='{data_uri(png, 'image/png')}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def data_uri(data: bytes, mime: str) -> str:
    """Embed bytes in the page, so the report needs no other file."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def thumbnail(path: Path, size: int = THUMBNAIL_PX) -> str | None:
    """A data URI of a small copy of the image at ``path``, or None if it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            img.thumbnail((size, size))
            rgb = img.convert("RGB") if img.mode not in ("RGB", "L") else img
            buf = io.BytesIO()
            small = max(rgb.size) <= 64  # tiny images (Fashion-MNIST) stay sharp as PNG
            rgb.save(buf, "PNG" if small else "JPEG", **({} if small else {"quality": 85}))
    except Exception as exc:  # moved, deleted or damaged files: show a placeholder
        log.debug("no thumbnail for %s: %s", path, exc)
        return None
    return data_uri(buf.getvalue(), "image/png" if small else "image/jpeg")


# ---------------------------------------------------------------- run report


def _name(path: str) -> str:
    """A path broken at its separators, one line each, cut with an ellipsis when too long (full in the title)."""
    parts = path.split("/")
    spans = "".join(f"<span>{_e(part)}{'/' if i < len(parts) - 1 else ''}</span>" for i, part in enumerate(parts))
    return f"<div class='name' title='{_e(path)}'>{spans}</div>"


def _gallery(misclassified: Sequence[Mapping[str, Any]], image_root: Path | None, limit: int) -> str:
    if not misclassified:
        return "<p>No test image was misclassified.</p>"
    items = sorted(misclassified, key=lambda m: -float(m.get("score") or 0))
    shots = []
    for m in items[:limit]:
        uri = thumbnail(Path(image_root) / m["path"]) if image_root is not None else None
        pic = (f"<img alt='{_e(m['path'])}' src='{uri}' title='{_e(m['path'])}'>" if uri
               else "<div class='missing'>image not found</div>")
        shots.append(f"<div class='shot'>{pic}<div><b>{_e(m['label'])}</b> → {_e(m['predicted'])} "
                     f"({float(m.get('score') or 0):.2f})</div>{_name(str(m['path']))}</div>")
    more = (f"<p class='sub'>… and {len(items) - limit} more (all are listed in metrics.json).</p>"
            if len(items) > limit else "")
    return ("<p class='sub'>True label → predicted label (score), most confident mistakes first.</p>"
            f"<div class='gallery'>{''.join(shots)}</div>{more}")


MAX_SKIPPED_ROWS = 200  # skipped images listed in the report; skipped.csv has them all


def _skipped(skipped: Sequence[Mapping[str, Any]], count: int) -> str:
    if not skipped:
        return (f"<p>{_e(count)} images were skipped; their list is in skipped.csv.</p>" if count
                else "<p>Every image was used.</p>")
    rows = [[item.get("path", "?"), item.get("reason", "?")] for item in skipped[:MAX_SKIPPED_ROWS]]
    more = (f"<p class='sub'>… and {len(skipped) - MAX_SKIPPED_ROWS} more, all listed in skipped.csv.</p>"
            if len(skipped) > MAX_SKIPPED_ROWS else "")
    return ("<p class='sub'>Not used for training or testing; the run's skipped.csv has the same list.</p>"
            + _table(["image", "reason"], rows, left=2) + more)


def _class_rows(test: Mapping[str, Any]) -> tuple[list[list[Any]], list[bool], str | None]:
    """Per-class rows with ``n/a`` where a class without test images leaves a number undefined."""
    from .metrics import NOT_APPLICABLE, empty_classes_text

    per_class = test.get("per_class") or {}
    labels = list(test.get("labels") or per_class)
    matrix = test.get("confusion_matrix") or []
    predicted = {label: sum(row[i] for row in matrix) for i, label in enumerate(labels)} if matrix else {}

    def three(x: Any) -> str:
        return "–" if x is None else f"{float(x):.3f}"

    rows, weak, empty = [], [], []
    for label, m in per_class.items():
        if m["support"] == 0:
            empty.append(label)
            precision = three(m["precision"]) if predicted.get(label) else NOT_APPLICABLE
            rows.append([label, precision, NOT_APPLICABLE, NOT_APPLICABLE, 0])
            weak.append(False)
        else:
            rows.append([label, three(m["precision"]), three(m["recall"]), three(m["f1"]), m["support"]])
            weak.append(m["f1"] < 0.5)
    rows.append(["macro average", three(test.get("macro_precision")), three(test.get("macro_recall")),
                 three(test.get("macro_f1")), test.get("n")])
    weak.append(False)
    return rows, weak, empty_classes_text(empty)


def render_run_report(*, metrics: dict[str, Any], labels: Sequence[str], image_root: Path | None,
                      backbone: dict[str, Any], hyperparameters: dict[str, Any], title: str | None = None,
                      created: str | None = None, max_gallery: int = MAX_GALLERY) -> str:
    """The report of one retrain run: what was measured, how it trained, what it gets wrong, and how.

    ``image_root`` is the folder the misclassified paths are relative to; images
    that are no longer there get a placeholder instead of breaking the report.
    """
    from .metrics import small_sample_notes

    test = metrics.get("test") or {}
    val = metrics.get("validation") or {}
    training = metrics.get("training") or {}
    timing = metrics.get("timing") or {}
    bottlenecks = metrics.get("bottlenecks") or {}
    splits = metrics.get("splits") or {}
    history = metrics.get("history") or []
    diverged = bool(training.get("diverged"))

    cards = [("test accuracy", _pct(test.get("accuracy")), f"(N={test.get('n', '?')})"),
             ("macro precision", _pct(test.get("macro_precision"))),
             ("macro recall", _pct(test.get("macro_recall"))),
             ("validation accuracy", _pct(val.get("accuracy")), f"(N={val.get('n', '?')})")]
    if test.get("top5_accuracy") is not None:
        cards.append(("top-5 accuracy", _pct(test["top5_accuracy"])))
    cards.append(("training time", f"{timing.get('train_s', float('nan')):.2f} s"))
    summary = _cards(cards)
    if diverged:
        summary += ("<p class='warn'>Training diverged (the loss became NaN or infinite); the model keeps the "
                    "last finite weights. Lower --learning_rate.</p>")
    elif training.get("warning"):
        summary += f"<p class='warn'>Warning: {_flags(training['warning'])}.</p>"
    if isinstance(test.get("n"), int) and isinstance(test.get("accuracy"), (int, float)):
        supports = {label: int(m.get("support", 0)) for label, m in (test.get("per_class") or {}).items()}
        for note in small_sample_notes(test["n"], float(test["accuracy"]), supports):
            summary += f"<p class='note'>Warning: {_flags(note)}.</p>"
    doctor = metrics.get("doctor") or {}
    if doctor.get("summary"):
        summary += f"<p class='note'>Data doctor: {_e(doctor['summary'])} (doctor.json in this folder).</p>"
    n_skipped = int(bottlenecks.get("skipped") or 0)
    if n_skipped:
        summary += (f"<p class='note'>{_e(n_skipped)} image{'' if n_skipped == 1 else 's'} skipped: listed "
                    "with the reasons under Skipped images below.</p>")

    class_rows, weak, empty_note = _class_rows(test)
    curves = plot_training_curves(history)
    confusion = plot_confusion_matrix(test.get("confusion_matrix") or [], test.get("labels") or list(labels))
    calibration = metrics.get("calibration") or {}
    reliability = plot_reliability(calibration.get("reliability_before") or [],
                                   calibration.get("reliability_after") or [],
                                   (calibration["ece_before"], calibration["ece_after"])
                                   if calibration.get("ece_before") is not None else None)
    unknown = metrics.get("unknown") or {}
    final = training.get("final") or {}
    train_text = (f"{training.get('steps_run', '?')} steps on {training.get('n', '?')} training images"
                  + (f"; final training cross entropy {_num(final.get('cross_entropy'))}" if final else ""))

    # Rounded as the command prints them, so the two show the same numbers.
    timing_rows = [["indexing and bottlenecks", _seconds(timing.get("bottlenecks_s"), 1)],
                   ["training", _seconds(timing.get("train_s"), 2)], ["total", _seconds(timing.get("total_s"), 1)]]
    provenance = {"backbone": backbone, "hyperparameters": hyperparameters, "data": metrics.get("data"),
                  "splits": splits, "bottlenecks": bottlenecks}
    sections = [
        _section("Summary", summary),
        _section("Training", f"<p>{_e(train_text)}.</p>"
                 + _figure(curves, "Cross entropy (log scale; a loss of 0 is drawn at "
                                   f"{LOSS_FLOOR:g}) and accuracy, measured every eval_step_interval steps on "
                                   "the training batch and on validation images.", "training curves")),
        _section("Confusion matrix", _figure(confusion, "Rows are true classes, columns predicted classes; "
                                                        "colour is the share of the row.", "confusion matrix")),
        _section("Confidence", _figure(reliability, "Accuracy against confidence in bins of the test images, "
                                                    f"before and after dividing the logits by the temperature "
                                                    f"{_num(calibration.get('temperature'))} fitted on the "
                                                    "validation split.", "reliability diagram")
                 + (f"<p class='sub'>The 'unknown' answer accepts {_pct(unknown.get('accepted'))} of the test "
                    f"images (its threshold was set to accept {_pct(unknown.get('accept'))} of the validation "
                    "images).</p>" if unknown.get("accepted") is not None else "")),
        _section("Per-class precision, recall and F1 (test set)",
                 _table(["class", "precision", "recall", "F1", "support"], class_rows, bad=weak)
                 + (f"<p class='sub'>{_e(empty_note)}.</p>" if empty_note else "")),
        _section(f"Misclassified test images ({len(metrics.get('misclassified') or [])})",
                 _gallery(metrics.get("misclassified") or [], image_root, max_gallery)),
        _section(f"Skipped images ({n_skipped})", _skipped(metrics.get("skipped") or [], n_skipped)),
        _section("Timing (seconds)", _table(["stage", "seconds"], timing_rows)
                 + "<p class='sub'>The total is the command's printed Total time: everything up to the "
                   "finished model, without writing the run folder and this report. "
                   f"Bottlenecks: {_e(bottlenecks.get('computed', '?'))} computed, "
                   f"{_e(bottlenecks.get('cached', '?'))} read from the cache, "
                   f"{_e(n_skipped)} images skipped.</p>"),
        _section("Provenance", f"<pre>{_e(json.dumps(provenance, indent=2, default=str))}</pre>"),
    ]
    name = backbone.get("name", "?")
    subtitle = (f"{_e(len(labels))} classes · backbone {_e(name)}"
                + (f" · {_e(created)}" if created else "")
                + (f" · images from {_e(image_root)}" if image_root else ""))
    return _page(title or "headstart run report", subtitle, sections)


# ---------------------------------------------------------------- experiment pages


def _features_text(features: Mapping[str, Any]) -> str:
    if not features:
        return ""
    return (f"{_e(features.get('image_dir'))}: {_e(features.get('training'))} training, "
            f"{_e(features.get('validation'))} validation and {_e(features.get('testing'))} test images, "
            f"{_e(len(features.get('labels') or []))} classes; backbone {_e(features.get('backbone'))} "
            f"({_e(features.get('runtime'))}), bottlenecks {_e(features.get('bottlenecks_cached'))} cached / "
            f"{_e(features.get('bottlenecks_computed'))} computed")


SWEEP_COLUMNS = ("test_accuracy", "test_accuracy_std", "validation_accuracy", "macro_precision", "macro_recall",
                 "cross_entropy", "train_s", "best_step", "diverged")


def render_sweep_report(rows: Sequence[Mapping[str, Any]], swept: Sequence[str], *,
                        features: Mapping[str, Any] | None = None, repeats: int = 1, seconds: float | None = None,
                        command: str | None = None) -> str:
    """A sweep's page: the plot, then every cell with its scores (diverged cells in red)."""
    keys = [k for k in rows[0] if k not in SWEEP_COLUMNS and k not in ("diverged_repeats", "repeats", "n_test",
                                                                          "macro_f1", "test_cross_entropy")] \
        if rows else []
    keys = [k for k in keys if k in swept] + [k for k in keys if k not in swept]
    headers = keys + list(SWEEP_COLUMNS)
    table = _table(headers, [[r.get(h) for h in headers] for r in rows], left=0,
                   bad=[bool(r.get("diverged")) for r in rows])
    best = max((r for r in rows if r.get("test_accuracy") is not None), key=lambda r: r["test_accuracy"],
               default=None)
    cards = [("cells", str(len(rows))), ("repeats per cell", str(repeats))]
    if best is not None:
        cards.append(("best test accuracy", _pct(best["test_accuracy"])))
    if seconds is not None:
        cards.append(("sweep time", f"{seconds:.1f} s"))
    sections = [_section("Summary", _cards(cards) + (f"<p>Best cell: {_e(', '.join(f'{k}={best[k]}' for k in swept))}"
                                                     "</p>" if best is not None and swept else "")
                         + (f"<pre>{_e(command)}</pre>" if command else "")),
                _section("Accuracy and training time", _figure(plot_sweep(rows, swept),
                                                               "Mean over repeats; error bars are one standard "
                                                               "deviation; red crosses mark diverged cells.",
                                                               "sweep plot")),
                _section("Every cell", table + "<p class='sub'>best_step: the step at which validation accuracy "
                                               "stopped improving (median over repeats).</p>")]
    return _page("headstart sweep", _features_text(features or {}), sections)


def render_curve_report(rows: Sequence[Mapping[str, Any]], *, features: Mapping[str, Any] | None = None,
                        repeats: int = 1, seconds: float | None = None, command: str | None = None) -> str:
    """A learning curve's page: plot and table."""
    headers = ["images_per_class", "n_train", "accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max",
               "macro_precision_mean", "n_test"]
    sections = [_section("Learning curve", _figure(plot_curve(rows), f"Mean test accuracy over {repeats} random "
                                                                     "samples per point; bars are one standard "
                                                                     "deviation, the band min to max.",
                                                   "learning curve")
                         + (f"<pre>{_e(command)}</pre>" if command else "")),
                _section("Points", _table(headers, [[r.get(h) for h in headers] for r in rows])
                         + (f"<p class='sub'>{seconds:.1f} s in all.</p>" if seconds is not None else ""))]
    return _page("headstart learning curve", _features_text(features or {}), sections)


def render_compare_report(rows: Sequence[Mapping[str, Any]], *, training: Mapping[str, Any] | None = None,
                          seconds: float | None = None, command: str | None = None) -> str:
    """A backbone comparison's page: accuracy against latency, and the table."""
    headers = ["backbone", "params_m", "gmacs", "input_size", "bottleneck_size", "images_per_s", "latency_ms",
               "test_accuracy", "macro_precision", "macro_recall", "extraction_s", "runtime"]
    sections = [_section("Accuracy against latency",
                         _figure(plot_compare(rows), "Each point is a backbone with the same head, split and "
                                                     "seed; latency is one image through the network alone.",
                                 "accuracy against latency") + (f"<pre>{_e(command)}</pre>" if command else "")),
                _section("Backbones", _table(headers, [[r.get(h) for h in headers] for r in rows])
                         + f"<p class='sub'>Head settings: {_e(json.dumps(dict(training or {})))}"
                         + (f"; {seconds:.1f} s in all" if seconds is not None else "") + ".</p>")]
    return _page("headstart backbone comparison", "", sections)


def rebuild_run_report(run_dir: str | Path, *, image_root: str | Path | None = None) -> Path:
    """Rewrite ``RUN_DIR/report.html`` from the run's manifest and metrics.json."""
    from .bundle import load_bundle
    from .errors import ModelError

    bundle = load_bundle(run_dir)
    if bundle.metrics is None:
        raise ModelError(f"{bundle.path} has no metrics.json to report on",
                         hint="retrain, or evaluate the model again")
    recorded = bundle.data.image_dir if bundle.data is not None else None
    root = Path(image_root) if image_root is not None else (Path(recorded) if recorded else None)
    if root is not None and not root.is_dir():
        log.warning("image folder %s is not here; the gallery shows placeholders (pass --image_dir)", root)
    text = render_run_report(metrics=bundle.metrics, labels=bundle.labels, image_root=root,
                             backbone=bundle.backbone.to_dict(), hyperparameters=bundle.hyperparameters,
                             created=bundle.created)
    out = bundle.path / "report.html"
    tmp = out.with_name(".report.html.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["data_uri", "plot_compare", "plot_confusion_matrix", "plot_curve", "plot_sweep", "plot_training_curves",
           "rebuild_run_report", "render_compare_report", "render_curve_report", "render_run_report",
           "render_sweep_report", "thumbnail"]
