"""convert-model next to llama.cpp's own Meta converter (examples/convert_legacy_llama.py, llama-cpp-python
0.3.36, run with its vendored gguf-py) on the same fixture checkpoints: same tensors, same metadata
where both write a key (docs/format.md §14.2); q8_0 follows llama.cpp's reference quantizer, not that
script's own (which divides and rounds half to even, docs/format.md §10.7).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from convert import convert_checkpoint
from meta import build
from sdist import run_legacy_converter

import gguf_check  # tests/client: the GGUF name of a Meta name

pytestmark = pytest.mark.slow  # fetches the 77 MB sdist on first use
Q = gguf.GGMLQuantizationType
OURS_ONLY = {"general.alignment", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
             "tokenizer.ggml.unknown_token_id"}  # special ids: theirs writes none for a Meta checkpoint


def _fields(reader: gguf.GGUFReader) -> dict[str, Any]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _tensors(reader: gguf.GGUFReader) -> list[tuple[str, int, list[int], bytes]]:
    return [(t.name, int(t.tensor_type), t.shape.tolist(), np.asarray(t.data).tobytes()) for t in reader.tensors]


def _both(tmp_path: Path, n_shards: int, outtype: str, **build_args: Any) -> tuple[gguf.GGUFReader, gguf.GGUFReader]:
    return _convert_both(build(tmp_path, n_shards, seed=3, **build_args), tmp_path, outtype)


def _convert_both(ck: Any, tmp_path: Path, outtype: str) -> tuple[gguf.GGUFReader, gguf.GGUFReader]:
    theirs = tmp_path / f"theirs-{outtype}.gguf"
    run_legacy_converter(ck.model_dir, ck.root, outtype, theirs)
    ours = convert_checkpoint(ck.model_dir, tmp_path / f"ours-{outtype}.gguf", outtype=outtype).outfile
    return gguf.GGUFReader(theirs), gguf.GGUFReader(ours)


def _metadata_agrees(theirs: gguf.GGUFReader, ours: gguf.GGUFReader, extra: set[str] = frozenset()) -> None:
    a, b = _fields(theirs), _fields(ours)
    assert set(a) <= set(b) and set(b) - set(a) == OURS_ONLY | extra
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"general.name"}, differ  # it title-cases the directory name ("Model"); we keep it
    assert b["general.size_label"] == a["general.size_label"] and b["llama.vocab_size"] == a["llama.vocab_size"]


@pytest.mark.parametrize("n_shards", [1, 2])
def test_f16_tensors_and_metadata_equal_llama_cpp_converter(tmp_path: Path, n_shards: int) -> None:
    theirs, ours = _both(tmp_path, n_shards, "f16")
    assert _tensors(ours) == _tensors(theirs)  # names, types, shapes, bytes: all 21
    assert len(ours.tensors) == 21
    _metadata_agrees(theirs, ours)
    changed = _tensors(ours)
    changed[3] = (*changed[3][:3], changed[3][3][:-1] + bytes([changed[3][3][-1] ^ 1]))
    assert changed != _tensors(theirs)  # control


def test_f32_checkpoint_to_f16_equals_llama_cpp_converter(tmp_path: Path) -> None:
    theirs, ours = _both(tmp_path, 2, "f16", dtype="float32")  # both round f32 -> f16 to nearest even
    assert _tensors(ours) == _tensors(theirs)


def test_q8_0_follows_the_reference_quantizer_not_the_scripts_own(tmp_path: Path,
                                                                   record_property: Any) -> None:
    ck = build(tmp_path, 2, seed=3)
    theirs, ours = _convert_both(ck, tmp_path, "q8_0")
    _metadata_agrees(theirs, ours, {"general.quantization_version"})  # it omits the key its own reader wants
    a, b = _tensors(theirs), _tensors(ours)
    assert [t[:3] for t in a] == [t[:3] for t in b]  # same names, types, shapes
    quantized = [i for i, t in enumerate(b) if t[1] == Q.Q8_0]
    assert len(quantized) == 16  # every 2-D weight, token embedding and output included
    for i in range(len(b)):
        if i not in quantized:
            assert a[i] == b[i]  # the F32 norms are the same bytes
    full = {gguf_check.gguf_name(name): a for name, a in ck.full.items() if name != "rope.freqs"}
    for i in quantized:
        assert b[i][3] == gguf.quants.quantize(full[b[i][0]], Q.Q8_0).tobytes(), b[i][0]
    differ = [b[i][0] for i in quantized if a[i][3] != b[i][3]]
    record_property("q8_0 tensors differing from convert_legacy_llama.py", f"{len(differ)}/16")
    print(f"q8_0: {len(differ)}/16 tensors differ from convert_legacy_llama.py's own quantizer")
    assert differ  # control: its quantizer is not the reference, so a byte comparison can tell them apart
    blocks_theirs = np.concatenate([np.frombuffer(a[i][3], np.uint8).reshape(-1, 34) for i in quantized])
    blocks_ours = np.concatenate([np.frombuffer(b[i][3], np.uint8).reshape(-1, 34) for i in quantized])
    qs_diff = blocks_theirs[:, 2:].view(np.int8).astype(int) - blocks_ours[:, 2:].view(np.int8).astype(int)
    assert np.abs(qs_diff).max() == 1  # ties rounded the other way: one step, never more
    assert (blocks_theirs[:, :2] == blocks_ours[:, :2]).all()  # the same f16 scales
