"""Load options: how `reader.load` brings a file's bytes into memory (map + advice, prefault, lock, huge pages, pread).

Everything here works on any file, model or not. Python's mmap and os modules cover madvise and
preadv; mlock comes from `ggmlfmt.tools.libc`. What only an option needs is imported when that option is
used (libc for lock, threads for pread, `resource` for mlock's error message), so the default load pays for
none of it, and a system lacking a facility fails only the option that needs it, naming the facility.
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


def _file_size(path: str | os.PathLike[str], fd: int | None = None) -> int:
    """The file's size.

    Raises:
        Truncated: the file is empty (nothing to map or read). OSError: it cannot be opened.
    """
    size = os.fstat(fd).st_size if fd is not None else os.path.getsize(path)
    if size == 0:
        raise Truncated("empty file; expected a model header", path=path, offset=0, field="magic")
    return size


def map_with_advice(path: str | os.PathLike[str], mode: Literal["r", "c"], options: LoadOptions) -> mmap.mmap:
    """The whole file as a bare mmap.mmap, shared read-only ("r") or private copy-on-write ("c"), advised.

    (reader.map_file is the np.memmap of the default load path.) hugepages before any fault, so faults may
    map 2 MiB at once (where the filesystem caches large folios and the map is 2 MiB aligned, docs/loading.md);
    prefault last: MADV_POPULATE_READ (Linux 5.14+), which unlike MAP_POPULATE runs after the other advice,
    reports I/O errors, and never copies pages of a copy-on-write map (MAP_POPULATE write-faults private maps).

    Raises:
        Truncated: the file is empty. OSError: it cannot be opened or mapped; the kernel refused an advice
        (prefault: EIO reading a page, EINVAL before 5.14); ENOSYS naming an advice this system lacks.
    """
    with open(path, "rb") as f:  # ACCESS_READ: MAP_SHARED, PROT_READ; ACCESS_COPY: MAP_PRIVATE, PROT_READ|WRITE
        m = mmap.mmap(f.fileno(), _file_size(path, f.fileno()),
                      access=mmap.ACCESS_READ if mode == "r" else mmap.ACCESS_COPY)
    if options.advice:
        _madvise(m, ADVICE[options.advice], f"advice={options.advice!r}")
    if options.hugepages:
        _madvise(m, "MADV_HUGEPAGE", "hugepages")
    if options.prefault:
        if not sys.platform.startswith("linux"):  # 22 means something else, or nothing, elsewhere
            raise OSError(errno.ENOSYS, "prefault needs madvise(MADV_POPULATE_READ), which only Linux 5.14+ has")
        m.madvise(MADV_POPULATE_READ)
    return m


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
        try:
            import resource  # only when mlock was refused: Windows has no resource module

            soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
            limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft:,} bytes"
        except ImportError:
            limit = "an unknown amount"
        raise MemoryLockError(e.errno, f"mlock of {data.nbytes:,} bytes refused ({os.strerror(e.errno)}); "
                              f"RLIMIT_MEMLOCK allows {limit}: raise it (ulimit -l, systemd "
                              "LimitMEMLOCK=) or grant CAP_IPC_LOCK") from None


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


def read_file(path: str | os.PathLike[str], *, writable: bool = False, hugepages: bool = False,
              threads: int = 0, chunk: int = READ_CHUNK) -> np.ndarray:
    """The whole file read into anonymous memory (no file map) as a uint8 array, read-only unless writable.

    Zeroed private anonymous memory, page aligned, optionally advised to use 2 MiB pages before the first
    touch; filled with large preads on `threads` threads (0 picks min(8, 2 x CPUs): the reads wait on the
    device, not the CPU; preadv releases the GIL).

    Raises:
        Truncated: the file is empty or shrank while read. OSError: it cannot be read (ENOSYS: no preadv here),
        out of address space, or the kernel refused the advice.
    """
    from concurrent.futures import ThreadPoolExecutor  # only pread needs threads

    size = _file_size(path)
    if not hasattr(os, "preadv"):
        raise OSError(errno.ENOSYS, "method='pread' needs os.preadv, which this system lacks")
    private = getattr(mmap, "MAP_PRIVATE", None)  # Windows: anonymous memory is always private
    # mmap's default for -1 is MAP_SHARED (shmem): not what a private buffer should be
    mem = mmap.mmap(-1, size) if private is None else mmap.mmap(-1, size, flags=private | mmap.MAP_ANONYMOUS)
    if hugepages:
        _madvise(mem, "MADV_HUGEPAGE", "hugepages")  # before the first touch, so faults allocate 2 MiB at once
    buf = memoryview(mem)
    fd = os.open(path, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(max_workers=threads or min(8, 2 * (os.cpu_count() or 1))) as pool:
            jobs = [pool.submit(_pread_into, fd, buf[s : s + chunk], s, os.fspath(path)) for s in range(0, size, chunk)]
            for job in jobs:
                job.result()
    finally:
        os.close(fd)
    data = np.frombuffer(mem, np.uint8, count=size)
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
    return int(flat[:: mmap.PAGESIZE].sum(dtype=np.uint64)) + int(flat[-1])


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How `reader.load` brings a file into memory; the default is one plain read-only map."""

    prefault: bool = False  # fault every page in before returning
    advice: Advice | None = None  # madvise readahead policy of the map
    lock: bool = False  # mlock: fault in and pin
    hugepages: bool = False  # MADV_HUGEPAGE on the map or the anonymous buffer
    method: Literal["mmap", "pread"] = "mmap"  # "pread": read into anonymous memory, no file map
    threads: int = 0  # pread threads; 0 picks

    def check(self, mode: str) -> None:
        """Refuse combinations that mean nothing or defeat the point; then, before anything is mapped or read,
        an option this system has no facility for.

        Raises:
            BadOption: names the offending option. OSError: ENOSYS naming the option and the missing call.
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
        if self.lock:
            from ggmlfmt.tools import libc

            if not libc.available("mlock"):
                raise OSError(errno.ENOSYS, "lock needs mlock, which this system's C library lacks")


def open_data(path: str | os.PathLike[str], mode: Literal["r", "c"], options: LoadOptions) -> np.ndarray:
    """The whole file as a uint8 array brought in as `options` say: a map (advised) or a private read.

    Raises:
        BadOption: a meaningless combination. Truncated: empty file. MemoryLockError.
        OSError: I/O, or ENOSYS naming a facility an option needs and this system lacks.
    """
    options.check(mode)
    if options.method == "pread":
        data = read_file(path, writable=mode == "c", hugepages=options.hugepages, threads=options.threads)
    else:  # read-only exactly when the map is
        data = np.frombuffer(map_with_advice(path, mode, options), np.uint8)
    if options.lock:
        lock(data)
    return data
