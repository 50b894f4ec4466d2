"""TF Hub and SavedModel backbones: ``--tfhub_module HANDLE_OR_PATH`` (``--backbone tfhub:HANDLE_OR_PATH``).

A module follows TF Hub's image feature-vector convention: float32 ``[N, H, W, 3]``
with values in [0, 1] in, ``[N, D]`` out; any normalisation is inside the module.
So its preprocessing is a bilinear resize to the input size with mean 0 and std 1
(the backbone's input adapter only divides by 255), recorded in the manifest like
any other backbone's.  The input size comes from the module's signature, else
from ``--image_size`` (carried in the backbone's name as ``tfhub:PATH@SIZE``, so
a saved run resolves the same backbone again).

Resolving never imports TensorFlow: the signature is read from ``saved_model.pb``
(:mod:`headstart.savedmodel_info`), a handle already in TF Hub's cache is found
by its cache path, and the fingerprint hashes the files.  TensorFlow (the
``[tensorflow]`` extra) is needed once per module, to download it and to convert
it to ONNX (:mod:`headstart.tfhub_runtime`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .backbones import Backbone
from .data.decode import Preprocessing
from .errors import ModelError, OfflineError, UsageError
from .savedmodel_info import SignatureInfo, read_signature

log = logging.getLogger("headstart")

PREFIX = "tfhub:"
TIMM_NAME = "tfhub"  # Backbone.timm_name of every SavedModel backbone (it is not a timm architecture)
EXTRA_HINT = "pip install 'headstart[tensorflow]'"
INTERPOLATION = "bilinear"  # TF Hub's convention (tf.image.resize's default)
_SIZE_SUFFIX = re.compile(r"^(?P<module>.+)@(?P<size>[0-9]+)$")
# A Kaggle Models handle: owner/model/framework/variation[/version]
_KAGGLE = re.compile(r"^[\w.-]+/[\w.-]+/(tensorflow1|tensorflow2)/[\w.-]+(/[0-9]+)?$", re.IGNORECASE)
PROBE_TIMEOUT_S = 3.0


def is_tfhub(backbone: Backbone | str) -> bool:
    """Whether a backbone (or a backbone name) is a TF Hub module / SavedModel."""
    name = backbone if isinstance(backbone, str) else backbone.name
    return name.startswith(PREFIX)


def tfhub_name(module: str | Path, image_size: int | None = None) -> str:
    """The backbone name for ``--tfhub_module MODULE [--image_size N]``."""
    text = str(module)
    text = text.removeprefix(PREFIX)
    return f"{PREFIX}{text}" + (f"@{int(image_size)}" if image_size else "")


def apply_image_size(backbone: str, image_size: int | None) -> str:
    """``--image_size`` folded into the backbone name; a usage error for backbones that fix their own size."""
    if image_size is None:
        return backbone
    if not is_tfhub(backbone):
        raise UsageError(
            f"--image_size applies to TF Hub / SavedModel backbones, not {backbone}",
            hint="timm backbones use their pretrained input size; use --tfhub_module PATH --image_size N",
        )
    if image_size < 8 or image_size > 4096:
        raise UsageError(f"--image_size must be between 8 and 4096 pixels, got {image_size}")
    return tfhub_name(split_size(backbone)[0], image_size)


def split_size(name: str) -> tuple[str, int | None]:
    """``tfhub:MODULE@SIZE`` -> ``(MODULE, SIZE)``; a folder whose own name ends in ``@N`` stays whole."""
    module = name.removeprefix(PREFIX)
    found = _SIZE_SUFFIX.match(module)
    if found is None or Path(module).expanduser().is_dir():
        return module, None
    return found.group("module"), int(found.group("size"))


# ------------------------------------------------------------------ handles and TF Hub's cache


def is_handle(module: str) -> bool:
    """A URL (tfhub.dev, kaggle.com, gs://) or a Kaggle Models handle, rather than a local folder."""
    return module.startswith(("https://", "http://", "gs://")) or bool(_KAGGLE.match(module))


def handle_url(module: str) -> str:
    """What tensorflow_hub downloads: URLs as they are, a Kaggle handle as its kaggle.com URL."""
    if module.startswith(("https://", "http://", "gs://")):
        return module
    owner, model, framework, *rest = module.split("/")
    return "/".join(["https://www.kaggle.com/models", owner, model, "TensorFlow" + framework[-1], *rest])


def tfhub_cache_dir() -> Path:
    """TF Hub's own module cache: ``$TFHUB_CACHE_DIR``, else ``<tmp>/tfhub_modules`` (as tensorflow_hub does)."""
    configured = os.environ.get("TFHUB_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path(tempfile.gettempdir()) / "tfhub_modules"


def cached_module_dir(url: str) -> Path:
    """Where tensorflow_hub keeps (or will keep) a downloaded module: ``sha1(handle)`` in its cache."""
    return tfhub_cache_dir() / hashlib.sha1(url.encode("utf8")).hexdigest()


def _is_downloaded(folder: Path) -> bool:
    lock = folder.with_name(folder.name + ".lock")
    return (folder / "saved_model.pb").is_file() and not lock.exists()


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One quick connection to the handle's host, so an offline machine fails at once instead of hanging."""
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_module(module: str) -> Path:
    """A handle's SavedModel folder: from TF Hub's cache, else downloaded into it once."""
    url = handle_url(module)
    folder = cached_module_dir(url)
    if _is_downloaded(folder):
        return folder
    hint = (
        f"connect to the internet once (the download is kept in {tfhub_cache_dir()}), or download the module "
        "elsewhere and pass its SavedModel folder to --tfhub_module"
    )
    if not _reachable(url):
        raise OfflineError(
            f"TF Hub module {module} is not in TF Hub's cache and {urlparse(url).hostname} cannot be reached", hint=hint
        )
    hub = import_tensorflow_hub()
    log.info("downloading %s into %s (once)", url, tfhub_cache_dir())
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60.0)  # a stalled connection fails instead of hanging forever
    try:
        path = Path(hub.resolve(url))
    except Exception as exc:  # tensorflow_hub raises URLError, ValueError, OpError ...
        raise OfflineError(
            f"cannot download TF Hub module {module}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            hint=hint,
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return path


def require_extra(what: str = "a TF Hub backbone") -> None:
    """A one-line usage error naming the extra when TensorFlow is not installed (checked without importing it)."""
    try:
        found = importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(f"{what} needs TensorFlow, which is not installed", hint=EXTRA_HINT)


def import_tensorflow_hub() -> Any:
    require_extra("downloading a TF Hub module")
    from .tfhub_runtime import import_tensorflow

    import_tensorflow()  # first, and the way headstart imports it (see there)
    try:
        import tensorflow_hub
    except ImportError as exc:
        raise UsageError(f"downloading a TF Hub module needs tensorflow_hub ({exc})", hint=EXTRA_HINT) from exc
    return tensorflow_hub


# ------------------------------------------------------------------ the SavedModel as a backbone


def saved_model_fingerprint(folder: Path, signature: SignatureInfo) -> str:
    """The module's identity: its variables, the signature headstart calls, and its graph.

    The graph (``saved_model.pb``) is included because two exports can share
    their variables and signature and still compute different vectors (a changed
    rescaling layer has no variables).  The same files always give the same id,
    so a second run on the same module computes nothing.
    """
    digest = hashlib.sha256()
    variables = folder / "variables"
    files = sorted(p for p in variables.iterdir() if p.is_file()) if variables.is_dir() else []
    for path in [*files, folder / "saved_model.pb"]:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(json.dumps(signature.describe(), sort_keys=True).encode())
    return digest.hexdigest()


def preprocessing_for(size: int) -> Preprocessing:
    """TF Hub's image convention: bilinear resize to the input size, values in [0, 1] (mean 0, std 1)."""
    return Preprocessing(size, 1.0, INTERPOLATION, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def locate_module(module: str) -> Path:
    """The SavedModel folder of a local path or a handle (downloading a handle once)."""
    local = Path(module).expanduser()
    if local.is_dir():
        if not (local / "saved_model.pb").is_file():
            hint = (
                "TF1 Hub modules (tfhub_module.pb) are not supported: use the module's TF2 SavedModel version"
                if (local / "tfhub_module.pb").is_file()
                else "pass the folder that holds saved_model.pb"
            )
            raise ModelError(f"{local} is not a TensorFlow SavedModel (no saved_model.pb)", hint=hint)
        return local.resolve()
    if is_handle(module):
        return download_module(module)
    raise UsageError(
        f"--tfhub_module: no SavedModel folder {local}, and {module!r} is not a TF Hub URL or Kaggle handle",
        hint="pass a SavedModel folder, or e.g. "
        "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
    )


def resolve_tfhub_backbone(name: str, weights: str | Path | None = None) -> Backbone:
    """``tfhub:MODULE[@SIZE]`` -> a :class:`Backbone` whose fingerprint is the SavedModel's."""
    if weights is not None:
        raise UsageError(
            "--weights does not apply to a TF Hub module: its weights are in the SavedModel", hint="drop --weights"
        )
    module, size = split_size(name)
    require_extra()
    folder = locate_module(module)
    signature = read_signature(folder)
    fixed = signature.image_size
    shape = signature.input.shape or ()
    if fixed is None and len(shape) == 4 and None not in shape[1:3] and shape[1] != shape[2]:
        raise ModelError(
            f"{module} takes {shape[1]}x{shape[2]} images; headstart feeds square ones",
            hint="export the module with a square or dynamic input size",
        )
    if fixed is not None and size is not None and size != fixed:
        raise UsageError(
            f"{module} takes {fixed}x{fixed} images (its signature); --image_size {size} does not fit",
            hint=f"drop --image_size, or pass --image_size {fixed}",
        )
    if fixed is None and size is None:
        raise UsageError(
            f"{module} has a dynamic input size: pass --image_size N (e.g. 224)",
            hint="the module's signature does not say which size it was trained on; its documentation does",
        )
    chosen = fixed or size
    assert chosen is not None  # one of the two, checked above
    shown = module if is_handle(module) else str(folder)
    canonical = tfhub_name(shown, None if fixed else chosen)
    out = signature.output.shape if signature.output is not None else None
    dim = out[1] if out is not None and len(out) == 2 else None
    return Backbone(
        canonical, TIMM_NAME, preprocessing_for(chosen), folder, saved_model_fingerprint(folder, signature), dim
    )


__all__ = [
    "EXTRA_HINT",
    "PREFIX",
    "apply_image_size",
    "cached_module_dir",
    "download_module",
    "handle_url",
    "is_handle",
    "is_tfhub",
    "locate_module",
    "preprocessing_for",
    "require_extra",
    "resolve_tfhub_backbone",
    "saved_model_fingerprint",
    "split_size",
    "tfhub_cache_dir",
    "tfhub_name",
]
