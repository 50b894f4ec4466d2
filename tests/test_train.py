"""retrain -> label -> evaluate through the Python API, on real Fashion-MNIST images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from headstart.bundle import load_bundle
from headstart.config import RetrainConfig
from headstart.errors import DataError, ModelError, UsageError
from headstart.inference import evaluate, label, label_imagenet
from headstart.settings import RETRAIN_PY_RECIPE
from headstart.train import retrain


def test_retrain_writes_a_complete_run_directory(trained_run) -> None:
    run = trained_run.run_dir
    for name in ("labels.txt", "head.safetensors", "headstart.json", "metrics.json", "report.html"):
        assert (run / name).is_file(), name
    labels = (run / "labels.txt").read_text().splitlines()
    assert labels == sorted(labels) and len(labels) == 10
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert {"accuracy", "n", "per_class", "confusion_matrix"} <= set(test)
    assert set(test["per_class"]) == set(labels)
    assert {"precision", "recall", "f1", "support"} == set(test["per_class"]["Bag"])
    assert sum(c["support"] for c in test["per_class"].values()) == test["n"]
    assert np.array(test["confusion_matrix"]).sum() == test["n"]
    assert {"accuracy", "n"} <= set(metrics["validation"])
    assert {"bottlenecks_s", "train_s", "total_s"} <= set(metrics["timing"])
    assert {"computed", "cached", "skipped"} == set(metrics["bottlenecks"])
    assert test["top5_accuracy"] is not None  # 10 classes > 5
    manifest = json.loads((run / "headstart.json").read_text())
    assert manifest["backbone"]["name"] == "efficientnet_lite0"
    assert manifest["preprocessing"]["input_size"] == 224
    assert manifest["hyperparameters"]["how_many_training_steps"] == 300
    # Far above chance (10 %) on 30 images a class: the bottlenecks carry real information.
    assert trained_run.test.accuracy > 0.6


def test_no_file_in_the_run_directory_is_a_pickle(trained_run) -> None:
    for path in trained_run.run_dir.iterdir():
        if not path.is_file():
            continue  # e.g. exports written next to the run by other tests
        head = path.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"), path
        assert not head.startswith(b"PK"), path  # torch.save zip archives


def test_second_run_computes_no_bottleneck(trained_run, fashion_dir: Path, shared_cache_dir: Path,
                                           tmp_path: Path) -> None:
    again = retrain(RetrainConfig(image_dir=fashion_dir, output_dir=tmp_path / "again",
                                  bottleneck_dir=shared_cache_dir, how_many_training_steps=300, progress=False,
                                  write_report=False))
    assert again.bottlenecks["computed"] == 0
    assert again.bottlenecks["cached"] == 300
    # Same seed, same data: the same model.
    first, second = load_bundle(trained_run.run_dir), load_bundle(again.run_dir)
    for name, tensor in first.head_tensors.items():
        np.testing.assert_array_equal(tensor, second.head_tensors[name])
    assert again.test.accuracy == trained_run.test.accuracy


def test_moved_folder_keeps_split_and_cache_edited_image_is_recomputed(trained_run, fashion_dir: Path,
                                                                       shared_cache_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "clothes"
    shutil.copytree(fashion_dir, moved)
    renamed = moved / "Bag" / "renamed_copy.png"
    original = sorted((moved / "Bag").iterdir())[0]
    original.rename(renamed)
    edited = sorted((moved / "Coat").iterdir())[0]
    from PIL import Image

    Image.open(edited).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(edited)
    result = retrain(RetrainConfig(image_dir=moved, output_dir=tmp_path / "run", bottleneck_dir=shared_cache_dir,
                                   how_many_training_steps=50, progress=False, write_report=False))
    assert result.bottlenecks["computed"] == 1  # only the edited image
    assert result.bottlenecks["cached"] == 299
    # Moving the folder changes no split; only the renamed file may land elsewhere.
    moved_splits, first_splits = result.metrics["splits"], trained_run.metrics["splits"]
    assert sum(abs(moved_splits[s] - first_splits[s]) for s in first_splits) <= 2


def test_retrain_py_recipe_is_available_exactly() -> None:
    config = RetrainConfig(image_dir=Path("."), **RETRAIN_PY_RECIPE)
    from headstart.train import build_head

    head = build_head(config, 5)
    params = head.get_params()
    assert (params["optimizer"], params["learning_rate"], params["train_batch_size"],
            params["how_many_training_steps"]) == ("sgd", 0.01, 100, 4000)


def test_label_prints_top_k_for_folders(trained_run, fashion_holdout_dir: Path, shared_cache_dir: Path) -> None:
    result = label(trained_run.run_dir, [fashion_holdout_dir / "Trouser"], top_k=3, bottleneck_dir=shared_cache_dir,
                   progress=False)
    assert len(result.predictions) == 10
    for prediction in result.predictions:
        assert len(prediction.top) == 3
        scores = [s for _, s in prediction.top]
        assert scores == sorted(scores, reverse=True)
    # Trousers are the easiest Fashion-MNIST class.
    assert sum(p.top[0][0] == "Trouser" for p in result.predictions) >= 8
    as_json = result.predictions[0].to_dict()
    assert set(as_json) == {"path", "top", "unknown", "ood_score"} and set(as_json["top"][0]) == {"label", "score"}


def test_evaluate_on_unseen_images(trained_run, fashion_holdout_dir: Path, shared_cache_dir: Path) -> None:
    result, wrong, skipped = evaluate(trained_run.run_dir, fashion_holdout_dir, bottleneck_dir=shared_cache_dir,
                                      progress=False)
    assert result.n == 100 and not skipped
    assert result.accuracy > 0.6
    assert len(wrong) == round((1 - result.accuracy) * 100)


def test_evaluate_rejects_an_unknown_class_folder(trained_run, fashion_holdout_dir: Path, tmp_path: Path,
                                                  shared_cache_dir: Path) -> None:
    folder = tmp_path / "eval"
    shutil.copytree(fashion_holdout_dir / "Bag", folder / "Bag")
    shutil.copytree(fashion_holdout_dir / "Coat", folder / "Raincoat")
    with pytest.raises(DataError, match="Raincoat"):
        evaluate(trained_run.run_dir, folder, bottleneck_dir=shared_cache_dir, progress=False)


@pytest.mark.slow
def test_label_imagenet_calls_a_cat_a_cat(photos, tmp_path: Path, shared_cache_dir: Path) -> None:
    from PIL import Image

    path = tmp_path / "chelsea.jpg"
    Image.fromarray(photos["chelsea"]).save(path, quality=95)
    result = label_imagenet([path], bottleneck_dir=shared_cache_dir, progress=False)
    assert "cat" in result.predictions[0].top[0][0]


def test_model_trained_on_other_weights_is_refused(trained_run, tmp_path: Path, fashion_holdout_dir: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    manifest = json.loads((run / "headstart.json").read_text())
    manifest["backbone"]["weights_fingerprint"] = "0" * 64
    (run / "headstart.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError):
        label(run, [fashion_holdout_dir / "Bag"], progress=False)


def test_a_class_without_training_images_is_named(tmp_path: Path, fashion_dir: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(fashion_dir / "Bag", folder / "Bag")
    shutil.copytree(fashion_dir / "Coat", folder / "Coat")
    with pytest.raises(DataError, match="Bag|Coat"):
        retrain(RetrainConfig(image_dir=folder, testing_percentage=60, validation_percentage=40, progress=False))


@pytest.mark.slow
def test_doctor_and_exclude_from_in_retrain(fashion_dir: Path, shared_cache_dir: Path, tmp_path: Path) -> None:
    """--doctor puts its summary in metrics.json, report.html and the run; --exclude_from drops what it flagged."""
    import json

    from headstart.doctor import doctor, write_report

    report = doctor(fashion_dir, bottleneck_dir=shared_cache_dir)
    doctor_json, _ = write_report(report, tmp_path / "doctor")
    flagged = {f.path for f in report.label_issues}
    assert flagged, "30 Fashion-MNIST images per class always hold a few confusing ones"
    result = retrain(RetrainConfig(image_dir=fashion_dir, output_dir=tmp_path / "run", bottleneck_dir=shared_cache_dir,
                                   how_many_training_steps=100, progress=False, doctor=True,
                                   exclude_from=f"{doctor_json}:label_issues"))
    used = sum(result.metrics["splits"].values())
    assert used == report.n_images - len(flagged) - len(result.skipped)
    assert "likely label error" in result.metrics["doctor"]["summary"]
    assert (tmp_path / "run" / "doctor.json").is_file()
    assert "Data doctor:" in (tmp_path / "run" / "report.html").read_text()
    with pytest.raises(UsageError):
        retrain(RetrainConfig(image_dir=fashion_dir, output_dir=tmp_path / "run2", bottleneck_dir=shared_cache_dir,
                              exclude_from=f"{doctor_json}:no_such_kind", progress=False))
