"""The benchmark suite: measures everything docs/benchmarks.md states and rewrites it, its plots and the
measured table of docs/loading.md.

    python bench/suite.py                   # the full suite (about 70 minutes on 2 quiet cores), rewrites docs/
    python bench/suite.py --quick           # a small smoke run, written to a temporary directory unless --out
    python bench/suite.py --only dequantize # one section (conversion, migration, llama3, open, ...)

The method is stated at the head of docs/benchmarks.md (report.write). Test files (about 25 GB in the full run)
live under --dir and are deleted at the end.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests" / "client"), str(ROOT / "tests")]  # tests: sdist, hf_fixtures
import child  # noqa: E402
import files  # noqa: E402
import report  # noqa: E402

from ggmlfmt.tools import cachestat  # noqa: E402 (evict: fadvise DONTNEED; residency: mincore)

log = logging.getLogger("bench")
PY = sys.executable
CHILD = [PY, str(Path(child.__file__))]
DISK = [os.stat(tempfile.gettempdir()).st_dev]  # the device settle() waits for (--dir's)


@dataclass(frozen=True)
class Plan:
    """What one run measures: sizes and rounds."""

    reps: int  # alternating rounds per figure (the median of these is reported)
    slice: tuple[int, int, int, int]  # conversion/migration slice: dim, heads, layers, vocabulary
    open_dim: int  # 147-tensor files (16 layers): 1024 -> 542 MB
    index_dim: int  # the 7B-shaped index (32 layers, 291 tensors) is small-dimensioned: the index is timed
    load_dims: tuple[int, ...]  # load vs size (16 layers, 32,000 tokens): 384 -> 0.11 GB, 2048 -> 1.9 GB
    cold_reps: int
    group_ns: tuple[int, ...]
    copy_dim: int
    n_vocab: int = 32000  # the "real" vocabulary of (b), (c), load, options, groups, copy
    warmup: bool = True  # one discarded round first
    options: tuple[str, ...] = ()  # the load options measured (all when empty)
    load_caches: tuple[str, ...] = ("warm", "cold")
    dequant: tuple[int, int] = (4096, 4096)  # rows, columns of the tensor of each type dequantized
    llama3: tuple[int, ...] = (4096, 32, 8, 2, 1024)  # dim, heads, KV heads, layers, multiple_of (Llama-3-8B widths)


FULL = Plan(5, (5120, 40, 2, 32000), 1024, 64, (384, 1024, 2048), 11, (1, 2, 4, 8), 2048)
QUICK = Plan(1, (256, 2, 1, 512), 128, 64, (128,), 1, (2,), 128, load_caches=("warm",), n_vocab=1000, warmup=False,
             options=("default", "prefault", "method=pread"), dequant=(64, 1024), llama3=(64, 4, 2, 1, 32))


def cached(path: Path, cache: str) -> float:
    """Bring the file to `cache` state ("cold": evicted, then checked with mincore; "warm": read through); the fraction cached."""
    if cache == "cold":
        return (cachestat.evict(path), cachestat.residency(path).fraction)[1]
    return (warm(path), 1.0)[1]


def warm(*paths: Path) -> None:
    """Read every file through once unless it is fully cached already."""
    for p in [p for p in paths if cachestat.residency(p).fraction < 0.999]:
        with open(p, "rb", buffering=0) as f, open(os.devnull, "wb") as null:
            shutil.copyfileobj(f, null, 16 << 20)


def load_run(loader: str, path: Path, *, cache: str = "warm", opts: dict[str, Any] | None = None,
             touch: bool = True) -> dict[str, Any]:
    """One load in a fresh process (bench/child.py), the file brought to `cache` state first. Raises RuntimeError."""
    before = cached(path, cache)
    cmd = [*CHILD, loader, str(path), "--options", json.dumps(opts or {})] + ([] if touch else ["--no-touch"])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode or not out.stdout.strip():
        raise RuntimeError(f"{loader} {path.name}: exit {out.returncode}: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"cached_before": before, "cached_after": cachestat.residency(path).fraction, "size": path.stat().st_size}


def settle(fresh: Path | None = None, quiet: float = 0.2, cap: float = 10.0) -> None:
    """Untimed, before a timed step: remove `fresh` (the last output; deleting 1.8 GB costs 0.6-0.9 s with `discard`),
    os.sync(), then wait (at most `cap` s) until the disk holding --dir has nothing in flight and has written and
    discarded nothing for `quiet` s: sync returns while ext4 is still writing its journal and discarding freed blocks."""
    if fresh is not None:
        fresh.unlink(missing_ok=True)
    os.sync()
    stat, t0 = Path(f"/sys/dev/block/{os.major(DISK[0])}:{os.minor(DISK[0])}/stat"), time.perf_counter()
    last = still = None
    while stat.exists() and time.perf_counter() - t0 < cap:
        f = stat.read_text().split()  # fields 7, 9, 14 (1-based): sectors written, in flight, sectors discarded
        now = (f[6], f[13] if len(f) > 13 else "") if f[8] == "0" else None
        still = time.perf_counter() if now is None or now != last else still
        if now is not None and time.perf_counter() - still >= quiet:
            return
        last = now
        time.sleep(0.01)


def cpu_wait() -> float:
    """Seconds that some task of this machine waited for a CPU, since boot (/proc/pressure/cpu; 0 without PSI)."""
    try:
        return int(Path("/proc/pressure/cpu").read_text().split()[4].split("=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return 0.0


def run(cmd: list[str], fresh: Path | None = None, sample: bool = False) -> tuple[float, int, float]:
    """One command in a fresh process after settle(fresh): its wall time, (when `sample`: /proc every 1 ms) the peak
    RssAnon in bytes of its process tree, and the machine's CPU wait meanwhile. Raises RuntimeError if it fails."""
    settle(fresh)
    with tempfile.TemporaryFile() as err:
        t0, w0, peak = time.perf_counter(), cpu_wait(), 0
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        while sample and proc.poll() is None:
            peak = max(peak, sum(child.status_kib(p, "RssAnon") for p in _tree(proc.pid)))
            time.sleep(0.001)
        elapsed = (proc.wait(), time.perf_counter() - t0)[1]
        if proc.returncode:
            raise RuntimeError(f"{shlex.join(cmd[:4])}: exit {proc.returncode}: "
                               f"{(err.seek(0), err.read())[1].decode(errors='replace').strip()[-300:]}")
    return elapsed, peak * 1024, cpu_wait() - w0


def _tree(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [q for k in kids for q in _tree(int(k))]


def clock(fn: Callable[..., Any], *args: Any) -> Callable[[], float]:
    """A step timing fn(*args) once in this process."""
    return lambda: timeit.timeit(lambda: fn(*args), number=1)


def cat(paths: list[Path], out: Path, fsync: bool = True) -> list[str]:
    """`cat paths > out` (then `sync out`: fsync), a command like any other: the floor of a durable converter."""
    return ["sh", "-c", 'cat "$@" > "$0"' + (' && sync "$0"' if fsync else ""), str(out), *map(str, paths)]


def rounds(steps: dict[str, Callable[[], Any]], plan: Plan, what: str) -> dict[str, list[Any]]:
    """Run every step once per round, in alternating order (forward, reversed); name -> results. A step that
    fails is recorded as {"error": ...} and dropped from later rounds."""
    runs: dict[str, list[Any]] = {name: [] for name in steps}
    for rep in range(-1 if plan.warmup else 0, plan.reps):
        for name in list(steps) if rep % 2 == 0 else list(steps)[::-1]:
            if runs[name] and isinstance(runs[name][-1], dict) and "error" in runs[name][-1]:
                continue
            try:
                value = steps[name]()
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                log.warning("%s: %s failed: %s", what, name, e)
                runs[name].append({"error": str(e)})
                continue
            if rep >= 0:
                runs[name].append(value)
        log.info("%s: round %d/%d done", what, rep + 1, plan.reps)
    return runs


def race(plan: Plan, what: str, inputs: list[Path], out: Path, cmds: dict[str, list[str]], also: tuple[Path, ...] = (),
         **extra: Callable[[], Any]) -> dict[str, Any]:
    """`cat inputs > out; fsync(out)` against every command (each writes `out`) and `extra` steps, in alternating
    rounds, with the machine's CPU wait during each; then each command's peak private memory (worst of up to 3
    runs; not of the cat floors) and a bare `python -c "import numpy"`'s, read by itself just after the import.
    Before every step the inputs and `also` (what other commands read) are cached again if a step evicted them
    (llama.cpp's q8_0 converter takes 25 GB): every contestant reads a warm page cache, as the floor does."""
    cmds, waits = {"cat + fsync": cat(inputs, out), **cmds}, {}

    def step(k: str) -> float:
        t, _, w = (warm(*inputs, *also), run(cmds[k], out))[1]
        waits.setdefault(k, []).append(w)
        return t
    times = rounds({**{k: (lambda k=k: step(k)) for k in cmds}, **extra}, plan, what)
    memory = {k: max(run(c, out, sample=True)[1] for _ in range(min(3, plan.reps))) for k, c in cmds.items()
              if not k.startswith("cat")}
    out.unlink(missing_ok=True)
    numpy = "import numpy, sys; sys.path.insert(0, 'bench'); import child; print(child.status_kib('self', 'RssAnon'))"
    return {"times": times, "cpu_wait": {k: v[-plan.reps:] for k, v in waits.items()}, "memory": memory,
            "numpy": int(subprocess.run([PY, "-c", numpy], capture_output=True, text=True, cwd=ROOT, check=True).stdout)
            * 1024, "input": [os.path.getsize(p) for p in inputs]}


def peer(tree: Path, script: str, *args: Any, env: tuple[str, ...] = ()) -> list[str]:
    """llama.cpp's converter tree/script with tree/gguf-py, its address space capped: they hold whole tensors in float32
    (q8_0 peaked at ~20x a 446 MB slice), so running out of memory fails that step, not the machine (24 GiB)."""
    return ["prlimit", f"--as={20 << 30}", "--", "env", f"PYTHONPATH={tree / 'gguf-py'}", *env, PY, str(tree / script),
            *map(str, args)]


def convert(src: Path, out: Path, outtype: str = "auto", fmt: str = "gguf") -> list[str]:
    return [PY, "-m", "convert.cli", str(src), "--outfile", str(out), "--format", fmt, "--outtype", outtype, "--quiet"]


def conversion(plan: Plan, work: Path) -> dict[str, Any]:
    """convert-model (f16, bf16 shards -> ggjt, GGUF f16/bf16/q8_0), convert_legacy_llama.py, cat; memory; q8_0."""
    import gguf
    import sdist  # tests/client: llama.cpp's own converters, from the llama-cpp-python sdist (fetched once)
    from meta import build_checkpoint  # tests/
    from convert.pth import open_checkpoint
    from ggmlfmt.blocks.quantize import quantize_rows_q8_0
    model, bf16 = (files.checkpoint(work / "ckpt", *plan.slice, 2, bf16=b) for b in (False, True))
    shards, tiny = sorted(model.glob("consolidated.*.pth")), build_checkpoint(work / "tiny")
    out, tree = work / "out", sdist.llama_cpp_tree()
    legacy = lambda outtype: peer(tree, "examples/convert_legacy_llama.py", model, "--vocab-dir", model.parent,  # noqa: E731
                                  "--outtype", outtype, "--outfile", out)
    cmds = {"ggjt": convert(model, out, fmt="ggjt"), "gguf": convert(model, out), "bf16": convert(bf16, out),
            "q8_0": convert(model, out, "q8_0"), "llama.cpp f16": legacy("f16"), "llama.cpp q8_0": legacy("q8_0")}
    r = race(plan, "conversion", shards, out, {"cat": cat(shards, out, False), **cmds, "help": [
        PY, "-m", "convert.cli", "--help"], "tiny": convert(tiny, out, fmt="ggjt")}, also=tuple(bf16.glob("*.pth")))
    ck = open_checkpoint(shards[0])  # our quantizer and gguf's, in process, on the same f16 layer matrices
    mats = [ck.array(n) for n, t in ck.tensors.items() if n.startswith("layers.") and len(t.shape) == 2]
    quants = {"ggmlfmt q8_0": quantize_rows_q8_0,
              "gguf.quants q8_0": lambda a: gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)}
    return {**r, "shape": plan.slice, "quantizers": rounds({k: clock(lambda f=f: [f(a) for a in mats])
                                                            for k, f in quants.items()}, plan, "q8_0 quantizers")}


def migration(plan: Plan, work: Path) -> dict[str, Any]:
    """migrate-old-weights of the same slice as 2-part ggmf f16, to ggjt and to GGUF, vs cat + fsync; memory."""
    (work / "ggmf").mkdir(exist_ok=True)
    parts, out = files.ggmf_parts(work / "ggmf" / "model-f16.bin", *plan.slice, 2), work / "out"
    return race(plan, "migration", parts, out, {f: [PY, "-m", "migrate", str(parts[0]), str(out), "--format", f,
                                                    "--quiet"] for f in ("ggjt", "gguf")})


def llama3(plan: Plan, work: Path) -> dict[str, Any]:
    """Llama-3-8B-shaped slice, bf16, 2 shards: Meta's layout (and its vocabulary build) and Hugging Face's against
    cat + fsync, and Hugging Face's against llama.cpp's convert_hf_to_gguf.py; memory."""
    import sdist
    from ggmlfmt.llama.tiktoken_vocab import load_tiktoken_vocab
    p, out, tree = files.llama3_params(*plan.llama3), work / "out", sdist.llama_cpp_tree()
    meta = files.llama3_meta(work / "llama3", p)
    vocab = clock(lambda: len(load_tiktoken_vocab(meta.parent / "tokenizer.model", "3.1").merges))
    r = {"shape": plan.llama3, "meta": race(plan, "llama3 meta", sorted(meta.glob("*.pth")), out, {
        "bf16": convert(meta, out), "q8_0": convert(meta, out, "q8_0")}, vocabulary=vocab)}
    hf = files.llama3_hf(work / "llama3-hf", p)
    theirs = lambda t: peer(tree, "convert_hf_to_gguf.py", hf, "--outfile", out, "--outtype", t, env=("NO_LOCAL_GGUF=1",))  # noqa: E731
    return {**r, "hf": race(plan, "llama3 hf", sorted(hf.glob("*.safetensors")), out, {
        "bf16": convert(hf, out), "q8_0": convert(hf, out, "q8_0"), "peer bf16": theirs("bf16"), "peer q8_0": theirs("q8_0")})}


def loaders(paths: dict[str, Path], names: tuple[str, ...], plan: Plan, what: str, **kw: Any) -> dict[str, list[Any]]:
    """Each loader's load_run on its format's file, in alternating rounds (the files warmed first)."""
    warm(*paths.values())
    return rounds({ld: (lambda ld=ld: load_run(ld, paths[child.LOADERS[ld][0]], **kw)) for ld in names}, plan, what)


def opening(plan: Plan, work: Path) -> dict[str, Any]:
    """Issue 12: the 147 tensors with 32 and 32,000 tokens, the 7B-shaped index, and cold opening."""
    small = files.write_set(work, plan.open_dim, 16, 32, ("ggjt", "safetensors"))
    real, index = (files.write_set(work, d, n, plan.n_vocab, ("ggjt", "gguf", "safetensors"))
                   for d, n in ((plan.open_dim, 16), (plan.index_dim, 32)))
    four, path = ("ggmlfmt", "ggmlfmt-gguf", "safetensors.load_file", "gguf.GGUFReader"), real["ggjt"]
    return {"v32": loaders(small, ("ggmlfmt", "safetensors.load_file", "memmap-floor"), plan, "open v32"),
            "v32000": loaders(real, four, plan, "open v32000"),
            "index": loaders(index, four, plan, "open 7B index", touch=False),
            "sizes": {"v32": os.path.getsize(small["ggjt"]), "v32000": os.path.getsize(path),
                      "index_gguf": os.path.getsize(index["gguf"]), "n_vocab": plan.n_vocab},
            "cold": rounds({"open": lambda: load_run("ggmlfmt", path, cache="cold", touch=False),
                            "open + touch": lambda: load_run("ggmlfmt", path, cache="cold"),  # evicted, then cat:
                            "cat > /dev/null": lambda: {"cached_before": cached(path, "cold"),
                                                        "total_s": run(["cat", str(path)])[0]}},
                           replace(plan, reps=plan.cold_reps), "cold open")}


OPTIONS = {", ".join(k if v is True else f"{k}={v}" for k, v in o.items()) or "default": o for o in (
    {}, {"prefault": True}, {"advice": "sequential"}, {"advice": "random"}, {"advice": "willneed"}, {"hugepages": True},
    {"lock": True}, {"method": "pread"}, {"method": "pread", "threads": 1}, {"method": "pread", "hugepages": True})}


def load_vs_size(plan: Plan, work: Path) -> dict[str, Any]:
    """Every loader, open + touch, at every size, warm and cold."""
    out: dict[str, Any] = {}
    for dim in plan.load_dims:
        paths = files.write_set(work, dim, 16, plan.n_vocab, ("ggjt", "gguf", "safetensors", "pt"))
        out[str(dim)] = {"size": os.path.getsize(paths["ggjt"]), **{
            c: loaders(paths, tuple(child.LOADERS), plan, f"load d{dim} {c}", cache=c) for c in plan.load_caches}}
    return out


def options(plan: Plan, work: Path) -> dict[str, Any]:
    """Every ggmlfmt.load option on the 147-tensor file, warm and cold."""
    path = files.write_set(work, plan.open_dim, 16, plan.n_vocab, ("ggjt",))["ggjt"]
    return {"size": os.path.getsize(path), **{c: rounds({n: (lambda o=o, c=c: load_run("ggmlfmt", path, cache=c, opts=o))
                                                          for n, o in OPTIONS.items() if n in (plan.options or OPTIONS)},
                                                         plan, f"options {c}") for c in ("warm", "cold")}}


def _group(loader: str, path: Path, n: int) -> dict[str, Any]:
    """N processes load + touch one file at once and hold it; private memory summed while all hold; RuntimeError."""
    warm(path)
    procs = [subprocess.Popen([*CHILD, loader, str(path), "--hold"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        lines = [p.stdout.readline() for p in procs]  # type: ignore[union-attr]
        pss = sum(child.status_kib(p.pid, "Pss") for p in procs) * 1024
    finally:
        errs = [p.communicate("\n", timeout=600)[1] for p in procs]
    if not all(line.strip() for line in lines):
        raise RuntimeError(f"{loader}: a child failed: {' | '.join(e.strip()[-200:] for e in errs)}")
    return {"anon_added": sum(json.loads(line)["anon_added"] for line in lines), "pss": pss}


def groups(plan: Plan, work: Path) -> dict[str, Any]:
    """N processes sharing one file: total private memory and PSS, per loader and N."""
    paths = files.write_set(work, plan.open_dim, 16, plan.n_vocab, ("ggjt", "safetensors", "pt"))
    steps = {f"{ld}|{n}": (lambda ld=ld, n=n: _group(ld, paths[child.LOADERS[ld][0]], n))
             for n in plan.group_ns for ld in ("ggmlfmt", "safetensors.load_file", "torch.load")}
    return {"size": os.path.getsize(paths["ggjt"]), "runs": rounds(steps, plan, "groups")}


COPIERS = {"ggmlfmt copy": lambda s, d: [PY, "-c", "import sys; from ggmlfmt.cli import main; sys.exit(main())", "copy", s,
                                         d, "--force", "--quiet"],
           "cp": lambda s, d: ["cp", s, d],
           "cp + sha256sum": lambda s, d: ["sh", "-c", 'cp "$0" "$1" && sha256sum "$0" "$1" >/dev/null', s, d]}


def copies(plan: Plan, work: Path) -> dict[str, Any]:
    """`ggmlfmt copy` vs cp (and cp + sha256sum), source cold and warm: time, what stays cached."""
    src, dst = files.write_set(work, plan.copy_dim, 16, plan.n_vocab, ("ggjt",))["ggjt"], work / "copy.bin"

    def one(method: str, cache: str) -> dict[str, Any]:  # the copy is removed before the next one (settle)
        before, t = cached(src, cache), run(COPIERS[method](str(src), str(dst)), fresh=dst)[0]
        return {"total_s": t, "src_before": before, "src_after": cachestat.residency(src).fraction,
                "dst_after": cachestat.residency(dst).fraction}
    return {"size": os.path.getsize(src), **{c: rounds({m: (lambda m=m, c=c: one(m, c)) for m in COPIERS}, plan,
                                                        f"copy {c}") for c in ("cold", "warm")}}


def dequantizing(plan: Plan, work: Path) -> dict[str, Any]:
    """ggmlfmt vs gguf.quants dequantizing the same tensor of each type (random quants, finite scales; not Q8_K)."""
    import gguf.quants
    import numpy as np
    from ggmlfmt.blocks.dequant import KERNELS, dequantize_blocks
    from ggmlfmt.constants import BLOCK_LAYOUTS, GGUF_BLOCK_GENERATION as GEN
    out, (rows, cols), rng = {}, plan.dequant, np.random.default_rng(0)
    np.seterr(all="ignore")  # gguf-py warns on the inf * 0 of huge MXFP4 scales; both make the same values
    np.ones(31 << 20, np.uint8)  # freed at once: glibc now keeps blocks up to 31 MiB for reuse (report.dequant_section)
    for t in [t for t in KERNELS if t in BLOCK_LAYOUTS[GEN] and t.name != "Q8_K"]:
        layout, q = BLOCK_LAYOUTS[GEN][t], gguf.GGMLQuantizationType[t.name]
        raw = np.frombuffer(rng.bytes(rows * cols // layout.elements * layout.nbytes), np.uint8).reshape(rows, -1).copy()
        for f in [f for f in ("d", "dmin", "m") if f in layout.dtype.names and layout.dtype[f] == "<f2"]:
            raw.view(layout.dtype)[f] = rng.uniform(-0.01, 0.01, (rows, cols // layout.elements))
        ours = raw.view(layout.dtype)
        same = np.array_equal(dequantize_blocks(ours, t, GEN).view("<u4"), gguf.quants.dequantize(raw, q).view("<u4"))
        steps = {"ggmlfmt": clock(dequantize_blocks, ours, t, GEN), "gguf.quants": clock(gguf.quants.dequantize, raw, q)}
        out[t.name] = {"times": rounds(steps, plan, f"dequantize {t.name}"), "identical": same, "output_bytes": 4 * rows * cols}
    return out


MEASURE = {"conversion": conversion, "migration": migration, "llama3": llama3, "open": opening, "load": load_vs_size,
           "options": options, "groups": groups, "copy": copies, "dequantize": dequantizing}


def machine(directory: Path) -> dict[str, str]:
    """Name -> value lines: what the numbers were measured on."""
    info = {k.strip(): v.strip() for f in ("/proc/cpuinfo", "/proc/meminfo") for k, v in
            (ln.split(":", 1) for ln in open(f) if ":" in ln)}
    real = os.path.realpath(directory)
    dev, mnt, fs, options = max((m[:4] for m in map(str.split, open("/proc/mounts"))
                                 if real == m[1] or real.startswith(m[1].rstrip("/") + "/")),
                                key=lambda m: len(m[1]), default=("?", "/", "?", "?"))
    installed = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    return {"CPU": info.get("model name", "?") + (" (virtual machine)" if "hypervisor" in info.get("flags", "?") else ""),
            "cores": str(os.cpu_count()), "memory": info.get("MemTotal", "?"), "kernel": platform.release(),
            "filesystem": f"{fs} on {dev} at {mnt} (files in {directory}; mount options {options})",
            "transparent huge pages": Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip(),
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "Python": platform.python_version() + (" (PYTHONDONTWRITEBYTECODE set; the suite byte-compiled the project "
                                                   "first)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""),
            "libraries": ", ".join(f"{d} {installed.get(d, 'not installed')}" for d in ("numpy", "torch", "safetensors", "gguf"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny files, one round: checks the machinery, not speed")
    p.add_argument("--only", choices=MEASURE, action="append", help="run this section (repeatable)")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the test files go; its filesystem is the one measured (default %(default)s)")
    p.add_argument("--out", type=Path, help="docs directory to write (default docs/, or a temporary one with --quick)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    logging.getLogger("gguf").setLevel(logging.WARNING)  # GGUFWriter's per-file chatter
    plan, start, DISK[0] = (QUICK if args.quick else FULL), time.time(), os.stat(args.dir).st_dev
    # Fresh interpreters would recompile the source under PYTHONDONTWRITEBYTECODE (0.2 s each); installs never do.
    for package in ("ggmlfmt", "convert", "migrate"):
        compileall.compile_dir(ROOT / package, quiet=1)
    out = args.out or (Path(tempfile.mkdtemp(prefix="ggmlfmt-bench-")) if args.quick else ROOT / "docs")
    meta = {"command": shlex.join(["python", "bench/suite.py", *(sys.argv[1:] if argv is None else argv)]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick, "plan": asdict(plan), "machine": machine(args.dir), "durations": {}}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ggmlfmt-bench-") as work:
        for name in args.only or MEASURE:
            t0 = time.time()
            try:
                results[name] = MEASURE[name](plan, Path(work))
            except Exception as e:  # noqa: BLE001 (one broken section must not lose the others; the doc says why)
                log.exception("section %s failed", name)
                results[name] = {"failed": f"{type(e).__name__}: {e}"}
            meta["durations"][name] = time.time() - t0
    meta["durations"]["total"] = time.time() - start
    print(f"wrote {report.write(out, results, meta)} in {meta['durations']['total'] / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
