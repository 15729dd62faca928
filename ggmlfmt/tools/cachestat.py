"""Page-cache diagnostics: which pages of a file are cached (mincore), dropping them, and where an array lives (smaps).

Linux semantics throughout: mincore comes from `ggmlfmt.tools.libc` (ENOSYS naming it where the C library
lacks it), eviction is posix_fadvise(DONTNEED), and mappings are read from /proc/self/smaps.
Only the CLI, the copy and the benchmarks use this module; `import ggmlfmt` does not.
"""

from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ggmlfmt.tools import libc
from ggmlfmt.tools.libc import PAGE


@dataclass(frozen=True, slots=True)
class Residency:
    """Which pages of a file are in the page cache, as mincore saw them at one moment."""

    pages: npt.NDArray[np.bool_]  # one flag per PAGE bytes of the file
    file_size: int
    exact: bool  # False: mincore saw only this process's own mappings (file neither owned nor writable)

    @property
    def resident_bytes(self) -> int:
        n = int(np.count_nonzero(self.pages)) * PAGE
        if len(self.pages) and self.pages[-1]:  # the last page holds only the file's tail
            n -= len(self.pages) * PAGE - self.file_size
        return n

    @property
    def fraction(self) -> float:
        return self.resident_bytes / self.file_size if self.file_size else 1.0

    def of_ranges(self, offsets: npt.ArrayLike, sizes: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Fraction of the pages each byte range [offset, offset + size) touches that are resident."""
        off, n = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
        first, end = off // PAGE, (off + np.maximum(n, 1) - 1) // PAGE + 1
        cum = np.concatenate([[0], np.cumsum(self.pages, dtype=np.int64)])
        out = (cum[end] - cum[first]) / (end - first)
        return np.where(n > 0, out, 1.0)


def residency(path: str | os.PathLike[str]) -> Residency:
    """Which pages of the file are in the page cache now: mincore of a map of it, made without touching a page.

    Since Linux 5.0 mincore reports page-cache pages only to the file's owner or a process that could write
    it; others see only pages their own page tables map (none, for a fresh map): `exact` says which.

    Raises:
        OSError: the file cannot be opened or mapped, or the kernel refused; ENOSYS where there is no mincore.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size == 0:
            return Residency(np.zeros(0, bool), 0, True)
        m = mmap.mmap(f.fileno(), st.st_size, access=mmap.ACCESS_READ)
    view = np.frombuffer(m, np.uint8)
    vec = np.zeros((st.st_size + PAGE - 1) // PAGE, np.uint8)  # one flag byte per page; bit 0: resident
    try:
        libc.call("mincore", view.ctypes.data, st.st_size, vec.ctypes.data)
    finally:
        del view  # release the buffer export, or the map cannot close
        m.close()
    exact = st.st_uid == os.geteuid() or os.geteuid() == 0 or os.access(path, os.W_OK)
    return Residency((vec & 1).astype(bool), st.st_size, exact)


def drop(fd: int, offset: int = 0, length: int = 0) -> None:
    """posix_fadvise(DONTNEED): ask the kernel to drop the clean cached pages of a range (0 = to the end).

    Raises:
        OSError: ENOSYS where there is no posix_fadvise (macOS, Windows).
    """
    if not hasattr(os, "posix_fadvise"):
        raise OSError(errno.ENOSYS, "posix_fadvise: not available on this system")
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def evict(path: str | os.PathLike[str]) -> None:
    """Ask the kernel to drop the file's cached pages (no root needed).

    Dirty pages are written back first, since DONTNEED skips them. Pages some process has
    mapped, and files on tmpfs (the cache is their only copy), stay; check with `residency`.

    Raises:
        OSError: the file cannot be opened; ENOSYS where there is no posix_fadvise.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        drop(fd)
    except OSError as e:  # EINVAL from a device or a pipe: name the file in the one-line error
        e.filename = e.filename or os.fspath(path)
        raise
    finally:
        os.close(fd)


def drop_uncached(fd: int, keep: npt.NDArray[np.bool_] | None, offset: int, length: int) -> None:
    """DONTNEED the pages of [offset, offset + length) whose `keep` flag is False (all if keep is None).

    Raises:
        OSError: ENOSYS where there is no posix_fadvise.
    """
    if keep is None:
        drop(fd, offset, length)
        return
    first, end = offset // PAGE, min((offset + length + PAGE - 1) // PAGE, len(keep))
    dropped = ~keep[first:end]
    edges = np.flatnonzero(np.diff(np.concatenate([[False], dropped, [False]]).astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2]):  # runs of pages that were not cached before we came
        drop(fd, (first + int(a)) * PAGE, (int(b) - int(a)) * PAGE)


# ---------------------------------------------------------------------------------------------------------------
# Where an array's memory comes from


@dataclass(frozen=True, slots=True)
class MappingStats:
    """One line of /proc/self/smaps: the mapping holding an address, and what it uses (bytes)."""

    start: int
    end: int
    path: str | None  # the mapped file; None for anonymous memory
    rss: int
    anonymous: int  # private pages: copied, written or anonymous
    anon_huge: int  # anonymous memory in 2 MiB pages
    file_huge: int  # file pages mapped as 2 MiB pages (FilePmdMapped)
    locked: bool  # mlocked (VmFlags "lo"); smaps' "Locked:" is a proportional share, not this


_SMAPS_FIELDS = {"Rss": "rss", "Anonymous": "anonymous", "AnonHugePages": "anon_huge", "FilePmdMapped": "file_huge"}


def _parse_smaps(text: str, addr: int) -> MappingStats | None:
    """The entry of /proc/<pid>/smaps text whose range holds `addr`, or None."""
    found: dict[str, object] | None = None
    for line in text.splitlines():
        head = line.split(None, 5)
        if "-" in head[0] and not head[0].endswith(":"):  # a range line starts each entry
            if found is not None:
                break
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            if lo <= addr < hi:
                path = head[5] if len(head) > 5 and head[5].startswith("/") else None
                found = {"start": lo, "end": hi, "path": path, "locked": False,
                         **{f: 0 for f in _SMAPS_FIELDS.values()}}
        elif found is not None and head[0] == "VmFlags:":
            found["locked"] = "lo" in line.split()[1:]
        elif found is not None and head[0].rstrip(":") in _SMAPS_FIELDS:
            found[_SMAPS_FIELDS[head[0].rstrip(":")]] = int(head[1]) * 1024  # smaps counts kB
    return None if found is None else MappingStats(**found)  # type: ignore[arg-type]


def mapping_of(data: np.ndarray) -> MappingStats | None:
    """The mapping of this process that holds `data`'s first byte (Linux /proc/self/smaps).

    Raises:
        OSError: /proc is not available.
    """
    with open("/proc/self/smaps", "rb") as f:  # paths are bytes: any mapped file's name may not be UTF-8
        return _parse_smaps(os.fsdecode(f.read()), data.ctypes.data)


