"""migrate-old-weights as a separate process: without torch, and killed at random points."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import builders
from helpers import run_with_unimportable
from migrate import migrate_file

REPO = Path(__file__).resolve().parents[1]

def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _write(directory: Path, parts: list[bytes]) -> Path:
    for k, data in enumerate(parts):
        (directory / ("model.bin" if k == 0 else f"model.bin.{k}")).write_bytes(data)
    return directory / "model.bin"


def _small_model(directory: Path) -> Path:
    hp = builders.llama_hparams(n_vocab=300, dim=128, n_mult=64, n_head=2, n_layer=2, ftype=2)
    tensors = builders.llama_tensors(hp, "Q4_0", seed=5)
    return _write(directory, builders.build_parts("ggmf", hp, builders.llama_vocab(300), tensors, 2))


@pytest.mark.parametrize("blocked", ["torch", "torch,tqdm,sentencepiece,convert"])
def test_runs_with_torch_unimportable(tmp_path, blocked):
    src = _small_model(tmp_path)
    migrate_file(src, tmp_path / "reference.bin")
    proc = run_with_unimportable(blocked, "migrate", [str(src), str(tmp_path / "out.bin")], timeout=120)
    assert proc.returncode == 0, proc.stderr
    tried = [m for m in blocked.split(",") if f"'{m}" in proc.stdout.split("loaded=")[0]]
    assert proc.stdout.startswith("rc=0 ") and proc.stdout.strip().endswith("loaded=[]"), proc.stdout
    assert tried in ([], ["tqdm"]), proc.stdout  # tqdm is optional and may be looked for; torch never
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "reference.bin").read_bytes()


def _run_on_terminal(argv: list[str], env: dict[str, str]) -> bytes:
    """Run argv with a pseudo-terminal (100 columns) as stdin/stdout/stderr; return everything it printed."""
    import fcntl
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # child: never returns
        os.execve(argv[0], argv, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


def test_progress_bar_on_a_terminal_only(tmp_path):
    pytest.importorskip("tqdm")  # optional dependency: without it there is simply no bar
    src = _small_model(tmp_path)
    shown = _run_on_terminal([sys.executable, "-m", "migrate", str(src), str(tmp_path / "a.bin")], _env())
    assert b"\rmigrate:   0%|" in shown and b"309k [" in shown  # bytes, scaled; too fast to reach 100%
    piped = subprocess.run([sys.executable, "-m", "migrate", str(src), str(tmp_path / "b.bin"), "--format", "ggjt"],
                           capture_output=True, env=_env(), timeout=120)
    assert b"%|" not in piped.stderr  # logs and CI get no bar noise
    quiet = _run_on_terminal([sys.executable, "-m", "migrate", str(src), str(tmp_path / "c.bin"), "-q"], _env())
    assert quiet == b""


# ------------------------------------------------------------------------------------------- interruptions


@pytest.fixture(scope="module")
def big_parts(tmp_path_factory) -> tuple[Path, str]:
    """~100 MB of 2-part ggmf (f16 and q4_1 mixed) so a migration takes long enough to be interrupted."""
    directory = tmp_path_factory.mktemp("big")
    hp = builders.llama_hparams(n_vocab=32000, dim=768, n_mult=256, n_head=6, n_layer=2, ftype=1)
    tensors = builders.llama_tensors(hp, "F16", seed=7)
    tensors["layers.1.feed_forward.w2.weight"] = ("Q4_1", tensors["layers.1.feed_forward.w2.weight"][1])
    src = _write(directory, builders.build_parts("ggmf", hp, builders.llama_vocab(32000), tensors, 2))
    del tensors
    migrate_file(src, directory / "reference.bin")
    digest = _sha256(directory / "reference.bin")
    (directory / "reference.bin").unlink()
    return src, digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _inputs(src: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(src.parent.glob("model.bin*"))}


def _start(src: Path, dst: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "migrate", str(src), str(dst), "--force", "--format", "ggjt"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _wait_for_temp(out_dir: Path, proc: subprocess.Popen, timeout: float = 30) -> bool:
    """Wait until the writer's temporary file exists (the copy is under way); False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.endswith(".tmp") for p in out_dir.iterdir()):
            return True
        time.sleep(0.0005)
    return False


_OK_EXIT = {signal.SIGINT: {0, 130, -signal.SIGINT}, signal.SIGTERM: {0, 143, -signal.SIGTERM},
            signal.SIGKILL: {0, -signal.SIGKILL}}


def _interrupt_once(src: Path, digest: str, out_dir: Path, sig: signal.Signals, delay: float | None) -> None:
    """Run, signal after `delay` s (None: as soon as the temp file exists), then check the invariants."""
    dst = out_dir / "out.bin"
    proc = _start(src, dst)
    mid_write = _wait_for_temp(out_dir, proc) if delay is None else (time.sleep(delay) or None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    where = f"{sig.name} after {'temp file appeared' if delay is None else f'{delay:.3f} s'}: rc {proc.returncode}"
    assert proc.returncode in _OK_EXIT[sig], f"{where}\n{err}"
    # Exit 0 after the temp file was seen means the signal landed after the commit (a loaded machine can
    # run the whole commit between our poll and send_signal): the digest check below then proves the file whole.
    if mid_write and sig != signal.SIGKILL and proc.returncode != 0:
        assert proc.returncode == (130 if sig == signal.SIGINT else 143), f"{where}\n{err}"
        assert err.strip().endswith("nothing was left half-written") and err.count("\n") == 1, err
    if dst.exists():  # the final name only ever holds a complete file
        assert _sha256(dst) == digest, where
    leftovers = [p.name for p in out_dir.iterdir() if p.name != "out.bin"]
    if sig != signal.SIGKILL:  # Ctrl-C and SIGTERM clean up; only SIGKILL can leave a temp file behind
        assert leftovers == [], where


def _rerun_succeeds(src: Path, digest: str, out_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "migrate", str(src), str(out_dir / "out.bin"), "--force", "-q"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _sha256(out_dir / "out.bin") == digest
    assert [p.name for p in out_dir.iterdir()] == ["out.bin"]  # a SIGKILLed run's temp file was removed


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_runs_lose_nothing(big_parts, tmp_path, sig):
    src, digest = big_parts
    before = _inputs(src)
    rng = random.Random(f"migrate-{sig.name}")  # reproducible "random" points
    delays = [None, 0.0, *(rng.uniform(0.05, 1.0) for _ in range(5))]
    for delay in delays:
        out_dir = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        out_dir.mkdir()
        _interrupt_once(src, digest, out_dir, sig, delay)
        assert _inputs(src) == before
        _rerun_succeeds(src, digest, out_dir)


def test_killed_run_then_rerun_into_same_directory(big_parts, tmp_path):
    """SIGKILL mid-write leaves a temp file; the next run removes it and writes the complete file."""
    src, digest = big_parts
    proc = _start(src, tmp_path / "out.bin")
    if not _wait_for_temp(tmp_path, proc):
        pytest.fail("the migration finished before its temp file was seen; make big_parts bigger")
    proc.kill()
    proc.wait(timeout=60)
    assert not (tmp_path / "out.bin").exists() or _sha256(tmp_path / "out.bin") == digest
    _rerun_succeeds(src, digest, tmp_path)


def test_sigterm_exit_status_and_message(big_parts, tmp_path):
    src, _ = big_parts
    proc = _start(src, tmp_path / "out.bin")
    assert _wait_for_temp(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.splitlines()[-1] == "migrate-old-weights: terminated; nothing was left half-written"
    assert list(tmp_path.iterdir()) == []


def test_input_arrays_are_untouched_by_reading(big_parts):
    """The parts are mapped read-only: a write through a view would raise, never reach the file."""
    src, _ = big_parts
    from migrate.sources import find_parts, open_parts

    parts = open_parts(find_parts(src))
    view = parts[0].raw(parts[0].index.tensors[0])
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = np.uint8(1)
