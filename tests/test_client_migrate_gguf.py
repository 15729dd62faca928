"""Today's llama.cpp (llama-cpp-python 0.3.36) runs what `migrate-old-weights --format gguf` writes.

Old files are built by tests/builders.py (multi-part ggmf f16/q4_0/q4_1; single-file ggjt v1/v2/v3 with
q4_0, q4_1, q5_0, q5_1, q8_0), migrated to GGUF by our command, and run by the client. Its logits for every
prompt position must agree with reference.forward on the SOURCE weights (dequantized from the old file by
builders' element-by-element reference dequantizer) within tests/client/gguf_check.py's measured tolerances.
The f32 -> f16 scale rounding of v1/v2 files changes values by at most 2^-11 relative (docs/format.md §12.3),
far inside them. A corrupted tensor (the RoPE pairs of one wk head swapped in the written file) must fail
the comparison: the control.

The client runs in a subprocess (gguf_check.run_gguf_client) with weight repacking OFF
(`use_extra_bufts = False` in llama_model_params): with the default, 0.3.36 crashed with SIGSEGV on these
AVX-512 CPUs on a tiny q4_0 model (tests/client/README.md). It is built once per machine; a failed build
fails these tests, never skips them.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

import builders
from migrate.cli import main as migrate_main

import gguf_check  # tests/client (not a package), on sys.path by conftest
import reference

PROMPT = [1, 300, 17, 250, 99, 3, 271, 42, 13, 310]  # BOS, then fixed ids; no tokenizer involved
N_LAYERS = 2
HP = builders.llama_hparams(n_vocab=320, dim=128, n_mult=64, n_head=4, n_layer=N_LAYERS, ftype=1)
# Scales as in test_client_gguf.py: tame through the layers, sensitive to layout bugs (tests/client/README.md)
STD = {"tok_embeddings.weight": 1.0, "output.weight": 0.1, "wq": 0.1, "wk": 0.1}
OTHER_STD, NORM_STD = 0.05, 0.1


def full_tensors(two_d: str, seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """Random LLaMA tensors with the client tests' scales: 1-D F32, 2-D `two_d` (F16 data already f16-exact)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in builders.llama_shapes(HP).items():
        if len(shape) == 1:
            out[name] = ("F32", (1.0 + NORM_STD * rng.standard_normal(shape)).astype(np.float32))
            continue
        key = name if name in STD else name.split(".")[-2]
        a = (STD.get(key, OTHER_STD) * rng.standard_normal(shape)).astype(np.float32)
        out[name] = (two_d, a.astype(np.float16).astype(np.float32) if two_d == "F16" else a)
    return out


def source_values(ts, layout: int) -> dict[str, np.ndarray]:
    """What the old file holds, as float32: quantized by builders then dequantized by its reference decoder."""
    return {name: builders.dequantize(builders.quantize(a, kind, layout, full_range=True), kind, layout, a.shape)
            for name, (kind, a) in ts.items()}


def tolerance(two_d: str, lossless: bool = False) -> float:
    if two_d == "F16":
        return gguf_check.F16_TOLERANCE
    return gguf_check.F32_TOLERANCE if lossless else gguf_check.quant_tolerance(N_LAYERS)


def migrate(d: Path, src: Path, *extra: str) -> Path:
    out = d / "migrated.gguf"
    assert migrate_main([str(src), str(out), "--quiet", *extra]) == 0
    return out


def old_parts(d: Path, two_d: str, n_parts: int, seed: int) -> tuple[Path, dict]:
    ts = full_tensors(two_d, seed)
    for k, data in enumerate(builders.build_parts("ggmf", HP, builders.llama_vocab(320), ts, n_parts,
                                                  full_range=True)):
        (d / ("model.bin" if k == 0 else f"model.bin.{k}")).write_bytes(data)
    return d / "model.bin", ts


def old_ggjt(d: Path, version: int, two_d: str, seed: int) -> tuple[Path, dict]:
    ts = full_tensors(two_d, seed)
    path = d / "model.bin"
    path.write_bytes(builders.build_model("ggjt", version, HP, builders.llama_vocab(320), ts, full_range=True))
    return path, ts


def client_logits(client: Path, path: Path) -> np.ndarray:
    out = gguf_check.run_gguf_client(client, path, PROMPT)
    assert out["client"] == gguf_check.CLIENT and out["extra_bufts"] is False
    return out["logits"]


def expected(ts, layout: int) -> np.ndarray:
    return reference.forward(source_values(ts, layout), HP["n_head"], PROMPT)


@pytest.mark.slow
@pytest.mark.parametrize(("two_d", "n_parts"), [("F16", 2), ("Q4_0", 4), ("Q4_1", 2)])
def test_client_runs_migrated_ggmf_parts(tmp_path, client, two_d, n_parts):
    src, ts = old_parts(tmp_path, two_d, n_parts, seed=n_parts)
    got = client_logits(client, migrate(tmp_path, src))
    rel = gguf_check.assert_logits_match(got, expected(ts, 1), tolerance(two_d))
    print(f"ggmf {n_parts} parts {two_d}: rel {rel:.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("two_d", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
@pytest.mark.parametrize("version", [1, 2, 3])
def test_client_runs_migrated_ggjt(tmp_path, client, version, two_d):
    src, ts = old_ggjt(tmp_path, version, two_d, seed=10 + version)
    path = migrate(tmp_path, src)
    assert gguf.GGUFReader(path).tensors[3].tensor_type.name == two_d  # blocks kept, not widened
    rel = gguf_check.assert_logits_match(client_logits(client, path), expected(ts, version), tolerance(two_d))
    print(f"ggjt v{version} {two_d}: rel {rel:.2e}")


@pytest.mark.slow
def test_client_runs_lossless_f32_output(tmp_path, client):
    src, ts = old_ggjt(tmp_path, 1, "Q4_0", seed=21)
    path = migrate(tmp_path, src, "--lossless")
    assert gguf.GGUFReader(path).tensors[3].tensor_type.name == "F32"
    gguf_check.assert_logits_match(client_logits(client, path), expected(ts, 1), tolerance("Q4_0", lossless=True))


def _swap_rope_pairs(path: Path, tensor: str) -> None:
    """Exchange rows 2i and 2i+1 of the first head of `tensor` in the file: a layout bug the client computes."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == tensor)
    row_bytes = int(t.n_bytes) // int(t.shape[1])
    with open(path, "r+b") as f:
        f.seek(int(t.data_offset))
        rows = bytearray(f.read(row_bytes * 32))
        for i in range(0, 32, 2):
            a, b = rows[i * row_bytes:(i + 1) * row_bytes], rows[(i + 1) * row_bytes:(i + 2) * row_bytes]
            rows[i * row_bytes:(i + 2) * row_bytes] = b + a
        f.seek(int(t.data_offset))
        f.write(rows)


@pytest.mark.slow
@pytest.mark.parametrize(("two_d", "n_parts"), [("F16", 2), ("Q4_0", 4)])
def test_control_corrupted_tensor_fails_the_comparison(tmp_path, client, two_d, n_parts):
    src, ts = old_parts(tmp_path, two_d, n_parts, seed=n_parts)
    path = migrate(tmp_path, src)
    _swap_rope_pairs(path, "blk.0.attn_k.weight")
    got = client_logits(client, path)
    rel = gguf_check.relative_error(got, expected(ts, 1))
    print(f"control {two_d}: rel {rel:.2e}")
    with pytest.raises(AssertionError, match="differ from the numpy reference"):
        gguf_check.assert_logits_match(got, expected(ts, 1), tolerance(two_d))
