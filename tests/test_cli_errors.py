"""Issue 16 item 6, through each command's main(argv): the one error rule of ggmlfmt/command.py.

A bad input file (a FormatError kind), a request that cannot be carried out (a RequestError kind, which is
not a FormatError) and an OSError each give one line `PROG: error: ...` on stderr and exit status 1, with no
traceback (--debug raises it, so its class can be checked). Anything else is a bug: the command lets it
through with its traceback, and the output it was writing is neither created nor left half-written.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import convert.cli
import ggmlfmt.cli
import migrate.cli
from ggmlfmt.errors import BadOption, CannotWrite, FormatError, RequestError, Truncated

DATA = Path(__file__).parent / "data"
Argv = Callable[[Path], list[str]]


def _cut(tmp_path: Path, name: str) -> Path:
    """A copy of a tests/data file cut inside its last tensor's data: a Truncated input for any reader."""
    raw = (DATA / name).read_bytes()
    path = tmp_path / f"cut-{name}"
    path.write_bytes(raw[: len(raw) - 100])
    return path


def _checkpoint(tmp_path: Path, params: bytes | None = None) -> Path:
    from meta import build  # torch: only the convert cases need it

    ck = build(tmp_path / "ck", 1)
    if params is not None:
        (ck.model_dir / "params.json").write_bytes(params)
    return ck.model_dir


# prog -> (main, a bad input, a request that cannot be carried out, a missing input, a run that writes a file)
CASES: dict[str, tuple[Callable[[list[str]], int], Argv, Argv, Argv, Argv]] = {
    "ggmlfmt": (
        ggmlfmt.cli.main,
        lambda t: ["verify", str(_cut(t, "section12.ggjt"))],
        lambda t: ["load", str(DATA / "section12.ggjt"), "--threads", "4"],  # threads only with --method pread
        lambda t: ["verify", str(t / "nope.bin")],
        lambda t: ["copy", str(DATA / "section12.ggjt"), str(t / "out.bin")],
    ),
    "convert-model": (
        convert.cli.main,
        lambda t: [str(_checkpoint(t, b'{"dim": 64, "multiple_of": 32, "n_heads": 5, "n_layers": 2}'))],
        lambda t: [str(_checkpoint(t)), "--format", "ggjt", "--outfile", str(t / "out.gguf")],
        lambda t: [str(t / "nope")],
        lambda t: [str(_checkpoint(t)), "--format", "ggjt", "--outfile", str(t / "out.bin")],
    ),
    "migrate-old-weights": (
        migrate.cli.main,
        lambda t: [str(_cut(t, "section12.ggml")), str(t / "out.bin"), "--format", "ggjt"],
        lambda t: [str(DATA / "section12.ggml"), str(t / "out.gguf"), "--format", "ggjt"],
        lambda t: [str(t / "nope.bin"), str(t / "out.bin"), "--format", "ggjt"],
        lambda t: [str(DATA / "section12.ggml"), str(t / "out.bin"), "--format", "ggjt"],
    ),
}
PROGS = list(CASES)


def _one_error_line(prog: str, main: Callable[[list[str]], int], argv: list[str],
                    capsys: pytest.CaptureFixture[str]) -> str:
    """main(argv) exits 1 with one `PROG: error: ` line on stderr, nothing on stdout; returns the line."""
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    return err


@pytest.mark.parametrize("prog", PROGS)
def test_a_bad_input_file_is_one_line_and_a_format_error(prog, tmp_path, capsys):
    main, bad_input, *_ = CASES[prog]
    argv = bad_input(tmp_path)
    line = _one_error_line(prog, main, argv, capsys)
    with pytest.raises(FormatError) as e:
        main([*argv, "--debug", "--quiet"])
    assert not isinstance(e.value, RequestError)
    assert str(e.value) in line  # the line is the error's own one-line text


def test_the_bad_inputs_are_the_kinds_they_claim(tmp_path):
    """Control for the cases above: each bad input fails for the reason the case means, not another one."""
    checks = {"ggmlfmt": (Truncated, "need"), "convert-model": (FormatError, "5 heads do not divide dim 64"),
              "migrate-old-weights": (Truncated, "need 384 bytes")}
    for prog, (kind, text) in checks.items():
        main, bad_input, *_ = CASES[prog]
        (tmp_path / prog).mkdir()
        with pytest.raises(kind, match=text):
            main([*bad_input(tmp_path / prog), "--debug", "--quiet"])


@pytest.mark.parametrize("prog", PROGS)
def test_a_request_that_cannot_be_carried_out_is_one_line_and_not_a_format_error(prog, tmp_path, capsys):
    main, _, request, *_ = CASES[prog]
    argv = request(tmp_path)
    line = _one_error_line(prog, main, argv, capsys)
    with pytest.raises(RequestError) as e:
        main([*argv, "--debug", "--quiet"])
    assert not isinstance(e.value, FormatError)
    assert isinstance(e.value, BadOption if prog == "ggmlfmt" else CannotWrite)
    assert str(e.value) in line
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]  # nothing written


@pytest.mark.parametrize("prog", ["convert-model", "migrate-old-weights"])
@pytest.mark.parametrize(("option", "bad", "good"), [("--ctx", "0", "4096"), ("--eps", "nan", "1e-5")])
def test_an_override_out_of_range_is_the_request_not_the_input(prog, option, bad, good, tmp_path, capsys):
    main = CASES[prog][0]
    out = str(tmp_path / "out.gguf")
    base = ([str(_checkpoint(tmp_path)), "--outfile", out] if prog == "convert-model"
            else [str(DATA / "section12.ggml"), out])
    line = _one_error_line(prog, main, [*base, option, bad], capsys)
    assert option in line
    with pytest.raises(BadOption):
        main([*base, option, bad, "--debug", "--quiet"])
    if prog == "convert-model" and option == "--ctx":  # control: in range it writes (this params.json has norm_eps)
        assert main([*base, option, good, "--quiet"]) == 0 and (tmp_path / "out.gguf").is_file()


@pytest.mark.parametrize("prog", PROGS)
def test_an_os_error_is_one_line(prog, tmp_path, capsys):
    main, _, _, missing, _ = CASES[prog]
    argv = missing(tmp_path)
    line = _one_error_line(prog, main, argv, capsys)
    assert "nope" in line
    with pytest.raises(OSError):
        main([*argv, "--debug", "--quiet"])


class Bug(Exception):
    """Neither family nor OSError: stands for a bug of ours."""


@pytest.mark.parametrize("prog", PROGS)
def test_anything_else_is_a_bug_and_keeps_its_traceback(prog, tmp_path, capsys, monkeypatch):
    main, *_, writes = CASES[prog]
    argv = writes(tmp_path)
    assert main([*argv, "--quiet"]) == 0  # control: the run succeeds without the bug
    out = tmp_path / "out.bin"
    assert out.exists()
    out.unlink()

    def bug(*_: object) -> None:
        raise Bug("the rename that commits the output")

    monkeypatch.setattr(os, "replace", bug)  # every output is committed by one rename (ggmlfmt/writer.py)
    capsys.readouterr()
    with pytest.raises(Bug):
        main([*argv, "--quiet"])  # without --debug: not caught, not turned into a line
    assert "error:" not in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]  # no output, no temp file


@pytest.mark.parametrize("prog", PROGS)
def test_force_does_not_replace_a_pipe_with_a_file(prog, tmp_path, capsys):
    """A request that cannot be carried out: the rename would put a regular file where the pipe was."""
    main, *_, writes = CASES[prog]
    argv = [*writes(tmp_path), "--force"]
    out = tmp_path / "out.bin"
    out.write_bytes(b"a file")
    assert main([*argv, "--quiet"]) == 0  # control: --force replaces a regular file
    out.unlink()
    os.mkfifo(out)
    line = _one_error_line(prog, main, argv, capsys)
    assert line == f"{prog}: error: {out}: not a regular file (a device, pipe or socket); --force replaces only files\n"
    with pytest.raises(CannotWrite):
        main([*argv, "--debug", "--quiet"])
    assert stat.S_ISFIFO(out.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))) == ["out.bin"]


def test_an_os_error_without_a_file_name_is_given_one(capsys):
    """evict of a device: fdatasync says EINVAL and names nothing; the line names the file."""
    line = _one_error_line("ggmlfmt", ggmlfmt.cli.main, ["evict", os.devnull], capsys)
    assert line.startswith(f"ggmlfmt: error: {os.devnull}: ")


@pytest.mark.parametrize("command", ["residency", "load"])
def test_a_file_name_that_is_not_utf8_prints_as_its_bytes(tmp_path, command):
    """stdout strict UTF-8 (a user's UTF-8 locale): residency printed the name with a UnicodeEncodeError, load
    read /proc/self/smaps as UTF-8 with a UnicodeDecodeError; both are ValueErrors that reached the runner."""
    path = os.fsdecode(os.fsencode(tmp_path) + b"/\xff.ggjt")
    shutil.copyfile(DATA / "section12.ggjt", path)
    r = subprocess.run([sys.executable, "-m", "ggmlfmt.cli", command, path], capture_output=True, timeout=60,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert (r.returncode, r.stderr) == (0, b"")
    assert os.fsencode(path) in r.stdout
