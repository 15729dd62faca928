"""Page-cache levers: residency and eviction on real filesystems, the copy, every load option, mlock errors."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ggmlfmt
from ggmlfmt.tools import cachestat
from ggmlfmt.tools import copying
from ggmlfmt.tools import libc
from ggmlfmt.tools import loadopts
from ggmlfmt.cli import main
from helpers import tiny_header

ROOT = Path(__file__).resolve().parent.parent
PAGE = libc.PAGE
HP, VOCAB = tiny_header(n_vocab=3, n_embd=256, n_mult=256, n_head=2, n_rot=128)
OPTIONS: list[dict[str, Any]] = [
    {},
    {"prefault": True},
    {"advice": "sequential"},
    {"advice": "random"},
    {"advice": "willneed"},
    {"advice": "normal", "prefault": True, "hugepages": True},
    {"hugepages": True},
    {"lock": True},
    {"method": "pread"},
    {"method": "pread", "threads": 3, "hugepages": True},
    {"method": "pread", "lock": True},
]


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    return {  # ~2.3 MiB: odd sizes so tensors straddle pages; small enough for an unprivileged mlock (8 MiB)
        "tok_embeddings.weight": rng.standard_normal((1000, 256)).astype(np.float16),
        "norm.weight": rng.standard_normal(256).astype(np.float32),
        "layers.0.attention.wq.weight": rng.standard_normal((256, 256)).astype(np.float32),
        "output.weight": rng.standard_normal((1000, 256)).astype(np.float16),
    }


def _model(directory: Path, name: str = "m.bin") -> Path:
    path = directory / name
    ggmlfmt.save(path, _tensors(), hparams=HP, vocab=VOCAB)
    return path


def _filesystem(path: Path) -> str:
    """'fstype on mountpoint' of the mount holding path, from /proc/mounts."""
    best = ("?", "/")
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            _, mnt, fstype, *_ = line.split()
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
                best = (fstype, mnt)
    return f"{best[0]} on {best[1]}"


@pytest.fixture(params=["tmp", "repo"])
def fs_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on pytest's temp filesystem and one on the repository's (they may differ)."""
    if request.param == "tmp":
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".test-pagecache-") as d:
        yield Path(d)


def _touch_all(model: ggmlfmt.Model) -> None:
    for name in model.tensors:
        loadopts.touch(model.tensors[name])


# ---------------------------------------------------------------------------------------------------------------
# Residency and eviction


def test_evict_empties_and_touching_fills_the_cache(fs_dir: Path) -> None:
    path = _model(fs_dir)
    cachestat.evict(path)
    left = cachestat.residency(path).fraction
    assert left < 0.01, (
        f"posix_fadvise(DONTNEED) left {100 * left:.0f}% of {path} cached on {_filesystem(path)}: this "
        "filesystem ignores eviction (tmpfs keeps its only copy in the cache), so cold starts cannot be "
        "measured here; point the benchmarks at a disk-backed filesystem")
    model = ggmlfmt.load(path)
    _touch_all(model)
    res = cachestat.residency(path)
    info = list(model.info.values())
    shares = res.of_ranges([t.offset for t in info], [t.nbytes for t in info])
    assert shares.tolist() == [1.0] * len(info), f"on {_filesystem(path)}"
    assert res.fraction == 1.0
    assert res.exact


def test_tmpfs_keeps_its_pages_and_evict_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    if not os.path.isdir("/dev/shm") or not _filesystem(Path("/dev/shm")).startswith("tmpfs"):
        pytest.skip("no tmpfs at /dev/shm on this machine")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        path = _model(Path(d))
        assert main(["evict", str(path)]) == 0
        assert cachestat.residency(path).fraction == 1.0  # the cache is tmpfs' only copy
        assert "stay cached" in capsys.readouterr().err


def test_residency_counts_pages_and_the_partial_last_one() -> None:
    pages = np.array([True, False, True, True])
    res = cachestat.Residency(pages, 3 * PAGE + 100, True)
    assert res.resident_bytes == 2 * PAGE + 100
    shares = res.of_ranges([0, PAGE, PAGE - 1, 0, 5], [PAGE, PAGE, 2, 3 * PAGE + 100, 0])
    assert shares.tolist() == [1.0, 0.0, 0.5, 0.75, 1.0]


def test_residency_and_evict_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _model(tmp_path)
    loadopts.read_file(path)  # through the page cache: everything resident
    assert main(["residency", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in report["tensors"]] == list(_tensors())
    assert report["cached"] == 1.0 and all(t["cached"] == 1.0 for t in report["tensors"])
    assert main(["evict", str(path)]) == 0
    before, after = capsys.readouterr().out.splitlines()
    assert before.endswith("(100.0%)") and after.endswith("(0.0%)")


def test_residency_of_a_non_model_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.bin").write_bytes(b"nope" + bytes(60))
    assert main(["residency", str(tmp_path / "x.bin")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.bin" in err


# ---------------------------------------------------------------------------------------------------------------
# Copy


def test_copy_is_identical_and_leaves_no_temp_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _model(tmp_path, "src.bin")
    assert main(["copy", str(src), str(tmp_path / "dst.bin")]) == 0
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]
    assert os.stat(tmp_path / "dst.bin").st_mode == os.stat(src).st_mode
    assert "sha256" in capsys.readouterr().out


def test_copy_keeps_a_cold_source_cold_and_a_warm_one_warm(fs_dir: Path) -> None:
    src = _model(fs_dir, "src.bin")
    cachestat.evict(src)
    result = copying.copy_file(src, fs_dir / "cold.bin")
    assert result.src_cached_before < 0.01
    assert cachestat.residency(src).fraction < 0.01, f"source pages stayed cached on {_filesystem(src)}"
    assert cachestat.residency(fs_dir / "cold.bin").fraction < 0.01, f"copy stayed cached on {_filesystem(src)}"
    loadopts.read_file(src)
    copying.copy_file(src, fs_dir / "warm.bin")
    assert cachestat.residency(src).fraction == 1.0  # what was cached before stays cached


def test_copy_across_filesystems_falls_back_to_reads_and_writes(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm") or _filesystem(Path("/dev/shm")).split()[0] == _filesystem(tmp_path).split()[0]:
        pytest.skip("needs /dev/shm on a filesystem type other than the temp directory's")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        src = _model(Path(d), "src.bin")  # tmpfs -> disk: copy_file_range says EXDEV
        result = copying.copy_file(src, tmp_path / "dst.bin")
        assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()
        assert result.nbytes == src.stat().st_size


def test_copy_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _model(tmp_path, "src.bin")
    (tmp_path / "dst.bin").write_bytes(b"keep me")
    assert main(["copy", str(src), str(tmp_path / "dst.bin")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert (tmp_path / "dst.bin").read_bytes() == b"keep me"
    assert main(["copy", str(src), str(tmp_path / "dst.bin"), "--force"]) == 0
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()
    with pytest.raises(ValueError, match="same file"):
        copying.copy_file(src, src, overwrite=True)


def test_a_failed_copy_removes_its_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _model(tmp_path, "src.bin")

    def corrupted(*args: Any) -> str:
        raise OSError(errno.EIO, "copy verification failed: injected")

    monkeypatch.setattr(copying, "_verify", corrupted)
    with pytest.raises(OSError, match="verification failed"):
        copying.copy_file(src, tmp_path / "dst.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.bin"]


def test_an_interrupted_copy_removes_its_temp_file_and_keeps_the_old_target(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = _model(tmp_path, "src.bin")
    (tmp_path / "dst.bin").write_bytes(b"old")

    def interrupted(fin: int, fout: int, *args: Any) -> None:
        os.pwrite(fout, b"partial", 0)
        raise KeyboardInterrupt

    monkeypatch.setattr(copying, "_copy_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        copying.copy_file(src, tmp_path / "dst.bin", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]
    assert (tmp_path / "dst.bin").read_bytes() == b"old"


def test_a_copy_removes_temps_of_killed_copies_of_its_target_and_keeps_live_ones(tmp_path: Path) -> None:
    src = _model(tmp_path, "src.bin")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid no longer runs
    dead = tmp_path / f".dst.bin.ggmlfmt-{child.pid}-abc123.tmp"
    live = tmp_path / f".dst.bin.ggmlfmt-{os.getpid()}-def456.tmp"  # this process: a writer still running
    for p in (dead, live):
        p.write_bytes(b"junk")
    copying.copy_file(src, tmp_path / "dst.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dst.bin", "src.bin", live.name])


def test_the_copy_and_the_writer_commit_through_one_temp_file_class(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import ast

    from ggmlfmt.writer import TempFile

    renamers = sorted(p.name for p in (ROOT / "ggmlfmt").glob("*.py")
                      if any(isinstance(n, ast.Attribute) and n.attr in ("replace", "rename")
                             and isinstance(n.value, ast.Name) and n.value.id == "os"
                             for n in ast.walk(ast.parse(p.read_text()))))
    assert renamers == ["writer.py"]  # the one place a file of ours gets its final name (TempFile.commit)
    commits: list[Path] = []
    real = TempFile.commit
    monkeypatch.setattr(TempFile, "commit", lambda self: (commits.append(self.target), real(self))[1])
    src = _model(tmp_path, "src.bin")  # FileWriter
    copying.copy_file(src, tmp_path / "dst.bin")
    assert commits == [src, tmp_path / "dst.bin"]
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Load options


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model(tmp_path_factory.mktemp("load"))


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_each_option_gives_the_default_arrays_in_the_right_memory(model_path: Path, options: dict[str, Any]) -> None:
    if options.get("lock") and not _has_cap_ipc_lock() and _memlock_limit() < model_path.stat().st_size:
        pytest.skip(f"RLIMIT_MEMLOCK ({_memlock_limit()} bytes) is below the test file's size")
    default = ggmlfmt.load(model_path)
    model = ggmlfmt.load(model_path, **options)
    for name, want in default.tensors.items():
        got = model.tensors[name]
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype and not got.flags.writeable
        assert np.shares_memory(got, model.data)  # a view, never a copy per tensor
    where = cachestat.mapping_of(model.data)
    assert where is not None
    if options.get("method") == "pread":
        assert where.path is None, "method='pread' must not map the file"
    else:
        assert where.path == os.path.realpath(model_path), "mmap options must keep the data in a map of the file"
        assert where.anonymous == 0, "a read-only map has no private pages"
    assert where.locked == bool(options.get("lock"))


# every load path in both modes, less lock on a copy-on-write map (refused: test_lock_with_copy_on_write_is_refused)
LOAD_PATHS = [(o, m) for o in OPTIONS for m in ("r", "c") if not (o.get("lock") and m == "c" and "method" not in o)]


@pytest.mark.parametrize("options, mode", LOAD_PATHS,
                         ids=[",".join([f"{k}={v}" for k, v in o.items()] + [f"mode={m}"]) for o, m in LOAD_PATHS])
def test_model_data_is_what_its_docstring_says(model_path: Path, options: dict[str, Any], mode: str) -> None:
    """Model.data: the whole file as one 1-D uint8 array holding every view; a numpy.memmap by default, a map
    of the file with a lever, private anonymous memory with method="pread"; writable only in mode "c"."""
    if options.get("lock") and not _has_cap_ipc_lock() and _memlock_limit() < model_path.stat().st_size:
        pytest.skip(f"RLIMIT_MEMLOCK ({_memlock_limit()} bytes) is below the test file's size")
    model = ggmlfmt.load(model_path, mode=mode, **options)
    data = model.data
    assert data.dtype == np.uint8 and data.ndim == 1
    assert data.tobytes() == model_path.read_bytes()  # the whole file, read independently
    assert data.flags.writeable == (mode == "c")
    assert all(np.shares_memory(v, data) for v in model.tensors.values())
    assert isinstance(data, np.memmap) == (options == {}), "a numpy.memmap exactly on the default path"
    where = cachestat.mapping_of(data)
    assert where is not None
    assert where.path == (None if options.get("method") == "pread" else os.path.realpath(model_path))
    if mode == "c":
        data[-1] ^= 0xFF  # the write stays in this process
        assert model_path.read_bytes()[-1] != data[-1]


@pytest.mark.parametrize("flags, where", [([], "a map of"), (["--method", "pread", "--hugepages"], "anonymous")])
def test_load_command_says_where_the_data_lives(model_path: Path, flags: list[str], where: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", str(model_path), "--touch", "--rusage", *flags]) == 0
    out, err = capsys.readouterr()
    assert f"loaded 4 tensors (1.2 MiB) into {where}" in out and "touched every page" in out
    assert "rusage: page faults" in err


def test_copy_on_write_options_stay_private(model_path: Path) -> None:
    before = model_path.read_bytes()
    for options in ({"prefault": True, "advice": "willneed"}, {"method": "pread"}):
        model = ggmlfmt.load(model_path, mode="c", **options)
        view = model.tensors["norm.weight"]
        view[:] = 7.0  # writable, and the write stays in this process
        assert (view == 7.0).all()
    assert model_path.read_bytes() == before


@pytest.mark.parametrize("options, message", [
    ({"method": "pread", "prefault": True}, "reads everything up front"),
    ({"method": "pread", "advice": "random"}, "reads everything up front"),
    ({"threads": 4}, "only with method='pread'"),
    ({"method": "pread", "threads": -1}, "a count >= 0"),
    ({"advice": "soon"}, "unknown advice"),
    ({"method": "read"}, "unknown method"),
])
def test_meaningless_combinations_are_refused(model_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ggmlfmt.load(model_path, **options)


def test_lock_with_copy_on_write_is_refused(model_path: Path) -> None:
    with pytest.raises(ValueError, match="copy every page"):
        ggmlfmt.load(model_path, mode="c", lock=True)


def test_touch_refuses_a_strided_view() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        loadopts.touch(np.zeros((4, 4))[:, 1])


# ---------------------------------------------------------------------------------------------------------------
# mlock errors


def test_refused_mlock_is_a_clean_error(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(addr: int, length: int) -> int:
        ctypes.set_errno(errno.ENOMEM)
        return -1

    monkeypatch.setitem(libc._bound, "mlock", refuse)
    with pytest.raises(loadopts.MemoryLockError, match=r"mlock of [\d,]+ bytes refused .*RLIMIT_MEMLOCK allows"):
        ggmlfmt.load(model_path, lock=True)


def _memlock_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft


def _has_cap_ipc_lock() -> bool:
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return bool(eff >> 14 & 1)  # CAP_IPC_LOCK = 14: mlock ignores RLIMIT_MEMLOCK


def test_mlock_beyond_rlimit_memlock_is_one_error_line(model_path: Path) -> None:
    prefix: list[str] = []
    if _has_cap_ipc_lock():  # root: drop the capability for the child, or the limit does not apply
        if not shutil.which("setpriv"):
            pytest.skip("running with CAP_IPC_LOCK and no setpriv to drop it: mlock cannot fail here")
        prefix = ["setpriv", "--bounding-set", "-ipc_lock", "--inh-caps", "-ipc_lock"]

    def small_limit() -> None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (PAGE, PAGE))

    code = "import sys; from ggmlfmt.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([*prefix, sys.executable, "-c", code, "load", str(model_path), "--lock"],
                         capture_output=True, text=True, preexec_fn=small_limit, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1
    assert "ggmlfmt: error: mlock of" in out.stderr and f"RLIMIT_MEMLOCK allows {PAGE:,} bytes" in out.stderr


# ---------------------------------------------------------------------------------------------------------------
# /proc/self/smaps parsing


def test_parse_smaps_finds_the_mapping_holding_an_address() -> None:
    text = (
        "7f0000000000-7f0000200000 r--s 00000000 fd:00 12 /data/m.bin\n"
        "Rss:                2048 kB\nAnonymous:             0 kB\nFilePmdMapped:      2048 kB\nLocked: 1024 kB\n"
        "VmFlags: rd sh mr mw me ms lo sd\n"
        "7f0000200000-7f0000400000 rw-p 00000000 00:00 0 \n"
        "Rss:                4 kB\nAnonymous:             4 kB\nAnonHugePages:  0 kB\n"
    )
    m = cachestat._parse_smaps(text, 0x7F0000100000)
    assert m == cachestat.MappingStats(0x7F0000000000, 0x7F0000200000, "/data/m.bin", 2 << 20, 0, 0, 2 << 20, True)
    anon = cachestat._parse_smaps(text, 0x7F0000200000)
    assert anon is not None and anon.path is None and anon.anonymous == 4096
    assert cachestat._parse_smaps(text, 0x1000) is None


def test_opening_a_cold_file_reads_the_index_not_the_weights(tmp_path):
    """Records sit before each tensor's data: parsing them must not drag the weights in by readahead."""
    import ggmlfmt

    path = tmp_path / "m.bin"
    hp, vocab = tiny_header(n_vocab=1, n_embd=4096, n_mult=256, n_head=32, n_rot=128)
    tensors = {f"layers.{i}.attention.wq.weight": np.zeros((1024, 4096), np.float16) for i in range(24)}  # 192 MiB
    ggmlfmt.save(path, tensors, hparams=hp, vocab=vocab)
    cachestat.evict(path)
    before = cachestat.residency(path)
    assert before.fraction < 0.01, f"eviction did not work on this filesystem: {before.fraction:.1%} cached"
    model = ggmlfmt.load(path)
    after_open = cachestat.residency(path).fraction
    assert after_open < 0.05, f"opening read {after_open:.1%} of a cold file"
    assert len(model.tensors) == 24
    sum(int(v.reshape(-1).view(np.uint8)[::4096].sum()) for v in model.tensors.values())  # touch every page
    assert cachestat.residency(path).fraction > 0.99  # and the data comes in as usual


def test_copy_gives_the_copy_the_source_s_permissions_and_leaves_no_temp(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(1 << 16))
    os.chmod(src, 0o640)
    copying.copy_file(src, tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]
