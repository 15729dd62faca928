"""Opening decides exactly what the record-by-record decoder decides.

The reference below is the decoder as it was before issue 12: one `decode_record` per record and a
vocabulary walk that checks every length before using it (written out here). On the fuzz suite's
mutants both must raise the same one-line error, or return the same index. TensorInfo and Vocab keep
the behaviour of the frozen dataclasses they were.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders
import test_fuzz as fz
from ggmlfmt import FormatError, GGMLType, Vocab, layout, load
from ggmlfmt.constants import BLOCK_LAYOUTS
from ggmlfmt.errors import BadLayout, Truncated, shown
from ggmlfmt.layout import (
    Index,
    TensorInfo,
    _token_len_error,
    decode_hparams,
    decode_index,
    decode_record,
    decode_version,
)

MAX_TOKEN_LEN = 65536  # docs/format.md §3: a longer vocabulary entry is corruption (written out, not imported)


def _reference_vocab(buf: memoryview, pos: int, n_vocab: int, with_scores: bool) -> tuple[Vocab, int]:
    """The pre-issue-12 walk: every length checked against the bytes left before it is used; (vocab, end)."""
    score_size = 4 if with_scores else 0  # docs/format.md §3: i32 length, the text, then (not in ggml) an f32 score
    min_entry = 4 + score_size
    room = len(buf) - pos - n_vocab * min_entry
    if room < 0:
        raise Truncated(f"n_vocab {n_vocab} needs at least {n_vocab * min_entry} bytes, {len(buf) - pos} left",
                        offset=pos, field="vocab")
    tokens, scores = [], []
    for i in range(n_vocab):
        (n,) = struct.unpack_from("<i", buf, pos)
        if not 0 <= n <= room or n > MAX_TOKEN_LEN:
            raise _token_len_error(n, room, i, pos, n_vocab - i - 1, (n_vocab - i) * min_entry)
        room -= n
        tokens.append(bytes(buf[pos + 4 : pos + 4 + n]))
        if with_scores:
            scores.append(struct.unpack_from("<f", buf, pos + 4 + n)[0])
        pos += min_entry + n
    return Vocab(tuple(tokens), np.array(scores, np.float32) if with_scores else None), pos


def _reference_index(data: bytes, path: str) -> Index:
    """decode_index as it was: header, checked vocabulary walk, decode_record until the end."""
    buf = memoryview(data)
    try:
        version, header_size = decode_version(buf)
        hparams = decode_hparams(buf, header_size)
        vocab_start = header_size + 28  # the seven i32 hyper-parameters
        vocab, vocab_end = _reference_vocab(buf, vocab_start, hparams.n_vocab, version.has_scores)
        tensors: list[TensorInfo] = []
        seen: dict[str, int] = {}
        pos = vocab_end
        while pos < len(buf):
            info = decode_record(buf, pos, len(tensors), version)
            if info.name in seen:
                raise BadLayout(f"duplicate tensor name {shown(info.name)} (first at offset {seen[info.name]:#x})",
                                offset=info.record_offset, field=f"tensor[{len(tensors)}].name")
            seen[info.name] = info.record_offset
            tensors.append(info)
            pos = info.offset + info.nbytes
    except FormatError as e:
        raise e.with_path(path) from None
    return Index(version, tuple(tensors), len(data), vocab_start, vocab_end, vocab_end, vocab_end,
                 32 if version.aligned else 1, hparams, vocab)


def _outcome(decode, data: bytes):
    try:
        return "ok", decode(data)
    except FormatError as e:
        return "error", str(e)


@settings(max_examples=fz.FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fz.mutants())
def test_fast_open_decides_like_the_record_by_record_decoder(case):
    key, data = case
    got = _outcome(lambda d: decode_index(d, path="m.bin"), data)
    want = _outcome(lambda d: _reference_index(d, "m.bin"), data)
    if want[0] == "error" or got[0] == "error":
        assert got == want
        return
    a, b = got[1], want[1]
    assert (a.version, a.hparams, a.vocab_end, a.file_size, a.header_size) == \
           (b.version, b.hparams, b.vocab_end, b.file_size, b.header_size)
    assert a.vocab == b.vocab and len(a.vocab) == len(b.vocab)
    assert [tuple(t) for t in a.tensors] == [tuple(t) for t in b.tensors]  # block included


def test_every_sample_decodes_like_the_reference():
    for key, sample in fz.SAMPLES.items():
        a, b = decode_index(sample.data), _reference_index(sample.data, "x")
        assert a.vocab == b.vocab and a.tensors == b.tensors and a.vocab_end == b.vocab_end, key
        assert all(x.block is y.block for x, y in zip(a.tensors, b.tensors))


# ---------------------------------------------------------------- TensorInfo keeps the dataclass behaviour


F16 = BLOCK_LAYOUTS[1][GGMLType.F16]


def _info(**over) -> TensorInfo:
    fields = {"name": "w", "type": GGMLType.F16, "ne": (64, 2), "offset": 96, "nbytes": 256, "record_offset": 32,
              "block": F16}
    return TensorInfo(**{**fields, **over})


def test_tensor_info_fields_properties_and_repr():
    t = _info()
    assert (t.name, t.type, t.ne, t.offset, t.nbytes, t.record_offset, t.block) == \
           ("w", GGMLType.F16, (64, 2), 96, 256, 32, F16)
    assert (t.shape, t.view_shape, t.row_bytes, t.n_rows, t.quantized) == ((2, 64), (2, 64), 128, 2, False)
    q = _info(type=GGMLType.Q4_0, block=BLOCK_LAYOUTS[3][GGMLType.Q4_0], nbytes=72)
    assert (q.view_shape, q.row_bytes, q.quantized) == ((2, 2), 36, True)  # 2 blocks of 18 bytes per row
    assert repr(t) == ("TensorInfo(name='w', type=<GGMLType.F16: 1>, ne=(64, 2), offset=96, nbytes=256, "
                       "record_offset=32)")  # the dataclass repr: block is repr=False


def test_tensor_info_equality_hash_immutability_pickle():
    t = _info()
    other_gen = _info(block=BLOCK_LAYOUTS[3][GGMLType.F16])
    assert t == other_gen and hash(t) == hash(other_gen)  # block is compare=False
    assert t != _info(offset=128) and t != _info(name="v")
    assert t != tuple(t) and (t == tuple(t)) is False  # only a TensorInfo equals a TensorInfo
    with pytest.raises(AttributeError):
        t.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        _ = t < other_gen  # type: ignore[operator]  # no order, as with the dataclass
    back = pickle.loads(pickle.dumps(t))
    assert back == t and back.block == t.block and type(back) is TensorInfo


# ---------------------------------------------------------------- Vocab read lazily keeps its behaviour


def _file(tmp_path, fmt: str, version: int | None, vocab):
    hp, _, records = builders.section12_model()
    hp = {**hp, "n_vocab": len(vocab)}
    path = tmp_path / f"m.{fmt}"
    path.write_bytes(builders.build_file(fmt, version, hp, vocab, records))
    return path


VOCAB = [(b" \xe2\x81\x87 ", 0.0), (b"", 0.0), (b"\x00", -1.0), (b"\xff\xfe", -2.5), (b" the", -1e30)]


def test_vocab_read_from_a_file_is_the_vocab_written(tmp_path):
    model = load(_file(tmp_path, "ggjt", 3, VOCAB))
    v = model.vocab
    assert len(v) == 5  # known before the tokens are cut
    assert v.tokens == tuple(t for t, _ in VOCAB) and all(type(t) is bytes for t in v.tokens)
    assert v.scores.dtype == np.float32
    assert v.scores.tobytes() == struct.pack("<5f", *(s for _, s in VOCAB))  # bits, by struct
    assert v.scores is v.scores and v.tokens is v.tokens  # cut once
    eager = Vocab(tuple(t for t, _ in VOCAB), np.array([s for _, s in VOCAB], np.float32))
    assert v == eager and eager == v and v.nbytes(True) == eager.nbytes(True) == 5 * 8 + 5 + 0 + 1 + 2 + 4
    assert repr(v) == repr(eager)
    back = pickle.loads(pickle.dumps(v))
    assert back == v and type(back) is Vocab
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.tokens = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(v)  # an array inside: unhashable, as the frozen dataclass was


def test_ggml_vocab_has_no_scores_and_hashes_like_before(tmp_path):
    v = load(_file(tmp_path, "ggml", None, [(t, None) for t, _ in VOCAB])).vocab
    assert v.scores is None and v.tokens == tuple(t for t, _ in VOCAB)
    eager = Vocab(tuple(t for t, _ in VOCAB))
    assert v == eager and hash(v) == hash(eager) == hash((eager.tokens, None))


def test_vocab_constructor_still_checks_its_arguments():
    with pytest.raises(ValueError, match="2 tokens but 1 scores"):
        Vocab((b"a", b"b"), np.zeros(1, np.float32))


def test_views_are_plain_arrays_over_the_memmap(tmp_path):
    model = load(_file(tmp_path, "ggjt", 3, VOCAB))
    assert isinstance(model.data, np.memmap)
    for name, view in model.tensors.items():
        assert type(view) is np.ndarray and np.shares_memory(view, model.data), name


# ---------------------------------------------------------------- the vocabulary walk


def _entries(draw_lens, texts, scores: bool) -> bytes:
    out = []
    for n, t in zip(draw_lens, texts):
        out += [struct.pack("<i", n), t] + ([b"\x00\x00\x80\xbf"] if scores else [])
    return b"".join(out)


_TEXT = st.one_of(st.binary(max_size=8), st.just(b""), st.binary(max_size=300), st.just(b"\x00" * 5),
                  st.sampled_from([b"\x01\x00\x00\x00", b"\x00\x00\x00\x00", b" w12", b"\xe2\x96\x81the"]))


@st.composite
def vocab_sections(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A vocabulary section (maybe corrupted in one length field, maybe cut) with what follows it."""
    scores = draw(st.booleans())
    texts = draw(st.lists(_TEXT, min_size=1, max_size=300))
    lens = [len(t) for t in texts]
    if draw(st.booleans()):  # one bad length: negative, too long, or off by a little
        i = draw(st.integers(0, len(lens) - 1))
        lens[i] = draw(st.sampled_from([-1, -8, MAX_TOKEN_LEN + 1, 0x7FFFFFFF, lens[i] + 1, max(lens[i] - 1, 0)]))
    data = _entries(lens, texts, scores) + draw(st.binary(max_size=64))  # the records after it
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data, len(texts), 4 + 4 * scores


@settings(max_examples=int(os.environ.get("OPEN_FAST_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=vocab_sections())
def test_vocabulary_walk_ends_where_the_checked_walk_ends(case):
    data, n, min_entry = case
    body = memoryview(data)
    got = _outcome(lambda b: layout.decode_vocab(b, 0, n, min_entry == 8), body)
    want = _outcome(lambda b: _reference_vocab(b, 0, n, min_entry == 8), body)
    assert got[0] == want[0] and (got[0] == "error" or (got[1][1] == want[1][1] and got[1][0] == want[1][0]))
    if got[0] == "error":
        assert got == want


def test_walk_decides_a_llama_like_vocabulary():
    texts = [" \u2047 ".encode(), b"", b""] + [bytes([i]) for i in range(256)]
    texts += [f"\u2581w{i}".encode() for i in range(32000 - len(texts))]
    data = _entries([len(t) for t in texts], texts, True) + b"\x02\x00\x00\x00" + bytes(60)
    end = len(data) - 64
    v, got_end = layout.decode_vocab(memoryview(data), 0, 32000, True)
    assert got_end == end
    assert v.tokens == tuple(texts) and len(v) == 32000 and float(v.scores[0]) == -1.0
