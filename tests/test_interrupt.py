"""No lost or corrupt work: killed, interrupted and concurrent runs, unwritable caches.

Each test runs the real ``headstart retrain`` in a child process on real
Fashion-MNIST images and a fresh bottleneck cache (the converted model is
linked in from the session's cache, so no test converts it again), then kills
it, interrupts it, races it against another, or takes its disk away.
SQLite-level behaviour (WAL, one transaction per batch, lock timeouts) is in
test_cache.py; this file checks it holds through the command.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headstart.bundle import load_bundle
from headstart.cache import BottleneckCache
from headstart.runtimes import DEFAULT_BATCH_SIZE

from clitools import assert_one_line_error, run_cli, unprivileged_prefix

BATCH = DEFAULT_BATCH_SIZE  # the extraction batch: one cache transaction each
CLASSES = ("Bag", "Coat", "Sandal", "Trouser")
FLAGS = ("--how_many_training_steps", "200", "--no_report", "--workers", "1", "--format", "json")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> Path:
    """Four real classes (120 images): a few seconds of extraction."""
    root = tmp_path_factory.mktemp("interrupt") / "photos"
    for name in CLASSES:
        shutil.copytree(fashion_dir / name, root / name)
    return root


@pytest.fixture(scope="module")
def models_dir(trained_run, shared_cache_dir: Path) -> Path:
    """The session cache's converted models (``trained_run`` has built them)."""
    return shared_cache_dir / "models"


def new_cache(path: Path, models_dir: Path | None) -> Path:
    """An empty bottleneck cache, holding the converted model when ``models_dir`` is given."""
    path.mkdir(parents=True)
    if models_dir is not None and models_dir.is_dir():
        try:
            shutil.copytree(models_dir, path / "models", copy_function=os.link)
        except OSError:  # another file system: copy
            shutil.rmtree(path / "models", ignore_errors=True)
            shutil.copytree(models_dir, path / "models")
    return path


def count_rows(cache: Path) -> int:
    """Committed bottlenecks, read the way a second process would (read-only)."""
    db = cache / BottleneckCache.FILENAME
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return con.execute("SELECT COUNT(*) FROM bottlenecks").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # not created yet, or busy
        return 0


def retrain_cmd(images: Path, cache: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "headstart", "retrain", "--image_dir", str(images), "--bottleneck_dir", str(cache),
            "--output_dir", str(out), *FLAGS]


def start_and_stop(images: Path, cache: Path, out: Path, sig: signal.Signals, after_rows: int = BATCH
                   ) -> tuple[int, str]:
    """Start a retrain, send ``sig`` once ``after_rows`` bottlenecks are committed; (exit code, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "HEADSTART_DEBUG"}
    # A shell that starts a job in the background without job control makes it ignore SIGINT, and
    # Python then installs no KeyboardInterrupt handler: give the child the default, as a terminal would.
    child = subprocess.Popen(retrain_cmd(images, cache, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if count_rows(cache) >= after_rows:
                child.send_signal(sig)
                break
            time.sleep(0.005)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, err


def check_cache(cache: Path) -> int:
    """Integrity of the cache file after the child died; returns its row count."""
    with sqlite3.connect(cache / BottleneckCache.FILENAME) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with BottleneckCache(cache) as c:
        assert c.check_integrity()
        return c.stats().entries


def resume(images: Path, cache: Path, out: Path) -> dict:
    result = run_cli(*retrain_cmd(images, cache, out)[3:])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def n_images(images: Path) -> int:
    return sum(1 for _ in images.glob("*/*.png"))


# --------------------------------------------------------------------------- killed and interrupted


@pytest.mark.slow
def test_sigkill_mid_extraction_then_resume_keeps_every_batch(images: Path, models_dir: Path, tmp_path: Path,
                                                              cli) -> None:
    cache, out = new_cache(tmp_path / "cache", models_dir), tmp_path / "runs" / "run"
    code, _ = start_and_stop(images, cache, out, signal.SIGKILL)
    assert code == -signal.SIGKILL, "the run ended before it could be killed"

    kept = check_cache(cache)
    assert BATCH <= kept < n_images(images)
    assert kept % BATCH == 0, "a batch was half written"
    assert not out.exists()  # killed before the end: no run directory at all ...
    code, _, err = cli("label", "--model", out, images / "Bag")
    assert code == 2 and "no such file or folder" in assert_one_line_error(err)  # ... so nothing for label to load

    metrics = resume(images, cache, out)
    assert metrics["bottlenecks"] == {"computed": n_images(images) - kept, "cached": kept, "skipped": 0}
    assert check_cache(cache) == n_images(images)
    assert load_bundle(out).labels == CLASSES


@pytest.mark.slow
def test_ctrl_c_mid_extraction_says_how_to_resume(images: Path, models_dir: Path, tmp_path: Path) -> None:
    cache, out = new_cache(tmp_path / "cache", models_dir), tmp_path / "run"
    code, err = start_and_stop(images, cache, out, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "interrupted: completed batches are kept in the cache; run the same command to resume")
    kept = check_cache(cache)
    assert kept >= BATCH and kept % BATCH == 0
    assert not out.exists()
    assert resume(images, cache, out)["bottlenecks"]["cached"] == kept


# --------------------------------------------------------------------------- concurrent runs


def _race(images: Path, cache: Path, tmp_path: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "HEADSTART_DEBUG"}
    outs = [tmp_path / "run-a", tmp_path / "run-b"]
    children = [subprocess.Popen(retrain_cmd(images, cache, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env) for out in outs]
    results = [child.communicate(timeout=600) for child in children]
    for child, (_, err) in zip(children, results):
        assert child.returncode == 0, err
    heads = [(out / "head.safetensors").read_bytes() for out in outs]
    assert heads[0] == heads[1], "two runs on the same images and cache trained different models"
    assert check_cache(cache) == n_images(images)
    return [json.loads(stdout) for stdout, _ in results]


@pytest.mark.slow
def test_two_runs_share_one_cache(images: Path, models_dir: Path, tmp_path: Path) -> None:
    metrics = _race(images, new_cache(tmp_path / "cache", models_dir), tmp_path)
    assert metrics[0]["test"] == metrics[1]["test"]
    for m in metrics:
        assert m["bottlenecks"]["computed"] + m["bottlenecks"]["cached"] == n_images(images)


@pytest.mark.slow
def test_two_cold_runs_convert_the_model_once_each_without_clashing(fashion_dir: Path, tmp_path: Path) -> None:
    """No converted model yet: both runs export it at the same time, to one atomic file."""
    cache = new_cache(tmp_path / "cache", None)
    _race(fashion_dir, cache, tmp_path)
    models = sorted(p.name for p in (cache / "models").iterdir()) if (cache / "models").exists() else []
    assert all(not name.startswith(".") for name in models), models  # no temp file left behind


# --------------------------------------------------------------------------- caches that cannot be written


def test_cache_folder_under_a_regular_file(images: Path, tmp_path: Path, cli) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    code, _, err = cli("retrain", "--image_dir", images, "--bottleneck_dir", blocker / "cache",
                       "--output_dir", tmp_path / "run")
    assert code == 1
    assert_one_line_error(err, "cannot create bottleneck cache directory", "Not a directory")
    assert not (tmp_path / "run").exists()


def _unprivileged() -> tuple[str, ...]:
    prefix = unprivileged_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: a read-only folder is writable here")
    return prefix


def test_read_only_cache_folder(images: Path, tmp_path: Path) -> None:
    prefix = _unprivileged()
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        result = run_cli("retrain", "--image_dir", images, "--bottleneck_dir", cache, "--output_dir",
                         tmp_path / "run", prefix=prefix)
    finally:
        cache.chmod(0o755)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "cannot write bottleneck cache")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_read_only_cache_with_every_vector_in_it(images: Path, models_dir: Path, tmp_path: Path) -> None:
    """A cache someone else filled and shared read-only: still a clear error, and left unharmed."""
    prefix = _unprivileged()
    cache = new_cache(tmp_path / "cache", models_dir)
    resume(images, cache, tmp_path / "first")
    before = (cache / BottleneckCache.FILENAME).read_bytes()
    files = [p for p in cache.iterdir() if p.is_file()]
    for p in files:
        p.chmod(0o444)
    cache.chmod(0o555)
    try:
        result = run_cli("retrain", "--image_dir", images, "--bottleneck_dir", cache, "--output_dir",
                         tmp_path / "run", prefix=prefix)
    finally:
        cache.chmod(0o755)
        for p in files:
            p.chmod(0o644)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "cannot write bottleneck cache", "readonly")
    assert (cache / BottleneckCache.FILENAME).read_bytes() == before


def _private_tmpfs_works(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    where.mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(where))}"],
                           capture_output=True)
    return probe.returncode == 0


def in_small_disk(mount: Path, size_kib: int, script: str, options: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) with a ``size_kib`` tmpfs at ``mount``, in a private mount namespace:
    a real full (or read-only) disk that no other process sees."""
    if not _private_tmpfs_works(mount):
        pytest.skip("cannot mount a private tmpfs here (needs unshare and mount rights)")
    opts = f"size={size_kib}k" + (f",{options}" if options else "")
    env = {k: v for k, v in os.environ.items() if k != "HEADSTART_DEBUG"}
    return subprocess.run(["unshare", "-m", "sh", "-c",
                           f"mount -t tmpfs -o {opts} tmpfs {shlex.quote(str(mount))} && {script}"],
                          capture_output=True, text=True, env=env, timeout=600)


def _headstart(*args: object) -> str:
    return shlex.join([sys.executable, "-m", "headstart", *map(str, args)])


def test_full_disk_is_a_clear_error_and_the_cache_stays_intact(images: Path, models_dir: Path,
                                                              tmp_path: Path) -> None:
    mount, out = tmp_path / "disk", tmp_path / "run"
    models = sorted(models_dir.glob("*-features.onnx")) if models_dir.is_dir() else []
    room = sum(p.stat().st_size for p in models) // 1024 + 300  # the model, and room for ~40 vectors
    check = (f"{shlex.quote(sys.executable)} -c 'import sys; from headstart.cache import BottleneckCache; "
             f"c = BottleneckCache(sys.argv[1]); print(\"integrity\", c.check_integrity(), c.stats().entries)' "
             f"{shlex.quote(str(mount))}")
    copy = (f"mkdir {shlex.quote(str(mount / 'models'))} && cp {' '.join(shlex.quote(str(p)) for p in models)} "
            f"{shlex.quote(str(mount / 'models'))} && ") if models else ""
    result = in_small_disk(mount, room, f"{copy}{_headstart('retrain', '--image_dir', images, '--bottleneck_dir', mount, '--output_dir', out, '-q')}; "
                                        f"echo exit=$?; {check}")
    assert "exit=1" in result.stdout, result.stdout + result.stderr
    assert_one_line_error(result.stderr, "disk is full")
    integrity = [line.split() for line in result.stdout.splitlines() if line.startswith("integrity")]
    assert integrity and integrity[0][1] == "True" and int(integrity[0][2]) % BATCH == 0
    assert not out.exists()


def test_read_only_file_system(images: Path, tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    result = in_small_disk(mount, 1024, _headstart("retrain", "--image_dir", images, "--bottleneck_dir", mount,
                                                   "--output_dir", tmp_path / "run"), options="ro")
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "cannot write bottleneck cache")


@pytest.mark.slow
def test_full_disk_while_converting_the_model(images: Path, tmp_path: Path) -> None:
    """The ONNX export (13 MB) fills a 1 MB disk: one line and a hint, not an unexpected error."""
    mount = tmp_path / "disk"
    result = in_small_disk(mount, 1024, _headstart("retrain", "--image_dir", images, "--bottleneck_dir", mount,
                                                   "--output_dir", tmp_path / "run", "--runtime", "onnxruntime"))
    assert result.returncode == 1, result.stderr
    line = assert_one_line_error(result.stderr)
    assert "No space left on device" in line or "disk is full" in line, line
    assert "unexpected" not in line
