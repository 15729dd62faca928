"""The `ggmlfmt` command: inspect, verify, residency, evict, copy, load.

Only this module (and convert/cli.py, migrate/cli.py, with the runner they share in ggmlfmt/command.py)
prints, exits or configures logging.
stdout carries results only; logs, progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from ggmlfmt.command import add_common_options, run
from ggmlfmt.reader import load, read_index
from ggmlfmt.summary import column_width, describe, render
from ggmlfmt.tools.loadopts import ADVICE, touch

if TYPE_CHECKING:  # the diagnostics and the copy are imported by the commands that use them
    from ggmlfmt.tools.cachestat import Residency

log = logging.getLogger("ggmlfmt")


def _inspect(args: argparse.Namespace) -> int:
    desc = describe(read_index(args.file))
    print(json.dumps(desc, indent=2) if args.json else render(desc))
    return 0


def _verify(args: argparse.Namespace) -> int:
    read_index(args.file)  # every structural check lives in the decoder
    print("OK")
    return 0


LOAD_OPTIONS = ("prefault", "advice", "lock", "hugepages", "method", "threads")  # ggmlfmt.load's levers


def add_load_options(p: argparse.ArgumentParser) -> None:
    """The page-cache levers of ggmlfmt.load (docs/loading.md), one flag each (LOAD_OPTIONS)."""
    g = p.add_argument_group("loading (docs/loading.md has each option's measured effect)")
    g.add_argument("--prefault", action="store_true", help="fault every page in before returning")
    g.add_argument("--advice", choices=sorted(ADVICE), help="readahead advice for the map (madvise)")
    g.add_argument("--lock", action="store_true", help="mlock the data (needs RLIMIT_MEMLOCK >= file size)")
    g.add_argument("--hugepages", action="store_true", help="ask for 2 MiB pages (MADV_HUGEPAGE)")
    g.add_argument("--method", choices=("mmap", "pread"), default="mmap",
                   help="pread: read into private memory with parallel preads instead of mapping")
    g.add_argument("--threads", type=int, default=0, help="threads for --method pread (0 picks)")


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def _cached(r: Residency) -> str:
    return f"{_mib(r.resident_bytes)} of {_mib(r.file_size)} cached ({100 * r.fraction:.1f}%)"


def _residency(args: argparse.Namespace) -> int:
    from ggmlfmt.tools.cachestat import residency

    res = residency(args.file)  # before parsing: reading the index caches pages
    tensors = read_index(args.file).tensors
    shares = res.of_ranges([t.offset for t in tensors], [t.nbytes for t in tensors])
    rows: list[dict[str, Any]] = [
        {"name": t.name, "offset": t.offset, "nbytes": t.nbytes, "cached": float(share)}
        for t, share in zip(tensors, shares)
    ]
    if args.json:
        print(json.dumps({"file": args.file, "size": res.file_size, "cached_bytes": res.resident_bytes,
                          "cached": res.fraction, "exact": res.exact, "tensors": rows}, indent=2))
        return 0
    width = column_width([r["name"] for r in rows], 4)
    print(f"{'name':<{width}}  {'bytes':>14}  cached")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['nbytes']:>14,}  {100 * r['cached']:5.1f}%")
    print(f"\nfile {args.file}: {_cached(res)}")
    if not res.exact:
        log.warning("you neither own nor can write this file: mincore shows only pages this process mapped")
    return 0


def _evict(args: argparse.Namespace) -> int:
    from ggmlfmt.tools.cachestat import evict, residency

    before = residency(args.file)
    evict(args.file)
    after = residency(args.file)
    print(f"before  {_cached(before)}\nafter   {_cached(after)}")
    if after.fraction > 0.01:
        log.warning("pages stay cached while a process maps them, and on filesystems whose only copy is the "
                    "cache (tmpfs)")
    return 0


def _copy(args: argparse.Namespace) -> int:
    from ggmlfmt.tools.cachestat import residency
    from ggmlfmt.tools.copying import copy_file

    result = copy_file(args.src, args.dst, overwrite=args.force)
    src, dst = residency(args.src), residency(args.dst)
    print(f"copied {result.nbytes:,} bytes, sha256 {result.sha256} (both files hashed)")
    print(f"page cache: source {100 * result.src_cached_before:.1f}% cached before, {100 * src.fraction:.1f}% "
          f"after; copy {100 * dst.fraction:.1f}%")
    return 0


def _load(args: argparse.Namespace) -> int:
    from ggmlfmt.tools.cachestat import mapping_of

    t0 = time.perf_counter()
    model = load(args.file, **{k: getattr(args, k) for k in LOAD_OPTIONS})
    views = [model.tensors[name] for name in model.tensors]
    t1 = time.perf_counter()
    checksum = sum(touch(v) for v in views) if args.touch else None
    t2 = time.perf_counter()
    where = mapping_of(model.data)
    kind = "anonymous memory" if where is None or where.path is None else f"a map of {where.path}"
    print(f"loaded {len(views)} tensors ({_mib(model.data.nbytes)}) into {kind} in {1e3 * (t1 - t0):,.1f} ms")
    if checksum is not None:
        print(f"touched every page in {1e3 * (t2 - t1):,.1f} ms (checksum {checksum})")
    if where is not None:
        print(f"mapping: {_mib(where.rss)} resident, {_mib(where.anonymous)} private, "
              f"{_mib(where.anon_huge + where.file_huge)} in 2 MiB pages{', locked' if where.locked else ''}")
    return 0


# name, body, whether it has --json, help: the subcommands that take one FILE
_FILE_COMMANDS = (
    ("inspect", _inspect, True, "format, header, vocabulary, tensor table and byte accounting"),
    ("verify", _verify, False, "every structural check; prints OK or the first problem"),
    ("residency", _residency, True, "how much of each tensor is in the page cache now (mincore)"),
    ("evict", _evict, False, "drop a file's pages from the page cache (no root), for cold starts"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ggmlfmt", description="Inspect, verify, load and copy llama.cpp model files "
                                "(2023: ggml, ggmf, ggjt v1-v3; today: GGUF v2, v3).")
    sub = p.add_subparsers(dest="command", required=True)
    for name, body, with_json, what in _FILE_COMMANDS:
        c = sub.add_parser(name, help=what)
        c.add_argument("file")
        if with_json:
            c.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        c.set_defaults(body=body)
    c = sub.add_parser("copy", help="copy without wiping the page cache, verified by sha256")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--force", action="store_true", help="replace dst if it exists")
    c.set_defaults(body=_copy)
    c = sub.add_parser("load", help="load with the page-cache options and say what it cost (add --rusage)")
    c.add_argument("file")
    c.add_argument("--touch", action="store_true", help="then read every page of every tensor")
    add_load_options(c)
    c.set_defaults(body=_load)
    for c in sub.choices.values():
        add_common_options(c)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run("ggmlfmt", args, args.body)


if __name__ == "__main__":
    sys.exit(main())
