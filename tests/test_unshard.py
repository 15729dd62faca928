"""The unsharding engine: every part's bytes land where np.concatenate says, by every path it takes.

Sources are raw files holding each part's tensor bytes back to back; the expected output is
np.concatenate of the parts along the split axis, read back from the written file at the planned
offsets with plain numpy (not our reader). Casts are compared with torch, the reference for
what a .pth tensor's `.to(dtype)` gives.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import split_shards
from ggmlfmt import FileVersion, GGMLType, TensorInfo
from ggmlfmt.layout import plan
from ggmlfmt.blocks.floats import bf16_to_f16, bf16_to_f32, f16_to_f32, f32_to_f16
from ggmlfmt.unshard import Piece, Source, write_tensors
from ggmlfmt.writer import FileWriter
from helpers import tiny_header

HP, VOCAB = tiny_header(n_embd=8, n_mult=4, n_rot=8)
# name -> (full PyTorch shape, split axis); shapes divide into 1, 2 and 4 parts
TENSORS = {"rows.weight": ((8, 12), 0), "cols.weight": ((6, 16), 1), "norm.weight": ((12,), None)}


def _write_sources(tmp: Path, parts: dict[str, list[np.ndarray]], n: int) -> tuple[list[int], dict]:
    """One raw file per part (its tensors back to back, at odd offsets); returns fds and name -> offsets."""
    fds, offsets = [], {name: [] for name in parts}
    for k in range(n):
        path = tmp / f"part{k}.raw"
        with open(path, "wb") as f:
            f.write(b"x" * 3)  # nothing is aligned: offsets are arbitrary
            for name, pieces in parts.items():
                offsets[name].append(f.tell())
                f.write(pieces[k].tobytes())
        fds.append(os.open(path, os.O_RDONLY))
    return fds, offsets


def _run(tmp: Path, n: int, out_type: GGMLType, chunk_bytes: int, in_dtype: str = "<f2",
         convert=None) -> tuple[dict[str, np.ndarray], Path, dict]:
    rng = np.random.default_rng(n)
    full = {name: rng.standard_normal(shape).astype(in_dtype) for name, (shape, _) in TENSORS.items()}
    parts = {name: split_shards(a, n, TENSORS[name][1]) for name, a in full.items()}
    fds, offsets = _write_sources(tmp, parts, n)
    specs = [TensorInfo.from_shape(name, out_type, a.shape) for name, a in full.items()]
    layout = plan(FileVersion.GGJT_V1, HP, VOCAB, specs)
    out = tmp / "out.bin"
    try:
        maps = [np.memmap(tmp / f"part{k}.raw", dtype=np.uint8, mode="r") for k in range(n)]
        sources = []
        for t in layout.tensors:
            pieces = []
            for k in range(n):
                p = parts[t.name][k]
                rows = p.reshape(1, -1) if p.ndim == 1 else p
                view = maps[k][offsets[t.name][k] : offsets[t.name][k] + p.nbytes].view(in_dtype).reshape(rows.shape)
                pieces.append(Piece(fds[k], offsets[t.name][k], view))
            sources.append(Source(t, TENSORS[t.name][1], pieces, convert))
        with FileWriter(out, layout) as w:
            write_tensors(w, sources, chunk_bytes=chunk_bytes)
    finally:
        for fd in fds:
            os.close(fd)
    return full, out, layout.by_name()


def _read_back(out: Path, info, dtype: str) -> np.ndarray:
    raw = out.read_bytes()[info.offset : info.offset + info.nbytes]
    return np.frombuffer(raw, dtype=dtype).reshape(info.shape)


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("chunk_bytes", [1, 20, 1 << 20])  # rows longer than the buffer, ragged chunks, one chunk
def test_parts_land_where_concatenate_says(tmp_path, n, chunk_bytes):
    full, out, infos = _run(tmp_path, n, GGMLType.F16, chunk_bytes)
    for name, a in full.items():
        np.testing.assert_array_equal(_read_back(out, infos[name], "<f2"), a)


def test_without_copy_file_range_the_bytes_are_the_same(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "copy_file_range", raising=False)  # macOS, Windows
    full, out, infos = _run(tmp_path, 2, GGMLType.F16, 1 << 20)
    for name, a in full.items():
        np.testing.assert_array_equal(_read_back(out, infos[name], "<f2"), a)


def test_a_filesystem_that_refuses_copy_file_range_falls_back(tmp_path, monkeypatch):
    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    full, out, infos = _run(tmp_path, 2, GGMLType.F16, 1 << 20)
    assert calls  # the fast path was tried
    for name, a in full.items():
        np.testing.assert_array_equal(_read_back(out, infos[name], "<f2"), a)


def test_a_real_io_error_during_copy_is_not_swallowed(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "copy_file_range", fail)
    with pytest.raises(OSError, match="Input/output"):
        _run(tmp_path, 2, GGMLType.F16, 1 << 20)
    assert not (tmp_path / "out.bin").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_write_error_on_the_writing_thread_is_raised(tmp_path, monkeypatch):
    real, failed = os.pwrite, []

    def pwrite(fd, data, offset):
        if threading.current_thread() is not threading.main_thread():  # the engine's helper thread
            failed.append(offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(OSError, match="No space"):
        _run(tmp_path, 2, GGMLType.F32, 20, convert=f16_to_f32)  # cast blocks are written by the helper thread
    assert len(failed) == 1  # the first failed write stopped the conversion
    assert not (tmp_path / "out.bin").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    _run(tmp_path, 1, GGMLType.F16, 1 << 20)  # control: in-kernel copies stay on the main thread and succeed


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("chunk_bytes", [20, 1 << 20])
def test_f16_to_f32_cast_equals_torch(tmp_path, n, chunk_bytes):
    full, out, infos = _run(tmp_path, n, GGMLType.F32, chunk_bytes, convert=f16_to_f32)
    for name, a in full.items():
        expect = torch.from_numpy(a).to(torch.float32).numpy()
        np.testing.assert_array_equal(_read_back(out, infos[name], "<f4"), expect)


def _all_bf16() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint16)


def test_bf16_to_f32_is_exact_for_every_bit_pattern():
    bits = _all_bf16()
    out = np.empty(bits.shape, np.float32)
    bf16_to_f32(bits.reshape(1, -1), out.reshape(1, -1))
    expect = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(out.view(np.uint32), expect.view(np.uint32))


def test_bf16_to_f16_rounds_like_torch_for_every_bit_pattern():
    bits = _all_bf16()
    out = np.empty(bits.shape, np.float16)
    with np.errstate(over="ignore"):
        bf16_to_f16(bits.reshape(1, -1), out.reshape(1, -1))
    expect = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(torch.float16).numpy()
    nan = np.isnan(expect)
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out[~nan].view(np.uint16), expect[~nan].view(np.uint16))
    wide = (bits.astype(np.uint32) << 16).view(np.float32)
    assert (out[~nan].astype(np.float32) != wide[~nan]).sum() > 10_000  # most bf16 values need rounding in f16


def test_a_part_of_the_wrong_shape_is_refused(tmp_path):
    layout = plan(FileVersion.GGJT_V1, HP, VOCAB, [TensorInfo.from_shape("rows.weight", GGMLType.F16, (8, 12))])
    info = layout.tensors[0]
    src = tmp_path / "p.raw"
    src.write_bytes(bytes(4 * 12 * 2))
    fd = os.open(src, os.O_RDONLY)
    try:
        view = np.memmap(src, dtype="<f2", mode="r").reshape(4, 12)
        too_few = Source(info, 0, [Piece(fd, 0, view[:3]), Piece(fd, 0, view[:3])])
        with pytest.raises(ValueError, match="part 0 has shape \\[3, 12\\], expected 4 rows"):
            with FileWriter(tmp_path / "out.bin", layout) as w:
                write_tensors(w, [too_few])
    finally:
        os.close(fd)
    assert not (tmp_path / "out.bin").exists()


def test_a_cast_that_would_overflow_to_infinity_is_refused(tmp_path):
    layout = plan(FileVersion.GGJT_V1, HP, VOCAB, [TensorInfo.from_shape("w.weight", GGMLType.F16, (2, 4))])
    src = tmp_path / "p.raw"
    values = np.array([[1, 2, 3, 4], [5, 6, 7e5, 8]], np.float32)  # 7e5 > 65504, the largest f16
    src.write_bytes(values.tobytes())
    fd = os.open(src, os.O_RDONLY)
    try:
        view = np.memmap(src, dtype="<f4", mode="r").reshape(2, 4)
        with pytest.raises(ValueError, match="'w.weight': a value is beyond the range of F16"):
            with FileWriter(tmp_path / "out.bin", layout) as w:
                write_tensors(w, [Source(layout.tensors[0], None, [Piece(fd, 0, view)], f32_to_f16)])
    finally:
        os.close(fd)
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("convert", [None, f16_to_f32])
@pytest.mark.parametrize("chunk_bytes", [1, 40, 1 << 20])  # a row at a time, ragged blocks, one block
def test_a_row_order_puts_each_source_row_where_it_says(tmp_path, convert, chunk_bytes):
    out_type = GGMLType.F16 if convert is None else GGMLType.F32
    layout = plan(FileVersion.GGJT_V1, HP, VOCAB, [TensorInfo.from_shape("q.weight", out_type, (8, 12))])
    values = np.random.default_rng(7).standard_normal((8, 12)).astype("<f2")
    order = np.array([0, 4, 1, 5, 2, 6, 3, 7])  # rotate-half -> interleaved, as Hugging Face q/k
    src = tmp_path / "p.raw"
    src.write_bytes(b"x" + values.tobytes())
    fd = os.open(src, os.O_RDONLY)
    try:
        view = np.memmap(src, dtype=np.uint8, mode="r")[1:].view("<f2").reshape(8, 12)
        with FileWriter(tmp_path / "out.bin", layout) as w:
            write_tensors(w, [Source(layout.tensors[0], None, [Piece(fd, 1, view)], convert, order=order)],
                          chunk_bytes=chunk_bytes)
    finally:
        os.close(fd)
    got = _read_back(tmp_path / "out.bin", layout.tensors[0], "<f2" if convert is None else "<f4")
    np.testing.assert_array_equal(got, values[order].astype(got.dtype))
    assert not np.array_equal(got, values.astype(got.dtype))  # control: the order changed something


def test_a_row_order_that_is_not_a_permutation_is_refused(tmp_path):
    layout = plan(FileVersion.GGJT_V1, HP, VOCAB, [TensorInfo.from_shape("q.weight", GGMLType.F16, (4, 12))])
    src = tmp_path / "p.raw"
    src.write_bytes(bytes(4 * 12 * 2))
    fd = os.open(src, os.O_RDONLY)
    try:
        view = np.memmap(src, dtype="<f2", mode="r").reshape(4, 12)
        with pytest.raises(ValueError, match="must take each of the 4 rows of one part once"):
            with FileWriter(tmp_path / "out.bin", layout) as w:
                write_tensors(w, [Source(layout.tensors[0], None, [Piece(fd, 0, view)], order=np.array([0, 1, 1, 3]))])
    finally:
        os.close(fd)
    assert not (tmp_path / "out.bin").exists()


def test_the_engine_s_split_rule_is_the_spec_s_on_every_llama_tensor() -> None:
    """ggmlfmt.parts.split_axis against the test-side restatement of docs/format.md §6 (builders.split_axis)."""
    from builders import llama_hparams, llama_shapes
    from builders import split_axis as spec_axis
    from ggmlfmt.parts import split_axis

    shapes = llama_shapes(llama_hparams(n_vocab=32, dim=64, n_mult=32, n_head=2, n_layer=3, ftype=1))
    got = {name: split_axis(name, len(shape)) for name, shape in shapes.items()}
    assert got == {name: spec_axis(name, len(shape)) for name, shape in shapes.items()}
    assert sorted(set(got.values()), key=str) == [0, 1, None]  # all three cases are exercised
