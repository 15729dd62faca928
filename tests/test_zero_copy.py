"""Zero copy: every tensor is a view into the one map, and touching all of them adds no private memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import builders
import strategies
from ggmlfmt import HParams, load, save
from helpers import MIB, probe_memory, rss_file, write_big_model

_MEASURE = r"""
import numpy as np
from ggmlfmt import load

before = status()
model = load(sys.argv[1])
checksum = sum(touch_every_page(v.reshape(-1).view(np.uint8)) for v in model.tensors.values())
touched = status()
shared = all(np.shares_memory(v, model.data) for v in model.tensors.values())
copies = [np.array(v) for v in model.tensors.values()]  # the control: a real copy must show up
copied = status()
print(json.dumps({"before": before, "touched": touched, "copied": copied, "shared": shared,
                  "checksum": checksum, "nbytes": sum(v.nbytes for v in model.tensors.values())}))
"""


def test_touching_every_tensor_of_a_large_file_adds_no_private_memory(tmp_path):
    path = tmp_path / "big.bin"
    nbytes, checksum = write_big_model(path)
    assert nbytes >= 100 * MIB
    m = probe_memory(_MEASURE, path)
    assert m["shared"] and m["nbytes"] == nbytes
    assert m["checksum"] == checksum  # every page read, and the values are the ones written
    assert rss_file(m["touched"]) - rss_file(m["before"]) > 0.9 * nbytes  # the pages really are mapped in
    assert m["touched"]["RssAnon"] - m["before"]["RssAnon"] < 8 * MIB  # ... and none of them is private
    assert m["copied"]["RssAnon"] - m["touched"]["RssAnon"] > 0.9 * nbytes  # the measure does see copies


def test_every_view_shares_memory_with_the_one_map(tmp_path):
    raw = (Path(__file__).parent / "data" / "quantized_v1.ggjt").read_bytes()
    hp, vocab, records = builders.section12_model()
    (tmp_path / "q.bin").write_bytes(raw)
    save(tmp_path / "f.bin", strategies.arrays_from_records(records), hparams=HParams(**hp),
         vocab=strategies.vocab_from_builder(vocab))
    for name in ("q.bin", "f.bin"):
        model = load(tmp_path / name)
        base = model.data.__array_interface__["data"][0]
        assert isinstance(model.data, np.memmap) and model.data.size == (tmp_path / name).stat().st_size
        for tname, view in model.tensors.items():
            info = model.info[tname]
            assert np.shares_memory(view, model.data)
            assert view.__array_interface__["data"][0] == base + info.offset  # exactly at the data offset
            assert not view.flags.owndata and not view.flags.writeable
            assert model.tensors[tname] is view  # made once, then cached


def test_ggml_and_ggmf_views_are_zero_copy_even_unaligned(tmp_path):
    for fmt, version in (("ggml", None), ("ggmf", 1)):
        hp, vocab, records = builders.section12_model()
        vocab = [(t, None if fmt == "ggml" else s) for t, s in vocab]
        (tmp_path / fmt).write_bytes(builders.build_file(fmt, version, hp, vocab, records))
        model = load(tmp_path / fmt)
        offsets = [model.info[n].offset for n in model.tensors]
        assert any(off % 4 for off in offsets)  # these formats do not align, so neither can the views
        for name, expected in strategies.arrays_from_records(records).items():
            assert np.shares_memory(model.tensors[name], model.data)
            np.testing.assert_array_equal(model.tensors[name], expected)
