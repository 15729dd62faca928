"""PNG figures for docs/benchmarks.md (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
from _experiments import CACHES, GROUP_LOADERS, LOADERS, OPTIONS  # noqa: E402
from _stats import Runs, distinct, median, ratio  # noqa: E402


def _ok(runs: Runs) -> Runs:
    return [r for r in runs if "error" not in r]


def _sizes(runs: Runs, loader: str) -> list[tuple[int, float]]:
    return sorted({(r["dim"], r["file_size"]) for r in runs if r["loader"] == loader}, key=lambda t: t[1])


def load_time(runs: Runs, out: Path) -> None:
    """Open + touch time against file size, one panel per cache state, one line per loader."""
    runs = _ok(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, cache in zip(axes, CACHES):
        for loader in LOADERS:
            pts = [(size / 1e9, median(runs, "total_s", loader=loader, dim=dim, cache=cache))
                   for dim, size in _sizes(runs, loader)]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=loader, linestyle="--" if loader == "memmap-floor" else "-")
        ax.set(xscale="log", yscale="log", xlabel="file size (GB)", title=f"{cache} cache")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("open + touch every page (s, median)")
    next((ax for ax in reversed(axes) if ax.lines), axes[0]).legend(fontsize=8)
    _save(fig, out / "load_time.png")


def load_memory(runs: Runs, out: Path) -> None:
    """Private memory added by the load (RssAnon), warm, against file size."""
    runs = _ok(runs)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for loader in LOADERS:
        pts = [(size / 1e9, (median(runs, "rss_anon_added", loader=loader, dim=dim, cache="warm") or 0) / 2**20)
               for dim, size in _sizes(runs, loader)]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=loader)
    ax.set(xscale="log", xlabel="file size (GB)", ylabel="RssAnon added (MiB, median)",
           title="private memory after open + touch (warm)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out / "load_memory.png")


def options(runs: Runs, out: Path) -> None:
    """Each option's open + touch time as a ratio to the default, warm and cold bars."""
    runs = _ok(runs)
    names = [n for n, _ in OPTIONS if median(runs, "total_s", option=n, cache="warm") is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    for i, cache in enumerate(CACHES):
        base = median(runs, "total_s", option="default", cache=cache)
        vals = [ratio(median(runs, "total_s", option=n, cache=cache), base) or 0 for n in names]
        ax.barh([k + 0.4 * i for k in range(len(names))], vals, height=0.4, label=cache)
    ax.set_yticks([k + 0.2 for k in range(len(names))], names)
    ax.axvline(1, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="open + touch time / default's (median; < 1 is faster)",
           title="load options of ggmlfmt.load")
    ax.invert_yaxis()
    ax.legend()
    _save(fig, out / "options.png")


def nprocs(runs: Runs, out: Path) -> None:
    """Total private memory against the number of processes loading the same file."""
    runs = _ok(runs)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for loader in GROUP_LOADERS:
        ns = sorted(distinct([r for r in runs if r["loader"] == loader], "n"))
        ys = [(median(runs, "rss_anon_added_total", loader=loader, n=n) or 0) / 2**20 for n in ns]
        if ns:
            ax.plot(ns, ys, marker="o", label=loader)
    ax.set(xlabel="processes loading the same file", ylabel="Σ RssAnon added (MiB, median)",
           title="total private memory of N processes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out / "nprocs.png")


def copy(runs: Runs, out: Path) -> None:
    """Copy time per method, source cold and warm."""
    runs = _ok(runs)
    methods = distinct(runs, "method")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, cache in enumerate(CACHES):
        vals = [median(runs, "total_s", method=m, cache=cache) or 0 for m in methods]
        ax.barh([k + 0.4 * i for k in range(len(methods))], vals, height=0.4, label=f"source {cache}")
    ax.set_yticks([k + 0.2 for k in range(len(methods))], methods)
    ax.set(xlabel="wall time (s, median)", title="copying a model file")
    ax.invert_yaxis()
    ax.legend()
    _save(fig, out / "copy.png")


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
