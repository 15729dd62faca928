"""Issue 17's hostile files: an alignment that sizes the padding read, dims that overflow behind a zero, empty names.

Each class through the library (the FormatError kind, its field and a short one-line message, the
memory it took) and through the command (`ggmlfmt verify|inspect|load FILE`: exit status 1, exactly
one stderr line, no traceback, run with its address space capped at 1 GiB). Big files are sparse.
Judges that are not ggmlfmt: llama.cpp's dims rule and numpy's own refusal to make a view
(tests/strategies.py), the gguf package's GGUFReader, and struct-built files.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest

import builders
import strategies
from ggmlfmt import GGMLType, TensorInfo, load
from ggmlfmt.constants import BLOCK_LAYOUTS, GGUF_BLOCK_GENERATION, FileVersion
from ggmlfmt.errors import BadLayout, BadValue, CannotWrite, FormatError
from ggmlfmt.gguf import plan_gguf
from ggmlfmt.layout import HParams, Vocab, plan
from ggmlfmt.summary import describe, render
from test_gguf import file_of, gstr, header, info, kv

SPARSE = 256 << 20  # the size of the issue's alignment file; sparse, so it costs no disk
F32, I8, Q8_0, IQ1_S = (int(t) for t in (GGMLType.F32, GGMLType.I8, GGMLType.Q8_0, GGMLType.IQ1_S))
LAYOUTS = BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION]


def sparse(path: Path, head: bytes, size: int = SPARSE, at: dict[int, bytes] | None = None) -> Path:
    """`head`, then holes up to `size` bytes, with the given bytes written at their offsets."""
    with open(path, "wb") as f:
        f.write(head)
        for offset, data in (at or {}).items():
            f.seek(offset)
            f.write(data)
        f.truncate(size)
    return path


def refused(path: Path, cls: type[FormatError]) -> tuple[FormatError, int]:
    """load(path)'s error (of kind cls, one short line naming the file) and the peak traced allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(cls) as info_:
            load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    e = info_.value
    assert str(e).startswith(f"{path}: ") and "\n" not in str(e) and len(str(e)) < len(str(path)) + 400, str(e)
    return e, peak


def align_kv(alignment: int) -> bytes:
    return kv("general.alignment", 4, struct.pack("<I", alignment))


# ---------------------------------------------------------------- 1. an alignment that sizes what is read


@pytest.mark.parametrize("alignment", [2**25, 2**31])
def test_an_alignment_above_the_cap_is_refused_before_the_padding_is_read(tmp_path, alignment):
    """The issue's file: 2**31 in a 256 MiB file with non-zero bytes after the infos (a MemoryError before)."""
    head = header(1, 1) + align_kv(alignment) + info("t", (32,), F32, 0)
    e, peak = refused(sparse(tmp_path / "a.gguf", head + b"\x01" * 64), BadValue)
    assert e.field == "general.alignment" and f"found {alignment}" in str(e)
    assert e.offset == len(header(1, 1)) + 8 + len("general.alignment") + 4  # the value's own offset
    assert peak < 1 << 20


def test_padding_up_to_the_cap_is_checked_in_place_and_quoted_short(tmp_path):
    """2**24 is allowed: its padding (16 MiB here) is read where it lies; one bad byte deep in it is named."""
    head = header(1, 1) + align_kv(2**24) + info("t", (32,), F32, 0)
    bad = 10 << 20  # past the first steps of zeros
    e, peak = refused(sparse(tmp_path / "p.gguf", head, at={bad: b"\x07\x08"}), BadLayout)
    assert (e.offset, e.field) == (bad, "padding after tensor infos")
    assert f"found byte 0x07 at padding byte {bad - len(head)}: 0708" in str(e)
    assert peak < 1 << 20  # the 16 MiB are never copied


def test_the_largest_alignment_reads_as_gguf_py_reads_it(tmp_path):
    """The control: the same file with zero padding loads, and the gguf package puts the data where we do."""
    head = header(1, 1) + align_kv(2**24) + info("t", (32,), F32, 0)
    path = sparse(tmp_path / "ok.gguf", head, at={2**24: np.arange(32, dtype="<f4").tobytes()})
    model = load(path)
    assert model.index.alignment == 2**24 and model.info["t"].offset == 2**24
    np.testing.assert_array_equal(model.tensors["t"], np.arange(32, dtype=np.float32))
    ref = gguf.GGUFReader(path)
    assert ref.alignment == 2**24 and ref.data_offset == 2**24
    np.testing.assert_array_equal(ref.tensors[0].data, model.tensors["t"])
    del model, ref


def test_the_writer_keeps_to_the_cap(tmp_path):
    plan_gguf([], [TensorInfo("t", GGMLType.F32, (32,))], alignment=2**24)
    with pytest.raises(CannotWrite, match="at most 16777216"):
        plan_gguf([], [TensorInfo("t", GGMLType.F32, (32,))], alignment=2**25)


# ---------------------------------------------------------------- 2. an overflow hidden behind a zero

# (ne in ggml order, type code): accepted exactly when llama.cpp's rule holds and numpy can view the tensor
DIMS = [
    ((32, 2**62, 2**62, 0), F32),  # the issue's file: llama.cpp refuses it, numpy cannot view it
    ((0, 2**62, 2**62, 2**62), F32),  # llama.cpp takes a leading zero; numpy still multiplies the rest
    ((2**61, 0), F32),  # 2**61 elements of 4 bytes: 2**63 bytes
    ((2**60, 0), F32),  # 2**62 bytes: fine
    ((2**63 - 1, 0), I8),  # exactly INT64_MAX bytes: fine
    ((2**63 - 1, 0), F32),
    ((32, 0, 2**31, 2**31), Q8_0),  # llama.cpp: the zero ends its product; numpy: 34 bytes x 2**62 blocks
    ((2**60, 16, 0), IQ1_S),  # 2**64 elements (llama.cpp refuses) in 2**56 x 50 bytes (numpy could view it)
    ((256, 2**40, 2**20, 0), IQ1_S),
    ((256, 0, 2**40, 2**16), IQ1_S),  # 2**64 elements but a zero first (llama.cpp takes it), 2**56 x 50 bytes
]


def _judged_ok(ne: tuple[int, ...], code: int) -> bool:
    block = LAYOUTS[GGMLType(code)]
    view_shape = (*reversed(ne[1:]), ne[0] // block.elements)
    return strategies.llama_cpp_dims_ok(ne) and strategies.numpy_can_view(b"", view_shape, block.nbytes)


def test_the_dims_cases_have_both_verdicts():
    """The control: the judges accept some cases and refuse others, each for its own reason."""
    verdicts = [_judged_ok(ne, code) for ne, code in DIMS]
    assert any(verdicts) and not all(verdicts)
    assert strategies.llama_cpp_dims_ok((0, 2**62, 2**62, 2**62)) and not _judged_ok((0, 2**62, 2**62, 2**62), F32)
    assert not strategies.llama_cpp_dims_ok((2**60, 16, 0)) and strategies.numpy_can_view(b"", (0, 16, 2**52), 50)


@pytest.mark.parametrize(("ne", "code"), DIMS)
def test_gguf_dims_are_refused_exactly_when_a_product_passes_int64(tmp_path, ne, code):
    path = tmp_path / "d.gguf"
    path.write_bytes(file_of([], [info("w", ne, code, 0)]))
    if _judged_ok(ne, code):
        model = load(path)
        assert model.tensors["w"].size == 0 and model.info["w"].ne == ne
        return
    e, _ = refused(path, BadValue)
    assert e.field.startswith("tensor 'w'.ne[") and "above 2**63-1" in str(e)
    unit = "elements" if not strategies.llama_cpp_dims_ok(ne) else "bytes"  # llama.cpp's rule is checked first
    assert f" {unit}, above" in str(e)
    d = int(e.field[len("tensor 'w'.ne[") : -1])
    assert e.offset == len(header(1, 0)) + len(gstr(b"w")) + 4 + 8 * d  # the dim where a product first passes


I32_MAX = 2**31 - 1


@pytest.mark.parametrize(("ne", "ok"), [((32, 0, I32_MAX, I32_MAX), False), ((I32_MAX, 0, I32_MAX, 1), False),
                                        ((I32_MAX, 0, 2**30, 1), True), ((0, I32_MAX, I32_MAX, 1), False)])
def test_ggjt_dims_are_checked_alike(tmp_path, ne, ok):
    assert ok == _judged_ok(ne, F32)
    raw = builders.build_file("ggjt", 3, builders.llama_hparams(2, 32, 32, 1, 1, 0), [(b"a", 0.0), (b"b", 0.0)],
                              [("w", F32, ne, b"")], validate=False)
    path = tmp_path / "d.bin"
    path.write_bytes(raw)
    if ok:
        assert load(path).tensors["w"].size == 0
    else:
        e, _ = refused(path, BadValue)
        assert e.field.startswith("tensor 'w'.ne[") and "above 2**63-1" in str(e)


def test_the_writers_refuse_such_dims():
    with pytest.raises(CannotWrite, match=r"'w': ne = \[32, 4611686018427387904, .* above 2\*\*63-1"):
        plan_gguf([], [TensorInfo("w", GGMLType.F32, (32, 2**62, 2**62, 0))])
    hp = HParams(1, 32, 32, 1, 1, 32, 0)
    with pytest.raises(CannotWrite, match="'w': ne = .* above 2\\*\\*63-1"):
        plan(FileVersion.GGJT_V3, hp, Vocab((b"a",), np.zeros(1, np.float32)),
             [TensorInfo("w", GGMLType.F32, (32, 0, I32_MAX, I32_MAX))])
    plan_gguf([], [TensorInfo("w", GGMLType.F32, (2**60, 0))])  # the control: within int64


# ---------------------------------------------------------------- 3. names of 0..4097 bytes


@pytest.mark.parametrize("n", [0, 1, 4096, 4097])
def test_tensor_names_are_1_to_4096_bytes(tmp_path, n):
    name = "n" * n
    path = tmp_path / "n.gguf"
    path.write_bytes(file_of([], [info(name, (32,), F32, 0)], bytes(128)))
    if 1 <= n <= 4096:
        assert list(load(path).info) == [name] == [t.name for t in gguf.GGUFReader(path).tensors]
        return
    e, _ = refused(path, BadValue)
    assert (e.offset, e.field) == (len(header(1, 0)), "tensor[0].name length")
    assert str(e).endswith(f"expected a length 1..4096, found {n}")


# ---------------------------------------------------------------- what the command says, as a user runs it


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))


def run_capped_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # no per-thread BLAS reservations
    return subprocess.run([sys.executable, "-m", "ggmlfmt.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env, preexec_fn=_cap_address_space)


def _hostile_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what its one stderr line must say)."""
    ggjt = builders.build_file("ggjt", 3, builders.llama_hparams(2, 32, 32, 1, 1, 0), [(b"a", 0.0), (b"b", 0.0)],
                               [("w", F32, (32, 0, I32_MAX, I32_MAX), b"")], validate=False)
    (tmp_path / "dims.bin").write_bytes(ggjt)
    (tmp_path / "dims.gguf").write_bytes(file_of([], [info("w", (32, 2**62, 2**62, 0), F32, 0)]))
    (tmp_path / "name.gguf").write_bytes(file_of([], [info("", (32,), F32, 0)], bytes(128)))
    head = header(1, 1) + align_kv(2**31) + info("t", (32,), F32, 0)
    pad = header(1, 1) + align_kv(2**24) + info("t", (32,), F32, 0)
    return {
        "alignment 2**31": (sparse(tmp_path / "align.gguf", head + b"\x01" * 64), "general.alignment: expected"),
        "padding": (sparse(tmp_path / "pad.gguf", pad + b"\x01" * 64), "zero bytes of alignment padding"),
        "dims gguf": (tmp_path / "dims.gguf", "tensor 'w'.ne[1]: ne = [32, 4611686018427387904"),
        "dims ggjt": (tmp_path / "dims.bin", "tensor 'w'.ne[3]: ne = [32, 0, 2147483647, 2147483647]"),
        "empty name": (tmp_path / "name.gguf", "tensor[0].name length: expected a length 1..4096, found 0"),
    }


@pytest.mark.parametrize("command", ["verify", "inspect", "load"])
def test_the_command_answers_each_hostile_file_with_one_line(tmp_path, command):
    for what, (path, says) in _hostile_files(tmp_path).items():
        r = run_capped_cli(command, str(path))
        lines = r.stderr.splitlines()
        assert (r.returncode, r.stdout, len(lines)) == (1, "", 1), (what, r.returncode, r.stderr[-2000:])
        assert lines[0].startswith(f"ggmlfmt: error: {path}: ") and says in lines[0], (what, lines[0])
        assert "Traceback" not in r.stderr and len(lines[0]) < 400, what


def test_the_capped_command_runs_a_good_256_mib_file(tmp_path):
    """The control of the cap: the same sparse size, valid, maps and loads under it."""
    head = header(1, 1) + align_kv(2**24) + info("t", (32,), F32, 0)
    path = sparse(tmp_path / "ok.gguf", head)
    r = run_capped_cli("load", "--touch", str(path))
    assert r.returncode == 0 and r.stdout.startswith("loaded 1 tensors (256.0 MiB)"), r.stderr


# ---------------------------------------------------------------- inspect's output follows the file, not a field


def test_one_long_name_does_not_widen_every_line_of_inspect():
    """Before: the name column was as wide as the longest name, so one 4,096-byte name padded 2,000 lines."""
    infos = [info("n" * 4096, (32,), F32, 0)] + [info(f"t{i}", (32,), F32, 128 * (i + 1)) for i in range(2000)]
    raw = file_of([kv("k" * 4096, 4, bytes(4))] + [kv(f"k{i}", 4, bytes(4)) for i in range(200)], infos,
                  bytes(128 * 2001))
    from ggmlfmt.gguf import decode_gguf

    text = render(describe(decode_gguf(raw)))
    lines = text.splitlines()
    assert len(lines) > 2200
    assert sum(len(line) for line in lines if "n" * 4096 not in line and "k" * 4096 not in line) < 200 * len(lines)
    assert len(text) < 2 * 4096 + 200 * len(lines)


def test_every_format_error_is_a_short_line_whatever_its_caller_quoted() -> None:
    """The root bound: a 4,096-character name quoted with !r in a field or a message still gives a short line."""
    name = "n" * 4096
    err = FormatError(f"shape [1], expected [2] for {name!r}", path="/m/x.pth", field=f"tensor {name!r}")
    text = str(err)
    assert len(text) < 1000 and "\n" not in text and text.startswith("/m/x.pth: tensor 'nnn")
    assert "(4105 characters)" in text and "characters)" in text.split(": ", 2)[2]  # both were cut, and say so
    short = FormatError("shape [1], expected [2]", path="/m/x.pth", field="tensor 'a'")
    assert str(short) == "/m/x.pth: tensor 'a': shape [1], expected [2]"  # control: a normal message is untouched
    assert len(str(CannotWrite("x" * 100_000))) < 1000  # the request family too
