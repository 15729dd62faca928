"""The one exception family every reader, writer and command raises for bad input."""

from __future__ import annotations

import os

EXCERPT_BYTES = 16  # bytes of a bad region a message shows (as hex): the message stays one short line
EXCERPT_CHARS = 80  # characters of a name or key from a file a message shows
# What any FormatError shows of its field and its text, whatever a caller put in them: a name read from a
# file (up to 4,096 bytes) quoted with !r instead of shown() still gives a short line.
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


class FormatError(ValueError):
    """A file is not what it claims to be: says where (file, offset, field), expected and found."""

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

    def with_path(self, path: str | os.PathLike[str], *, offset: int | None = None) -> FormatError:
        """Return this error with the file name (and offset) filled in (parsers see bytes, callers know names)."""
        if self.path is None:
            self.path = os.fspath(path)
        if self.offset is None:
            self.offset = offset
        self.args = (str(self),)
        return self


class BadMagic(FormatError):
    """The first four bytes are not a model magic we read."""


class UnsupportedVersion(FormatError):
    """A known magic with a version number we do not read."""


class Truncated(FormatError):
    """The file ends before a field or a tensor's data does."""


class BadValue(FormatError):
    """A field holds a value outside what the format allows (count, dim, type code, length)."""


class BadLayout(FormatError):
    """Tensor data is misaligned, overlaps, has non-zero padding, or names repeat."""


class IncompleteWrite(FormatError):
    """A writer was closed before every byte of the planned data region was written exactly once."""


class CannotWrite(FormatError):
    """The input or the request cannot be written: a spec, value, option or destination no output can hold.

    Every writer and planner raises it (never a bare ValueError), so a command turns it into one line
    and a caller that knows the source file adds its name with `with_path`. It is a ValueError too.
    """
