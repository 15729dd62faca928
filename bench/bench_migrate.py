"""Benchmark migrate-old-weights: throughput as a ratio to `cat` of the same parts, and peak private memory.

For each model size: write a LLaMA-shaped multi-part ggmf model (f16 matrices, f32 norms; random bytes),
warm the page cache, then time N interleaved runs of `cat parts > out; fsync` and of the command
`python -m migrate SRC DST --force --quiet` (which fsyncs too), each in its own process, and report
medians. Separately, sample RssAnon (private memory) and RssFile of the migrate process from
/proc/PID/status every millisecond; the peak must not grow with the model.

    python bench/bench_migrate.py --sizes 256,1024,4096 --parts 2 --runs 9 [--dir /dev/shm]
    python bench/bench_migrate.py --dim 5120 --layers 2 --runs 5   # the 13B-shaped slice of bench_convert

Works in a fresh directory under --dir (default: the system temp directory), removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ggmlfmt import GGMLType, HParams, TensorSpec, Vocab
from ggmlfmt.constants import FileVersion
from ggmlfmt.layout import plan
from ggmlfmt.parts import split_axis
from ggmlfmt.writer import FileWriter
from _sampling import peak_rss  # bench/ is sys.path[0] when a bench script runs

REPO = Path(__file__).resolve().parents[1]
N_VOCAB, DIM, N_MULT, N_HEAD = 32000, 1024, 256, 8
MiB = 1 << 20


@dataclass(frozen=True)
class Result:
    size_mib: float
    n_layer: int
    cat_s: list[float]
    migrate_s: list[float]
    rss_anon_kib: int
    rss_file_kib: int


def n_ff(dim: int) -> int:
    return ((2 * (4 * dim) // 3 + N_MULT - 1) // N_MULT) * N_MULT


def shapes(n_layer: int) -> dict[str, tuple[int, ...]]:
    """Full PyTorch shapes in Meta key order."""
    h = n_ff(DIM)
    out = {"tok_embeddings.weight": (N_VOCAB, DIM), "norm.weight": (DIM,), "output.weight": (N_VOCAB, DIM)}
    for i in range(n_layer):
        p = f"layers.{i}."
        out |= {p + "attention.wq.weight": (DIM, DIM), p + "attention.wk.weight": (DIM, DIM),
                p + "attention.wv.weight": (DIM, DIM), p + "attention.wo.weight": (DIM, DIM),
                p + "feed_forward.w1.weight": (h, DIM), p + "feed_forward.w2.weight": (DIM, h),
                p + "feed_forward.w3.weight": (h, DIM), p + "attention_norm.weight": (DIM,),
                p + "ffn_norm.weight": (DIM,)}
    return out


def layers_for(size_mib: int) -> int:
    """Layer count that brings the f16 model closest to size_mib."""
    fixed = 2 * N_VOCAB * DIM * 2
    per_layer = (4 * DIM * DIM + 3 * DIM * n_ff(DIM)) * 2 + 2 * DIM * 4
    return max(1, round((size_mib * MiB - fixed) / per_layer))


def shard_shape(name: str, shape: tuple[int, ...], n_parts: int) -> tuple[int, ...]:
    axis = split_axis(name, len(shape))
    return shape if axis is None else tuple(n // n_parts if i == axis else n for i, n in enumerate(shape))


def write_parts(src: Path, n_layer: int, n_parts: int) -> list[Path]:
    """The old multi-part ggmf files (src, src.1, ...), tensor data from one reused random buffer."""
    hp = HParams(N_VOCAB, DIM, N_MULT, N_HEAD, n_layer, DIM // N_HEAD, 1)
    vocab = Vocab(tuple(f"t{i}".encode() for i in range(N_VOCAB)), -np.arange(N_VOCAB, dtype=np.float32))
    noise = np.random.default_rng(0).integers(0, 256, 16 * MiB, dtype=np.uint8)
    paths = []
    for k in range(n_parts):
        specs = [TensorSpec.from_shape(n, GGMLType.F32 if len(s) == 1 else GGMLType.F16, shard_shape(n, s, n_parts))
                 for n, s in shapes(n_layer).items()]
        layout = plan(FileVersion.GGMF_V1, hp, vocab, specs)
        path = src if k == 0 else src.with_name(f"{src.name}.{k}")
        with FileWriter(path, layout, overwrite=True) as w:
            for t in layout.tensors:
                if len(t.ne) == 1:
                    w.write_tensor(t.name, np.ones(t.ne[0], np.float32))  # replicated: identical in every part
                    continue
                for r in range(0, t.n_rows, max(1, len(noise) // t.row_bytes)):
                    rows = min(len(noise) // t.row_bytes, t.n_rows - r)
                    w.write_region(t.name, noise[: rows * t.row_bytes].reshape(rows, t.row_bytes), row=r)
        paths.append(path)
    return paths


def read_through(paths: list[Path]) -> None:
    """Warm the page cache with every byte of the parts."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(16 * MiB):
                pass


def time_cat(paths: list[Path], out: Path) -> float:
    os.sync()  # untimed: start with no dirty pages from the previous run, so writeback does not leak across runs
    start = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(["cat", *map(str, paths)], stdout=f, check=True)
        os.fsync(f.fileno())  # migrate fsyncs its output before the rename; so must the baseline
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


def migrate_cmd(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "migrate", str(src), str(dst), "--force", "--quiet"]


def time_migrate(src: Path, dst: Path) -> float:
    os.sync()
    start = time.perf_counter()
    subprocess.run(migrate_cmd(src, dst), check=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


def peak_memory(src: Path, dst: Path) -> tuple[int, int]:
    """Run migrate once, sampling /proc/PID/status; peak RssAnon and RssFile in KiB."""
    peak = peak_rss(migrate_cmd(src, dst), REPO)
    dst.unlink()
    return peak


def baseline_anon() -> int:
    """RssAnon of a process that has imported everything migrate needs and done nothing (KiB)."""
    code = "import migrate.cli, time; print(open('/proc/self/status').read())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return next(int(line.split()[1]) for line in out.splitlines() if line.startswith("RssAnon:"))


def bench_size(workdir: Path, size_mib: int, n_parts: int, runs: int) -> Result:
    n_layer = -size_mib if size_mib < 0 else layers_for(size_mib)  # negative: a layer count (--layers)
    src = workdir / "model.bin"
    paths = write_parts(src, n_layer, n_parts)
    total = sum(p.stat().st_size for p in paths)
    read_through(paths)
    time_cat(paths, workdir / "cat.out")  # warm-up of both, not measured
    time_migrate(src, workdir / "out.bin")
    cat_s, mig_s = [], []
    for i in range(runs):  # interleaved, alternating which goes first, so drift hits both alike
        pair = [lambda: cat_s.append(time_cat(paths, workdir / "cat.out")),
                lambda: mig_s.append(time_migrate(src, workdir / "out.bin"))]
        for run in pair if i % 2 == 0 else pair[::-1]:
            run()
    anon, file = max(peak_memory(src, workdir / "out.bin") for _ in range(3))
    for p in paths:
        p.unlink()
    return Result(total / MiB, n_layer, cat_s, mig_s, anon, file)


def report(results: list[Result], n_parts: int, runs: int, base_kib: int) -> str:
    lines = [f"{n_parts}-part ggmf f16 models (n_embd {DIM}, n_vocab {N_VOCAB}), warm page cache, median of "
             f"{runs} interleaved runs; each run is a fresh process and includes fsync of the output.", "",
             "| parts total | layers | cat + fsync | migrate-old-weights | cat MB/s | migrate MB/s | "
             "migrate / cat throughput | peak RssAnon | peak RssFile |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cat, mig = statistics.median(r.cat_s), statistics.median(r.migrate_s)
        mb = r.size_mib * MiB / 1e6
        lines.append(f"| {r.size_mib:,.0f} MiB | {r.n_layer} | {cat:.3f} s | {mig:.3f} s | {mb / cat:,.0f} | "
                     f"{mb / mig:,.0f} | {cat / mig:.2f} | {r.rss_anon_kib / 1024:.1f} MiB | "
                     f"{r.rss_file_kib / 1024:.1f} MiB |")
    lines += ["", f"RssAnon of a process that only imported migrate (numpy included): {base_kib / 1024:.1f} MiB.",
              "Raw times (s): " + "; ".join(f"{r.size_mib:,.0f} MiB cat {[round(x, 3) for x in r.cat_s]} "
                                            f"migrate {[round(x, 3) for x in r.migrate_s]}" for r in results)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global DIM, N_HEAD
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,1024", help="model sizes in MiB, comma-separated")
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dim", type=int, default=DIM, help="n_embd (5120 with --layers 2: the 13B-shaped slice)")
    ap.add_argument("--layers", type=int, help="a model of this many layers instead of --sizes")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                    help="parent of the private working directory (its filesystem is what is measured)")
    args = ap.parse_args(argv)
    DIM, N_HEAD = args.dim, args.dim // 128  # LLaMA's head size is 128
    sizes = [int(s) for s in args.sizes.split(",")] if args.layers is None else [-args.layers]
    need = 3 * max(max(sizes), 2048) * MiB
    free = shutil.disk_usage(args.dir).free
    if free < need:
        print(f"bench_migrate: need {need / MiB:,.0f} MiB free in {args.dir}, have {free / MiB:,.0f}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="ggmlfmt-bench-migrate-", dir=args.dir))
    try:
        results = [bench_size(workdir, s, args.parts, args.runs) for s in sizes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}\n")
    print(report(results, args.parts, args.runs, baseline_anon()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
