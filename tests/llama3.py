"""Test fixtures for Llama 3 checkpoints: a tiktoken tokenizer the tests train, and Meta-layout shards.

The tokenizer is trained by tiktoken's own educational trainer on tests/data/llama3_corpus.txt with
Meta's Llama 3 split pattern; tiktoken.Encoding over the same ranks and the 256 special tokens is the
oracle the converted vocabulary is judged by. The special-token lists below are restated from Meta's
tokenizer code (meta-llama/llama3, meta-llama/llama-models), not imported from the product.
Checkpoints split the token embedding by rows (Meta's VocabParallelEmbedding), wo and w2 by columns,
every other matrix by rows, and replicate 1-D tensors.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
import tiktoken._educational
import torch

DATA = Path(__file__).resolve().parent / "data"
CORPUS = DATA / "llama3_corpus.txt"
PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
       r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # Meta's Tokenizer.pat_str (Llama 3, all releases)
N_MERGES = 400
N_BASE = 256 + N_MERGES
N_VOCAB = N_BASE + 256

_RSV = "<|reserved_special_token_{}|>".format
SPECIALS = {
    "3": ["<|begin_of_text|>", "<|end_of_text|>", _RSV(0), _RSV(1), _RSV(2), _RSV(3), "<|start_header_id|>",
          "<|end_header_id|>", _RSV(4), "<|eot_id|>"] + [_RSV(i) for i in range(5, 251)],
    "3.1": ["<|begin_of_text|>", "<|end_of_text|>", _RSV(0), _RSV(1), "<|finetune_right_pad_id|>", "<|step_id|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
           + [_RSV(2 + i) for i in range(256 - 11)],
    "3.2": ["<|begin_of_text|>", "<|end_of_text|>", _RSV(0), _RSV(1), "<|finetune_right_pad_id|>", "<|step_id|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
           + [_RSV(2 + i) for i in range(256 - 12)],
}

# Llama-3-shaped toy: GQA (4 query heads, 2 KV heads), ffn_dim_multiplier, theta 5e5, scaled RoPE
PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": N_VOCAB, "multiple_of": 32,
          "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True}
HIDDEN = 224  # by hand: int(2 * 4 * 64 / 3) = 170; int(1.3 * 170) = 221; up to a multiple of 32: 224
KV_ROWS = 32  # 2 KV heads of 16 rows
COLUMN_SPLIT = ("attention.wo.weight", "feed_forward.w2.weight")


@functools.cache
def ranks() -> dict[bytes, int]:
    """A BPE of 256 bytes + N_MERGES merges trained on the corpus with Meta's pattern (once per process)."""
    return tiktoken._educational.bpe_train(CORPUS.read_text(encoding="utf-8"), N_BASE, PAT, visualise=None)


def tiktoken_file(ranks_: dict[bytes, int]) -> bytes:
    """The file tiktoken.load.load_tiktoken_bpe reads: `base64 rank` per line, in rank order."""
    return b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in sorted(ranks_.items(), key=lambda x: x[1]))


def encoding(release: str = "3.1") -> tiktoken.Encoding:
    """The oracle: tiktoken over the trained ranks with the release's special tokens after them."""
    r = ranks()
    specials = {name: len(r) + i for i, name in enumerate(SPECIALS[release])}
    return tiktoken.Encoding(f"llama3-test-{release}", pat_str=PAT, mergeable_ranks=r, special_tokens=specials)


def weights(seed: int, *, tied: bool = False) -> dict[str, np.ndarray]:
    """Random float32 weights, exact in bf16, Meta's key order; no output.weight when tied."""
    rng = np.random.default_rng(seed)
    dim, shapes = PARAMS["dim"], {"tok_embeddings.weight": (N_VOCAB, PARAMS["dim"])}
    for n in range(PARAMS["n_layers"]):
        p = f"layers.{n}."
        shapes |= {p + "attention.wq.weight": (dim, dim), p + "attention.wk.weight": (KV_ROWS, dim),
                   p + "attention.wv.weight": (KV_ROWS, dim), p + "attention.wo.weight": (dim, dim),
                   p + "feed_forward.w1.weight": (HIDDEN, dim), p + "feed_forward.w2.weight": (dim, HIDDEN),
                   p + "feed_forward.w3.weight": (HIDDEN, dim), p + "attention_norm.weight": (dim,),
                   p + "ffn_norm.weight": (dim,)}
    shapes["norm.weight"] = (dim,)
    if not tied:
        shapes["output.weight"] = (N_VOCAB, dim)
    std = {"tok_embeddings.weight": 1.0, "output.weight": 0.1, "wq": 0.4, "wk": 0.4}  # RoPE matters
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            key = name if name in std else name.split(".")[-2]
            a = std.get(key, 0.05) * rng.standard_normal(shape)
        out[name] = torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16).float().numpy()
    return out


def shard_axis(name: str, ndim: int) -> int | None:
    """Meta's Llama 3 layout: 1-D replicated; wo and w2 by columns; everything else, the embedding too, by rows."""
    if ndim < 2:
        return None
    return 1 if name.endswith(COLUMN_SPLIT) else 0


@dataclass
class Llama3:
    root: Path
    model_dir: Path
    full: dict[str, np.ndarray]
    paths: list[Path]
    params: dict[str, Any]


def build(root: Path, n_shards: int, *, seed: int = 5, params: dict[str, Any] | None = None, tied: bool = False,
          dtype: torch.dtype = torch.bfloat16, tokenizer: bytes | None = None) -> Llama3:
    """tokenizer.model (tiktoken) in root, params.json and consolidated.NN.pth (torch.save) in root/llama3."""
    params = dict(PARAMS if params is None else params)
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokenizer.model").write_bytes(tiktoken_file(ranks()) if tokenizer is None else tokenizer)
    model_dir = root / "llama3"
    model_dir.mkdir()
    (model_dir / "params.json").write_text(json.dumps(params))
    full = weights(seed, tied=tied)
    paths = []
    for k in range(n_shards):
        shard = {}
        for name, a in full.items():
            axis = shard_axis(name, a.ndim)
            if axis is not None:
                size = a.shape[axis] // n_shards
                a = a[k * size : (k + 1) * size] if axis == 0 else a[:, k * size : (k + 1) * size]
            shard[name] = torch.from_numpy(np.ascontiguousarray(a)).to(dtype)
        paths.append(model_dir / f"consolidated.{k:02d}.pth")
        torch.save(shard, paths[-1])
    return Llama3(root, model_dir, full, paths, params)


def rope_factors(n_rot: int, theta: float, factor: float = 8.0, high: float = 4.0) -> np.ndarray:
    """Meta's apply_scaling (llama-models, models/llama3/model.py) in torch, as divisors of the frequencies.

    Meta's code fixes factor 8 and high 4; its Llama 4 version takes both as arguments, as here."""
    freqs = 1.0 / (theta ** (torch.arange(0, n_rot, 2)[: n_rot // 2].float() / n_rot))
    old_context, low = 8192, 1
    wavelen = 2 * torch.pi / freqs
    new = torch.where(wavelen > old_context / low, freqs / factor, freqs)
    smooth = (old_context / wavelen - low) / (high - low)
    scaled = torch.where((wavelen >= old_context / high) & (wavelen <= old_context / low),
                         (1 - smooth) * new / factor + smooth * new, new)
    return (freqs / scaled).numpy()

