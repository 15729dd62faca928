"""A tiny Meta-layout checkpoint, converted and checked in a few seconds (`convert-model --demo`).

The checkpoint ships in convert/example/: LLaMA's structure at toy size (2 layers, dim 64, random f16
weights in Meta's key order with rope.freqs, split into 2 shards saved as torch.save saves them) and a
320-piece SentencePiece tokenizer with byte fallback. tests/meta.py's `write_demo_example` made them;
tests/test_convert.py checks they are what it makes. The demo copies them into a directory, converts
them, loads the result and compares every tensor with `cat_shards`, the shards joined by plain numpy.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from convert.checkpoint import TOKENIZER
from convert.convert import convert_checkpoint
from convert.pth import Checkpoint, open_checkpoint
from ggmlfmt.blocks.floats import bf16_to_f32
from ggmlfmt.reader import load
from ggmlfmt.tools.rusage import measure

MODEL = "tiny"  # the model directory under the demo's root; the tokenizer sits beside it (Meta's layout)
EXAMPLE = (TOKENIZER, f"{MODEL}/params.json", f"{MODEL}/consolidated.00.pth", f"{MODEL}/consolidated.01.pth")


def copy_example(root: Path) -> Path:
    """convert/example/ copied into `root`; return the model directory."""
    for name in EXAMPLE:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(resources.files("convert").joinpath("example", *name.split("/")).read_bytes())
    return root / MODEL


@dataclass(frozen=True, slots=True)
class DemoReport:
    """What the demo built, what the converted file holds, and what it cost."""

    root: Path
    model_dir: Path
    outfile: Path
    n_shards: int
    file_format: str
    hparams: dict[str, int | float]  # GGUF: the llama.* values, keys without the "llama." prefix
    n_vocab: int
    tokens: tuple[str, ...]  # the first few pieces, as stored
    tensors: tuple[tuple[str, tuple[int, ...], str], ...]  # name, shape, type
    mismatched: tuple[str, ...]  # tensors that differ from the shards concatenated (what torch.cat gives)
    file_size: int
    wall_s: float
    peak_rss_kib: int


def run_demo(root: str | os.PathLike[str], *, force: bool = False) -> DemoReport:
    """Copy the tiny checkpoint into `root`, convert it, load the result and compare it with the shards.

    Raises:
        FileExistsError: `root` is not empty and force is False.
    """
    start = time.perf_counter()
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not force:
        raise FileExistsError(errno.EEXIST, "demo directory is not empty (use --force to reuse it)", str(root))
    model_dir = copy_example(root)
    cp = convert_checkpoint(model_dir, force=force)  # the default: GGUF, each weight in its checkpoint type
    expected = cat_shards(list(cp.shards), {e.name: e.axis for e in cp.entries})
    model = load(cp.outfile)
    mismatched = tuple(e.info.name for e in cp.entries
                       if not np.array_equal(model.tensors[e.info.name], expected[e.name].astype(e.info.block.dtype)))
    usage = measure(start)
    meta = model.metadata
    hparams = {k.removeprefix("llama."): v for k, v in meta.items()
               if k.startswith("llama.") and isinstance(v, (int, float))}
    pieces = meta["tokenizer.ggml.tokens"]
    return DemoReport(root, model_dir, cp.outfile, len(cp.shards), f"gguf v{int(model.version)}", hparams,
                      len(pieces), tuple(str(pieces[i]) for i in range(min(8, len(pieces)))),
                      tuple((n, model.info[n].shape, model.info[n].type.name) for n in model.info),
                      mismatched, os.path.getsize(cp.outfile), usage.wall_s, usage.max_rss_kib)


def cat_shards(paths: list[Path], axes: Mapping[str, int | None]) -> dict[str, np.ndarray]:
    """Each named tensor concatenated over the shards along its axis (None: shard 0's copy), as numpy copies.

    bf16 comes back as float32 (exact). Opens every shard at once: for small checkpoints (demo, tests).

    Raises:
        FormatError, OSError: as convert.pth.open_checkpoint.
    """
    shards = [open_checkpoint(p) for p in paths]
    try:
        out = {}
        for name, axis in axes.items():
            parts = [_as_float(s, name) for s in (shards[:1] if axis is None else shards)]
            out[name] = parts[0].copy() if axis is None else np.concatenate(parts, axis=axis)
        return out
    finally:
        for s in shards:
            s.close()


def _as_float(ck: Checkpoint, name: str) -> np.ndarray:
    a = ck.array(name)
    return bf16_to_f32(a) if ck.tensors[name].dtype == "bfloat16" else a
