"""retrain.py's training distortions (flip, crop, scale, brightness), drawn so that they can be cached.

:class:`Distortion` holds the flags and draws per image and copy; ``_distorted``
applies a draw to decoded pixels in place of the evaluation centre crop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from headstart.checks import is_real
from headstart.data import decode
from headstart.data.resize import resize
from headstart.errors import UsageError

if TYPE_CHECKING:
    from headstart.data.decode import Preprocessing


@dataclass(frozen=True)
class Distortion:
    """retrain.py's training distortions, drawn once per image and copy so their bottlenecks can be cached.

    retrain.py drew new distortions at every step and so had to run the network
    at every step, bypassing its cache.  Here copy ``k`` of an image always gets
    the same draw (seeded by the image's content hash and ``k``): a few distorted
    copies per training image are computed once, cached like any bottleneck, and
    train the head from memory.  Percentages mean what retrain.py's flags meant.
    """

    flip_left_right: bool = False
    random_crop: float = 0.0  # % of margin around the crop, randomly placed
    random_scale: float = 0.0  # up to this % larger before cropping
    random_brightness: float = 0.0  # multiply pixels by 1 +/- up to this %
    copy: int = 0

    def __post_init__(self) -> None:
        for name in ("random_crop", "random_scale", "random_brightness"):
            value = getattr(self, name)
            if not is_real(value) or not 0 <= value <= 100:
                raise UsageError(
                    f"--{name} must be a percentage between 0 and 100, got {value!r}", hint=f"e.g. --{name} 10"
                )

    @property
    def active(self) -> bool:
        return self.flip_left_right or any((self.random_crop, self.random_scale, self.random_brightness))

    def fingerprint(self) -> str:
        text = json.dumps(
            [
                self.flip_left_right,
                self.random_crop,
                self.random_scale,
                self.random_brightness,
                self.copy,
                decode.DECODER_VERSION,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def rng(self, image_sha256: str) -> np.random.Generator:
        seed = hashlib.sha256(f"{image_sha256}|{self.fingerprint()}".encode()).digest()
        return np.random.default_rng(int.from_bytes(seed[:8], "little"))

    def apply(self, pixels: np.ndarray, prep: Preprocessing, seed: str) -> np.ndarray:
        """The decoded, upright ``pixels`` distorted as drawn for ``seed`` (the image's content hash),
        ``[input_size, input_size, 3]``; :func:`headstart.data.load_image` calls it instead of its centre crop."""
        return _distorted(pixels, prep, self, seed)


def _distorted(pixels: np.ndarray, prep: Preprocessing, distortion: Distortion, seed: str) -> np.ndarray:
    """retrain.py's distortions on top of the evaluation geometry: scale up by the crop
    margin and a random scale, crop ``input_size`` at a random place, maybe flip, scale
    the brightness."""
    rng = distortion.rng(seed)
    scale = (1 + distortion.random_crop / 100) * rng.uniform(1.0, 1 + distortion.random_scale / 100)
    size = prep.input_size
    shorter = max(size, int(round(prep.resize_size * scale)))
    h, w = pixels.shape[:2]
    new_w, new_h = (
        (shorter, max(shorter, int(shorter * h / w))) if w <= h else (max(shorter, int(shorter * w / h)), shorter)
    )
    array = resize(pixels, (new_w, new_h), prep.interpolation)
    # The crop moves only within the (scaled) region the evaluation crop shows:
    # without random_crop or random_scale it stays centred, as evaluation's does.
    region = max(size, int(round(size * scale)))
    region_h, region_w = min(new_h, region), min(new_w, region)
    top = int(round((new_h - region_h) / 2.0)) + int(rng.integers(0, region_h - size + 1))
    left = int(round((new_w - region_w) / 2.0)) + int(rng.integers(0, region_w - size + 1))
    out = array[top : top + size, left : left + size]
    if distortion.flip_left_right and rng.random() < 0.5:
        out = out[:, ::-1]
    if distortion.random_brightness:
        factor = rng.uniform(1 - distortion.random_brightness / 100, 1 + distortion.random_brightness / 100)
        return np.clip(out.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


__all__ = ["Distortion"]
