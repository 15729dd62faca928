"""The `convert-model` command: Meta .pth shards -> one ggjt or GGUF file; --dry-run shows the plan, --demo tries it all.

The only module of the package that prints. stdout carries results (plan, demo report); logs,
progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from convert.convert import (
    FORMATS,
    OUTTYPES,
    ConversionPlan,
    plan_conversion,
    resolved_outtype,
    write_conversion,
)
from convert.source import TensorEntry
from ggmlfmt.command import add_common_options, progress_bar, run
from ggmlfmt.constants import GGUFValueType

PROG = "convert-model"
# LlamaHParams.defaults names -> the GGUF keys they fill
DEFAULTED_KEYS = {"context_length": "llama.context_length", "rms_eps": "llama.attention.layer_norm_rms_epsilon"}


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
        exists = cp.outfile.exists()
        print(json.dumps(plan_dict(cp, exists), indent=2) if args.json else render_plan(cp, exists))
        return 0
    with progress_bar(cp.plan.data_bytes, desc=PROG, quiet=args.quiet) as update:
        write_conversion(cp, force=args.force, progress=update)
    if not args.quiet:
        print(f"{PROG}: wrote {cp.outfile} ({cp.plan.size:,} bytes, {len(cp.entries)} tensors from "
              f"{len(cp.shards)} shard(s))", file=sys.stderr)
    return 0


def plan_dict(cp: ConversionPlan, out_exists: bool) -> dict[str, Any]:
    """The plan as plain JSON-able values; a GGUF plan adds its metadata and names tensors by their GGUF names."""
    gguf = cp.format == "gguf"
    content = ({"metadata": _metadata(cp), "defaults": [DEFAULTED_KEYS[field] for field in cp.gguf.hparams.defaults]}
               if gguf else {"hparams": {k: getattr(cp.plan.hparams, k) for k in cp.plan.hparams.__slots__}})
    return {
        "outfile": str(cp.outfile),
        "outfile_exists": out_exists,
        "format": "gguf v3" if gguf else "ggjt v1",
        "shards": [str(p) for p in cp.shards],
        "vocab": str(cp.vocab_path),
        **content,
        "skipped": list(cp.skipped),
        "tensors": [_tensor_dict(e, gguf) for e in cp.entries],
        "data_bytes": cp.plan.data_bytes,
        "file_size": cp.plan.size,
    }


def _tensor_dict(e: TensorEntry, gguf: bool) -> dict[str, Any]:
    """One tensor of the plan; GGUF: its GGUF name and ggml-order dims, then the checkpoint's view."""
    names = {"name": e.info.name, "checkpoint_name": e.name, "ne": list(e.info.ne)} if gguf else {"name": e.name}
    return {**names, "shape": list(e.shape), "type": e.info.type.name, "split_axis": e.axis,
            "shard_shape": list(e.shard_shape), "source_dtype": e.source_dtype, "offset": e.info.offset,
            "nbytes": e.info.nbytes}


def _metadata(cp: ConversionPlan) -> dict[str, Any]:
    """The GGUF metadata the plan writes: scalars as values, arrays as {"type", "count"} (general.alignment apart)."""
    out: dict[str, Any] = {}
    for kv in cp.gguf.metadata:
        if kv.type == GGUFValueType.ARRAY:
            element, items = kv.value
            out[kv.key] = {"type": GGUFValueType(element).name.lower(), "count": len(items)}
        else:
            # an f32 as stored (1e-5 is 9.99999974e-06 in the file): what a reader will see
            out[kv.key] = float(np.float32(kv.value)) if kv.type == GGUFValueType.FLOAT32 else kv.value
    return out


def render_plan(cp: ConversionPlan, out_exists: bool) -> str:
    """The plan as text, from plan_dict: the header or metadata, one line per tensor (split axis, offset, size), totals."""
    d, gguf = plan_dict(cp, out_exists), cp.format == "gguf"
    label = cp.outtype
    if gguf and label == "auto":  # say what it resolved to
        label += ": " + resolved_outtype([e.info.type for e in cp.entries if len(e.shape) == 2])
    lines = [f"plan: {len(cp.shards)} shard(s) of {cp.model_dir} -> {cp.outfile} ({d['format']}, 2-D {label})"]
    if gguf:
        for key, value in d["metadata"].items():
            shown = (f"[{value['count']} {value['type']}]" if isinstance(value, dict)
                     else str(np.float32(value)) if isinstance(value, float) else repr(value))
            default = " (not in the checkpoint: LLaMA-1's value)" if key in d["defaults"] else ""
            lines.append(f"meta: {key} = {shown}{default}")
    else:
        lines.append("header: " + ", ".join(f"{k} {v}" for k, v in d["hparams"].items())
                     + f"; vocabulary from {cp.vocab_path}")
    width = max((len(t["name"]) for t in d["tensors"]), default=10)
    lines.append(f"{'tensor':<{width}}  {'ne' if gguf else 'shape':<14} {'type':<4} {'split':<5} {'offset':>12} "
                 f"{'bytes':>15}" + ("  checkpoint" if gguf else ""))
    for t in d["tensors"]:
        dims = "x".join(map(str, t["ne"] if gguf else t["shape"]))
        split = "-" if t["split_axis"] is None else t["split_axis"]
        lines.append(f"{t['name']:<{width}}  {dims:<14} {t['type']:<4} {split:<5} {t['offset']:>#12x} "
                     f"{t['nbytes']:>15,}" + (f"  {t['checkpoint_name']}" if gguf else ""))
    skipped = f"; skipped {', '.join(d['skipped'])}" if d["skipped"] else ""
    lines.append(f"total: {len(d['tensors'])} tensors, {d['data_bytes']:,} bytes of data, file {d['file_size']:,} "
                 f"bytes{skipped}")
    if out_exists:
        lines.append(f"note: {cp.outfile} exists; the conversion needs --force")
    return "\n".join(lines)


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
