"""The `migrate-old-weights` command: argv -> job -> write or describe; the only module of the package that prints."""

from __future__ import annotations

import argparse
import logging
import sys

from ggmlfmt.command import add_common_options, progress_bar, run
from ggmlfmt.job import FORMATS, describe, log_notes, output_format, write
from migrate.migrate import plan_migration

PROG = "migrate-old-weights"
log = logging.getLogger(PROG)


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
    p.add_argument("--format", choices=FORMATS, default=None,
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
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    add_common_options(p)
    return p


def _migrate(args: argparse.Namespace) -> int:
    fmt, format_note = output_format(args.format, args.dst)
    job = plan_migration(args.src, args.dst, fmt=fmt, overwrite=args.force, lossless=args.lossless,
                         tokenizer=args.vocab, ctx=args.ctx, eps=args.eps)
    if format_note:  # said once the parts are checked, so that an error stays one line
        log.log(format_note.level, "%s", format_note.text)
    log_notes(job, log)
    if args.dry_run:
        print(describe(job, as_json=args.json))
        return 0
    with progress_bar(job.plan.data_bytes, desc="migrate", quiet=args.quiet, terminal_only=True) as progress:
        write(job, progress=progress)
    log.info("wrote %s (%s, %d tensors, %s bytes) from %d %s part(s)", args.dst, job.plan.version,
             len(job.plan.tensors), f"{job.plan.size:,}", len(job.inputs), job.facts["source_format"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.json and not args.dry_run:
        _parser().error("--json goes with --dry-run")
    return run(PROG, args, _migrate)


if __name__ == "__main__":
    sys.exit(main())
