"""Nothing is lost: disk full gives a clean error and no temp file; replacing a mapped file leaves readers intact."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

import ggmlfmt
from ggmlfmt.layout import TensorInfo, plan
from ggmlfmt.writer import FileWriter
from helpers import tiny_header

HP, VOCAB = tiny_header(n_embd=256, n_head=2, n_rot=128)


def _tensors(n_rows: int, value: float) -> dict[str, np.ndarray]:
    return {"tok_embeddings.weight": np.full((n_rows, 256), value, np.float16), "norm.weight": np.ones(256, np.float32)}


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture
def tiny_fs():
    """A 1 MiB tmpfs: real ENOSPC from the kernel, not a simulation (needs root, as CI and dev machines have)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_injected_enospc covers the same path without it")
    mnt = Path(f"/tmp/ggmlfmt-tinyfs-{uuid.uuid4().hex[:8]}")
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def test_free_space_is_checked_before_starting(tiny_fs):
    with pytest.raises(OSError) as e:
        ggmlfmt.save(tiny_fs / "m.bin", _tensors(4096, 1.0), hparams=HP, vocab=VOCAB)  # 2 MiB of data
    assert e.value.errno == errno.ENOSPC
    assert "the output needs 2,098,304 bytes, 1,048,576 are free" in str(e.value)  # 4096x256 f16 + 1 KiB + header
    assert list(tiny_fs.iterdir()) == []


def test_enospc_while_writing_removes_the_temp_file(tiny_fs):
    tensors = _tensors(4096, 1.0)
    layout = plan(ggmlfmt.FileVersion.GGJT_V1, HP, VOCAB,
                  [TensorInfo.from_shape(n, ggmlfmt.GGMLType.F16 if a.ndim == 2 else ggmlfmt.GGMLType.F32, a.shape)
                   for n, a in tensors.items()])
    with pytest.raises(OSError) as e:
        with FileWriter(tiny_fs / "m.bin", layout, check_space=False) as w:  # pretend the check passed
            for name, a in tensors.items():
                w.write_tensor(name, a)
    assert e.value.errno == errno.ENOSPC
    assert list(tiny_fs.iterdir()) == []


def test_injected_enospc_removes_the_temp_file(tmp_path, monkeypatch):
    real_pwrite = os.pwrite
    budget = [4096]

    def pwrite(fd, data, offset):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        budget[0] -= len(data)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(OSError, match="No space left"):
        ggmlfmt.save(tmp_path / "m.bin", _tensors(64, 1.0), hparams=HP, vocab=VOCAB)
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_disk_full_in_one_line(tiny_fs, tmp_path):
    src = tmp_path / "m.bin"
    ggmlfmt.save(src, _tensors(4096, 1.0), hparams=HP, vocab=VOCAB)
    script = "import sys, ggmlfmt, ggmlfmt.cli as c; m = ggmlfmt.load(sys.argv[1]); " \
             "sys.exit(c.run('t', c._parser().parse_args(['verify', sys.argv[1]]), " \
             "lambda a: ggmlfmt.save(sys.argv[2], dict(m.tensors), hparams=m.hparams, vocab=m.vocab) and 0))"
    r = subprocess.run([sys.executable, "-c", script, str(src), str(tiny_fs / "out.bin")], capture_output=True,
                       text=True)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert str(tiny_fs) in r.stderr and "not enough free space" in r.stderr
    assert list(tiny_fs.iterdir()) == []


READER = textwrap.dedent("""
    import sys, ggmlfmt
    m = ggmlfmt.load(sys.argv[1])
    w = m.tensors["tok_embeddings.weight"]
    print(float(w[0, 0]), flush=True)
    sys.stdin.readline()  # the other process replaces the file now
    print(float(w[0, 0]), float(w[-1, -1]), flush=True)
""")


def test_replacing_a_file_another_process_has_mapped_does_not_change_what_it_sees(tmp_path):
    path = tmp_path / "m.bin"
    ggmlfmt.save(path, _tensors(512, 1.0), hparams=HP, vocab=VOCAB)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert reader.stdout.readline().split() == ["1.0"]
        ggmlfmt.save(path, _tensors(512, 2.0), hparams=HP, vocab=VOCAB)  # same size, new values
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().split() == ["1.0", "1.0"]  # the old file, intact, not zeros
        assert reader.wait(timeout=30) == 0
    finally:
        reader.kill()
    assert float(ggmlfmt.load(path).tensors["tok_embeddings.weight"][0, 0]) == 2.0
    assert _leftovers(tmp_path) == []


def test_output_gets_ordinary_permissions_not_the_temp_file_s(tmp_path):
    old = os.umask(0o022)
    try:
        ggmlfmt.save(tmp_path / "m.bin", _tensors(4, 1.0), hparams=HP, vocab=VOCAB)
    finally:
        os.umask(old)
    assert (tmp_path / "m.bin").stat().st_mode & 0o777 == 0o644
