"""Run every benchmark and rewrite docs/benchmarks.md and docs/img/*.png.

    python bench/suite.py            # the full suite (~20 minutes on 2 cores), rewrites docs/
    python bench/suite.py --quick    # a small smoke run; writes into a temporary directory unless --out

Test files (LLaMA-shaped, 0.1 to 1.9 GB, in four formats) live in a temporary directory under --dir
and are deleted at the end. Then bench/bench_load.py, bench_convert.py and bench_migrate.py run
(each tolerated if missing or failing) and their docs/bench_*.md sections are spliced in.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench/_*.py helpers

import _experiments as ex  # noqa: E402
import _files  # noqa: E402
import _machine  # noqa: E402
import _others  # noqa: E402
import _plots  # noqa: E402
import _report  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    """What one run of the suite measures."""

    dims: tuple[int, ...]  # model widths; 16 layers each: 384 -> 0.11 GB, 1024 -> 0.54 GB, 2048 -> 1.9 GB
    reps: int  # alternating rounds per figure
    group_ns: tuple[int, ...]  # process counts for the shared-memory experiment
    options_dim: int  # the size the load options and N processes are measured on
    copy_dim: int
    n_layer: int = 16  # 16 layers: 147 tensors, like issue 2's benchmark


FULL = Plan(dims=(384, 1024, 2048), reps=5, group_ns=(1, 2, 4, 8), options_dim=1024, copy_dim=2048)
QUICK = Plan(dims=(128, 256), reps=3, group_ns=(1, 2), options_dim=256, copy_dim=256)


def _check_space(directory: Path, plan: Plan) -> None:
    """Raises: OSError when the test files (four formats of every size, plus a copy) would not fit."""
    need = int(1.1 * (len(_files.FORMATS) * sum(_files.model_bytes(d, plan.n_layer) for d in plan.dims)
                      + _files.model_bytes(plan.copy_dim, plan.n_layer)))
    free = ex.free_bytes(directory)
    if free < need:
        raise OSError(f"{directory}: the benchmark files need {need / 1e9:.1f} GB, {free / 1e9:.1f} GB are free; "
                      "pass --dir on a larger filesystem")


def _write_sets(workdir: Path, plan: Plan) -> dict[int, dict[str, Path]]:
    return {d: _files.write_set(workdir, d, plan.n_layer) for d in plan.dims}


def measure_all(plan: Plan, workdir: Path, durations: dict[str, float]) -> dict[str, Any]:
    """Write the test files, run every experiment of this suite, return the raw runs."""
    _check_space(workdir, plan)
    sets = ex.timed("write test files", durations, _write_sets, workdir, plan)
    mid, big = sets[plan.options_dim], sets[plan.copy_dim]
    return {
        "load": ex.timed("load vs size", durations, ex.load_vs_size, sets, plan.reps),
        "options": ex.timed("load options", durations, ex.options, mid["ggjt"], plan.reps),
        "groups": ex.timed("N processes", durations, ex.groups, mid, plan.group_ns, plan.reps),
        "copy": ex.timed("copy vs cp", durations, ex.copies, big["ggjt"], workdir, plan.reps),
        "sizes": {"options": mid["ggjt"].stat().st_size, "copy": big["ggjt"].stat().st_size},
    }


def run_others(quick: bool, durations: dict[str, float]) -> list[dict[str, Any]]:
    timeout = 300 if quick else 1200
    return [ex.timed(f"bench/{name}.py", durations, _others.run, name, quick=quick, timeout=timeout)
            for name in _others.OTHERS]


def write_docs(out: Path, results: dict[str, Any], others: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """docs/benchmarks.md, the plots, and the raw runs (img/suite-results.json); returns the markdown's path."""
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    _plots.load_time(results["load"], img)
    _plots.load_memory(results["load"], img)
    _plots.options(results["options"], img)
    _plots.nprocs(results["groups"], img)
    _plots.copy(results["copy"], img)
    sections = [
        _report.header(meta["machine"], meta),
        _report.load_section(results["load"]),
        _report.options_section(results["options"], results["sizes"]["options"]),
        _report.groups_section(results["groups"], results["sizes"]["options"]),
        _report.copy_section(results["copy"], results["sizes"]["copy"]),
        *(_others.section(o, ROOT / "docs") for o in others),
        _report.durations_section(meta["durations"]),
    ]
    path = out / "benchmarks.md"
    path.write_text("\n\n".join(s.strip() for s in sections) + "\n")
    _splice_loading(out / "loading.md", results, meta)
    (img / "suite-results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return path


def _splice_loading(path: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    """Refresh the measured table in docs/loading.md (between its markers), if it is in this docs directory."""
    if not path.exists():
        return
    table = "\n\n".join([f"Measured by `{meta['command']}` on {meta['date']} (machine and method: "
                          "[benchmarks.md](benchmarks.md)). " + _report.options_intro(results["sizes"]["options"]),
                          _report.options_table(results["options"])])
    path.write_text(_report.splice(path.read_text(), "options", table))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small files, few rounds: checks the machinery")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the test files go (its filesystem is the one measured; default %(default)s)")
    p.add_argument("--out", type=Path, help="docs directory to write (default: docs/, or a temp dir with --quick)")
    p.add_argument("--skip-others", action="store_true", help="do not run bench/bench_*.py")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    plan, start = QUICK if args.quick else FULL, time.time()
    durations: dict[str, float] = {}
    out = args.out or (Path(tempfile.mkdtemp(prefix="ggmlfmt-bench-docs-")) if args.quick else ROOT / "docs")
    machine = _machine.describe(args.dir)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ggmlfmt-bench-") as work:
        results = measure_all(plan, Path(work), durations)
    others = [] if args.skip_others else run_others(args.quick, durations)
    durations["total"] = time.time() - start
    meta = {"command": shlex.join(["python", "bench/suite.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": datetime.datetime.now().isoformat(timespec="minutes"), "quick": args.quick,
            "duration_min": durations["total"] / 60, "machine": machine, "durations": durations, "plan": vars(plan)}
    path = write_docs(out, results, others, meta)
    print(f"wrote {path} and {out / 'img'} in {durations['total'] / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
