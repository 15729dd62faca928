"""Peak memory of a command, sampled from /proc/PID/status while it runs (shared by the bench scripts)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

SAMPLE_S = 0.001  # 1 ms: short peaks (a cast buffer) must not slip between two samples


def status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """The named fields of /proc/PID/status in KiB ({} once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(line.split()[1]) for line in f for k in keys if line.startswith(k + ":")}
    except (FileNotFoundError, ProcessLookupError):
        return {}


def peak_rss(cmd: Sequence[str], cwd: Path) -> tuple[int, int]:
    """Run `cmd` once; return its peak RssAnon (private) and RssFile (mapped page cache) in KiB.

    Raises:
        RuntimeError: the command failed.
    """
    proc = subprocess.Popen(list(cmd), cwd=cwd)
    anon = file = 0
    while proc.poll() is None:
        s = status_kib(proc.pid, ("RssAnon", "RssFile"))
        anon, file = max(anon, s.get("RssAnon", 0)), max(file, s.get("RssFile", 0))
        time.sleep(SAMPLE_S)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed with status {proc.returncode}")
    return anon, file
