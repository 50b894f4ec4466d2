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


def mutate(data: Any, places: list[tuple[dict, str]], values: Any) -> None:
    """Hypothesis: in 1 to 3 of ``places`` (a dict and one of its keys), put a drawn value or drop the key."""
    from hypothesis import strategies as st

    for _ in range(data.draw(st.integers(1, 3))):
        parent, key = data.draw(st.sampled_from(places))
        if data.draw(st.booleans()):
            parent[key] = data.draw(values)
        else:
            parent.pop(key, None)
