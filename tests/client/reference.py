"""Plain numpy forward pass of a LLaMA model, used as ground truth for llama.cpp logits.

The defaults are LLaMA-1 (RMS eps 1e-6, RoPE theta 1e4 over the whole head, one KV head per query
head); GGUF models may carry other values (`llama.attention.layer_norm_rms_epsilon`,
`llama.rope.freq_base`, `llama.rope.dimension_count`, `llama.attention.head_count_kv`), passed as
keyword arguments of forward(). Weights use Meta names and PyTorch shapes (callers map GGUF names back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

NORM_EPS = 1e-6  # LLaMA-1 params.json norm_eps; what 2023 llama.cpp hard-coded (0.1.78 must be told)
ROPE_THETA = 10000.0


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """RMSNorm over the last axis, then scale by weight."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps)) * weight


def rope(x: np.ndarray, positions: np.ndarray, theta: float = ROPE_THETA, n_rot: int | None = None,
         factors: np.ndarray | None = None) -> np.ndarray:
    """Rotate adjacent pairs (2i, 2i+1) of the first n_rot head dims (default all); x is (T, H, hd).

    This is ggml rope mode 0 / Meta model.py; like ggml, frequencies are theta^(-2i/n_rot) and the dims
    past n_rot pass through unchanged. factors (n_rot/2 divisors, Llama 3.1's scaled RoPE as
    rope_freqs.weight holds them): frequency i is divided by factors[i].
    """
    hd = x.shape[-1]
    n_rot = hd if n_rot is None else n_rot
    freqs = theta ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)  # (n_rot/2,)
    if factors is not None:
        freqs = freqs / np.asarray(factors, dtype=np.float64)
    angles = positions[:, None].astype(np.float64) * freqs[None, :]  # (T, n_rot/2)
    cos = np.cos(angles)[:, None, :].astype(x.dtype)
    sin = np.sin(angles)[:, None, :].astype(x.dtype)
    x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
    out = x.copy()
    out[..., 0:n_rot:2] = x0 * cos - x1 * sin
    out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return out


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU activation x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def attention(x: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray,
              n_heads: int, positions: np.ndarray, *, n_kv_heads: int | None = None,
              rope_theta: float = ROPE_THETA, n_rot: int | None = None,
              rope_factors: np.ndarray | None = None) -> np.ndarray:
    """Causal multi-head self-attention with RoPE on q and k; x is (T, dim).

    With n_kv_heads < n_heads (GQA), wk/wv have n_kv_heads * head_dim rows and query head h uses KV
    head h // (n_heads / n_kv_heads), as Meta's repeat_kv and ggml's broadcasting matmul do.
    """
    t, dim = x.shape
    hd = dim // n_heads
    n_kv = n_heads if n_kv_heads is None else n_kv_heads
    q = rope((x @ wq.T).reshape(t, n_heads, hd), positions, rope_theta, n_rot, rope_factors)
    k = rope((x @ wk.T).reshape(t, n_kv, hd), positions, rope_theta, n_rot, rope_factors)
    v = (x @ wv.T).reshape(t, n_kv, hd)
    k, v = np.repeat(k, n_heads // n_kv, axis=1), np.repeat(v, n_heads // n_kv, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd).astype(x.dtype)  # (H, T, T)
    mask = np.triu(np.ones((t, t), dtype=bool), k=1)
    scores = np.where(mask[None], -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", probs, v).reshape(t, dim)
    return out @ wo.T


def feed_forward(x: np.ndarray, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray) -> np.ndarray:
    """SwiGLU FFN: w2(silu(w1 x) * w3 x)."""
    return (silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def n_layers_of(weights: Mapping[str, np.ndarray]) -> int:
    """Count the layers.N.* blocks present in a Meta-named state dict."""
    n = 0
    while f"layers.{n}.attention.wq.weight" in weights:
        n += 1
    return n


def forward(weights: Mapping[str, np.ndarray], n_heads: int, tokens: Sequence[int],
            dtype: type = np.float32, *, n_kv_heads: int | None = None, norm_eps: float = NORM_EPS,
            rope_theta: float = ROPE_THETA, n_rot: int | None = None,
            rope_factors: np.ndarray | None = None) -> np.ndarray:
    """Return logits (n_tokens, n_vocab) as float32 for a prompt evaluated from position 0.

    n_kv_heads None = n_heads (no GQA); n_rot None = the whole head dim; rope_factors None = plain RoPE.
    Without output.weight the output shares the token embedding (tied). Other defaults: LLaMA-1.
    """
    w = {name: np.asarray(a, dtype=dtype) for name, a in weights.items()}
    positions = np.arange(len(tokens))
    h = w["tok_embeddings.weight"][np.asarray(tokens, dtype=np.int64)]
    for i in range(n_layers_of(w)):
        p = f"layers.{i}."
        x = rms_norm(h, w[p + "attention_norm.weight"], norm_eps)
        h = h + attention(x, w[p + "attention.wq.weight"], w[p + "attention.wk.weight"],
                          w[p + "attention.wv.weight"], w[p + "attention.wo.weight"], n_heads, positions,
                          n_kv_heads=n_kv_heads, rope_theta=rope_theta, n_rot=n_rot, rope_factors=rope_factors)
        x = rms_norm(h, w[p + "ffn_norm.weight"], norm_eps)
        h = h + feed_forward(x, w[p + "feed_forward.w1.weight"], w[p + "feed_forward.w2.weight"],
                             w[p + "feed_forward.w3.weight"])
    h = rms_norm(h, w["norm.weight"], norm_eps)
    return (h @ w.get("output.weight", w["tok_embeddings.weight"]).T).astype(np.float32)
