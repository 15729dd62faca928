"""Fuzzing convert.pth: mutated zips and mutated pickles give a FormatError or tensors inside the file, nothing else.

Zip mutants know where every field is (parsed here with struct): sizes, offsets, counts, name and
extra lengths, flags and methods get boundary values; files are cut at record edges; bytes are
flipped, inserted, deleted; records are repeated. Pickle mutants are re-zipped with a correct CRC (so
they reach the unpickler): opcodes, their arguments and hostile snippets (globals that run code,
huge memo indices, BUILD on stand-ins) are spliced in. Every case is bounded in time (hypothesis
deadline) and memory (tracemalloc peak against the input size), and a payload that would touch a
marker file must never run.

`HYPOTHESIS_PROFILE=fuzz` runs the long campaign (docs/safety.md records its result).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies
from convert.pth import parse_checkpoint
from ggmlfmt import FormatError
from pthwrite import BF16, save_checkpoint

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "")
ZIP_EXAMPLES = {"fuzz": 40_000}.get(PROFILE, 200)
PICKLE_EXAMPLES = {"fuzz": 20_000}.get(PROFILE, 100)
MARKER = Path(f"/tmp/ggmlfmt-fuzz-pth-marker-{os.getpid()}")  # a payload that ran would create it


@dataclass(frozen=True)
class Sample:
    data: bytes
    fields: tuple[tuple[int, int], ...]  # (offset, width) of every integer field of the zip records
    edges: tuple[int, ...]  # where records begin and end


def _zip_fields(data: bytes) -> Sample:
    """Every integer field of the local headers, data descriptors, central entries and end records."""
    fields: list[tuple[int, int]] = []
    edges = {0, len(data)}
    eocd = data.rindex(b"PK\x05\x06")
    fields += [(eocd + o, w) for o, w in ((4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2))]
    n, cd_size, cd_offset = struct.unpack_from("<HII", data, eocd + 10)
    if data[eocd - 20 : eocd - 16] == b"PK\x06\x07":
        loc = eocd - 20
        eocd64 = struct.unpack_from("<Q", data, loc + 8)[0]
        fields += [(loc + 4, 4), (loc + 8, 8), (loc + 16, 4)]
        fields += [(eocd64 + o, w) for o, w in ((4, 8), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8), (48, 8))]
        n, cd_size, cd_offset = struct.unpack_from("<QQQ", data, eocd64 + 32)
        edges |= {eocd64, loc}
    pos = cd_offset
    for _ in range(n):
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        local = struct.unpack_from("<I", data, pos + 42)[0]
        if local == 0xFFFFFFFF:  # our zip64 writer marks all three: usize, csize, offset in the extra field
            extra = pos + 46 + name_len
            local = struct.unpack_from("<Q", data, extra + 4 + 16)[0]
            fields += [(extra + 2, 2), (extra + 4, 8), (extra + 12, 8), (extra + 20, 8)]
        fields += [(pos + o, w) for o, w in ((8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (42, 4))]
        lname, lextra = struct.unpack_from("<HH", data, local + 26)
        fields += [(local + o, w) for o, w in ((6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2))]
        if lextra >= 4:
            fields.append((local + 30 + lname + 2, 2))  # first extra field's length
        edges |= {pos, local, local + 30 + lname + lextra}
        pos += 46 + name_len + extra_len + comment_len
    edges |= {cd_offset, pos}
    return Sample(data, tuple(fields), tuple(sorted(edges)))


def _samples() -> dict[str, Sample]:
    tensors = {"tok_embeddings.weight": np.arange(24, dtype=np.float16).reshape(4, 6),
               "norm.weight": np.ones(6, np.float32), "empty": np.zeros((0, 3), np.float16),
               "bf": BF16(np.arange(5, dtype=np.uint16) + 0x3F80)}
    out = {}
    buf = io.BytesIO()
    big = torch.arange(12, dtype=torch.float16)
    torch.save({"w": big.reshape(3, 4), "row": big[4:8], "n": torch.ones(3, dtype=torch.bfloat16)}, buf)
    out["torch"] = _zip_fields(buf.getvalue())
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for key, threshold in (("ours", 0xFFFFFFFF), ("ours-zip64", 0)):
            save_checkpoint(Path(d) / "c.pth", tensors, zip64_threshold=threshold)
            out[key] = _zip_fields((Path(d) / "c.pth").read_bytes())
    return out


SAMPLES = _samples()
INTERESTING = [0, 1, 2, 3, 4, 30, 46, 63, 64, 65, 0x7F, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF,
               1 << 32, 1 << 62, (1 << 64) - 1]


def _set(data: bytes, offset: int, width: int, value: int) -> bytes:
    return data[:offset] + (value % (1 << (8 * width))).to_bytes(width, "little") + data[offset + width :]


@st.composite
def zip_mutants(draw: st.DrawFn) -> tuple[str, bytes]:
    key = draw(st.sampled_from(sorted(SAMPLES)))
    sample = SAMPLES[key]
    data = sample.data
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "field", "field", "nudge", "cut", "bytes", "insert", "delete", "dup"]))
        if kind in ("field", "nudge"):
            offset, width = draw(st.sampled_from(sample.fields))
            if offset + width > len(data):
                continue
            old = int.from_bytes(data[offset : offset + width], "little")
            value = old + draw(st.integers(-70, 70)) if kind == "nudge" else draw(
                st.one_of(st.sampled_from(INTERESTING), st.integers(0, (1 << (8 * width)) - 1)))
            data = _set(data, offset, width, value)
        elif kind == "cut":
            data = data[: draw(st.one_of(st.sampled_from(sample.edges), st.integers(0, len(data))))]
        elif kind in strategies.BLIND_MUTATIONS:
            data = strategies.blind_mutation(draw, data, kind, max_chunk=64)
        elif kind == "dup":  # a record or the directory repeated: duplicate names, overlaps
            a, b = sorted(draw(st.lists(st.sampled_from(sample.edges), min_size=2, max_size=2)))
            pos = draw(st.sampled_from(sample.edges))
            data = data[:pos] + data[a:b] + data[pos:]
    return key, data


def _check(data: bytes, name: str) -> None:
    """parse_checkpoint gives a one-line FormatError, or tensors lying inside `data`; bounded memory; no code runs."""
    try:
        tensors = strategies.decode_or_format_error(lambda: parse_checkpoint(memoryview(data)), len(data),
                                                    what=f"{name}: ")
    finally:
        assert not MARKER.exists(), f"{name}: a payload ran"
    if tensors is None:
        return
    buf = np.frombuffer(data, np.uint8)
    for t in tensors.values():
        assert 0 <= t.offset <= t.offset + t.nbytes <= len(data)
        view = buf[t.offset : t.offset + t.nbytes].view(t.np_dtype).reshape(t.shape)
        assert view.nbytes == t.nbytes


@strategies.capped
@settings(max_examples=ZIP_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(zip_mutants())
def test_mutated_zips_give_format_error_or_tensors_inside_the_file(case: tuple[str, bytes]) -> None:
    _check(case[1], case[0])


# ---------------------------------------------------------------- pickles, re-zipped with a correct CRC

def _records(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(n, z.read(n)) for n in z.namelist()]


RECORDS = {key: _records(s.data) for key, s in SAMPLES.items()}
SNIPPETS = [
    b"cos\nsystem\n(X\x05\x00\x00\x00touch" + b"tR", b"cposix\nsystem\n", b"cbuiltins\neval\n", b"csubprocess\nPopen\n",
    b"ctorch\nHalfStorage\n", b"ctorch\nFloatStorage\n", b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ccollections\nOrderedDict\n", b"r\xff\xff\xff\x7f", b"q\xff", b"h\x00", b"j\xff\xff\x00\x00", b"(", b"t", b")",
    b"R", b"b", b"Q", b"u", b"s", b"}", b"0", b"2", b".", b"N", b"\x88", b"\x89", b"\x85", b"\x86", b"\x87",
    b"\x8a\x08" + (1 << 62).to_bytes(8, "little"), b"\x8a\xff", b"J\xff\xff\xff\xff", b"K\x00", b"M\xff\xff",
    b"X\xff\xff\xff\x7f", b"X\x07\x00\x00\x00storage", b"\x80\x04\x95", b"]", b"c", b"i", b"\x93", b"\x94",
    b"q\x00h\x00\x86" * 40,  # a tuple of two references to the one before, 40 deep: 2**40 leaves (issue 17)
    b"\x8a\x09" + (1 << 64).to_bytes(9, "little"), b"\x8a\x08" + (1 << 61).to_bytes(8, "little"), b"K\x00",
]


def _marker_payload() -> bytes:
    cmd = f"touch {MARKER}".encode()
    return b"cposix\nsystem\n(X" + struct.pack("<I", len(cmd)) + cmd + b"tR"


@st.composite
def pickle_mutants(draw: st.DrawFn) -> tuple[str, bytes]:
    key = draw(st.sampled_from(sorted(RECORDS)))
    records = RECORDS[key]
    pkl = records[0][1]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["snippet", "snippet", "payload", "byte", "int", "cut", "delete", "dup"]))
        pos = draw(st.integers(0, len(pkl)))
        if kind == "snippet":
            pkl = pkl[:pos] + draw(st.sampled_from(SNIPPETS)) + pkl[pos + draw(st.integers(0, 2)) :]
        elif kind == "payload":
            pkl = pkl[:pos] + _marker_payload() + pkl[pos:]
        elif kind == "byte" and pos < len(pkl):
            pkl = pkl[:pos] + bytes([draw(st.integers(0, 255))]) + pkl[pos + 1 :]
        elif kind == "int" and pos + 2 <= len(pkl):  # an argument of BININT1/BININT2 mostly
            pkl = _set(pkl, pos, draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from(INTERESTING)))[: len(pkl)]
        elif kind == "cut":
            pkl = pkl[:pos]
        elif kind == "delete":
            pkl = pkl[:pos] + pkl[pos + draw(st.integers(1, 16)) :]
        elif kind == "dup":
            end = draw(st.integers(pos, len(pkl)))
            pkl = pkl[:end] + pkl[pos:end] + pkl[end:]
    return key, _zipped([(records[0][0], pkl), *records[1:]])


def _zipped(records: list[tuple[str, bytes]]) -> bytes:
    """A stored (uncompressed) zip of these records, by the standard library."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            z.writestr(name, data)
    return out.getvalue()


@strategies.capped
@settings(max_examples=PICKLE_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(pickle_mutants())
def test_mutated_pickles_give_format_error_or_tensors_inside_the_file(case: tuple[str, bytes]) -> None:
    _check(case[1], case[0])


def test_unmutated_samples_parse() -> None:
    for key, sample in SAMPLES.items():
        assert parse_checkpoint(memoryview(sample.data)), key


# ---------------------------------------------------------------- issue 17: sizes and shared values from a pickle


def _u(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _i(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _checkpoint(name: str, size: tuple[int, ...], stride: tuple[int, ...], numel: int, *,
                pid: bytes | None = None, items: bytes | None = None) -> bytes:
    """A zip checkpoint whose data.pkl is hand-written as torch.save writes one FloatStorage tensor (struct only)."""
    ints = lambda xs: b"(" + b"".join(_i(x) for x in xs) + b"t"  # noqa: E731
    pid = pid or b"(" + _u("storage") + b"ctorch\nFloatStorage\n" + _u("0") + _u("cpu") + _i(numel) + b"t"
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"Q" + _i(0) + ints(size) + ints(stride) + b"\x89"
              + b"ccollections\nOrderedDict\n)Rt" + b"R")
    items = _u(name) + tensor if items is None else items
    pkl = b"\x80\x02ccollections\nOrderedDict\n)R(" + items + b"u."
    return _zipped([("archive/data.pkl", pkl), ("archive/byteorder", b"little"), ("archive/data/0", bytes(16))])


def test_a_hand_written_checkpoint_parses():
    """The control of the cases below: the same pickle with a sane size is a 2 x 2 tensor at the record's data."""
    data = _checkpoint("w", (2, 2), (2, 1), 4)
    t = parse_checkpoint(memoryview(data))["w"]
    assert (t.shape, t.nbytes, data[t.offset : t.offset + 16]) == ((2, 2), 16, bytes(16))


@pytest.mark.parametrize("size", [(0, 2**62, 2**62), (0, 2**61), (2**62, 4, 0), (0, 2**60), (0, 2**61 - 1), (3, 0)])
def test_zero_size_tensors_are_refused_when_numpy_could_not_shape_them(size):
    """A zero in the size hides no overflow: the rest times 4 bytes must stay within int64, as numpy requires."""
    data = _checkpoint("w", size, tuple(1 for _ in size), 4)
    if strategies.numpy_can_view(b"", size, 4):
        t = parse_checkpoint(memoryview(data))["w"]
        view = np.frombuffer(data, np.uint8)[t.offset : t.offset + t.nbytes].view("<f4").reshape(t.shape)
        assert view.shape == size and view.size == 0
    else:
        with pytest.raises(FormatError, match=r"tensor 'w': size .* \(zeros skipped\) make \d+ bytes, above 2\*\*63-1"):
            parse_checkpoint(memoryview(data))


DOUBLING = b"q\x00h\x00\x86" * 40  # (x, x), then ((x, x), (x, x)), ...: 2**40 leaves in 200 bytes


def test_a_shared_tuple_as_storage_id_is_named_in_a_short_line():
    """str() of it would build 2**40 leaves (a MemoryError after 41 s at depth 30, before issue 17)."""
    data = _checkpoint("w", (2, 2), (2, 1), 4, pid=_u("a") + DOUBLING)

    def parse() -> None:
        with pytest.raises(FormatError, match="persistent id, found") as e:
            parse_checkpoint(memoryview(data))
        assert len(str(e.value)) < 300 and "\n" not in str(e.value)

    strategies.run_capped(parse, timeout=60)


def test_a_shared_tuple_as_a_dict_key_is_refused_before_it_is_hashed():
    """SETITEM hashes its key, walking all 2**40 leaves (hours); the opcode scan refuses the tuple first."""
    data = _checkpoint("", (), (), 0, items=_u("a") + DOUBLING + b"N")

    def parse() -> None:
        with pytest.raises(FormatError, match="SETITEMS at byte \\d+ uses a tuple as a dict key"):
            parse_checkpoint(memoryview(data))

    strategies.run_capped(parse, timeout=60)


def test_names_are_at_most_4096_characters_and_quoted_short():
    """A longer name could not be written to any output, and every message about it would quote it whole."""
    t = parse_checkpoint(memoryview(_checkpoint("n" * 4096, (2, 2), (2, 1), 4)))["n" * 4096]
    assert t.shape == (2, 2)
    with pytest.raises(FormatError, match="expected a name of at most 4096 characters, found 100000") as e:
        parse_checkpoint(memoryview(_checkpoint("n" * 100_000, (2, 2), (2, 1), 4)))
    assert "tensor 'nnnn" in str(e.value) and "(100000 characters)" in str(e.value) and len(str(e.value)) < 400
    with pytest.raises(FormatError) as e:
        parse_checkpoint(memoryview(_checkpoint("n" * 4096, (2, 2), (2, 9), 4)))  # a stride past the storage
    assert "reach element" in str(e.value) and "(4096 characters)" in str(e.value) and len(str(e.value)) < 400
