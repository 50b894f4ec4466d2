"""HTML reports (placeholder rendering; extended with plots and galleries)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence


def render_run_report(*, metrics: dict[str, Any], labels: Sequence[str], image_root: Path,
                      backbone: dict[str, Any], hyperparameters: dict[str, Any]) -> str:
    body = html.escape(json.dumps(metrics.get("test", {}), indent=2))
    return f"<!doctype html><html><head><meta charset='utf-8'><title>headstart run</title></head><body><pre>{body}</pre></body></html>"
