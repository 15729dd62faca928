"""Load a GGUF model with a current llama-cpp-python (0.3.x), evaluate token ids, print logits as JSON.

Run with the CLIENT venv's python (only llama_cpp, numpy and the stdlib are used):

    python run_gguf_client.py MODEL '[1, 5, 9]' N_CTX [--vocab-only] [--generate N] [--extra-bufts]
                              [--no-mmap] [--no-check-tensors] [--threads N] [--backtrace] [--max-mem-gb G]

stdout: one JSON object {"client", "api", "extra_bufts", "n_vocab", "bos", "eos", "metadata": {key:
llama.cpp's text of the value}, "n_embd", "n_layer", "n_head", "n_head_kv", "n_ctx_train", "desc",
"logits": [[n_vocab floats] for every prompt position]}, with --generate N also "generated" (N greedy
token ids after the prompt). With --vocab-only, "logits" is [], the hyper-parameters (n_embd ..
desc) are absent (llama.cpp does not load them), and "texts_hex" (llama_vocab_get_text: the stored
piece), "pieces_hex" (llama_token_to_piece with special tokens rendered: the detokenized bytes, byte
00 included), "scores" and "attrs" (llama_token_attr bit masks) are added.

Weight repacking ("extra buffer types") is OFF unless --extra-bufts: `use_extra_bufts = False` in
llama_model_params. On these AVX-512 machines 0.3.36 with the default (on) crashed with SIGSEGV on a
tiny q4_0 model that it evaluates correctly with repacking off (tests/client/README.md).

Exit status 1 (llama.cpp's error on stderr) when the model does not load, 2 on bad arguments, 3 when
llama_decode fails; a crash or abort() inside llama.cpp kills the process with a signal.
The address space is capped (default 4 GB) so a hostile size field cannot take the machine's memory.
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

META_BUF = 1 << 16  # llama.cpp renders array values as a (truncated) list; 64 KiB is plenty per key


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse: model, token JSON, n_ctx and flags."""
    ap = base_parser(__doc__)
    ap.add_argument("--vocab-only", action="store_true", help="load only the vocabulary; report it")
    ap.add_argument("--extra-bufts", action="store_true",
                    help="leave weight repacking on (llama.cpp's default; crashed on AVX-512 here)")
    ap.add_argument("--no-mmap", action="store_true", help="read tensors instead of mapping the file")
    ap.add_argument("--no-check-tensors", action="store_true",
                    help="skip llama.cpp's tensor data validation (on by default: NaN/Inf, bad block scales)")
    ap.add_argument("--generate", type=int, default=0, metavar="N",
                    help="then greedily generate N tokens (argmax, one decode per token); adds 'generated'")
    ap.add_argument("--threads", type=int, default=1, help="compute threads (default 1: deterministic)")
    ap.add_argument("--backtrace", action="store_true",
                    help="let ggml_abort attach gdb for a backtrace (slow; off: GGML_NO_BACKTRACE=1)")
    ap.add_argument("--max-mem-gb", type=float, default=4.0, help="address-space cap (RLIMIT_AS); 0 = none")
    ns = ap.parse_args(argv)
    ns.tokens = [int(t) for t in json.loads(ns.tokens)]
    return ns


def load_model(llama_cpp: Any, path: str, args: argparse.Namespace) -> Any:
    """llama_model_load_from_file with CPU only and repacking as asked; raise LoadError on NULL."""
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.vocab_only = args.vocab_only
    mp.use_extra_bufts = args.extra_bufts  # the setting this runner exists to control (module docstring)
    mp.check_tensors = not args.no_check_tensors  # stricter than the default: our files must pass it
    mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE if args.no_mmap else llama_cpp.LLAMA_LOAD_MODE_MMAP
    model = llama_cpp.llama_model_load_from_file(os.fsencode(path), mp)
    if not model:
        raise LoadError(f"llama_model_load_from_file failed for {path}")
    return model


def new_context(llama_cpp: Any, model: Any, n_ctx: int, threads: int) -> Any:
    """A context that keeps logits for every position of one n_ctx-token batch."""
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx  # the whole prompt in one ubatch
    cp.n_seq_max = 1
    cp.n_threads = cp.n_threads_batch = threads
    cp.embeddings = False
    cp.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, cp)
    if not ctx:
        raise LoadError("llama_init_from_model failed")
    return ctx


def evaluate(llama_cpp: Any, ctx: Any, n_vocab: int, tokens: list[int], pos0: int = 0) -> np.ndarray:
    """Decode tokens at positions pos0.. in one batch, logits at every position; (n_tokens, n_vocab) f32."""
    n = len(tokens)
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        batch.n_tokens = n
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        rc = int(llama_cpp.llama_decode(ctx, batch))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        rows = [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy()
                for i in range(n)]
    finally:
        llama_cpp.llama_batch_free(batch)
    return np.stack(rows).astype(np.float32)


def generate(llama_cpp: Any, ctx: Any, n_vocab: int, last: np.ndarray, pos: int, n: int) -> list[int]:
    """Greedy continuation: argmax of the last logits, decoded one token at a time (KV cache reused)."""
    out: list[int] = []
    for _ in range(n):
        out.append(int(np.argmax(last)))
        last = evaluate(llama_cpp, ctx, n_vocab, out[-1:], pos)[0]
        pos += 1
    return out


def metadata(llama_cpp: Any, model: Any) -> dict[str, str]:
    """Every GGUF key/value as llama.cpp rendered it (what it read, as it understood it)."""
    out: dict[str, str] = {}
    buf = ctypes.create_string_buffer(META_BUF)
    for i in range(int(llama_cpp.llama_model_meta_count(model))):
        if llama_cpp.llama_model_meta_key_by_index(model, i, buf, META_BUF) < 0:
            continue
        key = buf.value.decode("utf-8", "replace")
        if llama_cpp.llama_model_meta_val_str_by_index(model, i, buf, META_BUF) >= 0:
            out[key] = buf.value.decode("utf-8", "replace")
    return out


def vocab_of(llama_cpp: Any, vocab: Any, n_vocab: int) -> dict[str, Any]:
    """Stored text, detokenized piece, score and attribute mask of every token."""
    buf = ctypes.create_string_buffer(256)
    texts, pieces, scores, attrs = [], [], [], []
    for i in range(n_vocab):
        texts.append((llama_cpp.llama_vocab_get_text(vocab, i) or b"").hex())
        n = int(llama_cpp.llama_token_to_piece(vocab, i, buf, len(buf), 0, True))
        pieces.append(buf.raw[:n].hex() if n >= 0 else None)  # n < 0: piece longer than the buffer
        scores.append(float(llama_cpp.llama_vocab_get_score(vocab, i)))
        attrs.append(int(llama_cpp.llama_vocab_get_attr(vocab, i)))
    return {"texts_hex": texts, "pieces_hex": pieces, "scores": scores, "attrs": attrs}


def describe(llama_cpp: Any, model: Any, vocab: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The hyper-parameters and vocabulary facts llama.cpp derived from the file.

    With vocab_only the hyper-parameters are not loaded (llama_model_n_head would abort), so only the
    vocabulary facts and the metadata are reported.
    """
    out: dict[str, Any] = {
        "client": client_version(),
        "api": "llama_model_load_from_file",
        "extra_bufts": bool(args.extra_bufts),
        "n_vocab": int(llama_cpp.llama_vocab_n_tokens(vocab)),
        "bos": int(llama_cpp.llama_vocab_bos(vocab)),
        "eos": int(llama_cpp.llama_vocab_eos(vocab)),
        "metadata": metadata(llama_cpp, model),
        "logits": [],
    }
    if not args.vocab_only:
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(model, desc, len(desc))
        out.update({
            "n_embd": int(llama_cpp.llama_model_n_embd(model)),
            "n_layer": int(llama_cpp.llama_model_n_layer(model)),
            "n_head": int(llama_cpp.llama_model_n_head(model)),
            "n_head_kv": int(llama_cpp.llama_model_n_head_kv(model)),
            "n_ctx_train": int(llama_cpp.llama_model_n_ctx_train(model)),
            "desc": desc.value.decode("utf-8", "replace"),
        })
    return out


def check_args(args: argparse.Namespace) -> str | None:
    """The reason the arguments cannot be run, or None."""
    if not args.vocab_only and not args.tokens:
        return "empty token list"
    if len(args.tokens) + args.generate > args.n_ctx:
        return "more tokens (prompt + --generate) than n_ctx"
    return None


def run(args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    """Load and evaluate; return (exit status, JSON object or None). llama.cpp logs to stderr."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    try:
        model = load_model(llama_cpp, args.model, args)
    except LoadError as e:
        print(f"run_gguf_client: {e}", file=sys.stderr)
        return 1, None
    vocab = llama_cpp.llama_model_get_vocab(model)
    out = describe(llama_cpp, model, vocab, args)
    n_vocab = out["n_vocab"]
    bad = [t for t in args.tokens if not 0 <= t < n_vocab]
    if args.vocab_only:
        out.update(vocab_of(llama_cpp, vocab, n_vocab))
    elif bad:  # llama_decode does check, but say which ids
        print(f"run_gguf_client: token ids out of range 0..{n_vocab - 1}: {bad[:5]}", file=sys.stderr)
        return 2, None
    else:
        try:
            ctx = new_context(llama_cpp, model, args.n_ctx, args.threads)
        except LoadError as e:
            print(f"run_gguf_client: {e}", file=sys.stderr)
            return 1, None
        try:
            logits = evaluate(llama_cpp, ctx, n_vocab, args.tokens)
            if args.generate:
                out["generated"] = generate(llama_cpp, ctx, n_vocab, logits[-1], len(args.tokens), args.generate)
            out["logits"] = logits.tolist()
        except RuntimeError as e:
            print(f"run_gguf_client: {e}", file=sys.stderr)
            return 3, None
        llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return 0, out


def main(argv: list[str]) -> int:
    """Check arguments, cap memory, keep stdout for the JSON alone, run."""
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"run_gguf_client: {problem}", file=sys.stderr)
        return 2
    if not os.path.isfile(args.model):
        print(f"run_gguf_client: failed to open {args.model}: no such file", file=sys.stderr)
        return 1
    cap_address_space(args.max_mem_gb)
    if not args.backtrace:
        os.environ["GGML_NO_BACKTRACE"] = "1"  # read by ggml_abort(); gdb would take seconds per abort
    real_stdout = keep_stdout_for_json()
    status, out = run(args)
    if out is not None:
        with os.fdopen(real_stdout, "w") as f:
            json.dump(out, f)
            f.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
