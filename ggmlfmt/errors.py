"""The two exception families: a bad input file (FormatError kinds) and a request that cannot be carried out.

A problem in an input file is a FormatError kind (BadMagic, UnsupportedVersion, Truncated, BadValue,
BadLayout). A request that cannot be carried out (an option or argument that means nothing here, a model or
value the chosen output cannot hold, a destination that is an input, a file committed before every planned
byte was written) is a RequestError kind (BadOption, CannotWrite, IncompleteWrite), which is not a
FormatError. Both say where (path, offset, field) in one short line, and both are ValueErrors. The commands'
runner (ggmlfmt/command.py) turns them and OSError into one line on stderr; anything else is a bug.
"""

from __future__ import annotations

import os
from typing import TypeVar

EXCERPT_BYTES = 16  # bytes of a bad region a message shows (as hex): the message stays one short line
EXCERPT_CHARS = 80  # characters of a name or key from a file a message shows
# What an error of either family shows of its field and its text, whatever a caller put in them: a name read
# from a file (up to 4,096 bytes) quoted with !r instead of shown() still gives a short line.
FIELD_CHARS = 160
MESSAGE_CHARS = 600


def excerpt(data: bytes | memoryview) -> str:
    """Hex of at most EXCERPT_BYTES bytes of `data`, and how many there are in all when more.

    Only those bytes are copied (pass a memoryview of a region of any size). Every message that
    quotes bytes from a file goes through here.
    """
    head = bytes(data[:EXCERPT_BYTES]).hex()
    return head if len(data) <= EXCERPT_BYTES else f"{head}... ({len(data)} bytes)"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown(text: str, limit: int = EXCERPT_CHARS) -> str:
    """repr() of a name or key from a file, cut to `limit` characters first (the repr of the cut part only)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


E = TypeVar("E", bound="LocatedError")


class LocatedError(ValueError):
    """One short line: the file, offset and field when known, then what was expected and what was found.

    The base of both families; raise a kind of FormatError or RequestError, never this.
    """

    def __init__(
        self,
        msg: str,
        *,
        path: str | os.PathLike[str] | None = None,
        offset: int | None = None,
        field: str | None = None,
    ) -> None:
        self.msg = _cut(msg, MESSAGE_CHARS)
        self.path = None if path is None else os.fspath(path)
        self.offset = offset
        self.field = None if field is None else _cut(field, FIELD_CHARS)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [self.path, None if self.offset is None else f"offset {self.offset:#x}", self.field]
        return ": ".join([w for w in where if w] + [self.msg])

    def with_path(self: E, path: str | os.PathLike[str], *, offset: int | None = None) -> E:  # noqa: PYI019 (3.10)
        """Return this error with the file name (and offset) filled in (parsers see bytes, callers know names)."""
        if self.path is None:
            self.path = os.fspath(path)
        if self.offset is None:
            self.offset = offset
        self.args = (str(self),)
        return self


class FormatError(LocatedError):
    """A file is not what it claims to be: says where (file, offset, field), expected and found. Raise a kind."""


class BadMagic(FormatError):
    """The first four bytes are not a model magic we read."""


class UnsupportedVersion(FormatError):
    """A known magic with a version number we do not read."""


class Truncated(FormatError):
    """The file ends before a field or a tensor's data does."""


class BadValue(FormatError):
    """A field holds a value outside what the format allows (count, dim, type code, length, text, JSON value),
    or values that disagree with each other (a shape with its hyper-parameters, a vocabulary with its size)."""


class BadLayout(FormatError):
    """Tensor data is misaligned, overlaps, has non-zero padding, or names repeat; a tensor the model needs is
    missing, or one it must not have is present."""


class RequestError(LocatedError):
    """What was asked cannot be carried out; the input files are not at fault. Not a FormatError. Raise a kind."""


class BadOption(RequestError):
    """An option or argument that means nothing here, or a combination of them that means nothing."""


class CannotWrite(RequestError):
    """The chosen output cannot hold the model, a value or a spec; the destination is an input or not a file."""


class IncompleteWrite(RequestError):
    """Commit was asked before every planned data byte was written exactly once (the caller that filled the
    writer disagrees with the plan; never an input file's fault). The temporary file is removed."""
