"""Decoding: headstart.data.decode (load_image and Preprocessing), on real photos."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, JpegImagePlugin

from headstart.data import decode
from headstart.data import DEFAULT_MAX_PIXELS, Preprocessing, load_image
from headstart.errors import ImageError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def solid(size: tuple[int, int], color, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def reference_load(img: Image.Image, prep: Preprocessing, encode) -> np.ndarray:
    """load_image of an already-fixed RGB image, via a lossless PNG."""
    return load_image(encode(img.convert("RGB"), "PNG"), prep)


# --------------------------------------------------------------------------- geometry


@pytest.fixture(scope="module")
def timm_data():
    """timm's data module (its import, torch included, is the slow part)."""
    return pytest.importorskip("timm.data")


def timm_eval(timm_data, path: Path, input_size: int, crop_pct: float, interpolation: str) -> np.ndarray:
    """timm's own evaluation transform (its Resize and CenterCrop) applied to the file at ``path``."""
    transform = timm_data.create_transform(
        input_size=input_size, crop_pct=crop_pct, interpolation=interpolation, is_training=False
    )
    to_tensor = ("MaybeToTensor", "ToTensor", "Normalize")
    geometry = [t for t in transform.transforms if type(t).__name__ not in to_tensor]
    assert [type(t).__name__ for t in geometry] == ["Resize", "CenterCrop"]
    expected = Image.open(path).convert("RGB")
    for t in geometry:
        expected = t(expected)
    return np.asarray(expected, dtype=np.uint8)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("input_size, crop_pct", [(224, 0.875), (160, 1.0)])
def test_upscaling_matches_timm_eval_transform(timm_data, photos, encode, tmp_path, interpolation, input_size,
                                               crop_pct):
    """Images smaller than the network input (Fashion-MNIST's 28x28, thumbnails): timm's pixels."""
    prep = Preprocessing(input_size, crop_pct, interpolation, (0.5,) * 3, (0.5,) * 3)
    for name, size in (("chelsea", (135, 90)), ("coffee", (60, 40)), ("astronaut", (28, 28))):
        path = tmp_path / f"{name}.png"
        path.write_bytes(encode(Image.fromarray(photos[name]).resize(size), "PNG"))
        got = load_image(path, prep)
        assert got.shape == (input_size, input_size, 3) and got.dtype == np.uint8
        expected = timm_eval(timm_data, path, input_size, crop_pct, interpolation)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("input_size, crop_pct", [(224, 0.875), (160, 1.0)])
def test_downscaling_stays_within_a_grey_level_of_timm(timm_data, photos, encode, tmp_path, interpolation,
                                                       input_size, crop_pct):
    """Photos larger than the input are resampled with OpenCV (headstart.data.resize), not Pillow:
    on average within about a grey level of timm's (bicubic: 0.3-1.1 here; bilinear, whose
    Pillow filter widens with the scale, up to 2), never far from it.  Nearest neighbour,
    which has no antialiasing, is timm's exactly."""
    prep = Preprocessing(input_size, crop_pct, interpolation, (0.5,) * 3, (0.5,) * 3)
    for name in ("chelsea", "coffee", "astronaut"):
        path = tmp_path / f"{name}.png"
        path.write_bytes(encode(photos[name], "PNG"))
        got = load_image(path, prep).astype(int)
        diff = np.abs(got - timm_eval(timm_data, path, input_size, crop_pct, interpolation).astype(int))
        if interpolation == "nearest":
            assert diff.max() == 0
        else:
            mean, tail = (1.25, 16) if interpolation == "bicubic" else (2.0, 28)
            assert diff.mean() < mean, f"{name}: mean difference {diff.mean():.2f}"
            assert np.percentile(diff, 99.9) <= tail, f"{name}: 99.9th percentile {np.percentile(diff, 99.9)}"


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_downscaling_is_antialiased(interpolation, encode):
    """One-pixel stripes shrunk 1.7 times: a resampler without antialiasing turns them
    into a moire of black and white bands (standard deviation ~80); an antialiased one
    into nearly flat grey."""
    stripes = np.where(np.arange(500) % 2 == 0, 255, 0).astype(np.uint8)
    image = np.repeat(np.repeat(stripes[None, :, None], 375, axis=0), 3, axis=2)
    prep = Preprocessing(224, 1.0, interpolation, (0.5,) * 3, (0.5,) * 3)
    out = load_image(encode(image, "PNG"), prep).astype(float)
    assert abs(out.mean() - 127.5) < 3
    assert out.std() < 30, f"aliasing: standard deviation {out.std():.1f}"


def test_downscaled_bottlenecks_agree_with_timms_transform(timm_data, photos, encode, tmp_path):
    """What matters of the resampler: the network sees the same thing.  Photo-sized JPEGs
    (500x375 and 375x500 crops of real photos) through headstart's decoder and through
    timm's transform give bottlenecks with cosine >= 0.98 each (0.995 on average), about
    as close as OpenVINO bf16 is to PyTorch fp32 on the same images."""
    import torch

    from headstart.backbones import resolve_backbone
    from headstart.networks import create_feature_extractor

    backbone = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
    prep = backbone.preprocessing
    rng = np.random.default_rng(0)
    ours, timms = [], []
    for name, photo in photos.items():
        for i in range(4):
            h, w = photo.shape[:2]
            top, left = int(rng.integers(0, h // 4)), int(rng.integers(0, w // 4))
            crop = Image.fromarray(photo[top : top + 3 * h // 4, left : left + 3 * w // 4])
            path = tmp_path / f"{name}{i}.jpg"
            path.write_bytes(encode(crop.resize((500, 375) if i % 2 else (375, 500)), "JPEG", quality=90))
            ours.append(load_image(path, prep))
            timms.append(timm_eval(timm_data, path, prep.input_size, prep.crop_pct, prep.interpolation))
    extractor = create_feature_extractor(backbone)
    with torch.no_grad():
        a, b = (extractor(torch.from_numpy(np.stack(x))).double().numpy() for x in (ours, timms))
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.98 and cosine.mean() >= 0.995, cosine


@pytest.mark.parametrize("size", [(10, 10), (224, 224), (256, 300), (1000, 257), (1, 5000), (6000, 2)])
def test_any_size_gives_the_input_size(size, prep, encode):
    img = Image.fromarray(skimage.data.astronaut()).resize(size)
    out = load_image(encode(img, "PNG"), prep)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.writeable


def test_bytes_and_path_give_the_same_pixels(photos, prep, encode, tmp_path):
    payload = encode(photos["chelsea"], "JPEG", quality=90)
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(payload)
    assert np.array_equal(load_image(path, prep), load_image(payload, prep))
    assert np.array_equal(load_image(str(path), prep), load_image(payload, prep))


def test_large_jpeg_is_decoded_at_reduced_scale(prep, encode, monkeypatch):
    big = Image.fromarray(skimage.data.astronaut()).resize((2048, 1536), Image.Resampling.BICUBIC)
    payload = encode(big, "JPEG", quality=92)
    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        drafts.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fast = load_image(payload, prep)
    assert drafts == [((256, 256), (512, 384))]  # libjpeg decoded at 1/4 scale, still >= 256
    full = Image.open(io.BytesIO(payload)).convert("RGB").resize((341, 256), Image.Resampling.BICUBIC)
    full = np.asarray(full)
    full = full[16:240, 58:282]
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 2.5


@pytest.mark.parametrize("save_args", [
    {"quality": 90},  # 4:2:0, the common camera/web JPEG
    {"quality": 75, "progressive": True},
    {"quality": 95, "subsampling": 0},  # 4:4:4
])
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_fast_jpeg_decode_gives_pils_pixels(photos, encode, save_args, scale):
    """The libjpeg-turbo path that skips PIL's copy must not change a pixel."""
    payload = encode(photos["coffee"], "JPEG", **save_args)
    img = Image.open(io.BytesIO(payload))
    img.draft("RGB", (600 // scale, 400 // scale))
    assert img.size == (600 // scale, 400 // scale)
    assert np.array_equal(decode._decode_jpeg(payload, img.size), np.asarray(img.convert("RGB")))


def test_photos_take_the_fast_jpeg_path(photos, encode, prep, monkeypatch):
    decoded = []
    real = decode._decode_jpeg
    monkeypatch.setattr(decode, "_decode_jpeg", lambda *args: decoded.append(real(*args)) or decoded[-1])
    load_image(encode(photos["coffee"], "JPEG", quality=90), prep)
    assert len(decoded) == 1 and decoded[0] is not None and decoded[0].shape == (400, 600, 3)


def test_jpeg_libjpeg_warns_about_is_left_to_pil(photos, encode, prep):
    """A scan cut short but closed by an end marker: libjpeg only warns, PIL decodes the
    rest as grey, as it always did; the fast path declines rather than guess."""
    payload = encode(photos["chelsea"], "JPEG", quality=90)
    damaged = payload[: len(payload) // 2] + b"\xff\xd9"
    assert decode._decode_jpeg(damaged, (451, 300)) is None
    decoded = Image.open(io.BytesIO(damaged)).convert("RGB")
    assert np.array_equal(load_image(damaged, prep), reference_load(decoded, prep, encode))


def test_is_thread_safe_and_leaves_pil_limit_alone(photos, prep, encode):
    limit = Image.MAX_IMAGE_PIXELS
    payloads = [encode(p, fmt) for p in photos.values() for fmt in ("PNG", "JPEG")] * 3
    sequential = [load_image(p, prep) for p in payloads]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda p: load_image(p, prep), payloads))
    assert all(np.array_equal(a, b) for a, b in zip(sequential, parallel))
    assert Image.MAX_IMAGE_PIXELS == limit


# --------------------------------------------------------------------------- EXIF orientation

# What each EXIF orientation asks a viewer to do (EXIF 2.3, tag 0x0112), written out
# independently of the code under test.
UPRIGHT = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,  # rotate 90 degrees clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def with_orientation(img: Image.Image, orientation: int, encode) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(orientation, prep, encode):
    stored = Image.fromarray(skimage.data.astronaut()).crop((100, 0, 400, 200))  # 300x200, not symmetric
    payload = with_orientation(stored, orientation, encode)
    decoded = Image.open(io.BytesIO(payload)).convert("RGB")  # PIL alone ignores the tag
    method = UPRIGHT[orientation]
    upright = decoded if method is None else decoded.transpose(method)
    assert np.array_equal(load_image(payload, prep), reference_load(upright, prep, encode))


def test_orientation_6_turns_the_top_to_the_right(prep, encode):
    stored = solid((3000, 2000), BLUE)  # large: decoded through draft
    stored.paste(RED, (0, 0, 3000, 1000))  # top half red
    out = load_image(with_orientation(stored, 6, encode), prep).astype(int)
    assert np.abs(out[112, 200] - RED).max() < 8  # right half is red
    assert np.abs(out[112, 20] - BLUE).max() < 8


# --------------------------------------------------------------------------- modes


def test_rgba_is_composited_on_white(prep, encode):
    img = solid((100, 100), (0, 0, 0, 0), "RGBA")  # transparent black ...
    img.paste((0, 0, 255, 255), (50, 0, 100, 100))  # ... and opaque blue on the right
    out = load_image(encode(img, "PNG"), prep)
    assert tuple(out[112, 10]) == WHITE and tuple(out[112, 210]) == BLUE
    half = load_image(encode(solid((64, 64), (0, 0, 0, 128), "RGBA"), "PNG"), prep)
    assert np.all(np.abs(half.astype(int) - 127) <= 1)


def test_la_is_composited_on_white(prep, encode):
    out = load_image(encode(solid((64, 64), (0, 0), "LA"), "PNG"), prep)
    assert np.all(out == 255)


def test_palette_png(photos, prep, encode):
    palette = Image.fromarray(photos["chelsea"]).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    payload = encode(palette, "PNG")
    assert Image.open(io.BytesIO(payload)).mode == "P"
    assert np.array_equal(load_image(payload, prep), reference_load(palette, prep, encode))


def test_palette_with_transparency(prep, encode):
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (32, 0, 64, 64))  # right half: index 1 = red
    payload = encode(img, "PNG", transparency=0)  # index 0 (black) is transparent
    assert "transparency" in Image.open(io.BytesIO(payload)).info
    out = load_image(payload, prep)
    assert tuple(out[112, 10]) == WHITE and tuple(out[112, 210]) == RED


def test_16_bit_png_is_scaled_not_clipped(prep, encode):
    pixels = np.full((64, 64), 0x4000, dtype=np.uint16)
    pixels[:, 32:] = 0xC000
    payload = encode(pixels, "PNG")
    assert Image.open(io.BytesIO(payload)).mode.startswith("I")
    out = load_image(payload, prep)
    assert tuple(out[112, 10]) == (64, 64, 64)  # 0x4000 * 255 / 65535 = 63.75
    assert tuple(out[112, 210]) == (191, 191, 191)  # 0xC000 * 255 / 65535 = 191.25


def test_grayscale(photos, prep, encode):
    gray = Image.fromarray(photos["coffee"]).convert("L")
    out = load_image(encode(gray, "JPEG"), prep)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert out.std() > 20  # a photo, not a blank


def test_cmyk_jpeg(photos, prep, encode):
    cmyk = Image.fromarray(photos["chelsea"]).convert("CMYK")
    payload = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(payload)).mode == "CMYK"
    out = load_image(payload, prep).astype(int)
    assert np.abs(out - load_image(encode(photos["chelsea"], "PNG"), prep)).mean() < 3


@pytest.mark.parametrize("fmt, save_args", [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_uses_the_first_frame(fmt, save_args, prep, encode):
    frames = [solid((64, 64), c) for c in (RED, (0, 255, 0), BLUE)]
    payload = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **save_args)
    assert getattr(Image.open(io.BytesIO(payload)), "n_frames", 1) == 3
    out = load_image(payload, prep)
    assert np.all(out == RED)


# --------------------------------------------------------------------------- bad images


def test_zero_bytes(tmp_path, prep):
    empty = tmp_path / "empty.jpg"
    empty.touch()
    with pytest.raises(ImageError, match="empty file") as err:
        load_image(empty, prep)
    assert str(empty) in str(err.value) and err.value.hint
    with pytest.raises(ImageError, match=r"^upload\.jpg: empty file"):
        load_image(b"", prep, name="upload.jpg")


def test_truncated_jpeg(photos, prep, encode, tmp_path):
    payload = encode(photos["chelsea"], "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ImageError) as err:
        load_image(path, prep)
    message = str(err.value)
    assert "truncated JPEG" in message and "cut.jpg" in message and "\n" not in message
    assert err.value.reason == "truncated JPEG: the file ends before the image does"  # said once, no PIL buffer counts


def test_text_file_named_jpg(tmp_path, prep):
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: eggs, milk\n")
    with pytest.raises(ImageError, match="not an image") as err:
        load_image(path, prep)
    assert "notes.jpg" in str(err.value)


def test_missing_file_and_folder(tmp_path, prep):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.jpg", prep)
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path, prep)


def test_unreadable_file(photos, prep, encode, tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    path.write_bytes(encode(photos["chelsea"], "PNG"))
    if os.geteuid() != 0:
        path.chmod(0)  # a real permission error
    else:  # root reads anything: refuse this one file where the decoder reads it
        real_read_bytes = Path.read_bytes

        def refusing(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", refusing)
    try:
        with pytest.raises(ImageError, match="locked.png: permission denied"):
            load_image(path, prep)
    finally:
        path.chmod(0o644)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no data: a bomb's header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(prep, monkeypatch):
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or real_load(self))
    with pytest.raises(ImageError, match="400000000 pixels is over the limit of 100000000"):
        load_image(header_only_png(20000, 20000), prep, name="bomb.png")
    assert loads == []
    assert DEFAULT_MAX_PIXELS == 100_000_000


def test_max_pixels_applies_to_real_photos(photos, prep, encode):
    payload = encode(photos["chelsea"], "JPEG")
    with pytest.raises(ImageError, match="135300 pixels is over the limit of 100000"):
        load_image(payload, prep, max_pixels=100_000)
    assert load_image(payload, prep, max_pixels=451 * 300).shape == (224, 224, 3)


def test_pils_own_limit_does_not_apply(photos, prep, encode, monkeypatch):
    # With this PIL limit, Image.open alone would refuse the photo (> 2 * limit); max_pixels rules instead.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(encode(photos["chelsea"], "PNG"), prep).shape == (224, 224, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000


# --------------------------------------------------------------------------- never anything but ImageError

SMALL_PREP = Preprocessing(32, 0.875, "bilinear", (0.5,) * 3, (0.5,) * 3)
_CHELSEA = Image.fromarray(skimage.data.chelsea()).resize((90, 60))
_SAMPLES = {}
for _fmt, _args in [("JPEG", {"quality": 80}), ("PNG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {})]:
    _buf = io.BytesIO()
    _CHELSEA.save(_buf, _fmt, **_args)
    _SAMPLES[_fmt] = _buf.getvalue()
_MAGIC = [
    b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"BM", b"II*\0", b"MM\0*",
]


def decodes_or_image_error(payload: bytes) -> None:
    try:
        out = load_image(payload, SMALL_PREP, max_pixels=4_000_000)
    except ImageError as err:
        assert "\n" not in str(err) and err.reason
    else:
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(st.binary(max_size=512))
def test_random_bytes(payload):
    decodes_or_image_error(payload)


@fuzz
@given(st.sampled_from(_MAGIC), st.binary(max_size=256))
def test_random_bytes_after_a_magic_number(magic, rest):
    decodes_or_image_error(magic + rest)


@fuzz
@given(st.sampled_from(sorted(_SAMPLES)), st.floats(0, 1))
def test_truncated_real_images(fmt, fraction):
    payload = _SAMPLES[fmt]
    decodes_or_image_error(payload[: int(len(payload) * fraction)])


@fuzz
@given(
    st.sampled_from(sorted(_SAMPLES)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_corrupted_real_images(fmt, edits):
    payload = bytearray(_SAMPLES[fmt])
    for where, value in edits:
        payload[int(where * len(payload))] = value
    decodes_or_image_error(bytes(payload))


# --------------------------------------------------------------------------- Preprocessing


def test_preprocessing_round_trips_through_json(prep):
    again = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert again == prep and again.fingerprint() == prep.fingerprint()
    assert prep.resize_size == 256


def test_numpy_input_size_is_stored_as_a_python_int(prep):
    """Sizes often come out of numpy arithmetic; they must still go into JSON and the cache key."""
    from_numpy = Preprocessing(np.int64(224), prep.crop_pct, prep.interpolation, prep.mean, prep.std)
    assert type(from_numpy.input_size) is int and from_numpy == prep
    assert from_numpy.fingerprint() == prep.fingerprint()


def test_fingerprint_is_short_stable_and_sensitive(prep, monkeypatch):
    fp = prep.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    same = Preprocessing(224, 0.875, "bicubic", [0.485, 0.456, 0.406], (0.229, 0.224, 0.225))
    assert same.fingerprint() == fp
    variants = [
        Preprocessing(240, 0.875, "bicubic", prep.mean, prep.std),
        Preprocessing(224, 0.9, "bicubic", prep.mean, prep.std),
        Preprocessing(224, 0.875, "bilinear", prep.mean, prep.std),
        Preprocessing(224, 0.875, "bicubic", (0.5, 0.5, 0.5), prep.std),
        Preprocessing(224, 0.875, "bicubic", prep.mean, (0.5, 0.5, 0.5)),
    ]
    assert len({fp, *(v.fingerprint() for v in variants)}) == 6
    monkeypatch.setattr(decode, "DECODER_VERSION", decode.DECODER_VERSION + "-next")
    assert prep.fingerprint() != fp
    assert Preprocessing(224, 1, "bicubic", (0, 0, 0), (1, 1, 1)).to_dict()["crop_pct"] == 1.0


@pytest.mark.parametrize(
    "field, value",
    [
        ("input_size", "224"), ("input_size", 224.0), ("input_size", 0), ("input_size", True),
        ("crop_pct", "0.875"), ("crop_pct", 0), ("crop_pct", 1.5), ("crop_pct", float("nan")),
        ("interpolation", "lanczos"), ("interpolation", 3),
        ("mean", (0.5, 0.5)), ("mean", "abc"), ("std", (0.2, 0.0, 0.2)), ("std", (0.2, None, 0.2)),
    ],
)
def test_from_dict_names_the_bad_field(prep, field, value):
    d = prep.to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=field):
        Preprocessing.from_dict(d)


def test_from_dict_refuses_missing_and_unknown_fields(prep):
    d = prep.to_dict()
    del d["std"]
    with pytest.raises(ValueError, match="std"):
        Preprocessing.from_dict(d)
    with pytest.raises(ValueError, match="resize_mode"):
        Preprocessing.from_dict({**prep.to_dict(), "resize_mode": "squash"})
    with pytest.raises(ValueError):
        Preprocessing.from_dict([224])
