"""Resampling for the decoder: timm's resize, at the speed of the network.

Pillow resamples without SIMD.  On a photo (500x375 to 298x224) its antialiased
bicubic takes about 1.4 ms, more than libjpeg-turbo needs to decode the file and,
on a 2-core machine, about as long as the network needs for the image.  So:

* **Upscaling** (images smaller than the network input, such as Fashion-MNIST's
  28x28) stays with Pillow, pixel for pixel timm's evaluation transform; it is
  cheap there.
* **Downscaling** is antialiased by 2x supersampling with OpenCV's SIMD
  resamplers: interpolate to twice the target size with the same kernel family
  (cubic or linear), then average each 2x2 block.  Beyond a 2x reduction (a big
  PNG; JPEGs are already reduced by libjpeg's draft mode) OpenCV's area average
  does it in one step.  On photos this is within half a grey level of Pillow on
  average and keeps bottlenecks within cosine 0.98 of timm's, at about a quarter
  of the cost (``tests/test_decode.py``, ``docs/PERFORMANCE.md``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

PIL_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
# Nearest neighbour has no antialiasing to emulate: it stays with Pillow.
_SUPERSAMPLE = {"bicubic": "INTER_CUBIC", "bilinear": "INTER_LINEAR"}


@lru_cache(maxsize=1)
def _opencv() -> Any:
    import cv2

    # Images are decoded on several threads already; OpenCV's own thread pool on
    # top of them would take cores from the network.
    cv2.setNumThreads(1)
    return cv2


def resize(pixels: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """uint8 RGB ``pixels`` [rows, columns, 3] resampled to ``size`` = (width, height)."""
    h, w = pixels.shape[:2]
    new_w, new_h = size
    if (new_w, new_h) == (w, h):
        return pixels
    if interpolation not in _SUPERSAMPLE or new_w >= w or new_h >= h:
        return np.asarray(Image.fromarray(pixels).resize(size, PIL_RESAMPLE[interpolation]), dtype=np.uint8)
    cv2 = _opencv()
    if w >= 2 * new_w and h >= 2 * new_h:
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    kernel = getattr(cv2, _SUPERSAMPLE[interpolation])
    doubled = cv2.resize(pixels, (2 * new_w, 2 * new_h), interpolation=kernel)
    return cv2.resize(doubled, size, interpolation=cv2.INTER_AREA)
