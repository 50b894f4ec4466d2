"""Image data: find and split the images of a folder, decode them for a network, distort them for training.

* :mod:`headstart.data.index` -- discovery, retrain.py's hash split, de-duplication (:func:`index_image_dir`).
* :mod:`headstart.data.decode` -- :class:`Preprocessing` and :func:`load_image`.
* :mod:`headstart.data.resize` -- the fast resampling behind :func:`load_image`.
* :mod:`headstart.data.distort` -- retrain.py's training distortions (:class:`Distortion`).
* :mod:`headstart.data.datasets` -- demo data sets written as class folders.

Everything here is light (numpy + PIL, no torch) because every other module starts here.
The names below are re-exported so ``from headstart.data import ...`` keeps working.
"""

from headstart.data.decode import DECODER_VERSION, DEFAULT_MAX_PIXELS, Preprocessing, load_image, resize_center_crop
from headstart.data.distort import Distortion
from headstart.data.index import (
    IMAGE_EXTENSIONS,
    MAX_NUM_IMAGES_PER_CLASS,
    MIN_IMAGES_PER_CLASS,
    SPLITS,
    ImageIndex,
    ImageRecord,
    SkippedImage,
    find_images,
    index_image_dir,
    list_image_files,
    sha256_file,
    which_split,
)

__all__ = [
    "DECODER_VERSION",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MAX_NUM_IMAGES_PER_CLASS",
    "MIN_IMAGES_PER_CLASS",
    "SPLITS",
    "Distortion",
    "ImageIndex",
    "ImageRecord",
    "Preprocessing",
    "SkippedImage",
    "find_images",
    "index_image_dir",
    "list_image_files",
    "load_image",
    "resize_center_crop",
    "sha256_file",
    "which_split",
]
