"""doctor: find the mislabelled, duplicated, leaked and odd images in a folder."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from ..doctor_results import DEFAULT_SIMILARITY
from .common import add_command, flag, format_table, plural, print_json, require_path
from .core import add_backbone_flags, add_cache_flag, add_ray_flags, add_runtime_flags, ray_settings, setting_flag

_SHOWN = 10  # findings listed per kind in the table output


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "doctor",
        "find mislabelled, duplicated, leaked and odd images (from the cached bottlenecks)",
        "headstart doctor --image_dir flower_photos --output_dir doctor\n"
        "headstart doctor --image_dir flower_photos --write_fix_script fix.sh   # then review fix.sh\n"
        "headstart doctor --image_dir flower_photos --format json --similarity 0.95",
    )
    setting_flag(p, "image_dir", required=True)
    flag(
        p,
        "--output_dir",
        type=Path,
        default=None,
        help="where to write doctor.json and doctor.html (default: doctor_<folder name> here)",
    )
    flag(
        p,
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="print the summary as a table, the summary as JSON, or every finding as CSV (default: %(default)s)",
    )
    flag(
        p,
        "--similarity",
        type=float,
        default=None,
        help="bottleneck cosine from which two images are near-duplicates, whatever their pixels "
        f"(default: the measured {DEFAULT_SIMILARITY}; copies whose pixels line up are found below it)",
    )
    flag(
        p,
        "--write_fix_script",
        type=Path,
        default=None,
        metavar="FIX.sh",
        help="also write a shell script of mv commands to review and run (the doctor itself moves nothing)",
    )
    flag(p, "--folds", type=int, default=5, help="cross-validation folds for the label checks (default: %(default)s)")
    setting_flag(p, "testing_percentage")
    setting_flag(p, "validation_percentage")
    add_cache_flag(p)
    add_backbone_flags(p)
    setting_flag(p, "crop_pct")
    add_runtime_flags(p)
    setting_flag(p, "workers")
    add_ray_flags(p)
    p.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    from ..doctor import doctor, write_fix_script
    from ..doctor_report import finding_rows, plan_fixes

    require_path(args.image_dir, "--image_dir", "folder")
    if args.write_fix_script is not None:
        require_path(args.write_fix_script.expanduser().parent, "--write_fix_script's folder", "folder")
    output_dir = args.output_dir or Path(f"doctor_{Path(args.image_dir).expanduser().resolve().name}")
    report = doctor(
        args.image_dir,
        output_dir=output_dir,
        bottleneck_dir=args.bottleneck_dir,
        backbone=args.backbone,
        weights=args.weights,
        crop_pct=args.crop_pct,
        runtime=args.runtime,
        precision=args.precision,
        validation_percentage=args.validation_percentage,
        testing_percentage=args.testing_percentage,
        similarity=args.similarity,
        folds=args.folds,
        workers=args.workers,
        progress=not args.quiet,
        ray=ray_settings(args),
    )
    script = write_fix_script(report, args.write_fix_script) if args.write_fix_script is not None else None
    for item in report.skipped[:5]:
        print(f"warning: skipped {item.path}: {item.reason}", file=sys.stderr)
    if args.format == "json":
        print_json(
            {
                **report.summary(),
                "doctor_json": str(output_dir / "doctor.json"),
                "doctor_html": str(output_dir / "doctor.html"),
                "fix_script": str(script) if script else None,
            }
        )
        return 0
    if args.format == "csv":
        rows = finding_rows(report)
        writer = csv.DictWriter(
            sys.stdout, fieldnames=["kind", "path", "reason", "score", "label", "suggested", "split", "paths"]
        )
        writer.writeheader()
        writer.writerows(rows)
        return 0
    _print_table(report)
    print()
    print(
        f"Wrote {output_dir / 'doctor.json'} and {output_dir / 'doctor.html'} in {report.timing.get('total_s', 0):.1f}s"
    )
    if script is not None:
        fixes = plan_fixes(report)
        print(
            f"Wrote {script}: {plural(sum(f.active for f in fixes), 'mv line')} to review "
            f"({sum(not f.active for f in fixes)} more commented out); nothing has been moved"
        )
    else:
        print("Write the mv commands to review with --write_fix_script fix.sh; nothing has been moved")
    return 0


def _print_table(report: Any) -> None:
    classes = plural(len(report.labels), "class", "classes")
    print(f"Doctor: {report.image_dir} ({plural(report.n_images, 'image')}, {classes}, {len(report.skipped)} skipped)")
    print(report.summary()["summary"])
    if report.test_accuracy is not None:
        text = f"Test accuracy {100 * report.test_accuracy:.1f} %"
        if report.leaks and report.test_accuracy_without_leaks is not None:
            text += f", {100 * report.test_accuracy_without_leaks:.1f} % without the leaked test images"
        print(text)
    for note in report.notes:
        print(f"  note: {note}")
    counts = [
        ["exact duplicates", len(report.exact_duplicates)],
        ["near-duplicate groups", len(report.near_duplicates)],
        ["near-duplicate pairs", report.near_duplicate_pairs],
        ["leaks", len(report.leaks)],
        ["label issues", len(report.label_issues)],
        ["outliers", len(report.outliers)],
        ["image issues", len(report.image_issues)],
        ["classes flagged", sum(c.flagged for c in report.class_balance)],
    ]
    print()
    print(format_table(["finding", "count"], counts, align="lr"))
    sections = [
        (
            "label issues",
            [[f.path, f.given, f.suggested, f.score] for f in report.label_issues],
            ["path", "given", "suggested", "score"],
        ),
        (
            "leaks",
            [[f.path, f.split, f.matches[0], f.score] for f in report.leaks],
            ["path", "split", "copy of", "score"],
        ),
        (
            "near-duplicates",
            [[f.path, len(f.paths), ",".join(sorted(set(f.classes))), f.score] for f in report.near_duplicates],
            ["keep", "images", "classes", "score"],
        ),
        (
            "exact duplicates",
            [[f.path, len(f.paths), ",".join(sorted(set(f.classes)))] for f in report.exact_duplicates],
            ["path", "copies", "classes"],
        ),
        ("outliers", [[f.path, f.label, f.score] for f in report.outliers], ["path", "class", "score"]),
        ("image issues", [[f.path, f.kind, f.reason] for f in report.image_issues], ["path", "kind", "reason"]),
        (
            "class balance",
            [[c.label, c.training, c.validation, c.testing, c.reason] for c in report.class_balance if c.flagged],
            ["class", "training", "validation", "testing", "note"],
        ),
    ]
    for title, rows, headers in sections:
        if not rows:
            continue
        more = f" (first {_SHOWN} of {len(rows)})" if len(rows) > _SHOWN else ""
        print(f"\n{title}{more}:")
        print(format_table(headers, rows[:_SHOWN]))
