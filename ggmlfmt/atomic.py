"""Write beside, then rename: the temp files every output of the project goes through (`TempFile`).

A temp file is named `.<target>.ggmlfmt-<pid>-<random>.tmp` in the target's directory, so the
rename is atomic (same filesystem) and a file left by a killed process can be recognised and
removed by the next writer of the same target.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ggmlfmt.errors import CannotWrite

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.ggmlfmt-(?P<pid>\d+)-[0-9a-f]+\.tmp$")


def temp_path_beside(target: Path) -> Path:
    """A fresh temp name for `target`; callers record it before creating the file, so a signal
    arriving in between cannot leak a file nobody knows the name of."""
    # os.urandom, as secrets.token_hex does, without importing secrets (and with it random and hashlib)
    return target.with_name(f".{target.name}.ggmlfmt-{os.getpid()}-{os.urandom(6).hex()}.tmp")


def refuse_existing(target: str | os.PathLike[str], *, overwrite: bool, inputs: Iterable[Path] = (),
                    role: str = "input") -> None:
    """Fail before any work when `target` is one of `inputs` (path, link or inode), exists, or is a directory.

    The one "output exists" check of every command and writer; `role` names the inputs in the message.

    Raises:
        IsADirectoryError. CannotWrite: target is an input, or exists and is not a regular file.
        FileExistsError: it exists and not overwrite.
    """
    target = Path(target)
    if not target.exists():
        return
    for p in inputs:
        if p.exists() and os.path.samefile(target, p):
            raise CannotWrite(f"{target}: the output is the same file as {role} {p}; writing it would replace an "
                              "input, so choose another output name")
    if not overwrite:
        raise FileExistsError(errno.EEXIST, "output exists (use --force to replace it)", str(target))
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "output is a directory", str(target))
    if not target.is_file():  # the rename would put a regular file where a device node or a pipe was
        raise CannotWrite(f"{target}: not a regular file (a device, pipe or socket); --force replaces only files")


def create_exclusive(path: Path) -> int:
    """Create and open `path` for reading and writing; fail if it exists.

    Mode 0o666 less the umask: the finished file gets the permissions any new file would.

    Raises:
        FileExistsError, OSError.
    """
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove temp files of `target` left by writers that were killed (their pid no longer runs)."""
    removed = []
    for p in target.parent.glob(f".{target.name}.ggmlfmt-*.tmp"):
        m = _TMP_RE.match(p.name)
        if not m or m["name"] != target.name:
            continue
        try:
            os.kill(int(m["pid"]), 0)
            continue  # that writer is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort: some filesystems cannot fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class TempFile:
    """A new file beside `target` that becomes `target` on commit, or disappears on abort.

    create: the file, under a name chosen (and recorded) before it exists. commit: fsync, close,
    rename over the target (atomic; a process that mapped the old file keeps its pages), fsync the
    directory. abort: close and remove the temp file; the target is never opened. As a context
    manager it creates on entry, commits on a normal exit and aborts on an exception (Ctrl-C too).
    FileWriter and the page-cache-friendly copy both write through this.
    """

    def __init__(self, target: Path) -> None:
        # Only the name here: nothing exists yet, so nothing can leak before the caller holds this object.
        self.target = target
        self.path = temp_path_beside(target)
        self.fd: int | None = None

    def create(self) -> int:
        """Create the file (its name was recorded first, so abort() finds it after any signal); returns its fd.

        (mkstemp returns the name only after creating the file: a Ctrl-C in between leaked it.) abort() may
        unlink a recorded name whose open never ran: it holds our pid, so such a file is a dead process's leftover.

        Raises:
            OSError: the file cannot be created (nothing is left behind).
        """
        try:
            self.fd = create_exclusive(self.path)
        except BaseException:
            self.abort()
            raise
        return self.fd

    def commit(self) -> None:
        """Flush the file to disk, rename it over the target, and make the rename durable.

        Raises:
            OSError: the flush or the rename failed (the temp file is removed).
        """
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.replace(self.path, self.target)
        except BaseException:  # e.g. Ctrl-C during the fsync: still remove the temp file
            self.abort()
            raise
        fsync_dir(self.target.parent)

    def abort(self) -> None:
        """Close and remove the temporary file; the target is untouched."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> TempFile:
        self.create()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
