"""Golden tests: hand-built legacy files decoded field by field, our output checked byte by byte.

Inputs come from tests/builders.py (struct.pack, written from docs/format.md, never importing ggmlfmt); the
worked example of docs/format.md §4.6 is checked against the offsets and hex printed there; the tiny
files in tests/data are pinned by sha256 and checked by the builder's independent parser.

Regenerate tests/data after an intended format change with `python tests/test_golden.py --regenerate`
and update GOLDEN_SHA256 (the test prints the new digests).
"""

from __future__ import annotations

import hashlib
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import builders
import strategies
from ggmlfmt import FileVersion, FileWriter, GGMLType, HParams, TensorInfo, load, save
from ggmlfmt.layout import plan

LEGACY = [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)]
VERSION_OF = {("ggml", None): FileVersion.GGML, ("ggmf", 1): FileVersion.GGMF_V1, ("ggjt", 1): FileVersion.GGJT_V1,
              ("ggjt", 2): FileVersion.GGJT_V2, ("ggjt", 3): FileVersion.GGJT_V3}

# docs/format.md §5.2, written out again here: the struct fields of one block, per block layout generation.
_SCALE = {1: "<f", 2: "<f", 3: "<e"}  # Q4_0 / Q4_1 / Q8_0 scales became f16 in ggjt v3


def spec_block_fields(type_name: str, gen: int) -> list[tuple[str, str]]:
    """(field, struct format) of one block of `type_name` in generation `gen`, from docs/format.md §5.2."""
    s = _SCALE[gen]
    return {
        "Q4_0": [("d", s), ("qs", "16s")],
        "Q4_1": [("d", s), ("m", s), ("qs", "16s")],
        "Q4_2": [("d", "<e"), ("qs", "8s")],
        "Q4_3": [("d", "<e"), ("m", "<e"), ("qs", "8s")],
        "Q5_0": [("d", "<e"), ("qh", "4s"), ("qs", "16s")],
        "Q5_1": [("d", "<e"), ("m", "<e"), ("qh", "4s"), ("qs", "16s")],
        "Q8_0": [("d", s), ("qs", "32s")],
    }[type_name]


LEGACY_VOCAB = [
    (b" \xe2\x81\x87 ", 0.0),  # <unk> as the converter wrote it
    (b"", 0.0),  # <s>, </s>: empty texts
    (b"", -0.0),
    (b"\n", 0.0),  # a byte token
    (b"\xff\xfe\x00", -1.5),  # not UTF-8, with a NUL
    (" héllo".encode(), -7.25),
    (bytes(range(256)) * 2, 2.0**127),  # long and every byte value
]


def legacy_file(fmt: str, version: int | None) -> tuple[bytes, dict[str, builders.Field], list[builders.TensorInfo]]:
    """A file holding every type of its block generation plus 1-, 3- and 4-D float tensors."""
    gen = builders.layout_of(fmt, version)
    rng = np.random.default_rng(gen * 10 + (version or 0))
    records: list[builders.TensorInfo] = []
    for type_name in builders.BLOCKS[gen]:
        x = rng.standard_normal((3, 64)).astype(np.float32)
        records.append((f"layers.0.{type_name.lower()}.weight", builders.TYPE_CODES[type_name], (64, 3),
                        builders.quantize(x, type_name, gen)))
    records.append(("norm.weight", builders.TYPE_CODES["F32"], (5,), rng.standard_normal(5).astype("<f4").tobytes()))
    records.append(("cube", builders.TYPE_CODES["F16"], (4, 3, 2), rng.standard_normal(24).astype("<f2").tobytes()))
    records.append(("tesseract.ünïcode", builders.TYPE_CODES["F32"], (2, 1, 3, 2),
                    np.arange(12, dtype="<f4").tobytes()))
    hp = builders.llama_hparams(len(LEGACY_VOCAB), 64, 32, 2, 1, 1)
    vocab = [(t, None if fmt == "ggml" else s) for t, s in LEGACY_VOCAB]
    data, fields = builders.build_file_with_fields(fmt, version, hp, vocab, records)
    return data, {f.name: f for f in fields}, records


@pytest.mark.parametrize(("fmt", "version"), LEGACY, ids=[f"{f}-v{v}" for f, v in LEGACY])
def test_legacy_file_decodes_field_by_field(tmp_path, fmt, version):
    raw, fields, records = legacy_file(fmt, version)
    path = tmp_path / "legacy.bin"
    path.write_bytes(raw)
    model = load(path)
    index = model.index

    def value(name: str) -> Any:  # a field's value straight from the bytes, via the builder's field map
        f = fields[name]
        return struct.unpack(f.fmt, raw[f.offset : f.offset + f.size])[0]

    assert model.format == fmt and model.version is VERSION_OF[(fmt, version)]
    assert model.version.number == (None if fmt == "ggml" else value("version"))
    for name in builders.HPARAM_NAMES:
        assert getattr(model.hparams, name) == value(name), name
    assert index.header_size == fields["ftype"].offset + fields["ftype"].size  # the vocabulary follows the header
    assert index.vocab_end == fields["tensor[0].n_dims"].offset
    assert len(model.vocab) == len(LEGACY_VOCAB)
    for i, (text, score) in enumerate(LEGACY_VOCAB):
        f = fields[f"vocab[{i}].text"]
        assert model.vocab.tokens[i] == raw[f.offset : f.offset + f.size] == text
        if fmt == "ggml":
            assert model.vocab.scores is None
        else:
            assert model.vocab.scores[i] == np.float32(value(f"vocab[{i}].score")) == np.float32(score)
    assert list(model.info) == [str(r[0]) for r in records]
    for i, (name, code, ne, data) in enumerate(records):
        t = model.info[name]
        assert int(t.type) == value(f"tensor[{i}].type") == code
        assert t.ne == tuple(value(f"tensor[{i}].ne[{j}]") for j in range(value(f"tensor[{i}].n_dims"))) == ne
        assert t.record_offset == fields[f"tensor[{i}].n_dims"].offset
        assert t.offset == fields[f"tensor[{i}].data"].offset
        assert t.nbytes == fields[f"tensor[{i}].data"].size == len(data)
        if fmt == "ggjt":
            assert t.offset % 32 == 0
        view = model.tensors[name]
        assert view.tobytes() == data
        assert np.shares_memory(view, model.data)
        _check_view_layout(view, builders.TYPE_NAMES[code], ne, builders.layout_of(fmt, version), data)


def _check_view_layout(view: np.ndarray, type_name: str, ne: tuple[int, ...], gen: int, data: bytes) -> None:
    """Float views have the PyTorch shape; quantized views are block records whose fields match docs/format.md §5.2."""
    shape = tuple(reversed(ne))
    if type_name in ("F32", "F16"):
        assert view.dtype == np.dtype("<f4" if type_name == "F32" else "<f2")
        assert view.shape == shape
        return
    elems, block_bytes = builders.BLOCKS[gen][type_name]
    assert view.shape == (*shape[:-1], ne[0] // elems)
    assert view.dtype.itemsize == block_bytes
    spec = spec_block_fields(type_name, gen)
    fmt = "<" + "".join(f.lstrip("<") for _, f in spec)
    assert struct.calcsize(fmt) == block_bytes
    blocks = view.reshape(-1)
    for b in (0, len(blocks) - 1):
        expected = struct.unpack(fmt, data[b * block_bytes : (b + 1) * block_bytes])
        for (field, f), want in zip(spec, expected):
            got = blocks[b][field]
            if f.endswith("s"):
                assert bytes(np.asarray(got).astype(np.uint8)) == want, field
            else:
                assert float(got) == want or (np.isnan(got) and np.isnan(want)), field


# ---------------------------------------------------------------- the worked example of docs/format.md §4.6

# (record offsets, data offsets, file size) per format, from the tables of docs/format.md §4.6
SECTION12_OFFSETS = {
    FileVersion.GGJT_V1: ([65, 512, 800], [128, 544, 864], 1248),
    FileVersion.GGMF_V1: ([65, 490, 773], [106, 517, 806], 1190),
    FileVersion.GGML: ([49, 474, 757], [90, 501, 790], 1174),
}


def _section12_inputs() -> tuple[HParams, Any, dict[str, np.ndarray], tuple]:
    hp, vocab, records = builders.section12_model()
    return (HParams(**hp), strategies.vocab_from_builder(vocab), strategies.arrays_from_records(records),
            (hp, vocab, records))


@pytest.mark.parametrize("version", list(SECTION12_OFFSETS), ids=str)
def test_section12_worked_example_is_reproduced_byte_exactly(tmp_path, version):
    hparams, vocab, arrays, (hp, bvocab, records) = _section12_inputs()
    path = tmp_path / "tiny.bin"
    written_plan = save(path, arrays, hparams=hparams, vocab=vocab, version=version)
    raw = path.read_bytes()
    records_at, data_at, size = SECTION12_OFFSETS[version]
    assert len(raw) == size == written_plan.size
    assert [t.record_offset for t in written_plan.tensors] == records_at
    assert [t.offset for t in written_plan.tensors] == data_at
    fmt, number = version.magic_name, version.number
    bvocab = [(t, None if fmt == "ggml" else s) for t, s in bvocab]
    assert raw == builders.build_file(fmt, number, hp, bvocab, records)
    if version is FileVersion.GGJT_V1:
        for offset, expected in builders.section12_hexdump().items():
            assert raw[offset : offset + len(expected)].hex() == expected.hex(), f"line {offset:#010x}"
    model = load(path)
    assert [(t.record_offset, t.offset) for t in model.index.tensors] == list(zip(records_at, data_at))


# ---------------------------------------------------------------- tiny golden outputs in tests/data

GOLDEN_SHA256 = {
    "section12.ggjt": "690929269174b04b45a9a9d4b474d328d32b6d47c42eaaad1107fbff607cd07b",
    "section12.ggmf": "4d60f70c44b8836cca0f59dcca7276dc244c882e5b3d4dcb09a5fd67bccb69f9",
    "section12.ggml": "a852225120ec779ca9863bf75a4cdb4108ff28b53ef0391efd753fba02b3a760",
    "quantized_v1.ggjt": "f1ac82032b85833633f082ad3b179ec427877b6ba0ed8de6ec1c6199d823a69e",
    "quantized_v3.ggjt": "6832b77ef0868546b4f595a33bfed5880aa9c286205f006ecf6e13a741fd0e94",
}


def _quantized_records(gen: int) -> list[builders.TensorInfo]:
    """Every quantized type of a generation, two rows of 64, values from a fixed ramp (no RNG drift)."""
    x = (np.arange(128, dtype=np.float32).reshape(2, 64) - 60.5) / 16
    out = [(f"{t.lower()}.weight", builders.TYPE_CODES[t], (64, 2), builders.quantize(x, t, gen))
           for t in builders.BLOCKS[gen] if t not in ("F32", "F16")]
    return out + [("norm.weight", builders.TYPE_CODES["F32"], (64,), x[0].astype("<f4").tobytes())]


def golden_inputs(name: str) -> tuple[str, int | None, dict[str, int], list[tuple[bytes, float | None]], list]:
    """(fmt, version, hparams, vocab, records) of a golden file, in the builder's terms."""
    if name.startswith("section12."):
        hp, vocab, records = builders.section12_model()
        fmt = name.split(".")[1]
        version = None if fmt == "ggml" else 1
        return fmt, version, hp, [(t, None if fmt == "ggml" else s) for t, s in vocab], records
    gen = int(name[len("quantized_v")])
    hp = builders.llama_hparams(3, 64, 32, 2, 1, 2)  # ftype 2: mostly Q4_0
    return "ggjt", gen, hp, builders.llama_vocab(3), _quantized_records(gen)


def write_golden(name: str, path: Path) -> None:
    """Write a golden file with ggmlfmt: save() for float-only files, the streaming writer otherwise."""
    fmt, number, hp, bvocab, records = golden_inputs(name)
    version = VERSION_OF[(fmt, number)]
    hparams, vocab = HParams(**hp), strategies.vocab_from_builder(bvocab)
    if name.startswith("section12."):
        save(path, strategies.arrays_from_records(records), hparams=hparams, vocab=vocab, version=version)
        return
    specs = [TensorInfo(str(n), GGMLType(code), ne) for n, code, ne, _ in records]
    with FileWriter(path, plan(version, hparams, vocab, specs), overwrite=True) as w:
        for n, _, _, data in reversed(records):  # any order: the plan fixed every offset
            w.write_tensor(str(n), data)


@pytest.mark.parametrize("name", list(GOLDEN_SHA256))
def test_golden_file_is_pinned_and_still_what_we_write(data_dir, tmp_path, name):
    pinned = (data_dir / name).read_bytes()
    write_golden(name, tmp_path / name)
    assert (tmp_path / name).read_bytes() == pinned
    assert hashlib.sha256(pinned).hexdigest() == GOLDEN_SHA256[name], hashlib.sha256(pinned).hexdigest()


@pytest.mark.parametrize("name", list(GOLDEN_SHA256))
def test_golden_file_is_what_the_independent_builder_and_parser_say(data_dir, name):
    raw = (data_dir / name).read_bytes()
    fmt, number, hp, bvocab, records = golden_inputs(name)
    assert raw == builders.build_file(fmt, number, hp, bvocab, records)
    parsed = builders.parse_file(raw)
    assert (parsed["magic"], parsed["version"], parsed["hparams"]) == (fmt, number, {"n_vocab": len(bvocab), **hp})
    assert parsed["vocab"] == [(t, None if s is None else float(np.float32(s))) for t, s in bvocab]
    for info, (n, code, ne, data) in zip(parsed["tensors"], records, strict=True):
        assert (info["name"], info["type"], info["ne"]) == (n, code, ne)
        assert raw[info["data_offset"] : info["data_offset"] + info["nbytes"]] == data
        if fmt == "ggjt":
            assert info["data_offset"] % 32 == 0


def test_float_model_from_save_reads_back_through_the_independent_parser(tmp_path):
    hp = builders.llama_hparams(300, 64, 32, 4, 2, 1)
    full = builders.llama_tensors(hp, "F16", seed=7)
    arrays = {n: a.astype(np.float16 if t == "F16" else np.float32) for n, (t, a) in full.items()}
    save(tmp_path / "m.bin", arrays, hparams=HParams(**hp), vocab=strategies.vocab_from_builder(
        builders.llama_vocab(300)))
    raw = (tmp_path / "m.bin").read_bytes()
    parsed = builders.parse_file(raw)
    assert [t["name"] for t in parsed["tensors"]] == builders.llama_tensor_names(2)
    for info in parsed["tensors"]:
        assert info["data_offset"] % 32 == 0
        t, a = full[info["name"]]
        assert builders.TYPE_NAMES[info["type"]] == t
        np.testing.assert_array_equal(builders.tensor_array(raw, info, parsed["layout"]), a)


def _regenerate(data_dir: Path) -> None:
    data_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in GOLDEN_SHA256:
            write_golden(name, Path(tmp) / name)
            raw = (Path(tmp) / name).read_bytes()
            (data_dir / name).write_bytes(raw)
            print(f'    "{name}": "{hashlib.sha256(raw).hexdigest()}",')


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_golden.py --regenerate")
    _regenerate(Path(__file__).resolve().parent / "data")
