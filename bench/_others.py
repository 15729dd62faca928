"""The other benchmark scripts (bench/bench_*.py): run each by subprocess, splice its docs/bench_*.md section."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
OTHERS = ("bench_load", "bench_convert", "bench_migrate")
QUICK_ARGS = {  # smaller runs for --quick, used when the script's --help lists every flag (else its --quick)
    "bench_load": ["--dim", "256", "--runs", "5"],
    "bench_convert": ["--layers", "1", "--runs", "5"],
    "bench_migrate": ["--sizes", "64", "--runs", "5"],
}


def _quick_args(name: str, script: Path) -> list[str] | None:
    """Arguments for a small run of the script, or None if its --help offers none we know."""
    try:
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    flags = [a for a in QUICK_ARGS.get(name, ["--quick"]) if a.startswith("--")]
    if all(f in out.stdout for f in flags):
        return QUICK_ARGS.get(name, ["--quick"])
    return ["--quick"] if "--quick" in out.stdout else None


def run(name: str, *, quick: bool, timeout: float) -> dict[str, Any]:
    """Run bench/NAME.py (with --quick when asked and supported); what happened, for the report."""
    script = ROOT / "bench" / f"{name}.py"
    if not script.exists():
        return {"name": name, "status": f"not run: bench/{name}.py does not exist yet"}
    cmd = [sys.executable, str(script)]
    if quick:
        small = _quick_args(name, script)
        if small is None:
            return {"name": name, "status": f"not run: --quick, and bench/{name}.py offers no small run"}
        cmd += small
    log.info("running %s", " ".join(cmd[1:]))
    t0 = time.time()
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "status": f"not run: bench/{name}.py took over {timeout / 60:.0f} minutes; stopped",
                "seconds": time.time() - t0, "started": t0}
    shown = " ".join(["python", f"bench/{name}.py", *cmd[2:]])
    result = {"name": name, "seconds": time.time() - t0, "started": t0, "command": shown}
    if out.returncode:
        tail = " | ".join(out.stderr.strip().splitlines()[-3:])
        return {**result, "status": f"not run: bench/{name}.py exited with status {out.returncode}: {tail}"}
    return {**result, "status": "ok", "stdout": out.stdout}


def _demote(markdown: str) -> str:
    # their sections become subsections of ours
    return re.sub(r"^(#+) ", r"#\1 ", markdown, flags=re.M)


def section(result: dict[str, Any], docs: Path) -> str:
    """Markdown for one script: the docs/NAME.md it wrote in this run, else its stdout; or why there is none."""
    name = result["name"]
    head = f"## From `bench/{name}.py`\n\n"
    md = docs / f"{name}.md"
    if result["status"] != "ok":
        note = f"{result['status']}."
        if md.exists():
            note += f" Its last section, docs/{name}.md, follows unchanged.\n\n" + _demote(md.read_text().strip())
        return head + note
    rewritten = md.exists() and md.stat().st_mtime >= result["started"]
    text = md.read_text() if rewritten else result["stdout"]
    if not text.strip():
        return head + f"`{result['command']}` ran but wrote no docs/{name}.md and printed nothing."
    return head + f"Run as `{result['command']}` ({result['seconds'] / 60:.1f} min).\n\n" + _demote(text.strip())
