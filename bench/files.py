"""The suite's inputs, each written once: LLaMA-shaped tensors as ggjt, GGUF, safetensors and torch files; a Meta
checkpoint (13B widths, 2 shards, f16 or bf16); the same slice as old 2-part ggmf files; a Llama-3-8B-shaped slice
in Meta's and Hugging Face's layouts. Data: random halves, tiled (finite, cheap to make).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

import ggmlfmt
from ggmlfmt.constants import FileVersion
from ggmlfmt.llama.params import Params
from ggmlfmt.llama.tiktoken_vocab import bytes_to_unicode
from ggmlfmt.parts import split_axis
from meta import train_tokenizer  # tests/ (suite.py puts it on sys.path)
from pthwrite import BF16, save_checkpoint

N_MULT = 256
ROWS = 32000  # embedding rows of the load files whatever their vocabulary: issue 12's files differ in the vocabulary only
SUFFIX = {"ggjt": ".bin", "gguf": ".gguf", "safetensors": ".safetensors", "pt": ".pt"}
L3_VOCAB, L3_BASE = 128256, 128000  # Llama 3's vocabulary: 128,000 tiktoken ranks, then 256 special tokens


def params(dim: int, n_layer: int, n_heads: int | None = None) -> Params:
    return Params(dim, N_MULT, n_heads or max(dim // 128, 1), n_layer, -1)


def llama3_params(dim: int, n_heads: int, n_kv: int, n_layer: int, multiple_of: int) -> Params:
    """Llama 3's params.json at these widths (ffn_dim_multiplier 1.3, as 8B's: 4096 -> 14,336)."""
    return Params(dim, multiple_of, n_heads, n_layer, L3_VOCAB, n_kv, 1.3, 1e-5, 500000.0, True)


def _noise(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 1 << 16, 1 << 19, dtype=np.uint16) & 0x3BFF).view(np.float16)


def _fill(shapes: dict[str, tuple[int, ...]], noise: np.ndarray, one: Any, k: int | None = None) -> dict[str, Any]:
    """name -> array: 1-D tensors all `one` (its dtype), the others `noise` rolled by k (None: by the tensor's index)
    and tiled to their shape."""
    return {n: np.full(s, one) if len(s) == 1 else np.resize(np.roll(noise, i if k is None else k), s)
            for i, (n, s) in enumerate(shapes.items())}


def vocab(n_vocab: int) -> tuple[list[bytes], np.ndarray, list[int], list[str]]:
    """A SentencePiece-like vocabulary as the 2023 writers stored it: tokens, scores, GGUF token types; and the pieces
    GGUF stores for those tokens (<unk>, <s>, </s>, <0xNN> bytes, "▁" for space)."""
    toks = [" \u2047 ".encode(), b"", b""] + [bytes([i]) for i in range(256)]
    toks += [f" w{i}".encode() for i in range(max(n_vocab - len(toks), 0))]
    types = [2, 3, 3] + [6] * 256 + [1] * max(n_vocab - 259, 0)  # unknown, control, byte, normal
    head = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    pieces = head + [t.decode().replace(" ", "\u2581") for t in toks[len(head):]]
    return toks[:n_vocab], -np.arange(n_vocab, dtype=np.float32) / 100, types[:n_vocab], pieces[:n_vocab]


def _save_ggml(path: Path, arrays: dict[str, np.ndarray], p: Params, n_vocab: int, version: FileVersion) -> None:
    """A 2023 llama.cpp file (ggmf or ggjt, f16) of `arrays` with vocab(n_vocab)."""
    toks, scores, *_ = vocab(n_vocab)
    hp = ggmlfmt.HParams(n_vocab, p.dim, N_MULT, p.n_heads, p.n_layers, p.n_rot, int(ggmlfmt.FType.MOSTLY_F16))
    ggmlfmt.save(path, arrays, hparams=hp, vocab=ggmlfmt.Vocab(tuple(toks), scores), version=version)


def write_set(directory: Path, dim: int, n_layer: int, n_vocab: int, formats: tuple[str, ...]) -> dict[str, Path]:
    """The same tensors (Meta key order: f16 matrices, f32 norms of ones; 3 + 9 * n_layer) in each of `formats`,
    reused when already written; format -> path."""
    stem, p = directory / f"llama-d{dim}-l{n_layer}-v{n_vocab}", params(dim, n_layer)
    paths = {f: stem.with_suffix(SUFFIX[f]) for f in formats}
    todo = [f for f in formats if not paths[f].exists()]
    arrays = _fill(p.shapes(ROWS), _noise(0), np.float32(1)) if todo else {}
    for fmt in todo:
        if fmt == "ggjt":
            _save_ggml(paths[fmt], arrays, p, n_vocab, FileVersion.GGJT_V3)
        elif fmt == "gguf":
            import gguf
            (_, scores, types, pieces), w = vocab(n_vocab), gguf.GGUFWriter(str(paths[fmt]), arch="llama")
            w.add_tokenizer_model("llama")  # a real LLaMA GGUF carries its vocabulary, as the ggjt file does
            w.add_token_list(pieces)
            w.add_token_scores(scores.tolist())
            w.add_token_types(types)
            for name, arr in arrays.items():
                w.add_tensor(name, arr)
            for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
                step()
        elif fmt == "safetensors":
            from safetensors.numpy import save_file
            save_file(arrays, str(paths[fmt]))
        else:
            import torch
            torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, paths[fmt])
    return paths


def _cut(name: str, shape: tuple[int, ...], n: int, axis0: tuple[str, ...] = ()) -> tuple[int, ...]:
    """One shard's shape: split_axis's rule (LLaMA-1/2), or by rows for the names in axis0 (Llama 3's embedding)."""
    axis = 0 if name in axis0 else split_axis(name, len(shape))
    return shape if axis is None else tuple(d // n if i == axis else d for i, d in enumerate(shape))


def checkpoint(root: Path, dim: int, n_heads: int, n_layer: int, n_vocab: int, n_shards: int, bf16: bool = False) -> Path:
    """LLaMA-1/2 in Meta's layout: root/tokenizer.model (trained) and root/slice/{params.json, consolidated.NN.pth}
    in f16 (root/slice-bf16 in bf16: the same values, as LLaMA-2 and later ship)."""
    p = replace(params(dim, n_layer, n_heads), norm_eps=1e-06)
    if not (root / "tokenizer.model").exists():
        root.mkdir(parents=True, exist_ok=True)
        train_tokenizer(root / "tokenizer.model", n_vocab)
    shapes = p.shapes(n_vocab) | {"rope.freqs": (p.dim // p.n_heads // 2,)}
    return _shards(root / ("slice-bf16" if bf16 else "slice"), shapes, p, n_shards, bf16)


def _shards(model_dir: Path, shapes: dict[str, tuple[int, ...]], p: Params, n_shards: int, bf16: bool,
            axis0: tuple[str, ...] = ()) -> Path:
    """model_dir/{params.json (p's fields that are set), consolidated.NN.pth}, one shard in memory at a time: 1-D tensors
    ones, the others tiled noise (f16, or bf16: the top halves of the f16 values as f32, nearly the same values)."""
    if (model_dir / "params.json").exists():
        return model_dir
    model_dir.mkdir(parents=True)
    noise = np.random.default_rng(1).standard_normal(8 << 20).astype(np.float16)
    noise = (noise.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) if bf16 else noise
    for k in range(n_shards):
        arrays = _fill({n: _cut(n, s, n_shards, axis0) for n, s in shapes.items()}, noise,
                       noise.dtype.type(0x3F80 if bf16 else 1), k)
        save_checkpoint(model_dir / f"consolidated.{k:02d}.pth", {n: BF16(a) if bf16 else a for n, a in arrays.items()})
    (model_dir / "params.json").write_text(json.dumps({k: v for k, v in asdict(p).items() if v is not None}))
    return model_dir


def ggmf_parts(path: Path, dim: int, n_heads: int, n_layer: int, n_vocab: int, n_parts: int) -> list[Path]:
    """The old multi-part ggmf f16 model (path, path.1, ...), one part in memory at a time."""
    names = [path] + [path.with_name(f"{path.name}.{k}") for k in range(1, n_parts)]
    noise, p = _noise(2), params(dim, n_layer, n_heads)
    for k, part in [(k, q) for k, q in enumerate(names) if not q.exists()]:
        cuts = {n: _cut(n, s, n_parts) for n, s in p.shapes(n_vocab).items()}
        _save_ggml(part, _fill(cuts, noise, np.float32(1), k), p, n_vocab, FileVersion.GGMF_V1)
    return names


def llama3_meta(root: Path, p: Params) -> Path:
    """root/tokenizer.model (Llama 3's 128,000 ranks, from llama.cpp's copy of its vocabulary) and root/8b/
    {params.json, consolidated.0[01].pth} of p in bf16, the embedding split by rows as Meta's Llama 3 code does."""
    import gguf
    import sdist
    if not (root / "tokenizer.model").exists():
        root.mkdir(parents=True)
        field = gguf.GGUFReader(sdist.llama_cpp_tree() / "models" / "ggml-vocab-llama-bpe.gguf").fields
        byte = {c: b for b, c in bytes_to_unicode().items()}
        (root / "tokenizer.model").write_bytes(b"".join(base64.b64encode(bytes(byte[c] for c in t)) + b" %d\n" % i for
                                                        i, t in enumerate(field["tokenizer.ggml.tokens"].contents()[:L3_BASE])))
    shapes = dict(sorted(p.shapes(L3_VOCAB, gguf=True).items(),  # Meta's order: the layers, then norm and output
                         key=lambda kv: kv[0] in ("norm.weight", "output.weight")))
    return _shards(root / "8b", shapes, p, 2, True, ("tok_embeddings.weight",))


def llama3_hf(model_dir: Path, p: Params) -> Path:
    """p's widths as Hugging Face holds them: transformers' save_pretrained of a random LlamaForCausalLM (config.json,
    2 bf16 safetensors shards and their index; tests/hf_fixtures.build_hf) and Llama 3's tokenizer.json."""
    import hf_fixtures
    if not (model_dir / "config.json").exists():
        hf_fixtures.build_hf(model_dir, shards=2, tokenizer=False, vocab_size=L3_VOCAB, hidden_size=p.dim,
                             intermediate_size=p.hidden_dim, num_hidden_layers=p.n_layers, num_attention_heads=p.n_heads,
                             num_key_value_heads=p.n_kv_heads, rope_theta=p.rope_theta, max_position_embeddings=8192,
                             bos_token_id=128000, eos_token_id=128001)
        hf_fixtures.write_llama3_tokenizer(model_dir)
    return model_dir
