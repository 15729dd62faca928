"""The `convert-model` command: a Meta checkpoint or a Hugging Face directory -> one ggjt or GGUF file; --dry-run
shows the plan (ggmlfmt.job.describe), --demo tries it all.

The only module of the package that prints. stdout carries results (plan, demo report); logs,
progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from convert.convert import OUTTYPES, job, plan_conversion, write_conversion
from ggmlfmt.command import add_common_options, progress_bar, run
from ggmlfmt.job import FORMATS, describe

PROG = "convert-model"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert Meta LLaMA consolidated.NN.pth shards (MODEL_DIR with params.json) into one GGUF v3 "
                    "file for today's llama.cpp, or (--format ggjt) one 32-byte aligned ggjt v1 file, byte for byte "
                    "what llama.cpp's 2023 converter wrote. A Hugging Face LLaMA or Mistral directory (config.json "
                    "with model*.safetensors or pytorch_model*.bin, tokenizer.model or tokenizer.json) becomes the "
                    "GGUF file llama.cpp's convert_hf_to_gguf.py writes, without torch.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("model_dir", nargs="?", metavar="MODEL_DIR",
                       help="Meta: directory with params.json and consolidated.00.pth, .01, ...; Hugging Face: "
                            "directory with config.json and model.safetensors (or model-0000k-of-0000n.safetensors "
                            "and their index, or pytorch_model*.bin)")
    which.add_argument("--demo", nargs="?", const="", metavar="DIR",
                       help="build a tiny 2-shard checkpoint in DIR (default: a new temporary directory), "
                            "convert it, load the result and report what it holds and cost")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="auto",
                   help="type of the 2-D weights (1-D tensors are always f32): auto (default) keeps each one's "
                        "checkpoint type (bf16, f16 or f32: never rounds); bf16, f16, f32 cast (rounding to nearest "
                        "even, said on stderr); q8_0 quantizes as llama.cpp's reference does. ggjt: f16 or f32 "
                        "only, auto meaning f16")
    p.add_argument("--format", choices=FORMATS, default=None, dest="fmt",
                   help="output format: gguf (default; today's llama.cpp) or ggjt (the 2023 file). Without it an "
                        "--outfile ending in .bin means ggjt (said on stderr), in .gguf gguf")
    p.add_argument("--outfile", metavar="PATH",
                   help="output file (default MODEL_DIR/ggml-model-OUTTYPE.gguf, auto naming the type it resolves "
                        "to, e.g. ggml-model-bf16.gguf; .bin with --format ggjt)")
    p.add_argument("--ctx", type=int, metavar="N",
                   help="gguf: llama.context_length (default 2048, LLaMA-1's; Llama 3: 8192, 3.1+: 131072; a "
                        "Meta checkpoint does not store it; Hugging Face: config.json's max_position_embeddings)")
    p.add_argument("--eps", type=float, metavar="X",
                   help="gguf: RMS-norm epsilon when params.json has no norm_eps (default 1e-6, LLaMA-1's; "
                        "Meta checkpoints only: config.json has rms_norm_eps)")
    p.add_argument("--llama-release", choices=("3", "3.1", "3.2", "3.3"), default=None,
                   help="Meta's Llama 3 (tiktoken tokenizer.model): whose special tokens to append (default: 3 "
                        "without use_scaled_rope in params.json, else 3.1, or 3.2 when there is no output.weight)")
    p.add_argument("--vocab", metavar="PATH",
                   help="tokenizer.model to use (default: MODEL_DIR/tokenizer.model, else its parent's; a Hugging "
                        "Face directory without one: its tokenizer.json)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--dry-run", action="store_true",
                   help="check the inputs and print the plan (tensor, shape, split, offset, size), write nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    add_common_options(p)
    return p


def _convert(args: argparse.Namespace) -> int:
    cp = plan_conversion(Path(args.model_dir), args.outfile, outtype=args.outtype, tokenizer=args.vocab, fmt=args.fmt,
                         context_length=args.ctx, rms_eps=args.eps, llama_release=args.llama_release,
                         overwrite=args.force or args.dry_run)
    if args.dry_run:
        print(describe(job(cp, overwrite=args.force), as_json=args.json))
        return 0
    with progress_bar(cp.plan.data_bytes, desc=PROG, quiet=args.quiet) as update:
        write_conversion(cp, force=args.force, progress=update)
    if not args.quiet:
        print(f"{PROG}: wrote {cp.outfile} ({cp.plan.size:,} bytes, {len(cp.entries)} tensors from "
              f"{len(cp.shards)} shard(s))", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from convert.demo import (
        run_demo,  # trains a tokenizer and builds shards: only when asked
    )

    root = Path(args.demo) if args.demo else Path(tempfile.mkdtemp(prefix="convert-model-demo-"))
    report = run_demo(root, force=args.force)
    print(f"built   a {report.n_shards}-shard Meta-layout checkpoint in {report.model_dir} "
          f"(tokenizer {report.root / 'tokenizer.model'})")
    print(f"wrote   {report.outfile} ({report.file_size:,} bytes)")
    print(f"format  {report.file_format}; " + ", ".join(f"{k} {v:g}" for k, v in report.hparams.items()))
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
    if args.demo is not None and (args.outfile or args.vocab or args.dry_run or args.fmt or args.ctx is not None
                                  or args.eps is not None):
        _parser().error("--demo makes its own checkpoint; --outfile, --vocab, --dry-run, --format, --ctx and --eps "
                        "do not apply")
    if args.json and not args.dry_run:
        _parser().error("--json goes with --dry-run")
    return run(PROG, args, _demo if args.demo is not None else _convert)


if __name__ == "__main__":
    sys.exit(main())
