"""Meta's checkpoints as a conversion source: params.json, tokenizer.model and consolidated.NN.pth shards.

Each shard is opened and parsed once (convert.pth: no code in a pickle runs) and checked against
shard 0 (convert.checkpoint); each tensor's split axis is the one along which the shards make the
full shape params.json implies (docs/format.md §6.4, §8). A tiktoken tokenizer.model makes it a
Llama 3 checkpoint (GGUF only, §16.1): its release's special tokens and context length, tied
embeddings, and rope_freqs.weight computed from use_scaled_rope.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np

from convert.checkpoint import check_shards, find_shards, find_tokenizer, skipped_name
from convert.pth import open_checkpoint
from convert.source import Found, ModelInput, Notes, Request, TensorEntry, computed
from ggmlfmt.errors import BadValue, CannotWrite
from ggmlfmt.llama.model import (
    ROPE_FREQS,
    GGUFVocab,
    llama3_rope_factors,
    skipped_tensor,
)
from ggmlfmt.llama.params import Params, gguf_hparams, read_params
from ggmlfmt.llama.spm import load_gguf_vocab, load_vocab
from ggmlfmt.llama.tiktoken_vocab import (
    N_SPECIAL,
    bpe_vocab,
    looks_like_tiktoken,
    read_ranks,
    special_tokens,
)
from ggmlfmt.parts import full_shape, n_parts_for_dim, split_axis, split_axis_by_shape

SNIFF_BYTES = 64  # how much of tokenizer.model tells tiktoken from SentencePiece
LLAMA3_CONTEXT = {"3": 8192, "3.1": 131072, "3.2": 131072, "3.3": 131072}  # Meta's context length per release


def locate(model_dir: Path, req: Request) -> Found:
    """Raises: FormatError (no shard, a gap in their numbering), FileNotFoundError (no tokenizer)."""
    return Found(model_dir, model_dir / "params.json", find_tokenizer(model_dir, req.tokenizer),
                 tuple(find_shards(model_dir)))


def read(loc: Found, req: Request, notes: Notes) -> ModelInput:
    """Read params.json, the tokenizer and every shard (each once) and describe every output tensor.

    Raises:
        FormatError: bad params.json, tokenizer or shards (names the file, and the field or tensor);
            a shape params.json does not imply; for GGUF a tensor that is not LLaMA's.
        CannotWrite: a model ggjt cannot describe (GQA, ffn_dim_multiplier) or a tiktoken tokenizer
            with ggjt; --eps with norm_eps in params.json or out of range; --llama-release without Llama 3.
    """
    gguf = req.fmt == "gguf"
    params = read_params(loc.config)  # first: absurd values stop everything
    if not gguf and (problem := params.ggjt_problem()) is not None:
        raise CannotWrite(f"{loc.config}: {problem}")  # before any shape error the tensors would give
    params = _with_eps(params, req.rms_eps, loc.config) if gguf else params
    ranks = _tiktoken_ranks(loc.vocab, req)
    if ranks is None:
        vocab = load_gguf_vocab(loc.vocab) if gguf else load_vocab(loc.vocab)
    n_vocab = len(vocab) if ranks is None else len(ranks) + N_SPECIAL
    if params.vocab_size > 0 and params.vocab_size != n_vocab:
        pieces = "pieces" if ranks is None else f"tokens ({len(ranks)} ranks + {N_SPECIAL} special)"
        raise BadValue(f"{params.vocab_size} does not match the {n_vocab} {pieces} of {loc.vocab}",
                       path=str(loc.config), field="vocab_size")
    with ExitStack() as stack:
        opened = [stack.enter_context(open_checkpoint(p)) for p in loc.files]
        metas = check_shards(opened)
        offsets = [{n: t.offset for n, t in ck.tensors.items()} for ck in opened]
    tied = ranks is not None and not any(m.name == "output.weight" for m in metas)
    expected = params.shapes(n_vocab, gguf=gguf)
    if tied:
        del expected["output.weight"]
    tensors, skipped = [], []
    for m in metas:
        if (skipped_tensor if gguf else skipped_name)(m.name):
            skipped.append(m.name)
            continue
        axis, shape = _split(m.name, m.shape, expected.pop(m.name, None), loc.files, gguf, notes)
        tensors.append(TensorEntry(m.name, shape, m.shape, axis, m.dtype, tuple((k, o[m.name]) for k, o in
                                                                               enumerate(offsets))))
    if expected:
        raise BadValue(f"missing; params.json (n_layers {params.n_layers}) implies {len(expected)} more tensor(s)",
                       path=str(loc.files[0]), field=f"tensor {next(iter(expected))!r}")
    if (n := n_parts_for_dim(params.dim)) is not None and n != len(loc.files):
        notes.warning("shards", f"dim {params.dim} was released as {n} shards; found {len(loc.files)}")
    if not gguf:
        return ModelInput(tuple(tensors), tuple(skipped), vocab, params=params)
    context_length = req.context_length
    if ranks is not None:
        vocab, context_length, rope = _llama3(params, ranks, req, tied, notes)
        tensors[:0] = [] if rope is None else [computed(ROPE_FREQS, rope)]
    hp = gguf_hparams(params, len(vocab), {t.name: t.shape for t in tensors}, context_length=context_length,
                      tied_embeddings=tied, path=str(loc.config))
    for f in hp.defaults:
        value, option = (hp.context_length, "--ctx N") if f == "context_length" else (hp.rms_eps, "--eps X")
        notes.warning("default", f"{'context length' if f == 'context_length' else 'norm_eps'} not in the "
                                 f"checkpoint: using {value:g}, LLaMA-1's value ({option} sets it)")
    n_params = sum(math.prod(full_shape(m.shape, split_axis(m.name, len(m.shape)), len(loc.files))) for m in metas)
    return ModelInput(tuple(tensors), tuple(skipped), vocab, hparams=hp, n_params=n_params)


def _split(name: str, shard_shape: tuple[int, ...], want: tuple[int, ...] | None, shards: tuple[Path, ...], gguf: bool,
           notes: Notes) -> tuple[int | None, tuple[int, ...]]:
    """The axis the shards split a tensor along and its full shape, checked against what params.json implies.

    Raises:
        BadValue: neither a row nor a column split gives the implied shape; with gguf, not a LLaMA tensor.
    """
    n = len(shards)
    axis = split_axis(name, len(shard_shape)) if want is None else split_axis_by_shape(name, shard_shape, want, n)
    shape = full_shape(shard_shape, axis, n)
    where = {"path": str(shards[0]), "field": f"tensor {name!r}"}
    if want is None and gguf:
        raise BadValue("not a LLaMA tensor; today's llama.cpp refuses a GGUF file with tensors it does not expect",
                       **where)
    if want is None:
        notes.warning("extra", f"{shards[0]}: tensor {name!r} is not part of LLaMA; writing it anyway, as "
                               "the 2023 converter did")
    elif shape != want:
        raise BadValue(f"full shape {list(shape)} ({n} shard(s) of {list(shard_shape)}) differs from {list(want)} "
                       "implied by params.json and the tokenizer; neither a split by rows nor one by columns gives it",
                       **where)
    return axis, shape


def _tiktoken_ranks(vocab_path: Path, req: Request) -> list[bytes] | None:
    """The base tokens of a tiktoken tokenizer.model (Llama 3), or None for a SentencePiece one.

    Raises:
        CannotWrite: a tiktoken tokenizer with ggjt, or --llama-release for a SentencePiece one.
        FormatError: a bad tiktoken file. OSError: unreadable.
    """
    with open(vocab_path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if not looks_like_tiktoken(head):
        if req.llama_release is not None:
            raise CannotWrite(f"{vocab_path}: a SentencePiece tokenizer; --llama-release applies to Llama 3 "
                              "checkpoints, whose tokenizer.model is a tiktoken file")
        return None
    if req.fmt != "gguf":
        raise CannotWrite(f"{vocab_path}: a tiktoken tokenizer (Llama 3), which a ggjt file cannot hold; "
                          "use --format gguf")
    return read_ranks(vocab_path)


def _llama3(params: Params, ranks: list[bytes], req: Request, tied: bool,
            notes: Notes) -> tuple[GGUFVocab, int, np.ndarray | None]:
    """Llama 3 (docs/format.md §16.1): the release (given, or from params.json), its vocabulary with the special
    tokens, its context length unless --ctx, and the scaled-RoPE factors (None without use_scaled_rope)."""
    release = req.llama_release
    if release is None:
        release, why = (("3", "params.json has no use_scaled_rope") if not params.use_scaled_rope
                        else ("3.2", "use_scaled_rope and no output.weight") if tied
                        else ("3.1", "params.json has use_scaled_rope"))
        notes.info("llama3", f"special tokens of Llama {release} ({why}); --llama-release chooses another "
                             "release's")
    context_length = req.context_length
    if context_length is None:
        context_length = LLAMA3_CONTEXT[release]
        notes.info("llama3", f"context length {context_length}, Llama {release}'s (a checkpoint does not "
                             "store it); --ctx N sets it")
    if tied:
        notes.info("llama3", "no output.weight: the output shares the token embedding (tied), so the file "
                             "has none and llama.cpp uses token_embd.weight")
    rope = None
    if params.rope_scaling is not None:
        factor, high = params.rope_scaling
        rope = llama3_rope_factors(params.n_rot, params.rope_theta or 10000.0, factor=factor, high_freq_factor=high)
        notes.info("llama3", f"scaled RoPE (use_scaled_rope): rope_freqs.weight, {len(rope)} factors, scale "
                             f"{factor:g}, high-frequency factor {high:g}")
    return bpe_vocab(ranks, special_tokens(release)), context_length, rope


def _with_eps(params: Params, rms_eps: float | None, path: Path) -> Params:
    """params with norm_eps from --eps when params.json has none.

    Raises:
        CannotWrite: --eps out of (0, 1), or given although params.json has norm_eps (which one
            would win is not obvious: refused rather than guessed).
    """
    if rms_eps is None:
        return params
    if not 0 < rms_eps < 1:  # the range params.json's norm_eps is held to (docs/format.md §16)
        raise CannotWrite(f"--eps must be in (0, 1), not {rms_eps!r}")
    if params.norm_eps is not None:
        raise CannotWrite(f"{path}: norm_eps is {params.norm_eps!r}; --eps applies only when params.json has none")
    return replace(params, norm_eps=rms_eps)
