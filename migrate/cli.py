"""The `migrate-old-weights` command: the only module of the package that prints or parses argv."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ggmlfmt.cli import add_common_options, run

from .migrate import Migration, check_destination, open_migration, write_migration
from .sources import find_parts

PROG = "migrate-old-weights"
log = logging.getLogger(PROG)

_SPLIT_NAMES = {0: "rows", 1: "columns", None: "none"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Upgrade old llama.cpp model files (unversioned 'ggml' or 'ggmf' v1, one or several parts) "
                    "to one aligned ggjt v1 file, as the 2023 migrate script did. Needs numpy only.",
    )
    p.add_argument("src", metavar="SRC", help="the first part, e.g. ggml-model-q4_0.bin; SRC.1, SRC.2, ... are "
                                               "found automatically and their number is checked")
    p.add_argument("dst", metavar="DST", help="the ggjt v1 file to write (via a temporary file and a rename)")
    p.add_argument("--force", "-f", action="store_true", help="replace DST if it exists (never an input part)")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="check every part and print the plan (tensor, type, full shape, split, offset, size) "
                        "on stdout; write nothing")
    add_common_options(p)
    return p


def render_plan(m: Migration) -> str:
    """The output layout as a table, with the inputs and totals."""
    parts = ", ".join(p.path.name for p in m.parts)
    lines = [f"input   {m.source_version}, {m.n_parts} part(s): {parts}",
             f"output  {m.plan.version}, {len(m.plan.tensors)} tensors", ""]
    width = max([len(t.name) for t in m.plan.tensors] + [6])
    lines.append(f"{'tensor':<{width}}  {'type':<5}  {'shape':<16}  {'split':<7}  {'offset':>14}  {'bytes':>14}")
    for t in m.plan.tensors:
        shape = "x".join(map(str, t.shape))
        split = _SPLIT_NAMES[m.axes[t.name]] if m.n_parts > 1 else "-"
        lines.append(f"{t.name:<{width}}  {t.type.name:<5}  {shape:<16}  {split:<7}  {t.offset:>14,}  {t.nbytes:>14,}")
    lines += ["", f"total   {m.plan.data_bytes:,} bytes of tensor data, file size {m.plan.size:,} bytes "
                  f"({m.plan.size / (1 << 20):,.1f} MiB)"]
    return "\n".join(lines)


@contextmanager
def _progress_bar(total: int, quiet: bool) -> Iterator[Any]:
    """A byte progress bar on stderr (tqdm, when installed and stderr is a terminal); else a no-op callback."""
    try:
        from tqdm import tqdm  # optional: migrate needs numpy alone
    except ImportError:
        yield None
        return
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="migrate",
              disable=True if quiet else None, leave=False) as bar:
        yield bar.update


def _migrate(args: argparse.Namespace) -> int:
    check_destination(args.dst, find_parts(args.src), overwrite=args.force)  # before reading gigabytes
    m = open_migration(args.src)
    if args.dry_run:
        print(render_plan(m))
        return 0
    with _progress_bar(m.plan.data_bytes, args.quiet) as progress:
        write_migration(m, args.dst, overwrite=args.force, progress=progress)
    log.info("wrote %s (%s, %d tensors, %s bytes) from %d %s part(s)", args.dst, m.plan.version,
             len(m.plan.tensors), f"{m.plan.size:,}", m.n_parts, m.source_version)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(PROG, args, _migrate)


if __name__ == "__main__":
    sys.exit(main())
