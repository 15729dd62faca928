"""The `migrate-old-weights` command: the only module of the package that prints or parses argv."""

from __future__ import annotations

import argparse
import logging
import sys

from ggmlfmt.command import add_common_options, progress_bar, run
from ggmlfmt.errors import CannotWrite
from ggmlfmt.summary import column_width
from migrate.migrate import (
    Migration,
    check_destination,
    open_migration,
    write_migration,
)
from migrate.sources import find_parts
from migrate.to_gguf import (
    GGUFMigration,
    notes,
    open_gguf_migration,
    rounding_summary,
    write_gguf_migration,
)

PROG = "migrate-old-weights"
log = logging.getLogger(PROG)

_SPLIT_NAMES = {0: "rows", 1: "columns", None: "none"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Upgrade old llama.cpp model files (unversioned 'ggml' or 'ggmf' v1, one or several parts, "
                    "or single-file ggjt v1/v2/v3) to one GGUF file for today's llama.cpp; or, with --format ggjt, "
                    "the ggml/ggmf ones to one aligned ggjt v1 file, as the 2023 migrate script did. Needs numpy only.",
    )
    p.add_argument("src", metavar="SRC", help="the first part, e.g. ggml-model-q4_0.bin; SRC.1, SRC.2, ... are "
                                               "found automatically and their number is checked")
    p.add_argument("dst", metavar="DST", help="the file to write (via a temporary file and a rename); without "
                                               "--format a name ending in .bin means ggjt (said on stderr), any "
                                               "other gguf")
    p.add_argument("--format", choices=("ggjt", "gguf"), default=None,
                   help="gguf: GGUF v3 (the default); ggjt: ggjt v1, byte-identical to the 2023 script")
    g = p.add_argument_group("GGUF output (docs/format.md §9.1)")
    g.add_argument("--lossless", action="store_true",
                   help="write tensors whose f32 block scales f16 would round as F32 values instead")
    g.add_argument("--vocab", metavar="TOKENIZER_MODEL",
                   help="take the vocabulary from this SentencePiece tokenizer.model (checked to match the file) "
                        "instead of reconstructing it from the stored texts")
    g.add_argument("--ctx", type=int, default=None, metavar="N",
                   help="llama.context_length (default 2048, LLaMA-1's; old files do not store it)")
    g.add_argument("--eps", type=float, default=None, metavar="X",
                   help="llama.attention.layer_norm_rms_epsilon (default 1e-6, LLaMA-1's)")
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
    width = column_width([t.name for t in m.plan.tensors], 6)
    lines.append(f"{'tensor':<{width}}  {'type':<5}  {'shape':<16}  {'split':<7}  {'offset':>14}  {'bytes':>14}")
    for t in m.plan.tensors:
        shape = "x".join(map(str, t.shape))
        split = _SPLIT_NAMES[m.axes[t.name]] if m.n_parts > 1 else "-"
        lines.append(f"{t.name:<{width}}  {t.type.name:<5}  {shape:<16}  {split:<7}  {t.offset:>14,}  {t.nbytes:>14,}")
    lines += ["", f"total   {m.plan.data_bytes:,} bytes of tensor data, file size {m.plan.size:,} bytes "
                  f"({m.plan.size / (1 << 20):,.1f} MiB)"]
    return "\n".join(lines)


def output_format(args: argparse.Namespace) -> str:
    """ggjt or gguf from --format and DST's name (.bin: ggjt, which _migrate says on stderr; else gguf);
    GGUF-only options without GGUF are refused.

    Raises:
        CannotWrite: --format ggjt with a .gguf DST, or a GGUF option with ggjt output.
    """
    dst = str(args.dst)
    implied = "gguf" if dst.endswith(".gguf") else "ggjt" if dst.endswith(".bin") else None
    if args.format == "ggjt" and implied == "gguf":
        raise CannotWrite(f"{args.dst}: a .gguf name for --format ggjt output; choose one or the other")
    fmt = args.format or implied or "gguf"
    given = [o for o, v in (("--lossless", args.lossless), ("--vocab", args.vocab), ("--ctx", args.ctx),
                            ("--eps", args.eps)) if v not in (None, False)]
    if fmt == "ggjt" and given:
        raise CannotWrite(f"{', '.join(given)}: only with --format gguf (ggjt output copies the old file's blocks, "
                         "vocabulary and header unchanged)")
    return fmt


def render_gguf_plan(m: GGUFMigration) -> str:
    """The GGUF layout as a table (GGUF name, type in -> out, shape, split, offset, size), with the totals."""
    parts = ", ".join(p.path.name for p in m.parts)
    hp = m.hparams
    lines = [f"input   {m.source_version}, {m.n_parts} part(s): {parts}",
             f"output  GGUF v3, {len(m.plan.tensors)} tensors, vocabulary from {m.vocab_source}",
             f"llama   n_vocab {hp.n_vocab}, n_embd {hp.n_embd}, n_layer {hp.n_layer}, n_head {hp.n_head}, "
             f"n_head_kv {hp.n_head_kv}, n_ff {hp.n_ff}, n_rot {hp.n_rot}, context {hp.context_length}, "
             f"eps {hp.rms_eps:g}", ""]
    width = column_width([t.name for t in m.plan.tensors], 6)
    lines.append(f"{'tensor':<{width}}  {'type':<12}  {'shape':<16}  {'split':<7}  {'offset':>14}  {'bytes':>14}")
    for mv, t in zip(m.moves, m.plan.tensors):
        shape = "x".join(map(str, t.shape))
        split = _SPLIT_NAMES[mv.axis] if m.n_parts > 1 else "-"
        types = f"{mv.in_type.name}->{t.type.name}"
        lines.append(f"{t.name:<{width}}  {types:<12}  {shape:<16}  {split:<7}  {t.offset:>14,}  {t.nbytes:>14,}")
    lines += ["", f"total   {m.plan.data_bytes:,} bytes of tensor data, file size {m.plan.size:,} bytes "
                  f"({m.plan.size / (1 << 20):,.1f} MiB)"]
    lines.append(f"scales  {rounding_summary(m) or 'no f32 scale rounds: every tensor keeps its exact values'}")
    return "\n".join(lines)


def _migrate_gguf(args: argparse.Namespace) -> int:
    m = open_gguf_migration(args.src, lossless=args.lossless, tokenizer=args.vocab, ctx=args.ctx, eps=args.eps)
    for level, line in notes(m):
        log.log(level, "%s", line)
    if args.dry_run:
        print(render_gguf_plan(m))
        return 0
    with progress_bar(m.plan.data_bytes, desc="migrate", quiet=args.quiet, terminal_only=True) as progress:
        write_gguf_migration(m, args.dst, overwrite=args.force, progress=progress)
    log.info("wrote %s (GGUF v3, %d tensors, %s bytes) from %d %s part(s)", args.dst, len(m.plan.tensors),
             f"{m.plan.size:,}", m.n_parts, m.source_version)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    check_destination(args.dst, find_parts(args.src), overwrite=args.force)  # before reading gigabytes
    if output_format(args) == "gguf":
        return _migrate_gguf(args)
    m = open_migration(args.src)
    if args.format is None:  # said once the parts are checked, so that an error stays one line
        log.info("%s: a .bin name without --format writes the 2023 ggjt file (--format gguf for today's "
                    "llama.cpp)", args.dst)
    if args.dry_run:
        print(render_plan(m))
        return 0
    with progress_bar(m.plan.data_bytes, desc="migrate", quiet=args.quiet, terminal_only=True) as progress:
        write_migration(m, args.dst, overwrite=args.force, progress=progress)
    log.info("wrote %s (%s, %d tensors, %s bytes) from %d %s part(s)", args.dst, m.plan.version,
             len(m.plan.tensors), f"{m.plan.size:,}", m.n_parts, m.source_version)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(PROG, args, _migrate)


if __name__ == "__main__":
    sys.exit(main())
