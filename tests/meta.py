"""Test fixtures for convert-model: Meta-layout checkpoints, and an independent re-statement of the 2023 converter.

Weights, params.json, shard files and the tokenizer are made with convert.demo's builders (one copy
of that code); what the tests check against is restated here from docs/format.md, without convert's
or ggmlfmt's logic: the split rule (builders.split_axis), the §3.1 vocabulary rules and the §8.2 write
algorithm. Every bare § cites docs/format.md.
"""

from __future__ import annotations

import functools
import io
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece
import torch

from builders import split_axis, split_shards
from convert.demo import make_weights, params_json, write_checkpoint
from ggmlfmt.llama.params import Params
from ggmlfmt.llama.spm import train_tokenizer

VOCAB_SIZE = 320  # divisible by 8: output.weight (V, dim) splits by rows into up to 8 shards

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
