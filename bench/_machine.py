"""What the benchmarks ran on: CPU, memory, kernel, filesystem, page-cache settings, library versions."""

from __future__ import annotations

import os
import platform
import resource
import sys
from importlib import metadata
from pathlib import Path


def _first(path: str, prefix: str, default: str = "?") -> str:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def _read(path: str, default: str = "?") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def mount_of(path: str | os.PathLike[str]) -> tuple[str, str, str]:
    """(device, mount point, filesystem type) of the mount holding `path`, from /proc/mounts."""
    real, best = os.path.realpath(path), ("?", "/", "?")
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, *_ = line.split()
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
                best = (dev, mnt, fstype)
    return best


def _readahead(device: str) -> str:
    name = os.path.basename(device)
    value = _read(f"/sys/block/{name}/queue/read_ahead_kb", "")
    return f"{value} KiB" if value else "?"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _memlock() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024:,} KiB"
    eff = int(_first("/proc/self/status", "CapEff:", "0"), 16)
    return limit + (" (CAP_IPC_LOCK held: mlock not limited)" if eff >> 14 & 1 else "")


def describe(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Name -> value lines describing this machine and the filesystem holding `directory`."""
    dev, mnt, fstype = mount_of(directory)
    virt = " (virtual machine)" if " hypervisor" in _first("/proc/cpuinfo", "flags", "") else ""
    mem_kib = int(_first("/proc/meminfo", "MemTotal", "0 kB").split()[0])
    return {
        "CPU": _first("/proc/cpuinfo", "model name") + virt,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / (1 << 20):.1f} GiB",
        "kernel": platform.release(),
        "filesystem": f"{fstype} on {dev} mounted at {mnt} (files in {directory}), readahead {_readahead(dev)}",
        "transparent huge pages": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "RLIMIT_MEMLOCK": _memlock(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "Python": sys.version.split()[0],
        "numpy / torch / safetensors / gguf": " / ".join(
            _version(d) for d in ("numpy", "torch", "safetensors", "gguf")),
    }
