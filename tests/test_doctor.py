"""The data doctor on real images with planted problems (Fashion-MNIST and scikit-image photo crops)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_one_line_error
from doctor_planting import (
    make_variant,
    plant_bad_images,
    plant_exact_duplicates,
    plant_label_errors,
    plant_near_duplicates,
    write_photo_crops,
)
from PIL import Image

from headstart.data import which_split
from headstart.doctor import doctor, write_fix_script
from headstart.doctor_results import (
    DEFAULT_SIMILARITY,
    FINDING_KINDS,
    PIXEL_FLOOR,
    DoctorReport,
    load_exclusions,
    summary_line,
)
from headstart.errors import UsageError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- one planted Fashion-MNIST folder, checked once


@pytest.fixture(scope="module")
def fashion_case(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path, shared_cache_dir: Path) -> dict:
    """300 real Fashion-MNIST images with 5 % label errors, exact copies (within and across classes),
    near-duplicate copies of every kind and an unreadable file planted; the doctor's report on it."""
    root = _copy(fashion_dir, tmp_path_factory.mktemp("doctor") / "fashion")
    near = plant_near_duplicates(root, 8, seed=5)  # JPEG q60, resize, 5 % crop, brightness: two of each
    involved = {x for o, c, _ in near for x in (o, c)}
    within = plant_exact_duplicates(root, 2, across_classes=False, seed=3, exclude=involved)
    across = plant_exact_duplicates(root, 2, across_classes=True, seed=4, exclude=involved)
    involved |= {x for pair in within + across for x in pair}
    labels = plant_label_errors(root, 0.05, seed=6, exclude=involved)
    (root / "Bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path_factory.mktemp("doctor_out")
    report = doctor(root, output_dir=out, bottleneck_dir=shared_cache_dir)
    return {"root": root, "out": out, "report": report, "labels": labels, "within": within, "across": across,
            "near": near}


@pytest.mark.slow
def test_planted_label_errors_rank_first(fashion_case: dict) -> None:
    report: DoctorReport = fashion_case["report"]
    planted = fashion_case["labels"]
    m = len(planted)
    ranked = [f.path for f in report.label_issues]
    assert ranked == [f.path for f in sorted(report.label_issues, key=lambda f: -f.score)]
    top = set(ranked[:m])
    # 30 images per class: 64-93 % over three plantings (the 80 % target is measured on 3,000 in docs/DOCTOR.md)
    assert len(top & set(planted)) / m >= 0.5, (sorted(top & set(planted)), m)
    assert len(set(ranked[: 2 * m]) & set(planted)) / m >= 0.8
    by_path = {f.path: f for f in report.label_issues}
    right = [p for p in planted if p in by_path and by_path[p].suggested == planted[p]]
    assert len(right) >= 0.7 * m  # and the suggested class is mostly the true one
    for f in report.label_issues:
        assert f.given == f.path.split("/")[0] and f.suggested != f.given and 0 <= f.score <= 1


@pytest.mark.slow
def test_exact_duplicates_within_and_across_classes(fashion_case: dict) -> None:
    report: DoctorReport = fashion_case["report"]
    groups = {frozenset(d.paths): d for d in report.exact_duplicates}
    for orig, copy in fashion_case["within"]:
        d = groups[frozenset((orig, copy))]
        assert not d.conflict and "counts them once" in d.reason
    for orig, copy in fashion_case["across"]:
        d = groups[frozenset((orig, copy))]
        assert d.conflict and "label conflict" in d.reason and d.suggested in report.labels
    assert len(report.exact_duplicates) == 4


@pytest.mark.slow
def test_near_duplicate_copies_of_every_kind_are_found(fashion_case: dict) -> None:
    report: DoctorReport = fashion_case["report"]
    member = {p: g for g in report.near_duplicates for p in g.paths}
    for orig, copy, _ in fashion_case["near"]:
        assert orig in member and member[orig] is member.get(copy), (orig, copy)
    for g in report.near_duplicates:
        assert g.path == g.paths[0] and len(g.paths) == len(g.classes) == len(g.splits) >= 2
        assert all(p.similarity >= g.threshold or p.pixel_match >= PIXEL_FLOOR for p in g.pairs)


@pytest.mark.slow
def test_unreadable_file_is_an_image_issue_with_its_reason(fashion_case: dict) -> None:
    report: DoctorReport = fashion_case["report"]
    issue = next(f for f in report.image_issues if f.path == "Bag/broken.png")
    assert issue.kind == "unreadable" and issue.reason.startswith("unusable: ")
    assert any(s.path.name == "broken.png" for s in report.skipped)


@pytest.mark.slow
def test_doctor_json_has_exactly_the_seven_lists(fashion_case: dict) -> None:
    data = json.loads((fashion_case["out"] / "doctor.json").read_text())
    assert list(data) == list(FINDING_KINDS)
    for kind, items in data.items():
        assert isinstance(items, list)
        for item in items:
            assert {"path", "reason", "score"} <= set(item), (kind, item)
            assert not item["path"].startswith("/") and ".." not in item["path"]
    assert {c["label"] for c in data["class_balance"]} == set(fashion_case["report"].labels)


@pytest.mark.slow
def test_html_gallery_is_self_contained(fashion_case: dict) -> None:
    page = (fashion_case["out"] / "doctor.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//)", page, re.I)
    assert "@import" not in page and "url(" not in page
    sources = re.findall(r"<img[^>]*src='([^']*)'", page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "copy mv line" in page and "navigator.clipboard" in page
    report = fashion_case["report"]
    first = report.label_issues[0]
    assert first.path in page and first.suggested in page


@pytest.mark.slow
def test_fix_script_moves_suspects_and_quarantines_duplicates(fashion_case: dict, tmp_path: Path) -> None:
    report: DoctorReport = fashion_case["report"]
    script = write_fix_script(report, tmp_path / "fix.sh")
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n") and "Nothing has been moved yet" in text
    root = fashion_case["root"]
    quarantine = root.parent / "_quarantine" / root.name
    active = [line for line in text.splitlines() if line.startswith("mkdir -p ")]
    assert active and all(" && mv -n -- " in line for line in active)
    assert any(line.startswith("# mkdir -p ") for line in text.splitlines())  # uncertain ones are commented
    assert not any(str(root / "_quarantine") in line for line in text.splitlines())  # never inside the data
    for _, copy in fashion_case["within"]:
        assert f"mv -n -- {root / copy} {quarantine / copy}" in text
    # Running it (on this folder, which no later test reads) moves files and deletes none.
    before = sorted(p.name for p in root.rglob("*") if p.is_file())
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=120)
    after = sorted(p.name for p in root.rglob("*") if p.is_file())
    moved = sorted(p.name for p in quarantine.rglob("*") if p.is_file())
    assert sorted(after + moved) == before and moved
    for orig, copy in fashion_case["within"]:
        assert (quarantine / copy).exists() and (root / orig).exists()
    fixed = [f for f in report.label_issues if f.confident and f.suggested_probability >= 0.9]
    for f in fixed:
        assert (root / f.suggested / f.path.split("/", 1)[1]).exists() and not (root / f.path).exists()


# ---------------------------------------------------------------- photo crops: near-duplicates, leaks, bad images


@pytest.fixture(scope="module")
def photo_case(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> dict:
    import skimage.data

    root = write_photo_crops(tmp_path_factory.mktemp("doctor") / "photos", grid=4)
    near = plant_near_duplicates(root, 12, seed=7, kinds=("resize", "brightness"), leak_every=2)
    planted_jpeg = plant_near_duplicates(root, 4, seed=8, kinds=("jpeg60", "crop5"))
    bad = plant_bad_images(root / "coffee", skimage.data.coffee())
    screenshot = root / "rocket" / "screenshot.png"
    Image.fromarray(skimage.data.page()).save(screenshot)
    report = doctor(root, bottleneck_dir=shared_cache_dir)
    return {"root": root, "report": report, "near": near, "other": planted_jpeg, "bad": bad}


@pytest.mark.slow
def test_photo_near_duplicates_and_every_planted_leak(photo_case: dict) -> None:
    report: DoctorReport = photo_case["report"]
    member = {p: g for g in report.near_duplicates for p in g.paths}
    for orig, copy, _ in photo_case["near"]:
        assert orig in member and member[orig] is member.get(copy), (orig, copy)
    found_other = sum(orig in member and member[orig] is member.get(copy) for orig, copy, _ in photo_case["other"])
    assert found_other >= 3  # JPEG q60 and 5 % crops: 93 % of each found on the benchmark's photo crops
    leaks = {f.path: f for f in report.leaks}
    planted = 0
    for orig, copy, _ in photo_case["near"]:
        so, sc = which_split(orig, 10, 10), which_split(copy, 10, 10)
        if so != sc and "training" in (so, sc):
            planted += 1
            held = copy if so == "training" else orig
            assert held in leaks and (orig if held == copy else copy) in leaks[held].matches
    assert planted >= 4
    tested = [f for f in report.leaks if f.split == "testing" and not f.exact]
    if tested:
        assert report.test_accuracy is not None and report.test_accuracy_without_leaks is not None
        assert "without them" in summary_line(report)


@pytest.mark.slow
def test_photo_bad_images_found_with_reasons(photo_case: dict) -> None:
    report: DoctorReport = photo_case["report"]
    found = {(f.path, f.kind) for f in report.image_issues}
    for name, kind in photo_case["bad"].items():
        assert (f"coffee/{name}", kind) in found, (name, kind, sorted(found))
    by_path = {f.path: f for f in report.image_issues}
    assert "not an image" in by_path["coffee/notes.jpg"].reason
    clean = [f for f in report.image_issues if not f.path.startswith("coffee/") or "_" in f.path.split("/")[1]]
    # Tiles of plain sky are rightly near-blank, dark or bright; shape, sharpness and reading must not misfire.
    assert not [f for f in clean if f.kind in ("tiny", "aspect_ratio", "unreadable")], clean
    assert len([f for f in clean if f.kind == "blurred"]) <= 0.02 * report.n_images, clean


@pytest.mark.slow
def test_screenshot_among_photos_is_an_outlier(photo_case: dict) -> None:
    report: DoctorReport = photo_case["report"]
    assert "rocket/screenshot.png" in [o.path for o in report.outliers[:3]]


# ---------------------------------------------------------------- one class, API, exclusions, CLI


def test_one_class_folder_gets_every_check_but_labels(tmp_path: Path, fashion_dir: Path,
                                                      shared_cache_dir: Path) -> None:
    root = tmp_path / "bags"
    shutil.copytree(fashion_dir / "Bag", root / "Bag")
    src = sorted((root / "Bag").iterdir())[0]
    with Image.open(src) as img:
        variant, ext = make_variant(img, "brightness", np.random.default_rng(0))
    variant.save(root / "Bag" / f"copy_of_{src.stem}{ext}")
    shutil.copyfile(src, root / "Bag" / "same_bytes.png")
    (root / "Bag" / "empty.png").write_bytes(b"")
    report = doctor(root, bottleneck_dir=shared_cache_dir)
    assert report.labels == ("Bag",) and report.label_issues == ()
    assert all(leak.exact for leak in report.leaks)  # byte copies only; retrain uses one of them
    assert any("label" in note and "one class" in note for note in report.notes)
    assert any(set(d.paths) == {f"Bag/{src.name}", "Bag/same_bytes.png"} for d in report.exact_duplicates)
    assert any(f"Bag/copy_of_{src.stem}{ext}" in g.paths for g in report.near_duplicates)
    assert any(f.path == "Bag/empty.png" and f.kind == "unreadable" for f in report.image_issues)
    assert [c.label for c in report.class_balance] == ["Bag"]
    assert report.test_accuracy is None


def test_api_export_is_callable_and_findings_are_frozen() -> None:
    import headstart
    import headstart.doctor as module

    # Importing the module binds its name on the package; the name still runs the doctor.
    assert callable(headstart.doctor) and module.doctor is doctor and headstart.DoctorReport is DoctorReport
    from headstart import doctor_findings  # noqa: F401

    assert dataclasses.is_dataclass(DoctorReport) and DoctorReport.__dataclass_params__.frozen
    from headstart.doctor import ClassBalance, ExactDuplicate, ImageIssue, LabelIssue, Leak, NearDuplicateGroup, Outlier

    for cls in (ClassBalance, ExactDuplicate, ImageIssue, LabelIssue, Leak, NearDuplicateGroup, Outlier):
        assert cls.__dataclass_params__.frozen and [f.name for f in dataclasses.fields(cls)][:3] == [
            "path", "reason", "score"]


def _doctor_json(tmp_path: Path, **lists: list) -> Path:
    data = {kind: [] for kind in FINDING_KINDS}
    data.update(lists)
    path = tmp_path / "doctor.json"
    path.write_text(json.dumps(data))
    return path


def test_load_exclusions_by_kind(tmp_path: Path) -> None:
    path = _doctor_json(
        tmp_path,
        label_issues=[{"path": "cat/1.jpg", "reason": "r", "score": 0.9}],
        near_duplicates=[{"path": "cat/2.jpg", "paths": ["cat/2.jpg", "dog/3.jpg"], "reason": "r", "score": 1}],
        exact_duplicates=[{"path": "cat/4.jpg", "paths": ["cat/4.jpg", "cat/4 copy.jpg"], "conflict": False},
                          {"path": "cat/5.jpg", "paths": ["cat/5.jpg", "dog/5.jpg"], "conflict": True}],
        class_balance=[{"path": "cat", "reason": "r", "score": 1}])
    assert load_exclusions(path) == {"cat/1.jpg", "dog/3.jpg", "cat/4 copy.jpg", "cat/5.jpg", "dog/5.jpg"}
    assert load_exclusions(path, ["label_issues"]) == {"cat/1.jpg"}
    assert load_exclusions(path, ["near_duplicates", "leaks"]) == {"dog/3.jpg"}


@pytest.mark.parametrize("content, fragment", [
    (None, "not found"), ("{not json", "cannot read"), ("[]", "not a doctor report"),
    (json.dumps({k: [] for k in FINDING_KINDS} | {"label_issues": [{"path": "../etc/passwd"}]}), "bad path"),
    (json.dumps({k: [] for k in FINDING_KINDS} | {"outliers": [{"path": "/abs/x.jpg"}]}), "bad path"),
    (json.dumps({k: [] for k in FINDING_KINDS} | {"outliers": ["x"]}), "not an object"),
])
def test_load_exclusions_refuses_bad_files_in_one_line(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "doctor.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError) as info:
        load_exclusions(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_load_exclusions_refuses_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown doctor finding kind 'labels'"):
        load_exclusions(_doctor_json(tmp_path), ["labels"])


def test_summary_line_wording() -> None:
    from headstart.doctor_results import LabelIssue, Leak, NearDuplicateGroup, NearDuplicatePair

    issue = LabelIssue("a/1.png", "r", 0.9, "a", "b", 0.05, 0.9, "training", True)
    pair = NearDuplicatePair("a/1.png", "a/2.png", 0.97, 0.5)
    group = NearDuplicateGroup("a/1.png", "r", 0.97, ("a/1.png", "a/2.png"), ("a", "a"), ("training", "testing"),
                               (pair, pair), False, 0.95)
    leak = Leak("a/2.png", "r", 0.97, "a", "testing", ("a/1.png",), ("training",), False, 0.912, 0.898)
    report = DoctorReport(Path("/x"), ("a", "b"), 2, (), (group,), (leak,), (issue, issue, issue), (), (), (), 0.95,
                          "measured default", 0.912, 0.898, (), (), "efficientnet_lite0")
    assert summary_line(report) == ("3 likely label errors, 2 near-duplicate pairs, "
                                    "1 leak (test accuracy 91.2 % -> 89.8 % without them)")


def test_blocked_search_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart import doctor_checks

    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 64)).astype(np.float32)
    x = np.concatenate([base, base[:40] + 0.05 * rng.normal(size=(40, 64)).astype(np.float32)])
    unit = doctor_checks.unit_rows(x)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    want = {(i, j) for i, j in zip(*np.nonzero(sims >= 0.9)) if i < j}
    monkeypatch.setattr(doctor_checks, "_BLOCK_FLOATS", 340 * 7)  # 7 rows per block: many blocks
    got = doctor_checks.similarity_search(x, k=5, threshold=0.9)
    assert {tuple(p) for p in got.pairs.tolist()} == want and len(want) >= 40
    assert np.array_equal(got.index[:, 0], np.argmax(sims, axis=1))
    np.testing.assert_allclose(got.similarity[:, 0], sims.max(axis=1), rtol=1e-5)
    monkeypatch.setattr(doctor_checks, "PCA_DIM", 32)
    projected = doctor_checks.similarity_search(x, k=5, threshold=0.9, project_above=10)
    assert projected.projected and {tuple(p) for p in projected.pairs.tolist()} == want


def test_cli_missing_folder_is_exit_2(cli, tmp_path: Path) -> None:
    code, out, err = cli("doctor", "--image_dir", tmp_path / "nope")
    assert code == 2 and out == ""
    assert_one_line_error(err, "--image_dir", "nope")


def test_cli_bad_similarity_and_output_inside_data(cli, tmp_path: Path, fashion_dir: Path) -> None:
    code, _, err = cli("doctor", "--image_dir", fashion_dir, "--similarity", "1.5")
    assert code == 2
    assert_one_line_error(err, "--similarity")
    code, _, err = cli("doctor", "--image_dir", fashion_dir, "--output_dir", fashion_dir / "report")
    assert code == 2
    assert_one_line_error(err, "inside the image folder")
    assert not (fashion_dir / "report").exists()


@pytest.mark.slow
def test_cli_writes_report_and_prints_each_format(cli, tmp_path: Path, fashion_dir: Path,
                                                  shared_cache_dir: Path) -> None:
    out = tmp_path / "report"
    common = ("doctor", "--image_dir", fashion_dir, "--bottleneck_dir", shared_cache_dir, "--output_dir", out, "-q")
    code, text, err = cli(*common, "--write_fix_script", tmp_path / "fix.sh")
    assert code == 0, err
    assert "likely label error" in text and "nothing has been moved" in text
    assert list(json.loads((out / "doctor.json").read_text())) == list(FINDING_KINDS)
    assert (out / "doctor.html").exists() and (tmp_path / "fix.sh").read_text().startswith("#!/bin/sh")
    code, text, _ = cli(*common, "--format", "json")
    summary = json.loads(text)
    assert code == 0 and summary["images"] == 300 and summary["similarity"] == DEFAULT_SIMILARITY
    code, text, _ = cli(*common, "--format", "csv", "--similarity", "0.9")
    assert code == 0 and text.splitlines()[0] == "kind,path,reason,score,label,suggested,split,paths"
