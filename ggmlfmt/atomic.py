"""Write beside, then rename: the temp files every output of the project goes through.

A temp file is named `.<target>.ggmlfmt-<pid>-<random>.tmp` in the target's directory, so the
rename is atomic (same filesystem) and a file left by a killed process can be recognised and
removed by the next writer of the same target.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from .errors import CannotWrite

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.ggmlfmt-(?P<pid>\d+)-[0-9a-f]+\.tmp$")


def temp_path_beside(target: Path) -> Path:
    """A fresh temp name for `target`; callers record it before creating the file, so a signal
    arriving in between cannot leak a file nobody knows the name of."""
    return target.with_name(f".{target.name}.ggmlfmt-{os.getpid()}-{secrets.token_hex(6)}.tmp")


def refuse_existing(target: str | os.PathLike[str], *, overwrite: bool, inputs: Iterable[Path] = (),
                    role: str = "input") -> None:
    """Fail before any work when `target` is one of `inputs` (path, link or inode), exists, or is a directory.

    The one "output exists" check of every command and writer; `role` names the inputs in the message.

    Raises:
        IsADirectoryError. CannotWrite: target is an input. FileExistsError: it exists and not overwrite.
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
