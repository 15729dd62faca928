"""The benchmark suite end to end on tiny files (`bench/suite.py --quick`): every section renders, no timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

for _module in ("torch", "safetensors", "gguf", "matplotlib"):  # the bench extra (torch: the torch.load rows)
    pytest.importorskip(_module)

SECTIONS = ("Conversion", "Migration", "Llama 3", "Opening a model file", "Loading against file size",
            "Load options", "N processes", "Copying", "Dequantizing")


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    (out / "loading.md").write_text("before\n<!-- options:begin -->\nOLD TABLE\n<!-- options:end -->\nafter\n")
    subprocess.run([sys.executable, "bench/suite.py", "--quick", "--out", str(out), "--dir", str(out)],
                   cwd=ROOT, check=True, timeout=300)
    return out


def test_every_section_is_written_with_targets_and_plots(docs: Path) -> None:
    text = (docs / "benchmarks.md").read_text()
    for title in SECTIONS:
        assert f"## {title}" in text, title
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.rstrip().endswith(
        ("| met |", "| **missed** |", "| not measured |"))]
    assert len(rows) == 33, rows  # 10 conversion, 4 migration, 12 Llama 3, 6 opening rows, 1 dequantizing
    assert not [r for r in rows if r.endswith("| not measured |")], rows
    assert "Failed runs" not in text and "## llama3: not measured" not in text, text
    for png in ("load_time", "options", "nprocs", "copy"):
        assert (docs / "img" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_raw_results_hold_the_same_tensors_for_every_loader(docs: Path) -> None:
    results = json.loads((docs / "img" / "suite-results.json").read_text())["results"]
    warm = next(iter(results["load"].values()))["warm"]
    seen = {ld: (r[0]["n"], r[0]["checksum"]) for ld, r in warm.items() if ld != "memmap-floor"}
    assert set(seen.values()) == {(147, seen["ggmlfmt"][1])}, seen  # 3 + 16 * 9 tensors, the same bytes
    index = results["open"]["index"]
    assert {r[0]["n"] for r in index.values()} == {291}  # the 7B-shaped index
    assert all(d["identical"] for d in results["dequantize"].values()) and "Q6_K" in results["dequantize"]
    cold = results["open"]["cold"]["open"][0]
    assert cold["cached_before"] < 0.01 and cold["cached_after"] < 0.5  # evicted, then open read the index only


def test_the_loading_table_is_spliced_between_its_markers(docs: Path) -> None:
    text = (docs / "loading.md").read_text()
    assert text.startswith("before\n<!-- options:begin -->\nMeasured by `python bench/suite.py --quick")
    assert "| `method=pread` |" in text and "OLD TABLE" not in text and text.endswith("<!-- options:end -->\nafter\n")
