"""Today's llama.cpp (llama-cpp-python 0.3.36) runs convert-model's GGUF of Llama 3 checkpoints.

Tokenization: the client's ids for a set of texts equal tiktoken's over the same ranks and special tokens
(tests/llama3.py), with special-token spellings read as text and as specials; the tokens' pieces give the
text back (llama_detokenize too, but for llama.cpp's space clean-up before ? ! . ,); bos/eos/eot ids and the control type of every special token are Meta's. Logits: the client on
1-, 2- and 4-shard bf16 checkpoints (vocab-parallel embedding, GQA, scaled RoPE) agrees with
tests/client/reference.py on the source weights with the rope factors applied. Controls: tiktoken with
another release's specials disagrees; the same file without rope_freqs, and with the embedding unsharded
along the LLaMA-2 axis, both fail the logits comparison.

The fixtures' RoPE uses rope_high_freq_factor 1000 (a params.json key the converter honours): with Meta's
default 4 only wavelengths above 2,048 positions are scaled, which a 10-token prompt cannot see.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

import gguf_check
import llama3
import reference
from convert import convert_checkpoint

RUNNER = Path(__file__).resolve().parent / "client" / "run_gguf_tokenize.py"
TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog.", "élégante forêt près du château",
         "Größe, Mädchen, Straße; niño, mañana", "今日は良い天気ですね。我们今天去公园散步。안녕하세요",
         "1234567890 3.14159 2024-07-23 65536", "a   b\t\tc\n\n\n  d    ", "      ", "\n\n\t \n",
         "they're sure you've seen what I'd say; we'll, it's, don't, I'M, YOU'LL",
         "<|begin_of_text|>Hi<|start_header_id|>user<|end_header_id|>\n\nyo<|eot_id|><|eom_id|><|python_tag|>",
         "<|reserved_special_token_5|> <|image|> <|step_id|> <|notspecial|>", "unseen 🦙 ½ ∑ ₿", ""]
PROMPT = [656, 300, 17, 250, 99, 3, 271, 42, 13, 310]  # bos (656 = N_BASE), then fixed ids
STRONG_ROPE = {**llama3.PARAMS, "rope_high_freq_factor": 1000.0}
TOL = gguf_check.F32_TOLERANCE


def tokenize(client: Path, model: Path, texts: list[str], tmp_path: Path) -> dict[str, Any]:
    """run_gguf_tokenize.py in the client venv; its JSON."""
    src = tmp_path / "texts.json"
    src.write_text(json.dumps(texts), encoding="utf-8")
    proc = subprocess.run([str(client), str(RUNNER), str(model), str(src)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise gguf_check.ClientError(model, proc.returncode, proc.stderr)
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("release", ["3", "3.1", "3.2"])
def test_client_tokenizes_as_tiktoken(tmp_path: Path, client: Path, release: str) -> None:
    ck = llama3.build(tmp_path, 2)
    path = convert_checkpoint(ck.model_dir, outtype="f16", fmt="gguf", llama_release=release).outfile
    out = tokenize(client, path, TEXTS, tmp_path)
    enc = llama3.encoding(release)
    bos = enc.encode_single_token("<|begin_of_text|>")
    assert (out["n_vocab"], out["bos"], out["eos"], out["eot"]) == (
        llama3.N_VOCAB, bos, enc.encode_single_token("<|end_of_text|>"), enc.encode_single_token("<|eot_id|>"))
    for text, got in zip(TEXTS, out["results"], strict=True):
        assert got["plain"] == enc.encode(text, disallowed_special=()), text
        assert got["special"] == enc.encode(text, allowed_special="all"), text
        assert got["with_bos"] == [bos, *got["special"]], text
        assert bytes.fromhex(got["pieces_hex"]) == text.encode("utf-8"), text
        assert bytes.fromhex(got["detok_hex"]) == text.encode("utf-8"), text  # TEXTS avoid llama.cpp's clean-up
    # every special token is a control token to llama.cpp (llama_token_attr), every base token normal
    attrs = gguf_check.run_gguf_client(client, path, [], vocab_only=True)["attrs"]
    assert attrs[: llama3.N_BASE] == [gguf_check.TOKEN_TYPE_ATTR[1]] * llama3.N_BASE
    assert attrs[llama3.N_BASE :] == [gguf_check.TOKEN_TYPE_ATTR[3]] * 256


@pytest.mark.slow
def test_corpus_round_trips_through_pieces(tmp_path: Path, client: Path) -> None:
    """Every corpus line: ids as tiktoken's, pieces give the text back; llama_detokenize differs exactly by
    llama.cpp's space clean-up for llama-bpe (its first pass, restated: a space before ? ! . , is dropped)."""
    ck = llama3.build(tmp_path, 1)
    path = convert_checkpoint(ck.model_dir, outtype="f16", fmt="gguf").outfile
    lines = llama3.CORPUS.read_text(encoding="utf-8").splitlines()
    out = tokenize(client, path, lines, tmp_path)
    enc = llama3.encoding("3.1")
    cleaned = 0
    for text, got in zip(lines, out["results"], strict=True):
        assert got["plain"] == enc.encode(text, disallowed_special=()), text
        assert bytes.fromhex(got["pieces_hex"]) == text.encode("utf-8"), text
        if " '" not in text:
            want = text
            for mark in "?!.,":
                want = want.replace(" " + mark, mark)
            assert bytes.fromhex(got["detok_hex"]).decode("utf-8") == want, text
            cleaned += want != text
    assert cleaned >= 1  # the clean-up is real: the corpus has " !c"


@pytest.mark.slow
def test_control_another_releases_specials_disagree(tmp_path: Path, client: Path) -> None:
    ck = llama3.build(tmp_path, 1)
    path = convert_checkpoint(ck.model_dir, outtype="f16", fmt="gguf", llama_release="3.1").outfile
    text = "<|eom_id|> <|image|> <|reserved_special_token_7|>"
    got = tokenize(client, path, [text], tmp_path)["results"][0]["special"]
    assert got == llama3.encoding("3.1").encode(text, allowed_special="all")
    assert got != llama3.encoding("3.2").encode(text, allowed_special="all")
    assert got != llama3.encoding("3").encode(text, allowed_special="all")


def _reference(full: dict[str, np.ndarray], params: dict[str, Any], factors: np.ndarray | None) -> np.ndarray:
    return reference.forward(full, params["n_heads"], PROMPT, n_kv_heads=params["n_kv_heads"],
                             norm_eps=params["norm_eps"], rope_theta=params["rope_theta"], rope_factors=factors)


def _factors(params: dict[str, Any]) -> np.ndarray:
    return llama3.rope_factors(params["dim"] // params["n_heads"], params["rope_theta"],
                               high=params.get("rope_high_freq_factor", 4.0))


@pytest.mark.slow
def test_client_logits_of_1_2_and_4_shards_match_the_reference(tmp_path: Path, client: Path) -> None:
    want = None
    for n_shards in (1, 2, 4):
        ck = llama3.build(tmp_path / str(n_shards), n_shards, params=STRONG_ROPE)
        path = convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf").outfile
        out = gguf_check.run_gguf_client(client, path, PROMPT)
        assert (out["n_vocab"], out["n_head"], out["n_head_kv"], out["n_ctx_train"]) == (llama3.N_VOCAB, 4, 2, 131072)
        want = _reference(ck.full, STRONG_ROPE, _factors(STRONG_ROPE))
        rel = gguf_check.assert_logits_match(out["logits"], want, TOL)
        print(f"{n_shards} shard(s): rel {rel:.2e}")
    # control: the reference without the factors is far from the client, so the factors were used
    assert gguf_check.relative_error(out["logits"], _reference(ck.full, STRONG_ROPE, None)) > TOL


@pytest.mark.slow
def test_client_logits_with_metas_default_rope_and_f16(tmp_path: Path, client: Path) -> None:
    ck = llama3.build(tmp_path, 2)
    path = convert_checkpoint(ck.model_dir, outtype="f16", fmt="gguf").outfile
    stored = {k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v for k, v in ck.full.items()}
    out = gguf_check.run_gguf_client(client, path, PROMPT)
    gguf_check.assert_logits_match(out["logits"], _reference(stored, llama3.PARAMS, _factors(llama3.PARAMS)),
                                   gguf_check.F16_TOLERANCE)


@pytest.mark.slow
def test_client_runs_tied_embeddings(tmp_path: Path, client: Path) -> None:
    ck = llama3.build(tmp_path, 2, params=STRONG_ROPE, tied=True)
    path = convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf").outfile
    out = gguf_check.run_gguf_client(client, path, PROMPT)
    gguf_check.assert_logits_match(out["logits"], _reference(ck.full, STRONG_ROPE, _factors(STRONG_ROPE)), TOL)


def _without_rope_freqs(src: Path, dst: Path) -> None:
    """The same GGUF rewritten by the gguf package without rope_freqs.weight (metadata and other tensors kept)."""
    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.alignment"):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            w.add_array(field.name, field.contents())
        else:
            w.add_key_value(field.name, field.contents(), kind)
    for t in reader.tensors:
        if t.name != "rope_freqs.weight":
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.slow
def test_control_without_rope_freqs_fails(tmp_path: Path, client: Path) -> None:
    ck = llama3.build(tmp_path, 2, params=STRONG_ROPE)
    path = convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf").outfile
    want = _reference(ck.full, STRONG_ROPE, _factors(STRONG_ROPE))
    stripped = tmp_path / "no-rope-freqs.gguf"
    _without_rope_freqs(path, stripped)
    assert "rope_freqs.weight" not in {t.name for t in gguf.GGUFReader(stripped).tensors}
    out = gguf_check.run_gguf_client(client, stripped, PROMPT)
    print(f"control without rope_freqs: rel {gguf_check.relative_error(out['logits'], want):.2e}")
    with pytest.raises(AssertionError, match="differ from the numpy reference"):
        gguf_check.assert_logits_match(out["logits"], want, TOL)


@pytest.mark.slow
def test_control_embedding_unsharded_along_the_llama2_axis_fails(tmp_path: Path, client: Path) -> None:
    ck = llama3.build(tmp_path, 2, params=STRONG_ROPE)
    path = convert_checkpoint(ck.model_dir, outtype="f32", fmt="gguf").outfile
    want = _reference(ck.full, STRONG_ROPE, _factors(STRONG_ROPE))
    shards = [torch.load(p, weights_only=True)["tok_embeddings.weight"].float().numpy() for p in ck.paths]
    wrong = np.concatenate(shards, axis=1)  # what a by-columns rule makes of two row blocks, in file order
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    assert t.n_bytes == wrong.nbytes
    with open(path, "r+b") as f:
        f.seek(t.data_offset)
        f.write(np.ascontiguousarray(wrong, dtype="<f4").tobytes())
    out = gguf_check.run_gguf_client(client, path, PROMPT)
    print(f"control LLaMA-2 axis: rel {gguf_check.relative_error(out['logits'], want):.2e}")
    with pytest.raises(AssertionError, match="differ from the numpy reference"):
        gguf_check.assert_logits_match(out["logits"], want, TOL)
