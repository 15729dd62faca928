"""Benchmark convert-model on a 13B-shaped slice: wall time as a ratio to `cat` of the shards, and peak private memory.

The checkpoint: Meta's layout with LLaMA-13B widths (dim 5120, 40 heads, n_ff 13824, vocab 32000),
`--layers` layers (default 2), split into 2 f16 shards like Meta's 13B release, plus a 32000-piece
tokenizer.model. With the page cache warm, time N interleaved runs (order alternating) of

    cat consolidated.00.pth consolidated.01.pth > out                 (plain, as a user would)
    cat ... > out; fsync(out)                                         (the same durability as convert-model)
    python -m convert.cli MODEL_DIR --outfile out --force --quiet     (a fresh process, numpy only)

and report medians and ratios, plus the start-up: `convert-model --help`, and a conversion of the
tiny demo checkpoint. Separately, sample RssAnon (private memory) of the converter from
/proc/PID/status every millisecond and compare its peak with a bare `python -c "import numpy"`.

    python bench/bench_convert.py --runs 5

Writes nothing outside --workdir (default bench/out/convert), which it removes at the end (--keep to keep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from convert.checkpoint import save_shard
from convert.demo import build_checkpoint, params_json
from convert.params import Params
from ggmlfmt.tokenizer import train_tokenizer
from ggmlfmt.parts import split_axis
from _sampling import peak_rss  # bench/ is sys.path[0] when a bench script runs

REPO = Path(__file__).resolve().parents[1]
DIM, N_HEADS, MULTIPLE_OF, N_VOCAB, N_SHARDS = 5120, 40, 256, 32000, 2  # LLaMA-13B
MiB = 1 << 20


@dataclass(frozen=True)
class Result:
    shard_bytes: list[int]
    output_bytes: int
    cat_s: list[float]
    cat_fsync_s: list[float]
    convert_s: list[float]
    help_s: list[float]
    tiny_s: list[float]
    rss_anon_kib: int
    rss_file_kib: int
    baseline_anon_kib: int


def shard_tensors(p: Params, k: int, noise: np.ndarray) -> dict[str, np.ndarray]:
    """Shard k of a LLaMA checkpoint in Meta key order: f16 data cut from a reused noise buffer."""
    from convert.convert import llama_shapes

    out = {}
    for name, shape in llama_shapes(p, N_VOCAB).items():
        axis = split_axis(name, len(shape))
        if axis is None:
            out[name] = np.ones(shape, np.float16)  # replicated tensors are identical in every shard
            continue
        shard = tuple(n // N_SHARDS if i == axis else n for i, n in enumerate(shape))
        out[name] = np.resize(np.roll(noise, k), shard)
    out["rope.freqs"] = np.ones(p.n_rot // 2, np.float16)
    return out


def build(root: Path, n_layers: int) -> tuple[Path, list[Path]]:
    """tokenizer.model in root, params.json and the shards in root/13B-slice."""
    p = Params(DIM, MULTIPLE_OF, N_HEADS, n_layers, -1)
    train_tokenizer(root / "tokenizer.model", N_VOCAB)
    noise = np.random.default_rng(0).standard_normal(16 * MiB).astype(np.float16)
    model_dir = root / "13B-slice"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "params.json").write_text(json.dumps(params_json(p)))
    paths = []
    for k in range(N_SHARDS):  # one shard in memory at a time
        paths.append(model_dir / f"consolidated.{k:02d}.pth")
        save_shard(paths[-1], shard_tensors(p, k, noise))
    return model_dir, paths


def read_through(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(16 * MiB):
                pass


OUTTYPE = ["--outtype", "f16"]  # main() may change it


def convert_cmd(model_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "convert.cli", str(model_dir), "--outfile", str(out), "--force", "--quiet",
            *OUTTYPE]


def time_cat(paths: list[Path], out: Path, fsync: bool) -> float:
    os.sync()  # untimed: no dirty pages of an earlier step are written back during this one
    start = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(["cat", *map(str, paths)], stdout=f, check=True)
        if fsync:
            os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


def time_convert(model_dir: Path, out: Path) -> float:
    os.sync()
    start = time.perf_counter()
    subprocess.run(convert_cmd(model_dir, out), check=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


def time_help() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "convert.cli", "--help"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_memory(model_dir: Path, out: Path) -> tuple[int, int]:
    """Run the converter once, sampling /proc/PID/status; peak RssAnon and RssFile in KiB."""
    peak = peak_rss(convert_cmd(model_dir, out), REPO)
    out.unlink()
    return peak


def baseline_anon() -> int:
    """RssAnon (KiB) of a bare `python -c "import numpy"`, read by the process itself after the import."""
    code = "import numpy; print(open('/proc/self/status').read())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return next(int(line.split()[1]) for line in out.splitlines() if line.startswith("RssAnon:"))


def run(workdir: Path, n_layers: int, runs: int, reuse: bool) -> Result:
    model_dir = workdir / "13B-slice"
    paths = sorted(model_dir.glob("consolidated.*.pth"))
    if not (reuse and len(paths) == N_SHARDS):
        model_dir, paths = build(workdir, n_layers)
    tiny = build_checkpoint(workdir / "tiny-root")
    read_through(paths)
    out = workdir / "out.bin"
    time_cat(paths, out, True)  # warm-up, not measured
    time_convert(model_dir, out)
    os.sync()
    output_bytes = _output_size(model_dir, out)
    cat_s, cat_fsync_s, convert_s, help_s, tiny_s = [], [], [], [], []
    for i in range(runs):  # interleaved, alternating order, so drift hits all alike
        steps = [lambda: cat_s.append(time_cat(paths, out, False)),
                 lambda: cat_fsync_s.append(time_cat(paths, out, True)),
                 lambda: convert_s.append(time_convert(model_dir, out)),
                 lambda: help_s.append(time_help()),
                 lambda: tiny_s.append(time_convert(tiny, workdir / "tiny.bin"))]
        for step in steps if i % 2 == 0 else steps[::-1]:
            step()
            os.sync()  # quiesce: no step pays for the write-back of the one before
    anon, file = max(peak_memory(model_dir, out) for _ in range(3))
    return Result([p.stat().st_size for p in paths], output_bytes, cat_s, cat_fsync_s, convert_s, help_s, tiny_s,
                  anon, file, baseline_anon())


def _output_size(model_dir: Path, out: Path) -> int:
    subprocess.run(convert_cmd(model_dir, out), check=True, cwd=REPO)
    size = out.stat().st_size
    out.unlink()
    return size


def report(r: Result, n_layers: int, runs: int) -> str:
    keys = ("cat_s", "cat_fsync_s", "convert_s", "help_s", "tiny_s")
    med = {k: statistics.median(getattr(r, k)) for k in keys}
    mb = sum(r.shard_bytes) / 1e6
    lines = [
        f"13B-shaped slice: dim {DIM}, {N_HEADS} heads, {n_layers} layers, vocab {N_VOCAB}, {N_SHARDS} f16 shards "
        f"of {', '.join(f'{b / MiB:,.0f}' for b in r.shard_bytes)} MiB; output ({OUTTYPE[1]}) "
        f"{r.output_bytes / MiB:,.0f} MiB. "
        f"Warm page cache, median of {runs} interleaved runs, each a fresh process.", "",
        "| what | median | MB/s | convert-model / this |", "|---|---|---|---|",
        f"| cat shards > out | {med['cat_s']:.3f} s | {mb / med['cat_s']:,.0f} | "
        f"{med['convert_s'] / med['cat_s']:.2f}x |",
        f"| cat shards > out; fsync | {med['cat_fsync_s']:.3f} s | {mb / med['cat_fsync_s']:,.0f} | "
        f"{med['convert_s'] / med['cat_fsync_s']:.2f}x |",
        f"| convert-model (fsyncs) | {med['convert_s']:.3f} s | {mb / med['convert_s']:,.0f} | 1.00x |",
        f"| convert-model --help (start-up) | {med['help_s']:.3f} s | | |",
        f"| convert-model of the tiny demo checkpoint | {med['tiny_s']:.3f} s | | |", "",
        f"Peak RssAnon of convert-model: {r.rss_anon_kib / 1024:.1f} MiB; bare `python -c \"import numpy\"`: "
        f"{r.baseline_anon_kib / 1024:.1f} MiB; difference {(r.rss_anon_kib - r.baseline_anon_kib) / 1024:+.1f} MiB. "
        f"Peak RssFile (page cache mapped from the shards, shared, not private): {r.rss_file_kib / 1024:,.0f} MiB.",
        "", "Raw times (s): " + json.dumps({k: [round(x, 3) for x in getattr(r, k)]
                                           for k in keys}),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "convert")
    ap.add_argument("--outtype", choices=["f16", "f32"], default="f16",
                    help="convert-model --outtype (f32 doubles the output and casts every chunk)")
    ap.add_argument("--json", type=Path, help="also write the raw result here")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    ap.add_argument("--reuse", action="store_true", help="reuse a checkpoint kept by an earlier --keep run")
    args = ap.parse_args(argv)
    OUTTYPE[1] = args.outtype
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_mib = (2 * N_VOCAB * DIM + args.layers * (4 * DIM * DIM + 3 * DIM * 13824)) * 2 / MiB
    need, free = (4.2 if args.outtype == "f32" else 3.2) * model_mib * MiB, shutil.disk_usage(args.workdir).free
    if free < need:
        print(f"bench_convert: need {need / MiB:,.0f} MiB free in {args.workdir}, have {free / MiB:,.0f}",
              file=sys.stderr)
        return 1
    try:
        result = run(args.workdir, args.layers, args.runs, args.reuse)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}\n")
    print(report(result, args.layers, args.runs))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
