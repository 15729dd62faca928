"""One measurement in a fresh process: load a file with one loader, touch every page of every tensor, report JSON.

Run by bench/_measure.py, never by hand (but `python bench/_child.py ggmlfmt model.bin` works).
The loader's imports happen before the clock starts: we time opening and touching, not importing torch.
Prints one JSON line on stdout; with --hold, then waits for a line on stdin before exiting, so
a parent can keep N loaded processes alive at once.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ggmlfmt import loadopts

Loaded = tuple[Any, Mapping[str, Any]]  # (object that keeps the data alive, name -> array or torch tensor)


def _ggmlfmt(path: str, options: dict[str, Any]) -> Loaded:
    import ggmlfmt

    model = ggmlfmt.load(path, **options)
    return model, {name: model.tensors[name] for name in model.tensors}  # all views created: "open" is complete


def _memmap_floor(path: str, options: dict[str, Any]) -> Loaded:
    data = np.memmap(path, dtype=np.uint8, mode="r")  # the floor: one bare map of the whole file
    return data, {"": data}


def _safetensors_load_file(path: str, options: dict[str, Any]) -> Loaded:
    from safetensors.torch import load_file

    tensors = load_file(path)
    return tensors, tensors


def _safetensors_safe_open(path: str, options: dict[str, Any]) -> Loaded:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return tensors, tensors


def _gguf(path: str, options: dict[str, Any]) -> Loaded:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return reader, {t.name: t.data for t in reader.tensors}


def _torch_load(mmap: bool) -> Callable[[str, dict[str, Any]], Loaded]:
    def load(path: str, options: dict[str, Any]) -> Loaded:
        import torch

        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        return tensors, tensors

    return load


LOADERS: dict[str, Callable[[str, dict[str, Any]], Loaded]] = {
    "ggmlfmt": _ggmlfmt,
    "ggmlfmt-gguf": _ggmlfmt,
    "memmap-floor": _memmap_floor,
    "safetensors.load_file": _safetensors_load_file,
    "safetensors.safe_open": _safetensors_safe_open,
    "gguf.GGUFReader": _gguf,
    "torch.load-mmap": _torch_load(True),
    "torch.load": _torch_load(False),
}
NEEDS = {  # imports done before the clock starts
    "safetensors.load_file": ("torch", "safetensors.torch"),
    "safetensors.safe_open": ("torch", "safetensors"),
    "gguf.GGUFReader": ("gguf",),
    "torch.load-mmap": ("torch",),
    "torch.load": ("torch",),
}


def _as_numpy(t: Any) -> np.ndarray:
    return t if isinstance(t, np.ndarray) else t.numpy()  # torch tensors: a view, no copy


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rollup_kib() -> dict[str, int]:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def measure(loader: str, path: str, options: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Open with `loader`, touch every page of every tensor; (times, private memory and faults; the loaded data)."""
    for module in NEEDS.get(loader, ()):
        __import__(module)
    anon0, ru0 = _status_kib("RssAnon"), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    keep, tensors = LOADERS[loader](path, options)
    t1 = time.perf_counter()
    checksum = sum(loadopts.touch(_as_numpy(t)) for t in tensors.values())
    t2 = time.perf_counter()
    ru1, rollup = resource.getrusage(resource.RUSAGE_SELF), _rollup_kib()
    report = {
        "loader": loader, "options": options, "open_s": t1 - t0, "touch_s": t2 - t1, "total_s": t2 - t0,
        "n_tensors": len(tensors), "checksum": checksum,
        "rss_anon_added": (_status_kib("RssAnon") - anon0) * 1024, "rss_anon": _status_kib("RssAnon") * 1024,
        "rss_file": _status_kib("RssFile") * 1024, "pss": rollup.get("Pss", 0) * 1024,
        "anon_huge": rollup.get("AnonHugePages", 0) * 1024, "file_huge": rollup.get("FilePmdMapped", 0) * 1024,
        "locked": rollup.get("Locked", 0) * 1024,
        "major_faults": ru1.ru_majflt - ru0.ru_majflt, "minor_faults": ru1.ru_minflt - ru0.ru_minflt,
    }
    return report, (keep, tensors)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("loader", choices=sorted(LOADERS))
    p.add_argument("path")
    p.add_argument("--options", default="{}", help="JSON keyword arguments for ggmlfmt.load")
    p.add_argument("--hold", action="store_true", help="after reporting, wait for a line on stdin")
    args = p.parse_args()
    report, loaded = measure(args.loader, args.path, json.loads(args.options))
    print(json.dumps(report), flush=True)
    if args.hold:  # the data stays loaded until the parent has looked
        sys.stdin.readline()
    del loaded
    return 0


if __name__ == "__main__":
    sys.exit(main())
