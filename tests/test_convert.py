"""convert-model against torch.cat of the shards, an independent parser, and a restatement of the 2023 converter."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import convert.convert as conv
from builders import llama_hparams, llama_shapes, parse_file, split_axis
from convert import convert_checkpoint, plan_conversion
from convert.cli import main
from ggmlfmt.llama.spm import UNKNOWN_TEXT, load_vocab, piece_text
from ggmlfmt import FormatError, load
from ggmlfmt.errors import IncompleteWrite
from meta import VOCAB_SIZE, build, load_shards, reference_file, vocab_entries, write_demo_example

SHARDS = [1, 2, 4, 8]


def expected_tensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    """torch.cat of every tensor over the shards along its Meta axis (1-D: shard 0's copy), rope.freqs dropped."""
    shards = load_shards(paths)
    out = {}
    for name, t in shards[0].items():
        if name == "rope.freqs":
            continue
        axis = split_axis(name, t.dim()) if len(shards) > 1 else None
        out[name] = t if axis is None else torch.cat([s[name] for s in shards], dim=axis)
    return out


@pytest.mark.parametrize(("dim", "multiple_of", "n_heads", "n_layers"),
                         [(64, 32, 4, 2), (96, 256, 2, 1), (128, 48, 8, 3)])
def test_checkpoints_have_the_llama_shapes_of_the_spec(tmp_path: Path, dim: int, multiple_of: int, n_heads: int,
                                                       n_layers: int) -> None:
    """The checkpoints every test converts (made by convert.demo, which shares convert's shape table) have the
    shapes builders restates from docs/format.md: a shape bug in convert would otherwise go unseen."""
    ck = build(tmp_path, 1, dim=dim, multiple_of=multiple_of, n_heads=n_heads, n_layers=n_layers)
    want = llama_shapes(llama_hparams(VOCAB_SIZE, dim, multiple_of, n_heads, n_layers, 1))
    assert [(n, a.shape) for n, a in ck.full.items() if n != "rope.freqs"] == list(want.items())
    assert ck.full["rope.freqs"].shape == (dim // n_heads // 2,)


@pytest.mark.parametrize("n_shards", SHARDS)
def test_every_tensor_equals_torch_cat_of_the_shards(tmp_path: Path, n_shards: int) -> None:
    ck = build(tmp_path, n_shards)
    cp = convert_checkpoint(ck.model_dir, fmt="ggjt")
    assert cp.outfile == ck.model_dir / "ggml-model-f16.bin"
    want = expected_tensors(ck.paths)
    with load(cp.outfile) as model:
        assert list(model.tensors) == list(want)  # checkpoint key order, rope.freqs skipped
        for name, t in want.items():
            got = model.tensors[name]
            assert got.dtype == (np.float32 if t.dim() == 1 else np.float16), name
            np.testing.assert_array_equal(got, t.numpy().astype(got.dtype), err_msg=name)


@pytest.mark.parametrize("n_shards", SHARDS)
@pytest.mark.parametrize("outtype, ftype", [("f16", 1), ("f32", 0)])
def test_bytes_equal_the_2023_algorithm(tmp_path: Path, n_shards: int, outtype: str, ftype: int) -> None:
    ck = build(tmp_path, n_shards)
    cp = convert_checkpoint(ck.model_dir, fmt="ggjt", outtype=outtype)
    assert cp.outfile.name == f"ggml-model-{outtype}.bin"
    assert cp.outfile.read_bytes() == reference_file(ck.tokenizer, ck.params, ck.paths, ftype)


def test_small_chunks_give_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ck = build(tmp_path, 2)
    monkeypatch.setattr(conv, "CHUNK_BYTES", 100)  # several chunks per tensor, ragged last chunk
    cp = convert_checkpoint(ck.model_dir, fmt="ggjt", outtype="f32")
    assert cp.outfile.read_bytes() == reference_file(ck.tokenizer, ck.params, ck.paths, 0)


def test_header_vocab_and_records_by_independent_parser(tmp_path: Path) -> None:
    ck = build(tmp_path, 4)
    cp = convert_checkpoint(ck.model_dir, fmt="ggjt")
    parsed = parse_file(cp.outfile.read_bytes())
    assert (parsed["magic"], parsed["version"]) == ("ggjt", 1)
    assert parsed["hparams"] == {"n_vocab": VOCAB_SIZE, "n_embd": 64, "n_mult": 32, "n_head": 4, "n_layer": 2,
                                 "n_rot": 16, "ftype": 1}
    assert parsed["vocab"] == vocab_entries(ck.tokenizer)
    texts = [t for t, _ in parsed["vocab"]]
    assert texts[0] == b" \xe2\x81\x87 " and texts[1] == texts[2] == b""  # <unk>, <s>, </s>
    assert texts[texts.index(b"\n")] == b"\n" and b"<0x0A>" not in texts  # byte pieces are raw bytes
    names = [t["name"] for t in parsed["tensors"]]
    assert names == [n for n in ck.shards[0] if n != "rope.freqs"]
    end = None
    for t in parsed["tensors"]:
        assert t["data_offset"] % 32 == 0
        assert end is None or t["record_offset"] == end  # records back to back, no gap
        end = t["data_offset"] + t["nbytes"]
        full = ck.full[t["name"]]
        assert t["ne"] == tuple(reversed(full.shape))
        assert t["type"] == (0 if full.ndim == 1 else 1)
    assert end == cp.outfile.stat().st_size


def test_vocab_rules() -> None:
    kw = {"path": "tok.model", "token_id": 7}
    assert piece_text("<unk>", unknown=True, control=False, byte=False, **kw) == UNKNOWN_TEXT == b" \xe2\x81\x87 "
    assert piece_text("<s>", unknown=False, control=True, byte=False, **kw) == b""
    assert piece_text("<0x0A>", unknown=False, control=False, byte=True, **kw) == b"\n"
    assert piece_text("<0xff>", unknown=False, control=False, byte=True, **kw) == b"\xff"
    assert piece_text("\u2581h\u00e9\u2581", unknown=False, control=False, byte=False, **kw) == " hé ".encode()
    with pytest.raises(FormatError, match=r"tok\.model: token 7: byte piece '<0x0AB>'"):
        piece_text("<0x0AB>", unknown=False, control=False, byte=True, **kw)


def test_not_a_tokenizer_is_a_format_error(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(FormatError, match="tokenizer.model: not a SentencePiece model"):
        load_vocab(bad)


def test_tokenizer_in_model_dir_wins_then_parent_then_vocab_flag(tmp_path: Path) -> None:
    ck = build(tmp_path, 1)
    assert plan_conversion(ck.model_dir).vocab_path == ck.tokenizer  # parent (Meta's layout)
    local = ck.model_dir / "tokenizer.model"
    local.write_bytes(ck.tokenizer.read_bytes())
    assert plan_conversion(ck.model_dir).vocab_path == local
    other = tmp_path / "elsewhere.model"
    other.write_bytes(ck.tokenizer.read_bytes())
    assert plan_conversion(ck.model_dir, tokenizer=other).vocab_path == other
    local.unlink()
    ck.tokenizer.unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
        plan_conversion(ck.model_dir)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_other_checkpoint_dtypes_are_cast_explicitly(tmp_path: Path, dtype: str) -> None:
    ck = build(tmp_path, 2, dtype=dtype)
    cp = convert_checkpoint(ck.model_dir, fmt="ggjt")
    with load(cp.outfile) as model:
        for name, t in expected_tensors(ck.paths).items():
            want = t.float() if t.dim() == 1 else t.to(torch.float16)
            np.testing.assert_array_equal(model.tensors[name], want.numpy(), err_msg=name)


def test_a_shard_missing_from_the_writes_is_an_error_not_a_hole(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ck = build(tmp_path, 2)
    real = conv._sources
    monkeypatch.setattr(conv, "_sources", lambda *a: (s for s in real(*a) if s.info.name != "tok_embeddings.weight"))
    with pytest.raises(IncompleteWrite, match="tok_embeddings.weight.*no bytes written"):
        convert_checkpoint(ck.model_dir, fmt="ggjt")
    assert sorted(p.name for p in ck.model_dir.iterdir()) == ["consolidated.00.pth", "consolidated.01.pth",
                                                              "params.json"]


def test_each_shard_is_parsed_once_and_the_output_checked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import convert.shards
    from convert.pth import open_checkpoint

    ck = build(tmp_path, 4)
    opened: list[Path] = []
    checked: list[Path] = []
    real_check = conv.refuse_existing
    monkeypatch.setattr(convert.shards, "open_checkpoint", lambda p: opened.append(Path(p)) or open_checkpoint(p))
    monkeypatch.setattr(conv, "refuse_existing", lambda out, **kw: checked.append(Path(out)) or real_check(out, **kw))
    cp = plan_conversion(ck.model_dir, fmt="gguf", overwrite=False)
    assert sorted(opened) == sorted(ck.paths) and checked == [ck.model_dir / "ggml-model-f16.gguf"]
    conv.write_conversion(cp)  # maps each shard at the planned offsets: no second parse
    assert sorted(opened) == sorted(ck.paths) and len(checked) == 1
    gguf_names = {e.name: e.info.name for e in cp.entries}
    with load(cp.outfile) as model:  # and what it wrote is the checkpoint
        for name, t in expected_tensors(ck.paths).items():
            np.testing.assert_array_equal(model.tensors[gguf_names[name]].astype(np.float32), t.float().numpy(),
                                          err_msg=name)


def test_a_shard_changed_after_planning_is_refused(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    conv.write_conversion(plan_conversion(ck.model_dir, tmp_path / "control.bin", fmt="ggjt"))  # unchanged: written
    cp = plan_conversion(ck.model_dir, tmp_path / "out.bin", fmt="ggjt")
    st = ck.paths[1].stat()
    os.utime(ck.paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, touched since planning
    with pytest.raises(FormatError, match=r"consolidated\.01\.pth: changed since it was checked"):
        conv.write_conversion(cp)
    assert (tmp_path / "control.bin").exists() and not (tmp_path / "out.bin").exists()


# ------------------------------------------------------------------ the command


def test_cli_converts_and_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 2)
    out = tmp_path / "out.bin"
    assert main([str(ck.model_dir), "--format", "ggjt", "--outfile", str(out), "--quiet"]) == 0
    first = out.read_bytes()
    capsys.readouterr()
    out.write_bytes(b"keep me")
    assert main([str(ck.model_dir), "--format", "ggjt", "--outfile", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out.bin: output exists (use --force" in err
    assert out.read_bytes() == b"keep me"
    assert main([str(ck.model_dir), "--format", "ggjt", "--outfile", str(out), "--force", "--quiet"]) == 0
    assert out.read_bytes() == first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_progress_bar_and_rusage_go_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 2)
    assert main([str(ck.model_dir), "--format", "ggjt", "--rusage"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout carries results only; a conversion has none
    assert "B/s" in captured.err or "it/s" in captured.err  # tqdm's rate
    assert "wrote" in captured.err and "rusage: peak RSS" in captured.err
    assert main([str(ck.model_dir), "--format", "ggjt", "--force", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_cli_refuses_to_replace_an_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 2)
    before = ck.paths[1].read_bytes()
    assert main([str(ck.model_dir), "--format", "ggjt", "--outfile", str(ck.paths[1]), "--force"]) == 1
    assert "would replace an input" in capsys.readouterr().err
    assert ck.paths[1].read_bytes() == before


def _listing(d: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*"))


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 2)
    before = _listing(tmp_path)
    assert main([str(ck.model_dir), "--format", "ggjt", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _listing(tmp_path) == before
    assert "tok_embeddings.weight" in out and "rope.freqs" in out.splitlines()[-1]
    row = next(line for line in out.splitlines() if line.startswith("layers.1.feed_forward.w2.weight"))
    assert row.split()[1:4] == ["64x192", "F16", "1"]
    assert main([str(ck.model_dir), "--format", "ggjt", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert _listing(tmp_path) == before
    assert plan["file_size"] == plan_conversion(ck.model_dir, fmt="ggjt").plan.size
    by_name = {t["name"]: t for t in plan["tensors"]}
    assert by_name["output.weight"]["split_axis"] == 0 and by_name["norm.weight"]["split_axis"] is None
    assert all(t["offset"] % 32 == 0 for t in plan["tensors"])


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("convert-model: error: ") and err.count("\n") == 1 and "nope" in err
    with pytest.raises(NotADirectoryError):
        main([str(tmp_path / "nope"), "--debug"])


def test_demo_builds_converts_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--demo", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "format  gguf v3" in out and "21/21 tensors equal torch.cat of the 2 shards" in out
    assert "peak RSS" in out and "vocab   320 tokens" in out
    assert main(["--demo", str(tmp_path / "demo"), "--quiet"]) == 1  # not empty: needs --force
    assert "not empty" in capsys.readouterr().err
    assert main(["--demo", str(tmp_path / "demo"), "--quiet", "--force"]) == 0


def test_demo_example_is_what_the_fixture_makes(tmp_path: Path) -> None:
    """convert/example/ (shipped, copied by the demo) equals write_demo_example's output: shards and params.json
    byte for byte; the tokenizer piece for piece (its proto may carry the trainer's version); the control: a
    retrained tokenizer of another size, and the shards of another seed, differ."""
    from importlib import resources

    import sentencepiece

    from convert.demo import EXAMPLE

    write_demo_example(tmp_path / "made")
    shipped = resources.files("convert").joinpath("example")
    assert sorted(str(p.relative_to(tmp_path / "made")) for p in (tmp_path / "made").rglob("*") if p.is_file()) \
        == sorted(EXAMPLE)

    def pieces(proto: bytes) -> list[tuple[str, float, bool, bool, bool]]:
        sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
        return [(sp.id_to_piece(i), sp.get_score(i), sp.is_control(i), sp.is_byte(i), sp.is_unknown(i))
                for i in range(sp.vocab_size())]

    for name in EXAMPLE:
        made, ours = (tmp_path / "made" / name).read_bytes(), shipped.joinpath(*name.split("/")).read_bytes()
        if name.endswith(".model"):
            assert pieces(ours) == pieces(made) and len(pieces(ours)) == VOCAB_SIZE
        else:
            assert ours == made, name
    from meta import DemoConfig, build_checkpoint

    other = build_checkpoint(tmp_path / "other", DemoConfig(seed=1, vocab_size=328))
    assert (other / "consolidated.00.pth").read_bytes() != shipped.joinpath("tiny", "consolidated.00.pth").read_bytes()
    assert pieces((other.parent / "tokenizer.model").read_bytes()) != pieces(shipped.joinpath("tokenizer.model")
                                                                           .read_bytes())


def test_demo_and_model_dir_are_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--demo"])
    with pytest.raises(SystemExit):
        main([])


def test_reference_restatement_matches_section_12_layout() -> None:
    """Sanity of the test's own reference: the record arithmetic of docs/format.md §4.6 (tok_embeddings at 65, data 128)."""
    from meta import _write_record

    buf = io.BytesIO(bytes(65))
    buf.seek(65)
    _write_record(buf, "tok_embeddings.weight", torch.zeros(3, 64, dtype=torch.float16), 0, 1, 1)
    data = buf.getvalue()
    assert struct.unpack_from("<5i", data, 65) == (2, 21, 1, 64, 3) and data[85:106] == b"tok_embeddings.weight"
    assert data[106:128] == bytes(22) and len(data) == 128 + 384
