"""Load a model with a 2023 llama-cpp-python, evaluate token ids, print logits as JSON.

Run with the CLIENT venv's python (only llama_cpp, numpy and the stdlib are used):

    python run_client.py MODEL '[1, 5, 9]' N_CTX [vocab_only] [--no-mmap] [--threads N] [--max-mem-gb G]

stdout: one JSON object {"client": version, "api": ..., "n_vocab": V, "logits": [[V floats] per token]};
with vocab_only, "logits" is [] and "tokens_hex" (each vocab entry's text as hex) is added, plus
"scores" where the API exposes them (0.1.78). llama.cpp's own log goes to stderr.
Exit status 1 (llama.cpp's error on stderr) when the model does not load, 2 on bad arguments; an
abort() inside llama.cpp (e.g. LLAMA_ASSERT on an unsupported n_layer) kills the process (SIGABRT).
The address space is capped (default 4 GB) because 0.1.78 allocates garbage sizes on some bad files.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from typing import Any

import numpy as np

from client_common import LoadError, base_parser, cap_address_space, client_version, keep_stdout_for_json

SEED = 1234  # fixed; sampling is never used, but keep the context deterministic
NORM_EPS = 1e-6  # LLaMA-1; 0.1.78 defaults to 5e-6 (LLaMA-2) and must be told


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse: model, token JSON, n_ctx, optional 'vocab_only' and flags."""
    ap = base_parser(__doc__)
    ap.add_argument("vocab_only", nargs="?", default="", help="pass 'vocab_only' (or 1/true) to load only the vocab")
    ap.add_argument("--no-mmap", action="store_true", help="read tensors with fread instead of mmap")
    ap.add_argument("--threads", type=int, default=1, help="llama_eval threads (default 1)")
    ap.add_argument("--max-mem-gb", type=float, default=4.0,
                    help="address-space cap (RLIMIT_AS); 0 = none. Default 4: 0.1.78 otherwise eats ~12 GB "
                         "on a v1-quantized or unpadded file before failing")
    ns = ap.parse_args(argv)
    ns.vocab_only = ns.vocab_only.lower() in ("vocab_only", "1", "true", "yes")
    ns.tokens = [int(t) for t in json.loads(ns.tokens)]
    return ns


def load(llama_cpp: Any, path: str, n_ctx: int, vocab_only: bool, use_mmap: bool) -> tuple[Any, Any]:
    """Create (model_or_None, ctx) with the low-level API of whichever version is installed."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.seed = SEED
    params.f16_kv = True
    params.logits_all = True
    params.vocab_only = vocab_only
    params.use_mmap = use_mmap
    params.use_mlock = False
    params.embedding = False
    fpath = os.fsencode(path)
    if hasattr(llama_cpp, "llama_load_model_from_file"):  # split model/context API (June 2023 on, e.g. 0.1.78)
        llama_cpp.llama_backend_init(False)
        params.rms_norm_eps = NORM_EPS
        params.n_gqa = 1
        params.n_gpu_layers = 0
        params.rope_freq_base = 10000.0
        params.rope_freq_scale = 1.0
        params.n_batch = n_ctx  # whole prompt in one llama_eval call
        model = llama_cpp.llama_load_model_from_file(fpath, params)
        if not model:
            raise LoadError(f"llama_load_model_from_file failed for {path}")
        ctx = llama_cpp.llama_new_context_with_model(model, params)
        if not ctx:
            raise LoadError(f"llama_new_context_with_model failed for {path}")
        return model, ctx
    params.n_parts = -1  # 0.1.48: guessed from the tok_embeddings shard width
    ctx = llama_cpp.llama_init_from_file(fpath, params)
    if not ctx:
        raise LoadError(f"llama_init_from_file failed for {path}")
    return None, ctx


def vocab_of(llama_cpp: Any, ctx: Any, n_vocab: int) -> dict[str, Any]:
    """Token texts (hex) and, where the API has it, scores."""
    if hasattr(llama_cpp, "llama_get_vocab"):
        strings = (ctypes.c_char_p * n_vocab)()
        scores = (ctypes.c_float * n_vocab)()
        n = llama_cpp.llama_get_vocab(ctx, strings, scores, n_vocab)
        return {
            "tokens_hex": [(strings[i] or b"").hex() for i in range(n)],
            "scores": [float(scores[i]) for i in range(n)],
        }
    return {"tokens_hex": [(llama_cpp.llama_token_to_str(ctx, i) or b"").hex() for i in range(n_vocab)]}


def evaluate(llama_cpp: Any, ctx: Any, tokens: list[int], threads: int) -> np.ndarray:
    """Evaluate the prompt from position 0 in one call; return (n_tokens, n_vocab) float32 logits."""
    n_vocab = int(llama_cpp.llama_n_vocab(ctx))
    arr = (llama_cpp.llama_token * len(tokens))(*tokens)
    rc = llama_cpp.llama_eval(ctx, arr, ctypes.c_int(len(tokens)), ctypes.c_int(0), ctypes.c_int(threads))
    if int(rc) != 0:
        raise RuntimeError(f"llama_eval returned {rc}")
    ptr = llama_cpp.llama_get_logits(ctx)
    flat = np.ctypeslib.as_array(ptr, shape=(len(tokens) * n_vocab,))
    return np.array(flat, dtype=np.float32).reshape(len(tokens), n_vocab)


def main(argv: list[str]) -> int:
    """Load, evaluate, print JSON to the real stdout; llama.cpp's chatter goes to stderr."""
    args = parse_args(argv)
    if not args.vocab_only and not args.tokens:
        print("run_client: empty token list", file=sys.stderr)
        return 2
    if not os.path.isfile(args.model):  # 0.1.48 would abort() on an uncaught C++ exception instead
        print(f"run_client: failed to open {args.model}: no such file", file=sys.stderr)
        return 1
    if len(args.tokens) > args.n_ctx:
        print("run_client: more tokens than n_ctx", file=sys.stderr)
        return 2
    cap_address_space(args.max_mem_gb)
    real_stdout = keep_stdout_for_json()
    import llama_cpp

    version = client_version()
    try:
        model, ctx = load(llama_cpp, args.model, args.n_ctx, args.vocab_only, not args.no_mmap)
    except LoadError as e:
        print(f"run_client: {e}", file=sys.stderr)
        return 1
    n_vocab = int(llama_cpp.llama_n_vocab(ctx))
    out: dict[str, Any] = {
        "client": version,
        "api": "llama_load_model_from_file" if model is not None else "llama_init_from_file",
        "n_vocab": n_vocab,
        "logits": [],
    }
    bad = [t for t in args.tokens if not 0 <= t < n_vocab]
    if bad and not args.vocab_only:  # llama.cpp does not check; it would read out of bounds
        print(f"run_client: token ids out of range 0..{n_vocab - 1}: {bad[:5]}", file=sys.stderr)
        return 2
    if args.vocab_only:
        out.update(vocab_of(llama_cpp, ctx, n_vocab))
    else:
        out["logits"] = evaluate(llama_cpp, ctx, args.tokens, args.threads).tolist()
    llama_cpp.llama_free(ctx)
    if model is not None:
        llama_cpp.llama_free_model(model)
    with os.fdopen(real_stdout, "w") as f:
        json.dump(out, f)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
