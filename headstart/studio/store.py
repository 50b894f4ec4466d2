"""Projects on disk: class folders of content-named images, checked names, paged listings.

A project is ``DATA_DIR/<project>/<class>/<image>``, the layout ``headstart
retrain --image_dir`` reads, so anything collected here trains from the
command line too, and any existing class-folder tree opens here.  Images added
through the studio are named by their content (the first 16 hex digits of
their SHA-256 and their extension), so the same image is never stored twice;
files already in a tree keep their names.  The studio's own files live in
``<project>/.studio`` (hidden, so no tool takes it for a class) and runs in
``<project>/runs``, marked so that indexing skips it.

Every name that arrives from a client goes through :func:`check_name` and every
path through :meth:`Store.image_path`, so no request can reach outside the data
folder.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..data import IMAGE_EXTENSIONS
from ..data.index import RUNS_MARKER
from .errors import StudioError

NAME_MAX = 100
STUDIO_DIR = ".studio"  # thumbnails, prediction snapshots, exports: the studio's, not the user's
RUNS_DIR = "runs"
HASH_CHARS = 16  # 64 bits of SHA-256: a collision needs billions of images
# What Pillow calls each format we store, and the extension it gets when the upload's own does not fit.
FORMAT_EXTENSIONS = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "GIF": (".gif",),
    "TIFF": (".tif", ".tiff"),
    "MPO": (".jpg", ".jpeg"),
}


def check_name(name: Any, what: str = "class") -> str:
    """A project or class name that is one safe folder name, or a 422 saying what is wrong with it."""
    if not isinstance(name, str):
        raise StudioError(422, f"the {what} name must be text")
    name = name.strip()
    if not name:
        raise StudioError(422, f"the {what} name is empty", "type a name, e.g. cats")
    problem = None
    if "/" in name or "\\" in name:
        problem = "may not contain / or \\"
    elif "\0" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "may not contain control characters"
    elif ".." in name:
        problem = "may not contain '..'"
    elif name.startswith("."):
        problem = "may not start with a dot (such folders are hidden and skipped)"
    elif len(name) > NAME_MAX:
        problem = f"is longer than {NAME_MAX} characters"
    elif what == "class" and name.casefold() == RUNS_DIR:
        problem = "is reserved: the project keeps its training runs in that folder"
    if problem:
        raise StudioError(422, f"{what} name {name!r} {problem}", "use letters, digits, spaces, '-' or '_'")
    return name


def _fold(name: str) -> str:
    # retrain refuses class folders that differ only in case or punctuation (Roses / roses)
    return "".join(c for c in name.casefold() if c.isalnum())


@dataclass(frozen=True)
class StoredImage:
    path: str  # relative to the project: "<class>/<name>"
    name: str
    size: int
    mtime: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "size": self.size}


@dataclass(frozen=True)
class Added:
    """What happened to one uploaded file: stored, already there, or refused (with why)."""

    file: str
    status: str  # added | duplicate | error
    path: str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {"file": self.file, "status": self.status, "path": self.path, "message": self.message}.items()
            if v is not None
        }


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class Store:
    """The data folder: projects, classes and images, with cached listings."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # serialises writes that check-then-act (names, duplicates)
        self._listings: dict[str, tuple[tuple[Path, ...], tuple[int, ...], list[StoredImage]]] = {}

    # ------------------------------------------------------------ projects
    def project_dir(self, project: str, *, must_exist: bool = True) -> Path:
        name = check_name(project, "project")
        path = self.root / name
        if must_exist and not path.is_dir():
            raise StudioError(404, f"no project named {name!r}", "create it first, or check the name")
        return path

    def list_projects(self) -> list[dict[str, Any]]:
        out = []
        with os.scandir(self.root) as it:
            for entry in sorted(it, key=lambda e: e.name.casefold()):
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                classes = self.list_classes(entry.name)
                out.append(
                    {
                        "name": entry.name,
                        "classes": len(classes),
                        "images": sum(c["count"] for c in classes),
                        "runs": self.count_runs(entry.name),
                    }
                )
        return out

    def create_project(self, project: str) -> Path:
        name = check_name(project, "project")
        with self._lock:
            path = self.root / name
            if path.exists():
                raise StudioError(409, f"a project named {name!r} already exists", "open it, or pick another name")
            path.mkdir()
        return path

    def runs_dir(self, project: str) -> Path:
        """``<project>/runs``, created with the marker that keeps indexing from taking it for a class."""
        path = self.project_dir(project) / RUNS_DIR
        path.mkdir(exist_ok=True)
        (path / RUNS_MARKER).touch(exist_ok=True)
        return path

    def count_runs(self, project: str) -> int:
        path = self.root / project / RUNS_DIR
        if not path.is_dir():
            return 0
        return sum(1 for p in path.iterdir() if (p / "headstart.json").is_file())

    def studio_dir(self, project: str, *parts: str) -> Path:
        path = self.project_dir(project).joinpath(STUDIO_DIR, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------ classes
    def _class_entries(self, project: str) -> list[str]:
        root = self.project_dir(project)
        with os.scandir(root) as it:
            return sorted(
                (
                    e.name
                    for e in it
                    if not e.name.startswith(".")
                    and e.is_dir()
                    and not os.path.exists(os.path.join(e.path, RUNS_MARKER))
                ),
                key=str.casefold,
            )

    def list_classes(self, project: str) -> list[dict[str, Any]]:
        return [{"name": c, "count": len(self.list_images(project, c))} for c in self._class_entries(project)]

    def class_dir(self, project: str, cls: str) -> Path:
        name = check_name(cls, "class")
        path = self.project_dir(project) / name
        if not path.is_dir() or name == RUNS_DIR:
            raise StudioError(404, f"no class named {name!r} in project {project!r}", "create the class first")
        return path

    def _check_new_class(self, project: str, name: str, old: str | None = None) -> None:
        for existing in self._class_entries(project):
            if existing == old:
                continue
            if existing == name:
                raise StudioError(409, f"class {name!r} already exists", "pick another name")
            if _fold(existing) == _fold(name):
                raise StudioError(
                    409,
                    f"class {name!r} is too close to {existing!r} (only case or punctuation "
                    "differs), and training would refuse the two",
                    "pick a clearly different name",
                )
        if not _fold(name):
            raise StudioError(422, f"class name {name!r} needs at least one letter or digit", "e.g. cats")

    def create_class(self, project: str, cls: str) -> str:
        name = check_name(cls, "class")
        with self._lock:
            self._check_new_class(project, name)
            (self.project_dir(project) / name).mkdir()
        return name

    def rename_class(self, project: str, cls: str, new: str) -> str:
        old_dir = self.class_dir(project, cls)
        name = check_name(new, "class")
        if name == old_dir.name:
            return name
        with self._lock:
            self._check_new_class(project, name, old=old_dir.name)
            os.rename(old_dir, old_dir.parent / name)
        self._listings.pop(f"{project}/{old_dir.name}", None)
        return name

    def delete_class(self, project: str, cls: str) -> None:
        path = self.class_dir(project, cls)
        if self.list_images(project, path.name):
            raise StudioError(
                409,
                f"class {path.name!r} still holds images",
                "move or delete its images first, so nothing is lost by accident",
            )
        shutil.rmtree(path)
        self._listings.pop(f"{project}/{path.name}", None)

    # ------------------------------------------------------------ images
    def list_images(self, project: str, cls: str) -> list[StoredImage]:
        """Every image of a class (sub-folders too, as retrain sees them), newest first.

        Cached until a folder of the class changes (a folder's mtime moves when
        an entry is added, removed or renamed), so paging through 20,000
        images lists the folder once.
        """
        top = self.class_dir(project, cls)
        key = f"{project}/{top.name}"
        cached = self._listings.get(key)
        if cached is not None and cached[1] == _stamp(cached[0]):
            return cached[2]
        found: list[StoredImage] = []
        dirs = [top]
        folders: list[Path] = []
        stamps: list[int] = []  # each folder's mtime before it is listed: a change during the scan is seen
        seen: set[tuple[int, int]] = set()
        while dirs:
            folder = dirs.pop()
            try:
                st = folder.stat()
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                folders.append(folder)
                stamps.append(st.st_mtime_ns)
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError:
                continue
            prefix = folder.relative_to(top.parent).as_posix()
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir():
                        dirs.append(Path(e.path))
                    elif is_image_name(e.name):
                        st = e.stat()
                        found.append(StoredImage(f"{prefix}/{e.name}", e.name, st.st_size, st.st_mtime))
                except OSError:
                    continue
        found.sort(key=lambda i: (-i.mtime, i.path))
        self._listings[key] = (tuple(folders), tuple(stamps), found)
        return found

    def image_path(self, project: str, rel: Any) -> Path:
        """``<class>/<name>`` (or deeper) from a client -> the file, never outside the project."""
        if not isinstance(rel, str) or not rel:
            raise StudioError(422, "an image path must be text like 'cats/1a2b3c.jpg'")
        parts = rel.split("/")
        if len(parts) < 2 or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            raise StudioError(422, f"bad image path {rel!r}", "use the 'path' the listing returned")
        cls_dir = self.class_dir(project, parts[0])
        path = cls_dir.joinpath(*parts[1:])
        if not is_image_name(path.name):
            raise StudioError(422, f"{rel!r} is not an image file name")
        if not path.is_file():
            raise StudioError(404, f"no image {rel!r} in project {project!r}", "it may have been moved or deleted")
        return path

    def find_by_name(self, project: str, name: str) -> str | None:
        """The class that already holds a content-named file ``name`` (top level), if any."""
        root = self.project_dir(project)
        for cls in self._class_entries(project):
            if (root / cls / name).is_file():
                return cls
        return None

    def add_image(self, project: str, cls: str, filename: str, data: bytes, max_pixels: int) -> Added:
        """Store one upload under its content hash; a non-image or a copy is refused with a reason."""
        from .thumbs import probe_image

        folder = self.class_dir(project, cls)
        shown = PurePosixPath(filename.replace("\\", "/")).name or "upload"
        if not data:
            return Added(shown, "error", message=f"{shown}: empty file (0 bytes)")
        probe = probe_image(data, max_pixels)
        if probe.error:
            return Added(shown, "error", message=f"{shown}: {probe.error}")
        ext = os.path.splitext(shown)[1].lower()
        allowed = FORMAT_EXTENSIONS.get(probe.format or "", ())
        if not allowed:
            return Added(
                shown,
                "error",
                message=f"{shown}: {probe.format} images are not supported; use JPEG, PNG, WebP, BMP, GIF or TIFF",
            )
        if ext not in allowed:
            ext = allowed[0]
        name = hashlib.sha256(data).hexdigest()[:HASH_CHARS] + ext
        with self._lock:
            holder = self.find_by_name(project, name)
            if holder is not None:
                where = "this class" if holder == folder.name else f"class {holder!r}"
                return Added(shown, "duplicate", f"{holder}/{name}", f"{shown}: already in {where}")
            tmp = folder / f".upload-{secrets.token_hex(6)}"
            try:
                tmp.write_bytes(data)
                os.replace(tmp, folder / name)
            finally:
                tmp.unlink(missing_ok=True)
        return Added(shown, "added", f"{folder.name}/{name}")

    def move_images(self, project: str, paths: list[str], to: str) -> list[dict[str, str]]:
        target = self.class_dir(project, to)
        sources = [self.image_path(project, p) for p in paths]  # all checked before any moves
        moved = []
        with self._lock:
            for rel, src in zip(paths, sources):
                if src.parent == target:
                    continue
                dest = target / src.name
                if dest.exists():
                    if _same_file(src, dest):
                        src.unlink()  # the target already holds these bytes: keep one copy
                    else:
                        raise StudioError(
                            409, f"{target.name}/{src.name} already exists and differs", "rename one of them first"
                        )
                else:
                    os.rename(src, dest)
                moved.append({"from": rel, "to": f"{target.name}/{src.name}"})
        return moved

    def delete_images(self, project: str, paths: list[str]) -> int:
        files = [self.image_path(project, p) for p in paths]
        for f in files:
            f.unlink(missing_ok=True)
        return len(files)


def _stamp(folders: tuple[Path, ...]) -> tuple[int, ...]:
    out = []
    for folder in folders:
        try:
            out.append(folder.stat().st_mtime_ns)
        except OSError:
            out.append(-1)
    return tuple(out)


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
