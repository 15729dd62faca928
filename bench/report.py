"""docs/benchmarks.md, its plots (docs/img/*.png), the spliced table of docs/loading.md, from one run's results. Every
section renders whatever was measured; a missed target is stated with its number, a failed measurement with its error.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

MiB = 1 << 20


def done(values: list[Any], key: str | None = None) -> list[Any]:
    """The measured values of a step (`key` of each when given), its failures ({"error": ...}) left out."""
    return [v if key is None else v[key] for v in values if not (isinstance(v, dict) and "error" in v)]


med = lambda values, key=None: statistics.median(done(values, key)) if done(values, key) else None  # noqa: E731
ratio = lambda a, b: None if a is None or not b else a / b  # noqa: E731
ms = lambda s: "–" if s is None else (f"{s * 1e3:,.0f} ms" if s >= 0.1 else f"{s * 1e3:,.2f} ms")  # noqa: E731
mib = lambda b: "–" if b is None else f"{b / MiB:,.1f} MiB"  # noqa: E731
x = lambda r: "–" if r is None else (f"{r:,.2f}×" if r < 10 else f"{r:,.0f}×")  # noqa: E731
pct = lambda f: "–" if f is None else f"{100 * f:.1f}%"  # noqa: E731
vs = lambda v, base, fmt=ms: f"{fmt(v)} ({x(ratio(v, base))})"  # noqa: E731  (a value and its ratio to base)
gb = lambda r: f"{r['size'] / 1e9:.2f} GB"  # noqa: E731  (a section's file size)


def table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def errors(*groups: dict[str, list[Any]]) -> str:
    bad = [f"- `{k}` failed: {v['error']}" for runs in groups for k, vs in runs.items() for v in vs
           if isinstance(v, dict) and "error" in v]
    return "\n\nFailed runs (left out of the medians):\n\n" + "\n".join(bad) if bad else ""


class Targets(list[list[str]]):
    """The target rows of one run: what, measured, goal, met or missed."""

    def check(self, what: str, value: float | None, shown: str, goal: str, met: bool | None) -> str:
        verdict = "not measured" if value is None else ("met" if met else "**missed**")
        self.append([what, shown, goal, verdict])
        return f"{shown} (target {goal}: {verdict})"

    def times(self, what: str, value: float | None, bound: float, most: bool = False) -> str:
        return self.check(what, value, x(value), f"{'≤' if most else '≥'} {bound}×",
                          value is not None and (value <= bound if most else value >= bound))


# step -> (its row in the tables, its goal × cat + fsync or None, ours: memory ≤ +64 MB above numpy is a target too)
CONVERT_GOALS = {
    "ggjt": ("`convert-model` → ggjt f16", 1.25, True), "gguf": ("`convert-model` → GGUF f16 → F16", 1.1, True),
    "bf16": ("`convert-model` → GGUF bf16 → BF16", 1.1, True), "q8_0": ("`convert-model` → GGUF f16 → Q8_0", 2.5, True),
    "llama.cpp f16": ("`convert_legacy_llama.py` → f16", None, False),
    "llama.cpp q8_0": ("`convert_legacy_llama.py` → q8_0", None, False),
    "help": ("`convert-model --help`", None, False), "tiny": ("tiny demo checkpoint → ggjt", None, False)}
MIGRATE_GOALS = {"ggjt": ("`migrate-old-weights` → ggjt", 1.15, True), "gguf": ("`migrate-old-weights` → GGUF", 1.15, True)}
META_GOALS = {"bf16": ("`convert-model META_DIR` bf16 → BF16", 1.1, True),
              "q8_0": ("`convert-model META_DIR` → Q8_0", None, True), "vocabulary": ("vocabulary build", None, False)}
HF_GOALS = {"bf16": ("`convert-model HF_DIR` bf16 → BF16", 1.1, True), "q8_0": ("`convert-model HF_DIR` → Q8_0", 2.5, True),
            "peer bf16": ("`convert_hf_to_gguf.py` → bf16", None, False), "peer q8_0": ("`convert_hf_to_gguf.py` → q8_0", None, False)}


def race(r: dict[str, Any], t: Targets, goals: dict[str, tuple[str, float | None, bool]]) -> list[str]:
    """A race of suite.race: every timed step's min / median / max, × the floor, peak private memory; whether the
    floor moved; the targets of ours (`not measured` when the race did not run)."""
    times, memory = r.get("times", {}), r.get("memory", {})
    m, ok = {k: med(v) for k, v in times.items()}, {k: sorted(done(v)) for k, v in times.items()}
    floor, cats = m.get("cat + fsync"), ok.get("cat + fsync")
    lines = [table(["what", "wall time: min / median / max", "median × cat + fsync", "CPU wait, median", "peak private"],
                   [[goals.get(k, (f"`{k}`",))[0], " / ".join(ms(s) for s in (v[0], m[k], v[-1])) if v else "–",
                     x(ratio(m[k], floor)), ms(med(r["cpu_wait"][k])) if k in r["cpu_wait"] else "–",
                     mib(memory.get(k))] for k, v in ok.items()]), ""] if times else []
    if cats and cats[-1] > 1.3 * cats[0]:
        lines.append(f"- **The floor moved between rounds** (max ÷ min {cats[-1] / cats[0]:.2f} > 1.3): the disk or the "
                     "machine was not quiet in this run, and every ratio to it is in doubt.")
    for k, (name, goal, _) in [(k, g) for k, g in goals.items() if g[2]]:
        if goal is not None:
            lines.append(f"- {name}: " + t.times(f"{name}, × cat + fsync", ratio(m.get(k), floor), goal, most=True))
        extra = memory[k] - r["numpy"] if k in memory else None
        lines.append(f"- {name}: private memory above a bare numpy ({mib(r.get('numpy'))}): " + t.check(
            f"{name}, private memory above numpy", extra, "–" if extra is None else f"{extra / 1e6:+,.1f} MB",
            "≤ +64 MB", extra is not None and extra <= 64e6))
    return lines + ([errors(times)] if times else [])


def llama3_section(r: dict[str, Any], t: Targets) -> str:
    (dim, heads, kv, layers, _), meta, hf = r["shape"], r["meta"], r["hf"]
    vocab, peer = med(meta["times"]["vocabulary"]), "`convert_hf_to_gguf.py`"
    lines = [f"## Llama 3: `convert-model` on a Llama-3-8B-shaped slice\n\ndim {dim}, {heads} heads, {kv} KV heads, "
             f"{layers} layer(s), feed-forward multiplier 1.3, vocabulary 128,256, bf16, in the two layouts "
             "people download; floor, settle and memory as in Conversion.\n",
             f"### Meta's layout (consolidated.NN.pth of {', '.join(map(mib, meta['input']))}, params.json, Llama 3's "
             "tiktoken tokenizer.model: its 128,000 ranks taken from llama.cpp's copy of the vocabulary)\n",
             *race(meta, t, META_GOALS), "- building the 128,256-token vocabulary with its merges (`load_tiktoken_vocab`, "
             "in process): " + t.check("Llama 3 vocabulary build", vocab, ms(vocab), "≤ 2 s", vocab is not None and vocab <= 2),
             f"\n### Hugging Face's layout (config.json, safetensors shards of {', '.join(map(mib, hf['input']))} and their "
             f"index, Llama 3's tokenizer.json), against llama.cpp's {peer} (the same sdist)\n", *race(hf, t, HF_GOALS)]
    m, mem = {k: med(v) for k, v in hf.get("times", {}).items()}, hf.get("memory", {})
    for o in ("bf16", "q8_0"):
        share = ratio(mem.get(o), mem.get(f"peer {o}"))
        lines += [f"- {peer} ÷ ours, {o}: " + t.times(f"{peer} {o} ÷ convert-model HF_DIR", ratio(m.get(f"peer {o}"), m.get(o)), 3),
                  f"- our peak private memory ÷ theirs, {o}: " + t.check(f"convert-model HF_DIR {o} peak memory ÷ {peer}'s",
                                                                          share, pct(share), "≤ 10%", share is not None and share <= 0.1)]
    return "\n".join(lines)


def conversion_section(r: dict[str, Any], t: Targets) -> str:
    (dim, heads, layers, vocab), m = r["shape"], {k: med(v) for k, v in r["times"].items()}
    lines = race(r, t, CONVERT_GOALS)
    q = ratio(med(r["quantizers"]["gguf.quants q8_0"]), med(r["quantizers"]["ggmlfmt q8_0"]))
    lines[-1:-1] = ["- llama.cpp's converter ÷ ours, f16: " + t.times("convert_legacy_llama.py f16 ÷ convert-model",
                                                                     ratio(m.get("llama.cpp f16"), m.get("gguf")), 2),
                    "- q8_0 quantizer throughput, ours ÷ `gguf.quants.quantize` (the same f16 layer tensors, in "
                    "process, alternating rounds): " + t.times("q8_0 quantizer vs gguf.quants", q, 3)]
    return (f"## Conversion: `convert-model` on a 13B-shaped slice\n\nA Meta checkpoint (LLaMA-13B widths in the full run: "
            f"dim {dim}, {heads} heads, {layers} layer(s), vocabulary {vocab}) in 2 f16 shards of {', '.join(map(mib, r['input']))} "
            "(and the same values as 2 bf16 shards), with a `tokenizer.model` trained by `tests/meta.py`'s "
            "`train_tokenizer`; "
            "llama.cpp's `examples/convert_legacy_llama.py` (llama-cpp-python 0.3.36 sdist, its vendored gguf-py) converts the "
            "f16 shards too. The floor is `sh -c 'cat shards > out && sync out'` (`sync FILE` fsyncs it, as the converter "
            "does), started and timed exactly as each converter is. Every step writes a new file, after `settle`, its inputs "
            "(f16 and bf16 shards) cached again first if a step evicted them; a floor "
            "that moved by more than 1.3× between rounds is flagged. Private memory: peak RssAnon of the process tree, "
            "sampled every 1 ms from /proc, worst of 3 runs, against a bare `python -c \"import numpy\"`. CPU wait: how long "
            "tasks of this machine waited for a CPU during the step (/proc/pressure/cpu, `some`): on a shared machine the "
            "floor, a CPU-bound copy then a write-back, grows with it.\n\n" + "\n".join(lines))


def _loader_table(runs: dict[str, list[Any]], keys: tuple[str, ...] = ("open_s", "total_s", "anon_added")) -> str:
    rows = [[f"`{ld}`", *(mib(med(v, k)) if k == "anon_added" else vs(med(v, k), med(runs["ggmlfmt"], k)) for k in keys)]
            for ld, v in runs.items()]
    names = {"open_s": "open (× ggmlfmt)", "total_s": "open + touch (× ggmlfmt)", "anon_added": "private added"}
    return table(["loader", *(names[k] for k in keys)], rows) + errors(runs)


def open_section(r: dict[str, Any], t: Targets) -> str:
    a, b, c, s = r["v32"], r["v32000"], r["index"], r["sizes"]
    o = lambda runs, ld, k="open_s": med(runs[ld], k)  # noqa: E731
    st = ratio(o(a, "safetensors.load_file"), o(a, "ggmlfmt"))
    floor = ratio(o(a, "ggmlfmt", "total_s"), o(a, "memmap-floor", "total_s"))
    priv = o(a, "ggmlfmt", "anon_added")
    parts = ["## Opening a model file (issue 12)\n",
             "Open = until every tensor is available as an array (`ggmlfmt.load` then every `model.tensors[name]`; "
             "`safetensors.torch.load_file`; `gguf.GGUFReader` and every `.data`); touch = read one byte of every "
             "page of every tensor. `memmap-floor` is a bare `numpy.memmap` of the file with every page touched: the "
             "least any mmap loader can do. Imports happen before the clock starts. Each cell: median, and its "
             "ratio to the first row.\n",
             f"### (a) 147 LLaMA-shaped tensors, 32-entry vocabulary ({s['v32'] / 1e6:,.0f} MB, warm)\n",
             _loader_table(a), "", "- open, safetensors ÷ ggmlfmt: " + t.times("(a) open vs safetensors.load_file", st, 4),
             "- open + touch, ggmlfmt ÷ memmap floor: " + t.times("(a) open + touch vs memmap floor", floor, 1.25, True),
             "- private memory added by open + touch: " + t.check("(a) private memory added", priv, mib(priv),
                                                                  "< 8 MB", priv is not None and priv < 8e6), "",
             f"### (b) The same tensors, {s['n_vocab']:,}-token SentencePiece-like vocabulary, ggjt and GGUF "
             f"({s['v32000'] / 1e6:,.0f} MB, warm)\n",
             "The GGUF file is written by `gguf.GGUFWriter` with tokens, scores and token types; `ggmlfmt-gguf` is "
             "`ggmlfmt.load` on it.\n", _loader_table(b), ""]
    for ld in ("ggmlfmt", "ggmlfmt-gguf"):
        v = ratio(o(b, "safetensors.load_file"), o(b, ld))
        parts.append(f"- open, safetensors ÷ `{ld}`: " + t.times(f"(b) `{ld}` open vs safetensors", v, 1))
    g = ratio(o(b, "gguf.GGUFReader"), o(b, "ggmlfmt-gguf"))
    parts += ["- open, GGUFReader ÷ `ggmlfmt-gguf` (same GGUF file): " + t.times("(b) GGUF open vs gguf.GGUFReader", g, 100), "",
        f"### (c) A 7B-shaped index: 291 tensors, {s['n_vocab']:,} tokens (small dims: {s['index_gguf'] / 1e6:,.1f} MB; the "
        "index is what is timed), open only\n", _loader_table(c, ("open_s",)), "",
        "### (d) Cold cache: the (b) ggjt file evicted (`ggmlfmt evict`, checked with mincore) before every run\n"]
    cold, size = r["cold"], s["v32000"]
    cat, read = med(cold["cat > /dev/null"], "total_s"), med(cold["open"], "cached_after")
    rows = [[f"`{k}`" if k.startswith("cat") else f"`ggmlfmt.load` {k}", ms(med(v, "total_s")),
             x(ratio(med(v, "total_s"), cat)), pct(med(v, "cached_before")),
             pct(med(v, "cached_after")) if "cached_after" in (v[0] if v else {}) else "–"] for k, v in cold.items()]
    return "\n".join(parts) + "\n" + (
        f"Median of {len(done(cold['open']))} alternating rounds. \"Cached after\" is the share of the file in the page "
        "cache after the run: what it read.\n\n" + table(["what", "median", "× cat", "cached before", "cached after"], rows)
        + (f"\n\nA cold open read {pct(read)} of the {size / 1e6:,.0f} MB file "
           f"({mib(None if read is None else read * size)}): the index only." if read is not None else "") + errors(cold))


def load_section(r: dict[str, Any], t: Targets) -> str:
    sizes = sorted(r.values(), key=lambda d: d["size"])
    lds, head = sizes[0]["warm"], ["loader", *map(gb, sizes)]
    out = ["## Loading against file size: open + touch every page\n",
           "The same 147 LLaMA-shaped tensors (16 layers, f16 matrices, 32,000 tokens; fewer in --quick) as ggjt, GGUF, safetensors "
           "and a torch checkpoint, at each size; every loader, warm and cold (evicted before each run). Cell: "
           "median and its ratio to `ggmlfmt` at the same size.\n", "![load time](img/load_time.png)\n"]
    for c in [c for c in ("warm", "cold") if c in sizes[0]]:
        out += [f"### {c} cache\n", table(head, [[f"`{ld}`", *(vs(med(d[c][ld], "total_s"), med(d[c]["ggmlfmt"], "total_s"))
                                                               for d in sizes)] for ld in sizes[0][c]]), ""]
    out += ["### Private memory added (RssAnon, warm)\n",
            table(head, [[f"`{ld}`"] + [mib(med(d["warm"][ld], "anon_added")) for d in sizes] for ld in lds])]
    return "\n".join(out) + errors(*(d[c] for d in sizes for c in ("warm", "cold") if c in d))


def options_table(r: dict[str, Any]) -> str:
    rows = [[f"`{n}`", *(vs(med(r[c][n], "total_s"), med(r[c]["default"], "total_s")) for c in ("warm", "cold")),
             ms(med(r["cold"][n], "open_s")), mib(med(r["warm"][n], "anon_added")),
             f"{med(r['cold'][n], 'major_faults') or 0:,.0f}"] for n in r["warm"]]
    return table(["option", "warm: open + touch (× default)", "cold: open + touch (× default)", "cold: open",
                  "private memory (warm)", "major faults (cold)"], rows) + errors(r["warm"], r["cold"])


def options_intro(r: dict[str, Any]) -> str:
    return (f"`ggmlfmt.load(path, **option)` on a {gb(r)} ggjt file, then touch every page; ratio against `default` "
            "(no option) in the same alternating rounds. Cold: evicted with `ggmlfmt evict` before every run.")


def groups_section(r: dict[str, Any], t: Targets) -> str:
    runs, ns = r["runs"], sorted({int(k.split("|")[1]) for k in r["runs"]})
    rows = [[f"`{ld}`"] + [vs(med(runs[f"{ld}|{n}"], "anon_added"), med(runs[f"ggmlfmt|{n}"], "anon_added"), mib)
                           + f"; Σ PSS {mib(med(runs[f'{ld}|{n}'], 'pss'))}" for n in ns]
            for ld in dict.fromkeys(k.split("|")[0] for k in runs)]
    return "\n".join([f"## N processes loading the same {gb(r)} file (warm)\n",
                      "N processes start together, each loads and touches every tensor, then all hold their data while "
                      "the parent reads their memory. Cell: total private memory added (Σ RssAnon after − before), its "
                      "ratio to `ggmlfmt`, and Σ PSS (shared pages split among the N, interpreter included).\n",
                      "![N processes](img/nprocs.png)\n", table(["loader", *(f"N = {n}" for n in ns)], rows)]) + errors(runs)


def copy_section(r: dict[str, Any], t: Targets) -> str:
    rows = [[c, f"`{m}`", vs(med(v, "total_s"), med(r[c]["cp"], "total_s")), pct(med(v, "src_after")),
             pct(med(v, "dst_after"))] for c in ("cold", "warm") for m, v in r[c].items()]
    return "\n".join([f"## Copying a {gb(r)} file: `ggmlfmt copy` against `cp`\n",
                      "Whole-command time (× `cp` in the same cache state) and the share of each file left in the page "
                      "cache. `ggmlfmt copy` also fsyncs and hashes both files (sha256); `cp + sha256sum` is the equally "
                      "verified alternative; `cp` leaves its writes dirty in the cache.\n", "![copy](img/copy.png)\n",
                      table(["source", "method", "time (× cp)", "source cached after", "copy cached after"], rows)]) \
        + errors(r["cold"], r["warm"])


def dequant_section(r: dict[str, Any], t: Targets) -> str:
    rows, rts = [], [ratio(med(d["times"]["gguf.quants"]), med(d["times"]["ggmlfmt"])) for d in r.values()]
    for (name, d), rt in zip(r.items(), rts):
        mbs = [sorted(d["output_bytes"] / s / 1e6 for s in v) for v in d["times"].values()]
        rows.append([name, *(f"{med(v):,.0f} ({v[0]:,.0f}–{v[-1]:,.0f})" for v in mbs), x(rt),
                     "yes" if rt and rt >= 3 else "**no**", "yes" if d["identical"] else "**no**"])
    worst = min((v for v in rts if v is not None), default=None)
    return ("## Dequantizing: `ggmlfmt` against `gguf.quants.dequantize`\n\nThe same tensor of each type (random quants, finite scales), "
            "dequantized to float32 by both in this process, alternating rounds, after a 31 MiB block was allocated and freed (glibc's "
            "malloc then reuses freed blocks up to that size without new page faults, as in any long-running process: gguf.quants's "
            "temporaries run about 1.6× faster than in a fresh one). MB/s of float32 output: median (min–max); identical: the same bits.\n\n"
            + table(["type", "ggmlfmt MB/s", "gguf.quants MB/s", "× gguf.quants", "≥ 3×", "identical"], rows) + "\n\n- "
            "slowest type: " + t.times("dequantize vs gguf.quants, slowest type", worst, 3) + errors(*(d["times"] for d in r.values())))


def plots(results: dict[str, Any], img: Path) -> None:
    """The PNGs the sections link (matplotlib, Agg backend): load time against size; bars of options, copy, N processes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = {k: r for k, r in results.items() if "failed" not in r}
    if "load" in ok:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        sizes = sorted(ok["load"].values(), key=lambda d: d["size"])
        for ax, c in zip(axes, ("warm", "cold")):
            for ld in sizes[0].get(c, ()):
                pts = [(d["size"] / 1e9, med(d[c][ld], "total_s")) for d in sizes]
                ax.plot(*zip(*[p for p in pts if p[1] is not None] or [(0, 0)]), marker="o", label=ld)
            ax.set(xscale="log", yscale="log", xlabel="file size (GB)", title=f"{c} cache")
        axes[0].set_ylabel("open + touch (s, median)"), axes[0].legend(fontsize=7)
        fig.tight_layout(), fig.savefig(img / "load_time.png", dpi=110), plt.close(fig)
    bars = {"options": lambda r: {n: med(r["warm"][n], "total_s") for n in r["warm"]},
            "copy": lambda r: {f"{m} ({c})": med(r[c][m], "total_s") for c in ("cold", "warm") for m in r[c]},
            "groups": lambda r: {k.replace("|", " ×"): med(v, "anon_added") for k, v in r["runs"].items()}}
    for name, values in [(k, v) for k, v in bars.items() if k in ok]:
        vals = {k: v for k, v in values(ok[name]).items() if v is not None}
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(vals) + 1.2))
        ax.barh(list(vals), list(vals.values()))
        ax.invert_yaxis(), ax.set_xlabel("private memory added (bytes)" if name == "groups" else "seconds (median)")
        fig.tight_layout(), fig.savefig(img / f"{'nprocs' if name == 'groups' else name}.png", dpi=110), plt.close(fig)


def splice(text: str, name: str, content: str) -> str:
    """Replace what lies between <!-- NAME:begin --> and <!-- NAME:end --> (unchanged without the markers)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + content.strip() + "\n" + end + rest.split(end, 1)[1]


RENDER = {"conversion": conversion_section, "llama3": llama3_section, "open": open_section, "load": load_section,
          "groups": groups_section, "copy": copy_section, "dequantize": dequant_section,
          "migration": lambda r, t: ("## Migration: `migrate-old-weights` on the same slice\n\nThe same shapes as an old "
                                     f"2-part ggmf f16 model ({', '.join(map(mib, r['input']))}), migrated to ggjt and to "
                                     "GGUF, against `cat parts > out; fsync(out)`; memory measured as for conversion.\n\n"
                                     + "\n".join(race(r, t, MIGRATE_GOALS))),
          "options": lambda r, t: (f"## Load options\n\n{options_intro(r)} What each option does: [loading.md](loading.md)."
                                   f"\n\n![options](img/options.png)\n\n{options_table(r)}")}


def write(out: Path, results: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write benchmarks.md, img/*.png and img/suite-results.json into `out`; splice loading.md there if present."""
    (img := out / "img").mkdir(parents=True, exist_ok=True)
    t = Targets()
    body = [f"## {name}: not measured\n\nThe section failed: {r['failed']}" if "failed" in r else RENDER[name](r, t)
            for name, r in results.items()]
    plots(results, img)
    head = ["# Benchmarks\n", "<!-- Generated by bench/suite.py; edits are overwritten. -->\n",
            f"Generated by `{meta['command']}` on {meta['date']} in {meta['durations']['total'] / 60:.1f} minutes."
            + ("\n\n> **Quick smoke run (`--quick`)**: tiny files, one round; these numbers show the machinery works, "
               "not how fast anything is." if meta["quick"] else "") + "\n",
            "Method: the contestants of each figure run in alternating rounds (forward, then reversed order), "
            f"{meta['plan']['reps']} measured rounds" + (" after one discarded warm-up round" if meta["plan"]["warmup"] else "")
            + ", each measured run in a fresh process (unless said) after `settle` (untimed: the last output removed, "
            "`os.sync()`, then a wait until the disk has nothing in flight and has written and discarded nothing for 200 ms); "
            "timed rows show min / median / max, every ratio is of medians, against the named alternative measured in the "
            "same rounds. Warm cache unless said; cold means `ggmlfmt evict` (posix_fadvise DONTNEED) checked with mincore "
            "just before the run; on a virtual machine the host may still cache the disk.\n",
            "## Machine\n", *(f"- {k}: {v}" for k, v in meta["machine"].items()), ""]
    summary = ["## Targets\n", table(["target", "measured", "goal", "verdict"], t), ""] if t else []
    tail = table(["section", "wall time"], [[k, f"{v / 60:.1f} min"] for k, v in meta["durations"].items()])
    (path := out / "benchmarks.md").write_text("\n".join(head + summary) + "\n" + "\n\n".join(body)
                                               + "\n\n## Run time of the suite\n\n" + tail + "\n")
    if "options" in results and "failed" not in results["options"] and (loading := out / "loading.md").exists():
        loading.write_text(splice(loading.read_text(), "options", f"Measured by `{meta['command']}` on {meta['date']} "
                                  "(machine and method: [benchmarks.md](benchmarks.md)). " + options_intro(
                                      results["options"]) + "\n\n" + options_table(results["options"])))
    (img / "suite-results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return path
