"""Blocks written by llama.cpp's own quantizer, read through Model.floats, judged by gguf.quants bit for bit.

A tiny LLaMA GGUF (F32, written by the gguf package's GGUFWriter) is quantized by today's llama.cpp
(`llama_model_quantize` of llama-cpp-python 0.3.36, the function behind `llama-quantize`) to each
file type whose block types we dequantize; every tensor of every output must come out of
`load(path).floats` with the bit patterns of `gguf.quants.dequantize` on gguf's reader's bytes.
The client is built from source on first use (a failed build fails the tests).
"""

from __future__ import annotations

import subprocess

import gguf
import numpy as np
import pytest

import gguf_check  # tests/client, on sys.path by conftest
from ggmlfmt import GGMLType, load
from helpers import client_python

QUANTIZE = """
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
params.nthread = 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""
# llama.cpp file types -> block types their tensors must include (the quantizer mixes types per tensor)
FILE_TYPES = {
    "Q4_0": {GGMLType.Q4_0}, "Q4_1": {GGMLType.Q4_1}, "Q5_0": {GGMLType.Q5_0}, "Q5_1": {GGMLType.Q5_1},
    "Q8_0": {GGMLType.Q8_0}, "Q2_K": {GGMLType.Q2_K}, "Q3_K_M": {GGMLType.Q3_K}, "Q4_K_M": {GGMLType.Q4_K},
    "Q5_K_M": {GGMLType.Q5_K}, "Q6_K": {GGMLType.Q6_K}, "IQ4_NL": {GGMLType.IQ4_NL},
    "IQ4_XS": {GGMLType.IQ4_XS}, "TQ1_0": {GGMLType.TQ1_0}, "TQ2_0": {GGMLType.TQ2_0}, "IQ3_M": {GGMLType.IQ3_S},
}  # the other grid types (IQ1, IQ2, IQ3_XXS) need an importance matrix, which this API cannot take from Python;
# this llama.cpp refuses to write NVFP4 ("invalid output file type")


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory) -> str:
    """dim 256 and n_ff 768: every row a whole number of 256-value K-quant blocks."""
    rng = np.random.default_rng(21)
    shapes = {"tok_embeddings.weight": (320, 256), "norm.weight": (256,), "output.weight": (320, 256)}
    for name, shape in {"attention.wq": (256, 256), "attention.wk": (256, 256), "attention.wv": (256, 256),
                        "attention.wo": (256, 256), "feed_forward.w1": (768, 256), "feed_forward.w2": (256, 768),
                        "feed_forward.w3": (768, 256), "attention_norm": (256,), "ffn_norm": (256,)}.items():
        shapes[f"layers.0.{name}.weight"] = shape
    weights = {n: (0.05 * rng.standard_normal(s)).astype(np.float32) for n, s in shapes.items()}
    vocab = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)] + [(f"<0x{i:02X}>", 0.0, 6) for i in range(256)]
    vocab += [(f"w{i}", -float(i), 1) for i in range(320 - len(vocab))]
    path = tmp_path_factory.mktemp("llama") / "f32.gguf"
    gguf_check.write_llama_gguf(path, weights, gguf_check.TinyLlama(), vocab, gguf.GGMLQuantizationType.F32)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("file_type", FILE_TYPES)
def test_llama_cpp_s_quantized_files_read_as_gguf_py_reads_them(f32_model, tmp_path, file_type):
    out = tmp_path / f"{file_type}.gguf"
    run = subprocess.run([str(client_python("0.3.36")), "-c", QUANTIZE, f32_model, str(out), file_type],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    model, reader, source = load(out), gguf.GGUFReader(out), load(f32_model).floats
    assert FILE_TYPES[file_type] <= {info.type for info in model.info.values()}
    for t in reader.tensors:
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)])
        got = model.floats[t.name]
        assert got.dtype == np.float32 and got.shape == want.shape, t.name
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"{file_type} {t.name}")
        # control: these are llama.cpp's lossy blocks of the source, not the source passed through
        error = np.abs(got - source[t.name]).max()
        assert (error > 0) == (model.info[t.name].type != GGMLType.F32) and error < 0.2, (t.name, error)
