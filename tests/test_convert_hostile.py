"""convert-model on hostile or inconsistent input: params.json, pickles that run code, shards that disagree."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convert import convert_checkpoint, plan_conversion
from convert.cli import main
from convert.params import parse_params
from ggmlfmt import FormatError
from meta import build

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


MARKER_ENV = "CONVERT_TEST_MARKER"


class RunsCode:
    """Unpickling this runs os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def _tensors(shard: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in shard.items()}


def test_params_are_checked_before_any_shard_is_opened(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    marker = tmp_path / "pwned"
    torch.save({"tok_embeddings.weight": RunsCode(marker)}, ck.paths[0])
    (ck.model_dir / "params.json").write_text(json.dumps({**GOOD, "dim": -1}))
    with pytest.raises(FormatError, match="params.json: dim"):
        convert_checkpoint(ck.model_dir)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["whole object", "inside the state dict"])
def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path: Path, where: str) -> None:
    ck = build(tmp_path, 2)
    marker = tmp_path / "pwned"
    evil = RunsCode(marker)
    torch.save(evil if where == "whole object" else {**_tensors(ck.shards[1]), "x": evil}, ck.paths[1])
    with pytest.raises(FormatError, match=r"consolidated\.01\.pth: refused to load: UnpicklingError"):
        convert_checkpoint(ck.model_dir)
    assert not marker.exists()
    assert not (ck.model_dir / "ggml-model-f16.bin").exists()
    pickle.loads(pickle.dumps(0))  # (pickle itself still works; only torch.load refused)


def test_weights_only_refuses_it_even_without_our_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import convert.checkpoint

    monkeypatch.setattr(convert.checkpoint, "check_storage_bounds", lambda path: None)
    ck = build(tmp_path, 2)
    marker = tmp_path / "pwned"
    torch.save({**_tensors(ck.shards[0]), "x": RunsCode(marker)}, ck.paths[0])
    with pytest.raises(FormatError, match=r"consolidated\.00\.pth: refused to load: UnpicklingError: weights_only "
                                          r"refused it: .*GLOBAL (posix|os)\.system"):
        plan_conversion(ck.model_dir)
    assert not marker.exists()


def test_malicious_shard_via_cli_is_one_line_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1)
    marker = tmp_path / "pwned"
    torch.save(RunsCode(marker), ck.paths[0])
    assert main([str(ck.model_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "consolidated.00.pth: refused to load" in err
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "refused to load"),
    (b"PK\x03\x04 not really a zip", "refused to load"),
    (b"\x80\x02}q\x00.", "refused to load"),  # a legacy (non-zip) pickle: cannot be memory-mapped
])
def test_garbage_shards_are_format_errors(tmp_path: Path, content: bytes, message: str) -> None:
    ck = build(tmp_path, 2)
    ck.paths[1].write_bytes(content)
    with pytest.raises(FormatError, match=f"consolidated.01.pth: {message}"):
        plan_conversion(ck.model_dir)


def test_truncated_shard_is_a_format_error(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    data = ck.paths[0].read_bytes()
    ck.paths[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="consolidated.00.pth: refused to load"):
        plan_conversion(ck.model_dir)


@pytest.mark.parametrize("obj, message", [
    ([1, 2, 3], "expected a state dict"),
    ({"a": 1}, "tensor 'a': expected a tensor, found int"),
    ({1: torch.zeros(2)}, "expected tensor names"),
])
def test_shard_that_is_not_a_state_dict(tmp_path: Path, obj: Any, message: str) -> None:
    ck = build(tmp_path, 1)
    torch.save(obj, ck.paths[0])
    with pytest.raises(FormatError, match=f"consolidated.00.pth: {_re(message)}"):
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


def test_shard_missing_a_tensor(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    _resave(ck.paths[1], ck.shards[1], **{"layers__1__attention__wk__weight": None})
    with pytest.raises(FormatError, match=r"consolidated\.01\.pth: tensor 'layers\.1\.attention\.wk\.weight': "
                                          r"missing \(present in consolidated\.00\.pth\)"):
        plan_conversion(ck.model_dir)


def test_shard_with_an_extra_tensor(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    _resave(ck.paths[1], ck.shards[1], extra=torch.zeros(3))
    with pytest.raises(FormatError, match=r"consolidated\.01\.pth: tensor 'extra': tensor not in consolidated\.00"):
        plan_conversion(ck.model_dir)


def test_shard_with_another_shape(tmp_path: Path) -> None:
    ck = build(tmp_path, 4)
    wq = "layers.0.attention.wq.weight"
    _resave(ck.paths[3], ck.shards[3], **{wq.replace(".", "__"): torch.zeros(8, 64, dtype=torch.float16)})
    with pytest.raises(FormatError, match=r"consolidated\.03\.pth: tensor 'layers\.0\.attention\.wq\.weight': "
                                          r"float16 \[8, 64\] differs from float16 \[16, 64\]"):
        plan_conversion(ck.model_dir)


def test_shard_with_another_dtype(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    t = torch.from_numpy(ck.shards[1]["output.weight"]).float()
    _resave(ck.paths[1], ck.shards[1], output__weight=t)
    with pytest.raises(FormatError, match=r"consolidated\.01\.pth: tensor 'output\.weight': float32"):
        plan_conversion(ck.model_dir)


def test_replicated_tensor_that_differs_between_shards(tmp_path: Path) -> None:
    ck = build(tmp_path, 2)
    norm = torch.from_numpy(ck.shards[1]["layers.1.ffn_norm.weight"]).clone()
    norm[5] += 1
    _resave(ck.paths[1], ck.shards[1], **{"layers__1__ffn_norm__weight": norm})
    with pytest.raises(FormatError, match=r"consolidated\.01\.pth: tensor 'layers\.1\.ffn_norm\.weight': differs "
                                          r"from the copy in consolidated\.00\.pth"):
        plan_conversion(ck.model_dir)


def test_integer_or_3d_tensors_are_refused(tmp_path: Path) -> None:
    ck = build(tmp_path, 1)
    _resave(ck.paths[0], ck.shards[0], norm__weight=torch.zeros(64, dtype=torch.int32))
    with pytest.raises(FormatError, match=r"tensor 'norm\.weight': expected floating-point data"):
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
    with pytest.raises(FormatError, match="missing consolidated.02.pth"):
        plan_conversion(ck.model_dir)
    (ck.model_dir / "consolidated.99999999.pth").write_bytes(b"")
    with pytest.raises(FormatError, match="expected at most 64 shards, found consolidated.99999999.pth"):
        plan_conversion(ck.model_dir)
    for p in ck.model_dir.glob("consolidated.*"):
        p.unlink()
    with pytest.raises(FormatError, match="no consolidated.00.pth found"):
        plan_conversion(ck.model_dir)


def _rewrite_zip(src: Path, change: Any, compress: int = zipfile.ZIP_STORED) -> None:
    """Rewrite a shard's zip with change(entries) applied to {record name: bytes}."""
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    change(entries)
    with zipfile.ZipFile(src, "w", compress) as z:
        for n, data in entries.items():
            z.writestr(n, data)


def test_storage_larger_than_its_record_is_refused_before_torch_maps_it(tmp_path: Path) -> None:
    """torch.load(mmap=True) does not compare a storage with its record: it would read the next records."""
    ck = build(tmp_path, 1)

    def shorten(entries: dict[str, bytes]) -> None:
        entries["consolidated.00/data/0"] = entries["consolidated.00/data/0"][:2]

    _rewrite_zip(ck.paths[0], shorten)
    with pytest.raises(FormatError, match=r"consolidated\.00\.pth: record 'consolidated\.00/data/0': refused to "
                                          r"load: the pickle claims 40,960 bytes, the record holds 2"):
        convert_checkpoint(ck.model_dir)
    assert not (ck.model_dir / "ggml-model-f16.bin").exists()


def test_last_storage_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    """The same lie on the last record would fault (SIGBUS) when the mapped pages past EOF are read."""
    ck = build(tmp_path, 1)
    last = max(int(n.rsplit("/", 1)[1]) for n in _names(ck.paths[0]) if "/data/" in n and n[-1].isdigit())

    def shorten(entries: dict[str, bytes]) -> None:
        entries[f"consolidated.00/data/{last}"] = b""

    _rewrite_zip(ck.paths[0], shorten)
    with pytest.raises(FormatError, match="refused to load: the pickle claims"):
        plan_conversion(ck.model_dir)


def _names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return z.namelist()


def test_compressed_storage_records_are_refused(tmp_path: Path) -> None:
    ck = build(tmp_path, 1)
    _rewrite_zip(ck.paths[0], lambda entries: None, zipfile.ZIP_DEFLATED)
    with pytest.raises(FormatError, match="a storage record is compressed"):
        plan_conversion(ck.model_dir)


def test_pickle_with_a_foreign_global_is_refused_by_the_scan(tmp_path: Path) -> None:
    ck = build(tmp_path, 1)

    def swap(entries: dict[str, bytes]) -> None:
        pkl = "consolidated.00/data.pkl"
        entries[pkl] = entries[pkl].replace(b"collections\nOrderedDict", b"subprocess\nPopen")

    _rewrite_zip(ck.paths[0], swap)
    with pytest.raises(FormatError, match="refused to load: UnpicklingError: global 'subprocess.Popen' is not"):
        plan_conversion(ck.model_dir)
