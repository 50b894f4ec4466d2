#!/usr/bin/env python3
"""Regenerate docs/lab.md and every figure and table in docs/lab/ by running headstart for real.

    python docs/make_lab.py                    # Fashion-MNIST, offline, about 5 minutes on 2 cores
    python docs/make_lab.py --workdir /tmp/lab --per_class 300

Every command is run through the ``headstart`` command line, exactly as the guide
shows it; the numbers in the guide are read back from the JSON those commands
print.  Nothing in docs/lab.md is typed by hand except the prose around the numbers.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
OUT = DOCS / "lab"


def run(args: list[str], log: list[dict[str, Any]]) -> tuple[str, float]:
    """Run ``headstart ARGS`` and return its stdout and wall-clock seconds (Python start-up included)."""
    shown = "headstart " + " ".join(shlex.quote(a) for a in args)
    print(f"$ {shown}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "headstart", *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"failed ({done.returncode}): {shown}")
    log.append({"command": shown, "seconds": round(seconds, 2)})
    return done.stdout, seconds


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def pts(x: float) -> str:
    return f"{100 * x:+.1f} points"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/headstart-lab"),
                        help="scratch folder for images, the bottleneck cache and runs (wiped first)")
    parser.add_argument("--per_class", type=int, default=300, help="Fashion-MNIST images per class")
    parser.add_argument("--fine_tune", action="store_true",
                        help="also run benchmarks/finetune_accuracy.py for section 2's table (long: it fine-tunes "
                             "twice per setting); without it the table is read from lab/finetune.json")
    args = parser.parse_args()
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    OUT.mkdir(exist_ok=True)
    sys.path.insert(0, str(REPO))
    from headstart.report import plot_confusion_matrix, plot_training_curves

    log: list[dict[str, Any]] = []
    data, holdout, cache = work / "fashion", work / "holdout", work / "cache"
    common = ["--image_dir", str(data), "--bottleneck_dir", str(cache), "-q"]
    run(["datasets", "fashion-mnist", "--out", str(data), "--per_class", str(args.per_class)], log)
    run(["datasets", "fashion-mnist", "--out", str(holdout), "--split", "test", "--per_class", "100"], log)

    # 1. A plain retrain, cold (bottlenecks computed) and again warm (read from the cache).
    cold_out, cold_wall = run(["retrain", *common, "--output_dir", str(work / "run"), "--format", "json"], log)
    cold = json.loads(cold_out)
    warm = json.loads(run(["retrain", *common, "--output_dir", str(work / "run-cached"), "--format", "json"],
                          log)[0])
    recipe = json.loads(run(["retrain", *common, "--output_dir", str(work / "run-sgd"), "--optimizer", "sgd",
                             "--learning_rate", "0.01", "--how_many_training_steps", "4000", "--format", "json"],
                            log)[0])
    (OUT / "training-curves.png").write_bytes(plot_training_curves(cold["history"]) or b"")
    (OUT / "confusion-matrix.png").write_bytes(
        plot_confusion_matrix(cold["test"]["confusion_matrix"], cold["test"]["labels"]) or b"")
    holdout_eval = json.loads(run(["evaluate", "--model", str(work / "run"), "--image_dir", str(holdout),
                                   "--bottleneck_dir", str(cache), "-q", "--format", "json"], log)[0])

    # 2. Sweeps on the cached bottlenecks.
    grid = ["--learning_rate", "0.001,0.01,0.1,1.0", "--train_batch_size", "4,32,100"]
    _, bench_wall = run(["sweep", *common, *grid, "--format", "json"], log)
    sweeps = {}
    for name, extra in (("sweep-adam", ["--optimizer", "adam"]), ("sweep-sgd", ["--optimizer", "sgd"]),
                        ("sweep-steps", ["--optimizer", "sgd,adam", "--how_many_training_steps",
                                         "10,100,1000,4000"])):
        cell_grid = grid if name != "sweep-steps" else []
        run(["sweep", *common, *cell_grid, *extra, "--repeats", "3", "--output_dir", str(work / name)], log)
        sweeps[name] = json.loads((work / name / "sweep.json").read_text())
        shutil.copy(work / name / "sweep.png", OUT / f"{name}.png")
        shutil.copy(work / name / "sweep.csv", OUT / f"{name}.csv")

    # 3. Few images or many.
    run(["curve", *common, "--images_per_class", "1,2,5,10,20,50,100,all", "--repeats", "5",
         "--output_dir", str(work / "curve")], log)
    curve = json.loads((work / "curve" / "curve.json").read_text())
    shutil.copy(work / "curve" / "curve.png", OUT / "curve.png")
    shutil.copy(work / "curve" / "curve.csv", OUT / "curve.csv")

    # 4. Other feature vectors.
    run(["compare", *common, "--backbones", "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
         "--output_dir", str(work / "compare")], log)
    compare = json.loads((work / "compare" / "compare.json").read_text())
    shutil.copy(work / "compare" / "compare.png", OUT / "compare.png")
    shutil.copy(work / "compare" / "compare.csv", OUT / "compare.csv")
    # 4b. The TF Hub way: a SavedModel feature vector built here, through --tfhub_module (docs/lab_tfhub.py).
    from lab_tfhub import run_tfhub

    tfhub = run_tfhub(work, common, cold, run, log)

    numbers = {"retrain_cold": cold, "retrain_cached": {k: warm[k] for k in ("timing", "bottlenecks", "test")},
               "retrain_py_recipe": {k: recipe[k] for k in ("timing", "test", "training")},
               "holdout": holdout_eval, "sweep_benchmark_wall_s": round(bench_wall, 2), "sweeps": sweeps,
               "curve": curve, "compare": compare, "tfhub": tfhub, "commands": log}
    fine_tune_json = OUT / "finetune.json"
    if args.fine_tune:
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "finetune_accuracy.py"), "--workdir",
                        str(work / "finetune"), "--per_class", str(args.per_class), "--json", str(fine_tune_json)],
                       cwd=REPO, check=True)
    numbers["finetune"] = json.loads(fine_tune_json.read_text()) if fine_tune_json.exists() else None
    for key in ("history", "misclassified"):
        numbers["retrain_cold"] = {k: v for k, v in numbers["retrain_cold"].items() if k != key}
    (OUT / "numbers.json").write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    (DOCS / "lab.md").write_text(write_guide(numbers, cold_wall, args.per_class))
    print(f"wrote {DOCS / 'lab.md'} and {OUT}/", file=sys.stderr)


def cell(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


def sweep_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    return table(keys + ["test accuracy (± sd)", "macro precision", "macro recall", "final cross entropy",
                         "train s", "best step", "diverged"],
                 [[r[k] for k in keys] + [f"{pct(r['test_accuracy'])} ± {100 * (r['test_accuracy_std'] or 0):.1f}",
                                          pct(r["macro_precision"]), pct(r["macro_recall"]),
                                          "–" if r["cross_entropy"] is None else f"{r['cross_entropy']:.3f}",
                                          f"{r['train_s']:.2f}", r["best_step"], "yes" if r["diverged"] else "no"]
                  for r in rows])


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def fine_tune_section(ft: dict[str, Any] | None) -> str:
    """Section 2's answer in numbers: head-only against the top 1, 2, 3 stages trained from cached maps."""
    if not ft:
        return "(`python docs/make_lab.py --fine_tune` adds the table that compares this with `--fine_tune_blocks`.)"
    rows = []
    for r in ft["rows"]:
        blocks = r["fine_tune_blocks"]
        what = f"`--fine_tune_blocks {blocks}`" if blocks else "head only (bottlenecks)"
        rows.append([what, pct(r["unseen_accuracy"]), duration(r["first_s"]), duration(r["cached_s"]),
                     f"{r['bytes_per_image'] / 1024:.1f} KiB"])
    n_train, n_test = 10 * ft["per_class"], 10 * ft["test_per_class"]
    return f"""headstart also offers the middle ground. `--fine_tune_blocks N` freezes the
stem and all but the top N of EfficientNet-Lite0's seven stages, runs that
frozen part once per image and caches what it outputs — the activation map in
front of the top stages, C×H×W numbers in float16, not the pooled vector — and
then trains the top N stages, the head conv and a new classifier from the cached
maps (AdamW, a cosine schedule, early stopping on validation loss). A second run
with the same cut computes no map; it trains again, so its time is mostly the
training's. On {n_train:,} Fashion-MNIST training images, evaluated on {n_test:,}
images of Fashion-MNIST's test split that no run saw:

{table(["", "unseen-image accuracy", "first run (empty cache)", "rerun (cached)", "cached per image"], rows)}

```
{ft["command"]}
```

Each deeper cut trains more layers, so every epoch costs more. What is cached
per image follows the network's shape (stage 5 takes fewer channels than stage 6
at the same resolution, so cut 3's map is smaller than cut 2's); the head-only
row caches the bottleneck of section 1, 1,280 float32 numbers. The table is
regenerated by `python docs/make_lab.py --fine_tune`, and the recipe behind it is
measured in [PERFORMANCE.md](PERFORMANCE.md#fine-tuning-the-top-stages)."""


def write_guide(n: dict[str, Any], cold_wall: float, per_class: int) -> str:
    from lab_tfhub import tfhub_section

    cold, warm, recipe = n["retrain_cold"], n["retrain_cached"], n["retrain_py_recipe"]
    split = cold["splits"]
    test = cold["test"]
    adam = n["sweeps"]["sweep-adam"]["rows"]
    sgd = n["sweeps"]["sweep-sgd"]["rows"]
    steps = n["sweeps"]["sweep-steps"]["rows"]
    curve = n["curve"]["rows"]
    comp = n["compare"]["rows"]
    images = sum(split.values())
    per_class_time = cold["timing"]["bottlenecks_s"]
    worst = min(test["per_class"].items(), key=lambda kv: kv[1]["f1"])
    best = max(test["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[0]))
    a_small, a_big = cell(adam, learning_rate=0.001, train_batch_size=4), cell(adam, learning_rate=0.001,
                                                                               train_batch_size=32)
    a_100 = cell(adam, learning_rate=0.001, train_batch_size=100)
    s_small, s_big = cell(sgd, learning_rate=0.01, train_batch_size=4), cell(sgd, learning_rate=0.01,
                                                                             train_batch_size=32)
    s_001, s_1 = cell(sgd, learning_rate=0.001, train_batch_size=100), cell(sgd, learning_rate=1.0,
                                                                           train_batch_size=100)
    a_001, a_1 = cell(adam, learning_rate=0.001, train_batch_size=100), cell(adam, learning_rate=1.0,
                                                                            train_batch_size=100)
    diverged = [r for r in adam + sgd if r["diverged"]]
    one, every = curve[0], curve[-1]
    ten = next((r for r in curve if r["images_per_class"] == 10), curve[len(curve) // 2])
    lite = {r["backbone"]: r for r in comp}
    l0 = lite.get("efficientnet_lite0")
    fastest = min(comp, key=lambda r: r["latency_ms"])
    most = max(comp, key=lambda r: r["test_accuracy"])
    bench = f"headstart sweep --image_dir DIR --bottleneck_dir CACHE -q --learning_rate 0.001,0.01,0.1,1.0 " \
            f"--train_batch_size 4,32,100 --format json"
    steps_rows = sorted(steps, key=lambda r: (r["optimizer"], r["how_many_training_steps"]))

    return f"""# The headstart lab: what the knobs do, measured

This guide answers the questions people ask when they first retrain an image
classifier — what the pretrained layers do, what a bottleneck is, what batch
size and learning rate change, whether another network helps, how long it takes,
how accurate it gets, and how many images it needs — with numbers and plots
that headstart produced on {images:,} Fashion-MNIST images ({per_class} per
class, 10 classes). Every number and figure below was written by

```
python docs/make_lab.py
```

which runs the `headstart` commands shown here from scratch (new folder, empty
cache) and reads their JSON output back; the raw numbers are in
[lab/numbers.json](lab/numbers.json) and each sweep's table in `lab/*.csv`.
They were measured on a shared 2-core machine, so timings move by tens of per
cent between runs; compare them with each other, not with other machines.

## 0. Set up

```
headstart datasets fashion-mnist --out fashion --per_class {per_class}
headstart retrain --image_dir fashion --output_dir runs/fashion
```

The folder has one sub-folder per class (`Ankle_boot/`, `Bag/`, … `Trouser/`),
as retrain.py expected. Images are split by a hash of their file name:
{split['training']:,} training, {split['validation']} validation and {split['testing']} test images.
The test images are never used for training or for choosing settings.

## 1. How are the pretrained layers used?

The backbone, EfficientNet-Lite0 by default, was trained on the 1.3 million
photos of ImageNet to tell 1,000 kinds of things apart. headstart keeps
everything it learned except its very last layer (the 1,000-way classifier):
`networks.create_feature_extractor` builds the timm network, removes that
classifier with `reset_classifier(0)`, and puts the pixel normalisation inside
the graph. What comes out for each image is the pooled output of the last
convolutional stage: a vector of 1,280 numbers that describes the image in terms
of the visual patterns ImageNet taught the network to notice (edges, textures,
shapes, parts). That vector is the **bottleneck**.

`features.compute_bottlenecks` runs the network once per image, in batches, on
the fastest runtime it finds (here {cold['bottlenecks']['computed']:,} images took
{per_class_time:.1f} s on OpenVINO), and stores each vector in the SQLite cache
(`cache.py`) under the image's content hash plus the network's and the
preprocessing's fingerprints. `head.SoftmaxHead` then trains a *new* last layer,
a single softmax layer with 1,280 × 10 weights and 10 biases, on those vectors
alone. The pretrained layers are never changed.

## 2. What is a bottleneck, and how is that different from freezing layers?

"Freezing" a layer, in a fine-tuning framework, means its weights get no
gradient updates — but every training step still pushes every image through the
whole network to get to the layers that do learn. With all pretrained layers
frozen and no random distortions, the output of the frozen part is a fixed
function of the image: computing it again every epoch gives the same numbers.
A bottleneck is that output, computed once and kept. Training the new layer
then needs only matrix products on 1,280-number vectors, so it takes a fraction
of a second instead of running a CNN:

| | bottlenecks | training (1,000 steps) | total |
| --- | --- | --- | --- |
| first run (`retrain`, empty cache) | {cold['timing']['bottlenecks_s']:.1f} s ({cold['bottlenecks']['computed']:,} computed) | {cold['timing']['train_s']:.2f} s | {cold['timing']['total_s']:.1f} s |
| second run (same folder, cached) | {warm['timing']['bottlenecks_s']:.2f} s ({warm['bottlenecks']['cached']:,} read) | {warm['timing']['train_s']:.2f} s | {warm['timing']['total_s']:.1f} s |

The cost of this shortcut: the pretrained layers cannot adapt to your images,
and per-image random distortions (retrain.py's `--flip_left_right`,
`--random_crop` …) would change every bottleneck every step, so they cannot be
cached. Fine-tuning some of the upper layers can gain a few points on data far
from ImageNet; the usual price is running the whole network for every image at
every epoch.

{fine_tune_section(n.get("finetune"))}

Everything below runs on the cached bottlenecks, which is why a whole sweep
takes seconds.

## 3. How accurate is the model?

The default run (Adam, learning rate 0.001, batch 100, 1,000 steps) scored
**{pct(test['accuracy'])} on its {test['n']} test images** (macro precision
{pct(test['macro_precision'])}, macro recall {pct(test['macro_recall'])}, top-5
{pct(test['top5_accuracy'])}). On 1,000 images from Fashion-MNIST's separate test
set, which the model never saw in any form (`headstart evaluate --model runs/fashion
--image_dir holdout`), it scored **{pct(n['holdout']['accuracy'])}** (N={n['holdout']['n']}).
retrain.py's recipe (plain gradient descent, learning rate 0.01, 4,000 steps)
reached {pct(recipe['test']['accuracy'])} on the same test split in
{recipe['timing']['train_s']:.2f} s of training.

![training curves](lab/training-curves.png)

Averages hide the classes that go wrong. Per class, {best[0]} is easiest
(F1 {best[1]['f1']:.3f}) and {worst[0]} hardest (F1 {worst[1]['f1']:.3f}); the
confusion matrix shows where the mistakes go:

![confusion matrix](lab/confusion-matrix.png)

Every run directory has a `report.html` with these plots, the per-class table
and the misclassified test images (rebuild it with `headstart report RUN_DIR`).

## 4. Batch size 32, or 4? And the learning rate: 0.001, 0.01 … 1.0?

One command trains a head for every combination, on the cached bottlenecks
(3 seeds each; mean ± standard deviation over the seeds):

```
headstart sweep --image_dir fashion --learning_rate 0.001,0.01,0.1,1.0 --train_batch_size 4,32,100 --optimizer adam --repeats 3
```

![sweep, Adam](lab/sweep-adam.png)

{sweep_table(adam, ['learning_rate', 'train_batch_size'])}

With retrain.py's optimizer, plain gradient descent (`--optimizer sgd`):

![sweep, SGD](lab/sweep-sgd.png)

{sweep_table(sgd, ['learning_rate', 'train_batch_size'])}

What the numbers say:

- **Batch size.** A step with a batch of 4 sees 4 images; with 32, eight times
  as many. With the same 1,000 steps, Adam at learning rate 0.001 scored
  {pct(a_small['test_accuracy'])} with batches of 4, {pct(a_big['test_accuracy'])} with 32 and
  {pct(a_100['test_accuracy'])} with 100; SGD at 0.01 scored {pct(s_small['test_accuracy'])} with 4 and
  {pct(s_big['test_accuracy'])} with 32. Small batches give noisy gradients and, in a fixed number
  of steps, show the model fewer images. They are cheaper per step: training took
  {a_small['train_s']:.2f} s with batches of 4 against {a_big['train_s']:.2f} s with 32 and
  {a_100['train_s']:.2f} s with 100.
- **Learning rate, SGD.** At 0.001, plain gradient descent moves too slowly to
  finish in 1,000 steps ({pct(s_001['test_accuracy'])}, macro precision
  {pct(s_001['macro_precision'])}, final cross entropy {s_001['cross_entropy']}); at 1.0 it reached
  {pct(s_1['test_accuracy'])} (macro precision {pct(s_1['macro_precision'])}, cross entropy
  {s_1['cross_entropy']}) with batches of 100. The training time hardly depends on the learning
  rate ({s_001['train_s']:.2f} s against {s_1['train_s']:.2f} s): every step does the same
  arithmetic; only how far each step moves changes.
- **Learning rate, Adam.** Adam scales its steps itself, so the best rate is
  lower: 0.001 gave {pct(a_001['test_accuracy'])} (macro precision {pct(a_001['macro_precision'])})
  and 1.0 gave {pct(a_1['test_accuracy'])} (macro precision {pct(a_1['macro_precision'])}) with batches of 100.
- **Divergence.** {('Cells that diverged: ' + ', '.join(f"learning rate {r['learning_rate']} batch {r['train_batch_size']}" for r in diverged) + '.') if diverged else 'No cell here diverged: a single softmax layer on these features is a convex problem and stays finite even at 1.0.'}
  A rate large enough to make the loss NaN or infinite is reported as
  `DIVERGED` in the table and in red on the HTML page, and the head keeps the
  last finite weights.
- **best step** is the step at which validation accuracy stopped improving:
  past it, more steps only fit the training images more closely.

## 5. How long does training take?

Training steps cost the same whatever the learning rate; their number and the
batch size set the time. At the default learning rate (0.001) and batch size
(100), with 3 seeds per cell:

```
headstart sweep --image_dir fashion --optimizer sgd,adam --how_many_training_steps 10,100,1000,4000 --repeats 3
```

![sweep, steps](lab/sweep-steps.png)

{sweep_table(steps_rows, ['optimizer', 'how_many_training_steps'])}

Extracting the bottlenecks once is the expensive part ({cold['timing']['bottlenecks_s']:.1f} s
for {images:,} images here, {cold['bottlenecks']['computed'] / cold['timing']['bottlenecks_s']:.0f} images/s); after that, a
12-cell sweep (`{bench}`) took **{n['sweep_benchmark_wall_s']:.1f} s** of wall-clock time, Python start-up included.

## 6. A few images, or many?

```
headstart curve --image_dir fashion --images_per_class 1,2,5,10,20,50,100,all --repeats 5
```

The test split stays fixed; for each point, 5 random training samples of that
many images per class are drawn and a head trained on each.

![learning curve](lab/curve.png)

{table(['images per class', 'training images', 'test accuracy (mean)', 'sd', 'min', 'max'],
       [[r['images_per_class'], r['n_train'], pct(r['accuracy_mean']), f"{100 * r['accuracy_std']:.1f}",
         pct(r['accuracy_min']), pct(r['accuracy_max'])] for r in curve])}

One image per class already gives {pct(one['accuracy_mean'])} (chance is 10%),
because the pretrained features already separate many of these classes; ten per
class give {pct(ten['accuracy_mean'])} and all {every['n_train']:,} training images
{pct(every['accuracy_mean'])}. The spread between repeats shrinks as the sample
grows: which few images you pick matters a lot ({100 * one['accuracy_std']:.1f} points standard
deviation at one per class, {100 * every['accuracy_std']:.1f} with all of them).

## 7. Another feature vector

```
headstart compare --image_dir fashion --backbones efficientnet_lite0,efficientnet_lite1,efficientnet_lite2
```

![accuracy against latency](lab/compare.png)

{table(['backbone', 'params (M)', 'GMACs', 'input', 'bottleneck', 'images/s (batch 32)', 'latency (ms, batch 1)', 'first extraction (s)', 'test accuracy', 'macro precision'],
       [[r['backbone'], r['params_m'], r['gmacs'], r['input_size'], r['bottleneck_size'], r['images_per_s'],
         r['latency_ms'], f"{r['extraction_s']:.1f}" if r['extraction_s'] is not None else '(cached)', pct(r['test_accuracy']),
         pct(r['macro_precision'])] for r in comp])}

Parameters and multiply-adds are counted on the feature extractor (the ImageNet
classifier removed); speed is the network alone on {comp[0]['runtime']}, the
fastest of repeated calls; the first extraction includes converting the network
to ONNX once. The larger networks see larger inputs and need more arithmetic
({comp[0]['gmacs']} to {comp[-1]['gmacs']} GMACs per image); in this run
{fastest['backbone']} had the lowest latency and {most['backbone']} scored best
({pct(most['test_accuracy'])} against {pct(l0['test_accuracy']) if l0 else '–'} for Lite0). On 28 × 28 grey
clothing pictures the bigger networks have little extra to see, so the gain is
small compared with the test set's resolution: {comp[0]['n_test']} test images make
one image worth {100 / comp[0]['n_test']:.2f} points. With online access any timm
backbone works the same way — for retrain.py's old question, MobileNet against
Inception:

```
headstart compare --image_dir flower_photos --backbones mobilenet_v3_large,inception_v3,efficientnet_lite0
```

{tfhub_section(n.get("tfhub"), test["accuracy"])}

## 8. The same on the flowers photos (online)

retrain.py's tutorial used 3,670 flower photos in 5 classes. With internet access:

```
headstart datasets flowers --out data
headstart retrain --image_dir data/flower_photos --output_dir runs/flowers
headstart sweep --image_dir data/flower_photos --learning_rate 0.001,0.01,0.1,1.0 --train_batch_size 4,32,100 --output_dir lab/flowers-sweep
headstart curve --image_dir data/flower_photos --output_dir lab/flowers-curve
headstart compare --image_dir data/flower_photos --backbones efficientnet_lite0,efficientnet_lite1,efficientnet_lite2 --output_dir lab/flowers-compare
```

Each `--output_dir` gets the table as JSON and CSV, the plot as PNG and a
self-contained HTML page. The first command that meets a folder computes its
bottlenecks; every later one reads them from the cache.

## Commands run to write this page

{table(['command', 'wall s'], [[f"`{c['command']}`", c['seconds']] for c in n['commands']])}
"""


if __name__ == "__main__":
    main()
