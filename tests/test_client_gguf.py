"""Harness self-test: today's llama.cpp (llama-cpp-python 0.3.36) as a GGUF client, against reference.py.

Tiny LLaMA GGUF files are written by the gguf package's GGUFWriter (the format's Python reference
writer), not by our code, from random weights: f32, f16, q8_0 and q4_0 (quantized by gguf.quants),
plus a GQA model with LLaMA-2/3-style eps and RoPE theta. The client's logits for every prompt
position must agree with reference.forward on the same (rounded / dequantized) weights; a corrupted
tensor must make the comparison fail (the control); greedy tokens must agree.

The client runs with weight repacking OFF (`use_extra_bufts = False` in llama_model_params): with
the default (on), 0.3.36 crashed with SIGSEGV on these AVX-512 CPUs on a tiny q4_0 model it runs
correctly with repacking off (tests/client/README.md). It runs in a subprocess, so a crash is a
failed test naming the signal. It is built from source on first use; a failed build fails the tests.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

import builders
import gguf_check  # tests/client (not a package), on sys.path by conftest
import reference
from gguf_check import TinyLlama
from helpers import client_python

Q = gguf.GGMLQuantizationType
PROMPT = [1, 300, 17, 250, 99, 3, 271, 42, 13, 310]  # BOS, then fixed ids; no tokenizer involved
N_VOCAB = 320
TOLERANCE = {Q.F32: gguf_check.F32_TOLERANCE, Q.F16: gguf_check.F16_TOLERANCE,
             Q.Q8_0: gguf_check.QUANT_TOLERANCE, Q.Q4_0: gguf_check.QUANT_TOLERANCE}
# Scales of the random weights: tame through the layers yet sensitive to layout bugs (measured with
# the 2023 clients, tests/client/README.md "Weight scale matters").
STD = {"tok_embeddings.weight": 1.0, "output.weight": 0.1, "wq": 0.1, "wk": 0.1}
OTHER_STD, NORM_STD = 0.05, 0.1


def tiny_weights(hp: TinyLlama, *, dim: int = 64, n_layers: int = 2, n_ff: int = 192,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 LLaMA weights, Meta names and PyTorch shapes (wk/wv with n_kv_heads heads)."""
    rng = np.random.default_rng(seed)
    kv = dim // hp.n_heads * hp.n_kv_heads
    meta = builders.llama_shapes({"n_embd": dim, "n_vocab": N_VOCAB, "n_layer": n_layers}, n_ff=n_ff, kv_rows=kv)
    last = ("norm.weight", "output.weight")  # drawn after the layers: the seeds' measured scales depend on it
    shapes = {n: s for n, s in meta.items() if n not in last} | {n: meta[n] for n in last}
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = (1.0 + NORM_STD * rng.standard_normal(shape)).astype(np.float32)
        else:
            key = name if name in STD else name.split(".")[-2]
            out[name] = (STD.get(key, OTHER_STD) * rng.standard_normal(shape)).astype(np.float32)
    return out


def as_stored(weights: dict[str, np.ndarray], qtype: Q) -> dict[str, np.ndarray]:
    """The float32 values a GGUF of this type holds: 2-D rounded to f16 or quantized+dequantized by gguf.quants."""
    out = {}
    for name, a in weights.items():
        if a.ndim == 1 or qtype == Q.F32:
            out[name] = a
        elif qtype == Q.F16:
            out[name] = a.astype(np.float16).astype(np.float32)
        else:
            out[name] = gguf.quants.dequantize(gguf.quants.quantize(a, qtype), qtype).astype(np.float32)
    return out


@pytest.fixture(scope="session")
def vocab(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, float, int]]:
    """The SentencePiece pieces, scores and types of the tests' tiny tokenizer (byte fallback)."""
    from meta import tokenizer_bytes

    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(tokenizer_bytes(N_VOCAB))
    return gguf_check.sentencepiece_vocab(path)


def forward(weights: dict[str, np.ndarray], hp: TinyLlama, tokens: list[int]) -> np.ndarray:
    """reference.forward with the model's hyper-parameters."""
    return reference.forward(weights, hp.n_heads, tokens, n_kv_heads=hp.n_kv_heads, norm_eps=hp.norm_eps,
                             rope_theta=hp.rope_theta)


# ---------------------------------------------------------------------------------------------------
# the reference's new parameters, without the client


def test_reference_gqa_equals_mha_with_repeated_kv_heads() -> None:
    hp = TinyLlama(n_heads=4, n_kv_heads=2, norm_eps=1e-5, rope_theta=5e5)
    w = tiny_weights(hp, seed=3)
    expanded = dict(w)
    hd = 64 // hp.n_heads
    for name in w:
        if name.endswith(("wk.weight", "wv.weight")):  # KV head j serves query heads 2j and 2j+1
            heads = w[name].reshape(hp.n_kv_heads, hd, -1)
            expanded[name] = np.repeat(heads, hp.n_heads // hp.n_kv_heads, axis=0).reshape(64, -1)
    got = forward(w, hp, PROMPT)
    want = reference.forward(expanded, hp.n_heads, PROMPT, norm_eps=1e-5, rope_theta=5e5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # and the parameters matter: LLaMA-1 defaults give other logits
    assert np.max(np.abs(reference.forward(expanded, hp.n_heads, PROMPT) - want)) > 1e-2


def test_reference_defaults_are_llama1() -> None:
    hp = TinyLlama()
    w = tiny_weights(hp, seed=4)
    plain = reference.forward(w, 4, PROMPT)
    np.testing.assert_array_equal(plain, reference.forward(w, 4, PROMPT, n_kv_heads=4, norm_eps=1e-6,
                                                           rope_theta=1e4, n_rot=16))
    # n_rot < head dim: the last dims are not rotated, so the logits change
    assert np.max(np.abs(reference.forward(w, 4, PROMPT, n_rot=8) - plain)) > 1e-2


def test_name_map_agrees_with_the_gguf_package() -> None:
    llama = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LLAMA]}
    w = tiny_weights(TinyLlama(), n_layers=1)
    for name in w:
        g = gguf_check.gguf_name(name)
        assert g.removesuffix(".weight").replace(".0.", ".{bid}.") in llama, g
        assert gguf_check.meta_name(g) == name
    with pytest.raises(KeyError):
        gguf_check.meta_name("blk.0.attn_qkv.weight")


def test_client_error_names_the_signal() -> None:
    err = gguf_check.ClientError("m.gguf", -11, "line 1\nSegmentation fault\n")
    assert "SIGSEGV" in str(err) and "Segmentation fault" in str(err) and err.returncode == -11


# ---------------------------------------------------------------------------------------------------
# the client


@pytest.mark.slow
@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0, Q.Q4_0], ids=lambda q: q.name)
def test_client_logits_match_reference(tmp_path: Path, client: Path, vocab: list, qtype: Q) -> None:
    hp = TinyLlama()
    w = tiny_weights(hp, seed=1)
    path = gguf_check.write_llama_gguf(tmp_path / f"tiny-{qtype.name}.gguf", w, hp, vocab, qtype)
    out = gguf_check.run_gguf_client(client, path, PROMPT)
    assert out["client"] == gguf_check.CLIENT and out["extra_bufts"] is False
    assert (out["n_vocab"], out["n_embd"], out["n_layer"], out["n_head"], out["n_head_kv"]) == (N_VOCAB, 64, 2, 4, 4)
    want = forward(as_stored(w, qtype), hp, PROMPT)
    rel = gguf_check.assert_logits_match(out["logits"], want, TOLERANCE[qtype])
    print(f"{qtype.name}: rel {rel:.2e}")
    # the integrator's one-liner reads the weights back with the gguf package: the same reference
    np.testing.assert_allclose(gguf_check.reference_logits(path, PROMPT), want, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q5_1], ids=lambda q: q.name)
def test_client_deep_quantized_model_within_deep_tolerance(tmp_path: Path, client: Path, vocab: list,
                                                           qtype: Q) -> None:
    # 32 layers like the old multi-part fixtures: the quantized error grows with depth (README table)
    hp = TinyLlama(n_heads=2, n_kv_heads=2)
    w = tiny_weights(hp, dim=128, n_layers=32, n_ff=384, seed=1)
    path = gguf_check.write_llama_gguf(tmp_path / "deep.gguf", w, hp, vocab, qtype)
    got = gguf_check.run_gguf_client(client, path, PROMPT)["logits"]
    rel = gguf_check.assert_logits_match(got, forward(as_stored(w, qtype), hp, PROMPT), gguf_check.quant_tolerance(32))
    print(f"deep {qtype.name}: rel {rel:.2e}")
    if qtype == Q.Q4_0:  # the control at this depth: swapped RoPE pairs in one wk head of layer 16
        name = "layers.16.attention.wk.weight"
        bad = dict(w)
        bad[name] = w[name].copy()
        bad[name][0:64:2], bad[name][1:64:2] = w[name][1:64:2], w[name][0:64:2]
        path = gguf_check.write_llama_gguf(tmp_path / "deep-bad.gguf", bad, hp, vocab, qtype)
        got = gguf_check.run_gguf_client(client, path, PROMPT)["logits"]
        with pytest.raises(AssertionError, match="differ from the numpy reference"):
            gguf_check.assert_logits_match(got, forward(as_stored(w, qtype), hp, PROMPT),
                                           gguf_check.quant_tolerance(32))


@pytest.mark.slow
def test_client_gqa_eps_and_rope_theta_match_reference(tmp_path: Path, client: Path, vocab: list) -> None:
    hp = TinyLlama(n_heads=4, n_kv_heads=2, norm_eps=1e-5, rope_theta=5e5)
    w = tiny_weights(hp, seed=2)
    path = gguf_check.write_llama_gguf(tmp_path / "gqa.gguf", w, hp, vocab, Q.F16)
    out = gguf_check.run_gguf_client(client, path, PROMPT)
    assert (out["n_head"], out["n_head_kv"]) == (4, 2)
    stored = as_stored(w, Q.F16)
    rel = gguf_check.assert_logits_match(out["logits"], forward(stored, hp, PROMPT), gguf_check.F16_TOLERANCE)
    print(f"GQA f16: rel {rel:.2e}")
    # the reference with LLaMA-1's eps and theta (measured 1.3e-2 on this 10-token prompt) must not pass
    wrong = reference.forward(stored, 4, PROMPT, n_kv_heads=2)
    assert gguf_check.relative_error(out["logits"], wrong) > 2 * gguf_check.F16_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("qtype", [Q.F16, Q.Q4_0], ids=lambda q: q.name)
@pytest.mark.parametrize("corruption", ["wq scaled 1.5", "wk rows swapped"])
def test_control_corrupted_tensor_fails_the_comparison(tmp_path: Path, client: Path, vocab: list,
                                                      corruption: str, qtype: Q) -> None:
    hp = TinyLlama()
    w = tiny_weights(hp, seed=1)
    bad = dict(w)
    if corruption == "wq scaled 1.5":
        bad["layers.1.attention.wq.weight"] = w["layers.1.attention.wq.weight"] * np.float32(1.5)
    else:  # a layout bug: rows 2i and 2i+1 exchanged (the RoPE pairs of the first head), layer 0
        a = w["layers.0.attention.wk.weight"].copy()
        a[0:16:2], a[1:16:2] = w["layers.0.attention.wk.weight"][1:16:2], w["layers.0.attention.wk.weight"][0:16:2]
        bad["layers.0.attention.wk.weight"] = a
    path = gguf_check.write_llama_gguf(tmp_path / "bad.gguf", bad, hp, vocab, qtype)
    got = gguf_check.run_gguf_client(client, path, PROMPT)["logits"]
    rel = gguf_check.relative_error(got, forward(as_stored(w, qtype), hp, PROMPT))
    print(f"{corruption} {qtype.name}: rel {rel:.2e}")
    with pytest.raises(AssertionError, match="differ from the numpy reference"):
        gguf_check.assert_logits_match(got, forward(as_stored(w, qtype), hp, PROMPT), TOLERANCE[qtype])
    # while the client does compute the corrupted model faithfully
    gguf_check.assert_logits_match(got, forward(as_stored(bad, qtype), hp, PROMPT), TOLERANCE[qtype])


@pytest.mark.slow
@pytest.mark.parametrize("qtype", [Q.F16, Q.Q4_0], ids=lambda q: q.name)
def test_client_greedy_tokens_match_reference(tmp_path: Path, client: Path, vocab: list, qtype: Q) -> None:
    hp = TinyLlama()
    w = tiny_weights(hp, seed=5)
    path = gguf_check.write_llama_gguf(tmp_path / "g.gguf", w, hp, vocab, qtype)
    n_gen = 12
    out = gguf_check.run_gguf_client(client, path, PROMPT, extra=["--generate", str(n_gen)])
    stored = as_stored(w, qtype)
    want = forward(stored, hp, PROMPT)
    # next token after every prefix. Where the reference's top-1 beats its top-2 by more than twice the
    # client's largest deviation, the client's argmax cannot legitimately differ; elsewhere it may.
    err = float(np.max(np.abs(out["logits"] - want)))
    decisive = gguf_check.decisive_argmax(want, 2 * err)
    assert len(decisive) >= len(PROMPT) - 3, f"only {len(decisive)} decisive positions: choose another seed"
    np.testing.assert_array_equal(out["logits"].argmax(-1)[decisive], want.argmax(-1)[decisive])
    if qtype == Q.F16:  # greedy continuation; the reference re-runs the whole sequence each step
        seq = list(PROMPT)
        for _ in range(n_gen):
            seq.append(int(forward(stored, hp, seq)[-1].argmax()))
        assert out["generated"] == seq[len(PROMPT):]


@pytest.mark.slow
def test_client_reads_the_vocabulary(tmp_path: Path, client: Path, vocab: list) -> None:
    hp = TinyLlama()
    path = gguf_check.write_llama_gguf(tmp_path / "v.gguf", tiny_weights(hp), hp, vocab, Q.F16)
    out = gguf_check.run_gguf_client(client, path, [], vocab_only=True)
    assert out["n_vocab"] == len(vocab) == N_VOCAB and (out["bos"], out["eos"]) == (1, 2)
    assert [bytes.fromhex(h).decode() for h in out["texts_hex"]] == [p for p, _, _ in vocab]
    np.testing.assert_array_equal(np.asarray(out["scores"], np.float32),
                                  np.asarray([s for _, s, _ in vocab], np.float32))
    for i, ((piece, _, kind), attr, got) in enumerate(zip(vocab, out["attrs"], out["pieces_hex"], strict=True)):
        assert attr & gguf_check.TOKEN_TYPE_ATTR[kind], (i, piece, kind, attr)
        if kind == 6:  # byte token <0xHH>: detokenizes to that one byte
            assert bytes.fromhex(got) == bytes([int(piece[3:-1], 16)]), (i, piece)
        elif kind == 1:  # normal: the piece with SentencePiece's U+2581 as a space
            assert bytes.fromhex(got) == piece.replace("\u2581", " ").encode(), (i, piece)
    assert out["metadata"]["general.architecture"] == "llama"


@pytest.mark.slow
def test_client_failure_is_a_client_error(tmp_path: Path, client: Path) -> None:
    path = tmp_path / "not.gguf"
    path.write_bytes(b"GGUF" + b"\xff" * 60)
    with pytest.raises(gguf_check.ClientError, match="exited 1") as e:
        gguf_check.run_gguf_client(client, path, [1])
    assert "gguf" in e.value.stderr.lower()


@pytest.mark.slow
def test_client_refuses_rope_dims_other_than_head_dim(tmp_path: Path, client: Path, vocab: list,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # today's llama.cpp checks llama.rope.dimension_count == head dim for `llama` (a clean load error)
    real = gguf.GGUFWriter.add_rope_dimension_count
    monkeypatch.setattr(gguf.GGUFWriter, "add_rope_dimension_count", lambda self, n: real(self, n // 2))
    hp = TinyLlama()
    path = gguf_check.write_llama_gguf(tmp_path / "nrot.gguf", tiny_weights(hp), hp, vocab, Q.F16)
    with pytest.raises(gguf_check.ClientError, match="exited 1") as e:
        gguf_check.run_gguf_client(client, path, PROMPT)
    assert "invalid n_rot: 8, expected 16" in e.value.stderr


@pytest.mark.slow
def test_2023_client_on_ggjt_and_today_on_gguf_agree(tmp_path: Path, client: Path) -> None:
    # the same f16 weights: our ggjt (convert-model) in 0.1.78, a GGUF by gguf.GGUFWriter in 0.3.36
    import setup_client
    from convert import convert_checkpoint
    from meta import build

    old_python = client_python("0.1.78")
    ck = build(tmp_path / "ck", 1, n_heads=4, seed=7)
    ggjt = convert_checkpoint(ck.model_dir, outtype="f16", fmt="ggjt").outfile
    old = np.asarray(setup_client.run_client(old_python, ggjt, PROMPT)["logits"], dtype=np.float32)
    weights = {n: a.astype(np.float32) for n, a in ck.full.items() if n != "rope.freqs"}
    hp = TinyLlama()
    path = gguf_check.write_llama_gguf(tmp_path / "same.gguf", weights, hp,
                                       gguf_check.sentencepiece_vocab(ck.tokenizer), Q.F16)
    new = gguf_check.run_gguf_client(client, path, PROMPT)["logits"]
    want = forward(as_stored(weights, Q.F16), hp, PROMPT)
    gguf_check.assert_logits_match(old, want, gguf_check.F16_TOLERANCE)
    gguf_check.assert_logits_match(new, want, gguf_check.F16_TOLERANCE)
    rel = gguf_check.assert_logits_match(new, old, 2 * gguf_check.F16_TOLERANCE)
    print(f"0.3.36 vs 0.1.78: rel {rel:.2e}")
    # same predicted tokens wherever neither client's deviation could flip the argmax
    err = max(float(np.max(np.abs(new - want))), float(np.max(np.abs(old - want))))
    decisive = gguf_check.decisive_argmax(want, 2 * err)
    assert len(decisive) >= len(PROMPT) - 3, f"only {len(decisive)} decisive positions: choose another seed"
    np.testing.assert_array_equal(new.argmax(-1)[decisive], old.argmax(-1)[decisive])
