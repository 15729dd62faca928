"""One load in a fresh process: open FILE with LOADER, optionally touch every page, print one JSON line (run by
bench/suite.py; `python bench/child.py ggmlfmt model.bin` by hand). Imports happen before the clock starts.
With --hold it then waits for a line on stdin, so a parent can keep N loaded processes alive at once.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import numpy as np

LOADERS = {"ggmlfmt": ("ggjt", "ggmlfmt"), "ggmlfmt-gguf": ("gguf", "ggmlfmt"), "memmap-floor": ("ggjt", "numpy"),
           "safetensors.load_file": ("safetensors", "safetensors.torch"), "gguf.GGUFReader": ("gguf", "gguf"),
           "torch.load-mmap": ("pt", "torch"), "torch.load": ("pt", "torch")}  # loader -> (the file it reads, its imports)


def load(loader: str, path: str, opts: dict[str, Any]) -> tuple[Any, list[Any]]:
    """Open path with loader: what keeps the data alive, and every array or torch tensor (all views made)."""
    if loader.startswith("ggmlfmt"):
        import ggmlfmt
        model = ggmlfmt.load(path, **opts)
        return model, [model.tensors[n] for n in model.tensors]
    if loader == "memmap-floor":
        data = np.memmap(path, dtype=np.uint8, mode="r")  # one bare map of the whole file: the least a loader does
        return data, [data]
    if loader == "gguf.GGUFReader":
        from gguf import GGUFReader
        r = GGUFReader(path)
        return r, [t.data for t in r.tensors]
    if loader == "safetensors.load_file":
        from safetensors.torch import load_file
        t = load_file(path)
    else:
        import torch
        t = torch.load(path, map_location="cpu", weights_only=True, mmap=loader == "torch.load-mmap")
    return t, list(t.values())


def touch(arrays: list[Any]) -> int:
    """Read one byte of every page (and the last byte) of every array (ggmlfmt's toucher); a checksum."""
    from ggmlfmt.tools.loadopts import touch as touch_pages
    return sum(touch_pages(a if isinstance(a, np.ndarray) else a.numpy()) for a in arrays)


def status_kib(pid: int | str, field: str) -> int:
    """A field of /proc/PID/status (or smaps_rollup for Pss) in KiB; 0 when gone."""
    name = "smaps_rollup" if field == "Pss" else "status"
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
    except OSError:
        return 0


def main(argv: list[str]) -> int:
    """argv: LOADER PATH [--options JSON (ggmlfmt.load's keywords)] [--no-touch] [--hold]. Open (and touch), then
    print the times, the private memory added and the major faults; the loaded data stays alive until the end."""
    loader, path = argv[0], argv[1]
    opts = json.loads(argv[argv.index("--options") + 1]) if "--options" in argv else {}
    __import__(LOADERS[loader][1])  # the loader's imports, before the clock
    anon0, ru0 = status_kib("self", "RssAnon"), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    keep, arrays = load(loader, path, opts)
    t1 = time.perf_counter()
    checksum = touch(arrays) if "--no-touch" not in argv else 0
    t2 = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"loader": loader, "open_s": t1 - t0, "touch_s": t2 - t1, "total_s": t2 - t0, "n": len(arrays),
                      "checksum": checksum, "anon_added": (status_kib("self", "RssAnon") - anon0) * 1024,
                      "major_faults": ru1.ru_majflt - ru0.ru_majflt}), flush=True)
    if "--hold" in argv:
        sys.stdin.readline()
    del keep, arrays
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
