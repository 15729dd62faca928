"""Property tests: whatever save() writes, load() gives back, and the bytes are what the spec says."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

import builders
import strategies
from ggmlfmt import FileVersion, HParams, Vocab, load, save

ALL_VERSIONS = list(FileVersion)


def _bits(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Values as unsigned integers of the same width, so NaN payloads and -0.0 compare exactly."""
    a = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"))
    return a.view(f"<u{a.dtype.itemsize}")


def _assert_same_arrays(loaded: npt.NDArray[Any], original: npt.NDArray[Any]) -> None:
    assert loaded.shape == original.shape
    assert loaded.dtype == original.dtype.newbyteorder("<")
    np.testing.assert_array_equal(_bits(loaded), _bits(original))


@given(tensors=strategies.tensor_dicts(), vocab=strategies.vocabs(), data=st.data())
def test_save_then_load_gives_back_every_array_header_and_token(tensors, vocab, data, tmp_path_factory):
    hparams = data.draw(strategies.hparams_for(vocab))
    path = tmp_path_factory.mktemp("rt") / "m.bin"
    save(path, tensors, hparams=hparams, vocab=vocab)
    model = load(path)
    assert model.version is FileVersion.GGJT_V1
    assert model.hparams == hparams
    assert model.vocab.tokens == vocab.tokens
    np.testing.assert_array_equal(model.vocab.scores, vocab.scores)
    assert list(model.tensors) == list(tensors)  # file order = insertion order
    for name, arr in tensors.items():
        _assert_same_arrays(model.tensors[name], arr)


@given(tensors=strategies.tensor_dicts(), vocab=strategies.vocabs(), version=st.sampled_from(ALL_VERSIONS),
       data=st.data())
def test_written_bytes_equal_the_independent_builder_and_offsets_are_aligned(
    tensors, vocab, version, data, tmp_path_factory
):
    hparams = data.draw(strategies.hparams_for(vocab))
    path = tmp_path_factory.mktemp("rt") / "m.bin"
    save(path, tensors, hparams=hparams, vocab=vocab, version=version)
    written = path.read_bytes()
    fmt, number = version.magic_name, version.number
    expected, fields = builders.build_file_with_fields(
        fmt, number, strategies.builder_hparams(hparams), strategies.builder_vocab(vocab, scores=fmt != "ggml"),
        strategies.builder_records(tensors), validate=False,  # validate=False: the builder refuses zero-size dims
    )
    assert written == expected
    data_offsets = [f.offset for f in fields if f.name.endswith(".data")]
    assert len(data_offsets) == len(tensors)
    if version.aligned:
        assert all(off % 32 == 0 for off in data_offsets), data_offsets


@given(tensors=strategies.tensor_dicts(), vocab=strategies.vocabs())
def test_independent_parser_reads_what_save_wrote(tensors, vocab, tmp_path_factory):
    tensors = {n: a for n, a in tensors.items() if a.size}  # the builder's parser rejects zero-size dims
    hparams = HParams(len(vocab), 4096, 256, 32, 32, 128, 1)
    path = tmp_path_factory.mktemp("rt") / "m.bin"
    save(path, tensors, hparams=hparams, vocab=vocab)
    raw = path.read_bytes()
    parsed = builders.parse_file(raw)
    assert (parsed["magic"], parsed["version"]) == ("ggjt", 1)
    assert parsed["hparams"] == strategies.builder_hparams(hparams)
    assert [t for t, _ in parsed["vocab"]] == list(vocab.tokens)
    np.testing.assert_array_equal(np.array([s for _, s in parsed["vocab"]], np.float32), vocab.scores)
    assert [t["name"] for t in parsed["tensors"]] == list(tensors)
    for info, (name, arr) in zip(parsed["tensors"], tensors.items()):
        assert info["data_offset"] % 32 == 0
        assert info["ne"] == tuple(reversed(arr.shape))
        assert info["type"] == builders.TYPE_CODES["F32" if arr.dtype.itemsize == 4 else "F16"]
        assert raw[info["data_offset"] : info["data_offset"] + info["nbytes"]] == strategies.le_bytes(arr)
    if tensors:  # the file ends exactly at the end of the last tensor's data, no trailing padding
        assert len(raw) == parsed["tensors"][-1]["data_offset"] + parsed["tensors"][-1]["nbytes"]


def test_nan_scores_and_tensor_payloads_survive_bit_for_bit(tmp_path):
    signalling = np.array([0x7F800001, 0xFFC00123, 0x7FC00000], dtype="<u4").view("<f4")
    vocab = Vocab((b"a", b"", b"\x00\xff"), signalling.copy())
    tensors = {"w": np.array([0x7C01, 0xFE00, 0x8000], dtype="<u2").view("<f2"), "v": signalling.copy()}
    save(tmp_path / "m.bin", tensors, hparams=HParams(3, 1, 1, 1, 1, 1, 1), vocab=vocab)
    model = load(tmp_path / "m.bin")
    assert model.vocab.scores.view("<u4").tolist() == [0x7F800001, 0xFFC00123, 0x7FC00000]
    for name, arr in tensors.items():
        _assert_same_arrays(model.tensors[name], arr)
    raw = (tmp_path / "m.bin").read_bytes()
    parsed = builders.parse_file(raw)
    first = parsed["tensors"][0]
    assert struct.unpack("<3H", raw[first["data_offset"] : first["data_offset"] + 6]) == (0x7C01, 0xFE00, 0x8000)


def test_a_unversioned_ggml_file_has_no_scores_after_a_round_trip(tmp_path):
    vocab = Vocab((b"x", b"yz"), np.array([1.0, 2.0], np.float32))
    save(tmp_path / "m.bin", {"a": np.ones((2, 3), np.float32)}, hparams=HParams(2, 3, 1, 1, 1, 3, 0), vocab=vocab,
         version=FileVersion.GGML)
    model = load(tmp_path / "m.bin")
    assert model.version is FileVersion.GGML
    assert model.vocab.tokens == (b"x", b"yz") and model.vocab.scores is None
    np.testing.assert_array_equal(model.tensors["a"], np.ones((2, 3), np.float32))


@pytest.mark.parametrize("version", [FileVersion.GGMF_V1, FileVersion.GGJT_V1])
def test_scores_are_required_where_the_format_has_them(tmp_path, version):
    with pytest.raises(ValueError, match="score"):
        save(tmp_path / "m.bin", {}, hparams=HParams(1, 1, 1, 1, 1, 1, 0), vocab=Vocab((b"a",)), version=version)
    assert not (tmp_path / "m.bin").exists()


def test_names_up_to_4096_utf8_bytes_are_stored_and_longer_ones_refused(tmp_path):
    longest = "é" * 2048  # 4096 bytes in UTF-8
    vocab, hp = Vocab((), np.zeros(0, np.float32)), HParams(0, 1, 1, 1, 1, 1, 0)
    save(tmp_path / "m.bin", {longest: np.ones(1, np.float32)}, hparams=hp, vocab=vocab)
    assert list(load(tmp_path / "m.bin").tensors) == [longest]
    assert builders.parse_file((tmp_path / "m.bin").read_bytes())["tensors"][0]["name"] == longest
    with pytest.raises(ValueError, match="1..4096 UTF-8 bytes, got 4097"):
        save(tmp_path / "n.bin", {longest + "x": np.ones(1, np.float32)}, hparams=hp, vocab=vocab)
