"""docs/benchmarks.md from the suite's results: every figure a median, next to its ratio against a named alternative."""

from __future__ import annotations

from typing import Any

from _experiments import CACHES, GROUP_LOADERS, LOADERS, OPTIONS
from _stats import Runs, count, distinct, gb, median, mib, ms, pct, ratio, select, table, times

BASE = "ggmlfmt"  # the loader every other loader is compared with


def _errors(runs: Runs) -> str:
    failed = [r for r in runs if "error" in r]
    if not failed:
        return ""
    seen = sorted({f"{r.get('loader') or r.get('option') or r.get('method')}: {r['error']}" for r in failed})
    return "\n\nFailed runs (left out of the medians):\n\n" + "\n".join(f"- {line}" for line in seen)


def _sizes(runs: Runs) -> list[tuple[int, int]]:
    """(dim, file size of the ggjt file) per size, smallest first."""
    out = {r["dim"]: r["file_size"] for r in runs if r.get("loader") == BASE and "error" not in r}
    return sorted(out.items(), key=lambda kv: kv[1])


def _load_table(runs: Runs, cache: str, key: str) -> str:
    sizes = _sizes(runs)
    rows = []
    for loader in LOADERS:
        cells = [f"`{loader}`"]
        for dim, _ in sizes:
            ok = [r for r in select(runs, dim=dim, cache=cache) if "error" not in r]
            value, base = median(ok, key, loader=loader), median(ok, key, loader=BASE)
            cells.append(f"{ms(value)} ({times(ratio(value, base))})" if key.endswith("_s") else
                         f"{mib(value)}")
        rows.append(cells)
    return table(["loader", *(gb(size) for _, size in sizes)], rows)


def load_section(runs: Runs) -> str:
    """Load + touch against file size, warm and cold."""
    ok = [r for r in runs if "error" not in r]
    reps = max((count(ok, loader=BASE, dim=d, cache="warm") for d, _ in _sizes(runs)), default=0)
    parts = [
        "## Loading: open + touch every page, against file size\n",
        "Each cell: median of the runs, and in parentheses that median divided by `ggmlfmt`'s median at the same "
        f"size and cache state (so `ggmlfmt` is 1×; 3× means three times as long). {reps} alternating rounds per "
        "cell, each load in a fresh process. Open = until every tensor is available as an array; touch = "
        "read one byte of every page of every tensor. `memmap-floor` is a bare `numpy.memmap` of the whole "
        "file with every page touched: the least any mmap loader can do. The files hold the same 147 "
        "LLaMA-shaped tensors (16 layers, f16 matrices, f32 norms); the ggjt and GGUF files also carry the "
        "32,000-token vocabulary (a safetensors or torch file has none: its tokenizer is a separate file).\n",
        "![load time](img/load_time.png)\n",
    ]
    for cache in CACHES:
        parts += [f"### {cache.capitalize()} cache: open + touch\n", _load_table(runs, cache, "total_s"), "",
                  f"### {cache.capitalize()} cache: open only\n", _load_table(runs, cache, "open_s"), ""]
    parts += ["### Private memory added (RssAnon after touch minus before open, warm)\n",
              "Memory the load made private to the process: copies. Mapped file pages are shared page cache "
              "and do not count.\n", "![private memory](img/load_memory.png)\n",
              _load_table(runs, "warm", "rss_anon_added"), _errors(runs)]
    return "\n".join(parts)


def options_table(runs: Runs) -> str:
    """One row per load option: warm and cold time against the default, memory, huge pages, faults."""
    ok = [r for r in runs if "error" not in r]
    rows = []
    for name, _ in OPTIONS:
        cells = [f"`{name}`"]
        for cache in CACHES:
            value = median(ok, "total_s", option=name, cache=cache)
            cells.append(f"{ms(value)} ({times(ratio(value, median(ok, 'total_s', option='default', cache=cache)))})")
        cells += [ms(median(ok, "open_s", option=name, cache="cold")),
                  mib(median(ok, "rss_anon_added", option=name, cache="warm")),
                  f"{mib(median(ok, 'anon_huge', option=name, cache='warm'))} / "
                  f"{mib(median(ok, 'file_huge', option=name, cache='warm'))}",
                  f"{median(ok, 'major_faults', option=name, cache='cold') or 0:,.0f}"]
        rows.append(cells)
    header = ["option", "warm: open + touch (× default)", "cold: open + touch (× default)", "cold: open",
              "private memory", "2 MiB pages anon / file (warm)", "major faults (cold)"]
    return table(header, rows) + _errors(runs)


def options_intro(file_size: int) -> str:
    return ("`ggmlfmt.load(path, **option)` on a "
            f"{gb(file_size)} ggjt file, then touch every page; ratio against `default` (no option) measured in "
            "the same alternating rounds. Warm: the file was read once sequentially after eviction; cold: "
            "evicted with `ggmlfmt evict` before every run.")


def options_section(runs: Runs, file_size: int) -> str:
    """Each load option's time and memory, against the default, warm and cold."""
    return "\n".join([f"## Load options ({gb(file_size)} ggjt file)\n",
                      options_intro(file_size) + " What each option does: [loading.md](loading.md).\n",
                      "![options](img/options.png)\n", options_table(runs)])


def splice(text: str, name: str, content: str) -> str:
    """Replace what lies between <!-- NAME:begin --> and <!-- NAME:end --> in text (unchanged without markers)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + content.strip() + "\n" + end + rest.split(end, 1)[1]


def groups_section(runs: Runs, file_size: int) -> str:
    """Total private memory of N processes loading one file."""
    ok = [r for r in runs if "error" not in r]
    ns = sorted(distinct(ok, "n"))
    rows = []
    for loader in GROUP_LOADERS:
        cells = [f"`{loader}`"]
        for n in ns:
            value = median(ok, "rss_anon_added_total", loader=loader, n=n)
            base = median(ok, "rss_anon_added_total", loader=BASE, n=n)
            pss = median(ok, "pss_total", loader=loader, n=n)
            cells.append(f"{mib(value)} ({times(ratio(value, base))}); Σ PSS {mib(pss)}")
        rows.append(cells)
    return "\n".join([
        f"## N processes loading the same {gb(file_size)} file (warm)\n",
        "N processes start together, each loads and touches every tensor, then all hold their data while the "
        "parent reads their memory. Cell: total private memory the loads added (Σ RssAnon after minus before, "
        "median), its ratio to `ggmlfmt` at the same N, and Σ PSS (all memory of the N processes, shared "
        "pages split among them, interpreter included).\n",
        "![N processes](img/nprocs.png)\n", table(["loader", *(f"N = {n}" for n in ns)], rows), _errors(runs)])


def copy_section(runs: Runs, file_size: int) -> str:
    """ggmlfmt copy against cp: time and what stays in the page cache."""
    ok = [r for r in runs if "error" not in r]
    methods = distinct(ok, "method")
    rows = []
    for cache in CACHES:
        base = median(ok, "total_s", method="cp", cache=cache)
        for method in methods:
            value = median(ok, "total_s", method=method, cache=cache)
            rows.append([cache, f"`{method}`", f"{ms(value)} ({times(ratio(value, base))})",
                         pct(median(ok, "src_cached_before", method=method, cache=cache)),
                         pct(median(ok, "src_cached_after", method=method, cache=cache)),
                         pct(median(ok, "dst_cached_after", method=method, cache=cache))])
    return "\n".join([
        f"## Copying a {gb(file_size)} file: `ggmlfmt copy` against `cp`\n",
        "Time of the whole command (× `cp` with the source in the same cache state), and the share of each "
        "file in the page cache afterwards. `ggmlfmt copy` also fsyncs and hashes both files (sha256); "
        "`cp + sha256sum` is the equally verified alternative, `cp` leaves its writes dirty in the cache.\n",
        "![copy](img/copy.png)\n",
        table(["source", "method", "time (× cp)", "source cached before", "source cached after", "copy cached"],
              rows), _errors(runs)])


def header(machine: dict[str, str], meta: dict[str, Any]) -> str:
    """Title, provenance, machine."""
    quick = ("\n\n> **Quick smoke run (`--quick`)**: tiny files and few rounds; these numbers show that the "
             "machinery works, not how fast anything is." if meta["quick"] else "")
    lines = [f"- {k}: {v}" for k, v in machine.items()]
    return "\n".join([
        "# Benchmarks\n",
        "<!-- Generated by bench/suite.py; edits are overwritten. -->\n",
        f"Generated by `{meta['command']}` on {meta['date']} in {meta['duration_min']:.1f} minutes.{quick}\n",
        "Every figure is the median of alternating runs (each contestant once per round, the starting one "
        "rotating), each run in a fresh process, with its ratio against a named alternative measured in the "
        "same run of the suite. Cold means the file's pages were dropped with `ggmlfmt evict` "
        "(posix_fadvise DONTNEED) and checked gone with mincore just before the run; on a virtual machine "
        "the host may still cache the disk, so cold reads here can be faster than a real disk.\n",
        "## Machine\n", *lines, ""])


def durations_section(durations: dict[str, float]) -> str:
    rows = [[name, f"{seconds / 60:.1f} min"] for name, seconds in durations.items()]
    return "## Run time of the suite\n\n" + table(["section", "wall time"], rows)
