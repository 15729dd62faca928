"""Hugging Face LLaMA-family model directories built by transformers, and llama.cpp's converter run on them.

Random weights at tiny sizes (GQA: 4 query heads, 2 key/value heads, head size 16), written by
`save_pretrained` (safetensors, sharded when asked, or pytorch_model.bin), with the SentencePiece
tokenizer.model the other tests train. `peer_convert` runs llama.cpp's own convert_hf_to_gguf.py
from the llama-cpp-python 0.3.36 sdist (with its vendored gguf-py first on the path) on the same
directory: the independent expectation for names, shapes, types, data and metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sdist  # tests/client, on sys.path by conftest
from meta import VOCAB_SIZE, tokenizer_bytes

HIDDEN, HEADS, KV_HEADS, LAYERS, FF = 64, 4, 2, 2, 96
SDIST_ROOT = Path(__file__).resolve().parents[1] / ".cache" / "sdist" / "llama_cpp_python-0.3.36"
LLAMA_CPP = SDIST_ROOT / "vendor" / "llama.cpp"
PEER = LLAMA_CPP / "convert_hf_to_gguf.py"


@dataclass
class HFModel:
    """A model directory, and the transformers model it was saved from (float32 master weights)."""

    model_dir: Path
    model: Any  # transformers.LlamaForCausalLM
    config: dict[str, Any] = field(default_factory=dict)


def build_hf(model_dir: Path, *, dtype: str = "bfloat16", shards: int = 1, bin_format: bool = False,
             tie: bool = False, rope_scaling: dict[str, Any] | None = None, arch: str = "LlamaForCausalLM",
             seed: int = 0, tokenizer: bool = True, tokenizer_config: dict[str, Any] | None = None,
             llama2_tokenizer_json: bool = False, **overrides: Any) -> HFModel:
    """Save a random tiny LLaMA/Mistral with transformers into model_dir (its own config.json, weights, tokenizer)."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    cls = transformers.MistralConfig if arch == "MistralForCausalLM" else transformers.LlamaConfig
    kwargs: dict[str, Any] = dict(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=FF,
                                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                  max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                                  bos_token_id=1, eos_token_id=2)
    if rope_scaling is not None:
        kwargs["rope_scaling"] = rope_scaling
    kwargs.update(overrides)
    config = cls(**kwargs)
    model_cls = transformers.MistralForCausalLM if arch == "MistralForCausalLM" else transformers.LlamaForCausalLM
    model = model_cls(config).eval()
    with torch.no_grad():  # transformers initialises norms to 1; random ones catch a swapped norm
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model_dir.mkdir(parents=True, exist_ok=True)
    saved = model.to(getattr(torch, dtype))
    total = sum(p.numel() * p.element_size() for p in saved.parameters())
    shard_size = max(1, total // shards + 1) if shards > 1 else "50GB"
    saved.save_pretrained(model_dir, max_shard_size=shard_size)
    if bin_format:  # transformers 5 saves safetensors only: the same weights as a torch.save zip checkpoint
        torch.save({k: v.contiguous() for k, v in saved.state_dict().items() if k != "lm_head.weight" or not tie},
                   model_dir / "pytorch_model.bin")
        (model_dir / "model.safetensors").unlink()
    model = model.float()
    if tokenizer:
        (model_dir / "tokenizer.model").write_bytes(tokenizer_bytes())
    if tokenizer_config is not None:
        (model_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if llama2_tokenizer_json:
        write_llama2_tokenizer_json(model_dir)

    return HFModel(model_dir, model, json.loads((model_dir / "config.json").read_text()))


def write_llama2_tokenizer_json(model_dir: Path) -> None:
    """The tokenizer.json Llama 2's repositories hold beside tokenizer.model (transformers' conversion of it):
    its SentencePiece pieces as a byte-fallback BPE, <unk> <s> </s> as added tokens, bos before every sequence."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    added = [{"id": i, "content": sp.id_to_piece(i), "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in range(3)]
    bos = sp.id_to_piece(1)
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {bos: {"id": bos, "ids": [1], "tokens": [bos]}}},
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True,
                  "vocab": {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}, "merges": []},
    }
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")


def ensure_peer() -> Path:
    """convert_hf_to_gguf.py of the llama-cpp-python 0.3.36 sdist, downloaded (pip) and unpacked on first use."""
    return sdist.llama_cpp_tree(root=SDIST_ROOT.parent) / PEER.name


def peer_convert(model_dir: Path, outfile: Path, outtype: str) -> subprocess.CompletedProcess[str]:
    """llama.cpp's convert_hf_to_gguf.py on model_dir (vendored gguf-py first on the path); raises on failure."""
    ensure_peer()
    env = {**os.environ, "PYTHONPATH": str(LLAMA_CPP / "gguf-py"), "NO_LOCAL_GGUF": ""}
    proc = subprocess.run([sys.executable, str(PEER), str(model_dir), "--outfile", str(outfile), "--outtype", outtype],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


# ------------------------------------------------------------------ Llama 3's tokenizer.json, rebuilt

LLAMA3_VOCAB_GGUF = LLAMA_CPP / "models" / "ggml-vocab-llama-bpe.gguf"  # llama.cpp's own Llama 3 vocabulary
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # Meta's tokenizer.json for Llama 3 (restated, not our code's copy)
LLAMA3_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] }}<|eot_id|>{% endfor %}")


def llama3_vocab_tests() -> list[tuple[str, list[int]]]:
    """llama.cpp's recorded Hugging Face tokenizations of its test strings for the Llama 3 vocabulary."""
    ensure_peer()
    texts = LLAMA3_VOCAB_GGUF.with_suffix(".gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = LLAMA3_VOCAB_GGUF.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids, strict=False)]


def llama3_pre_tokenizer() -> dict[str, Any]:
    """tokenizer.json's pre_tokenizer in Meta's Llama 3 repositories: the split pattern, then bytes."""
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def bos_post_processor(bos: str, bos_id: int) -> dict[str, Any]:
    """tokenizer.json's post_processor in Meta's Llama 3 repositories: bos before every sequence."""
    return {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}]}


def write_llama3_tokenizer(model_dir: Path) -> int:
    """tokenizer.json and tokenizer_config.json as Meta's Llama 3 repositories hold them, rebuilt from llama.cpp's
    GGUF vocabulary file (tokens, types, merges); returns the vocabulary size (128,256)."""
    import gguf

    ensure_peer()
    r = gguf.GGUFReader(LLAMA3_VOCAB_GGUF)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    normal = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == 1}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, (t, k) in enumerate(zip(tokens, types)) if k != 1]
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": llama3_pre_tokenizer(), "post_processor": bos_post_processor(bos, 128000),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": normal, "merges": merges},
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    config = {"bos_token": bos, "eos_token": eos, "clean_up_tokenization_spaces": True,
              "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": LLAMA3_TEMPLATE,
              "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
              "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added}}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return len(tokens)
