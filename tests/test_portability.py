"""Where mincore, mlock, sync_file_range or `resource` are missing (macOS, Windows), the core still works.

Each test runs a fresh interpreter whose prelude takes the facilities away the way such a system
would: ctypes answers AttributeError for the hidden C symbols (what it does for a symbol the
library does not export) and `import resource` raises ImportError. Outputs are compared with
files written and arrays made by this (unrestricted) process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import builders
import ggmlfmt
from ggmlfmt.tools import libc
from ggmlfmt import writer as writer_module
from migrate import migrate_file

REPO = Path(__file__).resolve().parents[1]
HIDDEN = ("mincore", "mlock", "sync_file_range")

_PRELUDE = textwrap.dedent("""
    import ctypes, importlib.abc, sys
    HIDDEN = {hidden!r}

    class _WithoutSymbols(ctypes.CDLL):  # ctypes raises AttributeError for a symbol the library lacks
        def __getattr__(self, name):
            if name in HIDDEN:
                raise AttributeError(f"{{name}}: undefined symbol (hidden by the test)")
            return super().__getattr__(name)

        def __getitem__(self, name):
            if name in HIDDEN:
                raise AttributeError(f"{{name}}: undefined symbol (hidden by the test)")
            return super().__getitem__(name)

    class _NoResource(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "resource":
                raise ImportError("No module named 'resource' (hidden by the test)")
            return None

    ctypes.CDLL = _WithoutSymbols
    sys.modules.pop("resource", None)
    sys.meta_path.insert(0, _NoResource())
""").format(hidden=set(HIDDEN))

# Checks that the prelude took effect, then loads and saves; prints one JSON line.
_LOAD_AND_SAVE = textwrap.dedent("""
    import hashlib, json, numpy as np
    import ggmlfmt
    from ggmlfmt import writer
    from ggmlfmt.tools import libc
    try:
        import resource
        has_resource = True
    except ImportError:
        has_resource = False
    model = ggmlfmt.load(sys.argv[1])
    digests = {n: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for n, v in model.tensors.items()}
    writer.WRITEBACK_BYTES = 4096  # so the writer asks for writeback many times while saving
    arrays = {n: np.array(v) for n, v in model.tensors.items()}
    ggmlfmt.save(sys.argv[2], arrays, hparams=model.hparams, vocab=model.vocab)
    print(json.dumps({"digests": digests, "resource": has_resource,
                      "available": {n: libc.available(n) for n in HIDDEN}}))
""")

# Runs the ggmlfmt command once per JSON argv in sys.argv[1]; prints [rc, stdout, stderr] for each.
_COMMANDS = textwrap.dedent("""
    import contextlib, io, json
    from ggmlfmt.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
        results.append([rc, out.getvalue(), err.getvalue()])
    print(json.dumps(results))
""")


def _run(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _PRELUDE + body, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, check=False)


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {"tok_embeddings.weight": rng.standard_normal((300, 64)).astype(np.float16),
            "norm.weight": rng.standard_normal(64).astype(np.float32)}


def _model(path: Path) -> Path:
    hp = ggmlfmt.HParams(n_vocab=2, n_embd=64, n_mult=64, n_head=2, n_layer=1, n_rot=32, ftype=1)
    ggmlfmt.save(path, _tensors(), hparams=hp, vocab=ggmlfmt.Vocab((b"a", b"b"), np.zeros(2, np.float32)))
    return path


def test_import_load_and_save_work_without_the_missing_facilities(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.bin")
    proc = _run(_LOAD_AND_SAVE, str(src), str(tmp_path / "out.bin"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["available"] == {n: False for n in HIDDEN}, "the prelude must hide the symbols"
    assert report["resource"] is False, "the prelude must hide the resource module"
    want = {n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in _tensors().items()}
    assert report["digests"] == want
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()  # writeback was a no-op, the file the same


def test_migrate_old_weights_works_without_the_missing_facilities(tmp_path: Path) -> None:
    hp = builders.llama_hparams(n_vocab=300, dim=128, n_mult=64, n_head=2, n_layer=2, ftype=2)
    parts = builders.build_parts("ggmf", hp, builders.llama_vocab(300), builders.llama_tensors(hp, "Q4_0", seed=5), 2)
    for k, data in enumerate(parts):
        (tmp_path / ("model.bin" if k == 0 else f"model.bin.{k}")).write_bytes(data)
    migrate_file(tmp_path / "model.bin", tmp_path / "reference.bin")
    body = "from migrate.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = _run(body, str(tmp_path / "model.bin"), str(tmp_path / "out.bin"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "reference.bin").read_bytes()


def test_options_needing_a_missing_facility_fail_with_one_line_naming_it(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.bin")
    cases: list[tuple[list[str], str | None]] = [
        (["load", str(src), "--touch"], None),  # the default needs none of them
        (["load", str(src), "--method", "pread"], None),
        (["load", str(src), "--lock"], "mlock"),
        (["residency", str(src)], "mincore"),
        (["copy", str(src), str(tmp_path / "copy.bin")], "mincore"),
        (["verify", str(src), "--rusage"], "resource module"),
    ]
    proc = _run(_COMMANDS, json.dumps([argv for argv, _ in cases]))
    assert proc.returncode == 0, proc.stderr
    for (argv, missing), (rc, out, err) in zip(cases, json.loads(proc.stdout)):
        if missing is None:
            assert (rc, err) == (0, ""), argv
            assert "loaded 2 tensors" in out
        else:
            assert rc == 1 and err.count("\n") == 1 and err.startswith("ggmlfmt: error: "), (argv, err)
            assert missing in err and ("not available" in err or "lacks" in err), (argv, err)
            assert out == "", argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]  # the refused copy left nothing


def test_import_and_default_load_bind_no_c_function_and_import_no_diagnostics(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.bin")
    code = textwrap.dedent("""
        import json, sys
        import ggmlfmt
        model = ggmlfmt.load(sys.argv[1])
        ggmlfmt.load(sys.argv[1], mode="c")
        modules = sorted(m for m in sys.modules if m in {"ggmlfmt.tools.libc", "ggmlfmt.tools.loadopts", "ggmlfmt.tools.cachestat",
                         "ggmlfmt.tools.copying", "ggmlfmt.tools.rusage", "concurrent.futures", "hashlib", "resource"})
        from ggmlfmt.tools import libc
        print(json.dumps({"modules": modules,
                          "bound": sorted(libc._bound), "library_opened": libc._library.cache_info().currsize,
                          "tensors": len(model.tensors)}))
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=True)
    assert json.loads(proc.stdout) == {"modules": [], "bound": [], "library_opened": 0, "tensors": 2}


# ---------------------------------------------------------------------------------------------------------------
# The bindings themselves (in this process)


def test_a_missing_symbol_is_enosys_naming_the_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(libc._bound, "mlock", None)
    assert not libc.available("mlock")
    with pytest.raises(OSError, match=r"mlock: not available on this system") as e:
        libc.call("mlock", 0, 0)
    assert e.value.errno == errno.ENOSYS
    with pytest.raises(OSError, match="lock needs mlock") as e:
        ggmlfmt.load(_model(tmp_path / "m.bin"), lock=True)
    assert e.value.errno == errno.ENOSYS


def test_the_symbols_are_real_here() -> None:
    # the other side of the simulation: on this Linux machine every binding resolves and works
    assert all(libc.available(n) for n in HIDDEN)
    with pytest.raises(OSError) as e:
        libc.call("mincore", 1, 1, 0)  # an unaligned address: EINVAL from the kernel, named
    assert e.value.errno == errno.EINVAL and e.value.strerror.startswith("mincore: ")


def test_writer_starts_writeback_and_does_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(writer_module, "WRITEBACK_BYTES", 4096)
    monkeypatch.setitem(libc._bound, "sync_file_range", lambda *args: calls.append(args) or 0)
    reference = _model(tmp_path / "a.bin")
    assert calls and all(c[1:] == (0, 0, libc.SYNC_FILE_RANGE_WRITE) for c in calls)
    monkeypatch.setitem(libc._bound, "sync_file_range", None)  # as on macOS: nothing to call
    assert _model(tmp_path / "b.bin").read_bytes() == reference.read_bytes()
