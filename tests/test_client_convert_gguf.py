"""Today's llama.cpp (llama-cpp-python 0.3.36) runs convert-model's GGUF output; its logits match the reference.

The GGUFs of 1-, 2- and 4-shard checkpoints (f16, f32, bf16, q8_0) and of a LLaMA-2-style bf16
checkpoint (GQA, ffn_dim_multiplier, norm_eps 1e-5, rope_theta 5e5; all outtypes) are loaded by the
client, whose logits for every prompt position must agree with tests/client/reference.py's numpy
forward pass on the *source* weights as the output type stores them (rounded by torch for f16/bf16,
quantized and dequantized by gguf.quants for q8_0) within gguf_check's measured tolerances: bf16
holds exact values of a bf16 checkpoint, so f32's tolerance; q8_0 the quantized one
(QUANT_TOLERANCE): the reference already uses the q8_0 weights, so what remains is the client's
own 8-bit quantization of every matmul's activations, measured 5e-3..9.2e-3 at this depth. The f16 GGUF must
predict the same tokens as the 2023 client (0.1.78) on the ggjt file of the same checkpoint, at every
position where the argmax is decisive. A control: one tensor scaled after writing must fail.

The client runs with weight repacking OFF (`use_extra_bufts = False` in llama_model_params, the
runner's default): with it on, 0.3.36 crashed with SIGSEGV on these AVX-512 CPUs on a tiny q4_0 model it
runs correctly with repacking off (tests/client/README.md). It runs in a subprocess
(gguf_check.run_gguf_client), so a crash is a failed test naming the signal. The client is built from
source on first use into .cache/clients; a failed build fails the tests, never skips them.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from convert import convert_checkpoint
from meta import VOCAB_SIZE, build
from test_convert_gguf import LLAMA2_PARAMS, build_llama2

import gguf_check  # tests/client (not a package), on sys.path by conftest
import reference
import setup_client
from helpers import client_python

PROMPT = [1, 300, 17, 250, 99, 3, 271, 42, 13, 310]  # BOS, then fixed ids; no tokenizer involved
N_HEADS = 4
# 2 layers, dim 64, measured: f16/f32 <= 4e-4; bf16 1.9e-3..2.5e-3 (exact weights, but the client rounds the
# activations to bf16 for BF16 matmuls, 3 bits fewer than f16's); q8_0 6.3e-3..6.9e-3 (module docstring)
TOLERANCE = {"f16": gguf_check.F16_TOLERANCE, "f32": gguf_check.F32_TOLERANCE, "bf16": gguf_check.F32_TOLERANCE,
             "q8_0": gguf_check.QUANT_TOLERANCE}
OUTTYPES = list(TOLERANCE)
Q8_0 = gguf.GGMLQuantizationType.Q8_0


def as_stored(full: dict[str, np.ndarray], outtype: str) -> dict[str, np.ndarray]:
    """The float32 values the output holds: 2-D rounded to f16 or bf16 by torch, or q8_0 blocks by gguf.quants
    (dequantized again); 1-D and f32 exact; no rope.freqs."""
    out = {}
    for name, a in full.items():
        if name == "rope.freqs":
            continue
        a = a.astype(np.float32)
        if a.ndim == 2 and outtype in ("f16", "bf16"):
            a = torch.from_numpy(a).to(torch.float16 if outtype == "f16" else torch.bfloat16).float().numpy()
        elif a.ndim == 2 and outtype == "q8_0":
            a = gguf.quants.dequantize(gguf.quants.quantize(a, Q8_0), Q8_0)
        out[name] = a
    return out


@pytest.mark.slow
@pytest.mark.parametrize("outtype", OUTTYPES)
def test_client_0336_runs_gguf_of_1_2_and_4_shards(tmp_path: Path, client: Path, outtype: str) -> None:
    outputs, logits = {}, {}
    for n_shards in (1, 2, 4):
        ck = build(tmp_path / f"{n_shards}-shards", n_shards, n_heads=N_HEADS, seed=7)
        outputs[n_shards] = convert_checkpoint(ck.model_dir, outtype=outtype, fmt="gguf").outfile
        out = gguf_check.run_gguf_client(client, outputs[n_shards], PROMPT)
        assert out["client"] == gguf_check.CLIENT and out["extra_bufts"] is False
        assert (out["n_vocab"], out["n_embd"], out["n_layer"], out["n_head"], out["n_head_kv"], out["n_ctx_train"]) \
            == (VOCAB_SIZE, 64, 2, N_HEADS, N_HEADS, 2048)
        logits[n_shards] = out["logits"]
    assert outputs[1].read_bytes() == outputs[2].read_bytes() == outputs[4].read_bytes()
    np.testing.assert_array_equal(logits[1], logits[2])
    np.testing.assert_array_equal(logits[1], logits[4])
    want = reference.forward(as_stored(ck.full, outtype), N_HEADS, PROMPT)
    rel = gguf_check.assert_logits_match(logits[1], want, TOLERANCE[outtype])
    print(f"{outtype}: rel {rel:.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("outtype", OUTTYPES)
def test_client_0336_runs_llama2_style_gqa_checkpoint(tmp_path: Path, client: Path, outtype: str) -> None:
    model_dir, full, _ = build_llama2(tmp_path, 2)
    path = convert_checkpoint(model_dir, outtype=outtype, fmt="gguf").outfile
    out = gguf_check.run_gguf_client(client, path, PROMPT)
    assert out["extra_bufts"] is False and (out["n_head"], out["n_head_kv"]) == (4, 2)
    weights = as_stored(full, outtype)
    want = reference.forward(weights, 4, PROMPT, n_kv_heads=LLAMA2_PARAMS["n_kv_heads"],
                             norm_eps=LLAMA2_PARAMS["norm_eps"], rope_theta=LLAMA2_PARAMS["rope_theta"])
    rel = gguf_check.assert_logits_match(out["logits"], want, TOLERANCE[outtype])
    print(f"{outtype} GQA: rel {rel:.2e}")
    # the client did use theta and eps from our metadata: LLaMA-1's values give logits outside the tolerance
    llama1 = reference.forward(weights, 4, PROMPT, n_kv_heads=2)
    assert gguf_check.relative_error(out["logits"], llama1) > TOLERANCE[outtype]


@pytest.mark.slow
def test_f16_gguf_predicts_what_the_2023_client_predicts_on_the_ggjt_file(tmp_path: Path, client: Path) -> None:
    old_python = client_python("0.1.78")
    ck = build(tmp_path, 2, n_heads=N_HEADS, seed=7)
    ggjt = convert_checkpoint(ck.model_dir, outtype="f16", fmt="ggjt").outfile
    path = convert_checkpoint(ck.model_dir, outtype="f16", fmt="gguf").outfile
    old = np.asarray(setup_client.run_client(old_python, ggjt, PROMPT)["logits"], dtype=np.float32)
    new = gguf_check.run_gguf_client(client, path, PROMPT)["logits"]
    want = reference.forward(as_stored(ck.full, "f16"), N_HEADS, PROMPT)
    gguf_check.assert_logits_match(old, want, gguf_check.F16_TOLERANCE)
    gguf_check.assert_logits_match(new, want, gguf_check.F16_TOLERANCE)
    # same predicted tokens wherever neither client's deviation from the reference could flip the argmax
    err = max(float(np.max(np.abs(new - want))), float(np.max(np.abs(old - want))))
    decisive = gguf_check.decisive_argmax(want, 2 * err)
    assert len(decisive) >= len(PROMPT) - 3, f"only {len(decisive)} decisive positions: choose another seed"
    np.testing.assert_array_equal(new.argmax(-1)[decisive], old.argmax(-1)[decisive])
    np.testing.assert_array_equal(new.argmax(-1)[decisive], want.argmax(-1)[decisive])


def scale_tensor(path: Path, name: str, factor: float) -> None:
    """Multiply one F16, BF16 or Q8_0 tensor of a written GGUF by factor, in place (offsets found by
    gguf.GGUFReader; Q8_0: its f16 block scales; BF16 through torch)."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    with open(path, "r+b") as f:
        f.seek(t.data_offset)
        data = bytearray(f.read(t.n_bytes))
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            bits = torch.frombuffer(data, dtype=torch.bfloat16)
            data = bytearray((bits.float() * factor).to(torch.bfloat16).view(torch.int16).numpy().tobytes())
        else:
            kind = {gguf.GGMLQuantizationType.F16: "f16", Q8_0: "q8_0"}[t.tensor_type]
            values = np.frombuffer(data, np.uint8).reshape(-1, 34)[:, :2] if kind == "q8_0" else np.frombuffer(data, "<u1")
            scaled = (values.copy().view("<f2").astype(np.float32) * factor).astype("<f2").view(np.uint8)
            if kind == "q8_0":
                blocks = np.frombuffer(data, np.uint8).reshape(-1, 34).copy()
                blocks[:, :2] = scaled.reshape(-1, 2)
                data = bytearray(blocks.tobytes())
            else:
                data = bytearray(scaled.tobytes())
        f.seek(t.data_offset)
        f.write(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_control_a_corrupted_tensor_fails_the_comparison(tmp_path: Path, client: Path, outtype: str) -> None:
    ck = build(tmp_path, 2, n_heads=N_HEADS, seed=7)
    path = convert_checkpoint(ck.model_dir, outtype=outtype, fmt="gguf").outfile
    want = reference.forward(as_stored(ck.full, outtype), N_HEADS, PROMPT)
    gguf_check.assert_logits_match(gguf_check.run_gguf_client(client, path, PROMPT)["logits"], want,
                                   TOLERANCE[outtype])  # the intact file passes
    # one wq x2 (q8_0: its scales): measured 3.6e-2 for each, 2.4x the largest tolerance
    scale_tensor(path, "blk.1.attn_q.weight", 2.0)
    corrupted = gguf_check.run_gguf_client(client, path, PROMPT)["logits"]
    print(f"control {outtype}: rel {gguf_check.relative_error(corrupted, want):.2e}")
    with pytest.raises(AssertionError, match="differ from the numpy reference"):
        gguf_check.assert_logits_match(corrupted, want, TOLERANCE[outtype])
