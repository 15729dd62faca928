"""The suite's inputs, each written once: LLaMA-shaped tensors as ggjt, GGUF, safetensors and torch files; a Meta
checkpoint (13B widths, 2 shards, f16 or bf16); the same slice as old 2-part ggmf files. Shapes from
convert.params.Params.shapes; data: random halves, tiled (finite, cheap to make).
"""

from __future__ import annotations

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
    noise = np.random.default_rng(1).standard_normal(8 << 20).astype(np.float16)
    if bf16:  # f16 -> f32 (exact) -> its top 16 bits: bf16 patterns of nearly the same values
        noise = BF16((noise.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16))  # type: ignore[assignment]
    shapes = p.shapes(n_vocab)
    for k in range(n_shards):  # one shard in memory at a time
        parts = {}
        for name, shape in shapes.items():
            axis = split_axis(name, len(shape))
            cut = shape if axis is None else tuple(d // n_shards if i == axis else d for i, d in enumerate(shape))
            parts[name] = np.ones(cut, np.float16) if axis is None else (
                BF16(np.resize(np.roll(noise.bits, k), cut)) if bf16 else np.resize(np.roll(noise, k), cut))
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
            axis = split_axis(name, len(shape))
            cut = shape if axis is None else tuple(d // n_parts if i == axis else d for i, d in enumerate(shape))
            t = ggmlfmt.GGMLType.F32 if len(shape) == 1 else ggmlfmt.GGMLType.F16
            specs.append(ggmlfmt.TensorSpec.from_shape(name, t, cut))
            datas[name] = (cut, t)
        layout = plan(FileVersion.GGMF_V1, hp, ggmlfmt.Vocab(tuple(toks), scores), specs)
        with FileWriter(part, layout, overwrite=True) as w:
            for name, (cut, t) in datas.items():  # one tensor in memory at a time
                arr = np.ones(cut, np.float32) if t == ggmlfmt.GGMLType.F32 else np.resize(np.roll(noise, k), cut)
                w.write_tensor(name, arr)
    return names


def size(paths: list[Path] | Path) -> int:
    return sum(os.path.getsize(p) for p in (paths if isinstance(paths, list) else [paths]))
