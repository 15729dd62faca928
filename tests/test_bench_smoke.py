"""The benchmark suite's machinery on a tiny file: well-formed results from every loader (no timing assertions)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("gguf")
pytest.importorskip("matplotlib")

import _experiments  # noqa: E402
import _files  # noqa: E402
import _measure  # noqa: E402
import _plots  # noqa: E402
import _report  # noqa: E402

DIM, LAYERS = 32, 1  # 3 + 9 tensors, ~4 MB (the 32000-token embeddings dominate)
NUMBERS = ("open_s", "touch_s", "total_s", "rss_anon_added", "major_faults", "minor_faults")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _files.write_set(tmp_path_factory.mktemp("bench"), DIM, LAYERS)


def test_every_loader_reports_the_same_bytes(files: dict[str, Path]) -> None:
    runs = [_measure.measure(loader, files[fmt], cache="warm") for loader, fmt in _files.LOADER_FORMAT.items()]
    runs.append(_measure.measure("ggmlfmt", files["ggjt"], cache="cold", options={"advice": "random"}))
    for r in runs:
        assert all(isinstance(r[k], (int, float)) and r[k] >= 0 for k in NUMBERS), r
        assert r["total_s"] >= r["open_s"]
        assert r["file_size"] > 0 and 0.0 <= r["residency_before"] <= 1.0
    assert runs[-1]["cache"] == "cold" and runs[-1]["residency_before"] < 0.01
    tensors = {r["loader"]: (r["n_tensors"], r["checksum"]) for r in runs if r["loader"] != "memmap-floor"}
    assert set(tensors.values()) == {(3 + 9 * LAYERS, tensors["ggmlfmt"][1])}, tensors  # same tensors, same bytes


def test_groups_copies_report_and_plots(files: dict[str, Path], tmp_path: Path) -> None:
    group = _measure.measure_group("ggmlfmt", files["ggjt"], 2, cache="warm")
    assert group["n"] == 2 and group["pss_total"] > 0 and group["rss_anon_added_total"] >= 0
    copy = _measure.measure_copy("ggmlfmt copy", files["ggjt"], tmp_path / "c.bin", cache="cold")
    assert copy["src_cached_after"] < 0.01 and not (tmp_path / "c.bin").exists()
    load = [{**_measure.measure(loader, files[_files.LOADER_FORMAT[loader]], cache="warm"), "dim": DIM}
            for loader in ("ggmlfmt", "memmap-floor")]
    text = _report.load_section(load + [{"loader": "torch.load", "dim": DIM, "cache": "warm", "error": "boom"}])
    assert "| `ggmlfmt` | " in text and "1.00×" in text and "torch.load: boom" in text
    _plots.load_time(load, tmp_path)
    _plots.nprocs([{**group, "rep": 0}], tmp_path)
    assert (tmp_path / "load_time.png").stat().st_size > 0 and (tmp_path / "nprocs.png").stat().st_size > 0


def test_alternating_rounds_rotate_the_first_contestant() -> None:
    assert [_experiments.rotated("abc", k) for k in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]
