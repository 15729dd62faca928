"""Llama 3 checkpoints (tiktoken tokenizer, vocab-parallel embedding, scaled RoPE) to GGUF (docs/format.md §16.1).

Judged by the gguf package's reader against the weights the fixtures were made from (tests/llama3.py),
Meta's apply_scaling restated in torch for rope_freqs, and Meta's special-token lists. Hostile inputs:
one clean error line each. Today's llama.cpp runs the files in test_client_llama3.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import llama3
from convert import convert_checkpoint, plan_conversion
from convert.cli import main
from ggmlfmt.errors import CannotWrite, FormatError
from ggmlfmt.parts import split_axis_by_shape
from meta import build as build_llama1


def _read(path: Path) -> tuple[dict[str, np.ndarray], gguf.GGUFReader]:
    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.asarray(t.data).reshape([int(d) for d in reversed(t.shape.tolist())])
               for t in reader.tensors}
    return tensors, reader


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


GGUF_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
              "output.weight": "output.weight"}
BLOCK = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
         "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
         "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}


def gguf_name(name: str) -> str:
    if name in GGUF_NAMES:
        return GGUF_NAMES[name]
    _, n, rest = name.split(".", 2)
    return f"blk.{n}.{BLOCK[rest.removesuffix('.weight')]}.weight"


@pytest.mark.parametrize("n_shards", [1, 2, 4])
def test_bf16_shards_convert_exactly_to_f32(tmp_path: Path, n_shards: int) -> None:
    ck = llama3.build(tmp_path, n_shards)
    cp = convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf")
    tensors, reader = _read(cp.outfile)
    assert set(tensors) == {gguf_name(n) for n in ck.full} | {"rope_freqs.weight"}
    for name, want in ck.full.items():
        np.testing.assert_array_equal(tensors[gguf_name(name)], want, err_msg=name)
    axis = {e.name: e.axis for e in cp.entries}["tok_embeddings.weight"]
    assert n_shards == 1 or axis == 0  # rows: Meta's vocab-parallel embedding (one shard: nothing to split)
    assert reader.tensors[0].name == "rope_freqs.weight"  # first, as llama.cpp's converter writes it


def test_shard_counts_give_the_same_bytes(tmp_path: Path) -> None:
    files = [convert_checkpoint(llama3.build(tmp_path / str(n), n).model_dir, outtype="f32", fmt="gguf").outfile
             for n in (1, 2, 4)]
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()


def test_control_the_llama2_axis_gives_another_embedding(tmp_path: Path) -> None:
    """Unsharding the row blocks by columns (the LLaMA-2 rule) scrambles the embedding: the check above can fail."""
    ck = llama3.build(tmp_path, 2)
    shards = [torch.load(p, weights_only=True)["tok_embeddings.weight"].float().numpy() for p in ck.paths]
    wrong = np.concatenate(shards, axis=1).reshape(ck.full["tok_embeddings.weight"].shape)
    assert not np.array_equal(wrong, ck.full["tok_embeddings.weight"])
    assert np.array_equal(np.concatenate(shards, axis=0), ck.full["tok_embeddings.weight"])


def test_rope_freqs_are_metas_apply_scaling(tmp_path: Path) -> None:
    ck = llama3.build(tmp_path, 1)
    tensors, reader = _read(convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf").outfile)
    got = tensors["rope_freqs.weight"]
    want = llama3.rope_factors(16, 500000.0)
    assert got.dtype == np.float32 and got.shape == (8,)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    assert got[0] == 1 and got[-1] == 8 and 1 < got[4] < 8  # high frequencies kept, low ones /8, one blended
    assert _field(reader, "llama.rope.freq_base") == 500000.0 and _field(reader, "llama.rope.dimension_count") == 16


def test_rope_factors_from_params_json(tmp_path: Path) -> None:
    params = {**llama3.PARAMS, "rope_scaling_factor": 32.0, "rope_high_freq_factor": 64.0}
    ck = llama3.build(tmp_path, 1, params=params)
    tensors, _ = _read(convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf").outfile)
    want = _meta_factors(16, 500000.0, 32.0, 64.0)
    np.testing.assert_allclose(tensors["rope_freqs.weight"], want, rtol=2e-6)
    assert not np.allclose(want, llama3.rope_factors(16, 500000.0))  # control: the defaults differ


def _meta_factors(n_rot: int, theta: float, factor: float, high: float) -> np.ndarray:
    """Meta's Llama 4 apply_scaling (scale and high-frequency factor as arguments), restated with floats."""
    out = []
    for i in range(0, n_rot, 2):
        freq = 1.0 / theta ** (i / n_rot)
        wavelen = 2 * np.pi / freq
        if wavelen < 8192 / high:
            new = freq
        elif wavelen > 8192:
            new = freq / factor
        else:
            smooth = (8192 / wavelen - 1) / (high - 1)
            new = (1 - smooth) * freq / factor + smooth * freq
        out.append(freq / new)
    return np.array(out)


def test_vocabulary_and_metadata(tmp_path: Path) -> None:
    ck = llama3.build(tmp_path, 2)
    _, reader = _read(convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf").outfile)
    enc = llama3.encoding("3.1")
    n = llama3.N_BASE
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "llama-bpe"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == llama3.N_VOCAB and tokens[n:] == llama3.SPECIALS["3.1"]
    assert _field(reader, "tokenizer.ggml.token_type") == [1] * n + [3] * 256
    assert "tokenizer.ggml.scores" not in reader.fields
    assert len(_field(reader, "tokenizer.ggml.merges")) >= llama3.N_MERGES
    for key, text in (("bos", "<|begin_of_text|>"), ("eos", "<|end_of_text|>"), ("eot", "<|eot_id|>"),
                      ("eom", "<|eom_id|>")):
        assert _field(reader, f"tokenizer.ggml.{key}_token_id") == enc.encode_single_token(text), key
    assert _field(reader, "llama.context_length") == 131072
    assert _field(reader, "llama.attention.head_count_kv") == 2 and _field(reader, "llama.feed_forward_length") == 224


def test_llama3_without_scaled_rope(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = {k: v for k, v in llama3.PARAMS.items() if k != "use_scaled_rope"}
    ck = llama3.build(tmp_path, 2, params=params)
    with caplog.at_level(logging.INFO, logger="convert.convert"):
        tensors, reader = _read(convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf").outfile)
    assert "rope_freqs.weight" not in tensors
    assert _field(reader, "llama.context_length") == 8192
    assert _field(reader, "tokenizer.ggml.tokens")[llama3.N_BASE:] == llama3.SPECIALS["3"]
    assert _field(reader, "tokenizer.ggml.eot_token_id") == llama3.N_BASE + 9
    assert "tokenizer.ggml.eom_token_id" not in reader.fields
    assert "special tokens of Llama 3 (params.json has no use_scaled_rope)" in caplog.text
    assert "context length 8192, Llama 3's" in caplog.text


def test_release_and_context_options(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ck = llama3.build(tmp_path, 1)
    with caplog.at_level(logging.INFO, logger="convert.convert"):
        cp = plan_conversion(ck.model_dir, fmt="gguf", llama_release="3.3", context_length=4096)
    assert list(cp.gguf.vocab.pieces[llama3.N_BASE:]) == list(llama3.SPECIALS["3.2"])
    assert cp.gguf.hparams.context_length == 4096 and "context length" not in caplog.text
    assert "special tokens of" not in caplog.text  # given, not inferred


def test_tied_embeddings_write_no_output(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ck = llama3.build(tmp_path, 2, tied=True)
    with caplog.at_level(logging.INFO, logger="convert.convert"):
        tensors, reader = _read(convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf").outfile)
    assert "output.weight" not in tensors and "token_embd.weight" in tensors
    assert "no output.weight" in caplog.text and "tied" in caplog.text
    assert _field(reader, "tokenizer.ggml.tokens")[llama3.N_BASE:] == llama3.SPECIALS["3.2"]


def test_split_axis_is_chosen_by_shape() -> None:
    assert split_axis_by_shape("tok_embeddings.weight", (50, 64), (100, 64), 2) == 0  # Llama 3
    assert split_axis_by_shape("tok_embeddings.weight", (100, 32), (100, 64), 2) == 1  # LLaMA-1/2
    assert split_axis_by_shape("layers.0.attention.wo.weight", (64, 32), (64, 64), 2) == 1
    assert split_axis_by_shape("norm.weight", (64,), (64,), 2) is None
    assert split_axis_by_shape("tok_embeddings.weight", (100, 64), (100, 64), 1) == 1  # one shard: the name rule


def test_llama1_checkpoints_still_split_the_embedding_by_columns(tmp_path: Path) -> None:
    ck = build_llama1(tmp_path, 2)
    cp = plan_conversion(ck.model_dir, fmt="gguf")
    assert {e.name: e.axis for e in cp.entries}["tok_embeddings.weight"] == 1


# ------------------------------------------------------------------ hostile inputs: one clean line each


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("convert-model: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def test_vocab_size_disagreeing_with_the_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = llama3.build(tmp_path, 1, params={**llama3.PARAMS, "vocab_size": 128256})
    _one_line(capsys, [str(ck.model_dir), "--format", "gguf", "--quiet"], "params.json: vocab_size: 128256 does not "
              f"match the {llama3.N_VOCAB} tokens ({llama3.N_BASE} ranks + 256 special)")


def test_shard_shapes_fitting_no_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = llama3.build(tmp_path, 2)
    for path in ck.paths:  # every shard's embedding loses a row: 2 x 455 rows make neither 912 rows nor 128 columns
        shard = torch.load(path, weights_only=True)
        shard["tok_embeddings.weight"] = shard["tok_embeddings.weight"][:-1].clone()
        torch.save(shard, path)
    _one_line(capsys, [str(ck.model_dir), "--format", "gguf", "--quiet"], "tensor 'tok_embeddings.weight'",
              "2 shard(s) of [455, 64]", f"[{llama3.N_VOCAB}, 64]", "neither a split by rows nor one by columns")


def test_bad_tokenizer_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = llama3.tiktoken_file(llama3.ranks()) + b"!!!! 656\n"
    ck = llama3.build(tmp_path, 1, tokenizer=bad)
    _one_line(capsys, [str(ck.model_dir), "--format", "gguf", "--quiet"], "tokenizer.model: offset", "bad base64")


def test_tiktoken_needs_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = {k: v for k, v in llama3.PARAMS.items() if k not in ("n_kv_heads", "ffn_dim_multiplier")}  # ggjt-able
    ck = llama3.build(tmp_path, 1, params=plain)
    _one_line(capsys, [str(ck.model_dir), "--format", "ggjt", "--quiet"], "tiktoken tokenizer (Llama 3)", "use --format gguf")
    assert not list(ck.model_dir.glob("*.bin"))


def test_release_option_needs_a_tiktoken_tokenizer(tmp_path: Path) -> None:
    ck = build_llama1(tmp_path, 1)
    with pytest.raises(CannotWrite, match="SentencePiece tokenizer; --llama-release applies to Llama 3"):
        plan_conversion(ck.model_dir, fmt="gguf", llama_release="3.1")


def test_use_scaled_rope_must_be_a_boolean(tmp_path: Path) -> None:
    ck = llama3.build(tmp_path, 1, params={**llama3.PARAMS, "use_scaled_rope": "yes"})
    with pytest.raises(FormatError, match=r"params.json: use_scaled_rope: expected true or false"):
        plan_conversion(ck.model_dir, fmt="gguf")
    (ck.model_dir / "params.json").write_text(json.dumps({**llama3.PARAMS, "rope_high_freq_factor": 1}))
    with pytest.raises(FormatError, match=r"rope_high_freq_factor: expected a number above 1"):
        plan_conversion(ck.model_dir, fmt="gguf")


def test_dry_run_shows_the_llama3_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = llama3.build(tmp_path, 2)
    assert main([str(ck.model_dir), "--format", "gguf", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "meta: tokenizer.ggml.pre = 'llama-bpe'" in out and "meta: llama.context_length = 131072" in out
    assert "rope_freqs.weight" in out.splitlines()[out.splitlines().index(next(
        line for line in out.splitlines() if line.startswith("tensor "))) + 1]  # the first tensor
    assert "context length 131072, Llama 3.1's" in err and "special tokens of Llama 3.1" in err
    assert not list(ck.model_dir.glob("*.gguf"))
    assert main([str(ck.model_dir), "--format", "gguf", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [t["split_axis"] for t in plan["tensors"] if t["checkpoint_name"] == "tok_embeddings.weight"] == [0]
    assert plan["metadata"]["tokenizer.ggml.merges"]["count"] >= llama3.N_MERGES
