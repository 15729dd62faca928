"""Tokenize and detokenize texts with a current llama-cpp-python (0.3.x) on a GGUF vocabulary; print JSON.

Run with the CLIENT venv's python (llama_cpp and the stdlib only):

    python run_gguf_tokenize.py MODEL TEXTS_JSON

TEXTS_JSON: a file holding a JSON list of strings. stdout: one JSON object {"client", "n_vocab", "bos",
"eos", "eot", "add_bos", "results": [{"plain": ids (llama_tokenize, add_special false,
parse_special false), "special": ids (parse_special true), "with_bos": ids (add_special true, parse_special
true), "detok_hex": bytes of llama_detokenize(plain) (remove_special false, unparse_special true; for
llama-bpe llama.cpp then cleans spaces: " ?", " !", " .", " ," lose their space, and some " '"
contractions), "pieces_hex": the llama_token_to_piece bytes of plain, joined}]}.
Only the vocabulary is loaded (vocab_only). Exit 1 when the model does not load.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

from client_common import cap_address_space, client_version, keep_stdout_for_json, write_json


def tokenize(llama_cpp: Any, vocab: Any, text: bytes, add_special: bool, parse_special: bool) -> list[int]:
    """llama_tokenize; the buffer grows to the size a first call asks for (negative return)."""
    n_max = len(text) + 8
    while True:
        buf = (llama_cpp.llama_token * n_max)()
        n = int(llama_cpp.llama_tokenize(vocab, text, len(text), buf, n_max, add_special, parse_special))
        if n >= 0:
            return list(buf[:n])
        n_max = -n


def detokenize(llama_cpp: Any, vocab: Any, ids: list[int]) -> bytes:
    """llama_detokenize with special tokens rendered as their text."""
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 16 * len(ids)
    while True:
        out = ctypes.create_string_buffer(size)
        n = int(llama_cpp.llama_detokenize(vocab, arr, len(ids), out, size, False, True))
        if n >= 0:
            return out.raw[:n]
        size = -n


def pieces(llama_cpp: Any, vocab: Any, ids: list[int]) -> bytes:
    """The ids' pieces (llama_token_to_piece, special tokens rendered) joined: detokenization without clean-up."""
    buf = ctypes.create_string_buffer(512)
    out = []
    for i in ids:
        n = int(llama_cpp.llama_token_to_piece(vocab, i, buf, len(buf), 0, True))
        out.append(buf.raw[: max(n, 0)])
    return b"".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: run_gguf_tokenize.py MODEL TEXTS_JSON", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        texts = json.load(f)
    cap_address_space(4.0)
    real_stdout = keep_stdout_for_json()
    import llama_cpp

    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(os.fsencode(argv[0]), mp)
    if not model:
        print(f"run_gguf_tokenize: llama_model_load_from_file failed for {argv[0]}", file=sys.stderr)
        return 1
    vocab = llama_cpp.llama_model_get_vocab(model)
    results = []
    for text in texts:
        raw = text.encode("utf-8")
        plain = tokenize(llama_cpp, vocab, raw, False, False)
        results.append({"plain": plain, "special": tokenize(llama_cpp, vocab, raw, False, True),
                        "with_bos": tokenize(llama_cpp, vocab, raw, True, True),
                        "detok_hex": detokenize(llama_cpp, vocab, plain).hex(),
                        "pieces_hex": pieces(llama_cpp, vocab, plain).hex()})
    out = {"client": client_version(), "n_vocab": int(llama_cpp.llama_vocab_n_tokens(vocab)),
           "bos": int(llama_cpp.llama_vocab_bos(vocab)), "eos": int(llama_cpp.llama_vocab_eos(vocab)),
           "eot": int(llama_cpp.llama_vocab_eot(vocab)), "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
           "results": results}
    llama_cpp.llama_model_free(model)
    write_json(real_stdout, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
