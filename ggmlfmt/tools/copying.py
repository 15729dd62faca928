"""The page-cache-friendly copy behind `ggmlfmt copy`: the cache holds afterwards what it held before.

The data moves in the kernel where it can (copy_file_range) in COPY_CHUNK steps; each step is
written back (sync_file_range) and dropped from the cache, and so are the source pages that were
not cached before. Both files are then hashed the same way, and the copy commits through the
writer's temporary file (`ggmlfmt.writer.TempFile`: fsync, rename, fsync of the directory).
Needs mincore, sync_file_range and posix_fadvise (Linux); elsewhere it fails naming the missing call.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ggmlfmt.errors import Truncated
from ggmlfmt.tools import libc
from ggmlfmt.tools.cachestat import drop_uncached, residency
from ggmlfmt.writer import TempFile, copy_range, pwrite_all, refuse_existing

COPY_CHUNK = 64 << 20  # bytes per copy step; also the unit of writeback and eviction
_USERSPACE_CHUNK = 1 << 20  # bytes per pread/pwrite where the kernel cannot copy between the two files


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What `copy_file` did: bytes copied, the verified hash, and the source's cached share before."""

    nbytes: int
    sha256: str
    src_cached_before: float


def _copy_range(fin: int, fout: int, offset: int, length: int) -> None:
    """Copy [offset, offset + length) from fin to the same place in fout, in the kernel where it can, else
    through this process (copy_file_range refuses some pairs of filesystems: EXDEV, tmpfs).

    Raises:
        Truncated: the source ended early. OSError.
    """
    if copy_range(fin, offset, fout, offset, length):
        return
    end = offset + length
    while offset < end:
        data = os.pread(fin, min(_USERSPACE_CHUNK, end - offset), offset)
        if not data:
            raise Truncated(f"source ended while copying; {end - offset} bytes missing", offset=offset)
        offset += pwrite_all(fout, data, offset)


def _copy_data(fin: int, fout: int, size: int, keep_src: npt.NDArray[np.bool_], chunk: int) -> None:
    """Copy size bytes chunk by chunk, writing each back and dropping it and the newly read source pages.

    Writeback of one chunk overlaps the copy of the next; only then is the previous one waited on.

    Raises:
        OSError, Truncated.
    """
    previous: tuple[int, int] | None = None
    for offset in range(0, size, chunk):
        length = min(chunk, size - offset)
        _copy_range(fin, fout, offset, length)
        drop_uncached(fin, keep_src, offset, length)
        libc.write_back(fout, offset, length, wait=False)
        if previous:
            libc.write_back(fout, *previous, wait=True)
            drop_uncached(fout, None, *previous)
        previous = (offset, length)
    if previous:
        libc.write_back(fout, *previous, wait=True)
        drop_uncached(fout, None, *previous)


def _sha256(path: str | os.PathLike[str], keep: npt.NDArray[np.bool_] | None, chunk: int) -> str:
    """sha256 of a file, read in chunks, dropping the pages read unless `keep` says they were cached.

    Raises:
        OSError.
    """
    import hashlib  # only the copy hashes

    h = hashlib.sha256()
    buf = bytearray(chunk)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        offset = 0
        while n := os.preadv(fd, [buf], offset):
            h.update(memoryview(buf)[:n])
            drop_uncached(fd, keep, offset, n)
            offset += n
    finally:
        os.close(fd)
    return h.hexdigest()


def _verify(src: Path, copy: Path, keep_src: npt.NDArray[np.bool_], chunk: int) -> str:
    """Hash both files concurrently (each on its own thread); return the digest if they agree.

    Raises:
        OSError: EIO when the hashes differ.
    """
    from concurrent.futures import (
        ThreadPoolExecutor,  # only the copy runs two hashes at once
    )

    with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib and preadv release the GIL
        a = pool.submit(_sha256, src, keep_src, chunk)
        b = pool.submit(_sha256, copy, None, chunk)
        want, got = a.result(), b.result()
    if want != got:
        raise OSError(errno.EIO, f"copy verification failed: source sha256 {want}, copy {got}", str(copy))
    return want


def _check_system() -> None:
    """Refuse up front, naming the call, where a facility the copy needs is missing.

    Raises:
        OSError: ENOSYS.
    """
    for name in ("mincore", "sync_file_range"):
        if not libc.available(name):
            raise libc.missing(name)
    for name in ("posix_fadvise", "preadv"):
        if not hasattr(os, name):
            raise OSError(errno.ENOSYS, f"{name}: not available on this system")


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False,
              chunk: int = COPY_CHUNK) -> CopyResult:
    """Copy src to dst leaving the page cache as it was; verify by sha256; write via temp file + rename.

    Source pages that were not cached before are dropped after use, destination pages once on disk;
    the hash pass reads both files the same way.

    Raises:
        FileExistsError: dst exists and not overwrite. CannotWrite: src and dst are one file.
        OSError: I/O error, the copy's hash differs from the source's (EIO), or ENOSYS naming a missing call.
    """
    src, dst = Path(src), Path(dst)
    _check_system()
    refuse_existing(dst, overwrite=overwrite, inputs=[src], role="the source")
    before = residency(src)
    fin = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(fin).st_size
        os.posix_fadvise(fin, 0, 0, os.POSIX_FADV_NOREUSE)  # Linux 6.3+: do not promote these pages
        with TempFile(dst) as tmp:  # commit: fsync, rename over dst, fsync the directory
            os.fchmod(tmp.fd, stat.S_IMODE(os.fstat(fin).st_mode))
            _copy_data(fin, tmp.fd, size, before.pages, chunk)
            digest = _verify(src, tmp.tmp_path, before.pages, chunk)  # before the rename: never a bad copy in place
    except Truncated as e:
        raise e.with_path(src)  # the range copier knows offsets, not names
    finally:
        os.close(fin)
    return CopyResult(size, digest, before.fraction)
