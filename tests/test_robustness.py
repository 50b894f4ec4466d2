"""The catalogue of messy folders, run end to end through the ``headstart`` command.

One real class folder of Fashion-MNIST images gets every bad file a user's
folder can hold (zero bytes, truncated, not an image, a decompression bomb,
no permission, a broken link, copies) next to every awkward but good one
(alpha, palette, 16-bit, grey, CMYK, EXIF-rotated, animated, odd names,
symbolic links, a link loop, hidden files).  ``headstart retrain`` must use
the good ones, skip exactly the bad ones with a one-line reason each, list
them in ``skipped.csv`` and train the same model as on the clean folder.
Unit-level behaviour (each decoder case, the index rules) is in
test_decode.py and test_data.py; this file checks what a user sees.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clitools import assert_one_line_error, run_cli, unprivileged_prefix
from headstart.data import which_split

CLASS = "Bag"  # the class folder that receives the catalogue
OTHER = "Coat"  # where the ambiguous copy goes
TRAIN_FLAGS = ("--how_many_training_steps", "300", "--no_report")
# Bad files: relpath -> a fragment of the reason headstart must give.
BAD_FILES = {
    f"{CLASS}/empty.jpg": "empty file (0 bytes)",
    f"{CLASS}/truncated.jpg": "truncated JPEG",
    f"{CLASS}/notes.jpg": "not an image",
    f"{CLASS}/bomb.png": "decompression bomb",
    f"{CLASS}/dangling.jpg": "broken symbolic link",
    f"{CLASS}/ambiguous.png": f"same image also in class {OTHER}",
    f"{OTHER}/ambiguous.png": f"same image also in class {CLASS}",
    # "<original> copy.png" is added with the name of a real image: see add_bad_files
}
LOCKED = f"{CLASS}/locked.png"  # no read permission: needs a user that permissions apply to
# Awkward but good files: every one must be used.
GOOD_FILES = (
    "alpha.png", "palette.png", "deep16.png", "gray.jpg", "cmyk.jpg", "rotated.jpg", "animated.gif",
    "with space é ü.png", "日本語 ñ.png", "linked.png", "linked folder/extra.png",
)
# Never images: neither used nor reported.
IGNORED_FILES = (".hidden.png", ".DS_Store", "._photo.png", "Thumbs.db", "notes.txt")


# --------------------------------------------------------------------------- running the command


# --------------------------------------------------------------------------- building the folder


def _encode(img: Image.Image, fmt: str, **save_args: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save_args)
    return buf.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no data: a bomb's header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def _sample(root: Path) -> tuple[Path, Image.Image]:
    """The first real image of the class, and an upscaled RGB copy to derive files from."""
    first = sorted((root / CLASS).glob("*.png"))[0]
    return first, Image.open(first).convert("RGB").resize((112, 112), Image.Resampling.BICUBIC)


def add_bad_files(root: Path, *, locked: bool) -> dict[str, str]:
    """Put every unusable file into ``root``; returns relpath -> expected reason fragment."""
    first, img = _sample(root)
    bag = root / CLASS
    jpeg = _encode(img, "JPEG", quality=95)
    (bag / "empty.jpg").touch()
    (bag / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bag / "notes.jpg").write_text("shopping list: eggs, milk\n")
    (bag / "bomb.png").write_bytes(header_only_png(20000, 20000))
    os.symlink(root.parent / f"{root.name}-gone.jpg", bag / "dangling.jpg")
    ambiguous = _encode(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")
    (bag / "ambiguous.png").write_bytes(ambiguous)
    (root / OTHER / "ambiguous.png").write_bytes(ambiguous)
    # A copy as a file manager names it: the original (shorter name) keeps its place.
    copy = f"{CLASS}/{first.stem} copy{first.suffix}"
    shutil.copy(first, root / copy)
    expected = {**BAD_FILES, copy: f"duplicate of {CLASS}/{first.name}"}
    if locked:
        (root / LOCKED).write_bytes(_encode(img.rotate(90), "PNG"))
        (root / LOCKED).chmod(0)
        expected[LOCKED] = "permission denied"
    return expected


def add_awkward_files(root: Path, outside: Path) -> None:
    """Good images in every awkward form, links (one outside the folder, one loop) and hidden files."""
    _, img = _sample(root)
    bag = root / CLASS

    def save(name: str, image: Image.Image, fmt: str, **save_args: object) -> None:
        (bag / name).write_bytes(_encode(image, fmt, **save_args))

    rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    save("alpha.png", rgba, "PNG")
    save("palette.png", img.convert("P", palette=Image.Palette.ADAPTIVE), "PNG")
    save("deep16.png", Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257), "PNG")
    save("gray.jpg", img.convert("L"), "JPEG")
    save("cmyk.jpg", img.convert("CMYK"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter, shown upright
    save("rotated.jpg", img.rotate(-90, expand=True), "JPEG", exif=exif)
    save("animated.gif", img, "GIF", save_all=True, append_images=[img.rotate(180)])
    save("with space é ü.png", img.resize((100, 100)), "PNG")
    save("日本語 ñ.png", img.resize((90, 90)), "PNG")
    (outside / "folder").mkdir(parents=True)
    img.resize((80, 80)).save(outside / "linked.png")
    img.resize((70, 70)).save(outside / "folder" / "extra.png")
    os.symlink(outside / "linked.png", bag / "linked.png")
    os.symlink(outside / "folder", bag / "linked folder")
    os.symlink(bag, bag / "loop")  # a folder that contains itself
    save(".hidden.png", img.resize((60, 60)), "PNG")
    (bag / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(range(64)))
    (bag / "._photo.png").write_bytes(b"\0\5\26\7" + bytes(64))  # macOS resource fork
    (bag / "Thumbs.db").write_bytes(bytes(64))
    (bag / "notes.txt").write_text("not an image\n")


def read_skipped_csv(run_dir: Path, root: Path) -> dict[str, str]:
    with open(run_dir / "skipped.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {Path(r["path"]).relative_to(root.resolve()).as_posix(): r["reason"] for r in rows}


# --------------------------------------------------------------------------- the catalogue run


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path, shared_cache_dir: Path) -> dict:
    """The catalogue folder and one ``headstart retrain`` over it (shared cache)."""
    base = tmp_path_factory.mktemp("messy")
    root = base / "photos"
    shutil.copytree(fashion_dir, root)
    prefix = unprivileged_prefix()
    bad = add_bad_files(root, locked=prefix is not None)
    add_awkward_files(root, base / "elsewhere")
    run_dir = base / "run"
    result = run_cli("retrain", "--image_dir", root, "--output_dir", run_dir, "--bottleneck_dir", shared_cache_dir,
                     *TRAIN_FLAGS, prefix=prefix or ())
    return {"root": root, "run_dir": run_dir, "bad": bad, "result": result, "prefix": prefix, "base": base}


def test_bad_files_are_skipped_each_with_a_one_line_reason(messy: dict) -> None:
    result = messy["result"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    skipped = read_skipped_csv(messy["run_dir"], messy["root"])
    assert set(skipped) == set(messy["bad"])  # exactly the bad files: nothing good, nothing ignored
    for relpath, fragment in messy["bad"].items():
        assert fragment in skipped[relpath], (relpath, skipped[relpath])
        assert "\n" not in skipped[relpath]
        path = messy["root"].resolve() / relpath
        # Said once, as a warning (so -q shows it too), not again on stdout.
        assert f"warning: skipped {path}: {skipped[relpath]}" in result.stderr
        assert (result.stdout + result.stderr).count(f"{path}:") == 1, relpath


def test_the_run_ends_with_the_count_and_points_to_skipped_csv(messy: dict) -> None:
    out = messy["result"].stdout
    n = len(messy["bad"])
    assert f", {n} skipped in " in out
    assert f"{n} images skipped, listed with reasons in {messy['run_dir'] / 'skipped.csv'}" in out
    assert json.loads((messy["run_dir"] / "metrics.json").read_text())["bottlenecks"]["skipped"] == n


def test_awkward_good_files_are_all_used(messy: dict, fashion_dir: Path) -> None:
    metrics = json.loads((messy["run_dir"] / "metrics.json").read_text())
    n_clean = sum(1 for _ in fashion_dir.glob("*/*.png"))
    assert sum(metrics["splits"].values()) == n_clean + len(GOOD_FILES)
    reported = messy["result"].stdout + messy["result"].stderr
    for name in IGNORED_FILES:
        assert name not in reported


def test_link_loop_and_ambiguous_image_are_reported_once(messy: dict) -> None:
    err = messy["result"].stderr
    loops = [line for line in err.splitlines() if "symbolic link loop" in line]
    assert loops == [f"warning: {CLASS}/loop: folder already visited (symbolic link loop?), not followed again"]
    ambiguous = [line for line in err.splitlines() if "same image is in classes" in line]
    assert len(ambiguous) == 1 and f"'{CLASS}', '{OTHER}'" in ambiguous[0]


def test_unreadable_file_is_a_real_permission_error(messy: dict) -> None:
    if messy["prefix"] is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to apply")
    assert messy["bad"][LOCKED] == "permission denied"


def test_strict_turns_any_skip_into_an_error(messy: dict, shared_cache_dir: Path) -> None:
    run_dir = messy["base"] / "strict-run"
    result = run_cli("retrain", "--image_dir", messy["root"], "--output_dir", run_dir, "--bottleneck_dir",
                     shared_cache_dir, "--strict", *TRAIN_FLAGS, prefix=messy["prefix"] or ())
    assert result.returncode == 1
    assert_one_line_error(result.stderr, f"--strict: {len(messy['bad'])} image(s) could not be used")
    for relpath in messy["bad"]:  # every one named, so one run finds them all
        assert str(messy["root"].resolve() / relpath) in result.stderr
    assert not run_dir.exists()


def test_bad_files_change_nothing_in_the_trained_model(tmp_path: Path, fashion_dir: Path,
                                                       shared_cache_dir: Path) -> None:
    """Skipped files leave every good image in its split: the model equals the clean folder's."""
    root = tmp_path / "photos"
    shutil.copytree(fashion_dir, root)
    prefix = unprivileged_prefix()
    add_bad_files(root, locked=prefix is not None)
    runs = {}
    for name, folder in (("clean", fashion_dir), ("messy", root)):
        runs[name] = tmp_path / name
        result = run_cli("retrain", "--image_dir", folder, "--output_dir", runs[name], "--bottleneck_dir",
                         shared_cache_dir, *TRAIN_FLAGS, prefix=prefix or ())
        assert result.returncode == 0, result.stderr
    clean, dirty = (json.loads((runs[n] / "metrics.json").read_text()) for n in ("clean", "messy"))
    assert dirty["splits"] == clean["splits"]
    assert dirty["test"]["accuracy"] == clean["test"]["accuracy"]
    assert (runs["messy"] / "head.safetensors").read_bytes() == (runs["clean"] / "head.safetensors").read_bytes()


# --------------------------------------------------------------------------- bad folders


def _copy_images(source: Path, dest: Path, n: int) -> None:
    dest.mkdir(parents=True)
    for path in sorted(source.glob("*.png"))[:n]:
        shutil.copy(path, dest / path.name)


@pytest.mark.parametrize("case, fragments", [
    ("a file", ["not a folder"]),
    ("no class folders", ["no class folders in"]),
    ("one class", ["only one class folder ('Bag')"]),
    ("an empty class", ["class folder 'Coat' has no images"]),
    ("hidden files only", ["class folder 'Coat' has no images"]),
    ("case", ["class folders 'Bag' and 'bag' differ only in case or punctuation"]),
    ("punctuation", ["class folders 'T-shirt' and 'T_shirt' differ only in case or punctuation"]),
    ("no training image", ["class 'Coat' has no training images"]),
])
def test_bad_folders_fail_before_any_work(case: str, fragments: list[str], tmp_path: Path, fashion_dir: Path,
                                          cli) -> None:
    root = tmp_path / "photos"
    if case == "a file":
        root.write_bytes((next(fashion_dir.glob("Bag/*.png"))).read_bytes())
    elif case == "no class folders":
        _copy_images(fashion_dir / "Bag", root, 3)  # images, but loose
    else:
        _copy_images(fashion_dir / "Bag", root / "Bag", 20)
        if case == "an empty class":
            (root / "Coat").mkdir()
        elif case == "hidden files only":
            (root / "Coat").mkdir()
            shutil.copy(next(fashion_dir.glob("Coat/*.png")), root / "Coat" / ".hidden.png")
            (root / "Coat" / ".DS_Store").write_bytes(bytes(16))
        elif case == "case":
            _copy_images(fashion_dir / "Coat", root / "bag", 20)
        elif case == "punctuation":
            _copy_images(fashion_dir / "Coat", root / "T-shirt", 20)
            _copy_images(fashion_dir / "Dress", root / "T_shirt", 20)
        elif case == "no training image":  # its only image falls in the test or validation split
            image = next(p for p in sorted(fashion_dir.glob("Coat/*.png"))
                         if which_split(f"Coat/{p.name}", 10, 10) != "training")
            (root / "Coat").mkdir()
            shutil.copy(image, root / "Coat" / image.name)
    cache, out = tmp_path / "cache", tmp_path / "run"
    code, stdout, err = cli("retrain", "--image_dir", root, "--bottleneck_dir", cache, "--output_dir", out)
    assert code == (2 if case == "a file" else 1)  # a path typed wrong is a usage error; bad contents are data errors
    assert_one_line_error(err, *fragments)
    assert len(err.strip().splitlines()) == 2  # nothing ran before the error
    assert stdout == ""
    assert not cache.exists() and not out.exists()  # no cache opened, no network built, nothing written


@pytest.mark.parametrize("args, fragment", [
    (["retrain"], "the following arguments are required: --image_dir"),
    (["retrain", "--image_dir", "x", "--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["retrain", "--image_dir", "x", "--learning_rate", "fast"], "invalid float value: 'fast'"),
    (["retrain", "--image_dir", "x", "--runtime", "tpu"], "invalid choice: 'tpu'"),
    (["retrain", "--image_dir", "{photos}", "--validation_percentage", "150"],
     "--validation_percentage must be between 0 and 100"),
    (["retrain", "--image_dir", "{photos}", "--learning_rate", "-1"], "--learning_rate must be a positive number"),
    (["retrain", "--image_dir", "{photos}", "--weights", "{missing}"], "--weights: no such file"),
    (["retrain", "--image_dir", "{photos}", "--crop_pct", "5"], "--crop_pct must be between 0.1 and 1.0"),
    (["label", "--model", "{missing}"], "the following arguments are required: IMAGE_OR_FOLDER"),
])
def test_usage_errors_exit_2_with_one_line_and_a_hint(args: list[str], fragment: str, tmp_path: Path,
                                                      fashion_dir: Path, cli) -> None:
    argv = [a.format(photos=fashion_dir, missing=tmp_path / "missing.pth") for a in args]
    if "{photos}" in args:
        argv += ["--bottleneck_dir", str(tmp_path / "cache")]
    code, _, err = cli(*argv)
    assert code == 2
    assert_one_line_error(err, fragment)
    assert not (tmp_path / "cache").exists()
