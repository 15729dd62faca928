"""Plain numpy forward pass of a LLaMA-1 model, used as ground truth for llama.cpp logits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

NORM_EPS = 1e-6  # LLaMA-1 params.json norm_eps; what 2023 llama.cpp hard-coded (0.1.78 must be told)
ROPE_THETA = 10000.0


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """RMSNorm over the last axis, then scale by weight."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps)) * weight


def rope(x: np.ndarray, positions: np.ndarray, theta: float = ROPE_THETA) -> np.ndarray:
    """Rotate adjacent pairs (2i, 2i+1) of the head dim; x is (T, H, hd) (ggml rope mode 0 / Meta model.py)."""
    hd = x.shape[-1]
    freqs = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (hd/2,)
    angles = positions[:, None].astype(np.float64) * freqs[None, :]  # (T, hd/2)
    cos = np.cos(angles)[:, None, :].astype(x.dtype)
    sin = np.sin(angles)[:, None, :].astype(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU activation x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def attention(x: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray,
              n_heads: int, positions: np.ndarray) -> np.ndarray:
    """Causal multi-head self-attention with RoPE on q and k; x is (T, dim)."""
    t, dim = x.shape
    hd = dim // n_heads
    q = rope((x @ wq.T).reshape(t, n_heads, hd), positions)
    k = rope((x @ wk.T).reshape(t, n_heads, hd), positions)
    v = (x @ wv.T).reshape(t, n_heads, hd)
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
            dtype: type = np.float32) -> np.ndarray:
    """Return logits (n_tokens, n_vocab) as float32 for a prompt evaluated from position 0."""
    w = {name: np.asarray(a, dtype=dtype) for name, a in weights.items()}
    positions = np.arange(len(tokens))
    h = w["tok_embeddings.weight"][np.asarray(tokens, dtype=np.int64)]
    for i in range(n_layers_of(w)):
        p = f"layers.{i}."
        x = rms_norm(h, w[p + "attention_norm.weight"])
        h = h + attention(x, w[p + "attention.wq.weight"], w[p + "attention.wk.weight"],
                          w[p + "attention.wv.weight"], w[p + "attention.wo.weight"], n_heads, positions)
        x = rms_norm(h, w[p + "ffn_norm.weight"])
        h = h + feed_forward(x, w[p + "feed_forward.w1.weight"], w[p + "feed_forward.w2.weight"],
                             w[p + "feed_forward.w3.weight"])
    h = rms_norm(h, w["norm.weight"])
    return (h @ w["output.weight"].T).astype(np.float32)
