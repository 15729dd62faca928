"""Validation on open: every malformed file is a FormatError naming the file, offset, field, expected and found."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import builders
from ggmlfmt import FormatError, Vocab, load, read_index
from ggmlfmt.errors import BadLayout, BadMagic, BadValue, Truncated, UnsupportedVersion
from ggmlfmt.layout import decode_index

HP = builders.llama_hparams(3, 64, 32, 2, 1, 1)
VOCAB = [(b" \xe2\x81\x87 ", 0.0), (b"", 0.0), (b"ab", -1.0)]
F16_64x3 = ("tok_embeddings.weight", 1, (64, 3), bytes(range(256)) + bytes(128))
F32_64 = ("norm.weight", 0, (64,), np.linspace(0, 1, 64, dtype="<f4").tobytes())


def good_file(fmt: str = "ggjt", version: int | None = 1, records=(F16_64x3, F32_64)) -> tuple[bytes, dict]:
    raw, fields = builders.build_file_with_fields(
        fmt, version, HP, [(t, None if fmt == "ggml" else s) for t, s in VOCAB], list(records))
    return raw, {f.name: f for f in fields}


def patched(raw: bytes, field: builders.Field, fmt: str, value: int) -> bytes:
    """`raw` with one field overwritten (struct format `fmt` must have the field's size)."""
    assert struct.calcsize(fmt) == field.size
    return raw[: field.offset] + struct.pack(fmt, value) + raw[field.offset + field.size :]


def open_bytes(tmp_path: Path, raw: bytes, name: str = "model.bin"):
    path = tmp_path / name
    path.write_bytes(raw)
    return load(path)


def expect(
    tmp_path: Path, raw: bytes, cls: type[FormatError], offset: int, field: str, match: str | None = None
) -> FormatError:
    """Open `raw` as a file and check the error's class, where it points, and that its text says so."""
    with pytest.raises(cls, match=match) as info:
        open_bytes(tmp_path, raw)
    e = info.value
    assert (e.path, e.offset, e.field) == (str(tmp_path / "model.bin"), offset, field)
    assert str(e).startswith(f"{tmp_path / 'model.bin'}: offset {offset:#x}: {field}: ")
    return e


# ---------------------------------------------------------------- magic and version


def test_bad_magic_names_file_and_value(tmp_path):
    """load reads every format, and its message names them all; the 2023 decoder, which reads only those, names
    only those (the control: the same bytes, another expectation)."""
    (tmp_path / "x.bin").write_bytes(b"nope" + bytes(60))
    with pytest.raises(BadMagic, match=r"x\.bin: offset 0x0: magic: expected a model file: the magic 'ggml', 'ggmf', "
                                       r"'ggjt' or 'GGUF', or a safetensors header; found 0x65706f6e"):
        load(tmp_path / "x.bin")
    with pytest.raises(BadMagic, match=r"expected a model magic 'ggml', 'ggmf' or 'ggjt' .*found 0x65706f6e"):
        decode_index(memoryview(b"nope" + bytes(60)))


@pytest.mark.parametrize(("magic", "words"), [(b"algg", "LoRA"), (b"nsgg", "session")])
def test_files_that_are_not_models_are_named_for_what_they_are(tmp_path, magic, words):
    expect(tmp_path, magic + bytes(60), BadMagic, 0, "magic", match=words)


def test_gguf_is_read_now_so_a_bad_gguf_version_is_named(tmp_path):
    # GGUF used to be a BadMagic "not a model" here; since issue 10 it is read (tests/test_gguf.py)
    expect(tmp_path, b"GGUF" + bytes(60), UnsupportedVersion, 4, "version", match="GGUF version 0")


@pytest.mark.parametrize(("fmt", "version"), [("ggmf", 0), ("ggmf", 2), ("ggjt", 0), ("ggjt", 4), ("ggjt", 2**32 - 1)])
def test_unknown_versions_are_refused_with_what_exists(tmp_path, fmt, version):
    raw = builders.build_file(fmt, version, HP, VOCAB, [], validate=False)
    e = expect(tmp_path, raw, UnsupportedVersion, 4, "version", match=f"version {version}")
    assert "expected one of [1]" in str(e) if fmt == "ggmf" else "expected one of [1, 2, 3]" in str(e)


@pytest.mark.parametrize("size", [0, 1, 3])
def test_a_file_shorter_than_a_magic_is_truncated(tmp_path, size):
    with pytest.raises(Truncated, match="magic"):
        open_bytes(tmp_path, b"tjgg"[:size])


# ---------------------------------------------------------------- truncation anywhere


@pytest.mark.parametrize(("fmt", "version"), [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 3)])
def test_every_cut_is_truncated_unless_it_falls_on_a_record_boundary(fmt, version):
    raw, fields = good_file(fmt, version)
    # a file may legally end after the vocabulary or after any tensor's data (no tensor count, docs/format.md §4)
    boundaries = {fields["tensor[0].n_dims"].offset: 0}
    boundaries |= {f.offset + f.size: int(n[len("tensor[") : n.index("]")]) + 1
                   for n, f in fields.items() if n.endswith(".data")}
    for cut in range(len(raw)):
        if cut in boundaries:
            index = decode_index(raw[:cut])
            assert len(index.tensors) == boundaries[cut]
        else:
            with pytest.raises(Truncated):
                decode_index(raw[:cut])


@given(data=st.data())
def test_corrupted_bytes_give_a_format_error_or_a_valid_model_never_another_exception(data):
    raw, _ = good_file(*data.draw(st.sampled_from([("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 3)])))
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    try:
        index = decode_index(bytes(buf[:cut]))
    except FormatError:
        return
    for t in index.tensors:  # whatever was accepted must lie inside the buffer
        assert 0 <= t.record_offset < t.offset <= t.offset + t.nbytes <= cut


@given(body=st.binary(max_size=200), magic=st.sampled_from([b"lmgg", b"fmgg\x01\0\0\0", b"tjgg\x03\0\0\0"]))
def test_random_bodies_after_a_valid_magic_never_escape_as_other_exceptions(body, magic):
    try:
        decode_index(magic + body)
    except FormatError:
        pass


# ---------------------------------------------------------------- header and vocabulary


def test_negative_header_field_is_a_bad_value(tmp_path):
    raw, fields = good_file()
    expect(tmp_path, patched(raw, fields["n_embd"], "<i", -64), BadValue, 12, "n_embd", match="found -64")


def test_unknown_ftype_is_a_bad_value(tmp_path):
    raw, fields = good_file()
    expect(tmp_path, patched(raw, fields["ftype"], "<i", 10), BadValue, 32, "ftype", match="unknown file type 10")


@pytest.mark.parametrize("n_vocab", [4, 1000, 2**31 - 1])
def test_a_vocabulary_count_larger_than_the_file_is_refused_before_reading_it(tmp_path, n_vocab):
    raw, fields = good_file(records=())  # the 29 bytes of vocabulary end the file
    expect(tmp_path, patched(raw, fields["n_vocab"], "<i", n_vocab), Truncated, 36, "vocab",
           match=f"n_vocab {n_vocab} needs at least {n_vocab * 8} bytes")


def test_negative_n_vocab_is_a_bad_value(tmp_path):
    raw, fields = good_file()
    expect(tmp_path, patched(raw, fields["n_vocab"], "<i", -1), BadValue, 8, "n_vocab")


@pytest.mark.parametrize("length", [-1, -(2**31), 65537])
def test_token_length_out_of_range_is_a_bad_value(tmp_path, length):
    raw, fields = good_file()
    f = fields["vocab[2].len"]
    expect(tmp_path, patched(raw, f, "<i", length), BadValue, f.offset, "vocab[2].len", match=f"found {length}")


def test_token_running_past_the_end_is_truncated(tmp_path):
    raw, fields = good_file(records=())
    f = fields["vocab[1].len"]
    expect(tmp_path, patched(raw, f, "<i", 20), Truncated, f.offset + 4, "vocab[1].text")


def test_large_vocabulary_of_arbitrary_bytes_decodes_exactly():
    rng = np.random.default_rng(5)
    vocab = [(rng.bytes(int(n)), float(np.float32(s))) for n, s in zip(rng.integers(0, 12, 32000),
                                                                        rng.standard_normal(32000))]
    for fmt, version in (("ggjt", 3), ("ggml", None)):
        v = [(t, None if fmt == "ggml" else s) for t, s in vocab]
        index = decode_index(builders.build_file(fmt, version, {**HP, "n_vocab": len(v)}, v, [F32_64]))
        assert index.vocab.tokens == tuple(t for t, _ in vocab)
        if fmt == "ggml":
            assert index.vocab.scores is None
        else:
            assert index.vocab.scores.dtype == np.float32
            assert index.vocab.scores.tolist() == [s for _, s in vocab]
        assert [t.name for t in index.tensors] == ["norm.weight"]


# ---------------------------------------------------------------- tensor records


@pytest.mark.parametrize("n_dims", [0, 5, -1, 2**31 - 1])
def test_dimension_count_outside_1_to_4_is_a_bad_value(tmp_path, n_dims):
    raw, fields = good_file()
    f = fields["tensor[1].n_dims"]
    expect(tmp_path, patched(raw, f, "<i", n_dims), BadValue, f.offset, "tensor[1].n_dims", match=f"found {n_dims}")


@pytest.mark.parametrize("name_len", [0, -5, 4097, 2**31 - 1])
def test_name_length_out_of_range_is_a_bad_value(tmp_path, name_len):
    raw, fields = good_file()
    f = fields["tensor[0].name_len"]
    expect(tmp_path, patched(raw, f, "<i", name_len), BadValue, f.offset, "tensor[0].name_len")


def test_name_running_past_the_end_is_truncated(tmp_path):
    raw, fields = good_file()
    f = fields["tensor[1].name_len"]
    raw = patched(raw, f, "<i", 4000)
    expect(tmp_path, raw, Truncated, fields["tensor[1].name"].offset, "tensor[1].name")


@pytest.mark.parametrize("code", [9, 10, 99, -1])
def test_unknown_type_code_is_a_bad_value(tmp_path, code):
    raw, fields = good_file()
    f = fields["tensor[0].type"]
    expect(tmp_path, patched(raw, f, "<i", code), BadValue, f.offset, "tensor[0].type", match=f"code {code}")


@pytest.mark.parametrize(("version", "type_name"), [(2, "Q4_2"), (2, "Q4_3"), (3, "Q4_2"), (3, "Q4_3")])
def test_types_that_a_version_no_longer_has_are_refused(tmp_path, version, type_name):
    rec = ("w", builders.TYPE_CODES[type_name], (32, 1), bytes(builders.BLOCKS[1][type_name][1] * 2))
    raw, fields = builders.build_file_with_fields("ggjt", version, HP, VOCAB, [rec], validate=False)
    f = {x.name: x for x in fields}["tensor[0].type"]
    expect(tmp_path, raw, BadValue, f.offset, "tensor[0].type", match=f"{type_name} does not exist")


def test_q4_2_still_reads_in_a_ggjt_v1_file(tmp_path):
    x = np.linspace(-1, 1, 32, dtype=np.float32)
    raw, _ = good_file("ggjt", 1, records=[("w", 4, (32,), builders.quantize(x, "Q4_2", 1))])
    model = open_bytes(tmp_path, raw)
    assert model.info["w"].type.name == "Q4_2" and model.tensors["w"].shape == (2,)


def test_negative_dim_is_a_bad_value(tmp_path):
    raw, fields = good_file()
    f = fields["tensor[0].ne[1]"]
    expect(tmp_path, patched(raw, f, "<i", -3), BadValue, f.offset, "tensor[0].ne[1]", match="found -3")


def test_row_length_that_is_not_whole_blocks_is_a_bad_value(tmp_path):
    rec = ("q", builders.TYPE_CODES["Q4_0"], (48, 1), bytes(40))
    raw, fields = builders.build_file_with_fields("ggjt", 3, HP, VOCAB, [rec], validate=False)
    f = {x.name: x for x in fields}["tensor[0].ne[0]"]
    expect(tmp_path, raw, BadValue, f.offset, "tensor 'q'.ne[0]",
           match="48 is not a multiple of the Q4_0 block size 32")


def test_sizes_beyond_any_file_are_truncated_without_overflow(tmp_path):
    big = 2**31 - 1
    raw, fields = builders.build_file_with_fields("ggjt", 1, HP, VOCAB, [("huge", 0, (big, 2**28, 2, 1), b"")],
                                                  validate=False)
    e = expect(tmp_path, raw, Truncated, fields[-1].offset, "tensor 'huge' data (F32 [2147483647, 268435456, 2, 1])")
    assert f"need {4 * big * 2**29} bytes" in str(e)  # 2**62 - 2**31: within int64, far beyond the file


def test_dims_whose_product_passes_int64_are_refused_before_any_size(tmp_path):
    big = 2**31 - 1  # big**3 > 2**63 - 1 (issue 17: a product of the dims is checked, as llama.cpp does)
    raw, fields = builders.build_file_with_fields("ggjt", 1, HP, VOCAB, [("huge", 0, (big, big, big, big), b"")],
                                                  validate=False)
    ne2 = next(f for f in fields if f.name == "tensor[0].ne[2]")
    e = expect(tmp_path, raw, BadValue, ne2.offset, "tensor 'huge'.ne[2]", match="above 2\\*\\*63-1")
    assert f"make {big**3} elements" in str(e)


def test_non_zero_padding_is_a_bad_layout(tmp_path):
    raw, fields = good_file()
    f = fields["tensor[1].pad"]
    assert f.size > 0
    raw = raw[: f.offset + f.size - 1] + b"\x01" + raw[f.offset + f.size :]
    expect(tmp_path, raw, BadLayout, f.offset, "tensor 'norm.weight' padding", match="zero bytes of alignment padding")


def test_ggjt_file_without_alignment_padding_is_refused(tmp_path):
    raw = builders.build_file("ggjt", 1, HP, VOCAB, [F16_64x3, F32_64], pad=False)
    with pytest.raises(FormatError):
        open_bytes(tmp_path, raw)


def test_padding_is_not_expected_in_ggmf_files(tmp_path):
    raw = builders.build_file("ggmf", 1, HP, VOCAB, [F16_64x3, F32_64], pad=True, validate=False)
    with pytest.raises(FormatError):
        open_bytes(tmp_path, raw)


def test_duplicate_tensor_names_are_a_bad_layout(tmp_path):
    raw, fields = good_file(records=(F32_64, F16_64x3, F32_64))
    f = fields["tensor[2].n_dims"]
    expect(tmp_path, raw, BadLayout, f.offset, "tensor[2].name", match="duplicate tensor name 'norm.weight'")


def test_name_that_is_not_utf8_is_a_bad_value(tmp_path):
    raw, fields = good_file(records=((b"bad\xff", 0, (4,), bytes(16)),))
    expect(tmp_path, raw, BadValue, fields["tensor[0].name"].offset, "tensor[0].name", match="UTF-8")


@pytest.mark.parametrize("extra", [b"\0", bytes(11)])
def test_trailing_bytes_after_the_last_tensor_are_truncated(tmp_path, extra):
    raw, fields = good_file()
    expect(tmp_path, raw + extra, Truncated, len(raw), "tensor[2] record header")


# ---------------------------------------------------------------- what open returns


def test_a_missing_file_or_directory_is_an_os_error_not_a_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.bin")
    with pytest.raises(IsADirectoryError):
        load(tmp_path)


def test_read_index_and_load_agree(tmp_path):
    raw, fields = good_file("ggjt", 3)
    model = open_bytes(tmp_path, raw)
    index = read_index(tmp_path / "model.bin")
    assert index == model.index
    assert index.file_size == len(raw)
    assert [(t.offset, t.nbytes) for t in index.tensors] == [
        (fields[f"tensor[{i}].data"].offset, fields[f"tensor[{i}].data"].size) for i in range(2)]


def test_views_are_read_only_and_copy_on_write_mode_keeps_the_file(tmp_path):
    raw, _ = good_file()
    model = open_bytes(tmp_path, raw)
    with pytest.raises(ValueError, match="read-only"):
        model.tensors["norm.weight"][0] = 5
    private = load(tmp_path / "model.bin", mode="c")
    private.tensors["norm.weight"][:] = 7
    assert (tmp_path / "model.bin").read_bytes() == raw
    assert load(tmp_path / "model.bin").tensors["norm.weight"][1] == np.float32(1 / 63)


def test_vocabularies_compare_by_tokens_and_score_bits():
    a = Vocab((b"x", b""), np.array([1.0, np.nan], np.float32))
    assert a == Vocab((b"x", b""), np.array([1.0, np.nan], np.float32))  # same bits, NaN included
    assert a != Vocab((b"x", b""), np.array([1.0, 2.0], np.float32))
    assert a != Vocab((b"x", b"y"), np.array([1.0, np.nan], np.float32))
    assert a != Vocab((b"x", b""), None) and Vocab((b"x",), None) == Vocab((b"x",), None)


def test_one_index_type_for_every_format(tmp_path):
    """ggjt, GGUF and safetensors files give the same Index type: the 2023 header where there is one, the
    metadata where there is some (written here by the gguf and safetensors packages, not by ggmlfmt)."""
    import gguf
    from safetensors.numpy import save_file

    from ggmlfmt.layout import Index

    ggjt = tmp_path / "m.bin"
    ggjt.write_bytes(good_file()[0])
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), arch="llama")
    w.add_tensor("norm.weight", np.ones(64, np.float32))
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()
    save_file({"norm.weight": np.ones(64, np.float32)}, str(tmp_path / "m.safetensors"), metadata={"k": "v"})
    a, g, s = (read_index(tmp_path / name) for name in ("m.bin", "m.gguf", "m.safetensors"))
    assert type(a) is type(g) is type(s) is Index
    assert a.hparams.astuple() == tuple(HP.values()) and len(a.vocab) == 3 and a.metadata == {}
    assert g.hparams is None and g.vocab is None and g.metadata["general.architecture"] == "llama"
    assert s.hparams is None and s.vocab is None and s.metadata == {"k": "v"}
    assert [t.name for t in g.tensors] == [t.name for t in s.tensors] == ["norm.weight"]
    assert g.tensors[0] != s.tensors[0]  # control: the same tensor at other offsets is another record
