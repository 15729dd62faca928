"""Benchmark inputs: one set of LLaMA-shaped tensors written as ggjt, safetensors, GGUF and a torch checkpoint.

The ggjt file is written by our streaming writer, one tensor at a time; the other formats are
written by their own libraries from zero-copy views of it, so every format holds the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ggmlfmt import FType, GGMLType, HParams, TensorSpec, Vocab, load
from ggmlfmt.constants import FileVersion
from ggmlfmt.layout import plan
from ggmlfmt.writer import FileWriter

N_VOCAB = 32000
N_MULT = 256
FORMATS = ("ggjt", "safetensors", "gguf", "pt")
SUFFIX = {"ggjt": ".bin", "safetensors": ".safetensors", "gguf": ".gguf", "pt": ".pt"}
LOADER_FORMAT = {  # which file each loader reads
    "ggmlfmt": "ggjt",
    "ggmlfmt-gguf": "gguf",  # our reader on the GGUF file that gguf.GGUFReader reads
    "memmap-floor": "ggjt",
    "safetensors.load_file": "safetensors",
    "safetensors.safe_open": "safetensors",
    "gguf.GGUFReader": "gguf",
    "torch.load-mmap": "pt",
    "torch.load": "pt",
}


def n_ff(dim: int) -> int:
    """The 2023 LLaMA feed-forward width: 2/3 of 4*dim, rounded up to N_MULT."""
    return ((2 * (4 * dim) // 3 + N_MULT - 1) // N_MULT) * N_MULT


def llama_shapes(dim: int, n_layer: int) -> dict[str, tuple[tuple[int, ...], GGMLType]]:
    """name -> (PyTorch-order shape, type) of a LLaMA checkpoint: f16 matrices, f32 norms."""
    f16, f32, ff = GGMLType.F16, GGMLType.F32, n_ff(dim)
    out = {"tok_embeddings.weight": ((N_VOCAB, dim), f16), "norm.weight": ((dim,), f32),
           "output.weight": ((N_VOCAB, dim), f16)}
    for i in range(n_layer):
        p = f"layers.{i}."
        out.update({p + f"attention.{w}.weight": ((dim, dim), f16) for w in ("wq", "wk", "wv", "wo")})
        out.update({p + "feed_forward.w1.weight": ((ff, dim), f16), p + "feed_forward.w2.weight": ((dim, ff), f16),
                    p + "feed_forward.w3.weight": ((ff, dim), f16)})
        out.update({p + "attention_norm.weight": ((dim,), f32), p + "ffn_norm.weight": ((dim,), f32)})
    return out


def model_bytes(dim: int, n_layer: int) -> int:
    """Tensor bytes of llama_shapes(dim, n_layer) (the file adds a few hundred KiB of vocabulary)."""
    return sum(int(np.prod(s)) * (2 if t == GGMLType.F16 else 4) for s, t in llama_shapes(dim, n_layer).values())


def _filler(shape: tuple[int, ...], ggml_type: GGMLType, seed: int) -> np.ndarray:
    # Finite values without a costly generator: 1 MiB of random halves, tiled; norms are ones.
    if ggml_type == GGMLType.F32:
        return np.ones(shape, np.float32)
    block = (np.random.default_rng(seed).integers(0, 1 << 16, 1 << 19, dtype=np.uint16) & 0x3BFF).view(np.float16)
    return np.resize(block, shape)


def write_ggjt(path: Path, dim: int, n_layer: int) -> None:
    """A ggjt v3 f16 file of LLaMA shapes, streamed one tensor at a time."""
    shapes = llama_shapes(dim, n_layer)
    hp = HParams(N_VOCAB, dim, N_MULT, max(dim // 128, 1), n_layer, 128, int(FType.MOSTLY_F16))
    vocab = Vocab(tuple(b"tok%d" % i for i in range(N_VOCAB)), np.zeros(N_VOCAB, np.float32))
    specs = [TensorSpec.from_shape(name, t, shape) for name, (shape, t) in shapes.items()]
    with FileWriter(path, plan(FileVersion.GGJT_V3, hp, vocab, specs), overwrite=True) as w:
        for i, (name, (shape, t)) in enumerate(shapes.items()):
            w.write_tensor(name, _filler(shape, t, i))


def write_others(ggjt: Path, paths: dict[str, Path]) -> None:
    """Write the same tensors as safetensors, GGUF and a torch checkpoint, from zero-copy views of `ggjt`."""
    import gguf
    import torch
    from safetensors.numpy import save_file

    model = load(ggjt)
    arrays = {name: np.asarray(model.tensors[name]) for name in model.tensors}
    save_file(arrays, paths["safetensors"])  # copies into one buffer: fine for ~2 GB on a 24 GiB machine
    writer = gguf.GGUFWriter(paths["gguf"], "llama")
    writer.add_tokenizer_model("llama")  # a real LLaMA GGUF carries its vocabulary, as the ggjt file does
    writer.add_token_list(list(model.vocab.tokens))
    writer.add_token_scores(model.vocab.scores.tolist())
    for name, array in arrays.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    torch.save(model.torch_tensors(), paths["pt"])


def write_set(directory: Path, dim: int, n_layer: int) -> dict[str, Path]:
    """All four files of one size in `directory`; returns format -> path."""
    paths = {fmt: directory / f"llama-d{dim}-l{n_layer}{SUFFIX[fmt]}" for fmt in FORMATS}
    write_ggjt(paths["ggjt"], dim, n_layer)
    write_others(paths["ggjt"], paths)
    return paths
