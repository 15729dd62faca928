"""Build a pinned llama-cpp-python (2023 pre-GGUF, or a current GGUF one) in its own venv; stdlib only."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Versions we know how to build, with extra pins installed into their venv first.
# numpy<2: keep the numpy of the era (1.26) next to 2023 ctypes code; pip resolves the
# rest (typing-extensions; diskcache for 0.1.78) from the sdist's own metadata.
EXTRA_PINS: dict[str, list[str]] = {
    "0.1.48": ["numpy<2"],
    "0.1.78": ["numpy<2"],
    "0.3.36": [],  # current: its own metadata pins numpy>=1.20, diskcache, jinja2, typing-extensions
}
# CPU-only CMake flags per version; set whatever CMAKE_ARGS the caller has, so no GPU backend sneaks in.
_OLD_CPU_ARGS = "-DLLAMA_CUBLAS=OFF -DLLAMA_METAL=OFF -DLLAMA_CLBLAST=OFF"
CMAKE_ARGS: dict[str, str] = {
    "0.1.48": _OLD_CPU_ARGS,
    "0.1.78": _OLD_CPU_ARGS,
    # GGML_NATIVE=ON (-march=native): AVX-512 kernels on these CPUs, the code path the repacking
    # crash was seen on (README.md). OpenMP off: run_client uses 1 thread, and no spinning pool on
    # a shared 2-core machine. LLAVA_BUILD=OFF skips the multimodal library (not imported by llama_cpp).
    "0.3.36": " ".join([
        "-DGGML_NATIVE=ON", "-DGGML_OPENMP=OFF", "-DGGML_BLAS=OFF", "-DGGML_CUDA=OFF", "-DGGML_HIP=OFF",
        "-DGGML_VULKAN=OFF", "-DGGML_METAL=OFF", "-DGGML_OPENCL=OFF", "-DGGML_RPC=OFF", "-DGGML_CCACHE=OFF",
        "-DLLAVA_BUILD=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
    ]),
}
MARKER = ".ggmlfmt-client-ok"
# Where the test suite keeps its client venvs: shared between worktrees through the .cache symlink.
CLIENT_ROOT = Path(__file__).resolve().parents[2] / ".cache" / "clients"


def log(msg: str) -> None:
    """Print a progress line to stderr."""
    print(f"[setup_client] {msg}", file=sys.stderr, flush=True)


def venv_python(venv: Path) -> Path:
    """Return the interpreter path inside a venv."""
    return venv / "bin" / "python"


def is_ready(venv: Path, version: str) -> bool:
    """True if the venv was completed earlier and still imports the right llama_cpp."""
    marker = venv / MARKER
    if not marker.is_file() or marker.read_text().strip() != version:
        return False
    py = venv_python(venv)
    if not py.exists():
        return False
    probe = subprocess.run(
        [str(py), "-c", "import llama_cpp, importlib.metadata as m; print(m.version('llama_cpp_python'))"],
        capture_output=True,
        text=True,
    )
    return probe.returncode == 0 and probe.stdout.strip() == version


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Run a command, streaming its output to our stderr; raise on failure."""
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr, stderr=sys.stderr, env=env)


def _fix_paths(venv: Path, old: str, new: str) -> None:
    """Rewrite the build-time venv path in bin/ scripts (shebangs, activate) after renaming."""
    for f in (venv / "bin").iterdir():
        if f.is_symlink() or not f.is_file():
            continue
        try:
            text = f.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if old in text:
            f.write_text(text.replace(old, new))
    cfg = venv / "pyvenv.cfg"
    if cfg.is_file():
        cfg.write_text(cfg.read_text().replace(old, new))


def _pid_alive(pid: int) -> bool:
    """True if a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_builds(root: Path, version: str) -> None:
    """Delete temp build dirs left behind by killed builders of this version."""
    for d in root.glob(f".building-{version}-*"):
        try:
            pid = int(d.name.split("-")[2])
        except (IndexError, ValueError):
            pid = -1
        if pid != os.getpid() and not (pid > 0 and _pid_alive(pid)):
            log(f"removing stale build dir {d}")
            shutil.rmtree(d, ignore_errors=True)


def _build(version: str, root: Path, final: Path) -> None:
    """Build the venv in a temp dir under root, then rename it to final."""
    tmp = Path(tempfile.mkdtemp(prefix=f".building-{version}-{os.getpid()}-", dir=root))
    venv = tmp / "venv"
    try:
        _run([sys.executable, "-m", "venv", str(venv)])
        py = str(venv_python(venv))
        env = dict(os.environ)
        # CPU build; never let a GPU backend sneak in from the caller's environment.
        env["CMAKE_ARGS"] = CMAKE_ARGS.get(version, _OLD_CPU_ARGS)
        env["FORCE_CMAKE"] = "1"
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        pins = EXTRA_PINS.get(version, [])
        if pins:
            _run([py, "-m", "pip", "install", *pins], env=env)
        _run(
            [py, "-m", "pip", "install", "--no-cache-dir", "--no-binary", "llama-cpp-python",
             f"llama-cpp-python=={version}", *pins],
            env=env,
        )
        (venv / MARKER).write_text(version + "\n")
        os.rename(venv, final)
        _fix_paths(final, str(venv), str(final))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_client(version: str, root: Path) -> Path:
    """Create root/llama-cpp-python-<version> (idempotent, process-safe) and return its python path."""
    root = Path(root).resolve()
    final = root / f"llama-cpp-python-{version}"
    if is_ready(final, version):
        return venv_python(final)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{version}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per version; others wait, then reuse
        if is_ready(final, version):
            log(f"{final} was built by another process")
            return venv_python(final)
        _remove_stale_builds(root, version)
        if final.exists():
            log(f"removing incomplete {final}")
            shutil.rmtree(final)
        log(f"building llama-cpp-python {version} from source (0.1.x: ~20-35 s, 0.3.x: minutes on 2 cores)")
        t0 = time.monotonic()
        _build(version, root, final)
        if not is_ready(final, version):
            raise RuntimeError(f"llama-cpp-python {version} built but does not import from {final}")
        log(f"built llama-cpp-python {version} in {time.monotonic() - t0:.0f} s -> {final}")
    return venv_python(final)


def run_client(python: Path, model: Path, tokens: list[int], n_ctx: int = 64, vocab_only: bool = False,
               extra: list[str] | None = None, timeout: float = 600) -> dict:
    """Run run_client.py under a client venv's python; return its JSON, raise RuntimeError with stderr on failure."""
    script = Path(__file__).with_name("run_client.py")
    cmd = [str(python), str(script), str(model), json.dumps(list(tokens)), str(n_ctx)]
    if vocab_only:
        cmd.append("vocab_only")
    proc = subprocess.run(cmd + list(extra or []), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} run_client.py {model} exited {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout)


def main(argv: list[str]) -> int:
    """CLI: setup_client.py VERSION [ROOT] -> prints the venv python path."""
    if len(argv) not in (2, 3):
        print("usage: setup_client.py VERSION [ROOT=.cache/clients]", file=sys.stderr)
        return 2
    root = Path(argv[2]) if len(argv) == 3 else Path(".cache/clients")
    print(ensure_client(argv[1], root))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
