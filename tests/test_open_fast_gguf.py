"""The vectorised string walk (layout.walk_entries) decides exactly what the checked walk decides.

GGUF string arrays (u64 length + bytes) and ggjt vocabularies (i32 length + text + f32 score) share
one speculative walk. The reference here is the element-by-element walk written out with struct,
checking every length against the bytes left before using it; for whole arrays the reference is
the checked decoder `gguf._string` applied once per element (what `_strings` did before issue 12,
and what its error path still does). On random and hostile arrays (bad lengths, lengths past the
end, cut arrays, zero-filled bytes, bad UTF-8, strings longer than a chunk) both must return the
same strings and end offsets, or raise the same one-line error.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_fuzz_gguf as fz
from ggmlfmt import FormatError, gguf, layout
from ggmlfmt.constants import MAX_TOKEN_LEN

EXAMPLES = int(os.environ.get("OPEN_FAST_EXAMPLES", "300"))


def _reference_ends(data: bytes, n: int, width: int, trailer: int, max_len: int | None) -> list[int] | None:
    """Every entry's end, each length checked before it is used; None where the checked walk would raise."""
    fmt = "<Q" if width == 8 else "<i"
    pos, ends = 0, []
    for _ in range(n):
        if len(data) - pos < width:
            return None
        (length,) = struct.unpack_from(fmt, data, pos)
        if length < 0 or (max_len is not None and length > max_len) or length + trailer > len(data) - pos - width:
            return None
        pos += width + length + trailer
        ends.append(pos)
    return ends


def _encode(lens: list[int], texts: list[bytes], width: int, trailer: int) -> bytes:
    fmt = "<Q" if width == 8 else "<i"
    out = []
    for n, t in zip(lens, texts):
        out += [struct.pack(fmt, n & ((1 << 64) - 1) if width == 8 else n), t, b"\x00\x00\x80\xbf"[:trailer]]
    return b"".join(out)


_TEXT = st.one_of(st.binary(max_size=8), st.just(b""), st.binary(max_size=300), st.just(b"\x00" * 9),
                  st.sampled_from([b"\x01" + bytes(7), bytes(8), b"\xe2\x96\x81the", b"\x10" + bytes(3)]))
_BAD_U64 = [(1 << 64) - 1, 1 << 63, 1 << 32, 0xFFFF_FFFF, 70_000, 1 << 20]


@st.composite
def entry_arrays(draw: st.DrawFn) -> tuple[bytes, int, int, int, int | None]:
    """An encoded array (GGUF strings or ggjt entries), maybe with one bad length, cut, or zero-filled."""
    width, trailer, max_len = draw(st.sampled_from([(8, 0, None), (4, 4, MAX_TOKEN_LEN), (4, 0, MAX_TOKEN_LEN)]))
    texts = draw(st.lists(_TEXT, min_size=1, max_size=300))
    lens = [len(t) for t in texts]
    kind = draw(st.sampled_from(["clean", "length", "cut", "zeros", "past_end"]))
    if kind == "length":  # one bad length: huge, negative, or off by a little
        i = draw(st.integers(0, len(lens) - 1))
        bad = _BAD_U64 if width == 8 else [-1, -8, MAX_TOKEN_LEN + 1, 0x7FFFFFFF]
        lens[i] = draw(st.sampled_from([*bad, lens[i] + 1, max(lens[i] - 1, 0)]))
    data = _encode(lens, texts, width, trailer) + draw(st.binary(max_size=64))  # what follows the array
    if kind == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "zeros":  # a zero-filled region (a hole in a sparse file) over part or all of it
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, len(data)))
        data = data[:a] + bytes(b - a) + data[b:]
    elif kind == "past_end":  # the last length points past the end of the buffer
        lens[-1] = len(data) + draw(st.integers(0, 100))
        data = _encode(lens, texts, width, trailer)
    n = len(texts) + draw(st.sampled_from([0, 0, 0, 1, 50]))  # more elements than encoded, sometimes
    return data, n, width, trailer, max_len


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=entry_arrays(), chunk=st.sampled_from([4, 5, 8, 9, 16, 33, 64, 256, 4096, 65472]))
def test_walk_entries_ends_where_the_checked_walk_ends(case, chunk):
    data, n, width, trailer, max_len = case
    want = _reference_ends(data, n, width, trailer, max_len)
    got = layout.walk_entries(memoryview(data), n, width, trailer, max_len, with_ends=True, chunk=chunk,
                              min_per_chunk=1)
    if got is not None:  # None only hands over to the checked walk; an answer must be the right one
        assert want is not None
        end, ends = got
        assert end == want[-1] and ends.dtype == np.int64 and ends.tolist() == want
    plain = layout.walk_entries(memoryview(data), n, width, trailer, max_len, chunk=chunk, min_per_chunk=1)
    assert (plain is None) == (got is None) and (got is None or plain == (got[0], None))


def test_walk_entries_decides_a_llama_like_string_array():
    texts = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    texts += [f"\u2581w{i}".encode() for i in range(32000 - len(texts))]
    data = _encode([len(t) for t in texts], texts, 8, 0) + struct.pack("<Q", 21) + b"tokenizer.ggml.scores"
    want = _reference_ends(data, 32000, 8, 0, None)
    for chunk in (layout.VOCAB_CHUNK, 1000):
        end, ends = layout.walk_entries(memoryview(data), 32000, 8, 0, None, with_ends=True, chunk=chunk,
                                        min_per_chunk=1)
        assert ends.tolist() == want and end == want[-1] == len(data) - 29
    # the ggjt shape of the same machinery, with its scores
    ggjt = _encode([len(t) for t in texts], texts, 4, 4)
    end, ends = layout.walk_entries(memoryview(ggjt), 32000, 4, 4, MAX_TOKEN_LEN, with_ends=True)
    assert ends.tolist() == _reference_ends(ggjt, 32000, 4, 4, MAX_TOKEN_LEN) and end == len(ggjt)


# ---------------------------------------------------------------- whole GGUF string arrays


def _reference_strings(data: bytes, count: int):
    """The checked decoder, element by element: the strings and the end, or the error's one line."""
    buf, pos, out = memoryview(data), 0, []
    try:
        for i in range(count):
            s, pos = gguf._string(buf, pos, f"tokens[{i}]")
            out.append(s)
    except FormatError as e:
        return "error", str(e)
    return "ok", (out, pos)


def _fast_strings(data: bytes, count: int):
    try:
        strings, pos = gguf._strings(memoryview(data), 0, count, "tokens")
    except FormatError as e:
        return "error", str(e)
    return "ok", (strings.tolist(), pos)


_PIECES = [b"\xe2\x96\x81the", b"a", b"", b"<0x0A>", b"\xc3\xa9t\xc3\xa9", b"\xf0\x9f\x98\x80", b"x" * 200]


@st.composite
def string_arrays(draw: st.DrawFn) -> tuple[bytes, int]:
    """1,024 or more strings (the fast path's size), then one hostile change."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.sampled_from([1024, 1500, 3000, 9000]))
    pieces = _PIECES[:-1] if draw(st.booleans()) else _PIECES  # all shorter than 128 bytes, or not
    texts = [pieces[k] + str(j).encode() * int(k % 2) for j, k in enumerate(rng.integers(0, len(pieces), count))]
    lens = [len(t) for t in texts]
    kind = draw(st.sampled_from(["clean", "length", "cut", "zeros", "utf8", "long", "past_end"]))
    i = draw(st.integers(0, count - 1))
    if kind == "length":
        lens[i] = draw(st.sampled_from([*_BAD_U64, lens[i] + 1, max(lens[i] - 1, 0), lens[i] + 8]))
    elif kind == "utf8":  # a continuation byte, a cut character or a surrogate
        texts[i] = draw(st.sampled_from([b"\x80", b"ab\xe2\x96", b"\xed\xa0\x80", b"\xff"])) + texts[i]
        lens[i] = len(texts[i])
    elif kind == "long":  # longer than a chunk: the fast walk hands over
        texts[i] = b"y" * 70_000
        lens[i] = 70_000
    elif kind == "past_end":
        lens[-1] += draw(st.integers(1, 100))
    data = _encode(lens, texts, 8, 0) + draw(st.sampled_from([b"", struct.pack("<Q", 5) + b"next."]))
    if kind == "cut":
        data = data[: draw(st.integers(count * 8, len(data)))]  # the caller checked count * 8 fits
    elif kind == "zeros":
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, len(data)))
        data = data[:a] + bytes(b - a) + data[b:]
    return data, count


@settings(max_examples=max(EXAMPLES // 3, 30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=string_arrays())
def test_string_array_decodes_like_the_checked_decoder(case):
    data, count = case
    assert _fast_strings(data, count) == _reference_strings(data, count)


def test_zero_filled_array_is_empty_strings_and_a_short_one_is_named():
    assert _fast_strings(bytes(8 * 2000), 2000) == ("ok", ([""] * 2000, 16000))
    got = _fast_strings(bytes(8 * 1999 + 7), 2000)
    assert got == _reference_strings(bytes(8 * 1999 + 7), 2000) and "tokens[1999] length" in got[1]


# ---------------------------------------------------------------- the tensor-info loop


def _reference_decode(data: bytes):
    """decode_gguf with the tensor infos read one checked `_tensor_info` at a time, as before issue 12."""
    original = gguf._tensor_infos

    def checked(buf, pos, n_tensors, alignment):
        raw, seen = [], set()
        for i in range(n_tensors):
            info, pos = gguf._tensor_info(buf, pos, i, alignment)
            if info[0] in seen:
                raise gguf.BadLayout(f"duplicate tensor name {gguf.shown(info[0])}", offset=info[5],
                                     field=f"tensor[{i}].name")
            seen.add(info[0])
            raw.append(info)
        return raw, pos

    gguf._tensor_infos = checked
    try:
        return _outcome(data)
    finally:
        gguf._tensor_infos = original


def _outcome(data: bytes):
    try:
        index = gguf.decode_gguf(data, path="m.gguf")
    except FormatError as e:
        return "error", str(e)
    return "ok", ([tuple(t) for t in index.tensors], index.infos_end, index.data_start)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=fz.mutants())
def test_tensor_info_loop_decides_like_the_checked_decoder(data):
    assert _outcome(data) == _reference_decode(data)


def test_short_strings_keep_their_ends_for_first_use():
    texts = [f"\u2581p{i}".encode() for i in range(3000)]
    data = _encode([len(t) for t in texts], texts, 8, 0) + struct.pack("<Q", 3) + b"key"
    strings, end = gguf._strings(memoryview(data), 0, 3000, "tokens")
    assert strings._known_ends is None and len(strings) == 3000 and end == len(data) - 11  # open kept only bytes
    assert strings[2999] == "\u2581p2999" and strings._ends.tolist() == _reference_ends(data, 3000, 8, 0, None)
    assert strings.tolist() == [t.decode() for t in texts]
    bad = bytearray(data)
    bad[8 * 2002 + sum(map(len, texts[:2001]))] = 0xFF  # first byte of string 2001
    assert _fast_strings(bytes(bad), 3000) == _reference_strings(bytes(bad), 3000)
    assert "tokens[2001]" in _fast_strings(bytes(bad), 3000)[1]
