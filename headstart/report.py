"""The HTML report of one run: what was measured, how it trained, what it gets wrong, and how.

Training writes it as ``report.html`` in the run folder; :func:`rebuild_run_report`
writes it again from the run's ``metrics.json``.  The page and its parts (one
self-contained file, nothing fetched) are in :mod:`headstart.report_page`; the
sweep, learning-curve and backbone-comparison pages are in
:mod:`headstart.lab_report`.  The plots come from :mod:`headstart.plots`
(re-exported here), PNG bytes the lab guide saves too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
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
from .report_page import _cards, _e, _figure, _flags, _num, _page, _pct, _seconds, _section, _table, thumbnail

log = logging.getLogger("headstart")

MAX_GALLERY = 120  # misclassified thumbnails shown; the rest are counted


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
        pic = (
            f"<img alt='{_e(m['path'])}' src='{uri}' title='{_e(m['path'])}'>"
            if uri
            else "<div class='missing'>image not found</div>"
        )
        shots.append(
            f"<div class='shot'>{pic}<div><b>{_e(m['label'])}</b> → {_e(m['predicted'])} "
            f"({float(m.get('score') or 0):.2f})</div>{_name(str(m['path']))}</div>"
        )
    more = (
        f"<p class='sub'>… and {len(items) - limit} more (all are listed in metrics.json).</p>"
        if len(items) > limit
        else ""
    )
    return (
        "<p class='sub'>True label → predicted label (score), most confident mistakes first.</p>"
        f"<div class='gallery'>{''.join(shots)}</div>{more}"
    )


MAX_SKIPPED_ROWS = 200  # skipped images listed in the report; skipped.csv has them all


def _skipped(skipped: Sequence[Mapping[str, Any]], count: int) -> str:
    if not skipped:
        return (
            f"<p>{_e(count)} images were skipped; their list is in skipped.csv.</p>"
            if count
            else "<p>Every image was used.</p>"
        )
    rows = [[item.get("path", "?"), item.get("reason", "?")] for item in skipped[:MAX_SKIPPED_ROWS]]
    more = (
        f"<p class='sub'>… and {len(skipped) - MAX_SKIPPED_ROWS} more, all listed in skipped.csv.</p>"
        if len(skipped) > MAX_SKIPPED_ROWS
        else ""
    )
    return (
        "<p class='sub'>Not used for training or testing; the run's skipped.csv has the same list.</p>"
        + _table(["image", "reason"], rows, left=2)
        + more
    )


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
    rows.append(
        [
            "macro average",
            three(test.get("macro_precision")),
            three(test.get("macro_recall")),
            three(test.get("macro_f1")),
            test.get("n"),
        ]
    )
    weak.append(False)
    return rows, weak, empty_classes_text(empty)


def render_run_report(
    *,
    metrics: dict[str, Any],
    labels: Sequence[str],
    image_root: Path | None,
    backbone: dict[str, Any],
    hyperparameters: dict[str, Any],
    title: str | None = None,
    created: str | None = None,
    max_gallery: int = MAX_GALLERY,
) -> str:
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

    cards = [
        ("test accuracy", _pct(test.get("accuracy")), f"(N={test.get('n', '?')})"),
        ("macro precision", _pct(test.get("macro_precision"))),
        ("macro recall", _pct(test.get("macro_recall"))),
        ("validation accuracy", _pct(val.get("accuracy")), f"(N={val.get('n', '?')})"),
    ]
    if test.get("top5_accuracy") is not None:
        cards.append(("top-5 accuracy", _pct(test["top5_accuracy"])))
    cards.append(("training time", f"{timing.get('train_s', float('nan')):.2f} s"))
    summary = _cards(cards)
    if diverged:
        summary += (
            "<p class='warn'>Training diverged (the loss became NaN or infinite); the model keeps the "
            "last finite weights. Lower --learning_rate.</p>"
        )
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
        summary += (
            f"<p class='note'>{_e(n_skipped)} image{'' if n_skipped == 1 else 's'} skipped: listed "
            "with the reasons under Skipped images below.</p>"
        )

    class_rows, weak, empty_note = _class_rows(test)
    curves = plot_training_curves(history)
    confusion = plot_confusion_matrix(test.get("confusion_matrix") or [], test.get("labels") or list(labels))
    calibration = metrics.get("calibration") or {}
    reliability = plot_reliability(
        calibration.get("reliability_before") or [],
        calibration.get("reliability_after") or [],
        (calibration["ece_before"], calibration["ece_after"]) if calibration.get("ece_before") is not None else None,
    )
    unknown = metrics.get("unknown") or {}
    final = training.get("final") or {}
    train_text = f"{training.get('steps_run', '?')} steps on {training.get('n', '?')} training images" + (
        f"; final training cross entropy {_num(final.get('cross_entropy'))}" if final else ""
    )

    # Rounded as the command prints them, so the two show the same numbers.
    timing_rows = [
        ["indexing and bottlenecks", _seconds(timing.get("bottlenecks_s"), 1)],
        ["training", _seconds(timing.get("train_s"), 2)],
        ["total", _seconds(timing.get("total_s"), 1)],
    ]
    provenance = {
        "backbone": backbone,
        "hyperparameters": hyperparameters,
        "data": metrics.get("data"),
        "splits": splits,
        "bottlenecks": bottlenecks,
    }
    sections = [
        _section("Summary", summary),
        _section(
            "Training",
            f"<p>{_e(train_text)}.</p>"
            + _figure(
                curves,
                "Cross entropy (log scale; a loss of 0 is drawn at "
                f"{LOSS_FLOOR:g}) and accuracy, measured every eval_step_interval steps on "
                "the training batch and on validation images.",
                "training curves",
            ),
        ),
        _section(
            "Confusion matrix",
            _figure(
                confusion,
                "Rows are true classes, columns predicted classes; colour is the share of the row.",
                "confusion matrix",
            ),
        ),
        _section(
            "Confidence",
            _figure(
                reliability,
                "Accuracy against confidence in bins of the test images, "
                f"before and after dividing the logits by the temperature "
                f"{_num(calibration.get('temperature'))} fitted on the "
                "validation split.",
                "reliability diagram",
            )
            + (
                f"<p class='sub'>The 'unknown' answer accepts {_pct(unknown.get('accepted'))} of the test "
                f"images (its threshold was set to accept {_pct(unknown.get('accept'))} of the validation "
                "images).</p>"
                if unknown.get("accepted") is not None
                else ""
            ),
        ),
        _section(
            "Per-class precision, recall and F1 (test set)",
            _table(["class", "precision", "recall", "F1", "support"], class_rows, bad=weak)
            + (f"<p class='sub'>{_e(empty_note)}.</p>" if empty_note else ""),
        ),
        _section(
            f"Misclassified test images ({len(metrics.get('misclassified') or [])})",
            _gallery(metrics.get("misclassified") or [], image_root, max_gallery),
        ),
        _section(f"Skipped images ({n_skipped})", _skipped(metrics.get("skipped") or [], n_skipped)),
        _section(
            "Timing (seconds)",
            _table(["stage", "seconds"], timing_rows)
            + "<p class='sub'>The total is the command's printed Total time: everything up to the "
            "finished model, without writing the run folder and this report. "
            f"Bottlenecks: {_e(bottlenecks.get('computed', '?'))} computed, "
            f"{_e(bottlenecks.get('cached', '?'))} read from the cache, "
            f"{_e(n_skipped)} images skipped.</p>",
        ),
        _section("Provenance", f"<pre>{_e(json.dumps(provenance, indent=2, default=str))}</pre>"),
    ]
    name = backbone.get("name", "?")
    subtitle = (
        f"{_e(len(labels))} classes · backbone {_e(name)}"
        + (f" · {_e(created)}" if created else "")
        + (f" · images from {_e(image_root)}" if image_root else "")
    )
    return _page(title or "headstart run report", subtitle, sections)


def rebuild_run_report(run_dir: str | Path, *, image_root: str | Path | None = None) -> Path:
    """Rewrite ``RUN_DIR/report.html`` from the run's manifest and metrics.json."""
    from .bundle import load_bundle
    from .errors import ModelError

    bundle = load_bundle(run_dir)
    if bundle.metrics is None:
        raise ModelError(f"{bundle.path} has no metrics.json to report on", hint="retrain, or evaluate the model again")
    recorded = bundle.data.image_dir if bundle.data is not None else None
    root = Path(image_root) if image_root is not None else (Path(recorded) if recorded else None)
    if root is not None and not root.is_dir():
        log.warning("image folder %s is not here; the gallery shows placeholders (pass --image_dir)", root)
    text = render_run_report(
        metrics=bundle.metrics,
        labels=bundle.labels,
        image_root=root,
        backbone=bundle.backbone.to_dict(),
        hyperparameters=bundle.hyperparameters,
        created=bundle.created,
    )
    out = bundle.path / "report.html"
    tmp = out.with_name(".report.html.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = [
    "plot_compare",
    "plot_confusion_matrix",
    "plot_curve",
    "plot_sweep",
    "plot_training_curves",
    "rebuild_run_report",
    "render_run_report",
]
