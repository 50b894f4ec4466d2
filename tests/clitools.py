"""Running the headstart command in tests, as a user does, and checking what it prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def run_cli(*args: object, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``headstart ARGS`` in a fresh process, as a user runs it (HEADSTART_DEBUG unset)."""
    environ = {k: v for k, v in os.environ.items() if k != "HEADSTART_DEBUG"}
    return subprocess.run([*prefix, sys.executable, "-m", "headstart", *map(str, args)], capture_output=True,
                          text=True, env={**environ, **(env or {})}, timeout=timeout)


def assert_one_line_error(err: str, *fragments: str) -> str:
    """stderr ends with exactly ``error: ...`` then ``hint: ...``, and holds no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) >= 2 and lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[-2], (fragment, lines[-2])
    return lines[-2]


def unprivileged_prefix() -> tuple[str, ...] | None:
    """A command prefix under which file permissions apply, or None when there is none here.

    root reads anything; ``setpriv`` drops the two capabilities that let it, so a
    ``chmod 000`` file is really unreadable for the command run under it.
    """
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search")
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "open('/proc/1/environ').read()"],
                               capture_output=True, timeout=60)
    except OSError:
        return None
    return prefix if probe.returncode != 0 and b"PermissionError" in probe.stderr else None
