"""Decode and resize images on the GPU, so that the CPUs only read files.

With a CUDA network, decoding JPEGs on the CPU is what limits the rate from
files to bottlenecks.  Here a few threads read files into page-locked buffers,
nvJPEG (through torchvision's batched ``decode_jpeg``) decodes the JPEGs of a
batch on the device, and :mod:`headstart.gpu_geometry` resizes and crops them
there with the CPU decoder's geometry.  The result is what the network's
``InputAdapter`` takes: uint8 ``[N, H, W, 3]`` on the device.

Every file that nvJPEG should not decode takes the CPU's road *in the same
batch, in its place*: JPEGs that are grey, CMYK/Adobe, 12-bit, lossless or
arithmetic-coded, have EXIF that is ambiguous, or do not end where a JPEG
ends, and every non-JPEG.  Plain 8-bit grey or RGB PNGs are decoded by the
reading threads and resized on the device (Fashion-MNIST's 28x28 spends its
time in the 28-to-224 resize, not in zlib); the rest go through
:func:`headstart.data.load_image` unchanged, bad files included, which are
skipped with its reasons.  A JPEG that nvJPEG refuses is decoded on the CPU.

The pixels are the CPU decoder's wherever the CPU decoder does not use
libjpeg's reduced-size decoding: nvJPEG decodes at full size, and the DCT
scaling is emulated by block means (``gpu_geometry``), within about 0.3 grey
levels on average on photos (0.6 in the worst case tested, an exact 2x
reduction with nothing after it).  Vectors of GPU-decoded images are therefore
cached under their own key: :func:`decoder_id` is part of the extractor
fingerprint when decoding on the GPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from headstart.data import DEFAULT_MAX_PIXELS, Preprocessing
from headstart.errors import UsageError
from headstart.gpu_geometry import apply_geometry, plan_geometry
from headstart.gpu_read import Arena, Item, cpu_decode, read_item

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("headstart")

# Bump when the GPU path can give different pixels for the same file (nvJPEG
# settings, the draft emulation, the routing rules of headstart.gpu_read).
GPU_DECODER_VERSION = "1"
_DECODE_PIXELS = 1 << 28  # pixels per nvJPEG call (about 800 MB of decoded RGB)
_GROUP_PIXELS = 1 << 25  # pixels resized at once (about 400 MB of float32)
_ARENAS = 3  # page-locked read buffers: one being filled, one queued, one being decoded


def decoder_id() -> str:
    """The GPU decoder's part of a cache key: vectors it made are never mixed with the CPU decoder's."""
    return f"nvjpeg-{GPU_DECODER_VERSION}"


@lru_cache(maxsize=4)
def gpu_decode_problem(device: str = "cuda") -> str | None:
    """Why images cannot be decoded on ``device`` here, or ``None`` when they
    can: on CUDA, a tiny JPEG is decoded once to find out (torchvision builds
    without nvJPEG only say so when asked to decode)."""
    try:
        import torch
        import torchvision.io  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to PyTorch"
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, "JPEG")
        try:
            _decode_jpegs([torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)], torch.device(device))
        except RuntimeError as exc:
            return f"torchvision cannot decode JPEGs on {device} ({str(exc).splitlines()[0]})"
    return None


def require_gpu_decode(runtime: str) -> None:
    """Raise a one-line :class:`UsageError` unless ``--decode gpu`` can run with ``runtime``."""
    if runtime != "cuda":
        raise UsageError(
            f"--decode gpu needs the cuda runtime, not {runtime}",
            hint="use --runtime cuda, or --decode threads / processes",
        )
    problem = gpu_decode_problem("cuda")
    if problem is not None:
        raise UsageError(
            f"--decode gpu is not available: {problem}",
            hint="install a CUDA build of torch and torchvision, or use --decode processes",
        )


def default_readers() -> int:
    """Threads that read files (and decode what the GPU does not): reading is cheap, a few suffice."""
    return max(2, min(8, os.cpu_count() or 2))


# ----------------------------------------------------------------------------- decoding a batch


@dataclass(frozen=True)
class DeviceBatch:
    """A batch ready for the network: ``images`` uint8 [rows, size, size, 3] on
    the device, of which the first ``len(positions)`` are images (the rest is
    padding, zeros); ``skipped`` holds (position, reason); ``routes`` counts
    how the images were decoded."""

    images: Any
    positions: tuple[int, ...]
    skipped: tuple[tuple[int, str], ...]
    routes: dict[str, int]


def _decode_jpegs(payloads: list[Any], device: Any) -> list[Any]:
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    # torchvision >= 0.29 warns on every call that its decoders move to torchcodec.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io\.image")
    return list(decode_jpeg(payloads, mode=ImageReadMode.RGB, device=device))


def _nvjpeg(payloads: list[Any], device: Any) -> list[Any]:
    """Decoded [3, H, W] tensors (``None`` where decoding failed).  torchvision
    fails a whole batch for one bad file, so a failed batch is retried one by one."""
    try:
        return _decode_jpegs(payloads, device)
    except RuntimeError as exc:
        if len(payloads) == 1:
            log.debug("nvJPEG refused a file: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return [None]
    return [_nvjpeg([p], device)[0] for p in payloads]


def _chunks(items: list[Any], pixels: Callable[[Any], int], budget: int) -> list[list[Any]]:
    out: list[list[Any]] = [[]]
    total = 0
    for item in items:
        size = pixels(item)
        if out[-1] and total + size > budget:
            out.append([])
            total = 0
        out[-1].append(item)
        total += size
    return [c for c in out if c]


def assemble_batch(
    items: Sequence[Item],
    prep: Preprocessing,
    rows: int,
    device: Any,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pool: ThreadPoolExecutor | None = None,
) -> DeviceBatch:
    """Decode what needs decoding, resize on ``device``, and stack a batch of
    ``rows`` in the order of ``items`` (skipped ones left out), padded with
    zeros: one input shape for the whole run keeps cuDNN's and torch.compile's
    choices.  nvJPEG's output is resized chunk by chunk, so at most one
    chunk of full-size images is held on the device."""
    import torch

    resized: list[tuple[list[int], Any]] = []  # (positions, uint8 [k, size, size, 3] on the device)

    def resize(entries: list[tuple[int, Any, int]], route: str) -> None:
        groups: dict[Any, list[tuple[int, Any]]] = {}
        for position, image, orientation in entries:
            h, w = image.shape[1:] if route == "nvjpeg" else image.shape[:2]
            geometry = plan_geometry(w, h, prep, orientation=orientation, jpeg=route == "nvjpeg")
            groups.setdefault(geometry, []).append((position, image))
        for geometry, members in groups.items():
            area = geometry.source[0] * geometry.source[1]
            for chunk in _chunks(members, lambda m: area, _GROUP_PIXELS):  # noqa: B023 - _chunks calls it at once
                if route == "nvjpeg":
                    stacked = torch.stack([image for _, image in chunk])
                else:  # full-size pixels from the readers: one host-to-device copy per chunk
                    stacked = torch.from_numpy(np.stack([image for _, image in chunk])).to(device).permute(0, 3, 1, 2)
                resized.append(([p for p, _ in chunk], apply_geometry(stacked, geometry).permute(0, 2, 3, 1)))

    for chunk in _chunks([it for it in items if it.route == "nvjpeg"], lambda it: it.area, _DECODE_PIXELS):
        decoded = []
        for it, image in zip(chunk, _nvjpeg([it.payload for it in chunk], device)):
            if image is None or image.dim() != 3 or image.shape[0] != 3:
                log.debug("%s: nvJPEG refused it; decoding it on the CPU", it.name)
                refused, it.payload = it.payload.numpy().tobytes(), None
                if pool is None:
                    cpu_decode(it, refused, prep, max_pixels)
                else:
                    pool.submit(cpu_decode, it, refused, prep, max_pixels).result()
            else:
                decoded.append((it.position, image, it.orientation))
        resize(decoded, "nvjpeg")
        del decoded
    resize([(it.position, it.pixels, it.orientation) for it in items if it.route == "pixels"], "pixels")
    finished = [it for it in items if it.route == "done"]
    if finished:
        # route "done" means cpu_decode set the pixels
        images = torch.from_numpy(np.stack([cast(np.ndarray, it.pixels) for it in finished])).to(device)
        resized.append(([it.position for it in finished], images))

    usable = [it for it in items if it.route != "skip"]
    if len(usable) > rows:
        raise ValueError(f"{len(usable)} images do not fit in a batch of {rows}")
    row_of = {it.position: row for row, it in enumerate(usable)}
    size = prep.input_size
    out = torch.zeros((rows, size, size, 3), dtype=torch.uint8, device=device)
    for positions, images in resized:
        out.index_copy_(0, torch.tensor([row_of[p] for p in positions], device=device), images)
    routes = {route: sum(it.route == route for it in usable) for route in ("nvjpeg", "pixels")}
    routes.update(cpu=len(finished), skipped=len(items) - len(usable))
    return DeviceBatch(
        out,
        tuple(it.position for it in usable),
        tuple((it.position, it.reason) for it in items if it.route == "skip"),
        routes,
    )


def decode_files(
    paths: Sequence[str | Path],
    prep: Preprocessing,
    *,
    device: str = "cuda",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    readers: int | None = None,
) -> DeviceBatch:
    """Decode ``paths`` as one batch (no padding) the way the GPU pipeline does;
    for tests and tools.  ``device="cpu"`` runs the same code on the CPU, with
    torchvision's libjpeg-turbo in place of nvJPEG."""
    import torch

    dev = torch.device(device)
    arena = Arena(pin=dev.type == "cuda")
    arena.reset()
    with ThreadPoolExecutor(readers or default_readers()) as pool:
        items = list(pool.map(lambda ip: read_item(Path(ip[1]), ip[0], prep, max_pixels, arena), enumerate(paths)))
        with torch.inference_mode():
            batch = assemble_batch(
                items, prep, sum(it.route != "skip" for it in items), dev, max_pixels=max_pixels, pool=pool
            )
    return batch


# ----------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class GpuPipelineStats:
    """How a run went: images by route, batches, seconds."""

    images: int
    nvjpeg: int
    pixels: int
    cpu: int
    skipped: int
    batches: int
    seconds: float


def prepare_cuda_module(
    module: "torch.nn.Module", precision: str = "fp16", *, compile: bool = False
) -> "torch.nn.Module":
    """A uint8-NHWC feature extractor placed as ``create_torch_runner`` places
    it: on the GPU, fp16 or fp32, channels-last, cuDNN autotuned."""
    import torch

    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    module = module.to(device="cuda", dtype=dtype).to(memory_format=torch.channels_last).eval()
    torch.backends.cudnn.benchmark = True
    return torch.compile(module, dynamic=False) if compile else module  # type: ignore[return-value]


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: "queue.Queue[Any]", value: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(value, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: "queue.Queue[Any]", stop: threading.Event | None) -> Any:
    while stop is None or not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _DONE


def run_gpu_pipeline(
    paths: Sequence[str | Path],
    prep: Preprocessing,
    module: Callable[[Any], Any],
    batch_size: int,
    on_batch: Callable[[list[int], np.ndarray], None],
    on_skip: Callable[[int, str], None],
    *,
    device: str = "cuda",
    readers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> GpuPipelineStats:
    """Bottleneck vectors for ``paths``, decoded on the device, in batches of ``batch_size``.

    Three stages overlap: reader threads fill page-locked buffers with the
    files of batch k+2; a decode thread runs nvJPEG and the geometry for batch
    k+1 on its own CUDA stream; the calling thread runs ``module`` (uint8 NHWC
    in, [N, D] out; see :func:`prepare_cuda_module`) on batch k on another
    stream and copies the vectors back without waiting, so the GPU does not
    wait for a host copy.  ``on_batch(positions, vectors)`` and
    ``on_skip(position, reason)`` are called from the calling thread, in order
    of batches.  Every batch has ``batch_size`` rows, the short last one padded.
    ``device="cpu"`` runs the same pipeline on the CPU, without streams.
    """
    import torch

    if batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}", hint="e.g. --batch_size 128")
    start = time.perf_counter()
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    stop = threading.Event()
    host_q: queue.Queue[Any] = queue.Queue(maxsize=1)
    dev_q: queue.Queue[Any] = queue.Queue(maxsize=1)
    arenas: queue.Queue[Arena] = queue.Queue()
    for _ in range(_ARENAS):
        arenas.put(Arena(pin=cuda))
    pool = ThreadPoolExecutor(readers or default_readers(), thread_name_prefix="headstart-read")
    counts = {"nvjpeg": 0, "pixels": 0, "cpu": 0, "skipped": 0, "batches": 0}

    def read_stage() -> None:
        try:
            for first in range(0, len(paths), batch_size):
                arena = _get(arenas, stop)
                if arena is _DONE:
                    return
                arena.reset()
                span = range(first, min(first + batch_size, len(paths)))
                items = list(pool.map(lambda i, a=arena: read_item(Path(paths[i]), i, prep, max_pixels, a), span))
                if not _put(host_q, (items, arena), stop):
                    return
            _put(host_q, _DONE, stop)
        except BaseException as exc:  # handed to the calling thread, which raises it
            _put(host_q, _Failure(exc), stop)

    def decode_stage() -> None:
        try:
            stream = torch.cuda.Stream(dev) if cuda else None
            with torch.inference_mode(), torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                while True:
                    got = _get(host_q, stop)
                    if got is _DONE or isinstance(got, _Failure):
                        _put(dev_q, got, stop)
                        return
                    items, arena = got
                    batch = assemble_batch(items, prep, batch_size, dev, max_pixels=max_pixels, pool=pool)
                    arenas.put(arena)  # nvJPEG has read it: decode_jpeg returns after its stream synchronised
                    ready = None
                    if cuda:
                        ready = torch.cuda.Event()
                        ready.record(stream)
                    if not _put(dev_q, (batch, ready), stop):
                        return
        except BaseException as exc:  # handed to the calling thread, which raises it
            _put(dev_q, _Failure(exc), stop)

    threads = [
        threading.Thread(target=read_stage, name="headstart-gpu-read", daemon=True),
        threading.Thread(target=decode_stage, name="headstart-gpu-decode", daemon=True),
    ]
    for thread in threads:
        thread.start()
    net_stream = torch.cuda.Stream(dev) if cuda else None
    if net_stream is not None:  # the module's weights were put there on the default stream
        net_stream.wait_stream(torch.cuda.current_stream(dev))
    host_out: list[Any] = [None, None]
    pending: tuple[list[int], Any, Any, int] | None = None

    def deliver(entry: tuple[list[int], Any, Any, int]) -> None:
        positions, host, done, n = entry
        if done is not None:
            done.synchronize()
        on_batch(positions, np.array(host[:n].numpy(), dtype=np.float32))

    try:
        with torch.inference_mode():
            while True:
                got = _get(dev_q, None)
                if isinstance(got, _Failure):
                    raise got.exc
                if got is _DONE:
                    break
                batch, ready = got
                for key in ("nvjpeg", "pixels", "cpu", "skipped"):
                    counts[key] += batch.routes[key]
                for position, reason in batch.skipped:
                    on_skip(position, reason)
                n = len(batch.positions)
                if n == 0:
                    continue
                slot = counts["batches"] % 2
                counts["batches"] += 1
                if net_stream is None:  # not cuda: no streams
                    deliver((list(batch.positions), module(batch.images).float(), None, n))
                    continue
                net_stream.wait_event(ready)
                batch.images.record_stream(net_stream)  # made on the decode stream, read on this one
                with torch.cuda.stream(net_stream):
                    vectors = module(batch.images).float()
                    if host_out[slot] is None or host_out[slot].shape != vectors.shape:
                        host_out[slot] = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=True)
                    host_out[slot].copy_(vectors, non_blocking=True)
                    done = torch.cuda.Event()
                    done.record(net_stream)
                if pending is not None:
                    deliver(pending)
                pending = (list(batch.positions), host_out[slot], done, n)
            if pending is not None:
                deliver(pending)
    finally:
        stop.set()
        for q in (host_q, dev_q):
            while not q.empty():
                q.get_nowait()
        for thread in threads:
            thread.join(timeout=30)
        pool.shutdown(wait=True, cancel_futures=True)
    images = counts["nvjpeg"] + counts["pixels"] + counts["cpu"]
    return GpuPipelineStats(
        images,
        counts["nvjpeg"],
        counts["pixels"],
        counts["cpu"],
        counts["skipped"],
        counts["batches"],
        time.perf_counter() - start,
    )
