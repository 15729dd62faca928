"""--rusage reports this process's own peak, in readable units, on stderr only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import ggmlfmt
from ggmlfmt.tools import rusage


def test_report_has_every_quantity_with_units():
    text = rusage.report(rusage.measure(0.0))
    for word in ("wall time", "peak RSS", "CPU time", "in the kernel", "major from disk", "minor in memory",
                 "voluntary", "block I/O"):
        assert word in text
    assert text.count("\n") == 5


def test_peak_is_the_command_s_own_not_its_parent_s(tmp_path, header):
    path = tmp_path / "m.bin"
    hp, vocab = header(n_vocab=1)
    ggmlfmt.save(path, {"w": np.zeros((4, 32), np.float16)}, hparams=hp, vocab=vocab)
    ballast = np.ones(600 << 20, np.uint8)  # this test process now has > 600 MiB resident
    r = subprocess.run([sys.executable, "-m", "ggmlfmt.cli", "verify", str(path), "--rusage"], capture_output=True,
                       text=True, check=True)
    assert r.stdout == "OK\n"  # the report goes to stderr, results alone to stdout
    peak = next(line for line in r.stderr.splitlines() if "peak RSS" in line)
    value, unit = peak.split()[-2:]
    assert unit == "MiB" and float(value.replace(",", "")) < 300, peak
    del ballast


def test_wall_time_covers_the_whole_process_like_the_cpu_time():
    r = subprocess.run([sys.executable, "-c", "import time; t = time.time(); exec('while time.time() - t < 0.3: pass'); "
                        "from ggmlfmt.tools import rusage; print(rusage.measure(time.perf_counter()).wall_s)"],
                       capture_output=True, text=True, check=True)
    assert float(r.stdout) >= 0.3  # the busy 0.3 s before measure() was called count, as they do for CPU time


def test_a_command_name_that_is_not_utf8_does_not_break_the_report():
    """/proc/self/status starts with Name:, the command's bytes as the kernel keeps them (prctl PR_SET_NAME):
    read as strict UTF-8 it raised UnicodeDecodeError after the work was done (--rusage)."""
    code = ("import ctypes, sys\n"
            "ctypes.CDLL(None).prctl(15, b'\\xff\\xfepy', 0, 0, 0)\n"
            "assert open('/proc/self/status', 'rb').read().startswith(b'Name:\\t\\xff\\xfepy')  # the case is real\n"
            "from ggmlfmt.tools import rusage\n"
            "print(rusage._peak_rss_kib(-1))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 1000  # VmHWM in KiB, read from the file, not the fallback -1
