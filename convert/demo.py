"""A tiny Meta-layout checkpoint, built, converted and checked in a few seconds (`convert-model --demo`).

The builders here are also what the tests and the benchmark use to make checkpoints: random
weights in Meta's key order (with rope.freqs), split into shards, saved as torch.save would save
them (convert.pthwrite: no torch), plus a small SentencePiece tokenizer with byte fallback; and
`cat_shards`, the shards joined again by plain numpy, the expectation the demo's check compares with.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.checkpoint import TOKENIZER
from convert.convert import convert_checkpoint
from convert.pth import Checkpoint, open_checkpoint
from convert.pthwrite import save_checkpoint
from ggmlfmt.blocks.floats import bf16_to_f32
from ggmlfmt.errors import CannotWrite
from ggmlfmt.llama.params import Params
from ggmlfmt.llama.spm import train_tokenizer
from ggmlfmt.parts import split_axis
from ggmlfmt.reader import load
from ggmlfmt.tools.rusage import measure


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Shape of the demo model: LLaMA's structure at toy size."""

    dim: int = 64
    n_heads: int = 4
    n_layers: int = 2
    multiple_of: int = 32
    n_shards: int = 2
    vocab_size: int = 320  # a multiple of 8, so output.weight splits into up to 8 row shards
    seed: int = 0

    @property
    def params(self) -> Params:
        return Params(self.dim, self.multiple_of, self.n_heads, self.n_layers, -1)


def params_json(p: Params) -> dict[str, float | int]:
    """The params.json Meta shipped, for these sizes."""
    return {"dim": p.dim, "multiple_of": p.multiple_of, "n_heads": p.n_heads, "n_layers": p.n_layers,
            "norm_eps": 1e-06, "vocab_size": p.vocab_size}


# Standard deviations that keep a forward pass tame yet sensitive to layout bugs (a wrong RoPE or a
# transposed matrix moves the logits by >5%); measured with llama.cpp in tests/client/README.md.
WEIGHT_STD = {"tok_embeddings.weight": 1.0, "output.weight": 0.1, "attention.wq.weight": 0.1,
              "attention.wk.weight": 0.1}
OTHER_MATRIX_STD = 0.05
NORM_STD = 0.1  # around 1


def make_weights(p: Params, n_vocab: int, *, seed: int = 0, dtype: str = "float16") -> dict[str, np.ndarray]:
    """Random full tensors in Meta's key order, then rope.freqs (which converters skip)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in p.shapes(n_vocab).items():
        if len(shape) == 1:
            a = 1.0 + NORM_STD * rng.standard_normal(shape)
        else:
            suffix = name.split(".", 2)[-1] if name.startswith("layers.") else name
            a = WEIGHT_STD.get(suffix, OTHER_MATRIX_STD) * rng.standard_normal(shape)
        out[name] = a.astype(dtype)
    half = p.n_rot // 2  # Meta's RoPE inverse frequencies, theta 10000
    out["rope.freqs"] = (1.0 / 10000 ** (np.arange(half) * 2 / p.n_rot)).astype(dtype)
    return out


def split_weights(full: dict[str, np.ndarray], n_shards: int) -> list[dict[str, np.ndarray]]:
    """Meta's shards of full tensors (docs/format.md §6.2's rule, from ggmlfmt.parts); 1-D tensors are copied into every shard.

    Raises:
        CannotWrite: a split axis does not divide by n_shards.
    """
    shards: list[dict[str, np.ndarray]] = [{} for _ in range(n_shards)]
    for name, a in full.items():
        axis = split_axis(name, a.ndim)
        if axis is not None and a.shape[axis] % n_shards:
            raise CannotWrite(f"tensor {name!r}: axis {axis} of {a.shape} does not split into {n_shards} shards")
        pieces = [a] * n_shards if axis is None else np.split(a, n_shards, axis=axis)
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = np.ascontiguousarray(piece)
    return shards


def write_checkpoint(model_dir: str | os.PathLike[str], params: dict[str, object],
                     shards: Sequence[dict[str, np.ndarray]]) -> list[Path]:
    """params.json and consolidated.00.pth, .01, ... in `model_dir` (created); return the shard paths."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "params.json").write_text(json.dumps(params))
    paths = []
    for k, tensors in enumerate(shards):
        path = model_dir / f"consolidated.{k:02d}.pth"
        save_checkpoint(path, tensors)
        paths.append(path)
    return paths


def build_checkpoint(root: str | os.PathLike[str], cfg: DemoConfig = DemoConfig(), *,
                     name: str = "tiny") -> Path:
    """Meta's layout under `root`: tokenizer.model at the top, params.json and shards in root/name."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    train_tokenizer(root / TOKENIZER, cfg.vocab_size)
    full = make_weights(cfg.params, cfg.vocab_size, seed=cfg.seed)
    model_dir = root / name
    write_checkpoint(model_dir, params_json(cfg.params), split_weights(full, cfg.n_shards))
    return model_dir


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


def run_demo(root: str | os.PathLike[str], *, force: bool = False, cfg: DemoConfig = DemoConfig()) -> DemoReport:
    """Build the tiny checkpoint in `root`, convert it, load the result and compare it with the shards.

    Raises:
        FileExistsError: `root` is not empty and force is False.
    """
    start = time.perf_counter()
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not force:
        raise FileExistsError(errno.EEXIST, "demo directory is not empty (use --force to reuse it)", str(root))
    model_dir = build_checkpoint(root, cfg)
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
