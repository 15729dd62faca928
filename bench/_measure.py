"""The suite's measuring machinery: cache states, one fresh process per measurement, groups of N, copies.

Every function here returns plain JSON-ready dicts; bench/suite.py decides what to run and
bench/_report.py turns the results into tables and plots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from ggmlfmt import cachestat

BENCH = Path(__file__).resolve().parent
CHILD = BENCH / "_child.py"
Cache = Literal["warm", "cold"]
READ_CHUNK = 16 << 20


class MeasureError(RuntimeError):
    """A measuring subprocess failed; carries its command and the end of its stderr."""


def read_through(path: str | os.PathLike[str]) -> None:
    """Read the whole file sequentially, like `cat FILE > /dev/null`, so its pages are cached."""
    buf = bytearray(READ_CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while n := os.preadv(fd, [buf], offset):
            offset += n
    finally:
        os.close(fd)


def reset_warm(path: str | os.PathLike[str]) -> float:
    """Evict, then read sequentially: the same warm page cache (folio sizes included) every time; residency."""
    cachestat.evict(path)
    read_through(path)
    return cachestat.residency(path).fraction


def prepare(path: str | os.PathLike[str], cache: Cache) -> float:
    """Bring the file into the cache state (cold: evicted; warm: fully cached); its residency just after."""
    if cache == "cold":
        cachestat.evict(path)
    elif cachestat.residency(path).fraction < 0.999:
        read_through(path)
    return cachestat.residency(path).fraction


def _child_command(loader: str, path: str | os.PathLike[str], options: dict[str, Any] | None,
                   hold: bool = False) -> list[str]:
    cmd = [sys.executable, str(CHILD), loader, os.fspath(path), "--options", json.dumps(options or {})]
    return cmd + ["--hold"] if hold else cmd


def _parse_report(cmd: list[str], stdout: str, stderr: str, returncode: int | None) -> dict[str, Any]:
    """The child's JSON line.

    Raises:
        MeasureError: the child failed or printed no JSON.
    """
    lines = stdout.strip().splitlines()
    if returncode or not lines:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise MeasureError(f"{' '.join(cmd[1:4])}: exit status {returncode}: {tail}")
    return json.loads(lines[-1])


def measure(loader: str, path: str | os.PathLike[str], *, cache: Cache,
            options: dict[str, Any] | None = None, timeout: float = 600) -> dict[str, Any]:
    """One load + touch of `path` by `loader` in a fresh process, after bringing the file to `cache` state.

    Raises:
        MeasureError: the child failed. subprocess.TimeoutExpired.
    """
    before = prepare(path, cache)
    cmd = _child_command(loader, path, options)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    result = _parse_report(cmd, out.stdout, out.stderr, out.returncode)
    result.update(cache=cache, residency_before=before, file_size=os.path.getsize(path))
    return result


def _proc_kib(pid: int, name: str, field: str) -> int:
    with open(f"/proc/{pid}/{name}") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure_group(loader: str, path: str | os.PathLike[str], n: int, *, cache: Cache,
                  timeout: float = 600) -> dict[str, Any]:
    """N processes load + touch the same file at once; memory summed while all N hold their data.

    Raises:
        MeasureError: a child failed.
    """
    prepare(path, cache)
    cmds = [_child_command(loader, path, None, hold=True) for _ in range(n)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    try:
        lines = [p.stdout.readline() for p in procs]  # type: ignore[union-attr]
        wall = time.perf_counter() - t0
        held = all(line.strip() for line in lines)  # every child reported and now waits on stdin
        pss = sum(_proc_kib(p.pid, "smaps_rollup", "Pss") for p in procs) * 1024 if held else 0
        anon = sum(_proc_kib(p.pid, "status", "RssAnon") for p in procs) * 1024 if held else 0
    finally:
        ends = [p.communicate("\n", timeout=timeout) for p in procs]
    reports = [_parse_report(c, line, err, 0 if line.strip() else p.returncode or -1)
               for c, line, (_, err), p in zip(cmds, lines, ends, procs)]
    return {"loader": loader, "n": n, "cache": cache, "wall_s": wall, "pss_total": pss, "rss_anon_total": anon,
            "rss_anon_added_total": sum(r["rss_anon_added"] for r in reports),
            "max_load_s": max(r["total_s"] for r in reports)}


def _ggmlfmt_command() -> list[str]:
    script = Path(sys.executable).with_name("ggmlfmt")  # the console script of this environment
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from ggmlfmt.cli import main; sys.exit(main())"]


COPIERS = {
    "ggmlfmt copy": lambda s, d: [*_ggmlfmt_command(), "copy", s, d, "--force", "--quiet"],
    "cp": lambda s, d: ["cp", s, d],
    "cp + sha256sum": lambda s, d: ["sh", "-c", 'cp "$0" "$1" && sha256sum "$0" "$1" >/dev/null', s, d],
}


def measure_copy(method: str, src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                 cache: Cache, timeout: float = 600) -> dict[str, Any]:
    """Copy src to dst with `method`; its time and what it left in the page cache of both files.

    Raises:
        MeasureError: the copy failed.
    """
    Path(dst).unlink(missing_ok=True)
    before = prepare(src, cache)
    cmd = COPIERS[method](os.fspath(src), os.fspath(dst))
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise MeasureError(f"{method}: exit status {out.returncode}: {out.stderr.strip()[-300:]}")
    result = {"method": method, "cache": cache, "total_s": wall, "file_size": os.path.getsize(src),
              "src_cached_before": before, "src_cached_after": cachestat.residency(src).fraction,
              "dst_cached_after": cachestat.residency(dst).fraction}
    Path(dst).unlink()
    return result


def have_command(name: str) -> bool:
    return shutil.which(name) is not None
