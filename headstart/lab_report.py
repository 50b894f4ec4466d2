"""The HTML pages of the lab commands: a sweep, a learning curve, a backbone comparison.

Each page is a plot and the table of the rows the experiment measured, with the
command that made them, on :mod:`headstart.report_page`'s self-contained page
(it opens offline, like a run report).  Apart from :mod:`headstart.report`
because these pages read an experiment's rows, not one run's metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .plots import plot_compare, plot_curve, plot_sweep
from .report_page import _cards, _e, _figure, _page, _pct, _section, _table

# ---------------------------------------------------------------- experiment pages


def _features_text(features: Mapping[str, Any]) -> str:
    if not features:
        return ""
    return (
        f"{_e(features.get('image_dir'))}: {_e(features.get('training'))} training, "
        f"{_e(features.get('validation'))} validation and {_e(features.get('testing'))} test images, "
        f"{_e(len(features.get('labels') or []))} classes; backbone {_e(features.get('backbone'))} "
        f"({_e(features.get('runtime'))}), bottlenecks {_e(features.get('bottlenecks_cached'))} cached / "
        f"{_e(features.get('bottlenecks_computed'))} computed"
    )


SWEEP_COLUMNS = (
    "test_accuracy",
    "test_accuracy_std",
    "validation_accuracy",
    "macro_precision",
    "macro_recall",
    "cross_entropy",
    "train_s",
    "best_step",
    "diverged",
)


def render_sweep_report(
    rows: Sequence[Mapping[str, Any]],
    swept: Sequence[str],
    *,
    features: Mapping[str, Any] | None = None,
    repeats: int = 1,
    seconds: float | None = None,
    command: str | None = None,
) -> str:
    """A sweep's page: the plot, then every cell with its scores (diverged cells in red)."""
    keys = (
        [
            k
            for k in rows[0]
            if k not in SWEEP_COLUMNS
            and k not in ("diverged_repeats", "repeats", "n_test", "macro_f1", "test_cross_entropy")
        ]
        if rows
        else []
    )
    keys = [k for k in keys if k in swept] + [k for k in keys if k not in swept]
    headers = keys + list(SWEEP_COLUMNS)
    table = _table(
        headers, [[r.get(h) for h in headers] for r in rows], left=0, bad=[bool(r.get("diverged")) for r in rows]
    )
    best = max((r for r in rows if r.get("test_accuracy") is not None), key=lambda r: r["test_accuracy"], default=None)
    cards = [("cells", str(len(rows))), ("repeats per cell", str(repeats))]
    if best is not None:
        cards.append(("best test accuracy", _pct(best["test_accuracy"])))
    if seconds is not None:
        cards.append(("sweep time", f"{seconds:.1f} s"))
    sections = [
        _section(
            "Summary",
            _cards(cards)
            + (
                f"<p>Best cell: {_e(', '.join(f'{k}={best[k]}' for k in swept))}</p>"
                if best is not None and swept
                else ""
            )
            + (f"<pre>{_e(command)}</pre>" if command else ""),
        ),
        _section(
            "Accuracy and training time",
            _figure(
                plot_sweep(rows, swept),
                "Mean over repeats; error bars are one standard deviation; red crosses mark diverged cells.",
                "sweep plot",
            ),
        ),
        _section(
            "Every cell",
            table + "<p class='sub'>best_step: the step at which validation accuracy "
            "stopped improving (median over repeats).</p>",
        ),
    ]
    return _page("headstart sweep", _features_text(features or {}), sections)


def render_curve_report(
    rows: Sequence[Mapping[str, Any]],
    *,
    features: Mapping[str, Any] | None = None,
    repeats: int = 1,
    seconds: float | None = None,
    command: str | None = None,
) -> str:
    """A learning curve's page: plot and table."""
    headers = [
        "images_per_class",
        "n_train",
        "accuracy_mean",
        "accuracy_std",
        "accuracy_min",
        "accuracy_max",
        "macro_precision_mean",
        "n_test",
    ]
    sections = [
        _section(
            "Learning curve",
            _figure(
                plot_curve(rows),
                f"Mean test accuracy over {repeats} random "
                "samples per point; bars are one standard "
                "deviation, the band min to max.",
                "learning curve",
            )
            + (f"<pre>{_e(command)}</pre>" if command else ""),
        ),
        _section(
            "Points",
            _table(headers, [[r.get(h) for h in headers] for r in rows])
            + (f"<p class='sub'>{seconds:.1f} s in all.</p>" if seconds is not None else ""),
        ),
    ]
    return _page("headstart learning curve", _features_text(features or {}), sections)


def render_compare_report(
    rows: Sequence[Mapping[str, Any]],
    *,
    training: Mapping[str, Any] | None = None,
    seconds: float | None = None,
    command: str | None = None,
) -> str:
    """A backbone comparison's page: accuracy against latency, and the table."""
    headers = [
        "backbone",
        "params_m",
        "gmacs",
        "input_size",
        "bottleneck_size",
        "images_per_s",
        "latency_ms",
        "test_accuracy",
        "macro_precision",
        "macro_recall",
        "extraction_s",
        "runtime",
    ]
    sections = [
        _section(
            "Accuracy against latency",
            _figure(
                plot_compare(rows),
                "Each point is a backbone with the same head, split and "
                "seed; latency is one image through the network alone.",
                "accuracy against latency",
            )
            + (f"<pre>{_e(command)}</pre>" if command else ""),
        ),
        _section(
            "Backbones",
            _table(headers, [[r.get(h) for h in headers] for r in rows])
            + f"<p class='sub'>Head settings: {_e(json.dumps(dict(training or {})))}"
            + (f"; {seconds:.1f} s in all" if seconds is not None else "")
            + ".</p>",
        ),
    ]
    return _page("headstart backbone comparison", "", sections)


__all__ = ["render_compare_report", "render_curve_report", "render_sweep_report"]
