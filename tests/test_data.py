"""Index and split: headstart.data.index (index_image_dir, which_split, find_images and friends)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from headstart import files
from headstart.data import (
    MAX_NUM_IMAGES_PER_CLASS,
    SPLITS,
    ImageIndex,
    find_images,
    index_image_dir,
    list_image_files,
    sha256_file,
    which_split,
)
from headstart.errors import DataError, UsageError


def retrain_percentage(relpath: str) -> float:
    """retrain.py's percentage_hash, written out independently."""
    name = re.sub(r"_nohash_.*$", "", relpath)
    value = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16)
    return (value % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)


def splits_by_relpath(index: ImageIndex) -> dict[str, str]:
    return {r.relpath: r.split for r in index.records}


# --------------------------------------------------------------------------- split formula

# percentage_hash of fixed names, computed once by hand (sha1 -> mod 2**27 -> scale).
HAND_COMPUTED = {
    "roses/photo.png": 2.5098949857793373,
    "dog/3.jpg": 9.585847777022776,
    "dog/7.jpg": 25.161074289389507,
    "daisy/1.jpg": 45.688485694590845,
    "tulips/sub/a b.jpeg": 50.52960031129122,
    "cat/leaf": 94.5663228226179,
}


@pytest.mark.parametrize("relpath, percentage", HAND_COMPUTED.items())
def test_split_formula_matches_hand_computed_values(relpath, percentage):
    assert retrain_percentage(relpath) == percentage
    below, above = math.floor(percentage), math.ceil(percentage)
    assert which_split(relpath, above, 0) == "validation"
    assert which_split(relpath, below, 0) == "training"
    assert which_split(relpath, 0, above) == "testing"
    assert which_split(relpath, below, 100 - below) == "testing"


def test_split_default_percentages():
    got = {name: which_split(name, 10, 10) for name in HAND_COMPUTED}
    assert got == {
        "roses/photo.png": "validation",
        "dog/3.jpg": "validation",
        "dog/7.jpg": "training",
        "daisy/1.jpg": "training",
        "tulips/sub/a b.jpeg": "training",
        "cat/leaf": "training",
    }
    assert which_split("dog/7.jpg", 20, 10) == "testing"


def test_nohash_groups_variants_of_one_photo():
    for v, t in [(10, 10), (50, 45), (94, 1), (95, 0), (0, 95)]:
        base = which_split("cat/leaf", v, t)
        assert which_split("cat/leaf_nohash_1.jpg", v, t) == base
        assert which_split("cat/leaf_nohash_2017-05-01.png", v, t) == base


def test_split_proportions_follow_percentages():
    names = [f"class/{i}.jpg" for i in range(4000)]
    got = [which_split(n, 20, 10) for n in names]
    assert abs(got.count("validation") / 4000 - 0.20) < 0.03
    assert abs(got.count("testing") / 4000 - 0.10) < 0.03
    assert set(which_split(n, 0, 0) for n in names[:200]) == {"training"}
    assert set(which_split(n, 0, 100) for n in names[:200]) == {"testing"}


def test_split_nfc_and_nfd_names_agree():
    nfc, nfd = "cr\u00e8me/\u00fc.jpg", "cre\u0300me/u\u0308.jpg"
    for v in range(0, 51, 5):
        assert which_split(nfc, v, 50) == which_split(nfd, v, 50)


@pytest.mark.parametrize(
    "validation, testing",
    [
        (-1, 10), (10, -0.5), (101, 0), (0, 100.5), (60, 50),
        (float("nan"), 0), (10, float("inf")), ("10", 10), (True, 0),
    ],
)
def test_bad_percentages_are_usage_errors(validation, testing, tmp_path):
    with pytest.raises(UsageError):
        which_split("a/b.jpg", validation, testing)
    # checked before the folder is even looked at
    with pytest.raises(UsageError):
        index_image_dir(tmp_path / "missing", validation, testing)


def test_moving_the_folder_keeps_every_split(make_image_dir, tmp_path):
    root = make_image_dir({"cat": 30, "dog": 30})
    before = index_image_dir(root, 30, 30)
    assert {r.split for r in before.records} == set(SPLITS)
    moved = tmp_path / "elsewhere" / "deeper" / "renamed"
    moved.parent.mkdir(parents=True)
    shutil.move(root, moved)
    after = index_image_dir(moved, 30, 30)
    assert after.root == moved.resolve()
    assert splits_by_relpath(after) == splits_by_relpath(before)
    assert [r.sha256 for r in after.records] == [r.sha256 for r in before.records]
    for r in after.records:
        assert r.split == which_split(r.relpath, 30, 30)


# --------------------------------------------------------------------------- discovery


def test_finds_images_by_extension_in_any_case_recursively(tmp_path, write_image):
    root = tmp_path / "images"
    wanted = [
        "cat/a.JPG", "cat/b.Jpeg", "cat/c.png", "cat/d.TIFF", "cat/e.tif", "cat/f.webp",
        "cat/g.BMP", "cat/h.gif", "cat/sub/deeper/i.png", "dog/j.jpg",
    ]
    for rel in wanted:
        write_image(root / rel)
    write_image(root / "cat/.hidden.jpg")
    write_image(root / "cat/.thumbnails/k.jpg")
    write_image(root / ".git/l.png")  # hidden top-level folder: not a class
    write_image(root / "loose.png")  # not in a class folder
    (root / "cat/.DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 64)
    (root / "cat/notes.txt").write_text("not an image")
    (root / "dog/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)

    index = index_image_dir(root, 0, 0)
    assert index.labels == ("cat", "dog")
    assert [r.relpath for r in index.records] == sorted(wanted)
    assert index.skipped == ()
    for r in index.records:
        assert r.path == index.root / r.relpath and r.path.is_absolute() and r.path.is_file()
        assert r.label == r.relpath.split("/")[0]
        assert r.sha256 == hashlib.sha256(r.path.read_bytes()).hexdigest()


def test_follows_symlinked_files_and_folders(tmp_path, make_image_dir, write_image):
    root = make_image_dir({"cat": 2, "dog": 2})
    outside = tmp_path / "outside"
    write_image(outside / "linked.png")
    write_image(outside / "album" / "x.png")
    write_image(outside / "album" / "y.jpg")
    os.symlink(outside / "linked.png", root / "dog" / "link.png")
    os.symlink(outside / "album", root / "cat" / "album")

    index = index_image_dir(root, 0, 0)
    rels = [r.relpath for r in index.records]
    assert rels == [
        "cat/0.png", "cat/1.png", "cat/album/x.png", "cat/album/y.jpg", "dog/0.png", "dog/1.png", "dog/link.png",
    ]
    link = next(r for r in index.records if r.relpath == "dog/link.png")
    assert link.path == index.root / "dog" / "link.png"  # the user's name, not the target's
    assert link.sha256 == sha256_file(outside / "linked.png")


def test_symlink_loop_is_followed_once_with_a_warning(make_image_dir, write_image):
    root = make_image_dir({"cat": 2, "dog": 2})
    os.symlink(root / "cat", root / "cat" / "loop")  # absolute link to itself
    write_image(root / "dog" / "sub" / "deep.png")
    os.symlink("..", root / "dog" / "sub" / "up")  # relative link to its parent
    index = index_image_dir(root, 0, 0)
    rels = [r.relpath for r in index.records]
    assert rels == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "dog/sub/deep.png"]
    assert index.skipped == ()
    loops = sorted(w.split(":")[0] for w in index.warnings if "symbolic link loop" in w)
    assert loops == ["cat/loop", "dog/sub/up"]


def test_names_with_spaces_and_non_ascii(tmp_path, write_image):
    root = tmp_path / "my photos"
    write_image(root / "crème brûlée" / "photo 1 ü.jpg")
    write_image(root / "crème brûlée" / "日本" / "写真.png")
    write_image(root / "hot dog" / "a b c.PNG")
    index = index_image_dir(root, 0, 0)
    assert index.labels == ("crème brûlée", "hot dog")
    assert [r.relpath for r in index.records] == [
        "crème brûlée/photo 1 ü.jpg", "crème brûlée/日本/写真.png", "hot dog/a b c.PNG",
    ]
    assert all(r.path.is_file() for r in index.records)


def test_index_is_sorted_and_helpers_agree(make_image_dir):
    root = make_image_dir({"b_dog": 25, "a_cat": 30})
    index = index_image_dir(root, 20, 20)
    assert index.labels == ("a_cat", "b_dog")
    assert list(index.records) == sorted(index.records, key=lambda r: (r.label, r.relpath))
    counts = index.counts()
    assert set(counts) == {"a_cat", "b_dog"} and all(set(c) == set(SPLITS) for c in counts.values())
    assert sum(counts["a_cat"].values()) == 30 and sum(counts["b_dog"].values()) == 25
    for name in SPLITS:
        part = index.split(name)
        assert all(r.split == name for r in part)
        assert len(part) == sum(c[name] for c in counts.values())
        ids = index.label_ids(part)
        assert ids.dtype == np.int64 and ids.shape == (len(part),)
        assert [index.labels[i] for i in ids] == [r.label for r in part]
    with pytest.raises(UsageError, match="unknown split"):
        index.split("train")


def test_logs_split_counts_at_info(make_image_dir, caplog):
    root = make_image_dir({"cat": 20, "dog": 20})
    with caplog.at_level(logging.INFO, logger="headstart"):
        index = index_image_dir(root, 10, 10)
    totals = {s: len(index.split(s)) for s in SPLITS}
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "indexed" in r.getMessage()]
    t, v, s = totals["training"], totals["validation"], totals["testing"]
    assert f"{t} training, {v} validation, {s} testing" in line


def test_workers_do_not_change_the_result(make_image_dir):
    root = make_image_dir({"cat": 25, "dog": 25})
    assert index_image_dir(root, workers=1) == index_image_dir(root, workers=8)
    with pytest.raises(UsageError):
        index_image_dir(root, workers=0)


def test_sha256_file(tmp_path):
    path = tmp_path / "blob.bin"
    payload = os.urandom(3 << 20) + b"tail"  # spans several read chunks
    path.write_bytes(payload)
    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()


# --------------------------------------------------------------------------- folder errors


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        index_image_dir(tmp_path / "nope")
    assert "nope" in str(err.value) and err.value.hint


def test_file_instead_of_folder(tmp_path, write_image):
    path = write_image(tmp_path / "photo.jpg")
    with pytest.raises(DataError, match="not a folder") as err:
        index_image_dir(path)
    assert "photo.jpg" in str(err.value)


def test_no_class_folders(tmp_path, write_image):
    write_image(tmp_path / "images" / "loose.jpg")
    write_image(tmp_path / "images" / ".hidden" / "x.jpg")
    with pytest.raises(DataError, match="no class folders") as err:
        index_image_dir(tmp_path / "images")
    assert "cats" in err.value.hint


def test_only_one_class(make_image_dir):
    root = make_image_dir({"daisy": 3})
    with pytest.raises(DataError, match="only one class") as err:
        index_image_dir(root)
    assert "'daisy'" in str(err.value)


def test_class_without_images_is_named(make_image_dir, write_image):
    root = make_image_dir({"cat": 3, "dog": 3})
    (root / "empty_class" / "sub").mkdir(parents=True)
    (root / "empty_class" / "readme.txt").write_text("todo")
    write_image(root / "empty_class" / ".hidden.jpg")
    with pytest.raises(DataError) as err:
        index_image_dir(root)
    assert "'empty_class' has no images" in str(err.value)


@pytest.mark.parametrize(
    "first, second", [("Roses", "roses"), ("sun_flower", "sun-flower"), ("Sun Flower", "sunflower")]
)
def test_class_names_differing_in_case_or_punctuation(make_image_dir, first, second):
    root = make_image_dir({first: 2, second: 2, "tulips": 2})
    with pytest.raises(DataError, match="differ only in case or punctuation") as err:
        index_image_dir(root)
    assert first in str(err.value) and second in str(err.value)


def test_class_without_training_image(make_image_dir):
    root = make_image_dir({"cat": 3, "dog": 3})
    with pytest.raises(DataError, match="no training images") as err:
        index_image_dir(root, 50, 50)
    assert "'cat'" in str(err.value)
    assert "validation_percentage" in err.value.hint
    index = index_image_dir(root, 50, 50, require_training=False)
    assert index.split("training") == ()


def test_dropping_duplicates_can_leave_a_class_without_training(make_image_dir, write_image):
    root = make_image_dir({"dog": 3})
    names = [f"cat/{i:03d}.png" for i in range(100)]  # one length: the first by name is kept
    kept = next(n for n in names if which_split(n, 50, 0) == "validation")
    dropped = next(n for n in names if n > kept and which_split(n, 50, 0) == "training")
    write_image(root / kept, seed=7)
    write_image(root / dropped, seed=7)  # same bytes: only `kept` (first by relpath) counts
    with pytest.raises(DataError, match="class 'cat' has no training images"):
        index_image_dir(root, 50, 0)
    index = index_image_dir(root, 50, 0, require_training=False)
    assert [(r.relpath, r.split) for r in index.records if r.label == "cat"] == [(kept, "validation")]


def test_few_images_is_a_logged_warning(make_image_dir, caplog):
    root = make_image_dir({"cat": 20, "dog": 5})
    with caplog.at_level(logging.WARNING, logger="headstart"):
        index = index_image_dir(root, 0, 0)
    assert [w for w in index.warnings if "only" in w] == [
        "class 'dog' has only 5 usable images; 20 or more give better results"
    ]
    assert any("'dog' has only 5" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- labels=


def test_labels_fix_order_and_allow_a_subset(make_image_dir):
    root = make_image_dir({"dog": 3})
    index = index_image_dir(root, 0, 0, labels=["zebra", "dog", "cat"], require_training=False)
    assert index.labels == ("zebra", "dog", "cat")
    assert index.label_ids(index.records).tolist() == [1, 1, 1]
    assert index.counts()["cat"] == {"training": 0, "validation": 0, "testing": 0}


def test_labels_reject_an_unknown_folder(make_image_dir):
    root = make_image_dir({"dog": 3, "horse": 3})
    with pytest.raises(DataError) as err:
        index_image_dir(root, labels=("cat", "dog"))
    assert "'horse'" in str(err.value) and "cat, dog" in str(err.value)


# --------------------------------------------------------------------------- unusable files


def test_duplicates_within_a_class_count_once(make_image_dir):
    root = make_image_dir({"cat": 3, "dog": 3})
    (root / "cat" / "sub").mkdir()
    shutil.copy(root / "cat" / "1.png", root / "cat" / "sub" / "copy.png")
    shutil.copy(root / "cat" / "1.png", root / "cat" / "0a.png")
    index = index_image_dir(root, 0, 0)
    # the shortest name is kept, so a copy never displaces the original
    assert [r.relpath for r in index.records if r.label == "cat"] == ["cat/0.png", "cat/1.png", "cat/2.png"]
    assert {(s.path.name, s.reason) for s in index.skipped} == {
        ("0a.png", "duplicate of cat/1.png"), ("copy.png", "duplicate of cat/1.png"),
    }


def test_same_image_in_two_classes_is_ambiguous(make_image_dir):
    root = make_image_dir({"cat": 3, "dog": 3})
    shutil.copy(root / "cat" / "2.png", root / "dog" / "cat_or_dog.png")
    index = index_image_dir(root, 0, 0)
    assert "cat/2.png" not in splits_by_relpath(index)
    assert "dog/cat_or_dog.png" not in splits_by_relpath(index)
    assert {(s.path.relative_to(index.root).as_posix(), s.reason) for s in index.skipped} == {
        ("cat/2.png", "same image also in class dog"), ("dog/cat_or_dog.png", "same image also in class cat"),
    }
    (warning,) = [w for w in index.warnings if "same image" in w]
    assert "cat/2.png" in warning and "dog/cat_or_dog.png" in warning


def test_zero_byte_and_broken_link_are_skipped(make_image_dir, tmp_path):
    root = make_image_dir({"cat": 3, "dog": 3})
    (root / "cat" / "empty.jpg").touch()
    os.symlink(tmp_path / "gone.jpg", root / "dog" / "dangling.jpg")
    index = index_image_dir(root, 0, 0)
    assert len(index.records) == 6
    reasons = {s.path.name: s.reason for s in index.skipped}
    assert reasons == {
        "empty.jpg": "empty file (0 bytes)",
        "dangling.jpg": "file not found (broken symbolic link?)",
    }


def test_unreadable_file_is_skipped(make_image_dir, monkeypatch):
    root = make_image_dir({"cat": 3, "dog": 3})
    locked = root / "dog" / "1.png"
    if os.geteuid() != 0:
        locked.chmod(0)  # a real permission error
    else:
        # root reads anything, so make the hashing's own open() refuse that one file
        real_open = open

        def refusing_open(path, *args, **kwargs):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(files, "open", refusing_open, raising=False)
    try:
        index = index_image_dir(root, 0, 0)
    finally:
        locked.chmod(0o644)
    assert [(s.path, s.reason) for s in index.skipped] == [(locked, "permission denied")]
    assert len(index.records) == 5


# --------------------------------------------------------------------------- finding image files


def test_list_image_files_skips_hidden_and_non_images(tmp_path, write_image):
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "sub" / "a.JPG")
    write_image(tmp_path / "sub" / "deeper" / "c.webp")
    write_image(tmp_path / ".hidden.png")
    write_image(tmp_path / ".thumbs" / "d.png")
    write_image(tmp_path / "sub" / ".e.png")
    (tmp_path / "notes.txt").write_text("not an image")
    found = list_image_files(tmp_path)
    assert found == [tmp_path / "b.png", tmp_path / "sub" / "a.JPG", tmp_path / "sub" / "deeper" / "c.webp"]


def test_list_image_files_survives_a_link_loop(tmp_path, write_image, caplog):
    write_image(tmp_path / "cats" / "1.png")
    (tmp_path / "cats" / "again").symlink_to(tmp_path / "cats", target_is_directory=True)
    with caplog.at_level("WARNING", logger="headstart"):
        assert list_image_files(tmp_path / "cats") == [tmp_path / "cats" / "1.png"]
    assert "symbolic link loop" in caplog.text


def test_find_images_takes_files_and_folders(tmp_path, write_image):
    write_image(tmp_path / "photos" / "x.png")
    write_image(tmp_path / "photos" / ".hidden" / "y.png")
    (tmp_path / "given.dat").write_bytes(b"a file named directly is taken as it is")
    assert find_images([tmp_path / "given.dat", str(tmp_path / "photos")]) == [
        tmp_path / "given.dat", tmp_path / "photos" / "x.png"]


def test_find_images_refuses_missing_paths_and_empty_folders(tmp_path):
    with pytest.raises(UsageError, match="no such file or folder: .*missing") as err:
        find_images([tmp_path / "missing"])
    assert err.value.exit_code == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images found in .*empty"):
        find_images([tmp_path / "empty"])
