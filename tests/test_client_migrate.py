"""A real 2023 client: llama-cpp-python 0.1.48 loads old multi-part q4_0 ggmf files and our migrated ggjt v1 file
and computes the same logits for a fixed prompt.

0.1.48 (llama.cpp of early May 2023: the 04-08 loader, before #1405) still reads ggmf, multi-part files and
ggjt v1 Q4_0, and only knows the LLaMA sizes by layer count (32/40/60/80), so the fixture has 32 tiny layers.
The client is built from source on first use (tests/client/setup_client.py); if it cannot be built the test
fails, it is never skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import builders
from migrate.cli import main as migrate_main

import reference  # tests/client (not a package), on sys.path by conftest
import setup_client
from helpers import client_python

CLIENT = "0.1.48"
PROMPT = [1, 300, 17, 250, 99, 3]  # BOS, then fixed ids; no tokenizer involved
HP = builders.llama_hparams(n_vocab=320, dim=128, n_mult=64, n_head=2, n_layer=32, ftype=2)  # ftype 2: mostly Q4_0


def _tensors() -> dict[str, tuple[str, np.ndarray]]:
    """32 tiny layers; 2-D weights scaled down so activations stay moderate through every layer."""
    tensors = builders.llama_tensors(HP, "Q4_0", seed=11)
    return {n: (kind, (a * np.float32(0.05 if a.ndim == 2 else 1.0)).astype(np.float32))
            for n, (kind, a) in tensors.items()}


def _logits(python: Path, model: Path) -> np.ndarray:
    out = setup_client.run_client(python, model, PROMPT, n_ctx=64)
    assert out["client"] == CLIENT and out["n_vocab"] == HP["n_vocab"]
    return np.asarray(out["logits"], dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("n_parts", [2, 4])
def test_client_048_gives_identical_logits_for_old_parts_and_migrated_file(tmp_path, n_parts):
    python = client_python(CLIENT)
    tensors = _tensors()
    parts = builders.build_parts("ggmf", HP, builders.llama_vocab(HP["n_vocab"]), tensors, n_parts)
    for k, data in enumerate(parts):
        (tmp_path / ("ggml-model-q4_0.bin" if k == 0 else f"ggml-model-q4_0.bin.{k}")).write_bytes(data)
    old, new = tmp_path / "ggml-model-q4_0.bin", tmp_path / "migrated.bin"
    assert migrate_main([str(old), str(new), "--quiet"]) == 0

    old_logits, new_logits = _logits(python, old), _logits(python, new)
    np.testing.assert_array_equal(new_logits, old_logits)

    # and they are the model's logits, not identical garbage: compare with a numpy forward pass of the
    # dequantized weights (llama.cpp differs by its f16 KV cache and Q8 activations in Q4 dot products)
    data = new.read_bytes()
    weights = {t["name"]: builders.tensor_array(data, t, 1) for t in builders.parse_file(data)["tensors"]}
    expected = reference.forward(weights, HP["n_head"], PROMPT)
    assert np.isfinite(new_logits).all() and new_logits.std() > 0.1
    np.testing.assert_allclose(new_logits, expected, rtol=0, atol=0.15)
    assert np.corrcoef(new_logits.ravel(), expected.ravel())[0, 1] > 0.999
