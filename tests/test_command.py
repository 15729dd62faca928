"""The shared runner (ggmlfmt/command.py): project errors become one line, anything else is a bug."""

from __future__ import annotations

import argparse

import pytest

from ggmlfmt.command import run
from ggmlfmt.errors import (
    BadLayout,
    BadMagic,
    BadOption,
    BadValue,
    CannotWrite,
    FormatError,
    IncompleteWrite,
    RequestError,
    Truncated,
    UnsupportedVersion,
)

ARGS = argparse.Namespace(debug=False, quiet=True, verbose=False, rusage=False)
INPUT_KINDS = [BadMagic, UnsupportedVersion, Truncated, BadValue, BadLayout]
REQUEST_KINDS = [BadOption, CannotWrite, IncompleteWrite]


@pytest.mark.parametrize("kind", REQUEST_KINDS)
def test_a_request_error_is_not_a_format_error(kind):
    # issue 16: CannotWrite used to be a FormatError; a request that cannot be carried out is its own family
    assert issubclass(kind, RequestError) and issubclass(kind, ValueError)
    assert not issubclass(kind, FormatError)
    with pytest.raises(RequestError):
        try:
            raise kind("x")
        except FormatError:  # control: an `except FormatError` must not swallow a request problem
            pytest.fail(f"{kind.__name__} was caught as a FormatError")


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_an_input_kind_is_a_format_error_and_not_a_request_error(kind):
    assert issubclass(kind, FormatError) and not issubclass(kind, RequestError)


@pytest.mark.parametrize("kind", INPUT_KINDS + REQUEST_KINDS)
def test_both_families_keep_the_one_line_shape_and_caps(kind):
    e = kind("x" * 100_000, field="f" * 10_000).with_path("in.bin", offset=0x10)
    text = str(e)
    assert text.startswith("in.bin: offset 0x10: fff")
    assert len(text) < 1000
    assert kind("found 3", path="a.bin", field="n").with_path("b.bin").path == "a.bin"  # the first name stays


@pytest.mark.parametrize("kind", INPUT_KINDS + REQUEST_KINDS)
def test_a_project_error_is_one_line_and_status_1(capsys, kind):
    def body(_: argparse.Namespace) -> int:
        raise kind("tensor 'w': cannot be stored\n  here").with_path("in.bin", offset=0x40)

    assert run("prog", ARGS, body) == 1
    assert capsys.readouterr().err == "prog: error: in.bin: offset 0x40: tensor 'w': cannot be stored here\n"


@pytest.mark.parametrize("error", [BadValue("bad"), CannotWrite("cannot"), OSError(5, "Input/output error")])
def test_debug_shows_the_traceback_of_a_project_error(error):
    def body(_: argparse.Namespace) -> int:
        raise error

    with pytest.raises(type(error)):
        run("prog", argparse.Namespace(**{**vars(ARGS), "debug": True}), body)


def test_an_os_error_is_one_line_and_status_1(capsys, tmp_path):
    def body(_: argparse.Namespace) -> int:
        open(tmp_path / "missing")  # noqa: SIM115 - the error is the point
        return 0

    assert run("prog", ARGS, body) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: No such file or directory" in err


@pytest.mark.parametrize("bug", [ValueError("a bare ValueError is a bug"), KeyError("k"), TypeError("t")])
def test_anything_else_is_a_bug_and_keeps_its_traceback(bug):
    def body(_: argparse.Namespace) -> int:
        raise bug

    with pytest.raises(type(bug)):
        run("prog", ARGS, body)


def test_every_writer_refuses_an_existing_output_with_the_same_message(tmp_path):
    import numpy as np

    from ggmlfmt.tools import copying
    from ggmlfmt.constants import FileVersion
    from ggmlfmt.layout import HParams, Vocab, plan
    from ggmlfmt.writer import FileWriter
    from migrate.migrate import check_destination

    src, out = tmp_path / "src.bin", tmp_path / "out.bin"
    src.write_bytes(b"input")
    out.write_bytes(b"keep me")
    empty = plan(FileVersion.GGJT_V1, HParams(1, 1, 1, 1, 1, 1, 0), Vocab((b"a",), np.zeros(1, np.float32)), [])
    attempts = [lambda: FileWriter(out, empty), lambda: copying.copy_file(src, out),
                lambda: check_destination(out, [src], overwrite=False)]
    messages = set()
    for attempt in attempts:
        with pytest.raises(FileExistsError) as e:
            attempt()
        messages.add(str(e.value))
    assert messages == {f"[Errno 17] output exists (use --force to replace it): '{out}'"}
    assert out.read_bytes() == b"keep me"
