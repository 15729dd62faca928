"""convert.pth against torch: every tensor of every torch.save fixture, bit for bit; the casts; the writer; zip64.

The reference is always torch (torch.save makes the fixtures, torch.load(weights_only=True) says what
they hold, Tensor.to says what a cast gives) or struct-level decoding written here.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from builders import split_shards
from convert.pth import (
    PthTensor, open_checkpoint, parse_checkpoint,
)
from pthwrite import BF16, f32_to_bf16, save_checkpoint
from ggmlfmt import FormatError, GGMLType
from helpers import run_with_unimportable
from ggmlfmt.blocks.floats import CASTS, bf16_to_f16, bf16_to_f32, f32_to_f16

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def torch_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_as_torch(path: Path) -> dict[str, PthTensor]:
    """Every tensor convert.pth reads from `path` equals torch.load(weights_only=True)'s: names, order, dtype,
    shape, and bytes (through the view and through the absolute offset, read back with plain file I/O)."""
    expected = torch.load(path, map_location="cpu", weights_only=True)
    raw = path.read_bytes()
    with open_checkpoint(path) as ck:
        assert list(ck.tensors) == list(expected)
        for name, t in expected.items():
            info, arr = ck.tensors[name], ck.array(name)
            assert info.dtype == str(t.dtype).removeprefix("torch.")
            assert arr.shape == info.shape == tuple(t.shape)
            assert not arr.flags.writeable
            assert arr.tobytes() == torch_bytes(t), name
            assert raw[info.offset : info.offset + info.nbytes] == torch_bytes(t), name
        return dict(ck.tensors)


def _random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
@pytest.mark.parametrize("container", [dict, collections.OrderedDict])
def test_fixture_of_many_shapes(tmp_path: Path, dtype: str, container: type) -> None:
    td = TORCH_DTYPES[dtype]
    shapes = [(), (1,), (7,), (0,), (3, 0), (2, 3), (4, 5, 6), (1, 1, 1, 9), (64, 64)]
    state = container((f"t{k}", _random(s, td, k)) for k, s in enumerate(shapes))
    torch.save(state, tmp_path / "m.pth")
    assert_same_as_torch(tmp_path / "m.pth")


def test_mixed_dtypes_and_views_sharing_one_storage(tmp_path: Path) -> None:
    big = _random((10, 8), torch.float16, 1)
    state = {"whole": big, "row3": big[3], "rows2to5": big[2:5], "flat17": big.view(-1)[17:40],
             "empty_at_end": big.view(-1)[80:], "f32": _random((5,), torch.float32, 2),
             "bf16": _random((3, 4), torch.bfloat16, 3), "again": big}
    torch.save(state, tmp_path / "m.pth")
    got = assert_same_as_torch(tmp_path / "m.pth")
    assert got["row3"].offset == got["whole"].offset + 3 * 8 * 2  # one storage record, offsets into it
    assert got["again"] == PthTensor("again", "float16", (10, 8), got["whole"].offset, 160)
    with zipfile.ZipFile(tmp_path / "m.pth") as z:  # torch wrote one record for the shared storage
        assert len([n for n in z.namelist() if "/data/" in n]) == 3


def test_module_state_dict_with_metadata(tmp_path: Path) -> None:
    """model.state_dict() is an OrderedDict with a _metadata attribute: pickled as BUILD, which we accept."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).half()
    torch.save(model.state_dict(), tmp_path / "m.pth")
    with zipfile.ZipFile(tmp_path / "m.pth") as z:
        assert b"_metadata" in z.read("m/data.pkl")
    assert list(assert_same_as_torch(tmp_path / "m.pth")) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_non_contiguous_views_are_refused(tmp_path: Path) -> None:
    big = _random((4, 6), torch.float32, 0)
    torch.save({"ok": big, "cols": big[:, 1:3]}, tmp_path / "m.pth")
    with pytest.raises(FormatError, match=r"m\.pth: tensor 'cols': stride \[6, 1\] for size \[4, 2\] is not "
                                          r"contiguous"):
        open_checkpoint(tmp_path / "m.pth")
    torch.save({"t": big.t()}, tmp_path / "t.pth")
    with pytest.raises(FormatError, match="not contiguous"):
        open_checkpoint(tmp_path / "t.pth")


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    out = {}
    for k in range(draw(st.integers(0, 6))):
        dtype = TORCH_DTYPES[draw(st.sampled_from(sorted(TORCH_DTYPES)))]
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
        t = _random(shape, dtype, k)
        if draw(st.booleans()) and t.numel() > 1:  # a view into a larger storage
            start = draw(st.integers(0, t.numel() - 1))
            t = t.reshape(-1)[start:]
        out[f"layers.{k}.w"] = t
    return out


@given(state=state_dicts())
def test_property_any_state_dict_reads_as_torch_loads_it(tmp_path_factory, state) -> None:
    path = tmp_path_factory.mktemp("p") / "c.pth"
    torch.save(state, path)
    assert_same_as_torch(path)


@given(dtype=st.sampled_from(sorted(TORCH_DTYPES)), n_shards=st.integers(1, 4), rows=st.integers(0, 3),
       cols=st.integers(1, 3), axis=st.sampled_from([0, 1, None]), out=st.sampled_from(["<f2", "<f4"]))
def test_property_shards_concatenate_and_cast_as_torch_does(tmp_path_factory, dtype, n_shards, rows, cols, axis,
                                                             out) -> None:
    """cat_shards equals torch.cat of the shards; the engine's cast of a shard equals torch's Tensor.to."""
    from convert.demo import cat_shards

    d = tmp_path_factory.mktemp("s")
    full = _random((rows * n_shards, cols * n_shards), TORCH_DTYPES[dtype], rows + 7 * cols)
    pieces = split_shards(full, n_shards, axis)
    paths = [d / f"consolidated.{k:02d}.pth" for k in range(n_shards)]
    for path, piece in zip(paths, pieces, strict=True):
        torch.save({"w": piece, "n": full[0].clone() if rows else torch.ones(2)}, path)
    want = full.float() if axis is not None else pieces[0].float()
    assert np.array_equal(cat_shards(paths, {"w": axis})["w"].astype(np.float32), want.numpy())
    target = torch.float16 if out == "<f2" else torch.float32
    with open_checkpoint(paths[-1]) as ck:
        got = ck.array("w")
        fill = CASTS.get((ck.tensors["w"].dtype, GGMLType.F16 if out == "<f2" else GGMLType.F32))
        if fill is not None:
            got = fill(got, np.empty(got.shape, out))
        assert got.tobytes() == torch_bytes(pieces[-1].to(target))


# ---------------------------------------------------------------- casts, against torch


def _bits_to_torch_bf16(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)


@np.errstate(over="ignore")  # finite values beyond f16 become inf, as in torch (the engine refuses them)
def test_bf16_casts_of_every_bit_pattern_equal_torch() -> None:
    bits = np.arange(1 << 16, dtype=np.uint16)
    t = _bits_to_torch_bf16(bits)
    want32 = t.float().numpy().view(np.uint32)
    assert np.array_equal(bf16_to_f32(bits).view(np.uint32), want32)
    want16 = t.to(torch.float16).view(torch.int16).numpy().view(np.uint16)  # incl. NaNs, infinities, subnormals
    assert np.array_equal(bf16_to_f16(bits).view(np.uint16), want16)
    out = np.empty((256, 256), np.float16)
    bf16_to_f16(bits.reshape(256, 256), out)
    assert np.array_equal(out.view(np.uint16).reshape(-1), want16)


@np.errstate(over="ignore")
def test_f32_casts_equal_torch() -> None:
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    bits[:8] = [0x7F800001, 0xFF800001, 0x7FC00000, 0x7F800000, 0x38000000, 0x33800000, 0x477FF000, 0x477FEFFF]
    f = bits.view(np.float32)
    t = torch.from_numpy(f.copy())
    assert np.array_equal(f32_to_f16(f).view(np.uint16), t.to(torch.float16).view(torch.int16).numpy().view(np.uint16))
    numbers = ~np.isnan(f)  # torch's NaN differs between its scalar (0x7fc0) and vector (0xffff) paths
    want = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(f32_to_bf16(f)[numbers], want[numbers])
    assert (f32_to_bf16(f)[~numbers] == 0x7FC0).all()


# ---------------------------------------------------------------- the writer, read back by torch


@pytest.mark.parametrize("zip64_threshold", [0xFFFFFFFF, 0, 1000])
def test_save_checkpoint_reads_back_in_torch_exactly(tmp_path: Path, zip64_threshold: int) -> None:
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float16), "empty": np.zeros((0, 4), np.float32),
               "scalar": np.array(2.5, np.float32), "b": BF16(f32_to_bf16(rng.standard_normal(7).astype(np.float32))),
               "big": rng.standard_normal(300).astype(np.float32), "tail": np.arange(9, dtype=">f4")}
    path = tmp_path / "consolidated.00.pth"
    save_checkpoint(path, tensors, zip64_threshold=zip64_threshold)
    for mmap in (False, True):
        got = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        assert list(got) == list(tensors)
        for name, a in tensors.items():
            want = a.bits.tobytes() if isinstance(a, BF16) else a.astype(a.dtype.newbyteorder("<")).tobytes()
            assert torch_bytes(got[name]) == want, name
            assert tuple(got[name].shape) == (a.bits if isinstance(a, BF16) else a).shape
        assert got["b"].dtype == torch.bfloat16 and got["tail"].dtype == torch.float32
    assert_same_as_torch(path)
    with zipfile.ZipFile(path) as z:
        assert z.namelist()[0] == "consolidated.00/data.pkl" and z.testzip() is None  # CRCs right
        assert [n.split("/", 1)[1] for n in z.namelist()][-2:] == ["version", ".data/serialization_id"]
    data = path.read_bytes()  # every record's data 64-byte aligned, as torch.save does it
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0


def test_save_checkpoint_refuses_other_dtypes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tensor 'i': expected float16 or float32"):
        save_checkpoint(tmp_path / "x.pth", {"i": np.zeros(3, np.int32)})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- zip records, built here with struct


def zip_bytes(records: list[tuple[str, bytes]], *, zip64: bool = False, descriptor: bool = False,
              flags: int = 0, method: int = 0, central_offsets: dict[str, int] | None = None) -> bytes:
    """A zip written field by field: zip64 puts every size and offset in zip64 extra fields."""
    out, central = bytearray(), bytearray()
    for name, data in records:
        raw, offset, crc = name.encode(), len(out), zlib.crc32(data)
        flag = flags | (0x08 if descriptor else 0)
        small = 0xFFFFFFFF if zip64 else len(data)
        local_sizes = (0, 0, 0) if descriptor and not zip64 else (crc if not descriptor else 0, small, small)
        lextra = struct.pack("<HHQQ", 1, 16, 0 if descriptor else len(data), 0 if descriptor else len(data)) \
            if zip64 else b""
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, flag, method, 0, 0, *local_sizes, len(raw), len(lextra))
        out += raw + lextra + data
        if descriptor:
            out += b"PK\x07\x08" + struct.pack("<IQQ" if zip64 else "<III", crc, len(data), len(data))
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset) if zip64 else b""
        at = (central_offsets or {}).get(name, offset)
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, flag, method, 0, 0, crc, small, small,
                               len(raw), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF if zip64 else at) + raw + cextra
    cd_offset = len(out)
    out += central
    n = len(records)
    if zip64:
        eocd64 = len(out)
        out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(central), cd_offset)
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64, 1)
        out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(central), cd_offset, 0)
    return bytes(out)


def torch_records(tmp_path: Path, state: dict[str, torch.Tensor]) -> list[tuple[str, bytes]]:
    torch.save(state, tmp_path / "src.pth")
    with zipfile.ZipFile(tmp_path / "src.pth") as z:
        return [(n, z.read(n)) for n in z.namelist()]


STATE = {"w": torch.arange(6, dtype=torch.float16).reshape(2, 3), "n": torch.ones(3)}


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("descriptor", [False, True])
def test_hand_built_zips_read_like_torch(tmp_path: Path, zip64: bool, descriptor: bool) -> None:
    path = tmp_path / "h.pth"
    path.write_bytes(zip_bytes(torch_records(tmp_path, STATE), zip64=zip64, descriptor=descriptor))
    with zipfile.ZipFile(path) as z:  # the stdlib agrees it is a valid zip
        assert z.testzip() is None
    assert_same_as_torch(path)


def _refused(data: bytes, pattern: str) -> None:
    with pytest.raises(FormatError, match=pattern) as e:
        parse_checkpoint(memoryview(data))
    assert "\n" not in str(e.value) and type(e.value) is not FormatError  # one line, and a kind (BadValue, ...)


def test_duplicate_second_and_missing_pickles(tmp_path: Path) -> None:
    records = torch_records(tmp_path, STATE)
    _refused(zip_bytes(records + [records[-1]]), r"record name 'src/\.data/serialization_id' appears twice")
    _refused(zip_bytes(records + [("other/data.pkl", records[0][1])]), "expected one data.pkl record, found 2")
    _refused(zip_bytes(records[1:]), "expected one data.pkl record, found 0")


def test_overlapping_members(tmp_path: Path) -> None:
    records = torch_records(tmp_path, STATE)
    _refused(zip_bytes(records, central_offsets={records[1][0]: 0}), r"offset 0x0: local header: record "
                                                                     r"'src/.*' starts inside the previous record")


def test_a_central_directory_above_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """zipfile reads the directory in one piece and makes an object per entry: a directory claimed larger
    than MAX_DIRECTORY_BYTES (4 MiB) is refused before that read; the control, the same file with the true
    size, parses."""
    import tracemalloc

    records = torch_records(tmp_path, STATE) + [("src/padding", bytes(5 << 20))]
    data = bytearray(zip_bytes(records))
    eocd = data.rindex(b"PK\x05\x06")
    assert parse_checkpoint(memoryview(bytes(data)))  # the control
    cd_size, cd_offset = struct.unpack_from("<II", data, eocd + 12)
    struct.pack_into("<II", data, eocd + 12, cd_size + cd_offset, 0)  # the whole file before it, 5 MiB and more
    tracemalloc.start()
    try:
        _refused(bytes(data), rf"offset 0x0: central directory: {cd_size + cd_offset:,} bytes from its end record, "
                              r"more than 4,194,304")
        assert tracemalloc.get_traced_memory()[1] < 2 * len(data) + (1 << 20)  # the test's own copy, no more
    finally:
        tracemalloc.stop()


def test_encrypted_and_compressed_records(tmp_path: Path) -> None:
    records = torch_records(tmp_path, STATE)
    _refused(zip_bytes(records, flags=1), r"record 'src/data.pkl': record is encrypted")
    _refused(zip_bytes(records, method=8), r"record 'src/data.pkl': record is compressed \(method 8")


def test_legacy_and_bare_pickles(tmp_path: Path) -> None:
    torch.save(STATE, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match=r"old\.pth: offset 0x0: magic: legacy \(pre-1\.6\) torch\.save format"):
        open_checkpoint(tmp_path / "old.pth")
    _refused(pickle.dumps({"a": 1}, protocol=2) + bytes(30), "a bare pickle, not a zip-format PyTorch checkpoint")


def _with_pickle(tmp_path: Path, pkl: bytes) -> bytes:
    records = torch_records(tmp_path, STATE)
    return zip_bytes([(records[0][0], pkl), *records[1:]])


def _torch_pickle(tmp_path: Path) -> bytes:
    return torch_records(tmp_path, STATE)[0][1]


def test_build_on_a_stand_in_is_refused(tmp_path: Path) -> None:
    # BUILD on the storage class: would rewrite the dtype the tensors of that class get
    pkl = b"\x80\x02ctorch\nHalfStorage\n(X\x07\x00\x00\x00float32tb."
    _refused(_with_pickle(tmp_path, pkl), "malformed pickle: UnpicklingError: BUILD on StorageType")
    pkl = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}(X\x08\x00\x00\x00__code__K\x01ub."
    _refused(_with_pickle(tmp_path, pkl), "BUILD on Global")


@pytest.mark.parametrize("pkl, pattern", [
    (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.", "pickle opcode FRAME at byte 2"),
    (b"\x80\x02cos\nsystem\n.", r"global os\.system is not allowed"),
    (b"\x80\x02}r\xff\xff\xff\x7f.", "memo index 2147483647 at byte 3"),  # would allocate 16 GiB in _pickle
    (b"\x80\x02", "malformed pickle"),
    (b"\x80\x02]\x94.", "pickle opcode EMPTY_LIST"),
    (b"\x80\x02(X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ"
     b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ\x86.",
     "storage '0' is referred to as float16 x 1 and as float32 x 1"),
    (b"\x80\x02}X\x01\x00\x00\x00aK\x01s.", "tensor 'a': expected a tensor, found int"),
    (b"\x80\x02K\x01.", "expected a state dict"),
])
def test_pickles_we_refuse(tmp_path: Path, pkl: bytes, pattern: str) -> None:
    _refused(_with_pickle(tmp_path, pkl), pattern)


def test_pickle_crc_is_checked(tmp_path: Path) -> None:
    data = bytearray(zip_bytes(torch_records(tmp_path, STATE)))
    at = data.index(b"collections\nOrderedDict")
    data[at] = ord("C")
    _refused(bytes(data), r"record 'src/data.pkl': CRC-32 0x[0-9a-f]+ differs")


def test_big_endian_byteorder_is_refused(tmp_path: Path) -> None:
    records = [(n, b"big" if n.endswith("/byteorder") else d) for n, d in torch_records(tmp_path, STATE)]
    _refused(zip_bytes(records), r"record 'src/byteorder': expected b'little', found b'big'")


# ---------------------------------------------------------------- convert-model with torch unimportable

@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_convert_model_runs_with_torch_unimportable(tmp_path: Path, dtype: str) -> None:
    from meta import build

    ck = build(tmp_path, 2, dtype=dtype)
    ref = tmp_path / "reference.bin"
    from convert import convert_checkpoint

    convert_checkpoint(ck.model_dir, ref)
    out = tmp_path / "out.bin"
    proc = run_with_unimportable("torch", "convert", [str(ck.model_dir), "--outfile", str(out), "--quiet"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "rc=0 tried=[] loaded=[]", proc.stdout
    assert out.read_bytes() == ref.read_bytes()


def test_demo_runs_with_torch_unimportable(tmp_path: Path) -> None:
    proc = run_with_unimportable("torch", "convert", ["--demo", str(tmp_path / "demo")])
    assert proc.returncode == 0, proc.stderr
    assert "tensors equal torch.cat of the 2 shards" in proc.stdout
    assert proc.stdout.strip().endswith("rc=0 tried=[] loaded=[]"), proc.stdout


def test_checkpoint_records_stay_small() -> None:
    """PthTensor is the record the integrator's engine keeps per tensor: frozen, slotted."""
    t = PthTensor("x", "float16", (2,), 64, 4)
    with pytest.raises(AttributeError):
        t.offset = 0  # type: ignore[misc]
    assert not hasattr(t, "__dict__") and t.np_dtype == np.dtype("<f2")
