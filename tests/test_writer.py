"""The streaming writer: planned layout, regions in any order, holes, coverage, temp file + rename."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import builders
import strategies
from ggmlfmt import FileVersion, FileWriter, GGMLType, HParams, TensorInfo, Vocab, load, save
from ggmlfmt import writer as writer_module
from ggmlfmt.errors import IncompleteWrite
from ggmlfmt.layout import Plan, plan
from ggmlfmt.writer import remove_stale_temps
from ggmlfmt.writer import Coverage

HP = builders.llama_hparams(2, 64, 32, 2, 1, 1)
BVOCAB = [(b"a", 0.5), (b"", -1.0)]


def records() -> list[builders.TensorInfo]:
    """Tensors of several shapes and types (ggjt v3), the data of each a distinct byte pattern."""
    rng = np.random.default_rng(11)
    q = builders.quantize(rng.standard_normal((5, 96)).astype(np.float32), "Q4_0", 3)
    return [
        ("norm.weight", 0, (7,), rng.standard_normal(7).astype("<f4").tobytes()),
        ("w.f16", 1, (6, 5), rng.standard_normal(30).astype("<f2").tobytes()),
        ("q.weight", 2, (96, 5), q),
        ("cube", 0, (3, 2, 4), rng.standard_normal(24).astype("<f4").tobytes()),
        ("last", 1, (9, 2), rng.standard_normal(18).astype("<f2").tobytes()),
    ]


def make_plan(recs: list[builders.TensorInfo] | None = None) -> tuple[Plan, bytes, list[builders.TensorInfo]]:
    """The plan for `recs` and the bytes the independent builder says the file must have."""
    recs = records() if recs is None else recs
    specs = [TensorInfo(str(n), GGMLType(c), ne) for n, c, ne, _ in recs]
    layout = plan(FileVersion.GGJT_V3, HParams(**HP), strategies.vocab_from_builder(BVOCAB), specs)
    return layout, builders.build_file("ggjt", 3, HP, BVOCAB, recs, validate=False), recs


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def rect(data: bytes, row_bytes: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows r0..r1-1 x bytes c0..c1-1 of a tensor's data, as a C-contiguous uint8 array."""
    return np.ascontiguousarray(np.frombuffer(data, np.uint8).reshape(-1, row_bytes)[r0:r1, c0:c1])


@st.composite
def cuts(draw: st.DrawFn, n: int) -> list[int]:
    """Sorted cut points 0 = c0 < ... < ck = n splitting range(n) into non-empty pieces."""
    inner = draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=3)) if n > 1 else set()
    return [0, *sorted(inner), n]


@given(data=st.data())
def test_rectangles_written_in_any_order_give_exactly_the_planned_file(data, tmp_path_factory):
    layout, expected, recs = make_plan()
    pieces = []
    for (name, _, _, payload), info in zip(recs, layout.tensors):
        rows, cols = data.draw(cuts(info.n_rows)), data.draw(cuts(info.row_bytes))
        pieces += [(name, payload, info.row_bytes, r0, r1, c0, c1)
                   for r0, r1 in zip(rows, rows[1:]) for c0, c1 in zip(cols, cols[1:])]
    order = data.draw(st.permutations(pieces))
    path = tmp_path_factory.mktemp("w") / "m.bin"
    seen = []
    with FileWriter(path, layout, progress=seen.append) as w:
        for name, payload, row_bytes, r0, r1, c0, c1 in order:
            block = rect(payload, row_bytes, r0, r1, c0, c1)
            if data.draw(st.booleans()):
                w.write_region(name, block, row=r0, col_byte=c0)
            else:
                w.write_region(name, block.tobytes(), row=r0, col_byte=c0, n_rows=r1 - r0)
        assert w.problems() == []
        assert not path.exists()  # nothing has the final name before commit
    assert path.read_bytes() == expected
    assert sum(seen) == w.written == layout.data_bytes
    assert temps(path.parent) == []


def test_writing_the_last_tensor_first_leaves_a_hole_until_the_rest_is_written(tmp_path):
    layout, expected, recs = make_plan()
    with FileWriter(tmp_path / "m.bin", layout) as w:
        w.write_tensor("last", recs[-1][3])
        assert os.stat(w.tmp_path).st_size == layout.size  # a seek past the end, not a rewrite
        assert sorted(p.split("'")[1] for p in w.problems()) == sorted(str(r[0]) for r in recs[:-1])
        for name, _, _, payload in recs[:-1]:
            w.write_tensor(str(name), payload)
    assert (tmp_path / "m.bin").read_bytes() == expected


def test_a_gap_fails_the_commit_names_the_rows_and_leaves_nothing_behind(tmp_path):
    layout, _, recs = make_plan()
    info = layout.by_name()["q.weight"]
    with pytest.raises(IncompleteWrite, match=r"tensor 'q\.weight': rows 2\.\.2 never written") as e:
        with FileWriter(tmp_path / "m.bin", layout) as w:
            for name, _, _, payload in recs:
                if name != "q.weight":
                    w.write_tensor(str(name), payload)
            w.write_region("q.weight", rect(recs[2][3], info.row_bytes, 0, 2, 0, info.row_bytes), row=0)
            w.write_region("q.weight", rect(recs[2][3], info.row_bytes, 3, 5, 0, info.row_bytes), row=3)
    assert e.value.path == str(tmp_path / "m.bin")
    assert list(tmp_path.iterdir()) == []


def test_a_column_gap_is_reported_in_bytes(tmp_path):
    layout, _, recs = make_plan()
    info = layout.by_name()["w.f16"]
    w = FileWriter(tmp_path / "m.bin", layout)
    w.write_region("w.f16", rect(recs[1][3], info.row_bytes, 0, 5, 0, 4), col_byte=0)
    w.write_region("w.f16", rect(recs[1][3], info.row_bytes, 0, 5, 8, 12), col_byte=8)
    assert "tensor 'w.f16': rows 0..4, bytes 4..7 of each row never written" in w.problems()
    w.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("second", [(0, 5, 0, 10), (1, 3, 0, 12), (4, 5, 2, 6)])
def test_writing_a_byte_twice_fails_the_commit(tmp_path, second):
    layout, _, recs = make_plan()
    info = layout.by_name()["w.f16"]
    with pytest.raises(IncompleteWrite, match=r"tensor 'w\.f16': .* written twice"):
        with FileWriter(tmp_path / "m.bin", layout) as w:
            for name, _, _, payload in recs:
                w.write_tensor(str(name), payload)
            r0, r1, c0, c1 = second
            w.write_region("w.f16", rect(recs[1][3], info.row_bytes, r0, r1, c0, c1), row=r0, col_byte=c0)
    assert list(tmp_path.iterdir()) == []


@given(rects=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 5), st.integers(0, 5)),
                      max_size=6))
def test_coverage_accepts_exactly_the_tilings(rects):
    n_rows, row_bytes = 4, 5
    cov = Coverage(n_rows, row_bytes)
    count = np.zeros((n_rows, row_bytes), int)
    for r0, dr, c0, dc in rects:
        r1, c1 = min(r0 + dr, n_rows), min(c0 + dc, row_bytes)
        r0, c0 = min(r0, n_rows), min(c0, row_bytes)
        cov.add(r0, r1, c0, c1)
        count[r0:r1, c0:c1] += 1
    assert (cov.problem() is None) == bool((count == 1).all())


def test_rectangles_outside_the_tensor_or_of_bad_shape_are_refused(tmp_path):
    layout, _, recs = make_plan()
    w = FileWriter(tmp_path / "m.bin", layout)
    try:
        with pytest.raises(ValueError, match="do not fit"):
            w.write_region("w.f16", np.zeros((1, 4), np.uint8), row=5)
        with pytest.raises(ValueError, match="do not fit"):
            w.write_region("w.f16", np.zeros((5, 4), np.uint8), col_byte=9)  # 9 + 4 > 12
        with pytest.raises(ValueError, match="do not fit"):
            w.write_region("w.f16", np.zeros((1, 4), np.uint8), row=-1)
        with pytest.raises(ValueError, match="do not split into 3 rows"):
            w.write_region("w.f16", bytes(10), n_rows=3)
        with pytest.raises(ValueError, match="C-contiguous"):
            w.write_region("w.f16", np.zeros((4, 5), np.uint8).T)
        with pytest.raises(ValueError, match="planned 60 bytes, got 59"):
            w.write_tensor("w.f16", bytes(59))
        assert w.written == 0 and w.problems()
    finally:
        w.abort()


def test_temp_file_lives_beside_the_target_and_is_renamed_into_place(tmp_path):
    layout, expected, recs = make_plan()
    w = FileWriter(tmp_path / "m.bin", layout)
    assert w.tmp_path.parent == tmp_path
    assert w.tmp_path.name.startswith(f".m.bin.ggmlfmt-{os.getpid()}-") and w.tmp_path.name.endswith(".tmp")
    for name, _, _, payload in recs:
        w.write_tensor(str(name), payload)
    assert [p.name for p in tmp_path.iterdir()] == [w.tmp_path.name]
    w.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]
    assert (tmp_path / "m.bin").read_bytes() == expected


def test_existing_output_is_refused_without_overwrite(tmp_path):
    layout, _, _ = make_plan()
    (tmp_path / "m.bin").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        FileWriter(tmp_path / "m.bin", layout)
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]
    assert (tmp_path / "m.bin").read_bytes() == b"precious"


def test_failed_overwrite_keeps_the_old_file(tmp_path):
    layout, _, recs = make_plan()
    (tmp_path / "m.bin").write_bytes(b"precious")
    with pytest.raises(KeyboardInterrupt):
        with FileWriter(tmp_path / "m.bin", layout, overwrite=True) as w:
            w.write_tensor("norm.weight", recs[0][3])
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]
    assert (tmp_path / "m.bin").read_bytes() == b"precious"


def test_replacing_a_mapped_file_leaves_the_open_model_intact(tmp_path):
    vocab = Vocab((b"x",), np.zeros(1, np.float32))
    hp = HParams(1, 4, 1, 1, 1, 4, 0)
    save(tmp_path / "m.bin", {"w": np.arange(4, dtype=np.float32)}, hparams=hp, vocab=vocab)
    old = load(tmp_path / "m.bin")
    save(tmp_path / "m.bin", {"w": -np.arange(4, dtype=np.float32)}, hparams=hp, vocab=vocab)
    assert old.tensors["w"].tolist() == [0, 1, 2, 3]
    assert load(tmp_path / "m.bin").tensors["w"].tolist() == [0, -1, -2, -3]


def test_output_that_is_a_directory_is_refused(tmp_path):
    layout, _, _ = make_plan()
    (tmp_path / "m.bin").mkdir()
    with pytest.raises(FileExistsError):
        FileWriter(tmp_path / "m.bin", layout)
    with pytest.raises(IsADirectoryError):
        FileWriter(tmp_path / "m.bin", layout, overwrite=True)
    assert temps(tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temps_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    layout, expected, recs = make_plan()
    dead = tmp_path / f".m.bin.ggmlfmt-{_dead_pid()}-abc123.tmp"
    live = tmp_path / f".m.bin.ggmlfmt-{os.getpid()}-def456.tmp"
    other_target = tmp_path / f".n.bin.ggmlfmt-{_dead_pid()}-abc123.tmp"
    unrelated = tmp_path / ".m.bin.something.tmp"
    for p in (dead, live, other_target, unrelated):
        p.write_bytes(b"junk")
    with FileWriter(tmp_path / "m.bin", layout) as w:
        for name, _, _, payload in recs:
            w.write_tensor(str(name), payload)
    assert not dead.exists()
    assert live.exists() and other_target.exists() and unrelated.exists()
    assert (tmp_path / "m.bin").read_bytes() == expected
    assert remove_stale_temps(tmp_path / "n.bin") == [other_target]


def test_not_enough_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    layout, _, _ = make_plan()
    monkeypatch.setattr(writer_module, "_free_bytes", lambda directory: layout.size - 1)
    with pytest.raises(OSError) as e:
        FileWriter(tmp_path / "m.bin", layout)
    assert e.value.errno == errno.ENOSPC and f"{layout.size:,} bytes" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    FileWriter(tmp_path / "m.bin", layout, check_space=False).abort()


@pytest.mark.parametrize("short", [False, True])
def test_pwrite_all_writes_everything_in_calls_of_at_most_write_slice(tmp_path, monkeypatch, short):
    """Every call asks for at most WRITE_SLICE bytes; a call that writes less (signals, some filesystems) is
    continued where it stopped."""
    data = np.random.default_rng(5).integers(0, 256, 3 * writer_module.WRITE_SLICE + 77, dtype=np.uint8)
    asked, real_pwrite = [], os.pwrite

    def pwrite(fd, view, offset):
        asked.append(len(view))
        return real_pwrite(fd, view[: len(view) - 1000] if short and len(view) > 1000 else view, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    path = tmp_path / "out"
    path.write_bytes(b"x" * 10)
    fd = os.open(path, os.O_RDWR)
    try:
        assert writer_module.pwrite_all(fd, data, 10) == data.nbytes
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 10 + data.tobytes()
    assert max(asked) == writer_module.WRITE_SLICE and len(asked) >= (5 if short else 4)
    assert path.read_bytes() != b"x" * 10 + data[::-1].tobytes()  # control


@pytest.mark.parametrize("end", ["commit", "abort"])
@pytest.mark.parametrize("control", [False, True])
def test_writeback_requests_run_on_a_helper_that_lets_go_of_the_file_before_it_is_closed(tmp_path, monkeypatch,
                                                                                        end, control):
    """Writeback starts on a helper thread while writing goes on; commit and abort wait for it before the fsync
    and close. Control: a writer that does not wait lets the helper touch a closed descriptor."""
    from ggmlfmt.tools import libc

    calls, main = [], threading.get_ident()

    def slow_writeback(fd):
        time.sleep(0.2)
        try:
            os.fstat(fd)
            calls.append(("open", threading.get_ident()))
        except OSError:
            calls.append(("closed", threading.get_ident()))

    monkeypatch.setattr(libc, "start_writeback", slow_writeback)
    monkeypatch.setattr(writer_module, "WRITEBACK_BYTES", 16)
    if control:
        monkeypatch.setattr(writer_module.FileWriter, "_stop_writeback", lambda self: None)
    layout, expected, recs = make_plan()
    w = FileWriter(tmp_path / "m.bin", layout)
    for name, _, _, payload in recs:
        w.write_tensor(str(name), payload)
    w.commit() if end == "commit" else w.abort()
    time.sleep(0.4)  # a helper nobody waited for has finished by now
    assert calls and all(thread != main for _, thread in calls)
    assert [state for state, _ in calls] == (["closed"] if control else ["open"])  # one request: the rest skipped
    assert (tmp_path / "m.bin").exists() == (end == "commit") and temps(tmp_path) == []
    if end == "commit":
        assert (tmp_path / "m.bin").read_bytes() == expected


def test_empty_tensors_need_no_write_even_at_the_end_of_the_file(tmp_path):
    recs = [("a", 0, (3,), np.ones(3, "<f4").tobytes()), ("z", 1, (8, 0), b""), ("e", 0, (0,), b"")]
    layout, expected, _ = make_plan(recs)
    with FileWriter(tmp_path / "m.bin", layout) as w:
        w.write_tensor("a", recs[0][3])
        w.write_tensor("e", b"")  # allowed and a no-op
    raw = (tmp_path / "m.bin").read_bytes()
    assert raw == expected and len(raw) == layout.size and len(raw) % 32 == 0
    assert load(tmp_path / "m.bin").tensors["z"].shape == (0, 8)


@pytest.mark.parametrize(("arrays", "match"), [
    ({"i": np.zeros(3, np.int32)}, "dtype int32 is not stored"),
    ({"d": np.zeros(3, np.float64)}, "dtype float64 is not stored"),
    ({"s": np.float32(1.0).reshape(())}, "0-dim"),
    ({"": np.zeros(1, np.float32)}, "1..4096 UTF-8 bytes"),
    ({"five": np.zeros((1, 1, 1, 1, 1), np.float32)}, "1..4 dims"),
])
def test_save_refuses_what_the_format_cannot_hold_and_writes_nothing(tmp_path, arrays, match):
    with pytest.raises(ValueError, match=match):
        save(tmp_path / "m.bin", arrays, hparams=HParams(1, 1, 1, 1, 1, 1, 0), vocab=Vocab((b"a",), np.zeros(1)))
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_a_vocabulary_that_disagrees_with_n_vocab(tmp_path):
    with pytest.raises(ValueError, match="n_vocab is 2 but the vocabulary has 1"):
        save(tmp_path / "m.bin", {}, hparams=HParams(2, 1, 1, 1, 1, 1, 0), vocab=Vocab((b"a",), np.zeros(1)))
    assert list(tmp_path.iterdir()) == []
