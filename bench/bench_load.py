"""Loading benchmark (issue 2): ggmlfmt.load against safetensors, GGUF and a bare numpy.memmap.

The same ~0.5 GB of LLaMA-shaped tensors (147: f16 matrices, f32 norms, 32k-token vocabulary) is
written as ggjt (ggmlfmt.save), safetensors and GGUF (gguf-py's GGUFWriter). With the page cache warm,
every measurement runs in a fresh process, the loaders interleaved round by round, and the median of
the rounds is reported:

  open        opening with every tensor available as an array (ggmlfmt.load, safetensors.torch.load_file,
              gguf.GGUFReader); imports happen before the clock starts
  open+touch  opening, then reading one byte of every page of every tensor; the floor is a bare
              numpy.memmap of the whole file with every page touched the same way
  private     RssAnon added by open+touch (private memory: heap and copies, not the shared page cache)

    python bench/bench_load.py                  # writes bench/out/load/, prints a markdown report
    python bench/bench_load.py --runs 9 --report docs/bench_load.md
    python bench/bench_load.py --index --runs 5     # issue 12: 147 tensors x {32, 32000} tokens, 7B-shaped index

--index (issue 12) writes three sets under --dir: the 147 tensors at --dim (default 1024: 542 MB per
format) with a 32-entry and with a 32,000-entry vocabulary, and a 7B-shaped index (291 tensors,
32,000 tokens, dim 64: the index is what is timed), and reports per set the median open and
open + touch of ggmlfmt.load, safetensors.torch.load_file (same tensors), gguf.GGUFReader and the
memmap floor, with the ratios issue 12 sets targets for. `--index --dim 64` is its smallest run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
N_VOCAB = 32000
N_MULT = 256
PAGE = os.sysconf("SC_PAGE_SIZE")
LOADERS = ("ggmlfmt", "floor", "safetensors", "gguf")
FILE_OF = {"ggmlfmt": "model.bin", "floor": "model.bin", "safetensors": "model.safetensors", "gguf": "model.gguf",
           "ggmlfmt-gguf": "model.gguf"}
TARGETS = {"open_speedup": 4.0, "touch_ratio": 1.25, "private_mib": 8.0}
# Issue 12's index sets: name -> (layers, vocabulary entries, dim or None for --dim). 16 layers = 147
# tensors, 32 layers = 291 (7B-shaped); the 7B-shaped one is small-dimensioned: the index is what is timed.
INDEX_SETS = {"147-v32": (16, 32, None), "147-v32000": (16, N_VOCAB, None), "7b-index": (32, N_VOCAB, 64)}
INDEX_TARGETS = {"147-v32": 4.0, "147-v32000": 1.0}  # open speed-up over safetensors.torch.load_file
# GGUF hook: once ggmlfmt reads GGUF (ggmlfmt/gguf.py), pass --ggmlfmt-gguf to time ggmlfmt.load on the
# model.gguf of every set as the loader "ggmlfmt-gguf" (issue 12: >= 1x safetensors, >= 100x GGUFReader).


# ---------------------------------------------------------------- the files


def llama_shapes(dim: int, n_layer: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (PyTorch shape, numpy dtype) in Meta key order: f16 matrices, f32 norms.

    The embeddings always have N_VOCAB rows, whatever the vocabulary section holds: the tensors (and
    the safetensors file) stay the same when only the vocabulary's size changes.
    """
    ff = ((2 * (4 * dim) // 3 + N_MULT - 1) // N_MULT) * N_MULT  # the 2023 loader's n_ff
    out = {"tok_embeddings.weight": ((N_VOCAB, dim), "<f2"), "norm.weight": ((dim,), "<f4"),
           "output.weight": ((N_VOCAB, dim), "<f2")}
    for i in range(n_layer):
        p = f"layers.{i}."
        out.update({f"{p}attention.{w}.weight": ((dim, dim), "<f2") for w in ("wq", "wk", "wv", "wo")})
        out.update({f"{p}feed_forward.w1.weight": ((ff, dim), "<f2"), f"{p}feed_forward.w2.weight": ((dim, ff), "<f2"),
                    f"{p}feed_forward.w3.weight": ((ff, dim), "<f2"),
                    f"{p}attention_norm.weight": ((dim,), "<f4"), f"{p}ffn_norm.weight": ((dim,), "<f4")})
    return out


def make_tensors(dim: int, n_layer: int) -> dict[str, np.ndarray]:
    """Finite random values, cheaply: one random MiB tiled (the bytes do not change load times)."""
    tile = np.random.default_rng(0).standard_normal(1 << 18).astype(np.float32)
    out = {}
    for name, (shape, dtype) in llama_shapes(dim, n_layer).items():
        n = int(np.prod(shape))
        out[name] = np.resize(tile, n).astype(dtype).reshape(shape)
    return out


def make_vocab(n_vocab: int = N_VOCAB) -> tuple[list[bytes], np.ndarray]:
    """A SentencePiece/LLaMA-like vocabulary: <unk>, two empty control tokens, 256 byte tokens, then words."""
    tokens = [" \u2047 ".encode(), b"", b""] + [bytes([i]) for i in range(256)]
    tokens += [f" w{i}".encode() for i in range(max(n_vocab - len(tokens), 0))]
    return tokens[:n_vocab], -np.arange(n_vocab, dtype=np.float32) / 100


def write_files(out: Path, dim: int, n_layer: int, n_vocab: int = N_VOCAB) -> dict[str, Path]:
    """Write the three files (reused when present for the same shapes and vocabulary)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "stamp.json"
    wanted = {"dim": dim, "n_layer": n_layer, "n_vocab": n_vocab}
    paths = {loader: out / name for loader, name in FILE_OF.items()}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted and all(p.exists() for p in paths.values()):
        return paths
    import gguf
    from safetensors.numpy import save_file

    import ggmlfmt

    tensors = make_tensors(dim, n_layer)
    tokens, scores = make_vocab(n_vocab)
    hp = ggmlfmt.HParams(n_vocab, dim, N_MULT, max(dim // 128, 1), n_layer, 128, int(ggmlfmt.FType.MOSTLY_F16))
    ggmlfmt.save(paths["ggmlfmt"], tensors, hparams=hp, vocab=ggmlfmt.Vocab(tuple(tokens), scores))
    save_file(tensors, str(paths["safetensors"]))
    w = gguf.GGUFWriter(str(paths["gguf"]), arch="llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores.tolist())
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    stamp.write_text(json.dumps(wanted))
    return paths


# ---------------------------------------------------------------- one measurement, in a fresh process


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def _touch(arrays: list[Any]) -> int:
    """Read one byte of every page of every array (and its last byte); returns a checksum."""
    total = 0
    for a in arrays:
        b = a.reshape(-1).view(np.uint8)
        if b.size:
            total += int(b[::PAGE].sum()) + int(b[-1])
    return total


def child(loader: str, path: str) -> dict[str, Any]:
    """Open `path` with `loader`, then touch every page; time both and measure RssAnon."""
    if loader in ("ggmlfmt", "ggmlfmt-gguf"):  # the same call; the file (ggjt or GGUF) is what differs
        import ggmlfmt

        def open_all() -> tuple[Any, list[Any]]:
            model = ggmlfmt.load(path)
            return model, [model.tensors[n] for n in model.tensors]  # every view made: open is complete
    elif loader == "floor":
        def open_all() -> tuple[Any, list[Any]]:
            data = np.memmap(path, dtype=np.uint8, mode="r")
            return data, [data]
    elif loader == "safetensors":
        from safetensors.torch import load_file

        def open_all() -> tuple[Any, list[Any]]:
            tensors = load_file(path)
            return tensors, [t.numpy() for t in tensors.values()]  # numpy() shares the memory; for touching
    elif loader == "gguf":
        from gguf import GGUFReader

        def open_all() -> tuple[Any, list[Any]]:
            reader = GGUFReader(path)
            return reader, [t.data for t in reader.tensors]
    else:
        raise SystemExit(f"unknown loader {loader}")
    anon0 = _rss_anon()
    t0 = time.perf_counter()
    keep, arrays = open_all()  # `keep` holds the map (or tensors) alive until the measuring is done
    t1 = time.perf_counter()
    checksum = _touch(arrays)
    t2 = time.perf_counter()
    anon_open = _rss_anon()  # after touching too: what open+touch added
    return {"loader": loader, "open_s": t1 - t0, "touch_s": t2 - t1, "open_touch_s": t2 - t0,
            "private_bytes": anon_open - anon0, "tensors": len(arrays) if loader != "floor" else None,
            "checksum": checksum}


def breakdown(path: str, reps: int = 15) -> dict[str, float]:
    """Where ggmlfmt's open time goes: map, vocabulary walk, whole index, views (best of `reps`, seconds)."""
    from ggmlfmt import layout, reader

    def best(f: Any) -> float:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    data = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(data)
    index = layout.decode_index(buf)
    vocab_at = index.header_size
    return {
        "map_s": best(lambda: np.memmap(path, dtype=np.uint8, mode="r")),
        "vocab_s": best(lambda: layout.decode_vocab(layout._Cursor(buf, vocab_at), index.hparams.n_vocab, True)),
        "index_s": best(lambda: layout.decode_index(buf)),
        "views_s": best(lambda: [reader.tensor_view(data, t) for t in index.tensors]),
    }


def measure(loader: str, path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", loader, str(path)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------- driver and report


def warm(paths: dict[str, Path]) -> None:
    """Read every file once so all runs see a warm page cache."""
    for p in set(paths.values()):
        with open(p, "rb", buffering=0) as f:
            while f.read(1 << 24):
                pass


def run(paths: dict[str, Path], runs: int, loaders: tuple[str, ...] = LOADERS) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {loader: [] for loader in loaders}
    for loader in loaders:  # one discarded round: first-touch effects of a new process image
        measure(loader, paths[loader])
    for r in range(runs):
        order = loaders[r % len(loaders):] + loaders[: r % len(loaders)]  # rotate: no loader always goes first
        for loader in order:
            results[loader].append(measure(loader, paths[loader]))
        print(f"round {r + 1}/{runs}: " + ", ".join(
            f"{k} {results[k][-1]['open_s'] * 1e3:.1f}/{results[k][-1]['open_touch_s'] * 1e3:.1f} ms" for k in loaders),
            file=sys.stderr)
    return results


def run_index_sets(root: Path, dim: int, runs: int, with_gguf: bool) -> dict[str, Any]:
    """Issue 12: every INDEX_SETS file, the loaders interleaved round by round; raw runs per set."""
    loaders = LOADERS + (("ggmlfmt-gguf",) if with_gguf else ())
    out = {}
    for name, (n_layer, n_vocab, set_dim) in INDEX_SETS.items():
        files = write_files(root / name, set_dim or dim, n_layer, n_vocab)
        paths = {**files, "ggmlfmt-gguf": files["gguf"]}
        warm(paths)
        print(f"set {name}:", file=sys.stderr)
        out[name] = {"dim": set_dim or dim, "n_layer": n_layer, "n_vocab": n_vocab,
                     "size": files["ggmlfmt"].stat().st_size, "runs": run(paths, runs, loaders)}
    return out


def index_report(sets: dict[str, Any], runs: int, command: str) -> str:
    """Markdown: per set, median open (and open + touch) per loader, and the ratios issue 12 asks for."""
    lines = [f"Machine: {machine()}.", "",
             f"Warm page cache; median of {runs} interleaved rounds, each measurement in a fresh process.", "",
             "| set | tensors | vocabulary | ggjt MB | loader | open (ms) | open + touch (ms) | private (MiB) |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    notes = []
    for name, s in sets.items():
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("open_s", "open_touch_s", "private_bytes")}
               for k, v in s["runs"].items()}
        for k, m in med.items():
            lines.append(f"| {name} | {s['runs']['ggmlfmt'][0]['tensors']} | {s['n_vocab']} | {s['size'] / 1e6:.0f} "
                         f"| {k} | {m['open_s'] * 1e3:.2f} | {m['open_touch_s'] * 1e3:.1f} "
                         f"| {m['private_bytes'] / 2**20:.1f} |")
        speed = med["safetensors"]["open_s"] / med["ggmlfmt"]["open_s"]
        touch = med["ggmlfmt"]["open_touch_s"] / med["floor"]["open_touch_s"]
        target = INDEX_TARGETS.get(name)
        verdict = f" (target >= {target:g}x: {_ok(speed >= target)})" if target else ""
        notes.append(f"- {name}: open {speed:.2f}x faster than safetensors.torch.load_file{verdict}, "
                     f"{med['gguf']['open_s'] / med['ggmlfmt']['open_s']:.0f}x faster than GGUFReader; "
                     f"open + touch {touch:.2f}x the memmap floor; "
                     f"private {med['ggmlfmt']['private_bytes'] / 2**20:.2f} MiB.")
        if "ggmlfmt-gguf" in med:
            g = med["ggmlfmt-gguf"]["open_s"]
            notes.append(f"  - GGUF through ggmlfmt.load: {med['safetensors']['open_s'] / g:.2f}x safetensors, "
                         f"{med['gguf']['open_s'] / g:.0f}x GGUFReader.")
    return "\n".join(lines + [""] + notes + ["", f"Command: `{command}`"])


def _ok(good: bool) -> str:
    return "met" if good else "MISSED"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    versions = []
    for mod in ("numpy", "torch", "safetensors", "gguf"):
        try:
            from importlib.metadata import version
            versions.append(f"{mod} {version(mod)}")
        except Exception:  # noqa: BLE001 (only a label)
            pass
    return (f"{cpu}, {os.cpu_count()} cores, {mem / 2**20:.0f} GiB RAM; Linux {platform.release()}; "
            f"Python {platform.python_version()}; " + ", ".join(versions))


def report(results: dict[str, list[dict[str, Any]]], paths: dict[str, Path], runs: int, command: str) -> str:
    fields = ("open_s", "touch_s", "open_touch_s", "private_bytes")
    med = {k: {f: statistics.median(r[f] for r in v) for f in fields} for k, v in results.items() if k in LOADERS}
    parts = results["breakdown"][0]
    speed_st = med["safetensors"]["open_s"] / med["ggmlfmt"]["open_s"]
    speed_gg = med["gguf"]["open_s"] / med["ggmlfmt"]["open_s"]
    ratio = med["ggmlfmt"]["open_touch_s"] / med["floor"]["open_touch_s"]
    private = med["ggmlfmt"]["private_bytes"] / 2**20
    size = paths["ggmlfmt"].stat().st_size
    lines = [
        f"Machine: {machine()}.",
        f"File: {size / 1e9:.3f} GB ggjt, {results['ggmlfmt'][0]['tensors']} tensors, {N_VOCAB}-token vocabulary; "
        f"safetensors {paths['safetensors'].stat().st_size / 1e9:.3f} GB, "
        f"GGUF {paths['gguf'].stat().st_size / 1e9:.3f} GB. "
        f"Warm page cache; median of {runs} interleaved rounds, each measurement in a fresh process.",
        "",
        "| loader | open (ms) | touch (ms) | open + touch (ms) | private memory added (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {"ggmlfmt": "ggmlfmt.load", "floor": "numpy.memmap of the whole file (floor)",
             "safetensors": "safetensors.torch.load_file", "gguf": "gguf.GGUFReader"}
    for k in LOADERS:
        m = med[k]
        lines.append(f"| {names[k]} | {m['open_s'] * 1e3:.1f} | {m['touch_s'] * 1e3:.1f} "
                     f"| {m['open_touch_s'] * 1e3:.1f} "
                     f"| {m['private_bytes'] / 2**20:.1f} |")
    ms = {k: med[k]["open_s"] * 1e3 for k in LOADERS}
    lines += [
        "",
        f"- open: ggmlfmt {ms['ggmlfmt']:.1f} ms, safetensors.torch.load_file {ms['safetensors']:.1f} ms: speed-up "
        f"{speed_st:.2f}x (target >= {TARGETS['open_speedup']:.0f}x: {_ok(speed_st >= TARGETS['open_speedup'])}); "
        f"GGUFReader {ms['gguf']:.0f} ms: speed-up {speed_gg:.0f}x.",
        f"- where ggmlfmt's open goes (best of 15, in one process): map {parts['map_s'] * 1e3:.2f} ms, whole index "
        f"{parts['index_s'] * 1e3:.1f} ms of which the {N_VOCAB}-entry vocabulary {parts['vocab_s'] * 1e3:.1f} ms, "
        f"{results['ggmlfmt'][0]['tensors']} views {parts['views_s'] * 1e3:.2f} ms.",
        f"- open + touch: {ratio:.2f}x the floor (target <= {TARGETS['touch_ratio']}x: "
        f"{_ok(ratio <= TARGETS['touch_ratio'])}).",
        f"- private memory added by open + touch: {private:.2f} MiB (target < {TARGETS['private_mib']:.0f} MB: "
        f"{_ok(private * 2**20 < TARGETS['private_mib'] * 1e6)}).",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=2, metavar=("LOADER", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, default=HERE / "out" / "load",
                   help="where the files go (default: bench/out/load)")
    p.add_argument("--runs", type=int, default=7, help="interleaved rounds; the median is reported (default 7)")
    p.add_argument("--dim", type=int, default=1024, help="model width (default 1024: ~0.54 GB with 16 layers)")
    p.add_argument("--layers", type=int, default=16, help="layers (default 16: 3 + 16 * 9 = 147 tensors)")
    p.add_argument("--report", type=Path, help="also write the markdown report to this file")
    p.add_argument("--json", type=Path, help="also write every raw measurement to this file")
    p.add_argument("--index", action="store_true",
                   help="issue 12: 147 tensors with a 32- and a 32,000-entry vocabulary (at --dim) and a 7B-shaped "
                        "index (291 tensors, 32,000 tokens, dim 64)")
    p.add_argument("--ggmlfmt-gguf", action="store_true", help="with --index: also ggmlfmt.load on the GGUF files")
    args = p.parse_args(argv)
    if args.child:
        loader, path = args.child
        print(json.dumps(breakdown(path) if loader == "breakdown" else child(loader, path)))
        return 0
    if args.runs < 5:
        p.error("--runs must be at least 5")
    command = "python bench/bench_load.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.index:
        sets = run_index_sets(args.dir, args.dim, args.runs, args.ggmlfmt_gguf)
        text = index_report(sets, args.runs, command.strip())
        print(text)
        if args.report:
            args.report.write_text(text + "\n")
        if args.json:
            args.json.write_text(json.dumps(sets, indent=1))
        return 0
    paths = write_files(args.dir, args.dim, args.layers)
    warm(paths)
    results = run(paths, args.runs)
    results["breakdown"] = [measure("breakdown", paths["ggmlfmt"])]
    command = "python bench/bench_load.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(results, paths, args.runs, command.strip())
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
