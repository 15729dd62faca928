"""convert-model --format gguf, checked by the gguf package's GGUFReader, torch and sentencepiece.

Every GGUF written here is read back by `gguf.GGUFReader` (names, ne order, types, every metadata key
and value, tensor bytes) and by our `ggmlfmt.load`. Expected values come from elsewhere: tensor bytes
are np.concatenate of the torch.load'ed shards along Meta's split axis, cast by torch; metadata from
params.json (hand-computed where derived) and sentencepiece; GGUF names from tests/client/gguf_check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import sentencepiece
import torch

from builders import llama_shapes, split_axis
from convert import convert_checkpoint
from convert.cli import main
from ggmlfmt import FormatError, load
from helpers import run_with_unimportable
from meta import VOCAB_SIZE, build, load_shards, split, tokenizer_bytes

import gguf_check  # tests/client (on sys.path by conftest); only its name map and vocab typing are used

Q = gguf.GGMLQuantizationType
TORCH_TYPE = {"f16": torch.float16, "f32": torch.float32, "bf16": torch.bfloat16}
AUTO = {torch.float16: "f16", torch.float32: "f32", torch.bfloat16: "bf16"}  # auto keeps the checkpoint's type
GGUF_TYPE = {"f16": Q.F16, "f32": Q.F32, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FT = gguf.LlamaFileType
FILE_TYPE = {"f32": FT.ALL_F32, "f16": FT.MOSTLY_F16, "bf16": FT.MOSTLY_BF16, "q8_0": FT.MOSTLY_Q8_0}

# A LLaMA-2-style model at toy size: grouped-query attention, ffn_dim_multiplier, norm_eps 1e-5, rope_theta.
LLAMA2_PARAMS = {"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "n_kv_heads": 2,
                 "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": -1}
LLAMA2_HIDDEN = 224  # by hand, Meta's rule: 2*(4*64)//3 = 170; int(1.3*170) = 221; up to a multiple of 32: 224
LLAMA2_KV_ROWS = 32  # 2 key/value heads of 64/4 = 16 rows


def llama2_weights(params: dict[str, Any], n_vocab: int, hidden: int, kv_rows: int, seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights in Meta's key order (wk/wv with kv_rows rows, FFN hidden wide), then rope.freqs."""
    rng = np.random.default_rng(seed)
    dim = params["dim"]
    shapes = llama_shapes({"n_embd": dim, "n_vocab": n_vocab, "n_layer": params["n_layers"]}, n_ff=hidden,
                          kv_rows=kv_rows)
    std = {"tok_embeddings.weight": 1.0, "output.weight": 0.1, "wq": 0.1, "wk": 0.1}  # tame yet sensitive
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            key = name if name in std else name.split(".")[-2]
            out[name] = (std.get(key, 0.05) * rng.standard_normal(shape)).astype(np.float32)
    half = dim // params["n_heads"] // 2
    out["rope.freqs"] = (1.0 / params.get("rope_theta", 1e4) ** (np.arange(half) * 2 / (2 * half))).astype(np.float32)
    return out


def build_llama2(root: Path, n_shards: int, *, params: dict[str, Any] | None = None, hidden: int = LLAMA2_HIDDEN,
                 kv_rows: int = LLAMA2_KV_ROWS, seed: int = 11) -> tuple[Path, dict[str, np.ndarray], list[Path]]:
    """A bf16 Meta-layout checkpoint written by torch.save; returns (model dir, full weights as the bf16
    values in float32, shard paths)."""
    params = dict(LLAMA2_PARAMS if params is None else params)
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokenizer.model").write_bytes(tokenizer_bytes())
    model_dir = root / "llama-2-tiny"
    model_dir.mkdir()
    (model_dir / "params.json").write_text(json.dumps(params))
    full = llama2_weights(params, VOCAB_SIZE, hidden, kv_rows, seed)
    full = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in full.items()}  # exact in bf16
    paths = []
    for k, shard in enumerate(split(full, n_shards)):
        paths.append(model_dir / f"consolidated.{k:02d}.pth")
        torch.save({n: torch.from_numpy(a).to(torch.bfloat16) for n, a in shard.items()}, paths[-1])
    return model_dir, full, paths


def expected_arrays(paths: list[Path], outtype: str) -> dict[str, np.ndarray]:
    """Meta name -> the output tensor: each torch.load'ed shard cast by torch (1-D: float32), then np.concatenate
    along the split axis (1-D: shard 0's copy). rope.freqs is not part of a GGUF. bf16 comes as its uint16
    bits; q8_0 as gguf.quants.quantize's blocks (uint8, one row of blocks per tensor row) of the float32 values;
    auto: each tensor's own checkpoint type."""
    shards = load_shards(paths)
    out = {}
    for name, t in shards[0].items():
        if name == "rope.freqs":
            continue
        kind = "f32" if t.dim() == 1 else AUTO[t.dtype] if outtype == "auto" else outtype
        dtype = torch.float32 if kind == "q8_0" else TORCH_TYPE[kind]
        parts = [s[name].to(dtype) for s in shards]
        parts = [p.view(torch.int16).numpy().view(np.uint16) if dtype == torch.bfloat16 else p.numpy() for p in parts]
        axis = split_axis(name, t.dim())
        full = parts[0] if axis is None else np.concatenate(parts, axis=axis)
        out[name] = gguf.quants.quantize(full, Q.Q8_0) if kind == "q8_0" else full
    return out


def n_params(paths: list[Path]) -> int:
    """Every value of the checkpoint (rope.freqs included), as llama.cpp's Meta converter counts for size_label."""
    shards = load_shards(paths)
    return sum(t.numel() * (1 if split_axis(name, t.dim()) is None else len(shards)) for name, t in shards[0].items())


def expected_metadata(params: dict[str, Any], tokenizer: Path, *, outtype: str, name: str, paths: list[Path],
                      ctx: int = 2048, eps: float | None = None,
                      n_ff: int | None = None) -> dict[str, tuple[list[int], Any]]:
    """Every key we must write -> (gguf value types, value), from params.json, sentencepiece and gguf-py
    (size_label: gguf.size_label of the checkpoint's values; outtype: the resolved one, never auto)."""
    u32, f32, s, arr = (gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING,
                        gguf.GGUFValueType.ARRAY)
    dim, n_heads = params["dim"], params["n_heads"]
    # Meta's rule without ffn_dim_multiplier: 2*(4*dim)//3 rounded up to multiple_of (hand-checked for dim 64: 192)
    n_ff = n_ff if n_ff is not None else -(-(2 * 4 * dim // 3) // params["multiple_of"]) * params["multiple_of"]
    eps = eps if eps is not None else params.get("norm_eps", 1e-6)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    vocab = gguf_check.sentencepiece_vocab(tokenizer)
    want = {
        "general.architecture": ([s], "llama"), "general.name": ([s], name),
        "general.file_type": ([u32], int(FILE_TYPE[outtype])), "general.alignment": ([u32], 32),
        "general.size_label": ([s], gguf.size_label(n_params(paths), 0, 0, 0)),
        "llama.vocab_size": ([u32], len(vocab)), "llama.context_length": ([u32], ctx), "llama.embedding_length": ([u32], dim),
        "llama.block_count": ([u32], params["n_layers"]), "llama.feed_forward_length": ([u32], n_ff),
        "llama.rope.dimension_count": ([u32], dim // n_heads), "llama.attention.head_count": ([u32], n_heads),
        "llama.attention.head_count_kv": ([u32], params.get("n_kv_heads", n_heads)),
        "llama.attention.layer_norm_rms_epsilon": ([f32], float(np.float32(eps))),
        "tokenizer.ggml.model": ([s], "llama"),
        "tokenizer.ggml.tokens": ([arr, s], [p for p, _, _ in vocab]),
        "tokenizer.ggml.scores": ([arr, f32], [float(np.float32(sc)) for _, sc, _ in vocab]),
        "tokenizer.ggml.token_type": ([arr, gguf.GGUFValueType.INT32], [t for _, _, t in vocab]),
        "tokenizer.ggml.bos_token_id": ([u32], sp.bos_id()), "tokenizer.ggml.eos_token_id": ([u32], sp.eos_id()),
        "tokenizer.ggml.unknown_token_id": ([u32], sp.unk_id()),
    }
    if "rope_theta" in params:
        want["llama.rope.freq_base"] = ([f32], float(np.float32(params["rope_theta"])))
    if outtype == "q8_0":
        want["general.quantization_version"] = ([u32], gguf.GGML_QUANT_VERSION)
    return want


def check_gguf(path: Path, want_tensors: dict[str, np.ndarray], want_meta: dict[str, tuple[list[int], Any]],
               outtype: str | None = None) -> None:
    """GGUFReader and ggmlfmt.load both see exactly these tensors (names, ne, types, bytes) and metadata.

    outtype: the 2-D type (q8_0: want holds block bytes); None: from want's dtype."""
    reader = gguf.GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(fields) == set(want_meta)
    for key, (types, value) in want_meta.items():
        assert [int(t) for t in fields[key].types] == [int(t) for t in types], key
        assert fields[key].contents() == value, key
    assert [t.name for t in reader.tensors] == [gguf_check.gguf_name(n) for n in want_tensors]
    model = load(path)
    assert model.format == "gguf" and set(model.tensors) == {t.name for t in reader.tensors}
    by_dtype = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.uint16): "bf16"}
    for t, (meta_name, want) in zip(reader.tensors, want_tensors.items(), strict=True):
        kind = "q8_0" if want.dtype == np.uint8 else by_dtype[want.dtype]
        shape = list(want.shape) if kind != "q8_0" else [want.shape[0], want.shape[1] // 34 * 32]
        assert t.shape.tolist() == list(reversed(shape)), t.name  # GGUF lists ne[0] (innermost) first
        assert t.tensor_type == GGUF_TYPE[kind], t.name
        assert np.asarray(t.data).tobytes() == want.tobytes(), t.name
        ours = model.tensors[t.name]
        assert ours.tobytes() == want.tobytes(), t.name
        if kind != "q8_0":
            assert ours.shape == want.shape and ours.dtype == want.dtype, t.name
    assert model.metadata["llama.attention.head_count_kv"] == want_meta["llama.attention.head_count_kv"][1]


# ------------------------------------------------------------------ LLaMA-1 checkpoints (f16 shards)


@pytest.mark.parametrize("outtype", ["f16", "f32", "bf16", "q8_0", "auto"])
@pytest.mark.parametrize("n_shards", [1, 2, 4])
def test_gguf_from_shards_reads_back_exactly(tmp_path: Path, n_shards: int, outtype: str) -> None:
    ck = build(tmp_path, n_shards, seed=3)
    cp = convert_checkpoint(ck.model_dir, outtype=outtype)  # GGUF: the default format
    resolved = "f16" if outtype == "auto" else outtype  # f16 shards
    assert cp.outfile == ck.model_dir / f"ggml-model-{resolved}.gguf" and cp.skipped == ("rope.freqs",)
    check_gguf(cp.outfile, expected_arrays(ck.paths, outtype),
               expected_metadata(ck.params, ck.tokenizer, outtype=resolved, name="model", paths=ck.paths))


def test_same_weights_give_the_same_gguf_however_sharded(tmp_path: Path) -> None:
    files = {n: convert_checkpoint(build(tmp_path / str(n), n, seed=5).model_dir, fmt="gguf").outfile.read_bytes()
             for n in (1, 2, 4)}
    assert files[1] == files[2] == files[4]


def test_f32_checkpoint_rounding_is_announced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 2, dtype="float32")
    assert main([str(ck.model_dir), "--quiet"]) == 0  # auto: f32 stays f32, nothing rounds
    assert "rounded" not in capsys.readouterr().err
    check_gguf(ck.model_dir / "ggml-model-f32.gguf", expected_arrays(ck.paths, "auto"),
               expected_metadata(ck.params, ck.tokenizer, outtype="f32", name="model", paths=ck.paths))
    assert main([str(ck.model_dir), "--outtype", "f16", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "rounded to float16" in err and "--outtype f32" in err
    check_gguf(ck.model_dir / "ggml-model-f16.gguf", expected_arrays(ck.paths, "f16"),
               expected_metadata(ck.params, ck.tokenizer, outtype="f16", name="model", paths=ck.paths))


# ------------------------------------------------------------------ LLaMA-2 style: bf16, GQA, multiplier, theta


@pytest.mark.parametrize("outtype", ["f16", "f32", "bf16", "q8_0", "auto"])
@pytest.mark.parametrize("n_shards", [1, 2, 4])
def test_llama2_bf16_gqa_checkpoint(tmp_path: Path, n_shards: int, outtype: str,
                                    capsys: pytest.CaptureFixture) -> None:
    model_dir, _, paths = build_llama2(tmp_path, n_shards)
    assert main([str(model_dir), "--outtype", outtype]) == 0
    err = capsys.readouterr().err
    assert ("rounded to float16" in err) == (outtype == "f16")  # bf16 -> f16 rounds; -> f32, bf16 are exact
    assert "rounded to bfloat16" not in err
    assert "norm_eps" not in err  # params.json has it: no default note
    resolved = "bf16" if outtype == "auto" else outtype
    want = expected_arrays(paths, outtype)
    assert want["layers.0.attention.wk.weight"].shape[0] == LLAMA2_KV_ROWS
    check_gguf(model_dir / f"ggml-model-{resolved}.gguf", want,
               expected_metadata(LLAMA2_PARAMS, tmp_path / "tokenizer.model", outtype=resolved, name="llama-2-tiny",
                                 n_ff=LLAMA2_HIDDEN, paths=paths))


@pytest.mark.parametrize("variant", ["gqa", "ffn_dim_multiplier"])
def test_ggjt_refuses_what_it_cannot_describe_and_suggests_gguf(tmp_path: Path, variant: str,
                                                                capsys: pytest.CaptureFixture) -> None:
    params = dict(LLAMA2_PARAMS)
    if variant == "gqa":  # only GQA: the FFN width is what n_mult gives
        del params["ffn_dim_multiplier"]
        hidden = 192
    else:  # only the multiplier: the tensors' shapes would also be wrong for ggjt; this must be said first
        del params["n_kv_heads"]
        hidden = LLAMA2_HIDDEN
    kv_rows = LLAMA2_KV_ROWS if variant == "gqa" else 64
    model_dir, _, _ = build_llama2(tmp_path, 2, params=params, hidden=hidden, kv_rows=kv_rows)
    assert main([str(model_dir), "--format", "ggjt"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("convert-model: error: ") and "params.json" in err and "use --format gguf" in err
    assert ("n_kv_heads" in err) == (variant == "gqa") and ("ffn_dim_multiplier" in err) == (variant != "gqa")
    assert not any(p.suffix in (".bin", ".gguf") for p in model_dir.iterdir())
    assert main([str(model_dir), "--format", "gguf", "--quiet"]) == 0  # and GGUF takes it


def test_requests_that_cannot_be_written_are_cannot_write_and_bad_inputs_format_error_kinds(tmp_path: Path) -> None:
    from convert import plan_conversion
    from ggmlfmt.errors import BadValue, CannotWrite

    model_dir, _, _ = build_llama2(tmp_path, 1)
    with pytest.raises(CannotWrite, match="grouped-query attention"):  # a model the 2023 format cannot hold
        plan_conversion(model_dir, fmt="ggjt")
    with pytest.raises(CannotWrite, match="norm_eps is"):  # an option params.json already answers
        plan_conversion(model_dir, fmt="gguf", rms_eps=1e-5)
    plan_conversion(model_dir, fmt="gguf")  # control: the same directory plans
    (model_dir / "params.json").write_text(json.dumps({**LLAMA2_PARAMS, "n_layers": 3}))
    with pytest.raises(BadValue, match=r"missing; params\.json \(n_layers 3\)"):
        plan_conversion(model_dir, fmt="gguf")


def test_gguf_refuses_shapes_params_json_does_not_imply(tmp_path: Path) -> None:
    # n_kv_heads 2 in params.json, but wk/wv hold 4 heads: named by tensor, before any output exists
    model_dir, _, _ = build_llama2(tmp_path, 1, kv_rows=64)
    with pytest.raises(FormatError, match=r"consolidated\.00\.pth: tensor 'layers\.0\.attention\.wk\.weight': "
                                          r"full shape \[64, 64\].*\[32, 64\]"):
        convert_checkpoint(model_dir, fmt="gguf")
    assert not list(model_dir.glob("*.gguf"))


def test_gguf_refuses_a_missing_layer(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    (ck.model_dir / "params.json").write_text(json.dumps({**ck.params, "n_layers": 3}))
    with pytest.raises(FormatError, match=r"consolidated\.00\.pth: tensor 'layers\.2\.attention\.wq\.weight': "
                                          r"missing; params\.json \(n_layers 3\) implies 9 more"):
        convert_checkpoint(ck.model_dir, fmt="gguf")


def test_gguf_refuses_a_tensor_llama_does_not_have(tmp_path: Path) -> None:
    ck = build(tmp_path, 1)
    state = load_shards(ck.paths)[0]
    state["extra.weight"] = torch.zeros(4, dtype=torch.float16)
    torch.save(state, ck.paths[0])
    with pytest.raises(FormatError, match=r"tensor 'extra\.weight': not a LLaMA tensor"):
        convert_checkpoint(ck.model_dir, fmt="gguf")


# ------------------------------------------------------------------ options: --ctx, --eps, names


def _fields(path: Path) -> dict[str, Any]:
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}


def test_ctx_default_is_announced_and_ctx_sets_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1)
    out = ck.model_dir / "ggml-model-f16.gguf"
    assert main([str(ck.model_dir), "--quiet"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "context length" in line]
    assert len(notes) == 1 and "2048" in notes[0] and "LLaMA-1" in notes[0] and "--ctx" in notes[0]
    assert _fields(out)["llama.context_length"] == 2048
    assert main([str(ck.model_dir), "--format", "gguf", "--ctx", "4096", "--force", "--quiet"]) == 0
    assert "context length" not in capsys.readouterr().err
    assert _fields(out)["llama.context_length"] == 4096
    assert main([str(ck.model_dir), "--format", "gguf", "--ctx", "0", "--force"]) == 1
    assert "context_length" in capsys.readouterr().err
    assert main([str(ck.model_dir), "--format", "ggjt", "--ctx", "4096"]) == 1  # ggjt stores no context length
    assert "--format gguf only" in capsys.readouterr().err


def test_eps_only_when_params_json_lacks_norm_eps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1)
    params = dict(ck.params)
    assert main([str(ck.model_dir), "--format", "gguf", "--eps", "1e-5", "--quiet"]) == 1  # params has 1e-6
    assert "norm_eps" in capsys.readouterr().err
    del params["norm_eps"]
    (ck.model_dir / "params.json").write_text(json.dumps(params))
    out = ck.model_dir / "ggml-model-f16.gguf"
    assert main([str(ck.model_dir), "--format", "gguf", "--quiet"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "norm_eps" in line]
    assert len(notes) == 1 and "1e-06" in notes[0] and "LLaMA-1" in notes[0]
    assert _fields(out)["llama.attention.layer_norm_rms_epsilon"] == float(np.float32(1e-6))
    assert main([str(ck.model_dir), "--format", "gguf", "--eps", "1e-5", "--force", "--quiet"]) == 0
    assert "norm_eps" not in capsys.readouterr().err
    assert _fields(out)["llama.attention.layer_norm_rms_epsilon"] == float(np.float32(1e-5))
    assert main([str(ck.model_dir), "--format", "gguf", "--eps", "2", "--force"]) == 1
    assert "--eps" in capsys.readouterr().err


def test_gguf_is_the_default_and_a_bin_outfile_means_ggjt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 2)
    out = tmp_path / "elsewhere.gguf"
    assert main([str(ck.model_dir), "--outfile", str(out), "--quiet"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert main([str(ck.model_dir)]) == 0
    assert "a .bin name" not in capsys.readouterr().err
    assert (ck.model_dir / "ggml-model-f16.gguf").read_bytes() == out.read_bytes()
    assert main([str(ck.model_dir), "--format", "ggjt", "--quiet"]) == 0
    ggjt = (ck.model_dir / "ggml-model-f16.bin").read_bytes()
    assert ggjt[:4] == b"tjgg"  # ggjt, as in 2023
    assert main([str(ck.model_dir), "--outfile", str(tmp_path / "named.bin")]) == 0  # .bin: ggjt, and said so
    notes = [line for line in capsys.readouterr().err.splitlines() if "a .bin name without --format" in line]
    assert len(notes) == 1 and "ggjt" in notes[0] and "--format gguf" in notes[0]
    assert (tmp_path / "named.bin").read_bytes() == ggjt
    assert main([str(ck.model_dir), "--outfile", str(tmp_path / "forced.bin"), "--format", "gguf", "--quiet"]) == 0
    assert (tmp_path / "forced.bin").read_bytes() == out.read_bytes()
    assert main([str(ck.model_dir), "--format", "ggjt", "--outfile", str(tmp_path / "x.gguf")]) == 1
    assert ".gguf output name with --format ggjt" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


# ------------------------------------------------------------------ dry run


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_dry_run_json_is_the_plan_of_the_file_written(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      outtype: str) -> None:
    model_dir, _, _ = build_llama2(tmp_path, 2)
    assert main([str(model_dir), "--format", "gguf", "--outtype", outtype, "--dry-run", "--json", "--ctx", "4096"]) == 0
    plan = json.loads(capsys.readouterr().out)
    out = model_dir / f"ggml-model-{outtype}.gguf"
    assert not out.exists() and plan["format"] == "gguf v3" and plan["outfile"] == str(out)
    assert plan["skipped"] == ["rope.freqs"] and plan["defaults"] == []
    assert main([str(model_dir), "--format", "gguf", "--outtype", outtype, "--ctx", "4096", "--quiet"]) == 0
    reader = gguf.GGUFReader(out)
    assert plan["file_size"] == out.stat().st_size
    assert [(t["name"], t["ne"], t["type"], t["offset"], t["nbytes"]) for t in plan["tensors"]] == [
        (t.name, t.shape.tolist(), t.tensor_type.name, t.data_offset, t.n_bytes) for t in reader.tensors]
    assert [t["checkpoint_name"] for t in plan["tensors"]] == [gguf_check.meta_name(t.name) for t in reader.tensors]
    written = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.") and k != "general.alignment"}
    assert list(plan["metadata"]) == list(written)
    for key, f in written.items():
        value = f.contents()
        if isinstance(value, list):
            assert plan["metadata"][key]["count"] == len(value), key
        else:
            assert plan["metadata"][key] == value, key


def test_dry_run_text_shows_gguf_names_and_metadata(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 2)
    assert main([str(ck.model_dir), "--format", "gguf", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(gguf v3, 2-D auto: f16)" in out and "blk.1.ffn_down.weight" in out and "192x64" in out
    assert "meta: llama.context_length = 2048 (not in the checkpoint: LLaMA-1's value)" in out
    assert "meta: tokenizer.ggml.tokens = [320 string]" in out and "skipped rope.freqs" in out
    assert not list(ck.model_dir.glob("*.gguf"))


# ------------------------------------------------------------------ without torch


def test_gguf_conversion_runs_with_torch_unimportable(tmp_path: Path) -> None:
    model_dir, _, paths = build_llama2(tmp_path, 2)
    proc = run_with_unimportable("torch", "convert", [str(model_dir), "--format", "gguf", "--outtype", "f32",
                                                      "--quiet"], timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "rc=0 tried=[] loaded=[]", proc.stdout + proc.stderr
    check_gguf(model_dir / "ggml-model-f32.gguf", expected_arrays(paths, "f32"),
               expected_metadata(LLAMA2_PARAMS, tmp_path / "tokenizer.model", outtype="f32", name="llama-2-tiny",
                                 n_ff=LLAMA2_HIDDEN, paths=paths))
