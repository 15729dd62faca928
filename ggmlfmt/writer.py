"""Write files through a temp file beside the target: fill a planned file in any order, prove it, fsync, rename.

Every output of the project commits through `TempFile` (fsync, rename, fsync of the directory). `FileWriter`
lays the whole planned file out first (header, vocabulary, every record header and its padding), then accepts
tensor data as rectangles of (rows x byte-columns) at their final places. Writing past the end of the file
leaves a hole that a later write fills; at the end the writer proves that every byte of every tensor was
written exactly once before the file gets its final name.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ggmlfmt.constants import FileVersion, GGMLType
from ggmlfmt.errors import CannotWrite, IncompleteWrite
from ggmlfmt.layout import HParams, Plan, TensorInfo, Vocab, plan

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)

# Writeback starts every this many bytes written: the disk writes while we copy, so commit's fsync
# finds little left to do, and the kernel does not throttle us for piling up dirty pages.
WRITEBACK_BYTES = 64 << 20
COPY_BYTES = 1 << 30  # largest single copy_file_range request (the kernel may copy less)
# Bytes per pwrite call. Large writes into a new file were the slow part of our conversions on the project's
# 2-core virtual machine (kernel 6.18, ext4). Copying 1.9 GB from a buffer into a new file, then fsync, 4
# interleaved rounds, min-max: 64 KiB calls 1.43-2.25 s, 1 MiB calls 2.81-8.12 s, 4 MiB calls 5.96-10.1 s,
# cat 1.26-1.49 s; convert-model on the 13B-shaped slice, f16 -> F16: 1.25-1.45 s against 1.93-2.80 s. The
# kernel probably gives a large write large page-cache folios, which are costly to get there; cat and
# copy_file_range fill the cache a page at a time. The extra calls cost ~75 ms of CPU per GB (overwriting
# cached pages: 172 ms per GB in 64 KiB calls, 98 ms in 64 MiB calls); the engine's gathered blocks are
# written on its helper thread, so there the cost overlaps the next block.
WRITE_SLICE = 64 << 10
# errno values meaning "this pair of files cannot be copied in the kernel" (other filesystem, old kernel, ...)
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF)

# numpy dtype -> type code for arrays handed to save(); anything else is refused (no silent casts)
NUMPY_TYPES = {np.dtype("<f4"): GGMLType.F32, np.dtype("<f2"): GGMLType.F16}

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.ggmlfmt-(?P<pid>\d+)-[0-9a-f]+\.tmp$")


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
        with contextlib.suppress(FileNotFoundError):  # another writer removed it first
            p.unlink()
            removed.append(p)
    return removed


class TempFile:
    """A new file beside `target` that becomes `target` on commit, or disappears on abort (FileWriter, the copy).

    Named `.<target>.ggmlfmt-<pid>-<random>.tmp` beside the target: the rename is atomic (same filesystem), and
    temps left by killed writers of the same target are recognised and removed when the next one picks its name.
    commit: fsync, close, rename over the target (a process that mapped the old file keeps its pages), fsync the
    directory. abort: close and remove the temp file; the target is never opened. As a context manager it
    creates on entry, commits on a normal exit and aborts on an exception (Ctrl-C too).
    """

    def __init__(self, target: Path) -> None:
        # Only the name here: nothing exists yet, so nothing can leak before the caller holds this object.
        self.target = target
        for stale in remove_stale_temps(target):
            log.info("removed %s, left by an interrupted run", stale)
        # os.urandom, as secrets.token_hex does, without importing secrets (and with it random and hashlib)
        self.tmp_path = target.with_name(f".{target.name}.ggmlfmt-{os.getpid()}-{os.urandom(6).hex()}.tmp")
        self.fd: int | None = None

    def create(self) -> int:
        """Create the file (its name was recorded first, so abort() finds it after any signal); returns its fd.

        (mkstemp returns the name only after creating the file: a Ctrl-C in between leaked it.) abort() may
        unlink a recorded name whose open never ran: it holds our pid, so such a file is a dead process's leftover.
        Mode 0o666 less the umask: the finished file gets the permissions any new file would.

        Raises:
            OSError: the file cannot be created (nothing is left behind).
        """
        try:
            self.fd = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
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
            os.replace(self.tmp_path, self.target)
        except BaseException:  # e.g. Ctrl-C during the fsync: still remove the temp file
            self.abort()
            raise
        with contextlib.suppress(OSError):  # best effort: some filesystems cannot fsync a directory
            fd = os.open(self.target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)  # makes the rename durable
            finally:
                os.close(fd)

    def abort(self) -> None:
        """Close and remove the temporary file; the target is untouched."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> TempFile:
        self.create()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:  # e.g. Ctrl-C during the fsync: still remove the temp file
            self.abort()
            raise


class Coverage:
    """Rectangles written into one tensor's (rows x row_bytes) region; proves an exact tiling."""

    __slots__ = ("n_rows", "row_bytes", "rects")

    def __init__(self, n_rows: int, row_bytes: int) -> None:
        self.n_rows = n_rows
        self.row_bytes = row_bytes
        self.rects: list[tuple[int, int, int, int]] = []  # row0, row1, col0, col1 (bytes)

    def add(self, row0: int, row1: int, col0: int, col1: int) -> None:
        if row1 > row0 and col1 > col0:
            self.rects.append((row0, row1, col0, col1))

    def problem(self) -> str | None:
        """None when the rectangles tile the region exactly; else what is wrong and where."""
        if not self.rects:
            return None if self.n_rows * self.row_bytes == 0 else "no bytes written"
        r = np.array(self.rects, dtype=np.int64)
        bands = np.unique(np.concatenate([r[:, 0], r[:, 1], [0, self.n_rows]]))
        for lo, hi in zip(bands[:-1], bands[1:]):  # rows [lo, hi) are covered by the same rectangles
            cols = r[(r[:, 0] <= lo) & (r[:, 1] >= hi)][:, 2:]
            cols = cols[np.argsort(cols[:, 0], kind="stable")]
            if len(cols) == 0:
                return f"rows {lo}..{hi - 1} never written"
            if cols[0, 0] > 0:
                return f"rows {lo}..{hi - 1}, bytes 0..{cols[0, 0] - 1} of each row never written"
            gaps = np.nonzero(cols[1:, 0] != cols[:-1, 1])[0]
            if len(gaps):
                j = gaps[0]
                a, b = cols[j, 1], cols[j + 1, 0]
                kind = "written twice" if b < a else "never written"
                return f"rows {lo}..{hi - 1}, bytes {min(a, b)}..{max(a, b) - 1} of each row {kind}"
            if cols[-1, 1] != self.row_bytes:
                return f"rows {lo}..{hi - 1}, bytes {cols[-1, 1]}..{self.row_bytes - 1} of each row never written"
        return None


def copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, nbytes: int) -> bool:
    """Copy bytes between files inside the kernel; False, with nothing copied, where the system cannot.

    Raises:
        OSError: a real I/O error, or the source ended early.
    """
    fn = getattr(os, "copy_file_range", None)  # Linux; absent on macOS and Windows
    done = 0
    while fn is not None and done < nbytes:
        try:
            n = fn(src_fd, dst_fd, min(nbytes - done, COPY_BYTES), src_offset + done, dst_offset + done)
        except OSError as e:
            if done == 0 and e.errno in _NO_COPY_RANGE:
                return False
            raise
        if n == 0:
            raise OSError(errno.EIO, f"copy_file_range: the source ended {nbytes - done} bytes before the "
                                     f"run at offset {src_offset} did")
        done += n
    return fn is not None


def pwrite_all(fd: int, data: bytes | memoryview | np.ndarray, offset: int) -> int:
    """Write all of `data` (C-contiguous) at `offset`, WRITE_SLICE bytes per call; the number of bytes written.

    Raises:
        OSError.
    """
    view = memoryview(data).cast("B")
    nbytes = view.nbytes
    while view:  # pwrite may also write less than asked (signals, some filesystems)
        n = os.pwrite(fd, view[:WRITE_SLICE], offset)
        view, offset = view[n:], offset + n
    return nbytes


def _free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class FileWriter(TempFile):
    """Fill a planned file in any order; on `commit`, check coverage, fsync and rename into place.

    The temporary file exists once this is constructed (`tmp_path`). Use as a context manager: leaving
    the block normally commits, an exception (including KeyboardInterrupt) removes the temporary file.
    The target is never opened for writing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        plan: Plan,
        *,
        overwrite: bool = False,
        check_space: bool = True,
        progress: Callable[[int], Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.plan = plan
        self._infos = plan.by_name()
        self._progress = progress
        self.written = 0
        refuse_existing(self.path, overwrite=overwrite)
        super().__init__(self.path)  # the name only (stale temps of the target removed): abort() finds what create() made
        if check_space:
            free = _free_bytes(self.path.parent)
            if free < plan.size:
                raise OSError(errno.ENOSPC, f"not enough free space: the output needs {plan.size:,} bytes, "
                              f"{free:,} are free", str(self.path.parent))
        self._coverage = {t.name: Coverage(t.n_rows, t.row_bytes) for t in plan.tensors}
        self._unflushed = 0
        self._writeback_pool: ThreadPoolExecutor | None = None  # made once the file is past WRITEBACK_BYTES
        self._writeback_job: Future[None] | None = None  # the last start_writeback it was given
        try:
            self.create()
            self._pwrite(plan.prefix, 0)
            for info, head in zip(plan.tensors, plan.record_headers):
                self._pwrite(head, info.record_offset)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> FileWriter:
        return self  # created by the constructor

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        for at in range(0, view.nbytes, WRITEBACK_BYTES):  # in pieces, so writeback starts as the write goes
            self._dirty(pwrite_all(self.fd, view[at : at + WRITEBACK_BYTES], offset + at))

    def _dirty(self, nbytes: int) -> None:
        """Count bytes just written; every WRITEBACK_BYTES, start writing the file's dirty pages back, so the
        disk writes while we copy (unless the last such request is still running: it is then skipped).

        The request runs on a helper thread: sync_file_range allocates the blocks of the pages it writes
        (ext4's delayed allocation) and waits for room in the disk's queue, which took 0.33-0.46 s of the
        main thread in an 8B-shaped conversion of 2.9 GB; the copy goes on meanwhile on the other core.
        Measured (700 MB of 4 MiB pwrites into a new file): 1.8-2.4 s without writeback requests,
        0.26-0.31 s with them, fsync included.
        """
        self._unflushed += nbytes
        if self._unflushed < WRITEBACK_BYTES:
            return
        if self._writeback_job is not None and not self._writeback_job.done():
            return
        from ggmlfmt.tools import libc  # only a file past WRITEBACK_BYTES needs it

        if self._writeback_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writeback_pool = ThreadPoolExecutor(1, thread_name_prefix="ggmlfmt-writeback")
        self._unflushed = 0
        self._writeback_job = self._writeback_pool.submit(libc.start_writeback, self.fd)

    def _stop_writeback(self) -> None:
        """Wait for the writeback helper (it uses self.fd, which is about to be fsynced or closed) and end it."""
        if self._writeback_pool is not None:
            self._writeback_pool.shutdown(wait=True)
            self._writeback_pool = self._writeback_job = None

    def _place(self, name: str, row: int, n_rows: int, col_byte: int, width: int) -> tuple[TensorInfo, int]:
        """`name`'s record and the file offset of its rows [row, row+n_rows) x bytes [col_byte, col_byte+width).

        Raises: CannotWrite: they do not fit the tensor.
        """
        info = self._infos[name]
        if row < 0 or col_byte < 0 or row + n_rows > info.n_rows or col_byte + width > info.row_bytes:
            raise CannotWrite(f"tensor {name!r}: rows {row}..{row + n_rows - 1} x bytes {col_byte}..{col_byte + width - 1}"
                             f" do not fit its {info.n_rows} rows of {info.row_bytes} bytes")
        return info, info.offset + row * info.row_bytes + col_byte

    def _written(self, name: str, row: int, n_rows: int, col_byte: int, width: int) -> None:
        """Record a rectangle as written: for the coverage proof, the byte count and the progress callback."""
        self._coverage[name].add(row, row + n_rows, col_byte, col_byte + width)
        self.written += n_rows * width
        if self._progress:
            self._progress(n_rows * width)

    def write_region(self, name: str, data: np.ndarray | bytes | memoryview, *, row: int = 0, col_byte: int = 0,
                     n_rows: int | None = None) -> None:
        """Write a rectangle of `name`'s data: rows [row, row+n_rows) x bytes [col_byte, col_byte+w) of each row.

        `data` holds the rectangle row by row (C order); its width w is len(data) / n_rows, and
        n_rows defaults to data.shape[0] for a 2-D array, or to 1 for 1-D data / raw bytes.

        Raises:
            CannotWrite: the rectangle does not fit the tensor, or data is not contiguous.
        """
        if isinstance(data, np.ndarray):
            if n_rows is None:
                n_rows = data.shape[0] if data.ndim >= 2 else 1
            if not data.flags.c_contiguous:
                raise CannotWrite(f"tensor {name!r}: data must be C-contiguous")
        elif n_rows is None:
            n_rows = 1
        buf = memoryview(data).cast("B")
        if n_rows <= 0 or len(buf) % n_rows:
            raise CannotWrite(f"tensor {name!r}: {len(buf)} bytes do not split into {n_rows} rows")
        width = len(buf) // n_rows
        info, base = self._place(name, row, n_rows, col_byte, width)
        if width == info.row_bytes:  # whole rows are one contiguous run
            self._pwrite(buf, base)
        else:
            for r in range(n_rows):  # a column slice: one piece per row, each at its final place
                self._pwrite(buf[r * width : (r + 1) * width], base + r * info.row_bytes)
        self._written(name, row, n_rows, col_byte, width)

    def copy_rows(self, name: str, src_fd: int, src_offset: int, *, row: int, n_rows: int,
                  fallback: np.ndarray) -> None:
        """Copy whole rows [row, row+n_rows) of `name` from a run of bytes in another file (see copy_span)."""
        self.copy_span(name, src_fd, src_offset, row=row, col_byte=0, nbytes=n_rows * self._infos[name].row_bytes,
                       fallback=fallback, n_rows=n_rows)

    def copy_span(self, name: str, src_fd: int, src_offset: int, *, row: int, col_byte: int, nbytes: int,
                  fallback: np.ndarray, n_rows: int = 1) -> None:
        """Copy `nbytes` from another file to one run of `name`: whole rows, or a piece of one row.

        The bytes move inside the kernel (copy_file_range) where it can; elsewhere they are written
        from `fallback`, a view of the same bytes (e.g. a read-only map of the source).

        Raises:
            CannotWrite: the run does not fit the tensor or is not contiguous in it. OSError.
        """
        width = nbytes // n_rows if n_rows > 0 else 0
        info, dst = self._place(name, row, n_rows, col_byte, width)
        if n_rows <= 0 or nbytes % n_rows or (n_rows > 1 and width != info.row_bytes):
            raise CannotWrite(f"tensor {name!r}: {nbytes} bytes at row {row}, byte {col_byte} are not a run of its "
                             f"{info.n_rows} rows of {info.row_bytes} bytes")
        if memoryview(fallback).nbytes != nbytes:
            raise CannotWrite(f"tensor {name!r}: the fallback view holds {memoryview(fallback).nbytes} bytes, "
                             f"expected {nbytes}")
        for at in range(0, nbytes, WRITEBACK_BYTES):  # in pieces, so writeback starts as the copy goes
            n = min(WRITEBACK_BYTES, nbytes - at)
            if not copy_range(src_fd, src_offset + at, self.fd, dst + at, n):
                flat = memoryview(np.ascontiguousarray(fallback)).cast("B")
                self._pwrite(flat[at:], dst + at)
                break
            self._dirty(n)
        self._written(name, row, n_rows, col_byte, width)

    def write_tensor(self, name: str, array: np.ndarray | bytes | memoryview) -> None:
        """Write a whole tensor's data (its bytes in C order).

        Raises:
            CannotWrite: the size differs from the planned one.
        """
        info = self._infos[name]
        nbytes = memoryview(array).nbytes
        if nbytes != info.nbytes:
            raise CannotWrite(f"tensor {name!r}: planned {info.nbytes} bytes, got {nbytes}")
        if info.nbytes:
            self.write_region(name, np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array,
                              n_rows=info.n_rows)

    def problems(self) -> list[str]:
        """Tensors whose data is not yet written exactly once, with what is wrong."""
        return [f"tensor {name!r}: {p}" for name, cov in self._coverage.items() if (p := cov.problem())]

    def commit(self) -> None:
        """Check every byte was written once, flush to disk, rename over the target.

        Raises:
            IncompleteWrite: some tensor data was never written or written twice (the temp file is removed).
        """
        problems = self.problems()
        if problems:
            self.abort()
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise IncompleteWrite(problems[0] + more, path=str(self.path))
        os.ftruncate(self.fd, self.plan.size)  # a no-op unless the last tensor is empty
        self._stop_writeback()
        super().commit()  # fsync, rename over the target, fsync the directory

    def abort(self) -> None:
        """Remove the temporary file (after the writeback helper, if any, has let go of it)."""
        self._stop_writeback()
        super().abort()


def save(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    *,
    hparams: HParams,
    vocab: Vocab,
    version: FileVersion = FileVersion.GGJT_V1,
    overwrite: bool = True,
) -> Plan:
    """Write f32/f16 arrays (PyTorch-order shapes) as one aligned ggjt file; return its plan.

    Every offset is planned before the first byte; data goes to a temp file beside `path` that is
    renamed into place only when complete.

    Raises:
        CannotWrite: a dtype other than float32/float16, a 0-dim array, a bad name, or
            hparams.n_vocab not matching the vocabulary.
    """
    specs = []
    for name, arr in tensors.items():
        dtype = np.dtype(arr.dtype).newbyteorder("<")
        if dtype not in NUMPY_TYPES:
            raise CannotWrite(f"tensor {name!r}: dtype {arr.dtype} is not stored; cast to float32 or float16")
        if arr.ndim == 0:
            raise CannotWrite(f"tensor {name!r}: 0-dim arrays are not stored (the format needs 1 to 4 dims); "
                             "reshape to (1,)")
        specs.append(TensorInfo.from_shape(name, NUMPY_TYPES[dtype], arr.shape))
    layout = plan(version, hparams, vocab, specs)
    with FileWriter(path, layout, overwrite=overwrite) as w:
        for name, arr in tensors.items():
            w.write_tensor(name, np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")))
    return layout
