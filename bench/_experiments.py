"""The suite's experiments: which measurements, in which alternating order. Results are flat dicts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _files
import _measure
from _measure import Cache, MeasureError

log = logging.getLogger("bench")

LOADERS = list(_files.LOADER_FORMAT)
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("default", {}),
    ("prefault", {"prefault": True}),
    ("advice=sequential", {"advice": "sequential"}),
    ("advice=random", {"advice": "random"}),
    ("advice=willneed", {"advice": "willneed"}),
    ("hugepages", {"hugepages": True}),
    ("lock", {"lock": True}),
    ("method=pread", {"method": "pread"}),
    ("method=pread, threads=1", {"method": "pread", "threads": 1}),
    ("method=pread, hugepages", {"method": "pread", "hugepages": True}),
]
GROUP_LOADERS = ["ggmlfmt", "safetensors.load_file", "torch.load"]  # torch.load without mmap copies everything
CACHES: tuple[Cache, ...] = ("warm", "cold")


def rotated(items: Sequence[Any], k: int) -> list[Any]:
    """items started at position k: each round of alternating runs begins with a different contestant."""
    k %= len(items)
    return [*items[k:], *items[:k]]


def _attempt(what: dict[str, Any], progress: str, run: Callable[..., dict[str, Any]], *args: Any,
             **kwargs: Any) -> dict[str, Any]:
    """run(*args, **kwargs), labelled with `what`; a failure becomes a result with an "error" field."""
    try:
        result = {**run(*args, **kwargs), **what}
        log.info("%s: %.1f ms", progress, 1e3 * result.get("total_s", result.get("wall_s", 0.0)))
    except (MeasureError, OSError) as e:
        result = {**what, "error": str(e)}
        log.warning("%s: failed: %s", progress, e)
    return result


def load_vs_size(sets: dict[int, dict[str, Path]], reps: int) -> list[dict[str, Any]]:
    """Every loader on every size, warm then cold, `reps` alternating rounds each."""
    runs = []
    for dim, paths in sets.items():
        for cache in CACHES:
            if cache == "warm":
                for p in paths.values():
                    _measure.reset_warm(p)
            for rep in range(reps):
                for loader in rotated(LOADERS, rep):
                    path = paths[_files.LOADER_FORMAT[loader]]
                    what = {"experiment": "load", "dim": dim, "loader": loader, "cache": cache, "rep": rep}
                    runs.append(_attempt(what, f"load {cache} d{dim} {loader} #{rep + 1}",
                                         _measure.measure, loader, path, cache=cache))
    return runs


def options(path: Path, reps: int) -> list[dict[str, Any]]:
    """Every load option of ggmlfmt on one file, warm then cold, alternating with the default."""
    runs = []
    for cache in CACHES:
        if cache == "warm":
            _measure.reset_warm(path)
        for rep in range(reps):
            for name, opts in rotated(OPTIONS, rep):
                what = {"experiment": "options", "option": name, "cache": cache, "rep": rep}
                runs.append(_attempt(what, f"option {cache} {name} #{rep + 1}",
                                     _measure.measure, "ggmlfmt", path, cache=cache, options=opts))
    return runs


def groups(paths: dict[str, Path], ns: Sequence[int], reps: int) -> list[dict[str, Any]]:
    """N processes loading one file at once, for each N and loader, warm, alternating rounds."""
    runs = []
    for p in paths.values():
        _measure.reset_warm(p)
    for rep in range(reps):
        for n in ns:
            for loader in rotated(GROUP_LOADERS, rep):
                path = paths[_files.LOADER_FORMAT[loader]]
                what = {"experiment": "groups", "loader": loader, "n": n, "rep": rep}
                runs.append(_attempt(what, f"group x{n} {loader} #{rep + 1}",
                                     _measure.measure_group, loader, path, n, cache="warm"))
    return runs


def copies(src: Path, workdir: Path, reps: int) -> list[dict[str, Any]]:
    """Each copy method, source cold then warm, alternating rounds; the copy is deleted after each."""
    runs, dst = [], workdir / "copy-target.bin"
    for cache in CACHES:
        for rep in range(reps):
            for method in rotated(list(_measure.COPIERS), rep):
                what = {"experiment": "copy", "method": method, "cache": cache, "rep": rep}
                runs.append(_attempt(what, f"copy {cache} {method} #{rep + 1}",
                                     _measure.measure_copy, method, src, dst, cache=cache))
    dst.unlink(missing_ok=True)
    return runs


def timed(section: str, durations: dict[str, float], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), recording its wall time under `section`."""
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        durations[section] = time.perf_counter() - t0


def free_bytes(directory: str | os.PathLike[str]) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
