"""The `convert-model` command: Meta .pth shards -> one ggjt file; --dry-run shows the plan, --demo tries it all.

The only module of the package that prints. stdout carries results (plan, demo report); logs,
progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ggmlfmt.cli import add_common_options, run

from .convert import OUTTYPES, ConversionPlan, default_outfile, plan_conversion, refuse_existing, write_conversion

PROG = "convert-model"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert Meta LLaMA consolidated.NN.pth shards (MODEL_DIR with params.json) into one "
                    "32-byte aligned ggjt v1 file, byte for byte what llama.cpp's 2023 converter wrote.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("model_dir", nargs="?", metavar="MODEL_DIR",
                       help="directory with params.json and consolidated.00.pth, .01, ...")
    which.add_argument("--demo", nargs="?", const="", metavar="DIR",
                       help="build a tiny 2-shard checkpoint in DIR (default: a new temporary directory), "
                            "convert it, load the result and report what it holds and cost")
    p.add_argument("--outtype", choices=sorted(OUTTYPES), default="f16",
                   help="type of the 2-D weights (1-D tensors are always f32); default f16")
    p.add_argument("--outfile", metavar="PATH", help="output file (default MODEL_DIR/ggml-model-OUTTYPE.bin)")
    p.add_argument("--vocab", metavar="PATH",
                   help="tokenizer.model to use (default: MODEL_DIR/tokenizer.model, else its parent's)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--dry-run", action="store_true",
                   help="check the inputs and print the plan (tensor, shape, split, offset, size), write nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    add_common_options(p)
    return p


@contextmanager
def _progress_bar(total: int, quiet: bool) -> Iterator[Callable[[int], Any] | None]:
    """A tqdm byte counter on stderr (rate, ETA), or None when --quiet or tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if quiet or tqdm is None:
        yield None
        return
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc=PROG,
              mininterval=0.5, leave=False) as bar:
        yield bar.update


def _convert(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir)
    out = Path(args.outfile) if args.outfile else default_outfile(model_dir, args.outtype)
    if not args.dry_run:
        refuse_existing(out, args.force)
    cp = plan_conversion(model_dir, out, outtype=args.outtype, vocab=args.vocab)
    if args.dry_run:
        print(json.dumps(plan_dict(cp, out.exists()), indent=2) if args.json else render_plan(cp, out.exists()))
        return 0
    with _progress_bar(cp.layout.data_bytes, args.quiet) as update:
        write_conversion(cp, force=args.force, progress=update)
    if not args.quiet:
        print(f"{PROG}: wrote {cp.outfile} ({cp.layout.size:,} bytes, {len(cp.entries)} tensors from "
              f"{len(cp.shards)} shard(s))", file=sys.stderr)
    return 0


def plan_dict(cp: ConversionPlan, out_exists: bool) -> dict[str, Any]:
    """The plan as plain JSON-able values."""
    return {
        "outfile": str(cp.outfile),
        "outfile_exists": out_exists,
        "format": "ggjt v1",
        "shards": [str(p) for p in cp.shards],
        "vocab": str(cp.vocab_path),
        "hparams": {k: getattr(cp.layout.hparams, k) for k in cp.layout.hparams.__slots__},
        "skipped": list(cp.skipped),
        "tensors": [{"name": e.name, "shape": list(e.shape), "type": e.info.type.name, "split_axis": e.axis,
                     "shard_shape": list(e.shard_shape), "source_dtype": e.source_dtype, "offset": e.info.offset,
                     "nbytes": e.info.nbytes} for e in cp.entries],
        "data_bytes": cp.layout.data_bytes,
        "file_size": cp.layout.size,
    }


def render_plan(cp: ConversionPlan, out_exists: bool) -> str:
    """The plan as a table: one line per tensor, then the totals."""
    hp = cp.layout.hparams
    width = max(len(e.name) for e in cp.entries) if cp.entries else 10
    lines = [f"plan: {len(cp.shards)} shard(s) of {cp.model_dir} -> {cp.outfile} (ggjt v1, 2-D {cp.outtype})",
             f"header: n_vocab {hp.n_vocab}, n_embd {hp.n_embd}, n_mult {hp.n_mult}, n_head {hp.n_head}, "
             f"n_layer {hp.n_layer}, n_rot {hp.n_rot}, ftype {hp.ftype}; vocabulary from {cp.vocab_path}",
             f"{'tensor':<{width}}  {'shape':<14} {'type':<4} {'split':<5} {'offset':>12} {'bytes':>15}"]
    for e in cp.entries:
        split = "-" if e.axis is None else str(e.axis)
        shape = "x".join(map(str, e.shape))
        lines.append(f"{e.name:<{width}}  {shape:<14} {e.info.type.name:<4} {split:<5} {e.info.offset:>#12x} "
                     f"{e.info.nbytes:>15,}")
    skipped = f"; skipped {', '.join(cp.skipped)}" if cp.skipped else ""
    lines.append(f"total: {len(cp.entries)} tensors, {cp.layout.data_bytes:,} bytes of data, file "
                 f"{cp.layout.size:,} bytes{skipped}")
    if out_exists:
        lines.append(f"note: {cp.outfile} exists; the conversion needs --force")
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # trains a tokenizer and builds shards: only when asked

    root = Path(args.demo) if args.demo else Path(tempfile.mkdtemp(prefix="convert-model-demo-"))
    report = run_demo(root, force=args.force)
    print(f"built   a {report.n_shards}-shard Meta-layout checkpoint in {report.model_dir} "
          f"(tokenizer {report.root / 'tokenizer.model'})")
    print(f"wrote   {report.outfile} ({report.file_size:,} bytes)")
    print(f"format  {report.file_format}; " + ", ".join(f"{k} {v}" for k, v in report.hparams.items()))
    print(f"vocab   {report.n_vocab} tokens; first: " + " ".join(repr(t) for t in report.tokens))
    print(f"tensors {len(report.tensors)}:")
    width = max(len(n) for n, _, _ in report.tensors)
    for name, shape, type_name in report.tensors:
        print(f"        {name:<{width}}  {'x'.join(map(str, shape)):<10} {type_name}")
    ok = not report.mismatched
    verdict = "equal" if ok else f"DIFFER in {', '.join(report.mismatched)}"
    print(f"check   {len(report.tensors) - len(report.mismatched)}/{len(report.tensors)} tensors equal torch.cat "
          f"of the {report.n_shards} shards along their split axis" + ("" if ok else f": {verdict}"))
    print(f"cost    wall {report.wall_s:.2f} s (build, convert, load, check), peak RSS "
          f"{report.peak_rss_kib / 1024:.0f} MiB")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.demo is not None and (args.outfile or args.vocab or args.dry_run):
        _parser().error("--demo makes its own checkpoint; --outfile, --vocab and --dry-run do not apply")
    if args.json and not args.dry_run:
        _parser().error("--json goes with --dry-run")
    return run(PROG, args, _demo if args.demo is not None else _convert)


if __name__ == "__main__":
    sys.exit(main())
