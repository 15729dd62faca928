"""migrate-old-weights against the independent builders: tensors, bytes, structure, and every refusal."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import builders
from ggmlfmt import FormatError, load
from ggmlfmt.errors import BadLayout, BadMagic, BadValue, CannotWrite
from migrate import AlreadyMigrated, migrate_file, plan_migration
from migrate.cli import main

# n_ff = 384 for dim 128 / n_mult 64: every column-split shard (128/4, 384/4) is whole 32-element blocks
HP = builders.llama_hparams(n_vocab=300, dim=128, n_mult=64, n_head=2, n_layer=2, ftype=1)
VOCAB = builders.llama_vocab(300)
MIXES = ("F32", "F16", "Q4_0", "Q4_1", "mixed")
FTYPE_OF = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "mixed": 1}
_CYCLE = ("F32", "F16", "Q4_0", "Q4_1")


@functools.lru_cache(maxsize=None)
def full_tensors(mix: str, seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    """PyTorch-shaped tensors of a toy LLaMA; 2-D ones are `mix`, or cycle through all four old types."""
    tensors = builders.llama_tensors(HP, "F16", seed=seed)
    two_d = [n for n, (_, a) in tensors.items() if a.ndim == 2]
    for i, name in enumerate(two_d):
        tensors[name] = (_CYCLE[i % 4] if mix == "mixed" else mix, tensors[name][1])
    return tensors


def hparams(mix: str) -> dict[str, int]:
    return {**HP, "ftype": FTYPE_OF[mix]}


def vocab_for(fmt: str) -> list[tuple[bytes, float | None]]:
    return [(t, None) for t, _ in VOCAB] if fmt == "ggml" else VOCAB


@functools.lru_cache(maxsize=None)
def part_bytes(fmt: str, mix: str, n_parts: int) -> tuple[bytes, ...]:
    return tuple(builders.build_parts(fmt, hparams(mix), vocab_for(fmt), full_tensors(mix), n_parts))


def write_parts(directory: Path, parts: tuple[bytes, ...] | list[bytes], name: str = "model.bin") -> Path:
    """Write part k as name, name.1, name.2, ...; return the first part's path."""
    for k, data in enumerate(parts):
        (directory / (name if k == 0 else f"{name}.{k}")).write_bytes(data)
    return directory / name


def expected_file(fmt: str, mix: str) -> bytes:
    """The ggjt v1 file docs/format.md §9 prescribes, written by the builders from the full (unsharded) tensors."""
    vocab = [(t, 0.0) for t, _ in VOCAB] if fmt == "ggml" else VOCAB  # ggml has no scores: 0.0 is written
    return builders.build_model("ggjt", 1, hparams(mix), vocab, full_tensors(mix))


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def replace_record(part: bytes, fmt: str, edit) -> bytes:
    """Rebuild a part with its list of (name, type, ne, data) records passed through `edit`."""
    parsed = builders.parse_file(part)
    records = [(t["name"], t["type"], t["ne"], part[t["data_offset"] : t["data_offset"] + t["nbytes"]])
               for t in parsed["tensors"]]
    return builders.build_file(fmt, parsed["version"], parsed["hparams"], parsed["vocab"], edit(records),
                               validate=False)


# ------------------------------------------------------------------------------------------- what is written


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("n_parts", [1, 2, 4])
@pytest.mark.parametrize("fmt", ["ggmf", "ggml"])
def test_output_is_the_file_section8_prescribes(tmp_path, fmt, n_parts, mix):
    src = write_parts(tmp_path, part_bytes(fmt, mix, n_parts))
    migrate_file(src, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == expected_file(fmt, mix)


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("n_parts", [1, 2, 4])
def test_structure_and_tensors_match_the_unsharded_arrays(tmp_path, n_parts, mix):
    src = write_parts(tmp_path, part_bytes("ggmf", mix, n_parts))
    migrate_file(src, tmp_path / "out.bin")
    data = (tmp_path / "out.bin").read_bytes()
    parsed = builders.parse_file(data)  # also checks that every padding byte is zero
    assert (parsed["magic"], parsed["version"], parsed["hparams"]) == ("ggjt", 1, hparams(mix))
    assert parsed["vocab"] == [(t, np.float32(s)) for t, s in VOCAB]
    assert [t["name"] for t in parsed["tensors"]] == builders.llama_tensor_names(HP["n_layer"])
    full = full_tensors(mix)
    for t in parsed["tensors"]:
        kind, array = full[t["name"]]
        assert builders.TYPE_NAMES[t["type"]] == kind
        assert t["ne"] == tuple(reversed(array.shape))
        assert t["data_offset"] % 32 == 0
        raw = data[t["data_offset"] : t["data_offset"] + t["nbytes"]]
        assert raw == builders.quantize(array, kind, 1)  # blocks equal quantizing the whole tensor
        values = builders.tensor_array(data, t, 1)
        if kind in ("F32", "F16"):
            np.testing.assert_array_equal(values, array)
        else:  # 4-bit: within half a step of the block's scale, which is at most max|x| / 7
            np.testing.assert_allclose(values, array, rtol=0, atol=float(np.abs(array).max()) / 7)
    assert len(data) == parsed["tensors"][-1]["data_offset"] + parsed["tensors"][-1]["nbytes"]


def test_ggml_input_gets_score_zero_and_a_warning(tmp_path, caplog):
    src = write_parts(tmp_path, part_bytes("ggml", "Q4_0", 2))
    with caplog.at_level(logging.WARNING):
        migrate_file(src, tmp_path / "out.bin")
    assert "no token scores" in caplog.text and "model.bin" in caplog.text
    model = load(tmp_path / "out.bin")
    assert model.format == "ggjt" and model.version.number == 1
    assert model.vocab.tokens == tuple(t for t, _ in VOCAB)
    assert not model.vocab.scores.any()


def test_section12_worked_example(tmp_path):
    hp, vocab, tensors = builders.section12_model()
    src = tmp_path / "m.bin"
    src.write_bytes(builders.build_file("ggmf", 1, hp, vocab, tensors))
    assert src.stat().st_size == 1190  # the ggmf sizes docs/format.md §4.6 states
    migrate_file(src, tmp_path / "out.bin")
    out = (tmp_path / "out.bin").read_bytes()
    assert len(out) == 1248
    assert out[:128] == bytes.fromhex(
        "746a6767 01000000 03000000 40000000 20000000 02000000 01000000 20000000"
        "01000000 05000000 20e28187 20000000 00000000 00000000 00000000 00000000"
        "00020000 00150000 00010000 00400000 00030000 00746f6b 5f656d62 65646469"
        "6e67732e 77656967 68740000 00000000 00000000 00000000 00000000 00000000")
    assert out[0x200:0x220] == bytes.fromhex("01000000 0b000000 00000000 40000000 6e6f726d 2e776569 67687400 00000000")
    assert out[128:512] == tensors[0][3] and out[544:800] == tensors[1][3] and out[864:1248] == tensors[2][3]


@pytest.mark.parametrize("chunk", [1, 64, 100, 1000, 1 << 20])
def test_chunk_size_changes_nothing(tmp_path, chunk):
    # chunk < a full row sends column splits through the per-row hole-filling path; 1 byte is the extreme
    src = write_parts(tmp_path, part_bytes("ggmf", "mixed", 4))
    migrate_file(src, tmp_path / "out.bin", chunk_bytes=chunk)
    assert (tmp_path / "out.bin").read_bytes() == expected_file("ggmf", "mixed")


def test_progress_reports_every_data_byte(tmp_path):
    src = write_parts(tmp_path, part_bytes("ggmf", "mixed", 2))
    seen: list[int] = []
    layout = migrate_file(src, tmp_path / "out.bin", progress=seen.append, chunk_bytes=4096)
    assert sum(seen) == layout.data_bytes and len(seen) > 1


def test_single_file_without_tok_embeddings_is_one_part(tmp_path):
    tensors = [("norm.weight", 0, (128,), np.ones(128, "<f4").tobytes())]
    src = tmp_path / "m.bin"
    src.write_bytes(builders.build_file("ggmf", 1, HP, VOCAB, tensors))
    migrate_file(src, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == builders.build_file("ggjt", 1, HP, VOCAB, tensors)


def test_private_memory_stays_bounded(tmp_path):
    import tracemalloc  # numpy reports its buffers to tracemalloc

    hp = builders.llama_hparams(n_vocab=32000, dim=512, n_mult=256, n_head=4, n_layer=1, ftype=1)
    tensors = builders.llama_tensors(hp, "F16", seed=3)
    src = write_parts(tmp_path, builders.build_parts("ggmf", hp, builders.llama_vocab(32000), tensors, 2))
    del tensors
    data = sum(p.stat().st_size for p in tmp_path.iterdir())
    tracemalloc.start()
    try:
        migrate_file(src, tmp_path / "out.bin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data > 64 << 20
    assert peak < 16 << 20, f"peak {peak:,} bytes traced while copying {data:,} bytes"


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("version", [1, 2, 3])
def test_ggjt_input_is_refused_and_nothing_written(tmp_path, capsys, version):
    src = tmp_path / "model.bin"
    src.write_bytes(builders.build_model("ggjt", version, hparams("F16"), VOCAB, full_tensors("F16")))
    before = digests(tmp_path)
    with pytest.raises(AlreadyMigrated, match=rf"model\.bin: offset 0x0: magic: already ggjt v{version}"):
        migrate_file(src, tmp_path / "out.bin")
    assert main([str(src), str(tmp_path / "out.bin")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already ggjt" in err and "nothing to migrate" in err
    assert digests(tmp_path) == before  # no output, no temp file, input unchanged


@pytest.mark.parametrize("remove", [1, 2, 3])
def test_missing_part_is_named(tmp_path, remove):
    src = write_parts(tmp_path, part_bytes("ggmf", "Q4_0", 4))
    (tmp_path / f"model.bin.{remove}").unlink()
    with pytest.raises(BadLayout, match=rf"4 part\(s\), but model\.bin\.{remove} does not exist"):
        migrate_file(src, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_extra_part_is_named(tmp_path):
    src = write_parts(tmp_path, part_bytes("ggmf", "F16", 2))
    (tmp_path / "model.bin.2").write_bytes(part_bytes("ggmf", "F16", 2)[1])
    with pytest.raises(BadLayout, match=r"2 part\(s\), but model\.bin\.2 also exists"):
        migrate_file(src, tmp_path / "out.bin")


def test_later_part_as_src_gets_a_hint(tmp_path):
    write_parts(tmp_path, part_bytes("ggmf", "F16", 2))
    with pytest.raises(BadLayout, match=r"model\.bin\.1 looks like part 1 of model\.bin: pass the first part"):
        migrate_file(tmp_path / "model.bin.1", tmp_path / "out.bin")


def _refused_single_part(tmp_path: Path, transform, message: str, kind: type[FormatError] = BadValue) -> None:
    """A one-part ggmf F16 model with its records passed through `transform` is refused with `message`."""
    src = tmp_path / "model.bin"
    src.write_bytes(replace_record(part_bytes("ggmf", "F16", 1)[0], "ggmf", transform))
    with pytest.raises(kind, match=message):
        migrate_file(src, tmp_path / "out.bin")


def test_tok_embeddings_must_divide_n_embd(tmp_path):
    def shrink(records):
        name, code, ne, data = records[0]
        return [(name, code, (48, ne[1]), data[: 48 * ne[1] * 2]), *records[1:]]

    _refused_single_part(tmp_path, shrink, r"model\.bin: offset 0x[0-9a-f]+: tensor 'tok_embeddings.weight': "
                                           r"ne\[0\] = 48 does not divide the header's n_embd 128")


def test_missing_tok_embeddings_with_several_parts(tmp_path):
    parts = [replace_record(p, "ggmf", lambda r: r[1:]) for p in part_bytes("ggmf", "F16", 2)]
    src = write_parts(tmp_path, parts)
    with pytest.raises(BadLayout, match=r"no tok_embeddings.weight record.*2 part files exist"):
        migrate_file(src, tmp_path / "out.bin")


@pytest.mark.parametrize(("offset", "field"), [(8, "n_vocab"), (20, "n_head"), (32, "ftype")])
def test_mismatched_header_names_part_offset_and_field(tmp_path, offset, field):
    parts = list(part_bytes("ggmf", "F16", 2))
    p1 = bytearray(parts[1])
    (value,) = struct.unpack_from("<i", p1, offset)
    struct.pack_into("<i", p1, offset, value + 1 if field != "n_vocab" else value)
    if field == "n_vocab":  # a different vocabulary size means a different, valid file
        p1 = bytearray(replace_vocab(bytes(p1), VOCAB[:-1]))
    parts[1] = bytes(p1)
    src = write_parts(tmp_path, parts)
    with pytest.raises(BadValue, match=rf"model\.bin\.1: offset {offset:#x}: {field}: .* in part 0 \(model\.bin\)"):
        migrate_file(src, tmp_path / "out.bin")


def replace_vocab(part: bytes, vocab) -> bytes:
    parsed = builders.parse_file(part)
    records = [(t["name"], t["type"], t["ne"], part[t["data_offset"] : t["data_offset"] + t["nbytes"]])
               for t in parsed["tensors"]]
    return builders.build_file("ggmf", 1, {**parsed["hparams"], "n_vocab": len(vocab)}, vocab, records)


@pytest.mark.parametrize("what", ["text", "score"])
def test_mismatched_vocabulary_names_the_entry(tmp_path, what):
    vocab = list(VOCAB)
    vocab[270] = (b" wX1", vocab[270][1]) if what == "text" else (vocab[270][0], -99.0)
    parts = list(part_bytes("ggmf", "F16", 2))
    parts[1] = replace_vocab(parts[1], vocab)
    src = write_parts(tmp_path, parts)
    offset = 36 + 270 * 8 + sum(len(t) for t, _ in VOCAB[:270])
    with pytest.raises(BadValue, match=rf"model\.bin\.1: offset {offset:#x}: vocab\[270\]: .*same vocabulary"):
        migrate_file(src, tmp_path / "out.bin")


def test_mixed_formats_are_refused(tmp_path):
    parts = [part_bytes("ggmf", "F16", 2)[0], part_bytes("ggml", "F16", 2)[1]]
    src = write_parts(tmp_path, parts)
    with pytest.raises(BadMagic, match=r"model\.bin\.1: offset 0x0: magic: is ggml but part 0 \(model\.bin\) "
                                          r"is ggmf v1"):
        migrate_file(src, tmp_path / "out.bin")


def _swap(records):
    return [records[0], records[2], records[1], *records[3:]]


def _retype(records):  # output.weight shard as F32 instead of F16
    name, _, ne, data = records[2]
    f32 = np.frombuffer(data, "<f2").astype("<f4").tobytes()
    return [*records[:2], (name, 0, ne, f32), *records[3:]]


def _reshape(records):  # wq shard with half the rows, twice the columns: same bytes, other shape
    name, code, ne, data = records[3]
    return [*records[:3], (name, code, (ne[0] * 2, ne[1] // 2), data), *records[4:]]


@pytest.mark.parametrize(("edit", "index", "found"), [
    (_swap, 1, "'output.weight'"),
    (_retype, 2, "'output.weight' F32"),
    (_reshape, 3, r"'layers.0.attention.wq.weight' F16 ne=\[256, 32\], part 0 .* ne=\[128, 64\]"),
    (lambda r: r[:-1], 20, "missing 'layers.1.ffn_norm.weight'"),
    (lambda r: [*r, ("extra.weight", 0, (4,), bytes(16))], 21, "extra 'extra.weight'"),
])
def test_mismatched_records_name_part_offset_and_tensor(tmp_path, edit, index, found):
    parts = list(part_bytes("ggmf", "F16", 2))
    parts[1] = replace_record(parts[1], "ggmf", edit)
    src = write_parts(tmp_path, parts)
    with pytest.raises(BadLayout, match=rf"model\.bin\.1: offset 0x[0-9a-f]+: tensor\[{index}\]: .*{found}"):
        migrate_file(src, tmp_path / "out.bin")


def test_replicated_tensor_must_be_identical(tmp_path):
    parts = list(part_bytes("ggmf", "F16", 4))
    info = next(t for t in builders.parse_file(parts[2])["tensors"] if t["name"] == "layers.1.ffn_norm.weight")
    p2 = bytearray(parts[2])
    p2[info["data_offset"] + 4 * 5] ^= 1  # element 5
    parts[2] = bytes(p2)
    src = write_parts(tmp_path, parts)
    at = info["data_offset"] + 20
    with pytest.raises(BadValue, match=rf"model\.bin\.2: offset {at:#x}: tensor 'layers.1.ffn_norm.weight': "
                                          r"differs from part 0 \(model\.bin\) at data byte 20 \(element 5\)"):
        migrate_file(src, tmp_path / "out.bin")


def test_types_newer_than_ggjt_are_refused(tmp_path):
    def to_q8(records):
        name, _, ne, data = records[2]
        q8 = builders.quantize(np.frombuffer(data, "<f2").astype(np.float32).reshape(ne[1], ne[0]), "Q8_0", 1)
        return [*records[:2], (name, 8, ne, q8), *records[3:]]

    _refused_single_part(tmp_path, to_q8, r"model\.bin: offset 0x[0-9a-f]+: tensor 'output.weight': type Q8_0 did "
                                          r"not exist before ggjt")


def test_three_dims_in_a_multi_part_model_are_refused(tmp_path):
    def add_3d(records):
        return [*records, ("layers.0.extra.weight", 0, (2, 2, 2), bytes(32))]

    parts = [replace_record(p, "ggmf", add_3d) for p in part_bytes("ggmf", "F16", 2)]
    src = write_parts(tmp_path, parts)
    with pytest.raises(BadLayout, match=r"tensor 'layers.0.extra.weight': 3 dims in a 2-part model"):
        migrate_file(src, tmp_path / "out.bin")


@pytest.mark.parametrize("cut", [0, 3, 40, 2000, -1])
def test_truncated_part_is_a_format_error_naming_it(tmp_path, cut):
    parts = list(part_bytes("ggmf", "Q4_1", 2))
    parts[1] = parts[1][:cut]
    src = write_parts(tmp_path, parts)
    with pytest.raises(FormatError, match=r"model\.bin\.1: "):
        migrate_file(src, tmp_path / "out.bin")


# ------------------------------------------------------------------------------------------- destination


@pytest.mark.parametrize("target", ["model.bin", "model.bin.1", "hardlink", "symlink"])
def test_dst_that_is_an_input_is_refused_even_with_force(tmp_path, capsys, target):
    src = write_parts(tmp_path, part_bytes("ggmf", "F16", 2))
    if target == "hardlink":
        os.link(tmp_path / "model.bin.1", tmp_path / target)
    elif target == "symlink":
        (tmp_path / target).symlink_to(tmp_path / "model.bin")
    before = digests(tmp_path)
    for force in ([], ["--force"]):
        assert main([str(src), str(tmp_path / target), *force]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "the output is the same file as input part" in err
    with pytest.raises(CannotWrite, match="same file as input part"):
        migrate_file(src, tmp_path / target, overwrite=True)
    assert digests(tmp_path) == before


def test_dst_named_like_a_further_part_is_refused(tmp_path, capsys):
    # model.bin.2 next to a 2-part model would be read as a third part by the next run
    src = write_parts(tmp_path, part_bytes("ggmf", "F16", 2))
    assert main([str(src), str(tmp_path / "model.bin.2")]) == 1
    assert "would be taken for a part of" in capsys.readouterr().err
    assert not (tmp_path / "model.bin.2").exists()
    migrate_file(src, tmp_path / "model.bin.ggjt")  # a different suffix is fine
    (tmp_path / "sub").mkdir()
    migrate_file(src, tmp_path / "sub" / "model.bin.2")  # and so is another directory


def test_existing_dst_needs_force(tmp_path, capsys):
    src = write_parts(tmp_path, part_bytes("ggmf", "Q4_0", 2))
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"keep me")
    assert main([str(src), str(dst)]) == 1
    assert "output exists (use --force to replace it)" in capsys.readouterr().err
    assert dst.read_bytes() == b"keep me"
    assert main([str(src), str(dst), "--force", "--quiet"]) == 0
    assert dst.read_bytes() == expected_file("ggmf", "Q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.bin.1", "out.bin"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    src = write_parts(tmp_path, part_bytes("ggmf", "mixed", 4))
    before = digests(tmp_path)
    assert main([str(src), str(tmp_path / "out.bin"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert digests(tmp_path) == before
    expected = builders.parse_file(expected_file("ggmf", "mixed"))
    lines = out.splitlines()
    assert "ggmf v1, 4 part(s): model.bin, model.bin.1, model.bin.2, model.bin.3" in lines[0]
    for t in expected["tensors"]:
        row = next(line.split() for line in lines if line.startswith(t["name"] + " "))
        kind, array = full_tensors("mixed")[t["name"]]
        split = {0: "rows", 1: "columns", None: "none"}[builders.split_axis(t["name"], array.ndim)]
        assert row == [t["name"], kind, "x".join(map(str, array.shape)), split, f"{t['data_offset']:,}",
                       f"{t['nbytes']:,}"]
    size = len(expected_file("ggmf", "mixed"))
    assert f"file size {size:,} bytes" in lines[-1]


def test_cli_writes_and_reports_on_stderr_only(tmp_path, capsys):
    src = write_parts(tmp_path, part_bytes("ggml", "Q4_1", 2))
    assert main([str(src), str(tmp_path / "out.bin")]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no token scores" in captured.err and "wrote" in captured.err
    assert (tmp_path / "out.bin").read_bytes() == expected_file("ggml", "Q4_1")


def test_cli_missing_src_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope.bin"), str(tmp_path / "out.bin")]) == 1
    err = capsys.readouterr().err
    assert err == f"migrate-old-weights: error: {tmp_path / 'nope.bin'}: No such file or directory\n"


def test_cli_debug_shows_the_traceback(tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(b"ggjt")
    with pytest.raises(FormatError):
        main([str(src), str(tmp_path / "out.bin"), "--debug"])


# ------------------------------------------------------------------------------------------- one pipeline


@pytest.mark.parametrize("fmt", ["ggjt", "gguf"])
def test_each_part_is_found_opened_and_parsed_once(tmp_path, monkeypatch, fmt):
    import migrate.sources as sources

    calls: dict[str, list] = {"part_paths": [], "map_file": [], "decode_index": []}

    def counting(name):
        real = getattr(sources, name)

        def call(first, *args, **kwargs):
            calls[name].append(Path(kwargs.get("path", first)).name)  # decode_index gets a buffer and path=
            return real(first, *args, **kwargs)
        return call

    for name in calls:
        monkeypatch.setattr(sources, name, counting(name))
    src = write_parts(tmp_path, part_bytes("ggmf", "mixed", 4))
    assert main([str(src), str(tmp_path / "out"), "--format", fmt, "--quiet"]) == 0
    names = ["model.bin", "model.bin.1", "model.bin.2", "model.bin.3"]
    assert calls == {"part_paths": ["model.bin"], "map_file": names, "decode_index": names}


def test_destination_is_checked_once_before_any_part_is_read(tmp_path, monkeypatch, capsys):
    import migrate.migrate
    import migrate.sources

    checks, maps = [], []
    real_check, real_map = migrate.migrate.refuse_existing, migrate.sources.map_file
    monkeypatch.setattr(migrate.migrate, "refuse_existing", lambda *a, **k: (checks.append(a), real_check(*a, **k)))
    monkeypatch.setattr(migrate.sources, "map_file", lambda *a, **k: (maps.append(a), real_map(*a, **k))[1])
    src = write_parts(tmp_path, part_bytes("ggmf", "F16", 2))
    (tmp_path / "out.gguf").write_bytes(b"keep me")
    assert main([str(src), str(tmp_path / "out.gguf")]) == 1
    assert "output exists" in capsys.readouterr().err and len(checks) == 1 and maps == []
    assert main([str(src), str(tmp_path / "out.gguf"), "--force", "--quiet"]) == 0  # control: this run reads
    assert len(checks) == 2 and len(maps) == 2 and (tmp_path / "out.gguf").read_bytes()[:4] == b"GGUF"


def test_options_the_format_cannot_take_are_refused_before_reading(tmp_path):
    src = tmp_path / "missing.bin"  # never looked at: the request is refused first
    with pytest.raises(CannotWrite, match="format must be one of ggjt, gguf, not 'ggml'"):
        plan_migration(src, tmp_path / "out.bin", fmt="ggml")
    with pytest.raises(CannotWrite, match=r"--lossless, --ctx: only with --format gguf"):
        plan_migration(src, tmp_path / "out.bin", lossless=True, ctx=4096)
    with pytest.raises(FileNotFoundError):  # control: a request ggjt can carry out gets as far as the input
        plan_migration(src, tmp_path / "out.bin")


def test_dry_run_json_is_the_ggjt_file_written(tmp_path, capsys):
    import json

    src = write_parts(tmp_path, part_bytes("ggmf", "mixed", 2))
    assert main([str(src), str(tmp_path / "out.bin"), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "out.bin").exists() and plan["format"] == "ggjt v1"
    assert main([str(src), str(tmp_path / "out.bin"), "--quiet"]) == 0
    parsed = builders.parse_file((tmp_path / "out.bin").read_bytes())
    got = [(t["name"], t["type"], t["offset"], t["nbytes"], t["split_axis"]) for t in plan["tensors"]]
    full = full_tensors("mixed")

    def expected(split):
        return [(t["name"], full[t["name"]][0], t["data_offset"], t["nbytes"], split(t["name"], full[t["name"]][1].ndim))
                for t in parsed["tensors"]]

    assert got == expected(builders.split_axis)
    assert got != expected(lambda name, ndim: None)  # control: the split axes are really compared
    assert plan["hparams"] == parsed["hparams"] == hparams("mixed")
    assert plan["file_size"] == (tmp_path / "out.bin").stat().st_size


def test_dry_run_table_does_not_grow_with_a_long_name(tmp_path, capsys):
    long = "x" * 3000  # a name a record may hold; padding every line to it would multiply the output
    src = tmp_path / "model.bin"
    src.write_bytes(replace_record(part_bytes("ggmf", "F16", 1)[0], "ggmf",
                                   lambda r: [*r, (long, 0, (4,), bytes(16))]))
    assert main([str(src), str(tmp_path / "out.bin"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith(long))
    assert row.split()[1:] == ["F32", "4", "none", row.split()[-2], "16"]  # control: the name is shown whole
    assert max(len(line) for line in lines if line is not row) < 200
