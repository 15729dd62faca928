"""Hugging Face LLaMA-family directories (config.json + safetensors or pytorch_model*.bin) -> GGUF, torch-free.

The same two phases as Meta checkpoints (convert.py): planning reads config.json, the tokenizer and
every weight file's header, checks them against each other and lays out every byte; writing maps
every weight file at once and hands each tensor to the unsharding engine. What differs is where the
tensors come from (docs/format.md §19):

- weights: `model.safetensors`, `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`,
  or `pytorch_model*.bin` (+ index) read by convert.pth (nothing from a pickle runs); every file an
  index names stays inside the model directory, and the index and the files agree exactly;
- names: Hugging Face's mapped to Meta's, which ggmlfmt.llama.model maps to GGUF's (§13);
- q_proj/k_proj: rows permuted back from Hugging Face's rotate-half order to llama.cpp's per head.
  Rows move whole, so the permutation is a row gather: each output row is a one-row piece copied
  with copy_file_range (or cast through the engine's buffer), memory stays flat;
- llama3 rope scaling: rope_freqs.weight from ggmlfmt.llama.model.llama3_rope_factors, written from memory.

This module yields the same records as convert.shards (convert.source): the one planner and writer
of convert.convert do the rest (output types, the layout, the engine).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from convert.checkpoint import TOKENIZER, find_tokenizer
from convert.pth import open_checkpoint
from convert.source import (
    FLOAT_DTYPES,
    Found,
    ModelInput,
    Notes,
    Request,
    TensorEntry,
    computed,
)
from ggmlfmt.constants import GGUFValueType
from ggmlfmt.errors import BadLayout, BadValue, CannotWrite, FormatError
from ggmlfmt.llama.hf_bpe import (
    MAX_TOKENIZER_JSON_BYTES,
    TOKENIZER_JSON,
    load_bpe_vocab,
    post_processor_flags,
    special_ids,
    with_special_ids,
)
from ggmlfmt.llama.hf_vocab import (
    MAX_TOKENIZER_CONFIG_BYTES,
    TOKENIZER_CONFIG,
    apply_tokenizer_files,
    read_json,
)
from ggmlfmt.llama.model import (
    ROPE_FREQS,
    GGUFVocab,
    MetaKV,
    gguf_tensor_name,
    llama3_rope_factors,
    llama_hparams,
)
from ggmlfmt.llama.params import MAX_DIM, MAX_LAYERS, MAX_PARAMS_BYTES, json_int
from ggmlfmt.llama.params import json_float as _float
from ggmlfmt.llama.spm import load_gguf_vocab
from ggmlfmt.reader import load
from ggmlfmt.safetensors import dtype_name

log = logging.getLogger(__name__)

CONFIG = "config.json"
SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
MAX_INDEX_BYTES = 64 << 20  # a 405B model's index is ~100 KB
MAX_FF = 1 << 20
MAX_VOCAB = 1 << 24
MAX_CONTEXT = (1 << 32) - 1  # llama.context_length is a u32
MAX_FILES = 1 << 12
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json", re.compile(r"model-\d{5}-of-\d{5}\.safetensors"))
PYTORCH = ("pytorch_model.bin", "pytorch_model.bin.index.json", re.compile(r"pytorch_model-\d{5}-of-\d{5}\.bin"))
# yarn's optional numbers -> llama.rope.scaling.<key> (attention_factor is the newer name of attn_factor)
YARN_KEYS = {"extrapolation_factor": "yarn_ext_factor", "attention_factor": "yarn_attn_factor",
             "attn_factor": "yarn_attn_factor", "beta_fast": "yarn_beta_fast", "beta_slow": "yarn_beta_slow"}
SKIPPED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # a buffer older checkpoints saved

# Hugging Face name -> Meta name (ggmlfmt.llama.model maps Meta's to GGUF's, docs/format.md §13)
_GLOBAL = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm": "attention_norm", "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
          "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
          "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "feed_forward.w1",
          "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3"}
_LAYER_RE = re.compile(r"model\.layers\.(0|[1-9][0-9]{0,5})\.(.+)\.weight")


# ------------------------------------------------------------------ config.json


@dataclass(frozen=True, slots=True)
class HFConfig:
    """The fields of config.json a LLaMA-family conversion uses, bound-checked."""

    architecture: str
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    rms_eps: float
    rope_theta: float | None
    context_length: int | None
    tied: bool
    rope: dict[str, Any]  # rope_type, factor, ... (rope_type "default": none)
    token_ids: dict[str, int | None]  # "<kind>_token_id" values: bos, eos, unk, sep, pad, cls, mask

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def read_config(path: Path) -> HFConfig:
    """config.json, size-capped, every size bounded before use.

    Raises:
        FormatError: not JSON, an architecture other than LLaMA's or Mistral's (named), a missing or
            absurd size, an unsupported rope scaling. OSError: unreadable.
    """
    obj = read_json(path, MAX_PARAMS_BYTES)
    where = {"path": str(path)}
    archs = obj.get("architectures")
    if not (isinstance(archs, list) and len(archs) == 1 and archs[0] in ARCHITECTURES):
        raise BadValue(f"architectures {json.dumps(archs)[:80]}; convert-model converts "
                       f"{' and '.join(ARCHITECTURES)} only", field="architectures", **where)
    n_embd = _int(obj, "hidden_size", 1, MAX_DIM, path)
    n_head = _int(obj, "num_attention_heads", 1, n_embd, path)
    n_kv = _int(obj, "num_key_value_heads", 1, n_head, path) if obj.get("num_key_value_heads") is not None else n_head
    if n_embd % n_head or n_head % n_kv:
        raise BadValue(f"{n_head} heads of {n_kv} key/value heads do not divide hidden_size {n_embd}",
                       field="num_key_value_heads", **where)
    if (n_embd // n_head) % 2:
        raise BadValue(f"head size {n_embd // n_head} (hidden_size / num_attention_heads) is odd; RoPE rotates "
                       "pairs of rows", field="num_attention_heads", **where)
    if obj.get("head_dim") not in (None, n_embd // n_head):
        raise BadValue(f"head_dim {json.dumps(obj['head_dim'])[:20]} is not hidden_size / num_attention_heads "
                       f"({n_embd // n_head}); llama.cpp's llama rotates whole heads of that size",
                       field="head_dim", **where)
    for flag in ("attention_bias", "mlp_bias"):
        if obj.get(flag):
            raise BadValue("true: bias tensors are not part of the LLaMA model we convert", field=flag, **where)
    ctx = _int(obj, "max_position_embeddings", 1, MAX_CONTEXT, path) if "max_position_embeddings" in obj else None
    rope = _rope(obj, path)
    theta = rope.pop("rope_theta", obj.get("rope_theta"))
    return HFConfig(archs[0], n_embd, _int(obj, "intermediate_size", 1, MAX_FF, path),
                    _int(obj, "num_hidden_layers", 1, MAX_LAYERS, path), n_head, n_kv,
                    _int(obj, "vocab_size", 1, MAX_VOCAB, path), _float(obj, "rms_norm_eps", 1.0, path),
                    None if theta is None else _float({"rope_theta": theta}, "rope_theta", 1e12, path), ctx,
                    bool(obj.get("tie_word_embeddings", False)), rope,
                    {kind: _opt_id(obj, f"{kind}_token_id", path) for kind in SPECIAL_KINDS})


def _rope(obj: dict[str, Any], path: Path) -> dict[str, Any]:
    """rope_parameters (transformers 5) or rope_scaling (earlier): rope_type and its numbers, checked.

    Raises:
        FormatError: a rope type other than default, linear, llama3 (named), or a bad factor.
    """
    rope = obj.get("rope_parameters") or obj.get("rope_scaling") or {}
    field = "rope_parameters" if obj.get("rope_parameters") else "rope_scaling"
    if not isinstance(rope, dict):
        raise BadValue(f"expected an object, found {json.dumps(rope)[:40]}", path=str(path), field=field)
    rope = dict(rope)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear", "llama3", "yarn"):
        raise BadValue(f"rope type {json.dumps(kind)[:40]}; we convert default, linear, yarn and llama3 only",
                       path=str(path), field=field)
    out: dict[str, Any] = {"rope_type": kind}
    if "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    keys = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                               "original_max_position_embeddings"),
            "yarn": ("factor", "original_max_position_embeddings", *YARN_KEYS)}.get(kind, ())
    for key in keys:
        if key in rope and rope[key] is not None:
            out[key] = _float(rope, key, 1e9, path)
    for key in {"linear": ("factor",), "yarn": ("factor", "original_max_position_embeddings")}.get(kind, ()):
        if key not in out:
            raise BadValue(f"{kind} rope scaling without {key}", path=str(path), field=field)
    if "original_max_position_embeddings" in out and kind == "yarn":
        out["original_max_position_embeddings"] = _int(rope, "original_max_position_embeddings", 1, MAX_CONTEXT, path)
    return out


_int = partial(json_int, joined=True)  # config.json's errors: "expected an integer in lo..hi"


def _opt_id(obj: dict[str, Any], key: str, path: Path) -> int | None:
    return None if not isinstance(obj.get(key), int) else _int(obj, key, 0, MAX_VOCAB, path)


# ------------------------------------------------------------------ weight files


def find_weights(model_dir: Path) -> tuple[list[Path], Path | None]:
    """The weight files and their index (None: one file): safetensors first, else pytorch_model*.bin.

    Raises:
        FormatError: none found; an index naming a path outside the directory or a missing file; a shard
            on disk the index does not name.
    """
    for single, index, shard in (SAFETENSORS, PYTORCH):
        if (model_dir / index).is_file():
            return _indexed(model_dir, model_dir / index, shard), model_dir / index
        if (model_dir / single).is_file():
            return [model_dir / single], None
    raise BadLayout("no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
                    "pytorch_model.bin.index.json", path=str(model_dir))


def weight_map(index_path: Path) -> dict[str, str]:
    """tensor name -> file name from an index's weight_map.

    Raises:
        FormatError: not an object of strings.
    """
    obj = read_json(index_path, MAX_INDEX_BYTES)
    wm = obj.get("weight_map")
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise BadLayout("expected a non-empty object of tensor name -> file name", path=str(index_path),
                        field="weight_map")
    return wm


def _indexed(model_dir: Path, index_path: Path, shard: re.Pattern[str]) -> list[Path]:
    files = sorted(set(weight_map(index_path).values()))
    if len(files) > MAX_FILES:
        raise BadLayout(f"{len(files):,} files; expected at most {MAX_FILES:,}", path=str(index_path),
                        field="weight_map")
    paths = []
    for name in files:
        p = Path(name)
        # a bare file name: no absolute path, no "..", no subdirectory (Hugging Face shards lie beside the
        # index). The file itself may be a symlink, as in Hugging Face's cache snapshots.
        if p.is_absolute() or len(p.parts) != 1 or p.name in (".", "..") or p.name != name:
            raise BadLayout(f"file {name[:80]!r} is not a file name inside the model directory",
                            path=str(index_path), field="weight_map")
        if not (model_dir / p).is_file():
            raise BadLayout(f"names {name[:80]!r}, which does not exist", path=str(index_path), field="weight_map")
        paths.append(model_dir / p)
    listed = {p.name for p in paths}
    extra = sorted(q.name for q in model_dir.iterdir() if shard.fullmatch(q.name) and q.name not in listed)
    if extra:
        raise BadLayout(f"{extra[0]} is in the directory but not in the index; which set is the model?",
                        path=str(index_path), field="weight_map")
    return paths


def describe_weights(stack: ExitStack, files: list[Path],
                     index: dict[str, str] | None) -> list[tuple[str, tuple[int, ...], str, int, int]]:
    """(name, shape, dtype, file index, offset) of every tensor of every file, in file and data order, checked
    against the index; each file opened and parsed once (ggmlfmt.load for safetensors, convert.pth for .bin).

    Raises:
        FormatError: a tensor in two files, a tensor the index places elsewhere or does not list, a
            listed tensor missing, a dtype other than f16/bf16/f32.
    """
    out = []
    seen: dict[str, Path] = {}
    for k, path in enumerate(files):
        for name, shape, dtype, offset in _records(stack, path):
            where = {"path": str(path), "field": f"tensor {name[:80]!r}"}
            if name in seen:
                raise BadLayout(f"also in {seen[name].name}", **where)
            if index is not None and index.get(name) != path.name:
                raise BadLayout(f"the index places it in {index.get(name)!r}", **where)
            if dtype not in FLOAT_DTYPES:
                raise BadValue(f"expected floating-point data ({', '.join(FLOAT_DTYPES)}), found {dtype}", **where)
            seen[name] = path
            out.append((name, tuple(shape), dtype, k, offset))
    if index is not None and (missing := sorted(set(index) - set(seen))):
        raise BadLayout(f"names {missing[0][:80]!r}, which no file holds", field="weight_map",
                        path=str(files[0].parent))
    return out


def _records(stack: ExitStack, path: Path) -> list[tuple[str, tuple[int, ...], str, int]]:
    if path.suffix == ".safetensors":
        st = load(path)
        stack.callback(st.close)
        return [(n, info.shape, dtype_name(st.index, n), info.offset) for n, info in st.info.items()]
    ck = stack.enter_context(open_checkpoint(path))
    return [(n, t.shape, t.dtype, t.offset) for n, t in ck.tensors.items()]


def meta_name(name: str) -> str:
    """The Meta name of a Hugging Face LLaMA tensor name.

    Raises:
        FormatError: not a LLaMA tensor.
    """
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _LAYER_RE.fullmatch(name)
    if m is not None and m[2] in _LAYER:
        return f"layers.{m[1]}.{_LAYER[m[2]]}.weight"
    raise BadValue("not a LLaMA tensor; today's llama.cpp refuses a file with tensors it does not expect",
                   field=f"tensor {name[:80]!r}")


# ------------------------------------------------------------------ q/k permutation


def unpermute_rows(n_rows: int, n_heads: int) -> np.ndarray:
    """For each output row, the Hugging Face row it comes from (docs/format.md §19.3).

    Hugging Face keeps each head's rotary pairs as (first half, second half) (rotate-half order);
    llama.cpp wants them interleaved. Per head of d rows: output row 2i+j is input row j*d/2+i
    (llama.cpp's reshape(n_head, 2, d/2, ...).swapaxes(1, 2)).
    """
    d = n_rows // n_heads
    out = np.arange(n_rows).reshape(n_heads, d // 2, 2)  # (head, i, j) -> output row
    head, i, j = np.indices(out.shape)
    return (head * d + j * (d // 2) + i).reshape(-1)


# ------------------------------------------------------------------ reading


def locate(model_dir: Path, req: Request) -> Found:
    """Raises: CannotWrite for ggjt, --eps or --llama-release; FormatError for a bad index; FileNotFoundError."""
    if req.fmt != "gguf":
        raise CannotWrite(f"{model_dir}: a Hugging Face directory converts to GGUF only; drop --format ggjt "
                          "or name the output .gguf")
    if req.rms_eps is not None:
        raise CannotWrite(f"{model_dir / CONFIG}: has rms_norm_eps; --eps applies only to Meta checkpoints")
    if req.llama_release is not None:
        raise CannotWrite(f"{model_dir / CONFIG}: a Hugging Face directory; --llama-release applies only to Meta's "
                          "Llama 3 checkpoints (tokenizer_config.json names the special tokens here)")
    files, index = find_weights(model_dir)
    return Found(model_dir, model_dir / CONFIG, _find_vocab(model_dir, req.tokenizer), tuple(files), index)


def read(loc: Found, req: Request, notes: Notes) -> ModelInput:
    """Read config.json, the tokenizer and every weight file (each once) and describe every output tensor.

    Raises:
        FormatError: bad config.json, index, weight files or tokenizer (names the file and field), a
            tensor that is not LLaMA's, shapes config.json does not imply.
    """
    cfg = read_config(loc.config)
    if loc.vocab.name == TOKENIZER_JSON:
        vocab, tokenizer_keys = load_bpe_vocab(loc.model_dir, cfg.n_vocab, cfg.token_ids)
    else:
        vocab, tokenizer_keys = _vocab(loc.vocab, cfg, loc.config)
    with ExitStack() as stack:
        records = describe_weights(stack, loc.files, None if loc.index is None else weight_map(loc.index))
    skipped = [r[0] for r in records if SKIPPED.fullmatch(r[0])]
    named = []
    for name, shape, dtype, k, offset in records:
        if not SKIPPED.fullmatch(name):
            try:
                named.append(TensorEntry(name, shape, shape, None, dtype, ((k, offset),), meta_name=meta_name(name)))
            except FormatError as e:
                raise e.with_path(loc.files[k]) from None
    shapes = {t.meta_name: t.shape for t in named}
    tied = cfg.tied and "output.weight" not in shapes  # no lm_head: llama.cpp reads the token embedding
    try:  # every LLaMA tensor present with its shape; a layer beyond n_layer is refused by gguf_tensor_name
        hp = llama_hparams(shapes, n_vocab=cfg.n_vocab, n_embd=cfg.n_embd, n_head=cfg.n_head, n_layer=cfg.n_layer,
                           n_rot=cfg.head_dim, context_length=req.context_length or cfg.context_length,
                           rms_eps=cfg.rms_eps, rope_freq_base=cfg.rope_theta, tied_embeddings=tied)
    except FormatError as e:
        raise e.with_path(loc.files[0]) from None
    if hp.defaults:
        notes.warning("default", f"{loc.config} has no max_position_embeddings: llama.context_length "
                                 f"{hp.context_length}, LLaMA-1's (--ctx N sets it)")
    for field, ours, theirs in (("intermediate_size", cfg.n_ff, hp.n_ff),
                                ("num_key_value_heads", cfg.n_head_kv, hp.n_head_kv)):
        if ours != theirs:
            raise BadValue(f"{ours}, the tensors imply {theirs}", path=str(loc.config), field=field)
    tensors = []
    if cfg.rope["rope_type"] == "llama3":  # first, as the peer writes it
        rope = cfg.rope
        tensors.append(computed(ROPE_FREQS, llama3_rope_factors(
            cfg.head_dim, cfg.rope_theta or 10000.0, factor=rope.get("factor", 8.0),
            low_freq_factor=rope.get("low_freq_factor", 1.0), high_freq_factor=rope.get("high_freq_factor", 4.0),
            old_context=rope.get("original_max_position_embeddings", 8192))))
    for t in named:
        try:  # a layer beyond n_layer, named with the file that holds it
            gguf_tensor_name(t.meta_name, hp.n_layer)
        except FormatError as e:
            raise e.with_path(loc.files[t.parts[0][0]]) from None
        qk = t.meta_name.endswith(("attention.wq.weight", "attention.wk.weight"))
        tensors.append(replace(t, heads=(cfg.n_head if t.meta_name.endswith("wq.weight") else cfg.n_head_kv) if qk
                               else 0))
    return ModelInput(tuple(tensors), tuple(skipped), vocab, hparams=hp,
                      n_params=sum(math.prod(t.shape) for t in tensors),  # every tensor written, as the peer (§19.5)
                      extra=tuple(_rope_metadata(cfg) + tokenizer_keys))


def _find_vocab(model_dir: Path, tokenizer: str | os.PathLike[str] | None) -> Path:
    """--vocab, else the directory's tokenizer.model, else its tokenizer.json, else the parent's tokenizer.model
    (Meta's LLaMA-1 layout; a Hugging Face directory's own tokenizer.json comes before it).

    Raises:
        FileNotFoundError: none exists.
    """
    if tokenizer is None and not (model_dir / TOKENIZER).is_file() and (model_dir / TOKENIZER_JSON).is_file():
        return model_dir / TOKENIZER_JSON
    return find_tokenizer(model_dir, tokenizer)


def _vocab(path: Path, cfg: HFConfig, config_path: Path) -> tuple[GGUFVocab, list[MetaKV]]:
    """The SentencePiece vocabulary with the directory's tokenizer files applied (hf_vocab) and config.json's
    bos/eos ids when it names them (llama.cpp's choice); and the tokenizer keys those files add.

    Raises:
        FormatError: another size than vocab_size, a special id outside it, a bad tokenizer file.
    """
    vocab = load_gguf_vocab(path)
    if len(vocab) != cfg.n_vocab:
        raise BadValue(f"{cfg.n_vocab} does not match the {len(vocab)} pieces of {path}", path=str(config_path),
                       field="vocab_size")
    model_dir = config_path.parent
    vocab, keys = apply_tokenizer_files(model_dir, vocab)
    special = {f"{k}_token_id": v for k, v in cfg.token_ids.items() if k in ("bos", "eos") and v is not None}
    if (model_dir / TOKENIZER_JSON).is_file():  # its added tokens name the special ids, its post-processor the flags
        obj = read_json(model_dir / TOKENIZER_JSON, MAX_TOKENIZER_JSON_BYTES)
        tc_path = model_dir / TOKENIZER_CONFIG
        tc = read_json(tc_path, MAX_TOKENIZER_CONFIG_BYTES) if tc_path.is_file() else {}
        special = special_ids(tc, obj.get("added_tokens"), cfg.token_ids, len(vocab), tc_path)
        keys = post_processor_flags(obj.get("post_processor"), tc, keys, model_dir / TOKENIZER_JSON)
    return with_special_ids(vocab, special), keys


def _rope_metadata(cfg: HFConfig) -> list[MetaKV]:
    """llama.rope.scaling.* for linear and yarn scaling (llama3's lives in rope_freqs.weight)."""
    kind, f32 = cfg.rope["rope_type"], GGUFValueType.FLOAT32
    if kind not in ("linear", "yarn"):
        return []
    out = [MetaKV("llama.rope.scaling.type", GGUFValueType.STRING, kind),
           MetaKV("llama.rope.scaling.factor", f32, cfg.rope["factor"])]
    if kind == "yarn":
        out.append(MetaKV("llama.rope.scaling.original_context_length", GGUFValueType.UINT32,
                          cfg.rope["original_max_position_embeddings"]))
        for key, gguf_key in YARN_KEYS.items():
            if key in cfg.rope and not (key == "attn_factor" and "attention_factor" in cfg.rope):
                out.append(MetaKV(f"llama.rope.scaling.{gguf_key}", f32, cfg.rope[key]))
    return out
