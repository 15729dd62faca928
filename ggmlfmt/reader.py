"""Open any 2023 llama.cpp model file, a GGUF file or a safetensors file, as one read-only numpy.memmap with zero-copy tensor views."""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ggmlfmt.blocks.dequant import dequantize
from ggmlfmt.constants import MAGICS, NOT_A_MODEL, FileVersion, GGMLType, GGUFVersion
from ggmlfmt.errors import BadMagic, CannotWrite, FormatError, Truncated, shown
from ggmlfmt.gguf import decode_gguf
from ggmlfmt.layout import HParams, Index, TensorInfo, Vocab, decode_index
from ggmlfmt.safetensors import decode_safetensors, looks_like_safetensors
if TYPE_CHECKING:
    import torch

    from ggmlfmt.tools.loadopts import Advice

log = logging.getLogger(__name__)


def tensor_view(data: np.ndarray, info: TensorInfo) -> np.ndarray:
    """A view of one tensor's bytes in `data` (the whole file), typed and shaped, no copy.

    F32/F16 views have the PyTorch-order shape; quantized views are arrays of block records
    (structured dtype, fields d / m / qh / qs) whose last axis counts blocks. The view is a plain
    numpy.ndarray (not a memmap) whose memory is `data`'s; it is writable exactly when `data` is.
    """
    # One plain ndarray over `data`'s buffer: slicing a memmap would make three memmap objects per
    # tensor, each running numpy.memmap.__array_finalize__ in Python (issue 12). Still a view.
    ne, block = info.ne, info.block
    shape = ne[::-1] if block.elements == 1 else (*ne[:0:-1], ne[0] // block.elements)
    return np.ndarray(shape, block.dtype, data, info.offset)


class _Lazy(Mapping[str, np.ndarray]):
    """name -> make(info), made on access (opening stays O(number of tensors)); kept after the first when `keep`."""

    def __init__(self, infos: Mapping[str, TensorInfo], make: Callable[[TensorInfo], np.ndarray], keep: bool) -> None:
        self._infos, self._make, self._cache = infos, make, {} if keep else None

    def __getitem__(self, name: str) -> np.ndarray:
        if self._cache is None:
            return self._make(self._infos[name])
        view = self._cache.get(name)
        if view is None:
            view = self._cache[name] = self._make(self._infos[name])
        return view

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)


def float_values(view: np.ndarray, info: TensorInfo, generation: int) -> np.ndarray:
    """A tensor view as float32 with its PyTorch-order shape: F32 views as they are, everything else converted
    (F16, BF16, the integer types and F64 cast; quantized tensors dequantized, docs/format.md §17.7).

    Raises:
        CannotWrite: the type has no dequantizer (docs/format.md §17.6); the message names the tensor.
    """
    if info.type == GGMLType.F32:
        return view
    try:
        return dequantize(view, info, generation)
    except CannotWrite as e:
        raise CannotWrite(e.msg, field=f"tensor {shown(info.name)}") from None


class Model:
    """An opened model file: its format, header, vocabulary, and tensors as views into `data` (the whole file)."""

    def __init__(self, path: str, index: Index, data: np.ndarray) -> None:
        self.path = path
        self.index = index
        self._data = data
        self.info: Mapping[str, TensorInfo] = index.by_name()
        views = _Lazy(self.info, lambda info: tensor_view(data, info), keep=True)
        self.tensors: Mapping[str, np.ndarray] = views
        # float32 values per tensor, whatever its type, computed on each access (not kept)
        generation = index.version.block_generation
        self.floats: Mapping[str, np.ndarray] = _Lazy(
            self.info, lambda info: float_values(views[info.name], info, generation), keep=False)

    @property
    def version(self) -> FileVersion | GGUFVersion | Any:
        """FileVersion for the 2023 formats, GGUFVersion (V2, V3) for GGUF, SafetensorsVersion; all have
        .magic_name, .number and .block_generation."""
        return self.index.version

    @property
    def format(self) -> str:
        """'ggml', 'ggmf', 'ggjt', 'gguf' or 'safetensors'."""
        return self.index.version.magic_name

    @property
    def hparams(self) -> HParams | None:
        """The 2023 header; None for GGUF, whose hyper-parameters are `metadata` keys."""
        return self.index.hparams

    @property
    def vocab(self) -> Vocab | None:
        """The 2023 vocabulary; None for GGUF, whose tokenizer.ggml.* arrays are in `metadata`."""
        return self.index.vocab

    @property
    def metadata(self) -> Mapping[str, Any]:
        """GGUF's key -> value pairs (arrays as numpy arrays or GGUFStrings), safetensors' __metadata__ strings;
        empty for the 2023 formats."""
        return self.index.metadata

    @property
    def data(self) -> np.ndarray:
        """The whole file as one 1-D uint8 array; every tensor view points into it.

        With the default options it is a numpy.memmap of the file; with a page-cache lever it is an
        array over a map of the file (an mmap.mmap), and with method="pread" over private anonymous
        memory holding a copy of the file. Read-only in mode "r"; writable in mode "c", where writes
        stay in this process and never reach the file. Empty after close(). Tensor views are plain
        ndarrays over this array's memory (np.shares_memory holds).
        """
        return self._data

    def torch_tensors(self, *, floats: bool = False) -> dict[str, torch.Tensor]:
        """Every tensor as a torch.Tensor sharing memory with a private (copy-on-write) map of the file.

        Reads share the page cache like the read-only map; a write to a tensor copies just that
        page into this process and never reaches the file. F32/F16 (and GGUF's BF16 and integer
        types) as themselves; quantized tensors come as uint8 tensors of their raw block bytes.
        With floats=True every tensor is float32 (`Model.floats`): F32 tensors still share the
        private map, the others are new memory holding their dequantized or widened values.

        Raises:
            ImportError: torch is not installed.
        """
        import torch  # only when asked: the core runs with numpy alone

        private = np.memmap(self.path, dtype=np.uint8, mode="c")
        out = {}
        generation = self.version.block_generation
        for name, info in self.info.items():
            view = tensor_view(private, info)
            if floats and info.type != GGMLType.F32:
                out[name] = torch.from_numpy(float_values(view, info, generation))
                continue
            if info.quantized:
                view = private[info.offset : info.offset + info.nbytes].reshape(*info.shape[:-1], info.row_bytes)
            if not view.flags.aligned:  # ggml/ggmf data is unaligned; torch needs aligned storage
                log.debug("copying unaligned tensor %s for torch", name)
                view = view.copy()
            out[name] = torch.from_numpy(view)
            if info.type == GGMLType.BF16:  # GGUF: numpy holds the raw bits; torch has the type itself
                out[name] = out[name].view(torch.bfloat16)
        return out

    def close(self) -> None:
        """Drop this object's reference to the map (views handed out keep it alive until freed)."""
        self.tensors = self.floats = _Lazy({}, tensor_view, keep=False)
        self._data = np.zeros(0, np.uint8)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Model {self.path!r} {self.version} {len(self.info)} tensors>"


def map_file(path: str | os.PathLike[str], mode: Literal["r", "c"] = "r") -> np.ndarray:
    """The whole file as a uint8 memmap (read-only shared, or copy-on-write private).

    Raises:
        Truncated: the file is empty (nothing can be mapped). OSError: it cannot be opened.
    """
    if os.path.getsize(path) == 0:
        raise Truncated("empty file; expected a model header", path=path, offset=0, field="magic")
    return np.memmap(path, dtype=np.uint8, mode=mode)


HEAD_READAHEAD = 1 << 20  # header + vocabulary are read in order; LLaMA's 32,000 tokens take ~0.45 MiB


def decode_any(buf: memoryview, path: str) -> Index:
    """Parse a GGUF file (b"GGUF" first), a 2023 one (its magic first), or a safetensors one (no magic:
    a name ending in .safetensors, or '{' after the 8-byte header length, docs/format.md §18).

    Raises:
        FormatError.
    """
    if buf[:4] == b"GGUF":
        return decode_gguf(buf, path=path)
    magic = int.from_bytes(buf[:4], "little")
    if magic not in MAGICS and magic not in NOT_A_MODEL:
        if looks_like_safetensors(buf, path):
            return decode_safetensors(buf, path=path)
        if len(buf) >= 4:  # (shorter: the 2023 decoder says the magic is cut off)
            raise BadMagic(f"expected a model file: the magic 'ggml', 'ggmf', 'ggjt' or 'GGUF', or a safetensors header; "
                           f"found {magic:#010x} ({bytes(buf[:4])!r})", path=path, offset=0, field="magic")
    return decode_index(buf, path=path)  # a 2023 magic, or a file named for what it is (LoRA, session), or too short


def decode_mapped(data: np.ndarray, path: str) -> Index:
    """Parse the index of a mapped file with readahead off, then give the map normal readahead back.

    Each tensor record sits right before that tensor's data, so on a cold file the kernel's
    readahead (8 MiB here) would read megabytes of weights for every 50-byte record: opening a
    1.9 GB file read most of it (~800 ms). With MADV_RANDOM only the record pages are read (~25 ms).

    Raises:
        FormatError.
    """
    m = data.base if isinstance(data.base, mmap.mmap) else None
    if m is None:  # not a file map (e.g. the pread mode's private buffer): nothing to advise
        return decode_any(memoryview(data), path)
    m.madvise(mmap.MADV_RANDOM)
    m.madvise(mmap.MADV_WILLNEED, 0, min(len(m), HEAD_READAHEAD))
    try:
        return decode_any(memoryview(data), path)
    finally:
        m.madvise(mmap.MADV_NORMAL)


def read_index(path: str | os.PathLike[str]) -> Index:
    """Parse a file's structure (header, vocabulary, tensor records) without keeping a map.

    Raises:
        FormatError, OSError.
    """
    return decode_mapped(map_file(path), os.fspath(path))


def load(
    path: str | os.PathLike[str],
    *,
    mode: Literal["r", "c"] = "r",
    prefault: bool = False,
    advice: Advice | None = None,
    lock: bool = False,
    hugepages: bool = False,
    method: Literal["mmap", "pread"] = "mmap",
    threads: int = 0,
) -> Model:
    """Open a ggml, ggmf, ggjt (v1-v3), GGUF (v2, v3) or safetensors file; tensors are views into one array of the
    whole file.

    By default that array is one memmap and nothing is copied. mode "r" maps read-only (writes
    to a view raise); "c" maps copy-on-write (writable views, changes stay in this process).
    The page-cache levers (docs/loading.md, measured there): prefault faults every page in now
    (MADV_POPULATE_READ); advice is the map's readahead policy ("normal", "sequential", "random",
    "willneed"); lock mlocks the data; hugepages asks for 2 MiB pages (MADV_HUGEPAGE); method
    "pread" reads the file into anonymous memory with large preads on `threads` threads (0 picks)
    instead of mapping it. With none of them: one np.memmap, exactly as without the options.

    Raises:
        FormatError: the file is malformed (names the file, offset, field, expected and found).
        BadOption: a meaningless option combination. MemoryLockError: mlock refused (RLIMIT_MEMLOCK).
        OSError: the file cannot be opened, mapped or read; ENOSYS: an option needs a call this system lacks.
    """
    options = (prefault, advice, lock, hugepages, method, threads)
    default = options == (False, None, False, False, "mmap", 0)
    if default:
        data = map_file(path, mode)
    else:
        from ggmlfmt.tools.loadopts import LoadOptions, open_data  # the page-cache levers: only when asked for

        data = open_data(path, mode, LoadOptions(*options))
    try:
        # The levers set their own readahead; only the default map is tuned for the sparse parse.
        if default:
            index = decode_mapped(data, os.fspath(path))
        else:
            index = decode_any(memoryview(data), os.fspath(path))
    except FormatError:
        del data  # the traceback keeps this frame alive; do not keep the file mapped with it
        raise
    return Model(os.fspath(path), index, data)
