"""Shared fixtures: real photos (scikit-image samples) and small real image files."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# TensorFlow imported before triton (which torchvision pulls in) crashes the process; a test that
# imports TensorFlow first would take the whole session down, so triton is loaded up front.
with contextlib.suppress(Exception):  # not installed, or no usable build here
    import triton  # noqa: F401

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """scikit-image's sample photos as RGB uint8 arrays."""
    import skimage.data

    return {
        "chelsea": skimage.data.chelsea(),  # 451x300 cat
        "coffee": skimage.data.coffee(),  # 600x400 espresso
        "astronaut": skimage.data.astronaut(),  # 512x512
    }


@pytest.fixture
def prep():
    """The EfficientNet/ImageNet default: 224 px, crop 0.875, bicubic."""
    from headstart.data import Preprocessing

    return Preprocessing(224, 0.875, "bicubic", IMAGENET_MEAN, IMAGENET_STD)


def _encode(array: np.ndarray | Image.Image, fmt: str, **save_args) -> bytes:
    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buf = io.BytesIO()
    img.save(buf, fmt, **save_args)
    return buf.getvalue()


@pytest.fixture
def encode() -> Callable[..., bytes]:
    """``encode(array_or_pil_image, "PNG", **save_args)``: image bytes made by PIL, in memory."""
    return _encode


_FORMAT_BY_EXT = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF",
    ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
}


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, seed=0, size=8)``: a small, real image whose bytes
    differ per seed (random pixels), encoded as its extension says."""
    counter = iter(range(10**6, 2 * 10**6))

    def write(path: Path, seed: int | None = None, size: int = 8) -> Path:
        rng = np.random.default_rng(next(counter) if seed is None else seed)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encode(pixels, _FORMAT_BY_EXT[path.suffix.lower()]))
        return path

    return write


@pytest.fixture
def make_image_dir(tmp_path: Path, write_image) -> Callable[..., Path]:
    """``make_image_dir({"cat": 25, "dog": 25}, name="images")``: class folders
    of distinct small PNGs named ``<i>.png``."""

    def make(classes: dict[str, int], name: str = "images") -> Path:
        root = tmp_path / name
        root.mkdir()
        for label, n in classes.items():
            (root / label).mkdir()
            for i in range(n):
                write_image(root / label / f"{i}.png")
        return root

    return make


# ---------------------------------------------------------------- real labelled data and a trained run
# Session-scoped so that the network runs once per test session: every test
# below shares one bottleneck cache, as users' runs do.


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bottleneck cache (and converted-model store) for the whole session."""
    return tmp_path_factory.mktemp("bottlenecks")


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 real Fashion-MNIST training images per class, written as class folders of PNGs."""
    from headstart.datasets import write_fashion_mnist

    out = tmp_path_factory.mktemp("fashion") / "train"
    write_fashion_mnist(out, per_class=30)
    return out


@pytest.fixture(scope="session")
def fashion_holdout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 Fashion-MNIST test-set images per class: never seen in training."""
    from headstart.datasets import write_fashion_mnist

    out = tmp_path_factory.mktemp("fashion") / "holdout"
    write_fashion_mnist(out, per_class=10, split="test")
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path, shared_cache_dir: Path):
    """A real retrain run on ``fashion_dir`` (returns the RetrainResult)."""
    from headstart.config import RetrainConfig
    from headstart.train import retrain

    out = tmp_path_factory.mktemp("runs") / "fashion"
    config = RetrainConfig(image_dir=fashion_dir, output_dir=out, bottleneck_dir=shared_cache_dir,
                           how_many_training_steps=300, progress=False)
    return retrain(config)


# ---------------------------------------------------------------- exported models (tests/test_export.py and friends)


@pytest.fixture(scope="session")
def exported_onnx(trained_run, shared_cache_dir: Path):
    """``trained_run`` exported as fp32 ONNX to its default place (an ExportResult, self-checked)."""
    from headstart.export import export_model

    return export_model(trained_run.run_dir, cache_dir=shared_cache_dir, progress=False)


@pytest.fixture(scope="session")
def exported_ir(trained_run, tmp_path_factory: pytest.TempPathFactory):
    """``trained_run`` exported as an OpenVINO IR (fp32) to a folder of its own."""
    from headstart.export import export_model

    out = tmp_path_factory.mktemp("ir") / "fashion.xml"
    return export_model(trained_run.run_dir, model_format="openvino", output=out, progress=False)


# ---------------------------------------------------------------- the command, in this process


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple]]:
    """``cli(*args) -> (exit code, stdout, stderr)`` through ``headstart.cli.main`` in this process
    (cheap for failures that happen before any network runs).  Restores the logger it configures."""
    import logging

    from headstart.cli import main

    monkeypatch.delenv("HEADSTART_DEBUG", raising=False)
    logger = logging.getLogger("headstart")
    saved = (logger.handlers[:], logger.propagate, logger.level)

    def run(*args: object) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


# ---------------------------------------------------------------- the fast tier
# Exporting a model (ONNX, OpenVINO) and checking it against PyTorch takes tens of seconds,
# so every test that needs an export belongs to the slow tier; `-m "not slow"` skips them.
# So does every TensorFlow test: importing TensorFlow and building its modules costs about
# 40 s before the first one runs. The full run (scripts/test.sh, CI) runs them all.
_SLOW_FIXTURES = {"exported_onnx", "exported_ir"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("tensorflow"):
            item.add_marker(pytest.mark.slow)
