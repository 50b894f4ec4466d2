"""Measure the data doctor against planted problems on real images (the targets of docs/DOCTOR.md).

For Fashion-MNIST (``--per_class`` images of each of its 10 classes) and for a
folder of photo crops (scikit-image / scikit-learn sample photos), it plants
near-duplicates (JPEG quality 60, resize 0.8-1.2, 5 % crop, brightness +-10 %)
some of them across splits (leaks), 5 % label errors, a few outliers and bad
images, then runs the doctor twice (the second run, on cached bottlenecks, is
the one timed) and prints one JSON object:

* labels: precision of the top-ranked label issues (as many as were planted),
  recall within the top twice-as-many, and the same for a plain baseline in the
  same run: 5-fold cross-validated scikit-learn LogisticRegression, ranked by the
  probability of the given label;
* near-duplicates: recall of the planted pairs (per kind) and false pairs among
  the distinct images, at the default threshold and over a sweep;
* leaks: planted cross-split copies reported;
* speed: seconds of the cached run, per stage.

    python benchmarks/bench_doctor.py --per_class 300 --workdir /tmp/bench_doctor
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from doctor_planting import (
    plant_bad_images,
    plant_label_errors,
    plant_near_duplicates,
    sample_photos,
    write_photo_crops,
)

SWEEP = (0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)
PIXEL_SWEEP = (0.98, 0.99, 0.992, 0.994, 0.995, 0.996, 0.997, 0.998)
RATIO_SWEEP = (2.0, 3.0, 4.0, 5.0, 8.0, np.inf)
FLOOR_SWEEP = (0.9, 0.95, 0.97, 0.98, 0.99)


def _groups(pairs: list[tuple[str, str]]) -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    return {a: find(a) for a in list(parent)}


def near_duplicate_scores(pairs: list[tuple[str, str]], planted, distinct: set[str], **settings) -> dict:
    """Recall of planted pairs (per kind) and false pairs among distinct images, for the pairs accepted."""
    root = _groups(pairs)
    found = {kind: [] for _, _, kind in planted}
    for orig, copy, kind in planted:
        found[kind].append(orig in root and root.get(orig) == root.get(copy))
    false = [(a, b) for a, b in pairs if a in distinct and b in distinct]
    involved = {x for pair in false for x in pair}
    return {**settings, "recall": round(float(np.mean([x for v in found.values() for x in v])), 4),
            "recall_by_kind": {k: round(float(np.mean(v)), 3) for k, v in found.items()},
            "reported_pairs": len(pairs), "false_pairs": len(false),
            "false_pairs_per_distinct_image": round(len(false) / max(1, len(distinct)), 4),
            "distinct_images_in_a_false_pair": round(len(involved) / max(1, len(distinct)), 4),
            "false_share_of_reported_pairs": round(len(false) / max(1, len(pairs)), 4)}


def near_duplicate_sweeps(root: Path, cache: Path, planted, distinct: set[str]) -> dict:
    """The near-duplicate rule's three settings swept one at a time around the doctor's defaults, on the
    doctor's own neighbour search and thumbnails (computed once)."""
    from headstart.backbones import resolve_backbone
    from headstart.cache import BottleneckCache
    from headstart.data import index_image_dir
    from headstart.doctor_checks import scan_images, similarity_search
    from headstart.near_duplicates import near_duplicate_pairs, pixel_candidates
    from headstart.doctor_results import DEFAULT_SIMILARITY, NEIGHBOURS, PIXEL_FLOOR, PIXEL_MATCH, PIXEL_RATIO
    from headstart.features import compute_bottlenecks

    index = index_image_dir(root, require_training=False)
    with BottleneckCache(cache) as c:
        b = compute_bottlenecks(index.records, resolve_backbone("efficientnet_lite0", crop_pct=1.0), c, progress=False)
    _, thumbs = scan_images([r.path for r in b.records], 2)
    nbrs = similarity_search(b.vectors, k=NEIGHBOURS, threshold=min(SWEEP))
    extra = pixel_candidates(thumbs, b.vectors)
    paths = [r.relpath for r in b.records]

    def run(similarity: float, pixel_match: float, pixel_ratio: float, pixel_floor: float = PIXEL_FLOOR) -> dict:
        pairs = near_duplicate_pairs(thumbs, nbrs, similarity, extra=extra, pixel_match=pixel_match,
                                     pixel_ratio=pixel_ratio, pixel_floor=pixel_floor)
        return near_duplicate_scores([(paths[a], paths[b]) for a, b, _, _ in pairs], planted, distinct,
                                     similarity=similarity, pixel_match=pixel_match,
                                     pixel_ratio=None if np.isinf(pixel_ratio) else pixel_ratio,
                                     pixel_floor=pixel_floor)

    never = 2.0  # a setting no pair reaches: that rule off
    return {
        "cosine_only": [run(t, never, np.inf) for t in SWEEP],
        "similarity": [run(t, PIXEL_MATCH, PIXEL_RATIO) for t in SWEEP],
        "pixel_match_without_ratio": [run(DEFAULT_SIMILARITY, t, np.inf) for t in PIXEL_SWEEP],
        "pixel_ratio": [run(DEFAULT_SIMILARITY, PIXEL_MATCH, r) for r in RATIO_SWEEP],
        "pixel_floor": [run(DEFAULT_SIMILARITY, PIXEL_MATCH, PIXEL_RATIO, f) for f in FLOOR_SWEEP],
    }


def baseline_ranking(image_dir: Path, cache_dir: Path) -> tuple[list[str], float]:
    """Relative paths, most suspicious first, by 5-fold cross-validated logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from headstart.backbones import resolve_backbone
    from headstart.cache import BottleneckCache
    from headstart.data import index_image_dir
    from headstart.features import compute_bottlenecks

    index = index_image_dir(image_dir, require_training=False)
    with BottleneckCache(cache_dir) as cache:
        b = compute_bottlenecks(index.records, resolve_backbone("efficientnet_lite0", crop_pct=1.0), cache,
                                progress=False)
    y = index.label_ids(b.records)
    start = time.perf_counter()
    proba = cross_val_predict(LogisticRegression(max_iter=1000), b.vectors, y, method="predict_proba",
                              cv=StratifiedKFold(5, shuffle=True, random_state=0))
    seconds = time.perf_counter() - start
    order = np.argsort(proba[np.arange(len(y)), y], kind="stable")
    return [b.records[i].relpath for i in order], seconds


def holdout_accuracy(image_dir: Path, holdout: Path, cache_dir: Path) -> float:
    """Accuracy on ``holdout`` of a head trained as retrain trains it (its defaults) on the training split."""
    from headstart.backbones import resolve_backbone
    from headstart.cache import BottleneckCache
    from headstart.data import index_image_dir
    from headstart.doctor_results import HEAD_PARAMS
    from headstart.features import compute_bottlenecks
    from headstart.head import SoftmaxHead

    index = index_image_dir(image_dir)
    test = index_image_dir(holdout, 0, 100, labels=index.labels, require_training=False)
    net = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
    with BottleneckCache(cache_dir) as cache:
        train = compute_bottlenecks(index.split("training"), net, cache, progress=False)
        held = compute_bottlenecks(test.records, net, cache, progress=False)
    head = SoftmaxHead(n_classes=len(index.labels), seed=0, **HEAD_PARAMS)
    head.fit(train.vectors, index.label_ids(train.records))
    return float(np.mean(head.predict(held.vectors) == test.label_ids(held.records)))


def fix_script_effect(root: Path, report, workdir: Path, cache: Path, per_class: int) -> dict:
    """Holdout accuracy trained on the clean folder, the planted one, and the planted one after running the
    fix script as written (its active lines only)."""
    import subprocess

    from headstart.datasets import write_fashion_mnist
    from headstart.doctor import write_fix_script

    clean, holdout = workdir / "fashion_clean", workdir / "fashion_holdout"
    for folder, kwargs in ((clean, {"per_class": per_class}), (holdout, {"per_class": 100, "split": "test"})):
        if not folder.exists():
            write_fashion_mnist(folder, **kwargs)
    before = holdout_accuracy(root, holdout, cache)
    script = write_fix_script(report, workdir / "fix_fashion.sh")
    subprocess.run(["sh", str(script)], check=True, capture_output=True)
    text = script.read_text().splitlines()
    return {"holdout_images": 100 * 10, "clean": round(holdout_accuracy(clean, holdout, cache), 4),
            "planted": round(before, 4), "planted_after_fix_script": round(holdout_accuracy(root, holdout, cache), 4),
            "active_lines": sum(line.startswith("mkdir -p ") for line in text),
            "commented_lines": sum(line.startswith("# mkdir -p ") for line in text)}


def label_variants(root: Path, cache: Path, planted: set[str]) -> dict:
    """How the label check's choices rank the planted errors: one or two confident-learning rounds,
    500 or 1,000 steps per fold head, and cleanlab's three ranking methods."""
    import warnings

    import cleanlab.filter
    import cleanlab.rank

    from headstart.backbones import resolve_backbone
    from headstart.cache import BottleneckCache
    from headstart.data import index_image_dir
    from headstart.doctor_checks import out_of_sample_probabilities
    from headstart.doctor_results import FOLD_HEAD_PARAMS
    from headstart.features import compute_bottlenecks

    index = index_image_dir(root, require_training=False)
    with BottleneckCache(cache) as c:
        b = compute_bottlenecks(index.records, resolve_backbone("efficientnet_lite0", crop_pct=1.0), c, progress=False)
    x, y = b.vectors, index.label_ids(b.records)
    paths = [r.relpath for r in b.records]
    k = len(index.labels)
    out = {}
    warnings.simplefilter("ignore")
    for steps in (500, 1000):
        params = {**FOLD_HEAD_PARAMS, "how_many_training_steps": steps}
        start = time.perf_counter()
        first = out_of_sample_probabilities(x, y, k, folds=5, seed=0, head_params=params)
        one_s = time.perf_counter() - start
        suspects = cleanlab.filter.find_label_issues(y, first, n_jobs=1)
        second = out_of_sample_probabilities(x, y, k, folds=5, seed=0, head_params=params, exclude=suspects)
        for rounds, proba in ((1, first), (2, second)):
            for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
                quality = cleanlab.rank.get_label_quality_scores(y, proba, method=method)
                ranked = [paths[i] for i in np.argsort(quality, kind="stable")]
                out[f"{steps} steps, {rounds} round(s), {method}"] = label_scores(ranked, planted)
        flagged = cleanlab.filter.find_label_issues(y, second, n_jobs=1)
        quality = cleanlab.rank.get_label_quality_scores(y, second, method="self_confidence")
        ranked = [paths[i] for i in np.argsort(quality, kind="stable") if flagged[i]]
        out[f"{steps} steps, 2 rounds, cleanlab's flagged set only"] = label_scores(ranked, planted)
        out[f"{steps} steps: seconds for 5 fold heads"] = round(one_s, 2)
    return out


def label_scores(ranked: list[str], planted: set[str]) -> dict:
    m = len(planted)
    return {"planted": m, "listed": len(ranked),
            "precision_top_planted": round(len(set(ranked[:m]) & planted) / m, 4),
            "recall_top_twice": round(len(set(ranked[: 2 * m]) & planted) / m, 4)}


def run_dataset(name: str, root: Path, cache: Path, n_dups: int, outliers: dict[str, np.ndarray],
                bad_photo: np.ndarray, baseline: bool, fix_check: dict | None = None, variants: bool = False) -> dict:
    from PIL import Image

    from headstart.doctor import doctor

    distinct = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    planted_dups = plant_near_duplicates(root, n_dups, seed=1, leak_every=3)
    involved = {x for o, c, _ in planted_dups for x in (o, c)}
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    planted_outliers = []
    for i, (oname, array) in enumerate(outliers.items()):
        rel = f"{classes[i % len(classes)]}/zz_outlier_{oname}.png"
        Image.fromarray(array).save(root / rel)
        planted_outliers.append(rel)
    planted_labels = plant_label_errors(root, 0.05, seed=2, exclude=involved | set(planted_outliers))
    # label errors move files: map the distinct set through the moves
    moved = {f"{true}/{new.split('/', 1)[1]}": new for new, true in planted_labels.items()}
    distinct = {moved.get(p, p) for p in distinct}
    bad_dir = root / classes[0]
    bad = plant_bad_images(bad_dir, bad_photo)
    bad = {f"{classes[0]}/{k}": v for k, v in bad.items()}

    cold = time.perf_counter()
    doctor(root, bottleneck_dir=cache)  # computes and caches the bottlenecks of the planted images
    cold = time.perf_counter() - cold
    load = os.getloadavg()[0]
    start = time.perf_counter()
    default = doctor(root, bottleneck_dir=cache)
    seconds = time.perf_counter() - start

    leaks_planted = {}
    from headstart.data import which_split

    for orig, copy, _ in planted_dups:
        so, sc = which_split(orig, 10, 10), which_split(copy, 10, 10)
        if so != sc and "training" in (so, sc):
            leaks_planted[copy if so == "training" else orig] = (orig, copy)
    leak_paths = {f.path for f in default.leaks}
    result = {
        "dataset": name, "images": default.n_images, "classes": len(default.labels),
        "labels": label_scores([f.path for f in default.label_issues], set(planted_labels)),
        "near_duplicates": near_duplicate_scores([(p.a, p.b) for g in default.near_duplicates for p in g.pairs],
                                                 planted_dups, distinct, similarity=default.similarity),
        "near_duplicate_sweeps": near_duplicate_sweeps(root, cache, planted_dups, distinct),
        "leaks": {"planted": len(leaks_planted), "found": len(set(leaks_planted) & leak_paths),
                  "reported": len(default.leaks), "test_accuracy": default.test_accuracy,
                  "test_accuracy_without_leaks": default.test_accuracy_without_leaks},
        "outliers": {"planted": len(planted_outliers), "found": len(set(planted_outliers)
                                                                    & {o.path for o in default.outliers}),
                     "reported": len(default.outliers)},
        "image_issues": {"planted": len(bad), "found": sum(any(f.path == p and f.kind == k
                                                               for f in default.image_issues)
                                                           for p, k in bad.items()),
                         "reported": len(default.image_issues),
                         "missed": sorted(p for p, k in bad.items()
                                          if not any(f.path == p and f.kind == k for f in default.image_issues)),
                         "other": sorted(f"{f.path}: {f.kind}" for f in default.image_issues
                                         if f.path not in bad)[:20]},
        "speed": {"cached_run_s": round(seconds, 2), "stages": dict(default.timing), "first_run_s": round(cold, 1),
                  "load_average_before": round(load, 1)},
    }
    if baseline:
        ranked, lr_seconds = baseline_ranking(root, cache)
        result["labels_baseline_logistic_regression"] = {**label_scores(ranked, set(planted_labels)),
                                                         "cv_seconds": round(lr_seconds, 2)}
    if variants:
        result["label_variants"] = label_variants(root, cache, set(planted_labels))
    fixable = [f for f in default.label_issues if f.confident and f.suggested_probability >= 0.9]
    result["labels"]["fix_script_moves"] = len(fixable)
    result["labels"]["fix_script_moves_planted"] = sum(f.path in planted_labels for f in fixable)
    result["labels"]["fix_script_moves_to_true_class"] = sum(planted_labels.get(f.path) == f.suggested
                                                             for f in fixable)
    if fix_check is not None:  # last: it moves the files
        result["fix_script_effect"] = fix_script_effect(root, default, **fix_check)
    return result


def scale_components(n: int, cache: Path, source: Path) -> dict:
    """Seconds of the vector-only stages (neighbour search, K-fold labels) on ``n`` vectors made from the
    real bottlenecks of ``source`` plus small noise: the part of a run that grows with the folder, without
    computing ``n`` new bottlenecks.  Decoding and hashing ``n`` files come on top."""
    import tracemalloc

    from headstart.backbones import resolve_backbone
    from headstart.cache import BottleneckCache
    from headstart.data import index_image_dir
    from headstart.doctor_checks import out_of_sample_probabilities, similarity_search
    from headstart.doctor_findings import label_issue_findings
    from headstart.doctor_results import NEIGHBOURS
    from headstart.features import compute_bottlenecks

    index = index_image_dir(source)
    with BottleneckCache(cache) as c:
        b = compute_bottlenecks(index.records, resolve_backbone("efficientnet_lite0", crop_pct=1.0), c, progress=False)
    exact = similarity_search(b.vectors, k=NEIGHBOURS, threshold=0.9)
    approx = similarity_search(b.vectors, k=NEIGHBOURS, threshold=0.9, project_above=0)
    kept = {tuple(p) for p in approx.pairs.tolist()} & {tuple(p) for p in exact.pairs.tolist()}
    overlap = np.mean([len(set(a) & set(e)) / NEIGHBOURS for a, e in zip(approx.index.tolist(), exact.index.tolist())])
    projection = {"real_vectors": len(b.records), "pairs_above_0.9": len(exact.pairs), "kept_by_projection": len(kept),
                  "neighbours_shared": round(float(overlap), 4)}
    rng = np.random.default_rng(0)
    reps = -(-n // len(b.records))
    x = np.concatenate([b.vectors + rng.normal(0, 0.05 * b.vectors.std(), b.vectors.shape).astype(np.float32)
                        for _ in range(reps)])[:n]
    y = np.tile(index.label_ids(b.records), reps)[:n]
    records = [b.records[i % len(b.records)] for i in range(n)]
    tracemalloc.start()
    start = time.perf_counter()
    nbrs = similarity_search(x, k=NEIGHBOURS, threshold=0.95)
    search_s = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    start = time.perf_counter()
    label_issue_findings(records, x, y, index.labels, folds=5, seed=0, oof=out_of_sample_probabilities)
    return {"projection_check": projection, "vectors": n, "dim": int(x.shape[1]), "projected": nbrs.projected,
            "search_s": round(search_s, 2),
            "search_peak_mb": round(peak / 1e6), "labels_s": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per_class", type=int, default=300, help="Fashion-MNIST images per class")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_doctor"))
    parser.add_argument("--bottleneck_dir", type=Path, default=None, help="default: WORKDIR/cache")
    parser.add_argument("--datasets", default="fashion,photos")
    parser.add_argument("--no_baseline", action="store_true")
    parser.add_argument("--no_fix_check", action="store_true", help="skip running the fix script and retraining")
    parser.add_argument("--label_variants", action="store_true", help="also rank with the label check's variants")
    parser.add_argument("--scale_vectors", type=int, default=0,
                        help="only time the vector stages on this many vectors (see scale_components)")
    args = parser.parse_args(argv)
    from headstart.datasets import write_fashion_mnist

    cache = args.bottleneck_dir or args.workdir / "cache"
    if args.scale_vectors:
        source = args.workdir / "fashion_clean"
        if not source.exists():
            write_fashion_mnist(source, per_class=args.per_class)
        json.dump({"command": "python benchmarks/bench_doctor.py " + " ".join(argv or sys.argv[1:]),
                   "scale": scale_components(args.scale_vectors, cache, source),
                   "load_average_at_end": [round(v, 1) for v in os.getloadavg()]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    photos = sample_photos()
    results = []
    for name in args.datasets.split(","):
        root = args.workdir / name
        if root.exists():
            shutil.rmtree(root)
        if name == "fashion":
            write_fashion_mnist(root, per_class=args.per_class)
            outliers = {k: photos[k] for k in ("astronaut", "coffee", "rocket")}
            n_dups = 200
        else:
            import skimage.data

            write_photo_crops(root)
            # screenshot-like images in a folder of photos
            outliers = {k: getattr(skimage.data, k)() for k in ("page", "text", "checkerboard")}
            n_dups = 60
        fix_check = ({"workdir": args.workdir, "cache": cache, "per_class": args.per_class}
                     if name == "fashion" and not args.no_fix_check else None)
        results.append(run_dataset(name, root, cache, n_dups, outliers, photos["chelsea"],
                                   baseline=not args.no_baseline, fix_check=fix_check,
                                   variants=args.label_variants))
        print(json.dumps(results[-1]), file=sys.stderr)
    json.dump({"command": "python benchmarks/bench_doctor.py " + " ".join(argv or sys.argv[1:]),
               "cpus": os.cpu_count(), "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
               "results": results}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
