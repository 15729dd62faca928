"""Test fixtures for convert-model: Meta-layout checkpoints, and an independent re-statement of the 2023 converter.

Weights (random, in Meta's key order, with rope.freqs), params.json, shard files (tests/pthwrite.py,
no torch) and a small SentencePiece tokenizer with byte fallback are made here, for the tests, the
benchmarks and once for the demo's example (`write_demo_example`, convert/example/). What the tests
check against is restated here from docs/format.md, without convert's or ggmlfmt's logic: the split
rule (builders.split_axis), the §3.1 vocabulary rules and the §8.2 write algorithm. Every bare § cites
docs/format.md.
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece
import torch

from builders import split_axis, split_shards
from ggmlfmt.llama.params import Params
from pthwrite import save_checkpoint

VOCAB_SIZE = 320  # divisible by 8: output.weight (V, dim) splits by rows into up to 8 shards

# ---------------------------------------------------------------------------------------------------------
# The tokenizer, weights and shards (the demo's example is made by these, with DemoConfig())

# Byte fallback adds 256 byte pieces and <unk>, <s>, </s>: the least a tokenizer here holds.
MIN_VOCAB = 256 + 3
CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Il était une fois une marquise très élégante.",
    "Hello, world! 1234567890 is a number, and so is 42.",
    "A tiny model converted from Meta's layout to one aligned ggjt file.",
)


def train_tokenizer(path: str | os.PathLike[str], vocab_size: int, *, corpus: Iterable[str] = CORPUS,
                    control_symbols: Sequence[str] = ("<ctl>",), user_symbols: Sequence[str] = (),
                    normalization: str = "nmt_nfkc") -> None:
    """Train a small BPE tokenizer.model with byte fallback.

    Sizes past what the corpus can merge are filled with user-defined pieces "▁w0", "▁w1", ...
    normalization "identity" leaves out the 240 KB NFKC table: the same pieces and scores from this corpus.

    Raises:
        ValueError: vocab_size is below the byte pieces + specials, or training gave another size.
    """
    if vocab_size < MIN_VOCAB + len(control_symbols) + len(user_symbols) + 8:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges after {MIN_VOCAB} byte/special pieces")
    corpus = list(corpus)
    # A handful of sentences yields ~60 merges; past that, pad with user pieces so the size is exact.
    filler = [f"\u2581w{i}" for i in range(max(0, vocab_size - MIN_VOCAB - 64))]
    out = io.BytesIO()
    # minloglevel silences the trainer; its `logstream` option would dup2 over fd 2 (needs a real sys.stderr)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 4), model_writer=out, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, num_threads=1, control_symbols=list(control_symbols),
        user_defined_symbols=[*user_symbols, *filler], hard_vocab_limit=False, minloglevel=2,
        normalization_rule_name=normalization)
    got = sentencepiece.SentencePieceProcessor(model_proto=out.getvalue()).vocab_size()
    if got != vocab_size:
        raise ValueError(f"the training corpus gave {got} pieces, not {vocab_size}")
    Path(path).write_bytes(out.getvalue())


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Shape of the demo model: LLaMA's structure at toy size."""

    dim: int = 64
    n_heads: int = 4
    n_layers: int = 2
    multiple_of: int = 32
    n_shards: int = 2
    vocab_size: int = VOCAB_SIZE
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


def build_checkpoint(root: str | os.PathLike[str], cfg: DemoConfig = DemoConfig(), *, name: str = "tiny",
                     normalization: str = "nmt_nfkc") -> Path:
    """Meta's layout under `root`: tokenizer.model at the top, params.json and shards in root/name."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    train_tokenizer(root / "tokenizer.model", cfg.vocab_size, normalization=normalization)
    full = make_weights(cfg.params, cfg.vocab_size, seed=cfg.seed)
    model_dir = root / name
    write_checkpoint(model_dir, params_json(cfg.params), split(full, cfg.n_shards))
    return model_dir


def write_demo_example(root: str | os.PathLike[str]) -> Path:
    """convert/example/ as shipped (run once; tests/test_convert.py checks the shipped files equal these)."""
    return build_checkpoint(root, normalization="identity")


def split(full: dict[str, np.ndarray], n_shards: int) -> list[dict[str, np.ndarray]]:
    """Shards of full tensors by the split rule (builders.split_axis), keeping the key order."""
    shards: list[dict[str, np.ndarray]] = [{} for _ in range(n_shards)]
    for name, a in full.items():
        pieces = split_shards(a, n_shards, split_axis(name, a.ndim))
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece
    return shards


@functools.cache
def tokenizer_bytes(vocab_size: int = VOCAB_SIZE) -> bytes:
    """A tiny BPE tokenizer.model with byte fallback (trained once per test process)."""
    with tempfile.TemporaryDirectory() as d:
        train_tokenizer(Path(d) / "tokenizer.model", vocab_size, user_symbols=("<user>",))
        return (Path(d) / "tokenizer.model").read_bytes()


@dataclass
class Checkpoint:
    """A Meta-layout checkpoint on disk, and the arrays it was made from."""

    root: Path
    model_dir: Path
    tokenizer: Path
    params: dict[str, Any]
    full: dict[str, np.ndarray]
    shards: list[dict[str, np.ndarray]]
    paths: list[Path]


def build(root: Path, n_shards: int, *, dim: int = 64, n_heads: int = 4, n_layers: int = 2, multiple_of: int = 32,
          seed: int = 0, dtype: str = "float16", name: str = "model") -> Checkpoint:
    """tokenizer.model in `root`, params.json and consolidated.NN.pth in root/name (Meta's layout)."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = root / "tokenizer.model"
    tokenizer.write_bytes(tokenizer_bytes())
    p = Params(dim, multiple_of, n_heads, n_layers, -1)
    full = make_weights(p, VOCAB_SIZE, seed=seed, dtype="float32")
    full = {k: v.astype(dtype) if dtype != "bfloat16" else v for k, v in full.items()}
    shards = split(full, n_shards)
    model_dir = root / name
    if dtype == "bfloat16":
        paths = _write_bf16(model_dir, params_json(p), shards)
    else:
        paths = write_checkpoint(model_dir, params_json(p), shards)
    return Checkpoint(root, model_dir, tokenizer, params_json(p), full, shards, paths)


def _write_bf16(model_dir: Path, params: dict[str, Any], shards: list[dict[str, np.ndarray]]) -> list[Path]:
    """Like write_checkpoint, with every tensor stored as bfloat16 (numpy has no such dtype)."""
    paths = write_checkpoint(model_dir, params, [{} for _ in shards])
    for path, shard in zip(paths, shards, strict=True):
        torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in shard.items()}, path)
    return paths


def load_shards(paths: list[Path]) -> list[dict[str, torch.Tensor]]:
    """The shards as torch state dicts (plain weights_only load, no mmap)."""
    return [torch.load(p, map_location="cpu", weights_only=True) for p in paths]


# ---------------------------------------------------------------------------------------------------------
# §3.1 and §8.2, restated with struct and a seekable buffer


def vocab_entries(tokenizer: Path) -> list[tuple[bytes, float]]:
    """(text, score) per token id by §3.1: unknown ' \u2047 ', control b'', <0xHH> that byte, else ▁ -> ' '."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    out = []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if sp.is_unknown(i):
            text = b"\x20\xe2\x81\x87\x20"
        elif sp.is_control(i):
            text = b""
        elif sp.is_byte(i):
            assert len(piece) == 6, piece
            text = bytes([int(piece[3:-1], 16)])
        else:
            text = piece.replace("\u2581", " ").encode("utf-8")
        out.append((text, sp.get_score(i)))
    return out


def reference_file(tokenizer: Path, params: dict[str, Any], paths: list[Path], ftype: int) -> bytes:
    """The bytes convert-pth-to-ggml.py (2023-03-29, #613) wrote: header, vocab, then §8.2 step 4 per shard."""
    vocab = vocab_entries(tokenizer)
    out = io.BytesIO()
    dim, n_heads = params["dim"], params["n_heads"]
    out.write(struct.pack("<II7i", 0x67676A74, 1, len(vocab), dim, params["multiple_of"], n_heads,
                          params["n_layers"], dim // n_heads, ftype))
    for text, score in vocab:
        out.write(struct.pack("<i", len(text)) + text + struct.pack("<f", score))
    tensors_start = out.tell()
    shards = load_shards(paths)
    for k, shard in enumerate(shards):
        out.seek(tensors_start)
        for name, t in shard.items():
            if name.endswith("freqs"):
                continue
            _write_record(out, name, t, k, len(shards), ftype)
    return out.getvalue()


def _write_record(out: io.BytesIO, name: str, t: torch.Tensor, k: int, n_parts: int, ftype: int) -> None:
    """One tensor record of shard k: full dims, name, zero padding to 32, this shard's data at its place."""
    a = t.float().numpy() if (ftype == 0 or t.dim() == 1) else t.half().numpy()
    a = a.astype("<f4" if a.dtype == np.float32 else "<f2")
    code = 0 if a.dtype == np.dtype("<f4") else 1
    axis = split_axis(name, a.ndim) if n_parts > 1 else None
    full = list(a.shape)
    if axis is not None:
        full[axis] *= n_parts
    raw_name = name.encode()
    out.write(struct.pack("<iii", a.ndim, len(raw_name), code))
    out.write(struct.pack(f"<{a.ndim}i", *reversed(full)))
    out.write(raw_name)
    out.write(b"\0" * (-out.tell() % 32))
    data = out.tell()
    full_row_bytes = full[-1] * a.itemsize
    if axis is None:
        if k == 0:
            out.write(a.tobytes())
    elif axis == 0:
        out.seek(data + k * a.shape[0] * full_row_bytes)
        out.write(a.tobytes())
    else:
        for r in range(a.shape[0]):
            out.seek(data + r * full_row_bytes + k * a.shape[1] * a.itemsize)
            out.write(a[r].tobytes())
    out.seek(data + int(np.prod(full)) * a.itemsize)
