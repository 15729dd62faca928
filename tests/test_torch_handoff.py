"""Model.torch_tensors: torch tensors on the file's pages, no copy, no warning, torch imported only when asked."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import builders
import strategies
from ggmlfmt import HParams, load, save
from helpers import MIB, probe_memory, rss_file, write_big_model

_MEASURE = r"""
import warnings
import torch  # imported before the first measurement: its own start-up memory is not ours
from ggmlfmt import load

before = status()
with warnings.catch_warnings():
    warnings.simplefilter("error")
    tensors = load(sys.argv[1]).torch_tensors()
checksum = sum(touch_every_page(t.reshape(-1).view(torch.uint8)) for t in tensors.values())
touched = status()
print(json.dumps({"before": before, "touched": touched, "checksum": checksum,
                  "nbytes": sum(t.numel() * t.element_size() for t in tensors.values())}))
"""


def mappings_of(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps `path` (from /proc/self/maps)."""
    target = str(path.resolve())
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def float_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    hp = builders.llama_hparams(4, 64, 32, 4, 2, 1)
    full = builders.llama_tensors(hp, "F16", seed=3)
    arrays = {n: a.astype(np.float16 if t == "F16" else np.float32) for n, (t, a) in full.items()}
    save(tmp_path / "m.bin", arrays, hparams=HParams(**hp),
         vocab=strategies.vocab_from_builder(builders.llama_vocab(4)))
    return tmp_path / "m.bin", arrays


def test_torch_tensors_live_in_a_mapping_of_the_file_without_warnings(tmp_path):
    path, arrays = float_model(tmp_path)
    model = load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "The given NumPy array is not writable"
        tensors = model.torch_tensors()
    ranges = mappings_of(path)
    assert ranges
    assert list(tensors) == list(arrays)
    for name, t in tensors.items():
        start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        assert any(lo <= start and end <= hi for lo, hi in ranges), name
        assert t.dtype == (torch.float16 if arrays[name].dtype == np.float16 else torch.float32)
        assert tuple(t.shape) == arrays[name].shape
        np.testing.assert_array_equal(t.numpy(), arrays[name])


def test_writes_to_torch_tensors_stay_in_the_process(tmp_path):
    path, arrays = float_model(tmp_path)
    raw = path.read_bytes()
    model = load(path)
    tensors = model.torch_tensors()
    tensors["norm.weight"].fill_(42.0)
    tensors["output.weight"][0, 0] = 7.0
    assert path.read_bytes() == raw
    np.testing.assert_array_equal(model.tensors["norm.weight"], arrays["norm.weight"])
    np.testing.assert_array_equal(load(path).torch_tensors()["norm.weight"].numpy(), arrays["norm.weight"])


def test_quantized_tensors_come_as_their_raw_block_bytes(tmp_path):
    path = Path(__file__).parent / "data" / "quantized_v3.ggjt"
    model = load(path)
    raw = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensors = model.torch_tensors()
    for name, t in tensors.items():
        info = model.info[name]
        if info.quantized:
            assert t.dtype == torch.uint8 and tuple(t.shape) == (*info.shape[:-1], info.row_bytes)
            assert t.numpy().tobytes() == raw[info.offset : info.offset + info.nbytes]
        else:
            np.testing.assert_array_equal(t.numpy(), model.tensors[name])


def test_unaligned_ggml_tensors_are_handed_over_as_equal_values(tmp_path):
    hp, vocab, records = builders.section12_model()
    raw = builders.build_file("ggml", None, hp, [(t, None) for t, _ in vocab], records)
    (tmp_path / "old.bin").write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensors = load(tmp_path / "old.bin").torch_tensors()
    for name, expected in strategies.arrays_from_records(records).items():
        np.testing.assert_array_equal(tensors[name].numpy(), expected)


def test_touching_every_torch_tensor_of_a_large_file_adds_no_private_memory(tmp_path):
    path = tmp_path / "big.bin"
    nbytes, checksum = write_big_model(path)
    m = probe_memory(_MEASURE, path)
    assert m["nbytes"] == nbytes and m["checksum"] == checksum
    assert rss_file(m["touched"]) - rss_file(m["before"]) > 0.9 * nbytes
    assert m["touched"]["RssAnon"] - m["before"]["RssAnon"] < 8 * MIB


def test_loading_and_reading_never_imports_torch():
    code = ("import sys, ggmlfmt, ggmlfmt.cli; m = ggmlfmt.load(sys.argv[1]); "
            "[v.sum() for v in m.tensors.values()]; print('torch' in sys.modules)")
    path = Path(__file__).parent / "data" / "section12.ggjt"
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
