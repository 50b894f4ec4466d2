"""TensorFlow over a SavedModel written by ``headstart export --format saved_model``: its
``classify_images`` signature, uint8 NHWC in, float32 out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Runner, RuntimeChoice, join_outputs


def create_saved_model_runner(model_path: Path, choice: RuntimeChoice, threads: int | None = None) -> Runner:
    from ..saved_model_export import IMAGES_SIGNATURE
    from ..sidecar import OOD_OUTPUT_NAME, OUTPUT_NAME
    from ..tfhub_runtime import import_tensorflow, quiet_native_logs

    tf = import_tensorflow()
    with quiet_native_logs():
        loaded = tf.saved_model.load(str(model_path))
    if IMAGES_SIGNATURE not in loaded.signatures:
        from ..errors import ModelError

        raise ModelError(
            f"{model_path} has no {IMAGES_SIGNATURE!r} signature",
            hint="export it with 'headstart export --format saved_model'",
        )
    classify = loaded.signatures[IMAGES_SIGNATURE]
    names = [n for n in (OUTPUT_NAME, OOD_OUTPUT_NAME) if n in classify.structured_outputs]
    (spec,) = classify.structured_input_signature[1].values()
    with quiet_native_logs():  # the first call prints oneDNN's notes on uint8 straight to stderr
        classify(images=tf.zeros([1, *spec.shape[1:]], tf.uint8))

    def run(images: np.ndarray) -> np.ndarray:
        out = classify(images=tf.constant(np.ascontiguousarray(images, dtype=np.uint8)))
        return join_outputs([out[n].numpy() for n in names])

    return run
