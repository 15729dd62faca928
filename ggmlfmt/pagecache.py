"""The kernel's page-cache levers: residency (mincore), eviction, advice, locking, huge pages, parallel reads, copy.

Everything here works on any file, model or not; `reader.load` applies the load options to a model
file. Linux semantics throughout (other systems lack mincore/fadvise details or MAP_POPULATE).
Python's os and mmap modules cover posix_fadvise, madvise and copy_file_range; libc is called
through ctypes only for what they lack: mincore, mlock and sync_file_range.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import resource
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from .atomic import create_exclusive, fsync_dir, refuse_existing, temp_path_beside
from .errors import CannotWrite, Truncated

PAGE = mmap.PAGESIZE
Advice = Literal["normal", "sequential", "random", "willneed"]
ADVICE: dict[str, int] = {
    "normal": mmap.MADV_NORMAL,
    "sequential": mmap.MADV_SEQUENTIAL,  # aggressive readahead, pages dropped soon after use
    "random": mmap.MADV_RANDOM,  # no readahead: every fault reads just its page
    "willneed": mmap.MADV_WILLNEED,  # start reading the whole range now, asynchronously
}
MADV_POPULATE_READ = 22  # Linux 5.14+: fault every page in readable, like MAP_POPULATE, reporting errors
READ_CHUNK = 16 << 20  # bytes per pread in the parallel reader: large enough to keep the device queue full
COPY_CHUNK = 64 << 20  # bytes per copy_file_range step; also the unit of writeback and eviction
_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


class MemoryLockError(OSError):
    """mlock was refused, usually because RLIMIT_MEMLOCK is smaller than the file."""


# ---------------------------------------------------------------------------------------------------------------
# Residency and eviction


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


def _mincore(addr: int, length: int) -> npt.NDArray[np.bool_]:
    """mincore(2) of a mapped range: one resident flag per page.

    Raises:
        OSError: the kernel refused (for example ENOMEM: the range is not mapped).
    """
    vec = np.zeros((length + PAGE - 1) // PAGE, np.uint8)
    if _libc.mincore(addr, length, vec.ctypes.data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mincore: {os.strerror(e)}")
    return (vec & 1).astype(bool)


def _mincore_sees_page_cache(st: os.stat_result, path: str) -> bool:
    # Since Linux 5.0 mincore reports page-cache pages only to the file's owner or a process that
    # could write it; others see only pages their own page tables map (none, for a fresh map).
    return st.st_uid == os.geteuid() or os.geteuid() == 0 or os.access(path, os.W_OK)


def residency(path: str | os.PathLike[str]) -> Residency:
    """Which pages of the file are in the page cache now (maps it without touching a page).

    Raises:
        OSError: the file cannot be opened or mapped.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size == 0:
            return Residency(np.zeros(0, bool), 0, True)
        m = mmap.mmap(f.fileno(), st.st_size, prot=mmap.PROT_READ)
    view = np.frombuffer(m, np.uint8)
    try:
        pages = _mincore(view.ctypes.data, st.st_size)
    finally:
        del view  # release the buffer export, or the map cannot close
        m.close()
    return Residency(pages, st.st_size, _mincore_sees_page_cache(st, os.fspath(path)))


def evict(path: str | os.PathLike[str]) -> None:
    """Ask the kernel to drop the file's cached pages (no root needed).

    Dirty pages are written back first, since DONTNEED skips them. Pages some process has
    mapped, and files on tmpfs (the cache is their only copy), stay; check with `residency`.

    Raises:
        OSError: the file cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _drop_runs(fd: int, keep: npt.NDArray[np.bool_] | None, offset: int, length: int) -> None:
    """DONTNEED the pages of [offset, offset + length) whose `keep` flag is False (all if keep is None)."""
    if keep is None:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        return
    first, end = offset // PAGE, min((offset + length + PAGE - 1) // PAGE, len(keep))
    drop = ~keep[first:end]
    edges = np.flatnonzero(np.diff(np.concatenate([[False], drop, [False]]).astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2]):  # runs of pages that were not cached before we came
        os.posix_fadvise(fd, (first + int(a)) * PAGE, (int(b) - int(a)) * PAGE, os.POSIX_FADV_DONTNEED)


# ---------------------------------------------------------------------------------------------------------------
# Mapping with options


def mmap_file(path: str | os.PathLike[str], *, mode: Literal["r", "c"] = "r") -> mmap.mmap:
    """The whole file as a bare mmap.mmap, shared read-only ("r") or private copy-on-write ("c").

    (reader.map_file is the np.memmap of the default load path.)

    Raises:
        Truncated: the file is empty. OSError: it cannot be opened or mapped.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise Truncated("empty file; expected a model header", path=path, offset=0, field="magic")
        if mode == "r":
            return mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        return mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def prefault(m: mmap.mmap) -> None:
    """Fault every page of the map in now, readable (MADV_POPULATE_READ, Linux 5.14+).

    Unlike MAP_POPULATE it runs after the other advice, reports I/O errors, and never copies
    pages of a copy-on-write map (MAP_POPULATE write-faults private writable maps).

    Raises:
        OSError: the kernel could not read a page (EIO), or is older than 5.14 (EINVAL).
    """
    m.madvise(MADV_POPULATE_READ)


def advise(m: mmap.mmap, advice: Advice) -> None:
    """madvise the whole map: the kernel's readahead policy for it.

    Raises:
        CannotWrite: unknown advice. OSError: the kernel refused.
    """
    if advice not in ADVICE:
        raise CannotWrite(f"unknown advice {advice!r}; expected one of {', '.join(ADVICE)}")
    m.madvise(ADVICE[advice])


def advise_hugepages(m: mmap.mmap) -> None:
    """MADV_HUGEPAGE: allow 2 MiB pages for this map.

    Anonymous memory gets them whenever THP is "madvise" or "always"; file maps only where the
    filesystem caches large folios and the map is 2 MiB aligned (see docs/loading.md).

    Raises:
        OSError: the kernel refused (EINVAL: built without transparent huge pages).
    """
    m.madvise(mmap.MADV_HUGEPAGE)


def _memlock_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return soft


def lock(data: np.ndarray) -> None:
    """mlock the pages under `data`: fault them all in and keep them in memory until unmapped.

    Raises:
        MemoryLockError: the kernel refused; says how large the lock was and what RLIMIT_MEMLOCK allows.
    """
    if _libc.mlock(data.ctypes.data, data.nbytes) == 0:
        return
    e = ctypes.get_errno()
    limit = _memlock_limit()
    allowed = "unlimited" if limit == resource.RLIM_INFINITY else f"{limit:,} bytes"
    raise MemoryLockError(e, f"mlock of {data.nbytes:,} bytes refused ({os.strerror(e)}); RLIMIT_MEMLOCK allows "
                          f"{allowed}: raise it (ulimit -l, systemd LimitMEMLOCK=) or grant CAP_IPC_LOCK")


# ---------------------------------------------------------------------------------------------------------------
# Reading into anonymous memory


def anonymous(nbytes: int, *, hugepages: bool = False) -> mmap.mmap:
    """Zeroed private anonymous memory, page aligned, optionally advised to use 2 MiB pages.

    Raises:
        OSError: out of address space, or the kernel refused the advice.
    """
    m = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hugepages:
        m.madvise(mmap.MADV_HUGEPAGE)  # before the first touch, so faults allocate 2 MiB at once
    return m


def _pread_into(fd: int, buf: memoryview, offset: int, path: str) -> None:
    """Fill `buf` from the file at `offset`, looping over short reads.

    Raises:
        Truncated: the file ended first (it shrank while being read). OSError.
    """
    while buf:
        n = os.preadv(fd, [buf], offset)
        if n == 0:
            raise Truncated(f"file ended while reading; {len(buf)} bytes missing", path=path, offset=offset)
        buf, offset = buf[n:], offset + n


def read_into(path: str | os.PathLike[str], buf: memoryview, *, threads: int = 0, chunk: int = READ_CHUNK) -> None:
    """Read the first len(buf) bytes of the file into `buf` with large preads on `threads` threads.

    threads=0 picks min(8, 2 x CPUs): the reads wait on the device, not the CPU.

    Raises:
        Truncated: the file is shorter than buf. OSError: it cannot be read.
    """
    workers = threads or min(8, 2 * (os.cpu_count() or 1))
    fd = os.open(path, os.O_RDONLY)
    try:
        starts = range(0, len(buf), chunk)
        with ThreadPoolExecutor(max_workers=workers) as pool:  # preadv releases the GIL
            jobs = [pool.submit(_pread_into, fd, buf[s : s + chunk], s, os.fspath(path)) for s in starts]
            for job in jobs:
                job.result()
    finally:
        os.close(fd)


def read_file(path: str | os.PathLike[str], *, writable: bool = False, hugepages: bool = False,
              threads: int = 0) -> np.ndarray:
    """The whole file read into anonymous memory (no file map) as a uint8 array, read-only unless writable.

    Raises:
        Truncated: the file is empty or shrank while read. OSError: it cannot be read.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise Truncated("empty file; expected a model header", path=path, offset=0, field="magic")
    mem = anonymous(size, hugepages=hugepages)
    data = np.frombuffer(mem, np.uint8, count=size)
    read_into(path, memoryview(mem)[:size], threads=threads)
    data.flags.writeable = writable
    return data


def touch(data: np.ndarray) -> int:
    """Read one byte of every page under `data` (a contiguous array); returns their sum.

    Raises:
        ValueError: data is not contiguous.
    """
    if not data.flags.c_contiguous:
        raise ValueError("touch needs a contiguous array")
    flat = data.reshape(-1).view(np.uint8)  # reshape(-1) of a contiguous array is a view
    if flat.size == 0:
        return 0
    return int(flat[::PAGE].sum(dtype=np.uint64)) + int(flat[-1])


# ---------------------------------------------------------------------------------------------------------------
# The load options


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How `reader.load` brings a file into memory; the default is one plain read-only map."""

    prefault: bool = False  # fault every page in before returning
    advice: Advice | None = None  # madvise readahead policy of the map
    lock: bool = False  # mlock: fault in and pin
    hugepages: bool = False  # MADV_HUGEPAGE on the map or the anonymous buffer
    method: Literal["mmap", "pread"] = "mmap"  # "pread": read into anonymous memory, no file map
    threads: int = 0  # pread threads; 0 picks

    @property
    def is_default(self) -> bool:
        return self == LoadOptions()

    def check(self, mode: str) -> None:
        """Refuse combinations that mean nothing or defeat the point.

        Raises:
            CannotWrite: names the offending option.
        """
        if self.method not in ("mmap", "pread"):
            raise CannotWrite(f"unknown method {self.method!r}; expected 'mmap' or 'pread'")
        if self.advice is not None and self.advice not in ADVICE:
            raise CannotWrite(f"unknown advice {self.advice!r}; expected one of {', '.join(ADVICE)}")
        if self.threads < 0 or (self.threads and self.method != "pread"):
            raise CannotWrite(f"threads={self.threads}: a count >= 0, and only with method='pread'")
        if self.method == "pread" and (self.prefault or self.advice):
            raise CannotWrite("prefault and advice apply to a file map; method='pread' reads everything up front")
        if self.lock and self.method == "mmap" and mode == "c":
            raise CannotWrite("lock with mode 'c' would copy every page of the file (mlock write-faults private maps)")


def open_data(path: str | os.PathLike[str], mode: Literal["r", "c"], options: LoadOptions) -> np.ndarray:
    """The whole file as a uint8 array brought in as `options` say: a map (advised) or a private read.

    Raises:
        CannotWrite: a meaningless combination. Truncated: empty file. MemoryLockError. OSError.
    """
    options.check(mode)
    if options.method == "pread":
        data = read_file(path, writable=mode == "c", hugepages=options.hugepages, threads=options.threads)
    else:
        m = mmap_file(path, mode=mode)
        if options.advice:
            advise(m, options.advice)
        if options.hugepages:
            advise_hugepages(m)  # before any fault, so faults may map 2 MiB at once
        if options.prefault:
            prefault(m)
        data = np.frombuffer(m, np.uint8)  # read-only exactly when the map is
    if options.lock:
        lock(data)
    return data


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
    with open("/proc/self/smaps") as f:
        return _parse_smaps(f.read(), data.ctypes.data)


# ---------------------------------------------------------------------------------------------------------------
# Copying without wiping the page cache


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What `copy_file` did: bytes copied, the verified hash, and the source's cached share before."""

    nbytes: int
    sha256: str
    src_cached_before: float


def _write_back(fd: int, offset: int, length: int, *, wait: bool) -> None:
    """Start writeback of a range (wait=False), or wait until it is on disk (wait=True).

    Raises:
        OSError: the kernel reported a write error.
    """
    flags = (_SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER) if wait \
        else _SYNC_FILE_RANGE_WRITE
    if _libc.sync_file_range(fd, offset, length, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"sync_file_range: {os.strerror(e)}")


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages now, without waiting (best effort:
    an error here resurfaces at the fsync that makes the file durable)."""
    _libc.sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _copy_range(fin: int, fout: int, offset: int, length: int) -> None:
    """Copy [offset, offset + length) from fin to the same place in fout, in the kernel where it can.

    Raises:
        Truncated: the source ended early. OSError.
    """
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(fin, fout, length - done, offset + done, offset + done)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = _copy_range_userspace(fin, fout, offset + done, min(length - done, 1 << 20))
        if n == 0:
            raise Truncated(f"source ended while copying; {length - done} bytes missing", offset=offset + done)
        done += n


def _copy_range_userspace(fin: int, fout: int, offset: int, length: int) -> int:
    # copy_file_range refuses some pairs of filesystems (EXDEV before Linux 5.19 and for tmpfs)
    data = os.pread(fin, length, offset)
    view = memoryview(data)
    while view:
        n = os.pwrite(fout, view, offset + len(data) - len(view))
        view = view[n:]
    return len(data)


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
        _drop_runs(fin, keep_src, offset, length)
        _write_back(fout, offset, length, wait=False)
        if previous:
            _write_back(fout, *previous, wait=True)
            _drop_runs(fout, None, *previous)
        previous = (offset, length)
    if previous:
        _write_back(fout, *previous, wait=True)
        _drop_runs(fout, None, *previous)


def _sha256(path: str | os.PathLike[str], keep: npt.NDArray[np.bool_] | None, chunk: int) -> str:
    """sha256 of a file, read in chunks, dropping the pages read unless `keep` says they were cached.

    Raises:
        OSError.
    """
    h = hashlib.sha256()
    buf = bytearray(chunk)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        offset = 0
        while n := os.preadv(fd, [buf], offset):
            h.update(memoryview(buf)[:n])
            _drop_runs(fd, keep, offset, n)
            offset += n
    finally:
        os.close(fd)
    return h.hexdigest()


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False,
              chunk: int = COPY_CHUNK) -> CopyResult:
    """Copy src to dst leaving the page cache as it was; verify by sha256; write via temp file + rename.

    Source pages that were not cached before are dropped after use, destination pages once on disk;
    the hash pass reads both files the same way.

    Raises:
        FileExistsError: dst exists and not overwrite. CannotWrite: src and dst are one file.
        OSError: I/O error, or the copy's hash differs from the source's (EIO).
    """
    src, dst = Path(src), Path(dst)
    refuse_existing(dst, overwrite=overwrite, inputs=[src], role="the source")
    before = residency(src)
    fin = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(fin).st_size
        os.posix_fadvise(fin, 0, 0, os.POSIX_FADV_NOREUSE)  # Linux 6.3+: do not promote these pages
        tmp = temp_path_beside(dst)  # recorded before the file exists: cleanup below always knows it
        fout = -1
        try:
            fout = create_exclusive(tmp)
            os.fchmod(fout, stat.S_IMODE(os.fstat(fin).st_mode))
            _copy_data(fin, fout, size, before.pages, chunk)
            os.fsync(fout)
            digest = _verify(src, tmp, before.pages, chunk)
            os.replace(tmp, dst)  # atomic; a process that mapped the old dst keeps its pages
        except BaseException as e:
            if fout >= 0:
                os.close(fout)
            tmp.unlink(missing_ok=True)
            if isinstance(e, Truncated):
                e.with_path(src)  # the range copier knows offsets, not names
            raise
        os.close(fout)
    finally:
        os.close(fin)
    fsync_dir(dst.parent)
    return CopyResult(size, digest, before.fraction)


def _verify(src: Path, copy: Path, keep_src: npt.NDArray[np.bool_], chunk: int) -> str:
    """Hash both files concurrently (each on its own thread); return the digest if they agree.

    Raises:
        OSError: EIO when the hashes differ.
    """
    with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib and preadv release the GIL
        a = pool.submit(_sha256, src, keep_src, chunk)
        b = pool.submit(_sha256, copy, None, chunk)
        want, got = a.result(), b.result()
    if want != got:
        raise OSError(errno.EIO, f"copy verification failed: source sha256 {want}, copy {got}", str(copy))
    return want
