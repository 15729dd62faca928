"""Interrupted conversions lose nothing: SIGINT, SIGTERM and SIGKILL at random points of a convert-model subprocess.

After every kill: no file under the final name unless it is the complete, correct file; the inputs hash
the same; SIGINT/SIGTERM leave no temporary file; and a rerun succeeds with the right bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convert import convert_checkpoint
from meta import Checkpoint, build

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("CONVERT_KILL_SEED", time.time_ns() % 10**6))
HANDLED = {signal.SIGINT: 130, signal.SIGTERM: 143}  # exit status once ggmlfmt.command.run handles the signal


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, str, dict[str, str]]:
    """A ~55 MB f16 checkpoint (2 shards), the sha256 of its f32 conversion, and the inputs' hashes."""
    root = tmp_path_factory.mktemp("interrupt")
    ck = build(root, 2, dim=512, n_heads=8, n_layers=8, multiple_of=256)
    ref = root / "reference.bin"
    convert_checkpoint(ck.model_dir, ref, outtype="f32")
    inputs = {str(p): _sha(p) for p in [*ck.paths, ck.model_dir / "params.json", ck.tokenizer]}
    return ck, _sha(ref), inputs


def _temps(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.name.endswith(".tmp")]


def _start(ck: Checkpoint, out: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "convert.cli", str(ck.model_dir), "--outfile", str(out), "--outtype", "f32",
           "--quiet"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_temp(d: Path, proc: subprocess.Popen[bytes], limit: float = 60) -> None:
    """Return once the writer's temporary file exists (the write phase began) or the process ended."""
    end = time.monotonic() + limit
    while not _temps(d) and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
@pytest.mark.parametrize("when", ["anytime", "writing", "writing-late"])
def test_a_killed_conversion_leaves_no_partial_file(tmp_path: Path, model: tuple[Checkpoint, str, dict[str, str]],
                                                    sig: signal.Signals, when: str) -> None:
    ck, want, inputs = model
    rng = random.Random(f"{SEED}-{sig.name}-{when}")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.bin"
    proc = _start(ck, out)
    if when == "anytime":
        time.sleep(rng.uniform(0, 2.5))  # often during start-up and planning (torch import)
    else:
        _wait_for_temp(out_dir, proc)
        time.sleep(rng.uniform(0, 0.05) if when == "writing" else rng.uniform(0.05, 0.4))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    note = f"seed {SEED}, {sig.name} {when}, exit {proc.returncode}: {err.decode(errors='replace')[-500:]}"

    if out.exists():  # only the whole, correct file may ever carry the final name (a kill may land after
        assert _sha(out) == want, note  # the rename, e.g. during the directory fsync or interpreter exit)
    if sig in HANDLED:
        assert not _temps(out_dir), note
        assert proc.returncode in (HANDLED[sig], -sig, 0, 1), note  # -sig/1: killed before the handler was set
        if proc.returncode == HANDLED[sig]:
            assert err.decode().strip().endswith("nothing was left half-written"), note
    assert {p: _sha(Path(p)) for p in inputs} == inputs, note

    convert_checkpoint(ck.model_dir, out, outtype="f32", force=out.exists())  # the rerun
    assert _sha(out) == want, note
    assert not _temps(out_dir), note  # a SIGKILLed run's temp file is cleaned up by the rerun
