"""Run today's llama.cpp (llama-cpp-python 0.3.36) on a GGUF file and compare its logits with reference.py.

Used from the test venv (numpy, gguf). The client itself runs in its own venv and a subprocess
(run_gguf_client.py), so a crash inside llama.cpp is a failed test, never a dead test session.

    python = setup_client.ensure_client(CLIENT, setup_client.CLIENT_ROOT)   # tests: the `client` fixture
    out = run_gguf_client(python, "model.gguf", [1, 300, 17])
    want = reference_logits("model.gguf", [1, 300, 17])          # or reference.forward(source weights)
    assert_logits_match(out["logits"], want, F16_TOLERANCE)

Also a reference GGUF writer (write_llama_gguf, on the gguf package's GGUFWriter) for self-tests
and controls, and readers that map a GGUF back to Meta names for reference.forward.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

import reference
import setup_client

CLIENT = "0.3.36"
CLIENT_ROOT = setup_client.CLIENT_ROOT
RUNNER = Path(__file__).with_name("run_gguf_client.py")

# rel = max|client - reference| / max|reference| (relative_error). Measured (tests/client/README.md):
# 2-4 layers (dim 64/128): f32 9e-5, f16 2.6e-4..4e-4, q8_0/q4_0/q4_1/q5_0/q5_1 5e-3..9.2e-3;
# 32 layers (dim 128): f16 8e-4, quantized 1.4e-2..2.0e-2. f32/f16: the client's f16 KV cache and f16
# activations. Quantized: the client quantizes every matmul's activations to 8 bits (q8_0/q8_1); the
# same weights written as F32 agree to 8e-5, so that error is the kernels, not the file.
# Corrupted tensors (one wq x1.5; rows 2i/2i+1 of one wk head swapped) measured 2.2e-2 / 4.5e-2 at 2
# layers, 2.4e-2..6.1e-2 / 5.5e-2..2.2e-1 at 32 layers.
# f32/f16: 5e-3 is >= 6x the error measured at any depth and below every corruption. Quantized:
# 1.5e-2 up to 4 layers, 4e-2 beyond (to 32 layers): 2x the worst measured error; a deeper model
# needs its own measurement. Both stay below the wk-swap corruption at that depth (a tested control).
F32_TOLERANCE = 5e-3
F16_TOLERANCE = 5e-3
QUANT_TOLERANCE = 1.5e-2  # models of <= 4 layers
QUANT_TOLERANCE_DEEP = 4e-2  # 5..32 layers


def quant_tolerance(n_layers: int) -> float:
    """The tolerance for a quantized model of this depth (measured up to 32 layers).

    Raises:
        ValueError: more than 32 layers (not measured).
    """
    if n_layers > 32:
        raise ValueError(f"no measured tolerance for {n_layers} layers (up to 32): measure it first")
    return QUANT_TOLERANCE if n_layers <= 4 else QUANT_TOLERANCE_DEEP


# GGUF LLaMA tensor names (as llama.cpp loads them; gguf.constants spells the same) -> Meta names (reference.py)
_GLOBAL_NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
                 "output.weight": "output.weight"}
_BLOCK_NAMES = {"attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
                "attn_v": "attention.wv", "attn_output": "attention.wo", "ffn_norm": "ffn_norm",
                "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}

# llama_token_attr bits (llama.h) for each tokenizer.ggml.token_type value
TOKEN_TYPE_ATTR = {1: 1 << 2, 2: 1 << 0, 3: 1 << 3, 4: 1 << 4, 5: 1 << 1, 6: 1 << 5}


class ClientError(RuntimeError):
    """The client process failed: non-zero exit status or killed by a signal."""

    def __init__(self, model: os.PathLike[str] | str, returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        how = f"exited {returncode}"
        if returncode < 0:
            try:
                how = f"killed by {signal.Signals(-returncode).name} (returncode {returncode})"
            except ValueError:
                how = f"killed by signal {-returncode}"
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        super().__init__(f"llama-cpp-python {CLIENT} on {model}: {how}; last stderr lines:\n{tail}")


def run_gguf_client(python: os.PathLike[str] | str, model_path: os.PathLike[str] | str, tokens: Sequence[int],
                    *, n_ctx: int = 64, vocab_only: bool = False, extra_bufts: bool = False,
                    extra: Sequence[str] = (), timeout: float = 300) -> dict[str, Any]:
    """Run run_gguf_client.py in a subprocess; return its JSON (logits as a float32 array).

    Repacking stays off unless extra_bufts (run_gguf_client.py's docstring says why).

    Raises:
        ClientError: the process failed or crashed (the signal is named). subprocess.TimeoutExpired.
    """
    cmd = [os.fspath(python), str(RUNNER), os.fspath(model_path), json.dumps([int(t) for t in tokens]), str(n_ctx)]
    cmd += ["--vocab-only"] * vocab_only + ["--extra-bufts"] * extra_bufts + list(extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ClientError(model_path, proc.returncode, proc.stderr)
    out = json.loads(proc.stdout)
    out["logits"] = np.asarray(out["logits"], dtype=np.float32)
    out["stderr"] = proc.stderr
    return out


def relative_error(client_logits: Any, ref_logits: Any) -> float:
    """max |client - ref| / max |ref| over every position and token.

    Raises:
        AssertionError: the shapes differ or the client gave non-finite values.
    """
    got, want = np.asarray(client_logits, dtype=np.float64), np.asarray(ref_logits, dtype=np.float64)
    assert got.shape == want.shape, f"logits shape {got.shape}, reference {want.shape}"
    assert np.isfinite(got).all(), "client logits are not all finite"
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def assert_logits_match(client_logits: Any, ref_logits: Any, tol: float) -> float:
    """Assert relative_error <= tol; return the error (to report or tighten tolerances).

    Raises:
        AssertionError: shapes differ, non-finite logits, or the error exceeds tol.
    """
    rel = relative_error(client_logits, ref_logits)
    assert rel <= tol, f"client logits differ from the numpy reference by {rel:.3e} (relative), tolerance {tol:.1e}"
    return rel


def decisive_argmax(ref_logits: np.ndarray, margin: float) -> np.ndarray:
    """Positions whose reference top-1 beats top-2 by more than margin (absolute): argmax is then meaningful."""
    top2 = np.sort(np.asarray(ref_logits, dtype=np.float64), axis=-1)[:, -2:]
    return np.flatnonzero(top2[:, 1] - top2[:, 0] > margin)


# ---------------------------------------------------------------------------------------------------
# GGUF -> reference.forward


def meta_name(gguf_name: str) -> str:
    """The Meta name of a GGUF LLaMA tensor name (blk.N.attn_q.weight -> layers.N.attention.wq.weight).

    Raises:
        KeyError: not a LLaMA tensor name.
    """
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    blk, n, part, weight = gguf_name.split(".")
    if blk != "blk" or weight != "weight" or not n.isdigit():
        raise KeyError(gguf_name)
    return f"layers.{n}.{_BLOCK_NAMES[part]}.weight"


def gguf_name(name: str) -> str:
    """The GGUF name of a Meta tensor name (inverse of meta_name).

    Raises:
        KeyError: not a LLaMA tensor name.
    """
    inverse = {v: k for k, v in _GLOBAL_NAMES.items()}
    if name in inverse:
        return inverse[name]
    layers, n, rest = name.split(".", 2)
    part = {v: k for k, v in _BLOCK_NAMES.items()}[rest.removesuffix(".weight")]
    return f"blk.{n}.{part}.weight"


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value as Python (gguf's ReaderField.contents()), or default when absent."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_hparams(reader: gguf.GGUFReader) -> dict[str, Any]:
    """reference.forward keyword arguments (and n_heads) from a LLaMA GGUF's metadata, llama.cpp's defaults."""
    n_heads = int(_field(reader, "llama.attention.head_count"))
    dim = int(_field(reader, "llama.embedding_length"))
    return {
        "n_heads": n_heads,
        "n_kv_heads": int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        "norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", reference.ROPE_THETA)),
        "n_rot": int(_field(reader, "llama.rope.dimension_count", dim // n_heads)),
    }


def meta_weights_from_gguf(path: os.PathLike[str] | str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every tensor of a LLaMA GGUF as float32 in PyTorch shape under its Meta name (dequantized by
    gguf.quants), and the reference.forward hyper-parameters."""
    reader = gguf.GGUFReader(path)
    weights = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        a = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType(int(t.tensor_type)))
        weights[meta_name(t.name)] = np.asarray(a, dtype=np.float32).reshape(shape)
    return weights, gguf_hparams(reader)


def reference_logits(path: os.PathLike[str] | str, tokens: Sequence[int]) -> np.ndarray:
    """reference.forward on the weights a GGUF holds (read by the gguf package, not by our reader)."""
    weights, hp = meta_weights_from_gguf(path)
    n_heads = hp.pop("n_heads")
    return reference.forward(weights, n_heads, tokens, **hp)


# ---------------------------------------------------------------------------------------------------
# A reference LLaMA GGUF writer (gguf.GGUFWriter), for self-tests and controls


@dataclass(frozen=True)
class TinyLlama:
    """Hyper-parameters of a test model, in the GGUF keys' terms."""

    n_heads: int = 4
    n_kv_heads: int = 4
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    n_ctx: int = 2048


# llama_ftype for "mostly X" (general.file_type)
FILE_TYPE = {gguf.GGMLQuantizationType.F32: 0, gguf.GGMLQuantizationType.F16: 1,
             gguf.GGMLQuantizationType.Q4_0: 2, gguf.GGMLQuantizationType.Q4_1: 3,
             gguf.GGMLQuantizationType.Q8_0: 7, gguf.GGMLQuantizationType.Q5_0: 8,
             gguf.GGMLQuantizationType.Q5_1: 9}


def sentencepiece_vocab(tokenizer: os.PathLike[str] | str) -> list[tuple[str, float, int]]:
    """(raw piece, score, token type) per id, typed as llama.cpp's own converter types them."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=os.fspath(tokenizer))
    out = []
    for i in range(sp.vocab_size()):
        kind = (2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                else 6 if sp.is_byte(i) else 1)
        out.append((sp.id_to_piece(i), float(sp.get_score(i)), kind))
    return out


def _encode(a: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """1-D tensors stay F32 (as llama.cpp's converters write them); 2-D ones get qtype."""
    if a.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(a, dtype=np.float32), gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(a, dtype=np.float16), qtype
    return gguf.quants.quantize(np.ascontiguousarray(a, dtype=np.float32), qtype), qtype


def write_llama_gguf(path: os.PathLike[str] | str, weights: Mapping[str, np.ndarray], hp: TinyLlama,
                     vocab: Sequence[tuple[str, float, int]], qtype: gguf.GGMLQuantizationType) -> Path:
    """Write a LLaMA GGUF with the gguf package; weights use Meta names and PyTorch shapes. Return path."""
    path = Path(path)
    dim = weights["tok_embeddings.weight"].shape[1]
    n_layers = reference.n_layers_of(weights)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama")
    w.add_file_type(FILE_TYPE[qtype])
    if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(weights["layers.0.feed_forward.w1.weight"].shape[0])
    w.add_rope_dimension_count(dim // hp.n_heads)
    w.add_head_count(hp.n_heads)
    w.add_head_count_kv(hp.n_kv_heads)
    w.add_layer_norm_rms_eps(hp.norm_eps)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_tokenizer_model("llama")
    w.add_token_list([p for p, _, _ in vocab])
    w.add_token_scores([s for _, s, _ in vocab])
    w.add_token_types([t for _, _, t in vocab])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    for name, a in weights.items():
        if name == "rope.freqs":
            continue
        data, kind = _encode(a, qtype)
        w.add_tensor(gguf_name(name), data, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
