"""HTML reports and plots: one self-contained file per run or experiment.

A report must open anywhere, years later, offline and from an e-mail
attachment: so every plot is a PNG and every thumbnail a JPEG/PNG embedded as a
``data:`` URI, the style sheet is inline, and there are no scripts, web fonts
or links to fetch.  Plots are drawn by matplotlib's Agg backend (imported only
when a report is drawn, so ``import headstart`` stays fast); the ``plot_*``
functions return PNG bytes so the lab guide can save the very same figures.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("headstart")

MAX_GALLERY = 120  # misclassified thumbnails shown; the rest are counted
THUMBNAIL_PX = 128
_DPI = 100

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
.cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em;min-width:9em}
.card b{display:block;font-size:1.5em}
.card span{color:#555;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
.gallery{display:flex;flex-wrap:wrap;gap:.6em}
.shot{width:140px;font-size:.8em;border:1px solid #ddd;border-radius:4px;padding:4px;word-wrap:break-word}
.shot img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;background:#f7f7f7;display:block}
.missing{width:128px;height:128px;background:#eee;color:#888;display:flex;align-items:center;
justify-content:center}
.warn{color:#a00;font-weight:bold}
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


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _cards(items: Sequence[tuple[str, str]]) -> str:
    return "<div class='cards'>" + "".join(f"<div class='card'><span>{_e(k)}</span><b>{_e(v)}</b></div>"
                                           for k, v in items) + "</div>"


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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def thumbnail(path: Path, size: int = THUMBNAIL_PX) -> str | None:
    """A data URI of a small copy of the image at ``path``, or None if it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size))
            rgb = img.convert("RGB") if img.mode not in ("RGB", "L") else img
            buf = io.BytesIO()
            small = max(rgb.size) <= 64  # tiny images (Fashion-MNIST) stay sharp as PNG
            rgb.save(buf, "PNG" if small else "JPEG", **({} if small else {"quality": 85}))
    except Exception as exc:  # noqa: BLE001 - moved, deleted or damaged files: show a placeholder
        log.debug("no thumbnail for %s: %s", path, exc)
        return None
    return data_uri(buf.getvalue(), "image/png" if small else "image/jpeg")


# ---------------------------------------------------------------- plots


def plot_training_curves(history: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Cross entropy, and training and validation accuracy, against the training step."""
    rows = [h for h in history if h.get("cross_entropy") is not None]
    if not rows:
        return None
    plt = _pyplot()
    steps = [h["step"] for h in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    left.plot(steps, [h["cross_entropy"] for h in rows], label="training batch")
    if any(h.get("validation_cross_entropy") is not None for h in rows):
        left.plot(steps, [h.get("validation_cross_entropy") for h in rows], label="validation")
    left.set(xlabel="step", ylabel="cross entropy", title="Loss")
    left.set_yscale("log")
    left.legend()
    right.plot(steps, [h["train_accuracy"] for h in rows], label="training batch")
    if any(h.get("validation_accuracy") is not None for h in rows):
        right.plot(steps, [h.get("validation_accuracy") for h in rows], label="validation")
    right.set(xlabel="step", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    right.legend(loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes | None:
    """Heat map of the confusion matrix, rows true classes, normalised per row, with counts written in."""
    cm = np.asarray(matrix, dtype=np.float64)
    if cm.size == 0:
        return None
    plt = _pyplot()
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    n = len(labels)
    side = max(3.5, 0.42 * n + 1.8)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=labels)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (test set)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _png(fig)


def _axis_values(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[Any], bool]:
    values = sorted({r[key] for r in rows}, key=lambda v: (isinstance(v, str), v))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return values, numeric


def plot_sweep(rows: Sequence[Mapping[str, Any]], swept: Sequence[str]) -> bytes | None:
    """Test accuracy and training time against each swept flag (one panel pair per flag).

    With two or more swept flags, the first swept flag is on the x axis and each
    value of the second draws its own line, so interactions stay visible.
    """
    if not rows:
        return None
    plt = _pyplot()
    flags = list(swept) or ["learning_rate"]
    fig, axes = plt.subplots(len(flags), 2, figsize=(10, 3.3 * len(flags)), squeeze=False)
    for k, x_key in enumerate(flags):
        others = [f for f in flags if f != x_key]
        group_key = others[0] if others else None
        groups = _axis_values(rows, group_key)[0] if group_key else [None]
        xs, numeric = _axis_values(rows, x_key)
        for metric, ax, label in (("test_accuracy", axes[k][0], "test accuracy"),
                                  ("train_s", axes[k][1], "training time (s)")):
            for g in groups:
                mean: dict[Any, list[float]] = {}
                err: dict[Any, list[float]] = {}
                crossed: list[Any] = []
                for r in rows:
                    if group_key and r[group_key] != g:
                        continue
                    if r.get(metric) is None:
                        continue
                    mean.setdefault(r[x_key], []).append(r[metric])
                    if metric == "test_accuracy":
                        err.setdefault(r[x_key], []).append(r.get("test_accuracy_std") or 0.0)
                    if r.get("diverged"):
                        crossed.append(r[x_key])
                pts = [x for x in xs if x in mean]
                if not pts:
                    continue
                pos = pts if numeric else [xs.index(x) for x in pts]
                ys = [float(np.mean(mean[x])) for x in pts]
                name = f"{group_key}={g}" if group_key else None
                if metric == "test_accuracy":
                    ax.errorbar(pos, ys, yerr=[float(np.mean(err[x])) for x in pts], marker="o", capsize=3,
                                label=name)
                    for x in crossed:
                        ax.plot(x if numeric else xs.index(x), float(np.mean(mean[x])), "rx", markersize=12,
                                label="diverged" if x == crossed[0] and g == groups[0] else None)
                else:
                    ax.plot(pos, ys, marker="o", label=name)
            if numeric and len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 20:
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(xs)), labels=[str(x) for x in xs])
            ax.set(xlabel=x_key, ylabel=label)
            ax.grid(alpha=0.3)
            if group_key or metric == "test_accuracy" and any(r.get("diverged") for r in rows):
                ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_curve(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Test accuracy (mean and spread over repeats) against training images per class."""
    if not rows:
        return None
    plt = _pyplot()
    xs = [float(r["train_images_per_class"]) for r in rows]
    ys = [r["accuracy_mean"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(xs, ys, yerr=[r["accuracy_std"] for r in rows], marker="o", capsize=4)
    lows, highs = [r.get("accuracy_min", y) for r, y in zip(rows, ys)], [r.get("accuracy_max", y)
                                                                          for r, y in zip(rows, ys)]
    ax.fill_between(xs, lows, highs, alpha=0.15, label="min–max over repeats")
    for r, x, y in zip(rows, xs, ys):
        if r["images_per_class"] == "all":
            ax.annotate("all", (x, y), textcoords="offset points", xytext=(0, 8), ha="center")
    ax.set_xscale("log")
    ax.set(xlabel="training images per class", ylabel=f"test accuracy (N={rows[0]['n_test']})",
           title="Learning curve", ylim=(0, 1.02))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    return _png(fig)


def plot_compare(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Test accuracy against batch-1 latency, one point per backbone (up and left is better)."""
    points = [r for r in rows if r.get("latency_ms") is not None and r.get("test_accuracy") is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in points:
        ax.scatter(r["latency_ms"], r["test_accuracy"], s=40 + 8 * float(r.get("gmacs") or 0) * 10)
        ax.annotate(f"{r['backbone']}\n{r.get('params_m', '?')}M params, {r.get('gmacs', '?')} GMACs",
                    (r["latency_ms"], r["test_accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set(xlabel=f"batch-1 latency (ms, {points[0].get('runtime')})", ylabel="test accuracy",
           title="Accuracy against latency")
    ax.margins(x=0.35, y=0.25)
    ax.grid(alpha=0.3)
    return _png(fig)


# ---------------------------------------------------------------- run report


def _gallery(misclassified: Sequence[Mapping[str, Any]], image_root: Path | None, limit: int) -> str:
    if not misclassified:
        return "<p>No test image was misclassified.</p>"
    items = sorted(misclassified, key=lambda m: -float(m.get("score") or 0))
    shots = []
    for m in items[:limit]:
        uri = thumbnail(Path(image_root) / m["path"]) if image_root is not None else None
        pic = (f"<img alt='{_e(m['path'])}' src='{uri}'>" if uri
               else "<div class='missing'>image not found</div>")
        shots.append(f"<div class='shot'>{pic}<div><b>{_e(m['label'])}</b> → {_e(m['predicted'])} "
                     f"({float(m.get('score') or 0):.2f})</div><div class='sub'>{_e(m['path'])}</div></div>")
    more = (f"<p class='sub'>… and {len(items) - limit} more (all are listed in metrics.json).</p>"
            if len(items) > limit else "")
    return ("<p class='sub'>True label → predicted label (score), most confident mistakes first.</p>"
            f"<div class='gallery'>{''.join(shots)}</div>{more}")


def render_run_report(*, metrics: dict[str, Any], labels: Sequence[str], image_root: Path | None,
                      backbone: dict[str, Any], hyperparameters: dict[str, Any], title: str | None = None,
                      created: str | None = None, max_gallery: int = MAX_GALLERY) -> str:
    """The report of one retrain run: what was measured, how it trained, what it gets wrong, and how.

    ``image_root`` is the folder the misclassified paths are relative to; images
    that are no longer there get a placeholder instead of breaking the report.
    """
    test = metrics.get("test") or {}
    val = metrics.get("validation") or {}
    training = metrics.get("training") or {}
    timing = metrics.get("timing") or {}
    bottlenecks = metrics.get("bottlenecks") or {}
    splits = metrics.get("splits") or {}
    history = metrics.get("history") or []
    diverged = bool(training.get("diverged"))

    cards = [("test accuracy", f"{_pct(test.get('accuracy'))} (N={test.get('n', '?')})"),
             ("macro precision", _pct(test.get("macro_precision"))),
             ("macro recall", _pct(test.get("macro_recall"))),
             ("validation accuracy", f"{_pct(val.get('accuracy'))} (N={val.get('n', '?')})")]
    if test.get("top5_accuracy") is not None:
        cards.append(("top-5 accuracy", _pct(test["top5_accuracy"])))
    cards.append(("training time", f"{timing.get('train_s', float('nan')):.2f} s"))
    summary = _cards(cards)
    if diverged:
        summary += ("<p class='warn'>Training diverged (the loss became NaN or infinite); the model keeps the "
                    "last finite weights. Lower --learning_rate.</p>")

    per_class = test.get("per_class") or {}
    def three(x: Any) -> str:
        return "–" if x is None else f"{float(x):.3f}"

    class_rows = [[lab, three(m["precision"]), three(m["recall"]), three(m["f1"]), m["support"]]
                  for lab, m in per_class.items()]
    class_rows.append(["macro average", three(test.get("macro_precision")), three(test.get("macro_recall")),
                       three(test.get("macro_f1")), test.get("n")])
    weak = [m["f1"] < 0.5 for m in per_class.values()] + [False]

    curves = plot_training_curves(history)
    confusion = plot_confusion_matrix(test.get("confusion_matrix") or [], test.get("labels") or list(labels))
    final = training.get("final") or {}
    train_text = (f"{training.get('steps_run', '?')} steps on {training.get('n', '?')} training images"
                  + (f"; final training cross entropy {_num(final.get('cross_entropy'))}" if final else ""))

    timing_rows = [["bottlenecks", timing.get("bottlenecks_s")], ["training", timing.get("train_s")],
                   ["total", timing.get("total_s")]]
    provenance = {"backbone": backbone, "hyperparameters": hyperparameters, "data": metrics.get("data"),
                  "splits": splits, "bottlenecks": bottlenecks}
    sections = [
        _section("Summary", summary),
        _section("Training", f"<p>{_e(train_text)}.</p>"
                 + _figure(curves, "Cross entropy (log scale) and accuracy, measured every eval_step_interval "
                                   "steps on the training batch and on validation images.", "training curves")),
        _section("Confusion matrix", _figure(confusion, "Rows are true classes, columns predicted classes; "
                                                        "colour is the share of the row.", "confusion matrix")),
        _section("Per-class precision, recall and F1 (test set)",
                 _table(["class", "precision", "recall", "F1", "support"], class_rows, bad=weak)),
        _section(f"Misclassified test images ({len(metrics.get('misclassified') or [])})",
                 _gallery(metrics.get("misclassified") or [], image_root, max_gallery)),
        _section("Timing (seconds)", _table(["stage", "seconds"], timing_rows)
                 + f"<p class='sub'>Bottlenecks: {_e(bottlenecks.get('computed', '?'))} computed, "
                   f"{_e(bottlenecks.get('cached', '?'))} read from the cache, "
                   f"{_e(bottlenecks.get('skipped', 0))} images skipped.</p>"),
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


__all__ = ["render_run_report", "render_sweep_report", "render_curve_report", "render_compare_report",
           "rebuild_run_report", "plot_training_curves", "plot_confusion_matrix", "plot_sweep", "plot_curve",
           "plot_compare", "thumbnail", "data_uri"]
