"""GPU decoding (headstart.gpu_decode, gpu_read, gpu_geometry).

The geometry and the routing are torch code that runs on any device, so most
of these tests hold them against the CPU decoder (:func:`headstart.data.load_image`)
on CPU tensors, where torchvision decodes JPEGs with the same libjpeg-turbo.
The tests marked ``gpu`` run the same checks through nvJPEG on a CUDA device
and skip cleanly without one.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data import Preprocessing, load_image
from headstart.errors import ImageError, UsageError
from headstart.gpu_decode import decode_files, decoder_id, require_gpu_decode, run_gpu_pipeline
from headstart.gpu_geometry import apply_geometry, draft_factor, plan_geometry
from headstart.gpu_read import nvjpeg_can_decode, read_jpeg_header

torch = pytest.importorskip("torch")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The CPU decoder lets libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale; the GPU
# path decodes at full size and takes block means.  Measured on the sample photos:
# 0.26-0.29 grey levels on average at 1/4 and 1/8, up to 0.39 at 1/2, 0.61 for a
# 1/2 reduction with no resize after it (astronaut, 512 px to 256).
DRAFT_MEAN_TOLERANCE = 0.75


def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _jpeg(array: np.ndarray, size: tuple[int, int] | None = None, *, orientation: int | None = None,
          quality: int = 90, **save) -> bytes:
    img = Image.fromarray(array)
    if size is not None:
        img = img.resize(size, Image.Resampling.BICUBIC)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, **save)
    return buffer.getvalue()


def _to_tensor(pixels: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None]


def _difference(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    d = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return float(d.mean()), int(d.max())


@pytest.fixture(scope="module")
def photo_jpegs(tmp_path_factory: pytest.TempPathFactory, photos) -> list[Path]:
    """The sample photos as JPEGs: native size, 500x375, 1024x768 (1/2 draft),
    2048x1536 (1/4), one EXIF-rotated, one progressive, and a 12-megapixel
    enlargement of the cat (1/8 draft), as a phone would take it."""
    out = tmp_path_factory.mktemp("gpu-photos")
    files: dict[str, bytes] = {}
    for name, array in photos.items():
        files[f"{name}.jpg"] = _jpeg(array)
        files[f"{name}_500.jpg"] = _jpeg(array, (500, 375))
        files[f"{name}_1024.jpg"] = _jpeg(array, (1024, 768))
    files["coffee_2048.jpg"] = _jpeg(photos["coffee"], (2048, 1536))
    files["chelsea_rot6.jpg"] = _jpeg(photos["chelsea"], (640, 427), orientation=6)
    files["astronaut_progressive.jpg"] = _jpeg(photos["astronaut"], progressive=True)
    files["chelsea_12mp.jpg"] = _jpeg(photos["chelsea"], (4032, 3024), quality=92)
    paths = []
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    return paths


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory: pytest.TempPathFactory, photos) -> list[Path]:
    """One batch of everything the GPU path must route: JPEGs for nvJPEG, grey,
    CMYK and truncated JPEGs, PNGs for the device resize and for the CPU, a GIF,
    a text file, an empty file and a missing one."""
    out = tmp_path_factory.mktemp("gpu-mixed")
    cat = Image.fromarray(photos["chelsea"])

    def save(name: str, img: Image.Image, fmt: str, **kw) -> Path:
        img.save(out / name, fmt, **kw)
        return out / name

    paths = [save("cat.jpg", cat, "JPEG", quality=90),
             save("grey.jpg", cat.convert("L"), "JPEG"),
             save("cmyk.jpg", cat.convert("CMYK"), "JPEG"),
             save("grey.png", cat.convert("L"), "PNG"),
             save("alpha.png", cat.convert("RGBA"), "PNG"),
             save("tiny.png", cat.resize((28, 28)), "PNG"),
             save("palette.gif", cat.convert("P"), "GIF"),
             save("coffee.jpg", Image.fromarray(photos["coffee"]), "JPEG", quality=80)]
    (out / "truncated.jpg").write_bytes((out / "cat.jpg").read_bytes()[:4000])
    (out / "notes.jpg").write_text("not an image")
    (out / "empty.png").write_bytes(b"")
    paths[3:3] = [out / "truncated.jpg", out / "notes.jpg"]
    paths += [out / "empty.png", out / "missing.jpg"]
    return paths


@pytest.fixture(scope="module")
def lite0():
    """The real EfficientNet-Lite0 feature extractor (uint8 NHWC in) and its preprocessing."""
    from headstart.backbones import resolve_backbone
    from headstart.networks import create_feature_extractor

    backbone = resolve_backbone("efficientnet_lite0")
    return create_feature_extractor(backbone), backbone.preprocessing


# ----------------------------------------------------------------------------- geometry on CPU tensors


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1200, 900), (100, 80), (28, 28), (2000, 50),
                                  (224, 224), (256, 300), (513, 257)])
def test_geometry_is_the_cpu_decoders_on_decoded_pixels(photos, interpolation, size):
    """Shrinking (2x supersampling, area), enlarging (Pillow), crop-only and the
    extreme-aspect box: the same pixels as load_image, up to OpenCV's rounding."""
    from headstart.data import resize_center_crop

    prep = Preprocessing(224, 0.875, interpolation, MEAN, STD)
    pixels = np.asarray(Image.fromarray(photos["astronaut"]).resize(size, Image.Resampling.BILINEAR))
    expected = resize_center_crop(pixels, prep)
    geometry = plan_geometry(*size, prep)
    got = apply_geometry(_to_tensor(pixels), geometry)[0].permute(1, 2, 0).numpy()
    mean, worst = _difference(got, expected)
    assert got.shape == expected.shape
    # OpenCV's fixed-point linear kernel rounds differently from float on about 1 pixel in 9.
    assert mean <= (0.15 if interpolation == "bilinear" and geometry.method == "supersample" else 0.01)
    assert worst <= 1


def test_enlarging_is_pillow_bit_for_bit(photos, prep):
    from headstart.data import resize_center_crop

    pixels = np.asarray(Image.fromarray(photos["coffee"]).resize((61, 37)))
    for box_case in (pixels, np.ascontiguousarray(pixels[:2])):  # the second: a 61x2 strip, resampled as a box
        got = apply_geometry(_to_tensor(box_case), plan_geometry(box_case.shape[1], box_case.shape[0], prep))
        assert np.array_equal(got[0].permute(1, 2, 0).numpy(), resize_center_crop(box_case, prep))


def test_draft_factor_is_pils():
    for w, h in [(4032, 3024), (1024, 768), (500, 375), (2048, 1536), (1791, 4000), (300, 200)]:
        img = Image.new("RGB", (w, h))
        buffer = io.BytesIO()
        img.save(buffer, "JPEG")
        opened = Image.open(io.BytesIO(buffer.getvalue()))
        opened.draft("RGB", (256, 256))
        factor = draft_factor(w, h, 256)
        assert opened.size == (-(-w // factor), -(-h // factor))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_the_cpu_decoder(photos, prep, tmp_path, orientation):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_jpeg(photos["chelsea"], (400, 300), orientation=orientation))
    header = read_jpeg_header(path.read_bytes())
    assert header is not None and header.orientation == orientation and nvjpeg_can_decode(header)
    batch = decode_files([path], prep, device="cpu")
    assert batch.routes["nvjpeg"] == 1
    mean, worst = _difference(batch.images[0].numpy(), load_image(path, prep))
    assert mean <= 0.01 and worst <= 1  # torch's float cubic against OpenCV's fixed point: a pixel or two


def test_draft_emulation_stays_within_the_measured_tolerance(photo_jpegs, prep):
    batch = decode_files(photo_jpegs, prep, device="cpu")
    assert batch.routes == {"nvjpeg": len(photo_jpegs), "pixels": 0, "cpu": 0, "skipped": 0}
    for path, got in zip(photo_jpegs, batch.images.numpy()):
        mean, _ = _difference(got, load_image(path, prep))
        header = read_jpeg_header(path.read_bytes())
        drafted = draft_factor(header.width, header.height, prep.resize_size) > 1
        assert mean <= (DRAFT_MEAN_TOLERANCE if drafted else 0.01), path.name


# ----------------------------------------------------------------------------- routing


def test_headers_route_each_kind_of_jpeg(photos):
    cat = Image.fromarray(photos["chelsea"])

    def header_of(img: Image.Image, **save):
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", **save)
        return read_jpeg_header(buffer.getvalue()), buffer.getvalue()

    baseline, data = header_of(cat)
    assert (baseline.width, baseline.height, baseline.components) == cat.size + (3,)
    assert nvjpeg_can_decode(baseline) and not nvjpeg_can_decode(baseline, max_pixels=1000)
    assert read_jpeg_header(data[: len(data) // 2]).complete is False  # truncated: the CPU decides
    assert nvjpeg_can_decode(header_of(cat, progressive=True)[0])
    assert not nvjpeg_can_decode(header_of(cat.convert("L"))[0])
    assert not nvjpeg_can_decode(header_of(cat.convert("CMYK"))[0])
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    assert header_of(cat, xmp=xmp)[0].orientation is None  # Pillow would rotate by the XMP: leave it to Pillow
    assert read_jpeg_header(b"\x89PNG\r\n\x1a\n" + bytes(40)) is None
    assert read_jpeg_header(b"\xff\xd8\xff\xe0\x00") is None


def test_a_mixed_batch_keeps_its_order_and_the_cpu_decoders_reasons(mixed_files, prep):
    batch = decode_files(mixed_files, prep, device="cpu")
    assert batch.routes == {"nvjpeg": 2, "pixels": 2, "cpu": 4, "skipped": 4}
    expected_skips = []
    kept = []
    for position, path in enumerate(mixed_files):
        try:
            kept.append((position, load_image(path, prep)))
        except ImageError as exc:
            expected_skips.append((position, exc.reason))
    assert list(batch.skipped) == expected_skips
    assert list(batch.positions) == [p for p, _ in kept]
    for row, (_, expected) in enumerate(kept):
        assert _difference(batch.images[row].numpy(), expected)[1] <= 1


def test_decode_gpu_says_what_it_needs():
    with pytest.raises(UsageError, match="needs the cuda runtime") as err:
        require_gpu_decode("openvino")
    assert err.value.hint
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="not available: no CUDA GPU"):
            require_gpu_decode("cuda")
    assert decoder_id().startswith("nvjpeg-")


# ----------------------------------------------------------------------------- the pipeline, on the CPU


@pytest.mark.slow
def test_pipeline_vectors_agree_with_the_cpu_decoders(photo_jpegs, mixed_files, lite0):
    """Real EfficientNet-Lite0 on the CPU: batches of 4 with a short, padded last
    one, a file that is skipped in the middle, and vectors within the project's
    tolerance of the CPU decoder's (cosine >= 0.98 each, >= 0.995 on average)."""
    module, prep = lite0
    by_name = {p.name: p for p in mixed_files}
    paths = photo_jpegs[:6] + [by_name["missing.jpg"]] + photo_jpegs[-3:] + [by_name["tiny.png"]]
    got: dict[int, np.ndarray] = {}
    skipped: list[tuple[int, str]] = []
    shapes: list[tuple[int, ...]] = []

    def network(images):
        shapes.append(tuple(images.shape))
        return module(images)

    stats = run_gpu_pipeline(paths, prep, network, 4, lambda pos, v: got.update(zip(pos, v)),
                             lambda pos, reason: skipped.append((pos, reason)), device="cpu")
    assert skipped == [(6, "file not found")]
    assert sorted(got) == [p for p in range(len(paths)) if p != 6]
    assert set(shapes) == {(4, prep.input_size, prep.input_size, 3)}
    assert (stats.images, stats.skipped, stats.batches) == (10, 1, 3)
    with torch.inference_mode():
        reference = np.stack([module(torch.from_numpy(load_image(paths[p], prep))[None])[0].numpy()
                              for p in sorted(got)])
    cosine = _cosine(np.stack([got[p] for p in sorted(got)]), reference)
    assert cosine.min() >= 0.98 and cosine.mean() >= 0.995


def test_pipeline_stops_cleanly_when_the_consumer_fails(photo_jpegs, prep):
    def boom(positions, vectors):
        raise RuntimeError("disk full")

    def network(images):
        return images.reshape(images.shape[0], -1)[:, :8].float()

    with pytest.raises(RuntimeError, match="disk full"):
        run_gpu_pipeline(photo_jpegs[:6], prep, network, 2, boom, lambda p, r: None, device="cpu")
    assert not [t for t in threading.enumerate() if t.name.startswith(("headstart-gpu", "headstart-read"))]


# ----------------------------------------------------------------------------- on a CUDA GPU


@pytest.mark.gpu
def test_nvjpeg_pixels_are_close_to_the_cpu_decoders(photo_jpegs, prep):
    _cuda()
    batch = decode_files(photo_jpegs, prep, device="cuda")
    assert batch.images.device.type == "cuda" and batch.routes["nvjpeg"] == len(photo_jpegs)
    for path, got in zip(photo_jpegs, batch.images.cpu().numpy()):
        mean, _ = _difference(got, load_image(path, prep))
        assert mean < 1.5, f"{path.name}: {mean:.3f} grey levels from the CPU decoder"


@pytest.mark.gpu
def test_nvjpeg_batch_falls_back_in_place(mixed_files, prep):
    _cuda()
    on_cpu = decode_files(mixed_files, prep, device="cpu")
    on_gpu = decode_files(mixed_files, prep, device="cuda")
    assert on_gpu.routes == on_cpu.routes and on_gpu.skipped == on_cpu.skipped
    assert on_gpu.positions == on_cpu.positions
    for row in range(len(on_gpu.positions)):
        assert _difference(on_gpu.images[row].cpu().numpy(), on_cpu.images[row].numpy())[0] < 1.5


@pytest.mark.gpu
def test_gpu_pipeline_vectors_agree_with_the_cpu_decoders(photo_jpegs, mixed_files):
    _cuda()
    from headstart.backbones import resolve_backbone
    from headstart.gpu_decode import prepare_cuda_module
    from headstart.networks import create_feature_extractor

    backbone = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
    prep = backbone.preprocessing
    module = prepare_cuda_module(create_feature_extractor(backbone), "fp16")
    paths = (photo_jpegs + mixed_files) * 3
    got: dict[int, np.ndarray] = {}
    skipped: list[int] = []
    stats = run_gpu_pipeline(paths, prep, module, 16, lambda pos, v: got.update(zip(pos, v)),
                             lambda pos, reason: skipped.append(pos))
    assert len(got) + len(skipped) == len(paths) and stats.nvjpeg > 0 and stats.batches == -(-len(paths) // 16)
    keep = sorted(got)
    with torch.inference_mode():
        cpu_images = torch.from_numpy(np.stack([load_image(paths[p], prep) for p in keep])).cuda()
        reference = torch.cat([module(cpu_images[i : i + 16]).float() for i in range(0, len(keep), 16)]).cpu().numpy()
    cosine = _cosine(np.stack([got[p] for p in keep]), reference)
    assert cosine.min() >= 0.98 and cosine.mean() >= 0.995
