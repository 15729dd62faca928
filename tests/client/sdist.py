"""llama.cpp's own Python converters, from the llama-cpp-python sdist (stdlib only; tests and bench only).

`llama_cpp_tree(version)` downloads the sdist once per machine with pip (`pip download --no-binary`),
unpacks it under `.cache/sdist/` (shared between worktrees through the .cache symlink, flock-ed like
the client builds) and returns its vendored llama.cpp directory: `examples/convert_legacy_llama.py`,
`convert_hf_to_gguf.py` and `gguf-py/` (put that on PYTHONPATH to run them).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_ROOT = Path(__file__).resolve().parents[2] / ".cache" / "sdist"
VERSION = "0.3.36"


def llama_cpp_tree(version: str = VERSION, root: Path = SDIST_ROOT) -> Path:
    """root/llama_cpp_python-<version>/vendor/llama.cpp, fetched and unpacked on first use."""
    final = root / f"llama_cpp_python-{version}"
    tree = final / "vendor" / "llama.cpp"
    if (tree / "examples" / "convert_legacy_llama.py").is_file():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{version}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (tree / "examples" / "convert_legacy_llama.py").is_file():
            return tree
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            name = f"llama_cpp_python-{version}.tar.gz"
            if not (root / name).is_file():
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                f"llama-cpp-python=={version}", "-d", tmp], check=True, stdout=sys.stderr)
                os.replace(Path(tmp) / name, root / name)
            with tarfile.open(root / name) as tar:
                tar.extractall(tmp, filter="data")
            if final.exists():
                shutil.rmtree(final)
            os.replace(Path(tmp) / final.name, final)
    return tree


def run_legacy_converter(model_dir: Path, vocab_dir: Path, outtype: str, outfile: Path,
                         version: str = VERSION, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run examples/convert_legacy_llama.py with its vendored gguf-py (this interpreter: needs torch,
    numpy, sentencepiece). Raises CalledProcessError when it fails."""
    tree = llama_cpp_tree(version)
    env = {**os.environ, "PYTHONPATH": str(tree / "gguf-py")}
    return subprocess.run([sys.executable, str(tree / "examples" / "convert_legacy_llama.py"), str(model_dir),
                           "--vocab-dir", str(vocab_dir), "--outtype", outtype, "--outfile", str(outfile)],
                          env=env, capture_output=True, text=True, timeout=timeout, check=True)
