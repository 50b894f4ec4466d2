"""Helpers that edit a saved run directory the way an attacker or a careless hand would."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from headstart.bundle import MANIFEST_NAME


def read_manifest(run: Path) -> dict:
    return json.loads((run / MANIFEST_NAME).read_text())


def write_manifest(run: Path, manifest: Any) -> None:
    (run / MANIFEST_NAME).write_text(json.dumps(manifest))


def replace_file(run: Path, name: str, data: bytes) -> None:
    """Swap a file *and* fix its checksum: a consistent but wrong bundle the checksum alone cannot catch."""
    (run / name).write_bytes(data)
    manifest = read_manifest(run)
    manifest["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    write_manifest(run, manifest)
