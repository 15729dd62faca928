"""Hugging Face tokenizer.json (byte-level BPE) into GGUF, judged by the tokenizers library and llama.cpp's converter.

The fixture is Llama 3's tokenizer.json rebuilt from llama.cpp's own GGUF vocabulary file
(tests/hf_fixtures.write_llama3_tokenizer); the tokenizers library must tokenize llama.cpp's test
strings into the ids llama.cpp recorded from Meta's tokenizer, which proves the rebuild. Then the
GGUF we write and the one convert_hf_to_gguf.py writes must hold the same tokenizer keys (tokens,
types, merges, pre-tokenizer, special ids, add_bos/add_eos/add_sep, chat template). Hostile
tokenizer.json files are each one FormatError line naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convert import convert_checkpoint
from ggmlfmt.llama.hf_bpe import LLAMA3_PATTERN, bpe_from_json, pre_tokenizer
from ggmlfmt import FormatError, load
from hf_fixtures import LLAMA3_SPLIT, build_hf, llama3_pre_tokenizer, llama3_vocab_tests, peer_convert, write_llama3_tokenizer
from test_hf import ONLY_PEER, refused, assert_same_as_peer

LLAMA3_CONFIG = dict(tokenizer=False, tie=True, vocab_size=128256, bos_token_id=128000, eos_token_id=128001,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                     rope_theta=500000.0)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("l3") / "Tiny"
    build_hf(model_dir, **LLAMA3_CONFIG)
    write_llama3_tokenizer(model_dir)
    return model_dir


def test_the_rebuilt_tokenizer_is_llama3s(llama3_dir: Path) -> None:
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(llama3_dir / "tokenizer.json"))
    cases = llama3_vocab_tests()
    assert len(cases) > 40
    for text, ids in cases:
        assert tok.encode(text, add_special_tokens=False).ids == ids, text
    assert tok.encode("Hello world").ids == [128000, 9906, 1917]
    assert LLAMA3_SPLIT == LLAMA3_PATTERN  # the fixture's restatement is the pattern we recognise


@pytest.mark.slow
def test_tokenizer_keys_equal_convert_hf_to_gguf(llama3_dir: Path, tmp_path: Path) -> None:
    ours = convert_checkpoint(llama3_dir, tmp_path / "ours.gguf", outtype="f16", fmt="gguf").outfile
    peer_convert(llama3_dir, tmp_path / "peer.gguf", "f16")
    assert_same_as_peer(ours, tmp_path / "peer.gguf", only_ours={"general.alignment"},
                        only_peer=ONLY_PEER - {"tokenizer.ggml.pre"})
    with load(ours) as m:
        meta = m.metadata
        assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "llama-bpe")
        assert len(meta["tokenizer.ggml.merges"]) == 280147 and meta["tokenizer.ggml.bos_token_id"] == 128000
        assert meta["tokenizer.ggml.add_bos_token"] is True and "rope_freqs.weight" in m.tensors


def _byte_level(pattern: str) -> dict:
    pre = llama3_pre_tokenizer()
    pre["pretokenizers"][0]["pattern"]["Regex"] = pattern
    return pre


def test_pre_tokenizer_is_recognised_from_what_the_file_declares() -> None:
    where = Path("tokenizer.json")
    assert pre_tokenizer(_byte_level(LLAMA3_SPLIT), where) == "llama-bpe"
    assert pre_tokenizer({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, where) == "gpt-2"
    with pytest.raises(FormatError, match=r"split pattern .*\\\\p\{N\}\{1,4\}.* is not one llama.cpp"):
        pre_tokenizer(_byte_level(LLAMA3_SPLIT.replace("{1,3}", "{1,4}")), where)  # control: one digit more
    with pytest.raises(FormatError, match=r'pre-tokenizer steps \["Metaspace"\]'):
        pre_tokenizer({"type": "Metaspace", "replacement": "\u2581"}, where)
    with pytest.raises(FormatError, match="pre_tokenizer null"):
        pre_tokenizer(None, where)


TINY = {"model": {"type": "BPE", "byte_fallback": False, "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
        "added_tokens": [{"id": 3, "content": "<|x|>", "special": True}], "normalizer": None,
        "pre_tokenizer": _byte_level(LLAMA3_SPLIT)}


def _tiny(**change) -> dict:
    obj = json.loads(json.dumps(TINY))
    for key, value in change.items():
        target, *path = key.split("__")
        if path:
            obj[target][path[0]] = value
        else:
            obj[target] = value
    return obj


def test_tiny_bpe_parses() -> None:
    v, settings = bpe_from_json(_tiny(), {}, 4, {"bos": 3}, Path("t.json"), Path("c.json"))
    assert v.pieces == ("a", "b", "ab", "<|x|>") and list(v.types) == [1, 1, 1, 3] and v.merges == ("a b",)
    assert (v.model, v.pre, v.scores, v.bos_id, v.eos_id, v.unk_id, v.extra_ids) == ("gpt2", "llama-bpe", None, 3,
                                                                                     None, None, ())
    assert settings == []


@pytest.mark.parametrize("change, field, words", [
    ({"model__type": "Unigram"}, "model", 'model type "Unigram"'),
    ({"model__byte_fallback": True}, "model.byte_fallback", "SentencePiece-style"),
    ({"normalizer": {"type": "NFC"}}, "normalizer", 'normalizer "NFC"'),
    ({"model__vocab": {"a": 0, "b": 1, "ab": 7}}, "model.vocab", "id 7 of 'ab' is not below vocab_size 4"),
    ({"model__vocab": {"a": 0, "b": 0, "ab": 2}}, "model.vocab", "id 0 is given to 'a' and 'b'"),
    ({"model__vocab": {"a": 0, "ab": 2}}, "model.vocab", "no token has id 1"),
    ({"model__merges": ["a  b"]}, "model.merges[0]", "is not 'left right'"),
    ({"model__merges": [["a", 3]]}, "model.merges[0]", "is not 'left right'"),
    ({"added_tokens": [{"id": 3}]}, "added_tokens", "token null is not a UTF-8 string"),
    ({"model__vocab": {"a": 0, "b": 1, "\ud800": 2}}, "model.vocab", "not a UTF-8 string"),
])
def test_bad_tokenizer_json(change: dict, field: str, words: str) -> None:
    with pytest.raises(FormatError) as e:
        bpe_from_json(_tiny(**change), {}, 4, {}, Path("t.json"), Path("c.json"))
    assert e.value.field == field and words in str(e.value) and str(e.value).startswith("t.json: "), str(e.value)


_TEXTS = st.text(alphabet=st.sampled_from(["a", "b", " ", "\n", "\u0120", "\ud800", "\u00e9"]), max_size=4)


@settings(max_examples=400, deadline=None)
@given(entries=st.lists(st.tuples(_TEXTS, st.one_of(st.integers(-2, 6), st.booleans(), st.just(1 << 70))),
                        max_size=6),
       merges=st.lists(st.one_of(_TEXTS, st.lists(_TEXTS, max_size=3)), max_size=5))
def test_whole_list_checks_accept_what_the_one_by_one_checks_accept(entries, merges) -> None:
    """_placed and _merges' all-at-once path against the per-entry loops (their errors' source): the same
    result where the loops accept, and never a result where they refuse."""
    from ggmlfmt.llama.hf_bpe import _each_merge, _merges, _place, _placed
    vocab, where = dict(entries), Path("t.json")
    try:
        want = [None] * 5
        for text, i in vocab.items():
            _place(want, text, i, where, "model.vocab")
    except FormatError:
        want = None
    assert _placed(vocab, 5) == want
    try:
        want_merges = list(_each_merge(merges, where))
    except FormatError:
        with pytest.raises(FormatError):
            _merges(merges, where)
    else:
        assert list(_merges(merges, where)) == want_merges


def test_hostile_tokenizer_json_in_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = tmp_path / "m"
    build_hf(model_dir, tokenizer=False, vocab_size=4, bos_token_id=0, eos_token_id=1)
    (model_dir / "tokenizer.json").write_text(json.dumps(_tiny(pre_tokenizer=_byte_level(r"\s+"))))
    refused(model_dir, capsys, r"tokenizer\.json: pre_tokenizer: split pattern \"\\\\s\+\" is not one")
    (model_dir / "tokenizer.json").write_text('{"model": "' + "x" * (64 << 20) + '"}')
    refused(model_dir, capsys, r"tokenizer\.json: expected a JSON file of at most 67,108,864 bytes")


def test_the_directorys_tokenizer_json_comes_before_the_parents_tokenizer_model(tmp_path: Path) -> None:
    """Meta's LLaMA-1 layout keeps tokenizer.model beside the model directories; a Hugging Face directory
    among them with only a tokenizer.json uses its own."""
    from convert import plan_conversion
    from meta import tokenizer_bytes

    model_dir = tmp_path / "m"
    build_hf(model_dir, tokenizer=False, vocab_size=4, bos_token_id=0, eos_token_id=1)
    (model_dir / "tokenizer.json").write_text(json.dumps(_tiny()))
    (tmp_path / "tokenizer.model").write_bytes(tokenizer_bytes())
    cp = plan_conversion(model_dir)
    assert cp.vocab_path == model_dir / "tokenizer.json" and cp.gguf.vocab.pieces == ("a", "b", "ab", "<|x|>")
    (model_dir / "tokenizer.json").unlink()  # control: without it, the parent's (320 pieces, not this model's)
    with pytest.raises(FormatError, match="does not match the 320 pieces"):
        plan_conversion(model_dir)
