"""Helpers shared by the test modules that need ggmlfmt itself: tiny headers, the memory probe, the clients.

Helpers that restate the format (the split rule, the shard splitter, encoders) live in builders.py, which
must not import the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ggmlfmt import HParams, Vocab, save

TESTS = Path(__file__).resolve().parent
MIB = 1 << 20

# ---------------------------------------------------------------------------------------------------------
# Headers and vocabularies for files whose header does not matter to the test


def tiny_vocab(n: int) -> Vocab:
    """n one-byte tokens b"a", b"b", ... with zero scores."""
    return Vocab(tuple(bytes([ord("a") + i]) for i in range(n)), np.zeros(n, np.float32))


def tiny_header(n_vocab: int = 2, n_embd: int = 32, n_mult: int = 32, n_head: int = 1, n_layer: int = 1,
                n_rot: int = 32, ftype: int = 1) -> tuple[HParams, Vocab]:
    """Hyper-parameters and a matching tiny vocabulary (n_vocab tokens)."""
    return HParams(n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype), tiny_vocab(n_vocab)


# ---------------------------------------------------------------------------------------------------------
# Memory probe: a fresh interpreter, so nothing the test process allocated blurs the numbers. RssAnon is
# private memory (heap, copies); RssFile/RssShmem are pages of the mapped file (shared with the page cache).

_PROBE_HEAD = r"""
import json, sys

def status():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024
    return fields

def touch_every_page(b):
    # b: a flat byte view; one byte per page, and the last page
    return int(b[::4096].sum()) + int(b[-1])
"""


def probe_memory(body: str, path: Path) -> dict[str, Any]:
    """Run `body` (which has status() and touch_every_page(); sys.argv[1] is `path`) and parse the JSON it prints."""
    out = subprocess.run([sys.executable, "-c", _PROBE_HEAD + body, str(path)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def rss_file(status: dict[str, int]) -> int:
    """Resident pages of mapped files: a file on tmpfs is counted as shmem."""
    return status["RssFile"] + status.get("RssShmem", 0)


BIG_MIB = 128  # the file of the memory tests: at least 100 MB of tensor data


def write_big_model(path: Path) -> tuple[int, int]:
    """LLaMA-like f16 matrices and f32 vectors totalling BIG_MIB MiB; returns (data bytes, page checksum)."""
    rng = np.random.default_rng(0)
    tensors, checksum = {}, 0
    for i in range(BIG_MIB // 8):
        tensors[f"layers.{i}.w.weight"] = np.full((2048, 2048), i + 1, np.float16)  # 8 MiB each
        tensors[f"layers.{i}.norm.weight"] = rng.standard_normal(4096).astype(np.float32)
    for a in tensors.values():
        b = a.reshape(-1).view(np.uint8)
        checksum += int(b[::4096].sum()) + int(b[-1])
    hp, vocab = tiny_header(n_embd=2048, n_mult=256, n_head=16, n_layer=BIG_MIB // 8, n_rot=128)
    save(path, tensors, hparams=hp, vocab=vocab)
    return sum(a.nbytes for a in tensors.values()), checksum


# ---------------------------------------------------------------------------------------------------------
# The real llama-cpp-python clients (tests/client)


def client_python(version: str) -> Path:
    """The python of the llama-cpp-python `version` venv, built on first use; a build failure fails the test."""
    import setup_client  # tests/client, on sys.path by conftest

    try:
        return setup_client.ensure_client(version, setup_client.CLIENT_ROOT)
    except Exception as e:  # noqa: BLE001 - any build failure must fail the test, with the reason
        pytest.fail(f"could not build llama-cpp-python {version} in {setup_client.CLIENT_ROOT}: {e}")


# ---------------------------------------------------------------------------------------------------------
# A command run with some top-level modules unimportable: argv is BLOCKED (comma-separated), the package
# whose every module is imported first (so a module-level import of a blocked one shows), then the CLI's
# arguments. It prints "rc=... tried=[modules it tried] loaded=[blocked modules in sys.modules]".

_BLOCKER = r"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = tuple(sys.argv.pop(1).split(","))
PACKAGE = sys.argv.pop(1)
TRIED = []
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            TRIED.append(name)
            raise ImportError(f"{name} is made unimportable by this test")
        return None
sys.meta_path.insert(0, Blocker())
package = importlib.import_module(PACKAGE)
for mod in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
    if mod.name != PACKAGE + ".__main__":
        __import__(mod.name)
rc = importlib.import_module(PACKAGE + ".cli").main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(f"rc={rc} tried={TRIED} loaded={loaded}")
"""


def run_with_unimportable(blocked: str, package: str, args: list[str], *,
                          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `package`.cli.main(args) in a fresh interpreter where the modules in `blocked` cannot be imported.

    This checkout comes first on its PYTHONPATH, whatever the venv's editable install points at.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", _BLOCKER, blocked, package, *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
