"""The C library calls Python's os and mmap modules lack (mincore, mlock, sync_file_range, malloc_trim), each optional.

Nothing is bound at import: ctypes loads the C library on the first call, and each symbol is
looked up when first used. A system without one of them (macOS has no sync_file_range, Windows
has none of them) can import everything; only a call that needs the missing symbol fails, with
OSError(ENOSYS) naming it. `start_writeback` is best-effort and does nothing there.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable
from functools import cache
from typing import Any

PAGE = mmap.PAGESIZE  # the kernel's page: the unit of mincore's flags, mlock, madvise and eviction

# sync_file_range(2) flags (Linux <linux/fs.h>)
SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE, SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4

# name -> ctypes argument types (by name, so ctypes is imported only when a call is made); all return int
_SIGNATURES: dict[str, tuple[str, ...]] = {
    "mincore": ("c_void_p", "c_size_t", "c_void_p"),
    "mlock": ("c_void_p", "c_size_t"),
    "sync_file_range": ("c_int", "c_int64", "c_int64", "c_uint"),
    "malloc_trim": ("c_size_t",),
}
_bound: dict[str, Callable[..., int] | None] = {}  # name -> bound function, or None where libc lacks it


@cache
def _library() -> Any:
    """The process's C library, or None where ctypes cannot open it (Windows has no CDLL(None))."""
    import ctypes  # here, not at import: most programs never make one of these calls

    try:
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):
        return None


def function(name: str) -> Callable[..., int] | None:
    """The C function `name` with its argument types set, or None where the C library lacks it."""
    if name not in _bound:
        import ctypes

        fn = getattr(_library(), name, None)  # None: no C library, or (ctypes' AttributeError) no such symbol
        if fn is not None:
            fn.argtypes = [getattr(ctypes, t) for t in _SIGNATURES[name]]
            fn.restype = ctypes.c_int
        _bound[name] = fn
    return _bound[name]


def available(name: str) -> bool:
    """Whether this system's C library has `name` (one of mincore, mlock, sync_file_range)."""
    return function(name) is not None


def missing(name: str) -> OSError:
    """The error for a call this system cannot make: ENOSYS, naming the call."""
    return OSError(errno.ENOSYS, f"{name}: not available on this system (its C library has no {name})")


def call(name: str, *args: int) -> None:
    """Call a C function that returns 0 on success and -1 with errno set on failure.

    Raises:
        OSError: ENOSYS naming the call where the C library lacks it; else the call's errno, named.
    """
    fn = function(name)
    if fn is None:
        raise missing(name)
    if fn(*args) != 0:
        import ctypes

        e = ctypes.get_errno()
        raise OSError(e, f"{name}: {os.strerror(e)}")


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages now, without waiting.

    Best effort: an error here resurfaces at the fsync that makes the file durable, and where
    there is no sync_file_range (macOS, Windows) this does nothing and the fsync does it all.
    """
    fn = function("sync_file_range")
    if fn is not None:
        fn(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def release_free_memory() -> None:
    """Give the heap's free memory back to the system (glibc's malloc_trim); best effort, a no-op elsewhere.

    Freed numpy temporaries and Python objects stay in the process (glibc raises its mmap threshold after
    a large free, and small objects share arenas) until this: after planning Llama 3's vocabulary it
    returns 23-27 MB of the 50-65 MB the planning left behind.
    """
    fn = function("malloc_trim")
    if fn is not None:
        fn(0)


def write_back(fd: int, offset: int, length: int, *, wait: bool) -> None:
    """Start writeback of a range (wait=False), or wait until it is on disk (wait=True).

    Raises:
        OSError: the kernel reported a write error; ENOSYS where there is no sync_file_range.
    """
    wait_flags = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WAIT_AFTER if wait else 0
    call("sync_file_range", fd, offset, length, SYNC_FILE_RANGE_WRITE | wait_flags)
