"""Load options: how `reader.load` brings a file's bytes into memory (map + advice, prefault, lock, huge pages, pread).

Everything here works on any file, model or not. Python's mmap and os modules cover madvise and
preadv; mlock comes from `ggmlfmt.tools.libc`. What only an option needs is imported when that option is
used (threads for pread, `resource` for mlock's error message), so the default load pays for none
of it, and a system lacking a facility fails only the option that needs it, naming the facility.
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ggmlfmt.errors import BadOption, Truncated

Advice = Literal["normal", "sequential", "random", "willneed"]
ADVICE: dict[str, str] = {  # option value -> mmap constant, looked up when used (Windows' mmap has none)
    "normal": "MADV_NORMAL",
    "sequential": "MADV_SEQUENTIAL",  # aggressive readahead, pages dropped soon after use
    "random": "MADV_RANDOM",  # no readahead: every fault reads just its page
    "willneed": "MADV_WILLNEED",  # start reading the whole range now, asynchronously
}
MADV_POPULATE_READ = 22  # Linux 5.14+: fault every page in readable, like MAP_POPULATE, reporting errors
READ_CHUNK = 16 << 20  # bytes per pread in the parallel reader: large enough to keep the device queue full


class MemoryLockError(OSError):
    """mlock was refused, usually because RLIMIT_MEMLOCK is smaller than the file."""


def _madvise(m: mmap.mmap, constant: str, option: str) -> None:
    """m.madvise(mmap.<constant>).

    Raises:
        OSError: ENOSYS naming the option and the constant where this system's mmap lacks it; or the kernel refused.
    """
    value = getattr(mmap, constant, None)
    if value is None or not hasattr(m, "madvise"):
        raise OSError(errno.ENOSYS, f"{option} needs madvise({constant}), which this system lacks")
    m.madvise(value)


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
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)  # MAP_SHARED, PROT_READ
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # MAP_PRIVATE, PROT_READ | PROT_WRITE


def prefault(m: mmap.mmap) -> None:
    """Fault every page of the map in now, readable (MADV_POPULATE_READ, Linux 5.14+).

    Unlike MAP_POPULATE it runs after the other advice, reports I/O errors, and never copies
    pages of a copy-on-write map (MAP_POPULATE write-faults private writable maps).

    Raises:
        OSError: the kernel could not read a page (EIO), or is older than 5.14 (EINVAL); ENOSYS off Linux.
    """
    if not sys.platform.startswith("linux"):  # 22 means something else, or nothing, elsewhere
        raise OSError(errno.ENOSYS, "prefault needs madvise(MADV_POPULATE_READ), which only Linux 5.14+ has")
    m.madvise(MADV_POPULATE_READ)


def advise(m: mmap.mmap, advice: Advice) -> None:
    """madvise the whole map: the kernel's readahead policy for it.

    Raises:
        BadOption: unknown advice. OSError: the kernel refused; ENOSYS where madvise has no such advice.
    """
    if advice not in ADVICE:
        raise BadOption(f"unknown advice {advice!r}; expected one of {', '.join(ADVICE)}")
    _madvise(m, ADVICE[advice], f"advice={advice!r}")


def advise_hugepages(m: mmap.mmap) -> None:
    """MADV_HUGEPAGE: allow 2 MiB pages for this map (or anonymous buffer).

    Anonymous memory gets them whenever THP is "madvise" or "always"; file maps only where the
    filesystem caches large folios and the map is 2 MiB aligned (see docs/loading.md).

    Raises:
        OSError: the kernel refused (EINVAL: built without transparent huge pages); ENOSYS off Linux.
    """
    _madvise(m, "MADV_HUGEPAGE", "hugepages")


def _memlock_limit() -> str:
    """RLIMIT_MEMLOCK's soft limit, readable ("unknown" where there is no resource module)."""
    try:
        import resource  # only when mlock was refused: Windows has no resource module
    except ImportError:
        return "an unknown amount"
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft:,} bytes"


def lock(data: np.ndarray) -> None:
    """mlock the pages under `data`: fault them all in and keep them in memory until unmapped.

    Raises:
        MemoryLockError: the kernel refused; says how large the lock was and what RLIMIT_MEMLOCK allows.
        OSError: ENOSYS where the C library has no mlock.
    """
    from ggmlfmt.tools import libc

    try:
        libc.call("mlock", data.ctypes.data, data.nbytes)
    except OSError as e:
        if e.errno == errno.ENOSYS:
            raise
        raise MemoryLockError(e.errno, f"mlock of {data.nbytes:,} bytes refused ({os.strerror(e.errno)}); "
                              f"RLIMIT_MEMLOCK allows {_memlock_limit()}: raise it (ulimit -l, systemd "
                              "LimitMEMLOCK=) or grant CAP_IPC_LOCK") from None


# ---------------------------------------------------------------------------------------------------------------
# Reading into anonymous memory


def anonymous(nbytes: int, *, hugepages: bool = False) -> mmap.mmap:
    """Zeroed private anonymous memory, page aligned, optionally advised to use 2 MiB pages.

    Raises:
        OSError: out of address space, or the kernel refused the advice.
    """
    private = getattr(mmap, "MAP_PRIVATE", None)  # Windows: anonymous memory is always private
    if private is None:
        m = mmap.mmap(-1, max(nbytes, 1))
    else:  # mmap's default for -1 is MAP_SHARED (shmem): not what a private buffer should be
        m = mmap.mmap(-1, max(nbytes, 1), flags=private | mmap.MAP_ANONYMOUS)
    if hugepages:
        advise_hugepages(m)  # before the first touch, so faults allocate 2 MiB at once
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
        Truncated: the file is shorter than buf. OSError: it cannot be read (ENOSYS: no preadv here).
    """
    from concurrent.futures import (
        ThreadPoolExecutor,  # only method="pread" needs threads
    )

    if not hasattr(os, "preadv"):
        raise OSError(errno.ENOSYS, "method='pread' needs os.preadv, which this system lacks")
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
        BadOption: data is not contiguous.
    """
    if not data.flags.c_contiguous:
        raise BadOption("touch needs a contiguous array")
    flat = data.reshape(-1).view(np.uint8)  # reshape(-1) of a contiguous array is a view
    if flat.size == 0:
        return 0
    return int(flat[::mmap.PAGESIZE].sum(dtype=np.uint64)) + int(flat[-1])


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
            BadOption: names the offending option.
        """
        if self.method not in ("mmap", "pread"):
            raise BadOption(f"unknown method {self.method!r}; expected 'mmap' or 'pread'")
        if self.advice is not None and self.advice not in ADVICE:
            raise BadOption(f"unknown advice {self.advice!r}; expected one of {', '.join(ADVICE)}")
        if self.threads < 0 or (self.threads and self.method != "pread"):
            raise BadOption(f"threads={self.threads}: a count >= 0, and only with method='pread'")
        if self.method == "pread" and (self.prefault or self.advice):
            raise BadOption("prefault and advice apply to a file map; method='pread' reads everything up front")
        if self.lock and self.method == "mmap" and mode == "c":
            raise BadOption("lock with mode 'c' would copy every page of the file (mlock write-faults private maps)")

    def check_system(self) -> None:
        """Refuse, before anything is mapped or read, an option this system has no facility for.

        Raises:
            OSError: ENOSYS naming the option and the missing call.
        """
        from ggmlfmt.tools import libc

        if self.lock and not libc.available("mlock"):
            raise OSError(errno.ENOSYS, "lock needs mlock, which this system's C library lacks")


def open_data(path: str | os.PathLike[str], mode: Literal["r", "c"], options: LoadOptions) -> np.ndarray:
    """The whole file as a uint8 array brought in as `options` say: a map (advised) or a private read.

    Raises:
        BadOption: a meaningless combination. Truncated: empty file. MemoryLockError.
        OSError: I/O, or ENOSYS naming a facility an option needs and this system lacks.
    """
    options.check(mode)
    options.check_system()
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
