"""migrate-old-weights --format gguf against independent sources: the gguf package reads every file back.

Expected bytes come from tests/builders.py (the reference quantizers in the GGUF = ggjt v3 block layout, the
element-by-element reference dequantizer), expected values from gguf.quants.dequantize, expected metadata and
vocabulary from the fixture's hyper-parameters and texts, expected rounding from struct's IEEE half packing.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

import builders
import ggmlfmt
import ggmlfmt.writer
from helpers import run_with_unimportable
from migrate.cli import main

from gguf_check import gguf_name  # tests/client (not a package), on sys.path by conftest

# n_ff = 384 for dim 128 / n_mult 64: every column-split shard (128/4, 384/4) is whole 32-element blocks
HP = builders.llama_hparams(n_vocab=300, dim=128, n_mult=64, n_head=2, n_layer=2, ftype=1)
N_FF = builders.llama_n_ff(128, 64)
VOCAB = builders.llama_vocab(300)
QUANT = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
F32_SCALES = {1: {"Q4_0", "Q4_1", "Q8_0"}, 2: {"Q4_0", "Q4_1", "Q8_0"}, 3: set()}  # docs/format.md §12.1
FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}  # llama_ftype
GQT = gguf.GGMLQuantizationType


@functools.lru_cache(maxsize=None)
def tensors(two_d: str, seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    return builders.llama_tensors(HP, two_d, seed=seed)


def write_parts(d: Path, fmt: str, ts, n_parts: int, *, full_range: bool = True) -> Path:
    for k, data in enumerate(builders.build_parts(fmt, HP, VOCAB, ts, n_parts, full_range=full_range)):
        (d / ("model.bin" if k == 0 else f"model.bin.{k}")).write_bytes(data)
    return d / "model.bin"


def write_ggjt(d: Path, version: int, ts, *, hp=HP, vocab=VOCAB, name="model.bin") -> Path:
    path = d / name
    path.write_bytes(builders.build_model("ggjt", version, hp, vocab, ts, full_range=True))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def expected_pieces() -> list[str]:
    """The GGUF pieces of builders.llama_vocab, by docs/format.md §15's rules written out by hand."""
    words = [t.decode().replace(" ", "\u2581") for t, _ in VOCAB[259:]]
    return ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *words]


def field(r: gguf.GGUFReader, key: str):
    return r.fields[key].contents()


def check_metadata(r: gguf.GGUFReader, *, file_type: int, quantized: bool, ctx: int = 2048, eps: float = 1e-6,
                   scores: bool = True, name: str = "model") -> None:
    assert field(r, "general.architecture") == "llama"
    assert field(r, "general.name") == name
    assert field(r, "general.file_type") == file_type
    assert field(r, "general.alignment") == 32
    assert ("general.quantization_version" in r.fields) == quantized
    if quantized:
        assert field(r, "general.quantization_version") == 2
    want = {"context_length": ctx, "embedding_length": 128, "block_count": 2, "feed_forward_length": N_FF,
            "rope.dimension_count": 64, "attention.head_count": 2, "attention.head_count_kv": 2}
    for k, v in want.items():
        assert field(r, f"llama.{k}") == v, k
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(eps, rel=1e-7)
    assert field(r, "tokenizer.ggml.model") == "llama"
    assert field(r, "tokenizer.ggml.tokens") == expected_pieces()
    want_scores = [s for _, s in VOCAB] if scores else [0.0] * len(VOCAB)
    assert field(r, "tokenizer.ggml.scores") == pytest.approx(want_scores)
    assert field(r, "tokenizer.ggml.token_type") == [2, 3, 3] + [6] * 256 + [1] * 41
    assert (field(r, "tokenizer.ggml.bos_token_id"), field(r, "tokenizer.ggml.eos_token_id"),
            field(r, "tokenizer.ggml.unknown_token_id")) == (1, 2, 0)


def out_type(kind: str, ndim: int, layout: int, lossless: bool) -> str:
    """What docs/format.md §12 says a source tensor becomes."""
    if ndim == 1 or kind in ("Q4_2", "Q4_3") or (lossless and kind in F32_SCALES[layout]):
        return "F32"
    return kind


def check_tensors(path: Path, ts, *, layout: int, lossless: bool = False, full_range: bool = True) -> gguf.GGUFReader:
    """Names, order, shapes, types and bytes by the gguf package; then the same file by ggmlfmt.load."""
    r = gguf.GGUFReader(path)
    assert [t.name for t in r.tensors] == [gguf_name(n) for n in ts]
    ours = ggmlfmt.load(path)
    for (meta, (kind, a)), t in zip(ts.items(), r.tensors):
        want_type = out_type(kind, a.ndim, layout, lossless)
        assert t.tensor_type.name == want_type, t.name
        assert [int(d) for d in t.shape] == list(reversed(a.shape)), t.name
        data = np.asarray(t.data).tobytes()
        src = builders.quantize(a, kind, layout, full_range=full_range)
        if want_type == kind and kind in ("F32", "F16"):
            assert data == src, t.name
        elif want_type == "F32":  # exact values of the source blocks (the reference dequantizer)
            assert data == builders.dequantize(src, kind, layout, a.shape).astype("<f4").tobytes(), t.name
        elif full_range or kind != "Q4_0" or layout > 1:  # the reference quantizer's GGUF blocks, byte for byte
            assert data == builders.quantize(a, kind, 3), t.name
        values = gguf.quants.dequantize(np.asarray(t.data), GQT[want_type]).reshape(a.shape)
        source_values = builders.dequantize(src, kind, layout, a.shape)
        np.testing.assert_allclose(values, source_values, rtol=0, atol=2 ** -10 * float(np.abs(a).max()))
        info = ours.info[t.name]
        assert info.shape == a.shape and info.type.name == want_type and info.offset == t.data_offset
        np.testing.assert_array_equal(ggmlfmt.dequantize(ours.tensors[t.name], info, ours.version.block_generation),
                                      values)
    return r


def file_type_of(two_d: str, layout: int, lossless: bool) -> int:
    return FILE_TYPE[out_type(two_d, 2, layout, lossless)]


# ------------------------------------------------------------------ inputs


@pytest.mark.parametrize("n_parts", [1, 2, 4])
@pytest.mark.parametrize("two_d", ["F16", "F32", "Q4_0", "Q4_1"])
def test_ggmf_parts(tmp_path, capsys, two_d, n_parts):
    ts = tensors(two_d)
    src = write_parts(tmp_path, "ggmf", ts, n_parts)
    rc, out, err = run(capsys, src, tmp_path / "out.gguf")
    assert rc == 0, err
    r = check_tensors(tmp_path / "out.gguf", ts, layout=1)
    check_metadata(r, file_type=FILE_TYPE[two_d], quantized=two_d.startswith("Q"))
    assert out == ""  # results only; logs went to stderr


def test_march_q4_0_blocks_keep_their_values(tmp_path, capsys):
    """The March-2023 Q4_0 quantizer (not full range) gives other blocks than today's: only values can be compared."""
    ts = tensors("Q4_0", 3)
    src = write_parts(tmp_path, "ggmf", ts, 2, full_range=False)
    assert run(capsys, src, tmp_path / "out.gguf")[0] == 0
    check_tensors(tmp_path / "out.gguf", ts, layout=1, full_range=False)


@pytest.mark.parametrize("n_parts", [1, 2])
def test_unversioned_ggml(tmp_path, capsys, n_parts):
    ts = tensors("Q4_0", 1)
    src = write_parts(tmp_path, "ggml", ts, n_parts)
    rc, _, err = run(capsys, src, tmp_path / "out.gguf")
    assert rc == 0, err
    r = check_tensors(tmp_path / "out.gguf", ts, layout=1)
    check_metadata(r, file_type=2, quantized=True, scores=False)
    assert "no token scores" in err


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("two_d", QUANT)
def test_single_file_ggjt(tmp_path, capsys, version, two_d):
    ts = tensors(two_d, 2)
    src = write_ggjt(tmp_path, version, ts)
    rc, _, err = run(capsys, src, tmp_path / "out.gguf")
    assert rc == 0, err
    r = check_tensors(tmp_path / "out.gguf", ts, layout=version)
    check_metadata(r, file_type=FILE_TYPE[two_d], quantized=True)


@pytest.mark.parametrize("old", ["Q4_2", "Q4_3"])
def test_ggjt_v1_q4_2_and_q4_3_become_f32(tmp_path, capsys, old):
    ts = tensors(old, 4)
    src = write_ggjt(tmp_path, 1, ts)
    rc, _, err = run(capsys, src, tmp_path / "out.gguf")
    assert rc == 0, err
    r = check_tensors(tmp_path / "out.gguf", ts, layout=1)
    check_metadata(r, file_type=0, quantized=False)
    assert f"16 {old} tensor(s) written as F32 values" in err


def test_gguf_is_the_default_and_a_bin_name_still_means_ggjt(tmp_path, capsys):
    ts = tensors("Q4_1")
    src = write_parts(tmp_path, "ggmf", ts, 2)
    assert run(capsys, src, tmp_path / "a.bin", "--format", "gguf")[0] == 0
    assert (tmp_path / "a.bin").read_bytes()[:4] == b"GGUF"
    rc, _, err = run(capsys, src, tmp_path / "b.bin")
    assert rc == 0 and (tmp_path / "b.bin").read_bytes()[:4] == b"tjgg"  # ggjt, little-endian magic
    assert sum("a .bin name without --format" in line and "--format gguf" in line for line in err.splitlines()) == 1
    rc, _, err = run(capsys, src, tmp_path / "c.bin", "--format", "ggjt")
    assert rc == 0 and "a .bin name" not in err and (tmp_path / "c.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    rc, _, err = run(capsys, src, tmp_path / "d.model")  # any other name: GGUF, the default
    assert rc == 0 and "a .bin name" not in err
    assert (tmp_path / "d.model").read_bytes() == (tmp_path / "a.bin").read_bytes()


def test_f16_norms_become_f32_and_rope_freqs_are_left_out(tmp_path, capsys):
    ts = dict(tensors("Q4_0", 11))
    norm = ts["norm.weight"][1].astype(np.float16)
    with_extra = {"rope.freqs": ("F32", np.ones(32, np.float32)), **ts, "norm.weight": ("F16", norm.astype(np.float32))}
    src = write_ggjt(tmp_path, 3, with_extra)
    rc, _, err = run(capsys, src, tmp_path / "out.gguf")
    assert rc == 0, err
    r = gguf.GGUFReader(tmp_path / "out.gguf")
    assert "rope.freqs" not in [t.name for t in r.tensors] and len(r.tensors) == len(ts)
    t = next(t for t in r.tensors if t.name == "output_norm.weight")
    assert t.tensor_type.name == "F32" and np.asarray(t.data).tobytes() == norm.astype("<f4").tobytes()


def test_scale_beyond_f16_forces_f32(tmp_path, capsys):
    ts = dict(tensors("Q8_0", 12))
    big = ts["layers.1.attention.wv.weight"][1] * np.float32(1e7)  # Q8_0's d = amax / 127 > 65504
    ts["layers.1.attention.wv.weight"] = ("Q8_0", big)
    src = write_ggjt(tmp_path, 1, ts)
    rc, _, err = run(capsys, src, tmp_path / "out.gguf")
    assert rc == 0, err
    assert "1 tensor(s) have scales beyond f16's range: written as F32 values" in err
    assert "15 tensor(s) have f32 scales that f16 rounds" in err  # the other 15 keep Q8_0, rounded
    t = next(t for t in gguf.GGUFReader(tmp_path / "out.gguf").tensors if t.name == "blk.1.attn_v.weight")
    want = builders.dequantize(builders.quantize(big, "Q8_0", 1), "Q8_0", 1, big.shape)
    assert t.tensor_type.name == "F32" and np.asarray(t.data).tobytes() == want.astype("<f4").tobytes()
    assert np.isfinite(want).all() and np.abs(want).max() > 65504


# ------------------------------------------------------------------ rounding and --lossless


def _half(x: float) -> float:
    return struct.unpack("<e", struct.pack("<e", x))[0]  # IEEE binary16, round half to even


def independent_rounding(src_bytes: bytes, kind: str, layout: int) -> tuple[int, float]:
    """(tensors whose f32 scales change in f16, largest relative change), decoding blocks with struct."""
    data = builders.parse_file(src_bytes)
    changed, worst = 0, 0.0
    fmt = {"Q4_0": "<f16x", "Q4_1": "<ff16x", "Q8_0": "<f32x"}[kind]
    for t in data["tensors"]:
        if t["type"] != builders.TYPE_CODES[kind]:
            continue
        raw = src_bytes[t["data_offset"] : t["data_offset"] + t["nbytes"]]
        rels = [abs(_half(s) - s) / abs(s) for (*scales,) in struct.iter_unpack(fmt, raw) for s in scales if s]
        if any(rels):
            changed += 1
            worst = max(worst, max(rels))
    return changed, worst


@pytest.mark.parametrize(("fmt", "version", "kind", "n_parts"),
                         [("ggmf", 1, "Q4_0", 2), ("ggmf", 1, "Q4_1", 4), ("ggjt", 1, "Q8_0", 1),
                          ("ggjt", 2, "Q4_1", 1)])
def test_rounding_line_is_independently_computed(tmp_path, capsys, fmt, version, kind, n_parts):
    ts = tensors(kind, 5)
    if fmt == "ggjt":
        src = write_ggjt(tmp_path, version, ts)
        sources = [src.read_bytes()]
    else:
        src = write_parts(tmp_path, fmt, ts, n_parts)
        sources = [Path(f"{src}.{k}" if k else src).read_bytes() for k in range(n_parts)]
    per_part = [independent_rounding(b, kind, version) for b in sources]
    n, worst = max(c for c, _ in per_part), max(w for _, w in per_part)
    rc, _, err = run(capsys, src, tmp_path / "out.gguf")
    assert rc == 0, err
    want = (f"{n} tensor(s) have f32 scales that f16 rounds, largest relative change {worst:.3g}; "
            "--lossless writes those tensors as F32 instead")
    assert n == 16 and [line for line in err.splitlines() if "f16 rounds" in line] == [f"migrate-old-weights: {want}"]


@pytest.mark.parametrize(("fmt", "version", "kind", "n_parts"),
                         [("ggmf", 1, "Q4_1", 4), ("ggmf", 1, "Q4_0", 1), ("ggjt", 1, "Q4_0", 1),
                          ("ggjt", 2, "Q8_0", 1)])
def test_lossless_writes_rounding_tensors_as_exact_f32(tmp_path, capsys, fmt, version, kind, n_parts):
    ts = tensors(kind, 6)
    src = write_ggjt(tmp_path, version, ts) if fmt == "ggjt" else write_parts(tmp_path, fmt, ts, n_parts)
    rc, _, err = run(capsys, src, tmp_path / "out.gguf", "--lossless")
    assert rc == 0, err
    r = check_tensors(tmp_path / "out.gguf", ts, layout=version, lossless=True)
    check_metadata(r, file_type=0, quantized=False)
    assert "--lossless: 16 tensor(s)" in err and "f16 rounds" not in err


@pytest.mark.parametrize(("version", "kind"), [(3, "Q4_0"), (3, "Q8_0"), (2, "Q5_0"), (2, "Q5_1"), (1, "Q5_1")])
def test_nothing_rounds_without_f32_scales(tmp_path, capsys, version, kind):
    ts = tensors(kind, 7)
    src = write_ggjt(tmp_path, version, ts)
    rc, out, err = run(capsys, src, tmp_path / "out.gguf", "--lossless")  # lossless changes nothing here
    assert rc == 0, err
    check_tensors(tmp_path / "out.gguf", ts, layout=version)
    assert "f16 rounds" not in err and "--lossless:" not in err and "as F32" not in err


@pytest.mark.parametrize(("version", "kind"), [(3, "Q4_1"), (2, "Q5_0"), (3, "Q8_0")])
def test_unchanged_blocks_move_in_the_kernel(tmp_path, capsys, monkeypatch, version, kind):
    """ggjt v3 and v2 Q5_* blocks are GGUF blocks: every tensor goes through copy_file_range, unchanged."""
    calls = []
    real = ggmlfmt.writer.copy_range

    def counting(src_fd, src_offset, dst_fd, dst_offset, nbytes):
        calls.append(nbytes)
        return real(src_fd, src_offset, dst_fd, dst_offset, nbytes)

    monkeypatch.setattr(ggmlfmt.writer, "copy_range", counting)
    ts = tensors(kind, 8)
    src = write_ggjt(tmp_path, version, ts)
    assert run(capsys, src, tmp_path / "out.gguf")[0] == 0
    source = {t["name"]: t for t in builders.parse_file(src.read_bytes())["tensors"]}
    raw = src.read_bytes()
    r = gguf.GGUFReader(tmp_path / "out.gguf")
    assert len(calls) == len(ts) and sum(calls) == sum(int(t.n_bytes) for t in r.tensors)
    for meta, t in zip(ts, r.tensors):
        s = source[meta]
        assert np.asarray(t.data).tobytes() == raw[s["data_offset"] : s["data_offset"] + s["nbytes"]]


# ------------------------------------------------------------------ hyper-parameters, vocabulary, dry run


def test_ctx_and_eps_overrides_and_default_lines(tmp_path, capsys):
    src = write_ggjt(tmp_path, 3, tensors("Q4_0"))
    rc, _, err = run(capsys, src, tmp_path / "a.gguf")
    assert rc == 0
    lines = err.splitlines()
    assert sum("context_length" in x and "2048" in x and "--ctx" in x for x in lines) == 1
    assert sum("epsilon" in x and "1e-06" in x and "--eps" in x for x in lines) == 1
    rc, _, err = run(capsys, src, tmp_path / "b.gguf", "--ctx", "4096", "--eps", "1e-5")
    assert rc == 0 and "--ctx" not in err and "--eps" not in err
    check_metadata(gguf.GGUFReader(tmp_path / "b.gguf"), file_type=2, quantized=True, ctx=4096, eps=1e-5)


HP_SP = {**HP, "n_vocab": 320}  # sentencepiece's trainer needs room for the demo corpus' characters


def _old_texts(tokenizer: Path) -> list[tuple[bytes, float]]:
    """What the 2023 converter stored for each piece (docs/format.md §3), decided with sentencepiece directly."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    out = []
    for i in range(sp.vocab_size()):
        p = sp.id_to_piece(i)
        text = (" \u2047 ".encode() if sp.is_unknown(i) else b"" if sp.is_control(i)
                else bytes([int(p[3:5], 16)]) if sp.is_byte(i) else p.replace("\u2581", " ").encode())
        out.append((text, sp.get_score(i)))
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    from meta import train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(path, HP_SP["n_vocab"])
    return path


def test_vocab_from_tokenizer_model(tmp_path, capsys, tokenizer):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    ts = builders.llama_tensors(HP_SP, "Q8_0")
    src = write_ggjt(tmp_path, 2, ts, hp=HP_SP, vocab=_old_texts(tokenizer))
    rc, _, err = run(capsys, src, tmp_path / "out.gguf", "--vocab", tokenizer)
    assert rc == 0, err
    r = gguf.GGUFReader(tmp_path / "out.gguf")
    ids = range(sp.vocab_size())
    assert field(r, "tokenizer.ggml.tokens") == [sp.id_to_piece(i) for i in ids]
    assert field(r, "tokenizer.ggml.scores") == pytest.approx([sp.get_score(i) for i in ids])
    kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in ids]
    assert field(r, "tokenizer.ggml.token_type") == kinds
    assert field(r, "tokenizer.ggml.bos_token_id") == sp.bos_id()


@pytest.mark.parametrize("change", ["text", "score"])
def test_vocab_mismatch_is_refused(tmp_path, capsys, tokenizer, change):
    texts = _old_texts(tokenizer)
    t, s = texts[313]
    texts[313] = (t + b"x", s) if change == "text" else (t, s + 0.5)
    src = write_ggjt(tmp_path, 2, builders.llama_tensors(HP_SP, "Q8_0"), hp=HP_SP, vocab=texts)
    rc, out, err = run(capsys, src, tmp_path / "out.gguf", "--vocab", tokenizer)
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert "tokenizer.model: token 313:" in err and f"{change} " in err
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]


def test_dry_run_shows_the_gguf_plan(tmp_path, capsys):
    ts = tensors("Q4_1", 9)
    src = write_parts(tmp_path, "ggmf", ts, 2)
    rc, out, err = run(capsys, src, tmp_path / "out.gguf", "--dry-run")
    assert rc == 0 and not (tmp_path / "out.gguf").exists()
    assert run(capsys, src, tmp_path / "out.gguf")[0] == 0
    r = gguf.GGUFReader(tmp_path / "out.gguf")
    for meta, t in zip(ts, r.tensors):
        kind = ts[meta][0]
        row = next(line.split() for line in out.splitlines() if line.startswith(t.name + " "))
        assert row[1] == f"{kind}->{out_type(kind, ts[meta][1].ndim, 1, False)}"
        assert int(row[-2].replace(",", "")) == t.data_offset and int(row[-1].replace(",", "")) == t.n_bytes
    assert "scales  16 tensor(s) have f32 scales that f16 rounds" in out


def test_dry_run_json_is_the_plan_of_the_file_written(tmp_path, capsys):
    import json

    from gguf_check import meta_name

    ts = dict(tensors("Q4_0", 10))
    ts = {"rope.freqs": ("F32", np.ones(32, np.float32)), **ts}
    src = write_ggjt(tmp_path, 1, ts)
    plans = {}
    for extra in ([], ["--lossless"]):
        rc, out, _ = run(capsys, src, tmp_path / "out.gguf", "--dry-run", "--json", *extra)
        assert rc == 0
        plans[bool(extra)] = json.loads(out)
    rc, _, err = run(capsys, src, tmp_path / "out.gguf")
    assert rc == 0
    plan, r = plans[False], gguf.GGUFReader(tmp_path / "out.gguf")
    written = [(t.name, t.shape.tolist(), t.tensor_type.name, int(t.data_offset), int(t.n_bytes)) for t in r.tensors]
    assert [(t["name"], t["ne"], t["type"], t["offset"], t["nbytes"]) for t in plan["tensors"]] == written
    lossless = plans[True]["tensors"]  # control: another job's plan is not this file's
    assert [(t["name"], t["ne"], t["type"], t["offset"], t["nbytes"]) for t in lossless] != written
    assert [t["checkpoint_name"] for t in plan["tensors"]] == [meta_name(t.name) for t in r.tensors]
    assert plan["format"] == "gguf v3" and plan["file_size"] == (tmp_path / "out.gguf").stat().st_size
    assert plan["skipped"] == ["rope.freqs"] and plan["llama"]["n_ff"] == N_FF
    said = [line.removeprefix("migrate-old-weights: ") for line in err.splitlines()]
    assert plan["notes"] == [line for line in said if not line.startswith("wrote ")] and len(plan["notes"]) >= 4


def test_describe_renders_every_column_from_the_job_written(tmp_path):
    """Each of describe's columns (convert uses other ones than migrate) against the file the job writes."""
    from dataclasses import replace

    from gguf_check import meta_name

    from ggmlfmt.job import COLUMNS, describe, write
    from migrate import plan_migration

    ts = tensors("Q4_1", 13)
    src = write_parts(tmp_path, "ggmf", ts, 2)
    job = plan_migration(src, tmp_path / "out.gguf", fmt="gguf")
    text = describe(replace(job, columns=tuple(COLUMNS)))
    write(job)
    r = gguf.GGUFReader(tmp_path / "out.gguf")
    words = {0: "rows", 1: "columns", None: "none"}
    for t in r.tensors:
        kind, a = ts[meta_name(t.name)]
        axis = builders.split_axis(meta_name(t.name), a.ndim)
        row = next(line.split() for line in text.splitlines() if line.startswith(t.name + " "))
        ne = [int(d) for d in t.shape]
        assert row == [t.name, t.tensor_type.name, f"{kind}->{t.tensor_type.name}", "x".join(map(str, a.shape)),
                       "x".join(map(str, ne)), words[axis], "-" if axis is None else str(axis), meta_name(t.name),
                       f"{t.data_offset:,}", f"{t.n_bytes:,}"]
        if a.ndim == 2 and a.shape[0] != a.shape[1]:  # control: PyTorch shape and ggml ne are different columns
            assert row[3] != row[4]


# ------------------------------------------------------------------ refusals


def _refused(tmp_path: Path, capsys, argv, match: str, dst: str = "out.gguf") -> None:
    before = sorted(os.listdir(tmp_path))
    rc, out, err = run(capsys, *argv, tmp_path / dst) if argv else (None, "", "")
    assert rc == 1 and out == "", err
    assert err.count("\n") == 1 and err.startswith("migrate-old-weights: error: ") and match in err, err
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary file


def test_refusals(tmp_path, capsys):
    ts = tensors("Q4_0")
    src = write_ggjt(tmp_path, 3, ts)
    (tmp_path / "model.bin.1").write_bytes(b"")
    _refused(tmp_path, capsys, [src], "model.bin.1 exists beside it")
    (tmp_path / "model.bin.1").unlink()
    _refused(tmp_path, capsys, [src, "--format", "ggjt"], "a .gguf output name with --format ggjt")
    _refused(tmp_path, capsys, [src, "--lossless"], "--lossless: only with --format gguf", dst="out.bin")
    _refused(tmp_path, capsys, [src], "already ggjt v3", dst="out.bin")
    (tmp_path / "not.model").write_bytes(b"\x00" * 40)
    _refused(tmp_path, capsys, [src, "--vocab", tmp_path / "not.model"], "not a SentencePiece model")
    _refused(tmp_path, capsys, [src, "--ctx", "0"], "context_length")
    _refused(tmp_path, capsys, [src, "--eps", "-1"], "rms_eps")


@pytest.mark.parametrize("option", [{"ctx": 0}, {"ctx": 1 << 32}, {"eps": -1.0}, {"eps": float("nan")}])
def test_bad_overrides_are_the_request_not_the_file(tmp_path, option):
    from ggmlfmt.errors import BadOption
    from migrate.migrate import plan_migration
    src = write_ggjt(tmp_path, 3, tensors("Q4_0"))
    with pytest.raises(BadOption, match="--ctx" if "ctx" in option else "--eps") as e:
        plan_migration(src, tmp_path / "out.gguf", fmt="gguf", **option)
    assert not isinstance(e.value, ggmlfmt.FormatError) and str(src) not in str(e.value)
    good = {"ctx": 4096} if "ctx" in option else {"eps": 1e-5}  # control: a value in range plans
    assert plan_migration(src, tmp_path / "out.gguf", fmt="gguf", **good).plan.tensors


def test_refuses_what_gguf_cannot_describe(tmp_path, capsys):
    ts = dict(tensors("Q8_0"))
    write_ggjt(tmp_path, 3, ts, hp={**HP, "n_rot": 32}, name="rot.bin")
    _refused(tmp_path, capsys, [tmp_path / "rot.bin"], "n_rot 32 is not the head size 64")
    ts["extra.weight"] = ("F32", np.zeros(128, np.float32))
    write_ggjt(tmp_path, 3, ts, name="extra.bin")
    _refused(tmp_path, capsys, [tmp_path / "extra.bin"], "'extra.weight'")
    data = (tmp_path / "extra.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) - 100])
    _refused(tmp_path, capsys, [tmp_path / "cut.bin"], "cut.bin")


# ------------------------------------------------------------------ numpy alone

def test_runs_without_torch_sentencepiece_or_gguf(tmp_path, capsys):
    src = write_parts(tmp_path, "ggmf", tensors("Q4_1"), 2)
    assert run(capsys, src, tmp_path / "reference.gguf")[0] == 0
    proc = run_with_unimportable("torch,sentencepiece,gguf,tqdm,convert", "migrate",
                                 [str(src), str(tmp_path / "out.gguf")], timeout=120)
    out = proc.stdout.strip()
    assert proc.returncode == 0 and out.startswith("rc=0 ") and out.endswith(" loaded=[]"), out + proc.stderr
    assert (tmp_path / "out.gguf").read_bytes() == (tmp_path / "reference.gguf").read_bytes()
    (tmp_path / "tokenizer.model").write_bytes(b"")
    proc = run_with_unimportable("sentencepiece", "migrate", [str(src), str(tmp_path / "v.gguf"),
                                                             "--vocab", str(tmp_path / "tokenizer.model")], timeout=120)
    assert proc.stdout.startswith("rc=1 ") and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    assert "needs the sentencepiece package" in proc.stderr and not (tmp_path / "v.gguf").exists()
