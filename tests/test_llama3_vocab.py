"""The tiktoken reader and the byte-level BPE vocabulary it builds (docs/format.md §15.1).

Judges: tiktoken (its file reader, and its Encoding over the same ranks), Meta's special-token lists
restated in tests/llama3.py, and a plain re-implementation of llama.cpp's BPE loop (merge the adjacent
pair of lowest merge rank) run on our merges, which must tokenize like tiktoken. Hostile files each
give one FormatError naming the file, the offset and what was wrong.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import regex
from tiktoken.load import load_tiktoken_bpe

import llama3
from ggmlfmt.constants import TokenType
from ggmlfmt.errors import FormatError
from ggmlfmt.llama.tiktoken_vocab import (
    MAX_LINE_BYTES,
    bpe_vocab,
    bytes_to_unicode,
    load_tiktoken_vocab,
    looks_like_tiktoken,
    read_ranks,
    special_tokens,
)

TEXTS = ["Hello world", "The quick brown fox doesn't mind; we'll see.", "élégante forêt, Größe, niño",
         "今日は良い天気ですね。我们今天去公园散步。", "1234567890 and 3.14159", "a   b\t\tc\n\n\n  d",
         "they're you've I'd", "def f(x):\n    return x*x", "unseen wörds ¿¡ €100 ½ 🦙", ""]


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(llama3.tiktoken_file(llama3.ranks()))
    return path


def test_ranks_are_what_tiktoken_reads(tok_file: Path) -> None:
    ours = read_ranks(tok_file)
    theirs = load_tiktoken_bpe(str(tok_file))
    assert len(ours) == len(theirs) == llama3.N_BASE
    assert {t: i for i, t in enumerate(ours)} == theirs
    assert looks_like_tiktoken(tok_file.read_bytes()[:64])


@pytest.mark.parametrize("release", ["3", "3.1", "3.2"])
def test_special_tokens_follow_the_base_tokens_in_metas_order(tok_file: Path, release: str) -> None:
    v = load_tiktoken_vocab(tok_file, release)
    n = llama3.N_BASE
    assert len(v) == llama3.N_VOCAB and list(v.pieces[n:]) == llama3.SPECIALS[release]
    assert list(v.types[:n]) == [TokenType.NORMAL] * n and list(v.types[n:]) == [TokenType.CONTROL] * 256
    enc = llama3.encoding(release)
    assert (v.model, v.pre, v.bos_id, v.eos_id) == ("gpt2", "llama-bpe", enc.encode_single_token("<|begin_of_text|>"),
                                                   enc.encode_single_token("<|end_of_text|>"))
    extra = dict(v.extra_ids)
    assert extra["eot_token_id"] == enc.encode_single_token("<|eot_id|>")
    if release == "3":
        assert "eom_token_id" not in extra
    else:
        assert extra["eom_token_id"] == enc.encode_single_token("<|eom_id|>")
    assert special_tokens("3.3") == special_tokens("3.2")  # 3.3 shipped with the 3.2 code


def test_pieces_are_the_bytes_in_gpt2_alphabet(tok_file: Path) -> None:
    v = load_tiktoken_vocab(tok_file, "3.1")
    table = bytes_to_unicode()
    # the alphabet by its published definition: printable Latin-1 stays, the rest maps to U+0100.. in byte order
    assert [table[b] for b in b"az!~"] == list("az!~") and table[ord(" ")] == "\u0120" and table[0] == "\u0100"
    assert table[0xAD] == "\u0143" and len(set(table.values())) == 256
    inverse = {c: b for b, c in table.items()}
    enc = llama3.encoding("3.1")
    for i, piece in enumerate(v.pieces[: llama3.N_BASE]):
        assert bytes(inverse[c] for c in piece) == enc.decode_single_token_bytes(i)


def _llama_cpp_bpe(word: bytes, merge_rank: dict[tuple[str, str], int], piece_id: dict[str, int]) -> list[int]:
    """llama.cpp's loop, restated: whole word if it is a token (ignore_merges), else merge the lowest-ranked pair."""
    table = bytes_to_unicode()
    parts = [table[b] for b in word]
    if "".join(parts) in piece_id:
        return [piece_id["".join(parts)]]
    while True:
        pairs = [(merge_rank.get((a, b)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        pairs = [p for p in pairs if p[0] is not None]
        if not pairs:
            return [piece_id[p] for p in parts]
        _, i = min(pairs)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def test_merges_tokenize_as_tiktoken_does(tok_file: Path) -> None:
    v = load_tiktoken_vocab(tok_file, "3.1")
    assert v.merges is not None and len(v.merges) >= llama3.N_MERGES
    merge_rank = {tuple(m.split(" ")): i for i, m in enumerate(v.merges)}
    piece_id = {p: i for i, p in enumerate(v.pieces)}
    enc = llama3.encoding("3.1")
    text = llama3.CORPUS.read_text(encoding="utf-8") + "".join(TEXTS)
    words = regex.findall(llama3.PAT, text)
    assert len(words) > 300
    for word in words:
        assert _llama_cpp_bpe(word.encode(), merge_rank, piece_id) == enc.encode_ordinary(word), word


def test_control_merges_in_another_order_tokenize_differently(tok_file: Path) -> None:
    """The comparison can fail: the same merges in reverse order give other tokens for some words."""
    v = load_tiktoken_vocab(tok_file, "3.1")
    merge_rank = {tuple(m.split(" ")): i for i, m in enumerate(reversed(v.merges))}
    piece_id = {p: i for i, p in enumerate(v.pieces)}
    enc = llama3.encoding("3.1")
    words = regex.findall(llama3.PAT, llama3.CORPUS.read_text(encoding="utf-8"))
    differ = [w for w in words if _llama_cpp_bpe(w.encode(), merge_rank, piece_id) != enc.encode_ordinary(w)]
    assert len(differ) > 10


def _every_split(tokens: list[bytes], *, first_only: bool = False) -> list[str]:
    """§15.1's merges, restated: token by token in rank order, each cut whose two sides are tokens, by left id."""
    ids = {t: i for i, t in enumerate(tokens)}
    table = bytes_to_unicode()
    out = []
    for t in tokens:
        pairs = sorted((ids[t[:c]], ids[t[c:]]) for c in range(1, len(t)) if t[:c] in ids and t[c:] in ids)
        for a, b in pairs[:1] if first_only else pairs:
            out.append("".join(table[x] for x in tokens[a]) + " " + "".join(table[x] for x in tokens[b]))
    return out


def _thue_morse(a: int, b: int) -> bytes:
    """The 1,024-byte Thue-Morse word over bytes a, b: it and its complement take the same value under every
    polynomial hash modulo 2**64 (the difference is a product of ten factors 1 - x**(2**j), divisible by 2**64)."""
    word = [0]
    for _ in range(10):
        word += [1 - x for x in word]
    return bytes(a if x == 0 else b for x in word)


_BYTES = [bytes([b]) for b in range(256)]
_TM, _CTM = _thue_morse(ord("a"), ord("b")), _thue_morse(ord("b"), ord("a"))
VOCABULARIES = {
    # _TM = _TM[:512] + _CTM[:512]; a search by hash alone would take one of _TM, _CTM for the other
    "two tokens that hash alike": _BYTES + [_TM[:512], _CTM[:512], _TM, _CTM, _TM + b"c", _CTM + b"c"],
    "a split that hashes like a token": _BYTES + [b"ab", b"abc", _TM, _CTM + b"c"],  # _CTM is no token
    "longest tokens": _BYTES + [b"a" * n for n in (2, 3, 100, 382, 383, 765)],  # a split is a merge where both sides are
}


@pytest.mark.parametrize("case", sorted(VOCABULARIES))
def test_merges_are_every_split_in_rank_order(case: str) -> None:
    tokens = VOCABULARIES[case]
    assert list(bpe_vocab(tokens, special_tokens("3.1")).merges) == _every_split(tokens)


def test_merges_of_the_trained_file_are_every_split(tok_file: Path) -> None:
    tokens = read_ranks(tok_file)
    merges = list(load_tiktoken_vocab(tok_file, "3.1").merges)
    assert merges == _every_split(tokens)
    assert merges != _every_split(tokens, first_only=True)  # control: one split per token is not the same list


# ------------------------------------------------------------------ hostile files

GOOD = llama3.tiktoken_file({bytes([b]): b for b in range(256)} | {b"ab": 256})


def _line(token: bytes, rank: int) -> bytes:
    return base64.b64encode(token) + b" %d\n" % rank


HOSTILE = {
    "bad base64": (GOOD + b"YW=j 257\n", "bad base64"),
    "base64 without padding": (GOOD + b"YWJj 257\nYWI 258\n", "bad base64"),
    "not base64 rank": (GOOD + b"YWJj\n", "expected `base64 rank`"),
    "negative rank": (GOOD + b"YWJj -257\n", "expected `base64 rank`"),
    "duplicate token": (GOOD + _line(b"ab", 257), "token b'ab' has ranks 256 and 257"),
    "duplicate rank": (GOOD + _line(b"abc", 256), "rank 256 is given twice"),
    "gap in ranks": (GOOD + _line(b"abc", 258), "rank 257 is missing"),
    "huge line": (GOOD + b"A" * (MAX_LINE_BYTES + 8) + b"= 257\n", f"longer than {MAX_LINE_BYTES}"),
    "huge line at the end": (GOOD + b"A" * 100_000, f"longer than {MAX_LINE_BYTES}"),
    "missing byte": (GOOD.replace(_line(b"\x07", 7), b""), "rank 7 is missing"),
    "byte without token": (GOOD.replace(_line(b"\x07", 7), _line(b"zz", 7)), "byte 0x07 has no token"),
    "empty": (b"\n\n", "no token line"),
    "binary": (b"\x0a\x0b\x00\xff" * 10, "expected `base64 rank`"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tiktoken_file_is_one_clean_error(tmp_path: Path, case: str) -> None:
    data, why = HOSTILE[case]
    path = tmp_path / "tokenizer.model"
    path.write_bytes(data)
    with pytest.raises(FormatError) as info:
        load_tiktoken_vocab(path, "3.1")
    msg = str(info.value)
    assert msg.startswith(str(path)) and why in msg and "\n" not in msg, msg


def test_control_the_good_file_reads(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(GOOD)
    assert len(load_tiktoken_vocab(path, "3")) == 257 + 256
    assert list(load_tiktoken_vocab(path, "3").merges) == ["a b"]


def test_merges_index_like_the_list_they_spell(tok_file: Path) -> None:
    merges = load_tiktoken_vocab(tok_file, "3.1").merges
    spelled = list(merges)
    assert len(merges) == len(spelled) and merges[0] == spelled[0] and merges[-1] == spelled[-1]
    assert merges[5:9] == spelled[5:9] and all(m.count(" ") == 1 for m in spelled)
