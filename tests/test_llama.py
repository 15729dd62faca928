"""ggmlfmt.llama.model and the GGUF parts of ggmlfmt.llama.spm and ggmlfmt.llama.params, against gguf-py, sentencepiece, hand values."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece
from gguf import MODEL_ARCH, MODEL_TENSOR_SKIP, GGUFReader, GGUFWriter, Keys, get_tensor_name_map
from gguf import GGUFValueType as TheirValueType
from gguf import TokenType as TheirTokenType
from gguf.vocab import SentencePieceVocab
from hypothesis import given
from hypothesis import strategies as st

import builders
from ggmlfmt.llama.params import gguf_hparams, parse_params
from ggmlfmt.llama.spm import load_gguf_vocab, load_vocab, piece_text, vocab_for_old_file
from meta import train_tokenizer
from ggmlfmt.constants import FType, GGMLType, GGUFValueType, TokenType
from ggmlfmt.errors import BadValue, CannotWrite, FormatError
from ggmlfmt.layout import Vocab
from ggmlfmt.llama.model import (
    UnknownTensor,
    check_vocab_matches,
    control_placeholder,
    gguf_tensor_name,
    llama_file_type,
    llama_hparams,
    llama_metadata,
    reconstruct_vocab,
    skipped_tensor,
)

# ------------------------------------------------------------------ names


def test_every_llama_name_maps_as_gguf_py_maps_it():
    theirs = get_tensor_name_map(MODEL_ARCH.LLAMA, 3)
    for name in builders.llama_tensor_names(3):
        assert gguf_tensor_name(name, 3) == theirs.get_name(name, try_suffixes=(".weight",)), name


@pytest.mark.parametrize("name", ["rope.freqs", "layers.7.attention.inner_attention.rope.freqs"])
def test_rope_tables_are_skipped_like_gguf_py_skips_them(name):
    kind, _ = get_tensor_name_map(MODEL_ARCH.LLAMA, 8).get_type_and_name(name)
    assert kind in MODEL_TENSOR_SKIP[MODEL_ARCH.LLAMA]
    assert skipped_tensor(name)
    with pytest.raises(UnknownTensor, match="skipped"):
        gguf_tensor_name(name)


@pytest.mark.parametrize("name", ["layers.0.attention.wq.bias", "lm_head.weight", "layers.01.ffn_norm.weight",
                                  "layers.x.ffn_norm.weight", "tok_embeddings", ""])
def test_unknown_names_are_refused_by_name(name):
    assert not skipped_tensor(name)
    with pytest.raises(UnknownTensor, match=f"tensor {name!r}: not a LLaMA tensor"):
        gguf_tensor_name(name)


def test_a_layer_beyond_n_layer_is_refused():
    assert gguf_tensor_name("layers.2.ffn_norm.weight") == "blk.2.ffn_norm.weight"
    with pytest.raises(UnknownTensor, match="layer 2 is not below n_layer 2"):
        gguf_tensor_name("layers.2.ffn_norm.weight", 2)


# ------------------------------------------------------------------ file type


@pytest.mark.parametrize(("types", "want"), [
    ([], FType.ALL_F32), ([GGMLType.F32] * 3, FType.ALL_F32), ([GGMLType.F16] * 2, FType.MOSTLY_F16),
    ([GGMLType.F16, GGMLType.F16, GGMLType.Q4_1, GGMLType.Q4_1, GGMLType.Q4_1], FType.MOSTLY_Q4_1),  # ex-"some f16"
    ([GGMLType.Q8_0], FType.MOSTLY_Q8_0), ([GGMLType.Q5_0], FType.MOSTLY_Q5_0), ([GGMLType.Q5_1], FType.MOSTLY_Q5_1),
    ([GGMLType.Q4_0, GGMLType.F32, GGMLType.Q4_0], FType.MOSTLY_Q4_0),
])
def test_file_type_is_the_dominant_2d_type(types, want):
    assert llama_file_type(types) == want


def test_q4_2_has_no_gguf_file_type():
    with pytest.raises(CannotWrite, match="Q4_2 has no GGUF file type"):  # GGUF cannot hold it: a request error
        llama_file_type([GGMLType.Q4_2])


# ------------------------------------------------------------------ hyper-parameters


HP = builders.llama_hparams(n_vocab=300, dim=64, n_mult=32, n_head=4, n_layer=2, ftype=1)


def _shapes(kv_rows: int | None = None, n_vocab: int = 300) -> dict[str, tuple[int, ...]]:
    shapes = builders.llama_shapes({**HP, "n_vocab": n_vocab})
    if kv_rows is not None:
        for n in range(HP["n_layer"]):
            for w in ("wk", "wv"):
                shapes[f"layers.{n}.attention.{w}.weight"] = (kv_rows, HP["n_embd"])
    return shapes


def _hp(shapes, **kw):
    args = {k: HP[k] for k in ("n_vocab", "n_embd", "n_layer", "n_rot")} | {"n_head": HP["n_head"]}
    return llama_hparams(shapes, **(args | kw))


def test_hparams_from_the_tensors_with_llama1_defaults():
    hp = _hp(_shapes())
    assert (hp.n_ff, hp.n_head_kv, hp.n_rot) == (builders.llama_n_ff(64, 32), 4, 16)
    assert (hp.context_length, hp.rms_eps, hp.defaults) == (2048, 1e-6, ("context_length", "rms_eps"))
    given = _hp(_shapes(), context_length=4096, rms_eps=1e-5, rope_freq_base=1e6)
    assert (given.context_length, given.rms_eps, given.rope_freq_base, given.defaults) == (4096, 1e-5, 1e6, ())


def test_grouped_query_attention_from_the_key_rows():
    assert _hp(_shapes(kv_rows=16)).n_head_kv == 1  # one 16-row head
    with pytest.raises(FormatError, match="'layers.0.attention.wk.weight': 24 rows are not a whole number"):
        _hp(_shapes(kv_rows=24))


def test_a_layer_that_disagrees_is_named():
    shapes = _shapes()
    with pytest.raises(FormatError, match=r"'layers.0.feed_forward.w1.weight': shape \[\], expected 2 dimensions"):
        _hp({**shapes, "layers.0.feed_forward.w1.weight": ()})
    shapes["layers.1.feed_forward.w3.weight"] = (8, 64)
    with pytest.raises(FormatError, match=r"'layers.1.feed_forward.w3.weight': shape \[8, 64\], expected \[192, 64\]"):
        _hp(shapes)
    del shapes["layers.1.feed_forward.w3.weight"]
    with pytest.raises(FormatError, match="'layers.1.feed_forward.w3.weight': missing"):
        _hp(shapes)


@pytest.mark.parametrize(("kw", "match"), [
    ({"n_rot": 8}, "n_rot: n_rot 8 is not the head size 16"), ({"n_head": 5}, "5 heads do not divide"),
    ({"n_vocab": 301}, "tok_embeddings.weight"), ({"n_embd": 128, "n_rot": 32}, "tok_embeddings.weight"),
    ({"rms_eps": 0.0}, "rms_eps"), ({"rms_eps": 1e-50}, "rms_eps"),
    ({"rms_eps": 1e300}, "rms_eps"), ({"rms_eps": float("inf")}, "rms_eps"),
    ({"context_length": 0}, "context_length"), ({"rope_freq_base": float("nan")}, "rope_freq_base"),
])
def test_bad_hparams(kw, match):
    with pytest.raises(FormatError, match=match):
        _hp(_shapes(), **kw)


# ------------------------------------------------------------------ params.json (LLaMA-2)

LLAMA2_70B = {"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64, "n_kv_heads": 8,
              "n_layers": 80, "norm_eps": 1e-05, "vocab_size": -1}  # Meta's published params.json


def test_llama2_70b_params():
    p = parse_params(LLAMA2_70B)
    # by hand, Meta's FeedForward: int(2 * 4 * 8192 / 3) = 21845; int(1.3 * 21845) = 28398; up to 4096 -> 28672
    assert (p.hidden_dim, p.n_head_kv, p.norm_eps, p.rope_theta) == (28672, 8, 1e-05, None)
    assert "grouped-query" in p.ggjt_problem() and "--format gguf" in p.ggjt_problem()


def test_a_multiplier_ggjt_cannot_express():
    p = parse_params({**LLAMA2_70B, "n_kv_heads": None, "dim": 64, "n_heads": 4, "multiple_of": 32,
                      "ffn_dim_multiplier": 1.5})  # JSON null = absent, as in Meta's ModelArgs
    # by hand: int(2 * 256 / 3) = 170; int(1.5 * 170) = 255; up to 32 -> 256. ggjt's n_mult rule: 170 -> 192
    assert (p.hidden_dim, p.n_ff, p.n_head_kv) == (256, 192, 4)
    assert "feed-forward size 256" in p.ggjt_problem() and "--format gguf" in p.ggjt_problem()


def test_llama1_and_llama2_7b_fit_ggjt():
    for eps in (1e-06, 1e-05):
        p = parse_params({"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": eps,
                          "vocab_size": -1})
        assert (p.hidden_dim, p.n_ff, p.ggjt_problem(), p.norm_eps) == (11008, 11008, None, eps)


@pytest.mark.parametrize(("extra", "match"), [
    ({"n_kv_heads": 3}, "n_kv_heads: 3 key/value heads do not divide n_heads 32"),
    ({"n_kv_heads": 1.0}, "n_kv_heads: expected an integer"), ({"n_kv_heads": 64}, "n_kv_heads: expected 1..32"),
    ({"ffn_dim_multiplier": True}, "ffn_dim_multiplier: expected a number"),
    ({"ffn_dim_multiplier": 0}, "ffn_dim_multiplier: expected a number in"),
    ({"norm_eps": "1e-5"}, "norm_eps: expected a number"), ({"norm_eps": 10**400}, "norm_eps: .* found inf"),
    ({"rope_theta": -1.0}, "rope_theta"), ({"rope_theta": float("nan")}, "rope_theta"),
])
def test_bad_llama2_fields(extra, match):
    with pytest.raises(FormatError, match=match):
        parse_params({"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, **extra})


def test_gguf_hparams_checks_params_against_the_tensors():
    p = parse_params({"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "n_kv_heads": 1, "rope_theta": 5e5})
    hp = gguf_hparams(p, 300, _shapes(kv_rows=16))
    assert (hp.n_head_kv, hp.rope_freq_base, hp.defaults) == (1, 5e5, ("context_length", "rms_eps"))
    with pytest.raises(FormatError, match="params.json: n_kv_heads: params.json implies key/value heads 1, the tensors"
                                          " have 4"):
        gguf_hparams(p, 300, _shapes())
    wide = parse_params({"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "ffn_dim_multiplier": 1.5})
    with pytest.raises(FormatError, match="ffn_dim_multiplier: params.json implies feed-forward size 256, the "
                                          "tensors have 192"):
        gguf_hparams(wide, 300, _shapes())


# ------------------------------------------------------------------ vocabulary


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    out = {}
    for name, size, controls in (("plain", 320, ()), ("filler", 330, ()), ("ctl", 330, ("<ctl>",))):
        (d / name).mkdir()
        train_tokenizer(d / name / "tokenizer.model", size, control_symbols=controls)
        out[name] = d / name / "tokenizer.model"
    return out


def _sp(path):
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def _sp_types(sp) -> list[int]:
    def kind(i):
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        return 6 if sp.is_byte(i) else 1
    return [kind(i) for i in range(sp.vocab_size())]


@pytest.mark.parametrize("name", ["plain", "filler"])
def test_old_text_reconstructs_to_sentencepieces_own_pieces(tokenizers, name):
    sp = _sp(tokenizers[name])
    old = load_vocab(tokenizers[name])  # the texts the 2023 converter stored
    got = reconstruct_vocab(old)
    assert list(got.pieces) == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert got.types.tolist() == _sp_types(sp)
    assert got.scores.tobytes() == np.array([sp.get_score(i) for i in range(sp.vocab_size())], "<f4").tobytes()
    assert (got.unk_id, got.bos_id, got.eos_id) == (sp.unk_id(), sp.bos_id(), sp.eos_id())


def test_a_lost_control_name_gets_a_placeholder(tokenizers):
    sp = _sp(tokenizers["ctl"])
    ctl = sp.piece_to_id("<ctl>")
    got = reconstruct_vocab(load_vocab(tokenizers["ctl"]))
    want = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    want[ctl] = control_placeholder(ctl)
    assert list(got.pieces) == want and got.types.tolist() == _sp_types(sp)


@pytest.mark.parametrize("name", ["plain", "filler", "ctl"])
def test_tokenizer_model_as_gguf_py_reads_it(tokenizers, name):
    theirs = list(SentencePieceVocab(tokenizers[name].parent).sentencepiece_tokens())
    ours = load_gguf_vocab(tokenizers[name])
    assert [p.encode() for p in ours.pieces] == [t for t, _, _ in theirs]
    assert ours.scores.tolist() == [np.float32(s) for _, s, _ in theirs]
    assert ours.types.tolist() == [int(k) for _, _, k in theirs]
    assert ours.types.dtype == np.int32 and ours.scores.dtype == np.float32


def test_the_builders_llama_vocab_and_the_ggml_no_score_case():
    texts = [t for t, _ in builders.llama_vocab(262)]
    got = reconstruct_vocab(Vocab(tuple(texts), None))
    assert got.pieces[:4] == ("<unk>", "<s>", "</s>", "<0x00>") and got.pieces[258] == "<0xFF>"
    assert got.pieces[259:] == ("\u2581w0", "\u2581w1", "\u2581w2")
    assert got.types.tolist() == [2, 3, 3] + [6] * 256 + [1] * 3
    assert got.scores.tolist() == [0.0] * 262 and (got.unk_id, got.bos_id, got.eos_id) == (0, 1, 2)


piece = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=" "), min_size=1, max_size=8)


@given(words=st.lists(piece, max_size=20), seed=st.integers(0, 2**32 - 1))
def test_reconstruction_inverts_the_2023_rules_for_any_pieces(words, seed):
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *words]
    kinds = [(True, False, False), (False, True, False), (False, True, False)] + [(False, False, True)] * 256
    kinds += [(False, False, False)] * len(words)
    texts = tuple(piece_text(p, unknown=u, control=c, byte=b, path="t", token_id=i)
                  for i, (p, (u, c, b)) in enumerate(zip(pieces, kinds, strict=True)))
    values = np.random.default_rng(seed).standard_normal(len(texts)).astype(np.float32)
    got = reconstruct_vocab(Vocab(texts, values))
    assert list(got.pieces) == pieces
    assert got.types.tolist() == [2, 3, 3] + [6] * 256 + [1] * len(words)
    assert got.scores.tobytes() == values.tobytes()


def test_no_byte_run_means_no_byte_tokens():
    got = reconstruct_vocab(Vocab((b" \xe2\x81\x87 ", b"", b"", b"a", b"\x00"), np.zeros(5, np.float32)))
    assert got.pieces[3:] == ("a", "\x00") and got.types.tolist() == [2, 3, 3, 1, 1]


def test_a_non_utf8_text_outside_the_byte_run_is_named():
    with pytest.raises(FormatError, match=r"token 3: text b'\\xff' is not UTF-8"):
        reconstruct_vocab(Vocab((b" \xe2\x81\x87 ", b"", b"", b"\xff"), None))


def test_an_empty_or_endless_tokenizer_file_is_refused_before_sentencepiece_parses_it(tokenizers, tmp_path,
                                                                                      capfd):
    assert len(load_vocab(tokenizers["plain"])) == 320  # control: a real model passes the size check
    empty = tmp_path / "tokenizer.model"
    empty.write_bytes(b"")
    for path, found in ((empty, "an empty file"), ("/dev/zero", "more")):  # /dev/zero: read() would never end
        with pytest.raises(BadValue, match=rf"^{path}: size: expected a SentencePiece model of 1\.\.67,108,864 "
                                           f"bytes, found {found}$"):
            load_vocab(path)
    assert capfd.readouterr().err == ""  # sentencepiece's own log line ("Returns default value 0") is not printed


def test_vocab_for_an_old_file_checks_texts_and_scores(tokenizers):
    path = tokenizers["plain"]
    file_vocab = load_vocab(path)
    got, want = vocab_for_old_file(path, file_vocab), load_gguf_vocab(path)
    assert got.pieces == want.pieces and got.types.tolist() == want.types.tolist()
    vocab_for_old_file(path, Vocab(file_vocab.tokens, None))  # unversioned ggml: texts only
    texts = list(file_vocab.tokens)
    texts[300] = b"other"
    with pytest.raises(FormatError, match=rf"{path}: token 300: text .* differs from the file's b'other'"):
        vocab_for_old_file(path, Vocab(tuple(texts), file_vocab.scores))
    scores = file_vocab.scores.copy()
    scores[7] = np.nextafter(scores[7], np.float32(1))
    with pytest.raises(FormatError, match="token 7: score"):
        vocab_for_old_file(path, Vocab(file_vocab.tokens, scores))
    with pytest.raises(FormatError, match="vocab size: 320 pieces, the file has 319 tokens"):
        check_vocab_matches(Vocab(file_vocab.tokens[:-1], None), file_vocab, model_path=str(path))


# ------------------------------------------------------------------ metadata, through gguf-py's writer and reader


def test_metadata_reads_back_through_gguf_py(tokenizers, tmp_path):
    vocab = load_gguf_vocab(tokenizers["plain"])
    hp = _hp(_shapes(kv_rows=16, n_vocab=len(vocab)), n_vocab=len(vocab), rope_freq_base=10000.0)
    meta = llama_metadata(hp, vocab, name="tiny", file_type=FType.MOSTLY_Q4_0, quantized=True)
    assert meta[0] == ("general.architecture", GGUFValueType.STRING, "llama")
    assert len({m.key for m in meta}) == len(meta)
    writer = GGUFWriter(tmp_path / "m.gguf", "llama")  # writes general.architecture itself
    for key, vtype, value in meta[1:]:
        if vtype == GGUFValueType.ARRAY:
            sub, items = value
            writer.add_key_value(key, list(items), TheirValueType(vtype), sub_type=TheirValueType(sub))
        else:
            writer.add_key_value(key, value, TheirValueType(vtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    fields = GGUFReader(tmp_path / "m.gguf").fields
    llm = {k: getattr(Keys.LLM, k).format(arch="llama") for k in
           ("CONTEXT_LENGTH", "EMBEDDING_LENGTH", "BLOCK_COUNT", "FEED_FORWARD_LENGTH")}
    want = {Keys.General.ARCHITECTURE: "llama", Keys.General.NAME: "tiny", Keys.General.FILE_TYPE: 2,
            Keys.General.QUANTIZATION_VERSION: 2, llm["CONTEXT_LENGTH"]: 2048, llm["EMBEDDING_LENGTH"]: 64,
            llm["BLOCK_COUNT"]: 2, llm["FEED_FORWARD_LENGTH"]: 192,
            Keys.Rope.DIMENSION_COUNT.format(arch="llama"): 16,
            Keys.Attention.HEAD_COUNT.format(arch="llama"): 4, Keys.Attention.HEAD_COUNT_KV.format(arch="llama"): 1,
            Keys.Attention.LAYERNORM_RMS_EPS.format(arch="llama"): np.float32(1e-6),
            Keys.Rope.FREQ_BASE.format(arch="llama"): 10000.0, Keys.Tokenizer.MODEL: "llama",
            Keys.Tokenizer.BOS_ID: 1, Keys.Tokenizer.EOS_ID: 2, Keys.Tokenizer.UNK_ID: 0}
    for key, value in want.items():
        assert fields[key].contents() == value, key
    assert fields[Keys.Tokenizer.LIST].contents() == list(vocab.pieces)
    assert fields[Keys.Tokenizer.SCORES].contents() == vocab.scores.tolist()
    assert fields[Keys.Tokenizer.TOKEN_TYPE].contents() == vocab.types.tolist()
    arrays = {Keys.Tokenizer.LIST, Keys.Tokenizer.SCORES, Keys.Tokenizer.TOKEN_TYPE}
    assert {k for k in fields if not k.startswith("GGUF.")} == set(want) | arrays
    for key, vtype, value in meta:  # the value types gguf-py reads back are the ones we chose
        assert [int(t) for t in fields[key].types] == ([vtype, value[0]] if vtype == GGUFValueType.ARRAY else [vtype])
    assert {int(t) for t in TokenType} == {int(t) for t in TheirTokenType}
    assert {t.name: int(t) for t in GGUFValueType} == {t.name: int(t) for t in TheirValueType}


def test_metadata_without_quantization_or_freq_base():
    vocab = reconstruct_vocab(Vocab(tuple(t for t, _ in builders.llama_vocab(300)), None))
    keys = [m.key for m in llama_metadata(_hp(_shapes()), vocab, name="x", file_type=1, quantized=False)]
    assert "general.quantization_version" not in keys and "llama.rope.freq_base" not in keys
    short = reconstruct_vocab(Vocab(tuple(t for t, _ in builders.llama_vocab(299)), None))
    with pytest.raises(FormatError, match="299 tokens, expected n_vocab 300"):
        llama_metadata(_hp(_shapes()), short, name="x", file_type=1, quantized=False)


@pytest.mark.parametrize(("key", "expected"), [("1", None), ("\u00b2", "'\u00b2'"), ("\u0661", "'\u0661'"),
                                               ("99999999999", "'99999999999'")])
def test_added_tokens_decoder_ids_are_ascii_decimal(tmp_path, key, expected):
    """tokenizer_config.json keys: "1" is id 1 (the control); "²" (isdigit, not int()) once raised a bare
    ValueError, "١" (Arabic-Indic one) would have been taken for id 1. Both are a BadValue naming the key."""
    import json

    from ggmlfmt.llama.hf_vocab import apply_tokenizer_files
    from ggmlfmt.llama.model import GGUFVocab

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {key: {"content": "<x>"}}}))
    vocab = GGUFVocab(("a", "b"), np.zeros(2, np.float32), np.ones(2, np.int32), None, None, None)
    if expected is None:
        assert apply_tokenizer_files(tmp_path, vocab)[0].pieces == ("a", "<x>")
        return
    with pytest.raises(BadValue, match=rf"tokenizer_config.json: token {expected}: id .* is not one of the 2 tokens"):
        apply_tokenizer_files(tmp_path, vocab)
