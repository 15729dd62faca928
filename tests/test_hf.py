"""convert-model on Hugging Face directories, against llama.cpp's own converter (convert_hf_to_gguf.py).

Fixtures are saved by transformers (tests/hf_fixtures.py): random tiny LLaMA/Mistral models with GQA,
sharded safetensors in bf16 and f16, a pytorch_model.bin, tied embeddings, llama3 and linear rope
scaling. The peer converts the same directory: every tensor must be equal byte for byte (name,
shape, type, data), and every metadata key both write must hold the same value; the keys only one
side writes are exactly the ones docs/format.md §19.5 lists. Controls: a converted file whose q/k
rows were left in Hugging Face's order, or with one changed byte, differs from the peer's.
Hostile inputs: each one stderr line, exit status 1, and no output file.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from convert import convert_checkpoint, plan_conversion
from convert.cli import main
from convert.hf import unpermute_rows
from ggmlfmt import load
from helpers import run_with_unimportable
from hf_fixtures import build_hf, peer_convert
from test_convert_hostile import RunsCode

# keys only one side writes (docs/format.md §19.5 gives each reason)
ONLY_OURS = {"general.alignment", "tokenizer.ggml.unknown_token_id"}
ONLY_PEER = {"general.quantization_version", "general.type", "llama.attention.key_length",
             "llama.attention.value_length", "tokenizer.ggml.pre"}
OUTTYPES = ["f16", "f32", "bf16", "q8_0"]  # every --outtype both converters take, auto apart (see below)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
TOKENIZER_CONFIG = {  # what a Hugging Face repository's tokenizer_config.json holds (§19.6)
    "add_bos_token": True, "add_eos_token": False, "add_prefix_space": True, "bos_token": "<s>",
    "chat_template": "{% for m in messages %}<s>[INST] {{ m['content'] }} [/INST]{% endfor %}",
    "added_tokens_decoder": {"0": {"content": "<unk>", "special": True}, "3": {"content": "<ctl>", "special": True},
                             "4": {"content": "<user>", "special": False},
                             "300": {"content": "<|im_end|>", "special": False}},
}
LLAMA2_TOKENIZER_CONFIG = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                           "unk_token": "<unk>", "pad_token": None, "legacy": False,
                           "tokenizer_class": "LlamaTokenizer"}
VARIANTS = {  # name -> build_hf arguments
    "bf16-3-shards": dict(shards=3),
    "f16-2-shards-tied": dict(dtype="float16", shards=2, tie=True),
    "f16-bin": dict(dtype="float16", bin_format=True),
    "bf16-llama3-rope": dict(rope_scaling=LLAMA3, rope_theta=500000.0),
    "bf16-linear-rope": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "bf16-yarn-rope": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                         "beta_fast": 32.0, "beta_slow": 1.0}),
    "f32-mistral": dict(arch="MistralForCausalLM", dtype="float32"),
    "bf16-tokenizer-config": dict(tokenizer_config=TOKENIZER_CONFIG),
    # Llama 2's repositories: tokenizer.model, tokenizer.json and tokenizer_config.json naming the special tokens;
    # config.json's eos id 3 loses to the token tokenizer_config.json names (</s>, 2), as in llama.cpp's converter
    "bf16-llama2-tokenizer-files": dict(tokenizer_config=LLAMA2_TOKENIZER_CONFIG, llama2_tokenizer_json=True,
                                        eos_token_id=3),
}


def _fields(reader: gguf.GGUFReader) -> dict[str, tuple[list, object]]:
    return {k: (f.types, f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def assert_same_as_peer(ours: Path, peer: Path, *, only_ours: set[str] = ONLY_OURS,
                        only_peer: set[str] = ONLY_PEER) -> None:
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(peer)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert sorted(ta) == sorted(tb)
    for name, t in ta.items():
        u = tb[name]
        assert (t.tensor_type, list(t.shape)) == (u.tensor_type, list(u.shape)), name
        assert t.data.tobytes() == u.data.tobytes(), f"{name}: data differs from convert_hf_to_gguf.py's"
    fa, fb = _fields(a), _fields(b)
    assert set(fa) - set(fb) == only_ours and set(fb) - set(fa) == only_peer
    for key in set(fa) & set(fb):
        assert fa[key] == fb[key], key


@pytest.mark.slow
@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tensors_and_metadata_equal_convert_hf_to_gguf(tmp_path: Path, variant: str, outtype: str) -> None:
    model_dir = tmp_path / "Tiny"  # general.name: the peer title-cases the directory name (§19.5)
    build_hf(model_dir, **VARIANTS[variant])
    ours = convert_checkpoint(model_dir, tmp_path / "ours.gguf", outtype=outtype).outfile  # GGUF: the default
    peer_convert(model_dir, tmp_path / "peer.gguf", outtype)
    # with tokenizer.json naming <unk>, llama.cpp's converter writes its id too
    both_unk = "llama2-tokenizer" in variant
    # the peer always writes general.quantization_version, we only for a quantized file (§14.2)
    only_peer = ONLY_PEER - {"general.quantization_version"} if outtype == "q8_0" else ONLY_PEER
    assert_same_as_peer(ours, tmp_path / "peer.gguf", only_peer=only_peer,
                        only_ours=ONLY_OURS - {"tokenizer.ggml.unknown_token_id"} if both_unk else ONLY_OURS)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(ours).tensors}
    want_2d = {"f16": gguf.GGMLQuantizationType.F16, "f32": gguf.GGMLQuantizationType.F32,
               "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == want_2d  # the outtype was applied
    names = {t.name for t in gguf.GGUFReader(ours).tensors}
    assert ("output.weight" in names) != ("tied" in variant)
    assert ("rope_freqs.weight" in names) == ("llama3" in variant)
    if "llama2-tokenizer" in variant:
        with load(ours) as m:
            assert m.metadata["tokenizer.ggml.eos_token_id"] == 2 and m.metadata["tokenizer.ggml.add_sep_token"] is False
    if "tokenizer-config" in variant:
        with load(ours) as m:
            assert m.metadata["tokenizer.chat_template"] == TOKENIZER_CONFIG["chat_template"]
            assert m.metadata["tokenizer.ggml.add_bos_token"] is True and m.metadata["tokenizer.ggml.token_type"][300] == 3


@pytest.mark.slow
@pytest.mark.parametrize("variant, kept", [("bf16-3-shards", "bf16"), ("f16-bin", "f16"), ("f32-mistral", "f32")])
def test_no_options_is_gguf_auto_as_the_peers_auto_for_bf16_and_f16(tmp_path: Path, variant: str, kept: str,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """`convert-model HF_DIR`: GGUF, each weight in its checkpoint type, named ggml-model-<type>.gguf. The
    peer's --outtype auto makes the same file from bf16 and f16 checkpoints; from an f32 one it rounds to
    F16 where we keep F32 (docs/format.md §19.5), so there ours is the peer's --outtype f32."""
    import safetensors.torch

    model_dir = tmp_path / "Tiny"
    build_hf(model_dir, **VARIANTS[variant])
    assert main([str(model_dir), "-q"]) == 0
    ours = model_dir / f"ggml-model-{kept}.gguf"
    assert [p.name for p in model_dir.glob("*.gguf")] == [ours.name]
    peer_convert(model_dir, tmp_path / "peer.gguf", "auto" if kept != "f32" else "f32")
    assert_same_as_peer(ours, tmp_path / "peer.gguf")
    if kept == "f32":  # control: the peer's own auto differs from ours here (F16)
        peer_convert(model_dir, tmp_path / "peer-auto.gguf", "auto")
        with pytest.raises(AssertionError):
            assert_same_as_peer(ours, tmp_path / "peer-auto.gguf")
    if kept == "bf16":  # copied unchanged: the bytes safetensors holds (transformers' writer, read by its library)
        weights = {}
        for f in model_dir.glob("model-*.safetensors"):
            weights.update(safetensors.torch.load_file(f))
        t = next(t for t in gguf.GGUFReader(ours).tensors if t.name == "blk.1.ffn_up.weight")
        assert t.data.tobytes() == weights["model.layers.1.mlp.up_proj.weight"].view(torch.int16).numpy().tobytes()
        assert t.data.tobytes() != weights["model.layers.0.mlp.up_proj.weight"].view(torch.int16).numpy().tobytes()


def reorder_rows(path: Path, name: str, order: np.ndarray) -> None:
    """Rewrite one tensor of a GGUF in place with its rows taken in `order`."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    rows = np.array(t.data).reshape(len(order), -1)
    with open(path, "r+b") as f:
        f.seek(t.data_offset)
        f.write(rows[order].tobytes())


@pytest.mark.slow
def test_controls_unpermuted_rows_or_one_changed_byte_differ_from_the_peer(tmp_path: Path) -> None:
    model_dir = tmp_path / "Tiny"
    build_hf(model_dir, shards=2)
    peer_convert(model_dir, tmp_path / "peer.gguf", "f16")
    for control in ("q rows in Hugging Face order", "k rows in Hugging Face order", "one byte"):
        ours = convert_checkpoint(model_dir, tmp_path / "ours.gguf", outtype="f16", fmt="gguf", force=True).outfile
        assert_same_as_peer(ours, tmp_path / "peer.gguf")
        if control == "one byte":
            t = next(t for t in gguf.GGUFReader(ours).tensors if t.name == "blk.1.ffn_up.weight")
            with open(ours, "r+b") as f:
                f.seek(t.data_offset + 5)
                f.write(b"\x55")
        else:
            name, heads = ("blk.0.attn_q.weight", 4) if control.startswith("q") else ("blk.1.attn_k.weight", 2)
            reorder_rows(ours, name, np.argsort(unpermute_rows(64 if heads == 4 else 32, heads)))
        with pytest.raises(AssertionError, match="data differs"):
            assert_same_as_peer(ours, tmp_path / "peer.gguf")


def test_unpermute_rows_is_llama_cpp_permute() -> None:
    """Restated from convert_hf_to_gguf.py's LlamaModel.permute, on row indices (torch, not our code)."""
    for rows, heads in ((64, 4), (32, 2), (128, 1), (4096, 32)):
        idx = torch.arange(rows)
        want = idx.reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)
        np.testing.assert_array_equal(unpermute_rows(rows, heads), want.numpy())
    assert not np.array_equal(unpermute_rows(64, 4), np.arange(64))  # control: it does move rows


def test_llama3_factors_as_the_peer_computes_them() -> None:
    """The peer's generate_extra_tensors, restated with torch float32 ops, at the head sizes and factors of
    Llama 3.1 (128, 8) and 3.2 (64 and 128, 32) and the fixtures' (16, old context 64)."""
    import math

    from ggmlfmt.llama.model import llama3_rope_factors

    for dim, factor, old in ((128, 8.0, 8192), (128, 32.0, 8192), (64, 32.0, 8192), (16, 8.0, 64)):
        base = 500000.0
        freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        want = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < old / 4.0:
                want.append(1)
            elif wavelen > old / 1.0:
                want.append(factor)
            else:
                smooth = (old / wavelen - 1.0) / (4.0 - 1.0)
                want.append(1 / ((1 - smooth) / factor + smooth))
        want = torch.tensor(want, dtype=torch.float32).numpy()
        got = llama3_rope_factors(dim, base, factor=factor, old_context=old)
        assert 0 < np.count_nonzero((want > 1) & (want < factor))  # the blend region is exercised
        assert got.tobytes() == want.tobytes(), (dim, factor, old)
        assert got.tobytes() != llama3_rope_factors(dim, base, factor=factor, old_context=old // 2).tobytes()


@pytest.mark.parametrize("weights, vocab", [("safetensors", "tokenizer.model"), ("bin", "tokenizer.json")])
def test_runs_with_torch_unimportable(tmp_path: Path, weights: str, vocab: str) -> None:
    from hf_fixtures import llama3_pre_tokenizer

    model_dir = tmp_path / "Tiny"
    build_hf(model_dir, shards=2 if weights == "safetensors" else 1, bin_format=weights == "bin",
             tokenizer=vocab == "tokenizer.model", dtype="bfloat16" if weights == "safetensors" else "float16")
    if vocab == "tokenizer.json":  # a byte-level BPE of the model's 320 ids: 256 byte tokens and 64 merges of them
        alphabet = [chr(c) for c in range(0x21, 0x7F)] + [chr(0x100 + k) for k in range(256 - 94)]
        merges = [f"{alphabet[k]} {alphabet[k + 1]}" for k in range(64)]
        vocab_map = {t: i for i, t in enumerate(alphabet + [m.replace(" ", "") for m in merges])}
        (model_dir / "tokenizer.json").write_text(json.dumps({
            "model": {"type": "BPE", "byte_fallback": False, "vocab": vocab_map, "merges": merges},
            "added_tokens": [], "normalizer": None, "pre_tokenizer": llama3_pre_tokenizer()}))
    out = tmp_path / "m.gguf"
    proc = run_with_unimportable("torch,transformers,safetensors,tokenizers,sentencepiece"
                                 if vocab == "tokenizer.json" else "torch,transformers,safetensors,tokenizers",
                                 "convert", [str(model_dir), "--format", "gguf", "--outfile", str(out), "-q"])
    assert proc.returncode == 0 and "rc=0" in proc.stdout and "loaded=[]" in proc.stdout, proc.stderr
    with load(out) as m:
        assert m.metadata["general.architecture"] == "llama" and "blk.1.attn_k.weight" in m.tensors
        assert m.metadata["tokenizer.ggml.model"] == ("gpt2" if vocab == "tokenizer.json" else "llama")


def test_dry_run_json_names_hf_tensors_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = tmp_path / "Tiny"
    build_hf(model_dir, shards=2, tie=True)
    assert main([str(model_dir), "--format", "gguf", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["format"] == "gguf v3" and not list(model_dir.glob("*.gguf"))
    by_name = {t["name"]: t for t in plan["tensors"]}
    assert by_name["blk.0.attn_q.weight"]["checkpoint_name"] == "model.layers.0.self_attn.q_proj.weight"
    assert "output.weight" not in by_name and plan["metadata"]["llama.attention.head_count_kv"] == 2


def test_each_weight_file_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import convert.hf
    from convert.pth import open_checkpoint

    st_dir, bin_dir = tmp_path / "st" / "Tiny", tmp_path / "bin" / "Tiny"
    build_hf(st_dir, shards=3)
    build_hf(bin_dir, dtype="float16", bin_format=True)
    opened: list[Path] = []
    real_load = convert.hf.load
    monkeypatch.setattr(convert.hf, "load", lambda p: opened.append(Path(p)) or real_load(p))
    monkeypatch.setattr(convert.hf, "open_checkpoint", lambda p: opened.append(Path(p)) or open_checkpoint(p))
    for model_dir in (st_dir, bin_dir):
        convert_checkpoint(model_dir)
    files = sorted(st_dir.glob("model-*.safetensors")) + [bin_dir / "pytorch_model.bin"]
    assert len(files) > 2 and sorted(opened) == sorted(files)  # one parse each, at planning; writing maps them


def test_requests_that_cannot_be_written_are_cannot_write_and_bad_inputs_format_error_kinds(tmp_path: Path) -> None:
    from ggmlfmt.errors import BadLayout, BadValue, CannotWrite

    model_dir = tmp_path / "Tiny"
    build_hf(model_dir)
    with pytest.raises(CannotWrite, match="converts to GGUF only"):
        plan_conversion(model_dir, fmt="ggjt")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(BadValue, match="architectures"):
        plan_conversion(model_dir)
    (model_dir / "config.json").write_text(json.dumps(config))
    plan_conversion(model_dir)  # control: the restored directory plans
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../model.safetensors"}}))
    with pytest.raises(BadLayout, match="not a file name inside the model directory"):
        plan_conversion(model_dir)


# ------------------------------------------------------------------ hostile inputs


def refused(model_dir: Path, capsys: pytest.CaptureFixture, pattern: str) -> str:
    """convert-model: exit status 1, one stderr line matching pattern, no output file (nor a temp)."""
    capsys.readouterr()  # what building the fixture printed
    assert main([str(model_dir), "--format", "gguf"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("convert-model: error: "), err
    assert re.search(pattern, err), err
    assert not [p for p in model_dir.iterdir() if "ggml-model" in p.name]
    return err


def _header_file(path: Path, header: object, data: bytes, length: int | None = None) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


E = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("case, header, data, length, pattern", [
    ("length past the file", {"a": E}, bytes(8), 1 << 20, r"header length: header of 1,048,576 bytes, \d+ left"),
    ("not JSON", b"{nope", bytes(8), None, "header: not a UTF-8 JSON header"),
    ("huge header", {"a": E}, bytes(8), 1 << 40, "header length: .*expected at most 100,000,000"),
    ("offsets out of range", {"a": {**E, "data_offsets": [0, 80]}}, bytes(8), None, "not inside"),
    ("overlapping", {"a": E, "b": {**E, "data_offsets": [4, 12]}}, bytes(12), None, "overlap tensor 'a'"),
    ("shape vs range", {"a": {**E, "shape": [1]}}, bytes(8), None, "data_offsets span 8"),
    ("unknown dtype", {"a": {**E, "dtype": "Q4"}}, bytes(8), None, "dtype 'Q4' is not one we read"),
])
def test_hostile_safetensors(tmp_path: Path, capsys: pytest.CaptureFixture, case: str, header: object, data: bytes,
                             length: int | None, pattern: str) -> None:
    model_dir = tmp_path / "m"
    build_hf(model_dir)
    _header_file(model_dir / "model.safetensors", header, data, length)
    refused(model_dir, capsys, r"model\.safetensors: .*" + pattern)


@pytest.mark.parametrize("change, pattern", [
    (lambda wm, files: {**wm, next(iter(wm)): "../outside.safetensors"}, "'../outside.safetensors' is not a file name inside"),
    (lambda wm, files: {**wm, next(iter(wm)): "/etc/passwd"}, "'/etc/passwd' is not a file name inside"),
    (lambda wm, files: {**wm, next(iter(wm)): "sub/" + files[0]}, "is not a file name inside"),
    (lambda wm, files: {**wm, next(iter(wm)): "model-00009-of-00009.safetensors"}, "which does not exist"),
    (lambda wm, files: {k: v for k, v in wm.items() if v != files[1]}, "is in the directory but not in the index"),
    (lambda wm, files: {**wm, "model.layers.9.mlp.up_proj.weight": files[0]}, "which no file holds"),
])
def test_hostile_index(tmp_path: Path, capsys: pytest.CaptureFixture, change, pattern: str) -> None:
    model_dir = tmp_path / "m"
    build_hf(model_dir, shards=3)
    index = model_dir / "model.safetensors.index.json"
    obj = json.loads(index.read_text())
    files = sorted(set(obj["weight_map"].values()))
    assert len(files) >= 2
    (tmp_path / "outside.safetensors").write_bytes((model_dir / files[0]).read_bytes())
    obj["weight_map"] = change(obj["weight_map"], files)
    index.write_text(json.dumps(obj))
    refused(model_dir, capsys, pattern)


def test_a_tensor_in_two_files_or_where_the_index_does_not_say(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import safetensors.numpy

    model_dir = tmp_path / "m"
    build_hf(model_dir, shards=3, dtype="float32")
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    files = sorted(set(index.values()))
    name = next(n for n, f in index.items() if f == files[0])
    moved = safetensors.numpy.load_file(str(model_dir / files[1]))
    safetensors.numpy.save_file({**moved, name: np.zeros(3, np.float32)}, str(model_dir / files[1]))
    refused(model_dir, capsys, f"{files[1]}: tensor '{re.escape(name)}': (also in {files[0]}|the index places it in)")
    safetensors.numpy.save_file({**moved, "x": np.zeros(3, np.int64)}, str(model_dir / files[1]))
    refused(model_dir, capsys, "tensor 'x': the index places it in None")


def test_integer_weights_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import safetensors.numpy

    model_dir = tmp_path / "m"
    build_hf(model_dir, dtype="float32")
    weights = safetensors.numpy.load_file(str(model_dir / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(np.int32)
    safetensors.numpy.save_file(weights, str(model_dir / "model.safetensors"))
    refused(model_dir, capsys, r"tensor 'model.norm.weight': expected floating-point data .*found I32")


def test_bin_pickle_naming_os_system_is_refused_and_does_not_run(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    model_dir = tmp_path / "m"
    build_hf(model_dir, dtype="float16", bin_format=True)
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": RunsCode(os.system, f"touch {marker}")}, model_dir / "pytorch_model.bin")
    refused(model_dir, capsys, r"pytorch_model\.bin: .*global (posix|os)\.system is not allowed")
    assert not marker.exists()


@pytest.mark.parametrize("change, pattern", [
    ({"hidden_size": 1 << 40}, "hidden_size: expected an integer in 1..65,536, found 1099511627776"),
    ({"num_hidden_layers": 10**9}, "num_hidden_layers: expected an integer"),
    ({"intermediate_size": -1}, "intermediate_size: expected an integer"),
    ({"vocab_size": 1 << 30}, "vocab_size: expected an integer"),
    ({"num_key_value_heads": 3}, "num_key_value_heads: 4 heads of 3 key/value heads do not divide"),
    ({"max_position_embeddings": 1 << 40}, "max_position_embeddings: expected an integer"),
    ({"architectures": ["GPT2LMHeadModel"]}, r'architectures: architectures \["GPT2LMHeadModel"\]'),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 4.0}}, 'rope_parameters: rope type "dynamic"'),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters: yarn rope scaling without original_max_pos"),
    ({"rms_norm_eps": "tiny"}, "rms_norm_eps: expected a number"),
    ({"head_dim": 32}, "head_dim: head_dim 32 is not hidden_size / num_attention_heads"),
    ({"hidden_size": 60}, "num_attention_heads: head size 15 .* is odd"),
    ({"attention_bias": True}, "attention_bias: true: bias tensors"),
    ({"intermediate_size": 97}, "intermediate_size: 97, the tensors imply 96"),
])
def test_absurd_config_json(tmp_path: Path, capsys: pytest.CaptureFixture, change: dict, pattern: str) -> None:
    model_dir = tmp_path / "m"
    build_hf(model_dir)
    config = model_dir / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    refused(model_dir, capsys, r"config\.json: " + pattern)


@pytest.mark.parametrize("config, pattern", [
    ({"added_tokens_decoder": {"320": {"content": "x"}}}, "token '320': id 320 is not one of the 320 tokens"),
    ({"added_tokens_decoder": {"5": {"special": True}}}, "expected an object with a string content"),
    ({"add_bos_token": "yes"}, 'add_bos_token: expected true or false, found "yes"'),
    ([1], "expected a JSON object, found list"),
])
def test_bad_tokenizer_config(tmp_path: Path, capsys: pytest.CaptureFixture, config: object, pattern: str) -> None:
    model_dir = tmp_path / "m"
    build_hf(model_dir)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    refused(model_dir, capsys, r"tokenizer_config\.json: .*" + pattern)


def test_huge_config_json_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = tmp_path / "m"
    build_hf(model_dir)
    (model_dir / "config.json").write_text('{"a": "' + "x" * (2 << 20) + '"}')
    refused(model_dir, capsys, "at most 1,048,576 bytes")


def test_ggjt_is_refused_for_a_hugging_face_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    build_hf(model_dir)
    with pytest.raises(Exception, match="converts to GGUF only"):
        plan_conversion(model_dir, fmt="ggjt")


@pytest.mark.parametrize("args, pattern", [
    (["--format", "ggjt"], "converts to GGUF only; drop --format ggjt or name the output .gguf"),
    (["--outfile", "OUT/m.bin"], "converts to GGUF only"),  # a .bin name without --format means ggjt
    (["--llama-release", "3.1"], "--llama-release applies only to Meta's Llama 3 checkpoints"),
    (["--eps", "1e-5"], "--eps applies only to Meta checkpoints"),
])
def test_options_a_hugging_face_directory_does_not_take(tmp_path: Path, capsys: pytest.CaptureFixture, args: list,
                                                          pattern: str) -> None:
    model_dir = tmp_path / "m"
    build_hf(model_dir)
    capsys.readouterr()
    assert main([str(model_dir), *[a.replace("OUT", str(tmp_path)) for a in args]]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and pattern in err, err
    assert not list(tmp_path.glob("*.bin")) and not list(model_dir.glob("ggml-model*"))
    assert main([str(model_dir), "-q"]) == 0  # control: the same directory without the option converts


def test_help_names_hugging_face_directories(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "A Hugging Face LLaMA or Mistral directory (config.json" in out and "convert_hf_to_gguf.py" in out
    assert "Hugging Face: config.json's max_position_embeddings" in out
