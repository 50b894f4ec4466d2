"""The SavedModel export: encoded image bytes in, for TensorFlow Serving.

``serving_default`` takes a batch of encoded images (``image_bytes``, tf.string: JPEG,
PNG, GIF or BMP; over TF Serving's REST API each is sent as ``{"b64": ...}``), and
decodes, resizes and centre-crops each one inside the graph the way the run's
preprocessing says, then classifies it.  ``classify_images``
takes what every other export takes, uint8 RGB ``[N, S, S, 3]``; the self-check runs
through it, so the graph is compared with PyTorch on the same pixels.

What TensorFlow's decoders do differently from headstart's own (``headstart.data``):
no EXIF orientation (send upright images), and TensorFlow's bicubic/bilinear kernels
with antialiasing instead of Pillow/OpenCV's, so a few images near a decision boundary
can change label; the export measures how many (``tensorflow.serving_default_check``
in the sidecar).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import ImageRecord, Preprocessing
from .sidecar import OOD_OUTPUT_NAME, OUTPUT_NAME, ExportDescription

log = logging.getLogger("headstart")

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "classify_images"
BYTES_INPUT = "image_bytes"
_TF_RESIZE = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


def _decode_one(data: Any, prep: Preprocessing) -> Any:
    """One encoded image -> uint8 [S, S, 3]: RGB, alpha over white, shorter side resized, centre crop."""
    import tensorflow as tf

    decoded = tf.io.decode_image(data, channels=0, expand_animations=False)  # 1, 2, 3 or 4 channels
    pixels = tf.cast(decoded, tf.float32)
    channels = tf.shape(pixels)[-1]
    has_alpha = tf.equal(channels % 2, 0)  # grey + alpha, or RGBA
    alpha = tf.cond(has_alpha, lambda: pixels[..., -1:] / 255.0, lambda: tf.ones_like(pixels[..., :1]))
    color = tf.cond(has_alpha, lambda: pixels[..., :-1], lambda: pixels)
    color = tf.cond(tf.equal(tf.shape(color)[-1], 1), lambda: tf.tile(color, [1, 1, 3]), lambda: color)
    rgb = tf.ensure_shape(color * alpha + 255.0 * (1.0 - alpha), [None, None, 3])
    # headstart.data.resize_center_crop: the shorter side to resize_size (the other one truncated), then
    # a centre crop with Python's round (half to even, as tf.round).
    h, w = tf.cast(tf.shape(rgb)[0], tf.float32), tf.cast(tf.shape(rgb)[1], tf.float32)
    scale, size = float(prep.resize_size), prep.input_size
    new_h = tf.cast(tf.where(w <= h, tf.floor(scale * h / w), scale), tf.int32)
    new_w = tf.cast(tf.where(w <= h, scale, tf.floor(scale * w / h)), tf.int32)
    method = _TF_RESIZE.get(prep.interpolation, "bilinear")
    resized = tf.image.resize(rgb, tf.stack([new_h, new_w]), method=method, antialias=method != "nearest")
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    crop = resized[top : top + size, left : left + size, :]
    return tf.cast(tf.clip_by_value(tf.round(crop), 0.0, 255.0), tf.uint8)


def create_serving_module(keras_model: Any, description: ExportDescription) -> Any:
    """A tf.Module around the converted classifier with both signatures (bytes, and uint8 pixels)."""
    import tensorflow as tf

    prep = description.preprocessing
    size = prep.input_size
    names = description.output_names
    threshold = (description.unknown or {}).get("threshold")

    class Served(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="headstart_classifier")
            self.model = keras_model
            self.labels = tf.constant(list(description.labels))

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
        def classify(self, images: Any) -> dict[str, Any]:
            outputs = self.model(images)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            return dict(zip(names, outputs))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
        def serve(self, image_bytes: Any) -> dict[str, Any]:
            images = tf.map_fn(
                lambda b: _decode_one(b, prep),
                image_bytes,
                fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
            )
            out = self.classify(images)
            out["label"] = tf.gather(self.labels, tf.argmax(out[OUTPUT_NAME], axis=1))
            if OOD_OUTPUT_NAME in out and threshold is not None:
                out["unknown"] = out[OOD_OUTPUT_NAME] > threshold
            return out

    return Served()


def write_saved_model(keras_model: Any, path: Path, description: ExportDescription) -> dict[str, Any]:
    """Save the serving module at ``path`` (a directory); returns what the sidecar records about it."""
    from .tfhub_runtime import import_tensorflow, quiet_native_logs

    tf = import_tensorflow()
    module = create_serving_module(keras_model, description)
    with quiet_native_logs():
        signatures = {
            SERVING_SIGNATURE: module.serve.get_concrete_function(),
            IMAGES_SIGNATURE: module.classify.get_concrete_function(),
        }
        tf.saved_model.save(module, str(path), signatures=signatures)
    outputs = [*description.output_names, "label"]
    if description.unknown and description.unknown.get("threshold") is not None:
        outputs.append("unknown")
    return {
        "signatures": {
            SERVING_SIGNATURE: {
                "inputs": {BYTES_INPUT: "string [N]: encoded JPEG/PNG/GIF/BMP"},
                "outputs": outputs,
                "preprocessing": "decode (no EXIF orientation), alpha over white, shorter side to "
                f"{description.preprocessing.resize_size} px "
                f"({description.preprocessing.interpolation}, TensorFlow's kernel), "
                f"centre crop {description.preprocessing.input_size}",
            },
            IMAGES_SIGNATURE: {
                "inputs": {"images": "uint8 [N, H, W, 3] RGB, decoded as the sidecar's preprocessing says"},
                "outputs": list(description.output_names),
            },
        }
    }


def check_serving_bytes(
    path: Path, description: ExportDescription, records: Sequence[ImageRecord], batch_size: int = 32
) -> dict[str, Any] | None:
    """``serving_default`` on the test images' own bytes against ``classify_images`` on headstart's pixels.

    The difference is only in decoding and resizing (TensorFlow's against headstart's), so
    the top-1 agreement says how often that changes the answer.
    """
    from .export_check import decode_images
    from .tfhub_runtime import import_tensorflow, quiet_native_logs

    tf = import_tensorflow()
    if not records:
        return None
    pixels, kept = decode_images(records, description.preprocessing)
    if not kept:
        return None
    with quiet_native_logs():
        loaded = tf.saved_model.load(str(path))
    serve, classify = loaded.signatures[SERVING_SIGNATURE], loaded.signatures[IMAGES_SIGNATURE]
    by_bytes, by_pixels = [], []
    for i in range(0, len(kept), batch_size):
        payload = tf.constant([Path(r.path).read_bytes() for r in kept[i : i + batch_size]])
        by_bytes.append(serve(image_bytes=payload)[OUTPUT_NAME].numpy())
        by_pixels.append(classify(images=tf.constant(pixels[i : i + batch_size]))[OUTPUT_NAME].numpy())
    top_bytes, top_pixels = np.concatenate(by_bytes).argmax(1), np.concatenate(by_pixels).argmax(1)
    truth = np.array([description.labels.index(r.label) for r in kept])
    check = {
        "n": len(kept),
        "agreement_with_headstart_decoding": float(np.mean(top_bytes == top_pixels)),
        "accuracy": float(np.mean(top_bytes == truth)),
        "accuracy_headstart_decoding": float(np.mean(top_pixels == truth)),
    }
    log.info(
        "serving_default on the images' bytes: top-1 agreement %.1f%% with headstart's decoding (%d images)",
        100 * check["agreement_with_headstart_decoding"],
        len(kept),
    )
    return check


__all__ = [
    "BYTES_INPUT",
    "IMAGES_SIGNATURE",
    "SERVING_SIGNATURE",
    "check_serving_bytes",
    "create_serving_module",
    "write_saved_model",
]
