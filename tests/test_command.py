"""The shared runner (ggmlfmt/command.py): project errors become one line, anything else is a bug."""

from __future__ import annotations

import argparse

import pytest

from ggmlfmt.command import run
from ggmlfmt.errors import CannotWrite, FormatError

ARGS = argparse.Namespace(debug=False, quiet=True, verbose=False, rusage=False)


def test_cannot_write_is_a_format_error_and_a_value_error():
    assert issubclass(CannotWrite, FormatError) and issubclass(CannotWrite, ValueError)


def test_a_project_error_is_one_line_and_status_1(capsys):
    def body(_: argparse.Namespace) -> int:
        raise CannotWrite("tensor 'w': cannot be stored\n  here").with_path("in.bin", offset=0x40)

    assert run("prog", ARGS, body) == 1
    assert capsys.readouterr().err == "prog: error: in.bin: offset 0x40: tensor 'w': cannot be stored here\n"


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
