"""Benchmarks: bottleneck extraction against the machine's limit, and exported models per runtime.

``timing`` holds the one timing loop they all use; ``extract`` measures
``headstart bench extract``, ``model`` measures ``headstart bench --model``.
"""

from __future__ import annotations

from .extract import (
    DEFAULT_SECONDS,
    Ceiling,
    EndToEnd,
    ExtractBench,
    Machine,
    bench_extract,
    ceiling_choices,
    describe_machine,
    format_extract_bench,
    list_image_records,
    measure_ceiling,
    sample_batch,
)
from .model import bench_model, format_bench_rows
from .timing import Timing, time_calls

__all__ = [
    "DEFAULT_SECONDS",
    "Ceiling",
    "EndToEnd",
    "ExtractBench",
    "Machine",
    "Timing",
    "bench_extract",
    "bench_model",
    "ceiling_choices",
    "describe_machine",
    "format_bench_rows",
    "format_extract_bench",
    "list_image_records",
    "measure_ceiling",
    "sample_batch",
    "time_calls",
]
