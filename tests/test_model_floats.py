"""Model.floats: float32 values of every tensor of any file, judged by gguf's reader and dequantizer and by builders."""

from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest

import builders
from ggmlfmt import GGMLType, load

Q = gguf.GGMLQuantizationType
RNG = np.random.default_rng(21)


def random_blocks(t: Q, rows: int, blocks: int) -> np.ndarray:
    size = gguf.GGML_QUANT_SIZES[t][1]
    return RNG.integers(0, 256, (rows, blocks * size), dtype=np.uint8)


def gguf_file(path, tensors) -> None:
    """A GGUF file written by the gguf package's GGUFWriter (the independent writer)."""
    w = gguf.GGUFWriter(path, "llama")
    for name, arr, raw in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference(path) -> dict[str, np.ndarray]:
    """What gguf's reader and dequantizer make of each tensor (reader shapes are PyTorch order, like ours)."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN scales in the random blocks
        for t in gguf.GGUFReader(path).tensors:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
            out[t.name] = values.reshape([int(n) for n in reversed(t.shape)])
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One GGUF file with plain, 2023 and today's block types, real quantized and random blocks."""
    x = RNG.standard_normal((4, 256)).astype(np.float32)
    tensors = [
        ("f32", x, None),
        ("f16", x.astype(np.float16), None),
        ("bf16", gguf.quants.quantize(x, Q.BF16), Q.BF16),
        ("q4_0", gguf.quants.quantize(x, Q.Q4_0), Q.Q4_0),
        ("q8_0", gguf.quants.quantize(x, Q.Q8_0), Q.Q8_0),
        ("tq2_0", gguf.quants.quantize(x, Q.TQ2_0), Q.TQ2_0),
        ("mxfp4", gguf.quants.quantize(x, Q.MXFP4), Q.MXFP4),
    ]
    for t in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS, Q.TQ1_0, Q.IQ2_XXS, Q.IQ3_S, Q.IQ1_M):
        tensors.append((t.name.lower(), random_blocks(t, 3, 2), t))  # 3 rows of 2 blocks
    path = tmp_path_factory.mktemp("floats") / "mixed.gguf"
    gguf_file(path, tensors)
    return path


def test_floats_of_every_tensor_match_gguf_py(mixed):
    model, want = load(mixed), reference(mixed)
    assert list(model.floats) == list(model.tensors) == list(want) and len(model.floats) == len(want)
    seen = set()
    for name, values in model.floats.items():
        assert values.dtype == np.float32 and values.shape == model.info[name].shape == want[name].shape, name
        np.testing.assert_array_equal(values.view(np.uint32), want[name].view(np.uint32), err_msg=name)
        seen.add(model.info[name].type)
    assert {GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.IQ4_XS, GGMLType.BF16, GGMLType.F16} <= seen


def test_f32_tensors_are_the_view_itself_and_others_are_new_arrays(mixed):
    model = load(mixed)
    assert model.floats["f32"] is model.tensors["f32"]
    assert np.shares_memory(model.floats["f32"], model.data)
    q = model.floats["q4_k"]
    assert not np.shares_memory(q, model.data) and q.flags.writeable
    assert model.floats["q4_k"] is not q  # computed on each access, nothing kept


def test_control_a_wrong_generation_would_be_caught(tmp_path):
    """Control: the same bytes read with another generation's nibble order give other values."""
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    data = builders.quantize(x, "Q4_0", 1)
    path = tmp_path / "m.bin"
    rec = ("t", builders.TYPE_CODES["Q4_0"], (64, 2), data)
    path.write_bytes(builders.build_file("ggjt", 1, builders.llama_hparams(1, 64, 32, 2, 1, 2), [(b"a", 0.0)], [rec]))
    got = load(path).floats["t"]
    np.testing.assert_array_equal(got, builders.dequantize(data, "Q4_0", 1, (2, 64)))
    assert not np.array_equal(got, builders.dequantize(data, "Q4_0", 2, (2, 64)))


@pytest.mark.parametrize(("fmt", "version"), [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)])
def test_floats_of_2023_files_use_the_file_s_block_generation(tmp_path, fmt, version):
    gen = {None: 1, 1: 1, 2: 2, 3: 3}[version]
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    recs, want = [], {}
    for type_name in builders.BLOCKS[gen]:
        data = builders.quantize(x, type_name, gen)
        recs.append((type_name.lower(), builders.TYPE_CODES[type_name], (64, 3), data))
        want[type_name.lower()] = builders.dequantize(data, type_name, gen, (3, 64))
    path = tmp_path / "m.bin"
    hp = builders.llama_hparams(1, 64, 32, 2, 1, 0)
    path.write_bytes(builders.build_file(fmt, version, hp, [(b"a", 0.0)], recs, validate=False))
    floats = load(path).floats
    assert set(floats) == set(want)
    for name, values in want.items():
        assert floats[name].dtype == np.float32
        np.testing.assert_array_equal(floats[name], values, err_msg=name)


def test_a_type_without_dequantizer_names_the_tensor(tmp_path):
    path = tmp_path / "q1_0.gguf"
    gguf_file(path, [("w", random_blocks(Q.Q1_0, 1, 1), Q.Q1_0)])
    with pytest.raises(ValueError, match="tensor 'w': no numpy dequantizer for Q1_0") as e:
        load(path).floats["w"]
    from ggmlfmt.errors import CannotWrite, FormatError
    assert isinstance(e.value, CannotWrite) and not isinstance(e.value, FormatError)  # what we cannot do, not a bad file


def test_torch_hand_off_takes_the_floats(mixed):
    torch = pytest.importorskip("torch")
    model = load(mixed)
    got = model.torch_tensors(floats=True)
    assert set(got) == set(model.floats)
    for name, t in got.items():
        assert t.dtype == torch.float32, name
        np.testing.assert_array_equal(t.numpy().view(np.uint32), model.floats[name].view(np.uint32), err_msg=name)
    assert got["f16"].dtype == torch.float32 and model.torch_tensors()["f16"].dtype == torch.float16
