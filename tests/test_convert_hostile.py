"""convert-model on hostile or inconsistent input: params.json, pickles that run code, shards that disagree."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import re
import struct
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convert import convert_checkpoint, plan_conversion
from convert.cli import main
from ggmlfmt.llama.params import parse_params
from ggmlfmt import FormatError
from ggmlfmt.errors import BadLayout, BadValue
from meta import Checkpoint, build

GOOD = {"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-06, "vocab_size": -1}


@pytest.mark.parametrize("change, field, message", [
    ({"dim": -64}, "dim", "expected 1..65536, found -64"),
    ({"dim": 0}, "dim", "found 0"),
    ({"dim": 1 << 40}, "dim", "found 1099511627776"),
    ({"dim": 64.0}, "dim", "expected an integer, found 64.0"),
    ({"dim": "64"}, "dim", 'expected an integer, found "64"'),
    ({"dim": True}, "dim", "expected an integer, found true"),
    ({"dim": None}, "dim", "expected an integer, found null"),
    ({"n_heads": 5}, "n_heads", "5 heads do not divide dim 64"),
    ({"n_heads": 0}, "n_heads", "found 0"),
    ({"n_heads": 128}, "n_heads", "expected 1..64, found 128"),
    ({"n_layers": 0}, "n_layers", "found 0"),
    ({"n_layers": 10**9}, "n_layers", "found 1000000000"),
    ({"multiple_of": -256}, "multiple_of", "found -256"),
    ({"multiple_of": [256]}, "multiple_of", "expected an integer"),
    ({"vocab_size": 0}, "vocab_size", "found 0"),
    ({"vocab_size": -7}, "vocab_size", "found -7"),
    ({"n_layers": "MISSING"}, "n_layers", "missing"),
])
def test_absurd_params_are_rejected_naming_the_field(change: dict[str, Any], field: str, message: str) -> None:
    obj = {**GOOD, **change}
    obj = {k: v for k, v in obj.items() if v != "MISSING"}
    with pytest.raises(FormatError, match=f"^params.json: {field}: .*{_re(message)}") as e:
        parse_params(obj)
    assert e.value.field == field


def _re(s: str) -> str:
    import re

    return re.escape(s)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "expected a JSON object, found list"),
    ("{", "not valid JSON"),
    ("", "not valid JSON"),
    ("[" * 100000, "not valid JSON"),
    ('{"dim": 64}' + " " * (1 << 20), "expected a small JSON object"),
])
def test_broken_params_json(tmp_path: Path, text: str, message: str) -> None:
    ck = build(tmp_path, 1)
    (ck.model_dir / "params.json").write_text(text)
    with pytest.raises(FormatError, match=f"params.json: {_re(message)}"):
        plan_conversion(ck.model_dir)


class RunsCode:
    """Unpickling this calls `func(*args)`: what a malicious checkpoint does (os.system pickles as posix.system)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def _evil(name: str, marker: Path) -> RunsCode:
    return {"os.system": RunsCode(os.system, f"touch {marker}"),
            "builtins.eval": RunsCode(builtins.eval, f"open({str(marker)!r}, 'w')"),
            "subprocess.Popen": RunsCode(subprocess.Popen, ["touch", str(marker)])}[name]


GLOBAL_NAMES = {"os.system": r"(posix|os)\.system", "builtins.eval": r"(__builtin__|builtins)\.eval",
                "subprocess.Popen": r"(commands|subprocess)\.Popen"}  # protocol 2 writes Python 2's names


def _tensors(shard: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in shard.items()}


def _cli_refuses(ck: Any, capsys: pytest.CaptureFixture, pattern: str) -> str:
    """convert-model on the checkpoint: exit status 1, one stderr line matching `pattern`, no output file."""
    assert main([str(ck.model_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("convert-model: error: "), err
    assert re.search(pattern, err), err
    assert sorted(p.name for p in ck.model_dir.iterdir() if "ggml-model" in p.name) == []  # nor a temp file
    return err


def test_params_are_checked_before_any_shard_is_opened(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    marker = tmp_path / "pwned"
    torch.save({"tok_embeddings.weight": _evil("os.system", marker)}, ck.paths[0])
    (ck.model_dir / "params.json").write_text(json.dumps({**GOOD, "dim": -1}))
    with pytest.raises(FormatError, match="params.json: dim"):
        convert_checkpoint(ck.model_dir)
    assert not marker.exists()


@pytest.mark.parametrize("func", sorted(GLOBAL_NAMES))
@pytest.mark.parametrize("where", ["whole object", "inside the state dict"])
@pytest.mark.parametrize("protocol", [2, 3])
def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             func: str, where: str, protocol: int) -> None:
    ck = build(tmp_path, 2)
    marker = tmp_path / "pwned"
    evil = _evil(func, marker)
    pickle.loads(pickle.dumps(_evil(func, tmp_path / "proof")))  # the payload works when unpickled for real
    for _ in range(50):
        if (tmp_path / "proof").exists():
            break
        time.sleep(0.05)  # Popen runs touch in the background
    assert (tmp_path / "proof").exists()
    torch.save(evil if where == "whole object" else {**_tensors(ck.shards[1]), "x": evil}, ck.paths[1],
               pickle_protocol=protocol)
    _cli_refuses(ck, capsys, r"consolidated\.01\.pth: record 'consolidated\.01/data\.pkl': global "
                             f"{GLOBAL_NAMES[func]} is not allowed")
    time.sleep(0.1)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "no zip end-of-central-directory record in the last 0 bytes"),
    (b"PK\x03\x04 not really a zip", "no zip end-of-central-directory record"),
    (b"\x80\x02}q\x00.", "a bare pickle, not a zip-format PyTorch checkpoint"),
])
def test_garbage_shards_are_format_errors(tmp_path: Path, content: bytes, message: str) -> None:
    ck = build(tmp_path, 2)
    ck.paths[1].write_bytes(content)
    with pytest.raises(FormatError, match=f"consolidated.01.pth: .*{_re(message)}"):
        plan_conversion(ck.model_dir)


def test_truncated_shard(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 2)
    data = ck.paths[0].read_bytes()
    ck.paths[0].write_bytes(data[: len(data) // 2])
    _cli_refuses(ck, capsys, r"consolidated\.00\.pth: offset 0x[0-9a-f]+: end of central directory: no zip "
                             "end-of-central-directory record")


def test_legacy_torch_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1)
    torch.save(_tensors(ck.shards[0]), ck.paths[0], _use_new_zipfile_serialization=False)
    _cli_refuses(ck, capsys, r"consolidated\.00\.pth: offset 0x0: magic: legacy \(pre-1\.6\) torch\.save format, "
                             "not a zip archive; re-save it")


@pytest.mark.parametrize("obj, message", [
    ((1, 2, 3), "expected a state dict (name -> tensor), found tuple"),
    ([1, 2, 3], "pickle opcode EMPTY_LIST at byte 2 is not one torch.save writes"),
    ({"a": 1, "b": 2}, "expected a tensor, found int"),
    ({1: torch.zeros(2)}, "expected tensor names"),
])
def test_shard_that_is_not_a_state_dict(tmp_path: Path, obj: Any, message: str) -> None:
    ck = build(tmp_path, 1)
    torch.save(obj, ck.paths[0])
    field = "tensor 'a'" if "tensor, found" in message else "record 'consolidated.00/data.pkl'"
    with pytest.raises(FormatError, match=rf"consolidated\.00\.pth: {_re(field)}: {_re(message)}"):
        plan_conversion(ck.model_dir)


def _resave(path: Path, shard: dict[str, np.ndarray], **changes: Any) -> None:
    """Save a shard with some tensors replaced (None removes one), keeping the order of the rest."""
    tensors = {k: torch.from_numpy(v) for k, v in shard.items()}
    for k, v in changes.items():
        if v is None:
            tensors.pop(k.replace("__", "."))
        else:
            tensors[k.replace("__", ".")] = v
    torch.save(tensors, path)


def _bumped_norm(ck: Checkpoint) -> dict[str, torch.Tensor]:
    norm = torch.from_numpy(ck.shards[1]["layers.1.ffn_norm.weight"]).clone()
    norm[5] += 1
    return {"layers__1__ffn_norm__weight": norm}


# name -> (shards, which shard is re-saved, its changes given the checkpoint, the one error expected)
SHARD_MISMATCHES = {
    "missing_a_tensor": (2, 1, lambda ck: {"layers__1__attention__wk__weight": None},
                         r"consolidated\.01\.pth: tensor 'layers\.1\.attention\.wk\.weight': "
                         r"missing \(present in consolidated\.00\.pth\)"),
    "with_an_extra_tensor": (2, 1, lambda ck: {"extra": torch.zeros(3)},
                             r"consolidated\.01\.pth: tensor 'extra': tensor not in consolidated\.00"),
    "with_another_shape": (4, 3, lambda ck: {"layers__0__attention__wq__weight": torch.zeros(8, 64).half()},
                           r"consolidated\.03\.pth: tensor 'layers\.0\.attention\.wq\.weight': "
                           r"float16 \[8, 64\] differs from float16 \[16, 64\]"),
    "with_another_dtype": (2, 1, lambda ck: {"output__weight": torch.from_numpy(ck.shards[1]["output.weight"]).float()},
                           r"consolidated\.01\.pth: tensor 'output\.weight': float32"),
    "replicated_tensor_that_differs": (2, 1, _bumped_norm,
                                       r"consolidated\.01\.pth: tensor 'layers\.1\.ffn_norm\.weight': differs "
                                       r"from the copy in consolidated\.00\.pth"),
}


@pytest.mark.parametrize(("n_shards", "k", "change", "message"), SHARD_MISMATCHES.values(), ids=SHARD_MISMATCHES)
def test_shard_that_disagrees_with_shard_0(tmp_path: Path, n_shards: int, k: int, change, message: str) -> None:
    ck = build(tmp_path, n_shards)
    _resave(ck.paths[k], ck.shards[k], **change(ck))
    with pytest.raises(FormatError, match=message):
        plan_conversion(ck.model_dir)


def test_integer_or_3d_tensors_are_refused(tmp_path: Path) -> None:
    ck = build(tmp_path, 1)
    _resave(ck.paths[0], ck.shards[0], norm__weight=torch.zeros(64, dtype=torch.int32))
    with pytest.raises(FormatError, match=r"global torch\.IntStorage is not allowed"):
        plan_conversion(ck.model_dir)
    _resave(ck.paths[0], ck.shards[0], norm__weight=torch.zeros(4, 4, 4))
    with pytest.raises(FormatError, match=r"tensor 'norm\.weight': expected 1 or 2 dimensions"):
        plan_conversion(ck.model_dir)


def test_shapes_must_match_params_json(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    (ck.model_dir / "params.json").write_text(json.dumps({**GOOD, "n_layers": 3}))
    with pytest.raises(FormatError, match=r"consolidated\.00\.pth: tensor 'layers\.2\.attention\.wq\.weight': "
                                          r"missing; params.json \(n_layers 3\)"):
        plan_conversion(ck.model_dir)
    (ck.model_dir / "params.json").write_text(json.dumps({**GOOD, "dim": 128, "n_heads": 4}))
    with pytest.raises(FormatError, match=r"tensor 'tok_embeddings\.weight': full shape \[320, 64\] .* differs "
                                          r"from \[320, 128\]"):
        plan_conversion(ck.model_dir)
    (ck.model_dir / "params.json").write_text(json.dumps({**GOOD, "vocab_size": 32000}))
    with pytest.raises(FormatError, match=r"params.json: vocab_size: 32000 does not match the 320 pieces"):
        plan_conversion(ck.model_dir)


def test_shard_numbering_must_start_at_00_without_gaps(tmp_path: Path) -> None:
    ck = build(tmp_path, 4)
    ck.paths[2].unlink()
    with pytest.raises(BadLayout, match="missing consolidated.02.pth"):  # a kind of FormatError
        plan_conversion(ck.model_dir)
    (ck.model_dir / "consolidated.99999999.pth").write_bytes(b"")
    with pytest.raises(BadValue, match="expected at most 64 shards, found consolidated.99999999.pth"):
        plan_conversion(ck.model_dir)
    for p in ck.model_dir.glob("consolidated.*"):
        p.unlink()
    with pytest.raises(BadLayout, match="no consolidated.00.pth found"):
        plan_conversion(ck.model_dir)


def _rewrite_zip(src: Path, change: Any, compress: int = zipfile.ZIP_STORED) -> None:
    """Rewrite a shard's zip with change(entries) applied to {record name: bytes}."""
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    change(entries)
    with zipfile.ZipFile(src, "w", compress) as z:
        for n, data in entries.items():
            z.writestr(n, data)


def test_storage_larger_than_its_record(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1)

    def shorten(entries: dict[str, bytes]) -> None:
        entries["consolidated.00/data/0"] = entries["consolidated.00/data/0"][:2]

    _rewrite_zip(ck.paths[0], shorten)
    _cli_refuses(ck, capsys, r"consolidated\.00\.pth: tensor 'tok_embeddings\.weight': storage '0' claims 20,480 x 2 "
                             r"bytes, its record 'consolidated\.00/data/0' holds 2")


def test_last_storage_past_the_end_of_its_record(tmp_path: Path) -> None:
    ck = build(tmp_path, 1)
    last = max(int(n.rsplit("/", 1)[1]) for n in _names(ck.paths[0]) if "/data/" in n and n[-1].isdigit())

    def shorten(entries: dict[str, bytes]) -> None:
        entries[f"consolidated.00/data/{last}"] = b""

    _rewrite_zip(ck.paths[0], shorten)
    with pytest.raises(FormatError, match=f"storage '{last}' claims .* holds 0"):
        plan_conversion(ck.model_dir)


def _names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return z.namelist()


def _patch_pickle(path: Path, old: bytes, new: bytes) -> None:
    """Replace bytes in the shard's data.pkl (the first occurrence), rewriting the zip with fresh CRCs."""
    def change(entries: dict[str, bytes]) -> None:
        pkl = next(n for n in entries if n.endswith("/data.pkl"))
        assert old in entries[pkl], (old, entries[pkl][:200])
        entries[pkl] = entries[pkl].replace(old, new, 1)

    _rewrite_zip(path, change)


def _pickled_int(n: int) -> bytes:
    """How a protocol-2 pickle writes a non-negative int (BININT1, BININT2, BININT or LONG1)."""
    return pickle.dumps(n, protocol=2)[2:-1]


def test_strides_reaching_past_the_storage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1)  # tok_embeddings.weight: size (320, 64), stride (64, 1), 20,480 elements
    size, stride = _pickled_int(320) + _pickled_int(64) + b"\x86", _pickled_int(64) + _pickled_int(1) + b"\x86"
    _patch_pickle(ck.paths[0], size + stride, size + _pickled_int(65) + _pickled_int(1) + b"\x86")
    _cli_refuses(ck, capsys, r"tensor 'tok_embeddings\.weight': size \[320, 64\], stride \[65, 1\] from offset 0 "
                             r"reach element 20,798 of a 20,480-element storage '0'")


def test_huge_numel(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1)
    cpu = b"X" + struct.pack("<I", 3) + b"cpu"
    _patch_pickle(ck.paths[0], cpu + _pickled_int(20480) + b"tQ", cpu + _pickled_int(1 << 62) + b"tQ")
    _cli_refuses(ck, capsys, r"tensor 'tok_embeddings\.weight': storage '0' claims 4,611,686,018,427,387,904 x 2 bytes")


def test_compressed_storage_records_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1)
    _rewrite_zip(ck.paths[0], lambda entries: None, zipfile.ZIP_DEFLATED)
    _cli_refuses(ck, capsys, r"consolidated\.00\.pth: offset 0x[0-9a-f]+: record 'consolidated\.00/data\.pkl': "
                             r"record is compressed \(method 8")


def _central_entry(data: bytes, name: bytes) -> int:
    """Offset of the central directory entry for `name`, found by its signature and name field."""
    pos = data.index(b"PK\x01\x02")
    while data[pos + 46 : pos + 46 + len(name)] != name:
        pos = data.index(b"PK\x01\x02", pos + 4)
    return pos


@pytest.mark.parametrize("writer", ["pthwrite", "torch.save"])
def test_central_directory_lying_about_sizes(tmp_path: Path, capsys: pytest.CaptureFixture, writer: str) -> None:
    ck = build(tmp_path, 1)
    if writer == "torch.save":  # torch puts sizes in a data descriptor after the data, not in the local header
        torch.save(_tensors(ck.shards[0]), ck.paths[0])
    data = bytearray(ck.paths[0].read_bytes())
    at = _central_entry(bytes(data), b"consolidated.00/data/1")
    real = struct.unpack_from("<I", data, at + 24)[0]
    struct.pack_into("<II", data, at + 20, real + 64, real + 64)  # compressed and uncompressed size
    ck.paths[0].write_bytes(bytes(data))
    what = "data descriptor" if writer == "torch.save" else "local header"  # (read 64 bytes too far: garbage)
    found = r"\d+/\d+" if writer == "torch.save" else f"{real}/{real}"
    _cli_refuses(ck, capsys, rf"consolidated\.00\.pth: offset 0x[0-9a-f]+: {what} of 'consolidated\.00/data/1': "
                             rf"CRC 0x[0-9a-f]+, sizes {found} differ from the central directory's CRC "
                             rf"0x[0-9a-f]+, size {real + 64}")


def test_pickle_with_a_foreign_global_is_refused(tmp_path: Path) -> None:
    ck = build(tmp_path, 1)
    _patch_pickle(ck.paths[0], b"collections\nOrderedDict", b"subprocess\nPopen")
    with pytest.raises(FormatError, match=r"global subprocess\.Popen is not allowed: a checkpoint may name only "
                                          r"torch\._utils\._rebuild_tensor_v2"):
        plan_conversion(ck.model_dir)
