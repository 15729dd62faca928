"""The `ggmlfmt` command: inspect (text and --json), verify, and how a bad file is reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import builders
from ggmlfmt.cli import main
from ggmlfmt.errors import FormatError

DATA = Path(__file__).parent / "data"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a fresh process, exit status, separate stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "ggmlfmt.cli", *args], capture_output=True, text=True, timeout=60)


def truncated_copy(tmp_path: Path) -> Path:
    raw = (DATA / "section12.ggjt").read_bytes()
    path = tmp_path / "cut.bin"
    path.write_bytes(raw[:1000])  # inside output.weight's data (864..1247)
    return path


@pytest.mark.parametrize("name", ["section12.ggjt", "section12.ggmf", "section12.ggml", "quantized_v1.ggjt",
                                  "quantized_v3.ggjt"])
def test_inspect_json_agrees_with_the_independent_parser(capsys, name):
    assert main(["inspect", str(DATA / name), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    raw = (DATA / name).read_bytes()
    parsed = builders.parse_file(raw)
    assert (desc["format"], desc["version"]) == (parsed["magic"], parsed["version"])
    assert {k: desc["hparams"][k] for k in builders.HPARAM_NAMES} == parsed["hparams"]
    assert desc["vocab"] == {"size": len(parsed["vocab"]), "scores": parsed["magic"] != "ggml"}
    assert len(desc["tensors"]) == len(parsed["tensors"])
    for row, t in zip(desc["tensors"], parsed["tensors"]):
        assert row["name"] == t["name"]
        assert row["type"] == builders.TYPE_NAMES[t["type"]]
        assert row["ne"] == list(t["ne"]) and row["shape"] == list(reversed(t["ne"]))
        assert (row["offset"], row["nbytes"]) == (t["data_offset"], t["nbytes"])
        assert row["aligned"] == (t["data_offset"] % 32 == 0)
    b = desc["bytes"]
    assert b["total"] == len(raw)
    assert b["header"] + b["vocab"] + b["records"] + b["padding"] + b["data"] == len(raw)  # every byte accounted
    assert b["data"] == sum(t["nbytes"] for t in parsed["tensors"])
    assert b["header"] + b["vocab"] == parsed["tensors"][0]["record_offset"]


def test_inspect_text_shows_the_header_table_and_totals(capsys):
    assert main(["inspect", str(DATA / "section12.ggjt")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["format", "ggjt", "v1"]
    assert "n_vocab=3" in out and "n_embd=64" in out and "MOSTLY_F16" in out and "n_ff=192" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.endswith((" 32", " -"))}
    assert rows["tok_embeddings.weight"][1:5] == ["F16", "3x64", "128", "384"]
    assert rows["norm.weight"][1:5] == ["F32", "64", "544", "256"]
    assert rows["output.weight"][1:5] == ["F16", "3x64", "864", "384"]
    assert "total 1,248" in out


def test_inspect_marks_unaligned_tensors(capsys):
    assert main(["inspect", str(DATA / "section12.ggmf")]) == 0
    out = capsys.readouterr().out
    norm = next(line for line in out.splitlines() if line.startswith("norm.weight"))
    assert norm.split()[-1] == "-"


def test_verify_prints_ok_and_exits_zero():
    r = run_cli("verify", str(DATA / "quantized_v1.ggjt"))
    assert (r.returncode, r.stdout, r.stderr) == (0, "OK\n", "")


def test_bad_file_is_one_line_on_stderr_and_exit_status_1(tmp_path):
    path = truncated_copy(tmp_path)
    for command in ("verify", "inspect"):
        r = run_cli(command, str(path))
        assert r.returncode == 1 and r.stdout == ""
        lines = r.stderr.splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0] == (f"ggmlfmt: error: {path}: offset 0x360: tensor 'output.weight' data (F16 [64, 3]): "
                            "need 384 bytes, 136 left")
        assert "Traceback" not in r.stderr


def test_missing_file_is_one_line_too(tmp_path):
    r = run_cli("verify", str(tmp_path / "nope.bin"))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [f"ggmlfmt: error: {tmp_path / 'nope.bin'}: No such file or directory"]


def test_debug_shows_the_traceback(tmp_path):
    path = truncated_copy(tmp_path)
    r = run_cli("verify", "--debug", str(path))
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "Truncated" in r.stderr
    with pytest.raises(FormatError, match="need 384 bytes, 136 left"):
        main(["verify", "--debug", str(path)])


def test_not_a_model_says_what_it_is(tmp_path):
    path = tmp_path / "x.ggla"
    path.write_bytes(b"algg" + bytes(60))
    r = run_cli("verify", str(path))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "found a LoRA adapter ('ggla') file" in r.stderr


def test_a_gguf_of_an_unknown_version_says_so(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    r = run_cli("verify", str(path))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "GGUF version 0 is not one we read" in r.stderr


def test_usage_errors_exit_2():
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "usage:" in r.stderr


def test_a_closed_stdout_pipe_is_not_an_error(tmp_path, header):
    """`ggmlfmt inspect --json big.bin | head -c 10`: no error line, no traceback."""
    import subprocess
    import sys

    import numpy as np

    import ggmlfmt

    path = tmp_path / "many.bin"
    tensors = {f"layers.{i}.attention_norm.weight": np.ones(32, np.float32) for i in range(3000)}  # ~1 MB of JSON
    hp, vocab = header(n_vocab=1, ftype=0)
    ggmlfmt.save(path, tensors, hparams=hp, vocab=vocab)
    p = subprocess.Popen([sys.executable, "-m", "ggmlfmt.cli", "inspect", "--json", str(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.read(10) == b'{\n  "forma'
    p.stdout.close()
    stderr = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141
    assert stderr == ""
