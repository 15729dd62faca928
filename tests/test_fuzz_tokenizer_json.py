"""Fuzzing the tokenizer.json and tokenizer_config.json readers: every mutant gives a FormatError or a consistent vocabulary.

Like tests/test_fuzz_safetensors.py: a small valid byte-level BPE tokenizer.json (with added tokens, a
Llama 3 pre-tokenizer and a template post-processor) and a tokenizer_config.json are mutated 1-3
times: a JSON value anywhere in them is replaced by a boundary value of another kind, a key is
dropped, the text is cut, bytes are overwritten, inserted, deleted or appended. Parsing
(ggmlfmt.llama.hf_vocab.parse_json, ggmlfmt.llama.hf_bpe.bpe_from_json) must raise a one-line FormatError naming
the file, or return a vocabulary with one UTF-8 piece and a known type per id and well-formed merges,
within tracemalloc's bound (strategies.decode_or_format_error).

The default run is part of the suite; `HYPOTHESIS_PROFILE=fuzz` runs 10,000 cases (docs/safety.md).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies
from ggmlfmt import FormatError, GGUFStrings
from ggmlfmt.llama.hf_bpe import _each_merge, bpe_from_json, parse_tokenizer_json
from ggmlfmt.llama.hf_vocab import decode_json, parse_json
from ggmlfmt.constants import TokenType
from hf_fixtures import bos_post_processor, llama3_pre_tokenizer

FUZZ_EXAMPLES = {"fuzz": 10_000}.get(os.environ.get("HYPOTHESIS_PROFILE", ""), 300)
N_VOCAB = 8
TOKENIZER = {
    "added_tokens": [{"id": 6, "content": "<|bos|>", "special": True}, {"id": 7, "content": "x\u2581y", "special": False}],
    "normalizer": None,
    "pre_tokenizer": llama3_pre_tokenizer(), "post_processor": bos_post_processor("<|bos|>", 6),
    "model": {"type": "BPE", "byte_fallback": False, "ignore_merges": True,
              "vocab": {"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġa": 4, "Ġab": 5}, "merges": ["a b", ["Ġ", "a"], "Ġa b"]},
}
CONFIG = {"bos_token": "<|bos|>", "eos_token": {"content": "<|bos|>"}, "add_eos_token": False,
          "chat_template": "{{ messages }}", "added_tokens_decoder": {"6": {"content": "<|bos|>", "special": True}}}
VALUES = [None, True, 0, -1, 7, 8, 2**31, 2**64, 1e308, "", "a b", "\ud800", "<|bos|>", "A", [], [1, "a"], {},
          {"id": 3}, {"Regex": "x"}, "x" * 2000]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indexes) to a value inside obj."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple, value: Any, drop: bool) -> Any:
    if not path:
        return value
    node = obj
    for p in path[:-1]:
        node = node[p]
    if drop:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


PATHS = {"tokenizer": _paths(TOKENIZER)[1:], "config": _paths(CONFIG)[1:]}


@st.composite
def mutants(draw: st.DrawFn) -> tuple[bytes, bytes]:
    docs = {"tokenizer": copy.deepcopy(TOKENIZER), "config": copy.deepcopy(CONFIG)}
    raw: dict[str, bytes] = {}
    for _ in range(draw(st.integers(1, 3))):
        which = draw(st.sampled_from(["tokenizer", "config"]))
        kind = draw(st.sampled_from(["value", "value", "drop", "text"]))
        if which in raw or kind == "text":
            data = raw.get(which) or json.dumps(docs[which]).encode()
            how = draw(st.sampled_from(["cut", *strategies.BLIND_MUTATIONS]))
            raw[which] = data[: draw(st.integers(0, len(data)))] if how == "cut" else strategies.blind_mutation(
                draw, data, how)
            continue
        path = draw(st.sampled_from(PATHS[which]))
        try:
            docs[which] = _set(docs[which], path, copy.deepcopy(draw(st.sampled_from(VALUES))), kind == "drop")
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed or replaced the path
            continue
    encode = lambda d: json.dumps(d).encode()  # noqa: E731
    return raw.get("tokenizer") or encode(docs["tokenizer"]), raw.get("config") or encode(docs["config"])


def _parse(tokenizer: bytes, config: bytes):
    t, c = Path("tokenizer.json"), Path("tokenizer_config.json")
    return bpe_from_json(parse_tokenizer_json(decode_json(tokenizer, t), t), parse_json(config, c), N_VOCAB, {"eos": 1},
                         t, c)


def test_the_sample_is_valid() -> None:
    v, _ = _parse(json.dumps(TOKENIZER).encode(), json.dumps(CONFIG).encode())
    assert v.pre == "llama-bpe" and v.pieces[7] == "x y" and list(v.types[5:]) == [1, 3, 4]
    assert v.merges == ("a b", "Ġ a", "Ġa b") and (v.bos_id, v.eos_id, v.unk_id, v.extra_ids) == (6, 6, None, ())


@settings(max_examples=FUZZ_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_mutated_tokenizer_json_gives_format_error_or_consistent_vocabulary(files: tuple[bytes, bytes]) -> None:
    tokenizer, config = files
    v = strategies.decode_or_format_error(lambda: _parse(tokenizer, config), len(tokenizer) + len(config),
                                          prefix="tokenizer")
    if v is None:
        return
    v, settings = v
    assert len(v.pieces) == len(v.types) == N_VOCAB
    for piece in v.pieces:
        assert isinstance(piece, str) and piece.encode("utf-8")
    assert set(v.types.tolist()) <= {int(t) for t in TokenType}
    for m in v.merges:
        assert m.count(" ") == 1 and m.encode("utf-8")
    ids = [v.bos_id, v.eos_id, v.unk_id, *(i for _, i in v.extra_ids)]
    assert all(0 <= i < N_VOCAB for i in ids if i is not None)
    for kv in settings:
        assert kv.key.startswith("tokenizer.")


@settings(max_examples=FUZZ_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_the_walk_reads_what_json_loads_reads(files: tuple[bytes, bytes]) -> None:
    """parse_tokenizer_json (the merges checked and encoded as they are read) against parse_json (json.loads):
    the same error, or the same object once its merges are spelled as _merges spells them."""
    t = Path("tokenizer.json")
    try:
        text = decode_json(files[0], t)
    except FormatError:
        return
    try:
        want = parse_json(text, t)
    except FormatError as e:
        try:
            parse_tokenizer_json(text, t)
        except FormatError as got:
            assert str(got) == str(e)
            return
        raise AssertionError(f"the walk read what json.loads refused: {e}") from None
    got = parse_tokenizer_json(text, t)
    merges = got["model"].get("merges") if isinstance(got.get("model"), dict) else None
    if isinstance(merges, GGUFStrings):
        assert list(merges) == list(_each_merge(want["model"]["merges"], t))
        got["model"]["merges"] = want["model"]["merges"]
    assert repr(got) == repr(want)


def test_the_walk_encodes_merges_a_step_at_a_time(monkeypatch) -> None:
    """Merges across several steps (here 2 per step) come out whole and in order; a bad one in a later step
    still gets the error that names its index in the whole list (control for the step bookkeeping)."""
    from ggmlfmt.llama import hf_bpe

    monkeypatch.setattr(hf_bpe, "_MERGES_PER_STEP", 2)
    doc = copy.deepcopy(TOKENIZER)
    got = parse_tokenizer_json(json.dumps(doc), Path("t.json"))["model"]["merges"]
    assert isinstance(got, GGUFStrings) and list(got) == ["a b", "Ġ a", "Ġa b"]
    doc["model"]["merges"].append("no_space")
    v = parse_tokenizer_json(json.dumps(doc), Path("t.json"))
    assert v["model"]["merges"][-1] == "no_space"  # handed to json.loads' reading, where _merges names it
    try:
        bpe_from_json(v, {}, N_VOCAB, {}, Path("t.json"), Path("c.json"))
    except FormatError as e:
        assert e.field == "model.merges[3]", str(e)
    else:
        raise AssertionError("a merge without a space was accepted")


@pytest.mark.parametrize("text", [
    '{"model": {"merges": ["a b", ["c", "d"]], "vocab": {"a": 0}}, "x": [1, {"y": null}]}',
    ' \n{ \t} \r\n', '{"model": {"merges": []}}', '{"model": {"merges": [ ]} }', '{"model": {"merges": ["a  b"]}}',
    '{"model": 3, "model": {"merges": ["q r"], "merges": ["s t"]}}', '{"model": {"merges": ["q r"]}, "model": 3}',
    '{"a": 1,}', '[1]', '{"model": {"merges": ["a b",]}}', '{"a": NaN}', '{"a": 1} x', '{"a" 1}', '{"a": 1',
    '{"model": {"merges": ["a b" "c d"]}}', '{"model": {"merges": "a b"}}', '{"a": "\\ud800"}', '',
    # merges read by the numpy path: escapes it takes (quote, backslash, slash), ones it leaves to the
    # per-element reading (\\u, \\n), and strings that are not "left right"
    '{"model": {"merges": ["\\" \\\\", "a\\/ b", "\\\\\\" x", "\\u0120 t", "x\\n y", "p q"]}}',
    '{"model": {"merges": ["a b", "c  d"]}}', '{"model": {"merges": ["a b", " cd"]}}', '{"model": {"merges": ["a b", "cd "]}}',
    '{"model": {"merges": ["a b", ""]}}', '{"model": {"merges": ["a b", "\\ud800 x"]}}',
    '{"model": {"merges": [\n  "a b" ,\n  ["c", "d"] ,\n  "e f"\n ]}}',
])
def test_the_walk_agrees_with_json_loads_on_hand_written_texts(text: str) -> None:
    """Repeated keys (the last wins), whitespace in every place, empty containers, and what json.loads refuses."""
    t = Path("tokenizer.json")
    try:
        want = parse_json(text, t)
    except FormatError as e:
        with pytest.raises(FormatError) as got:
            parse_tokenizer_json(text, t)
        assert str(got.value) == str(e)
        return
    got = parse_tokenizer_json(text, t)
    if isinstance(got.get("model"), dict) and isinstance(got["model"].get("merges"), GGUFStrings):
        assert list(got["model"]["merges"]) == list(_each_merge(want["model"]["merges"], t))
        got["model"]["merges"] = want["model"]["merges"]
    assert repr(got) == repr(want)
