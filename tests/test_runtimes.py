"""Runtimes: every runtime and precision headstart may pick must give the same
bottlenecks as PyTorch fp32, on real photos and real Fashion-MNIST images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headstart.backbones import resolve_backbone
from headstart.errors import UsageError
from headstart.runtimes import (
    RuntimeChoice,
    available_runtimes,
    create_runner,
    cpu_has_native_bf16,
    cuda_available,
    resolve_runtime,
)

CPU_CHOICES = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def backbone():
    return resolve_backbone("efficientnet_lite0", crop_pct=1.0)


@pytest.fixture(scope="module")
def model_dir(shared_cache_dir: Path) -> Path:
    return shared_cache_dir / "models"


@pytest.fixture(scope="module")
def real_batch(photos, fashion_dir: Path, backbone) -> np.ndarray:
    """Three colour photos and 20 Fashion-MNIST images (two per class), decoded as headstart does."""
    from headstart.data import load_image

    prep = backbone.preprocessing
    images = []
    for array in photos.values():
        from PIL import Image

        resized = Image.fromarray(array).resize((prep.input_size, prep.input_size), Image.Resampling.BICUBIC)
        images.append(np.asarray(resized))
    for folder in sorted(fashion_dir.iterdir()):
        images.extend(load_image(p, prep) for p in sorted(folder.glob("*.png"))[:2])
    return np.stack(images)


@pytest.fixture(scope="module")
def reference(backbone, model_dir: Path, real_batch: np.ndarray) -> np.ndarray:
    """PyTorch fp32 bottlenecks: the numbers every other runtime is held to."""
    return create_runner(backbone, RuntimeChoice("torch", "fp32"), model_dir)(real_batch)


# ------------------------------------------------------------------ choosing


def test_auto_picks_an_installed_runtime_and_its_best_precision():
    choice = resolve_runtime("auto", "auto")
    assert choice.runtime in available_runtimes()
    if choice.runtime == "openvino":
        assert choice.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert choice.key == f"{choice.runtime}-{choice.precision}"


def test_auto_with_a_fixed_precision_skips_runtimes_without_it():
    assert resolve_runtime("auto", "fp32").precision == "fp32"
    if "openvino" in available_runtimes() and not cuda_available():
        assert resolve_runtime("auto", "bf16") == RuntimeChoice("openvino", "bf16")


@pytest.mark.parametrize("runtime, precision, words", [
    ("mxnet", "auto", "unknown runtime"),
    ("litert", "auto", "runs exported models only"),  # .tflite files, not a backbone
    ("onnxruntime", "bf16", "does not support precision bf16"),
    ("torch", "fp16", "does not support precision fp16"),
])
def test_bad_choices_are_usage_errors_with_a_hint(runtime, precision, words):
    with pytest.raises(UsageError, match=words) as info:
        resolve_runtime(runtime, precision)
    assert info.value.hint


@pytest.mark.skipif(cuda_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(UsageError, match="no usable CUDA GPU"):
        resolve_runtime("cuda")


# ------------------------------------------------------------------ numerics


@pytest.mark.parametrize("runtime, precision", CPU_CHOICES)
def test_runtime_bottlenecks_agree_with_torch_fp32(backbone, model_dir, real_batch, reference, runtime, precision):
    if runtime not in available_runtimes():
        pytest.skip(f"{runtime} is not installed")
    vectors = create_runner(backbone, RuntimeChoice(runtime, precision), model_dir)(real_batch)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    cosine = _cosine(vectors, reference)
    assert cosine.min() >= 0.99, f"{runtime}-{precision}: worst cosine {cosine.min():.4f}"
    if precision == "fp32":
        assert cosine.min() >= 0.9999


def test_runner_batch_size_does_not_change_the_vectors(backbone, model_dir, real_batch):
    choice = resolve_runtime("auto", "auto")
    runner = create_runner(backbone, choice, model_dir)
    whole = runner(real_batch)
    pieces = np.concatenate([runner(real_batch[:1]), runner(real_batch[1:9]), runner(real_batch[9:])])
    assert _cosine(whole, pieces).min() >= 0.9999


@pytest.mark.slow
def test_imagenet_classifier_runs_in_the_fastest_runtime(backbone, model_dir, photos):
    """The converted ImageNet model names the cat and the espresso, as the packaged weights do."""
    from headstart.data import load_image
    from headstart.networks import imagenet_labels

    choice = resolve_runtime("auto", "auto")
    runner = create_runner(backbone, choice, model_dir, imagenet=True)
    from PIL import Image
    import io

    batch = []
    for name in ("chelsea", "coffee"):
        buffer = io.BytesIO()
        Image.fromarray(photos[name]).save(buffer, "PNG")
        batch.append(load_image(buffer.getvalue(), backbone.preprocessing))
    probabilities = runner(np.stack(batch))
    labels = imagenet_labels()
    top = [labels[int(i)].lower() for i in probabilities.argmax(1)]
    assert "cat" in top[0] and "espresso" in top[1]


# ------------------------------------------------------------------ accuracy of a head on reduced precision


def _head_accuracy(train_x, train_y, test_x, test_y) -> float:
    from headstart.head import SoftmaxHead

    head = SoftmaxHead(n_classes=10, optimizer="adam", learning_rate=0.001, how_many_training_steps=400,
                       train_batch_size=100, seed=0).fit(train_x, train_y)
    return float((head.predict(test_x) == test_y).mean())


def _folder_vectors(folder: Path, backbone, choice: RuntimeChoice, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from headstart.bench import list_image_records
    from headstart.cache import BottleneckCache
    from headstart.features import compute_bottlenecks

    records = list_image_records(folder)
    labels = sorted({r.label for r in records})
    with BottleneckCache(cache_dir) as cache:
        result = compute_bottlenecks(records, backbone, cache, runtime=choice, progress=False)
    return result.vectors, np.array([labels.index(r.label) for r in result.records])


def _compare_heads(backbone, reference: str, cache_dir: Path, train_dir: Path, test_dir: Path):
    """Test accuracy of the same head trained on ``reference`` and on OpenVINO-bf16 bottlenecks."""
    accuracy = {}
    test_vectors = {}
    for key in (reference, "openvino-bf16"):
        choice = RuntimeChoice(*key.split("-"))
        train_x, train_y = _folder_vectors(train_dir, backbone, choice, cache_dir)
        test_x, test_y = _folder_vectors(test_dir, backbone, choice, cache_dir)
        accuracy[key] = _head_accuracy(train_x, train_y, test_x, test_y)
        test_vectors[key] = test_x
    worst = float(_cosine(test_vectors[reference], test_vectors["openvino-bf16"]).min())
    return accuracy[reference], accuracy["openvino-bf16"], worst


@pytest.mark.skipif("openvino" not in available_runtimes(), reason="openvino is not installed")
@pytest.mark.slow
def test_head_on_bf16_bottlenecks_scores_like_fp32_small(backbone, shared_cache_dir, fashion_dir,
                                                         fashion_holdout_dir):
    """Fast version: 300 training and 100 test images (one test image is a whole point here).

    The fp32 side is OpenVINO fp32, which matches PyTorch fp32 to a cosine of
    0.9999 (test above) at several times its speed; the slow test below uses
    PyTorch itself.
    """
    fp32, bf16, worst = _compare_heads(backbone, "openvino-fp32", shared_cache_dir, fashion_dir,
                                       fashion_holdout_dir)
    assert worst >= 0.99
    assert abs(fp32 - bf16) <= 0.02, (fp32, bf16)
    assert fp32 > 0.6  # the head learned something real


@pytest.mark.slow
@pytest.mark.skipif("openvino" not in available_runtimes(), reason="openvino is not installed")
def test_head_on_bf16_bottlenecks_scores_like_torch_fp32(backbone, tmp_path_factory):
    """1,000 training and 1,000 test Fashion-MNIST images: within 0.5 points (5 test images)."""
    from headstart.datasets import write_fashion_mnist

    root = tmp_path_factory.mktemp("fashion-large")
    train = write_fashion_mnist(root / "train", per_class=100, offset=500).path
    test = write_fashion_mnist(root / "test", per_class=100, split="test", offset=200).path
    fp32, bf16, worst = _compare_heads(backbone, "torch-fp32", root / "cache", train, test)
    assert worst >= 0.99
    assert abs(fp32 - bf16) <= 0.005, (fp32, bf16)


@pytest.mark.slow
def test_vectors_from_different_numerics_never_mix(backbone, fashion_dir, tmp_path):
    """Same images, same cache: another runtime or precision computes its own vectors."""
    from headstart.bench import list_image_records
    from headstart.cache import BottleneckCache
    from headstart.features import compute_bottlenecks, extractor_fingerprint

    records = list_image_records(fashion_dir)[:12]
    choices = [RuntimeChoice(*c) for c in CPU_CHOICES if c[0] in available_runtimes()]
    assert len({extractor_fingerprint(backbone, c) for c in choices}) == len(choices)
    with BottleneckCache(tmp_path) as cache:
        first = {}
        for choice in choices:
            result = compute_bottlenecks(records, backbone, cache, runtime=choice, progress=False)
            assert (result.computed, result.cached) == (12, 0), choice
            assert result.runtime == choice and result.extractor == extractor_fingerprint(backbone, choice)
            first[choice] = result.vectors
        for choice in choices:
            again = compute_bottlenecks(records, backbone, cache, runtime=choice, progress=False)
            assert (again.computed, again.cached) == (0, 12)
            np.testing.assert_array_equal(again.vectors, first[choice])
        described = {(e.description["runtime"], e.description["precision"]) for e in cache.stats().extractors}
    assert described == {(c.runtime, c.precision) for c in choices}
    if len(choices) > 1:  # different numerics really are different numbers
        assert not np.array_equal(first[choices[0]], first[choices[-1]])


# ------------------------------------------------------------------ CUDA


@pytest.fixture(scope="module")
def photo_batch(photos, backbone) -> np.ndarray:
    """The colour photos alone, decoded as headstart does (no dataset needed)."""
    import io

    from PIL import Image

    from headstart.data import load_image

    out = []
    for array in photos.values():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=92)
        out.append(load_image(buffer.getvalue(), backbone.preprocessing))
    return np.stack(out * 3)


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_fp16_agrees_with_torch_fp32(backbone, model_dir, photo_batch, compile):
    if not cuda_available():
        pytest.skip("no CUDA GPU")
    reference = create_runner(backbone, RuntimeChoice("torch", "fp32"), model_dir)(photo_batch)
    runner = create_runner(backbone, resolve_runtime("cuda", "fp16"), model_dir, compile=compile)
    vectors = runner(photo_batch)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert _cosine(vectors, reference).min() >= 0.99
    again = runner(photo_batch[:5])  # a short batch is padded to the shape already tuned for
    assert again.shape == (5, reference.shape[1])
    assert _cosine(again, vectors[:5]).min() >= 0.999
