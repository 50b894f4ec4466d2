"""Images -> cut-point activation maps, through a content-keyed store and the fastest runtime.

Fine-tuning the top N stages needs, for every image, the map that the frozen
part of the network (stem and the stages below the cut) produces.  That part
runs once per image, like a bottleneck, on the runtime table's choice
(OpenVINO bf16 here); its maps are kept in ``maps.sqlite`` beside the
bottleneck store, one float16 row per image in NCHW order, keyed by the image's
content hash and an extractor fingerprint made of the backbone's weights, its
preprocessing, the runtime's numerics and the cut point.  A second run with
the same cut computes nothing.

Why SQLite rows and not one big array: rows are committed per batch (an
interrupted or out-of-disk run loses at most one batch and resumes), the
same image in two folders is stored once, and training reads any subset in
any order a batch at a time, so memory stays bounded by the batch, not the
folder (a 44 KB row reads in microseconds from the page cache; the top
stages' forward pass takes milliseconds per image).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .backbones import Backbone
from .cache import BottleneckCache, models_dir
from .data import ImageRecord, SkippedImage
from .errors import HeadstartError
from .features import decode_ahead, default_workers, resolve_decode_mode, run_batches
from .progress import Progress
from .runtimes import DEFAULT_BATCH_SIZE, Runner, RuntimeChoice, resolve_runtime

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("headstart")

MAP_LAYOUT = "nchw-fp16"  # part of the key: a change of layout must never reuse old rows
READ_CHUNK = 256  # rows per read when streaming maps in order


class MapCache(BottleneckCache):
    """Cut-point maps in ``<directory>/maps.sqlite``: float16 rows (flattened NCHW), same API as the bottlenecks."""

    FILENAME = "maps.sqlite"
    DTYPE = np.dtype("<f2")

    def present(self, extractor: str, sha256s: Sequence[str]) -> set[str]:
        """Hashes with a well-formed stored map, found without reading the maps (only their lengths)."""
        keys = list(dict.fromkeys(sha256s))
        found: set[str] = set()
        with self._lock, self._translate():
            for start in range(0, len(keys), READ_CHUNK):
                chunk = keys[start : start + READ_CHUNK]
                rows = self._db.execute(
                    f"SELECT sha256 FROM bottlenecks WHERE extractor = ? AND sha256 IN ({','.join('?' * len(chunk))})"
                    " AND length(vector) = dim * ?",
                    (extractor, *chunk, self.DTYPE.itemsize),
                )
                found.update(sha for (sha,) in rows)
        return found


@dataclass(frozen=True)
class CutMaps:
    """Where the maps of some images are (not the maps themselves: they stay on disk until read)."""

    records: tuple[ImageRecord, ...]  # the usable ones, in the order given
    extractor: str
    shape: tuple[int, int, int]  # C, H, W
    skipped: tuple[SkippedImage, ...]
    computed: int
    cached: int
    seconds: float
    runtime: RuntimeChoice
    directory: Path

    @property
    def bytes_per_image(self) -> int:
        return int(np.prod(self.shape)) * MapCache.DTYPE.itemsize

    def select(self, split: str) -> tuple[ImageRecord, ...]:
        return tuple(r for r in self.records if r.split == split)


def map_fingerprint(backbone: Backbone, choice: RuntimeChoice, blocks: int) -> str:
    """Key part naming which numbers a map came from: weights, preprocessing, runtime numerics, cut point."""
    text = f"{backbone.fingerprint}|{choice.key}|cut-top:{blocks}|{MAP_LAYOUT}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_cut_onnx(backbone: Backbone, blocks: int, model_dir: Path) -> Path:
    """The frozen part as ONNX (uint8 NHWC in, the map out), converted once per backbone and cut point."""
    from .runtimes.onnx_files import export_onnx

    path = Path(model_dir) / f"{backbone.name}-{backbone.fingerprint}-cut{blocks}.onnx"
    if path.is_file():
        return path
    from .networks import split_backbone

    log.info("converting the frozen part of %s (all but the top %d stages) to ONNX -> %s", backbone.name, blocks, path)
    frozen, _ = split_backbone(backbone, blocks)
    return export_onnx(frozen, path, backbone.preprocessing.input_size, output_name="map")


def create_cut_runner(backbone: Backbone, blocks: int, choice: RuntimeChoice, model_dir: Path) -> Runner:
    """uint8 images -> float32 maps ``[N, C, H, W]`` on ``choice``'s runtime, through the runtime table."""
    spec = choice.spec
    if spec.source == "file":
        from .runtimes import create_file_runner

        return create_file_runner(ensure_cut_onnx(backbone, blocks, model_dir), choice)
    from .networks import split_backbone

    frozen, _ = split_backbone(backbone, blocks)
    return spec.create(frozen, choice)


def map_shape(backbone: Backbone, blocks: int) -> tuple[int, int, int]:
    """``(C, H, W)`` at the cut, from one pass of the frozen layers (without loading weights) on a blank image."""
    import timm
    import torch

    from .networks import FrozenPart

    net = timm.create_model(backbone.timm_name, pretrained=False).eval()
    size = backbone.preprocessing.input_size
    with torch.inference_mode():
        out = FrozenPart(net, len(net.blocks) - blocks)(torch.zeros((1, 3, size, size)))
    return tuple(int(v) for v in out.shape[1:])  # type: ignore[return-value]


def compute_maps(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    blocks: int,
    cache: MapCache,
    *,
    runtime: str | RuntimeChoice = "auto",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
    decode: str = "auto",
    shape: tuple[int, int, int] | None = None,
) -> CutMaps:
    """Make sure every record's map at the cut in front of the top ``blocks`` stages is in ``cache``.

    Misses are decoded ahead in threads, run in batches on the frozen part and
    committed per batch (a killed run resumes where it stopped).  Nothing is
    kept in memory beyond the batches in flight.  Unusable images are skipped
    with a reason, as for bottlenecks.
    """
    start = time.perf_counter()
    choice = runtime if isinstance(runtime, RuntimeChoice) else resolve_runtime(runtime, precision)
    decode = resolve_decode_mode(decode, choice)
    extractor = map_fingerprint(backbone, choice, blocks)
    shape = shape or map_shape(backbone, blocks)
    cache.register_extractor(
        extractor,
        {
            **backbone.describe(),
            "runtime": choice.runtime,
            "precision": choice.precision,
            "fine_tune_blocks": blocks,
            "map_shape": list(shape),
            "layout": MAP_LAYOUT,
            "preprocessing": backbone.preprocessing.to_dict(),
        },
    )
    present = cache.present(extractor, [r.sha256 for r in records])
    misses: list[ImageRecord] = []
    for record in records:
        if record.sha256 not in present:
            present.add(record.sha256)  # a duplicate image is computed once
            misses.append(record)
    skipped: list[SkippedImage] = []
    failed: set[str] = set()
    if misses:
        log.info(
            "%d of %d maps at the cut (top %d stages) cached; computing %d with %s (%s)",
            len(records) - len(misses),
            len(records),
            blocks,
            len(misses),
            backbone.name,
            choice.key,
        )
        runner = create_cut_runner(backbone, blocks, choice, models_dir(cache.directory))
        size = int(np.prod(shape))
        with Progress(len(misses), "Maps", unit="img", enabled=progress) as bar:

            def store(positions: list[int], batch: np.ndarray) -> None:
                flat = np.asarray(batch).reshape(len(positions), -1)
                if flat.shape[1] != size:
                    raise HeadstartError(
                        f"the frozen part returned maps of {flat.shape[1]} values, expected {size}",
                        hint="clear the converted models folder (headstart cache clear)",
                    )
                cache.put_many(extractor, [(misses[p].sha256, flat[i]) for i, p in enumerate(positions)])
                bar.update(len(positions))

            def skip(position: int, reason: str) -> None:
                skipped.append(SkippedImage(misses[position].path, reason))
                failed.add(misses[position].sha256)
                log.debug("skipping %s: %s", misses[position].path, reason)
                bar.update(1, skipped=len(skipped))

            run_batches(
                runner,
                decode_ahead(
                    [r.path for r in misses],
                    backbone.preprocessing,
                    batch_size,
                    workers or default_workers(),
                    mode=decode,
                ),
                batch_size,
                store,
                skip,
            )
    else:
        log.info(
            "all %d maps at the cut (top %d stages) cached (%s): the frozen part is not run",
            len(records),
            blocks,
            choice.key,
        )
    kept = tuple(r for r in records if r.sha256 not in failed)
    if not kept:
        raise HeadstartError("no image could be turned into a map", hint="check the skipped images listed above")
    computed = len(misses) - len(skipped)
    return CutMaps(
        kept,
        extractor,
        shape,
        tuple(skipped),
        computed,
        len(records) - len(misses),
        time.perf_counter() - start,
        choice,
        cache.directory,
    )


def read_maps(cache: MapCache, maps: CutMaps, records: Sequence[ImageRecord]) -> np.ndarray:
    """float16 ``[len(records), C, H, W]`` for those records (all must be in ``maps``)."""
    rows = cache.get_many(maps.extractor, [r.sha256 for r in records])
    missing = [r for r in records if r.sha256 not in rows]
    if missing:
        raise HeadstartError(
            f"the map of {missing[0].path} vanished from {cache.path}",
            hint="another process cleared the cache: run the command again",
        )
    return np.stack([rows[r.sha256] for r in records]).reshape(len(records), *maps.shape)


def iter_maps(
    cache: MapCache, maps: CutMaps, records: Sequence[ImageRecord], chunk: int = READ_CHUNK
) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, float16 maps)`` chunk by chunk, in the order of ``records``."""
    for start in range(0, len(records), chunk):
        yield start, read_maps(cache, maps, records[start : start + chunk])


def flip_maps(
    maps: "np.ndarray | torch.Tensor", which: "np.ndarray | torch.Tensor | None" = None
) -> "np.ndarray | torch.Tensor":
    """Mirror NCHW maps left-right (the W axis): all of them, or the rows where ``which`` is true.

    A cheap stand-in for running the mirrored image: a convolutional map is not
    exactly mirror-symmetric (its kernels are not), so this is an augmentation,
    not the mirrored image's map (cosine 0.91-0.95 in front of the last stage of
    EfficientNet-Lite0, 0.82-0.86 in front of the last two, 0.54-0.60 in front
    of the last three: ``benchmarks/finetune_speed.py --flip_check``).
    """
    if which is None:
        if isinstance(maps, np.ndarray):
            return maps[..., ::-1]
        return maps.flip(-1)
    out = maps.clone() if not isinstance(maps, np.ndarray) else maps.copy()
    out[which] = flip_maps(maps[which])
    return out
