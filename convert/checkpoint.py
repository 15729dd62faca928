"""Meta consolidated.NN.pth shards: find them, open them safely one at a time, read rows in bounded chunks.

The only module that imports torch, lazily (so `convert-model --help` and params checks stay fast).
Every load is `torch.load(path, map_location="cpu", weights_only=True, mmap=True)`: no code in a
pickle runs, and tensor data stays in the page cache (file-backed pages, not private memory).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ggmlfmt.errors import FormatError

from .pthcheck import check_storage_bounds

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SHARD_GLOB = "consolidated.*.pth"
_SHARD_NAME = re.compile(r"consolidated\.(\d{2,})\.pth")
MAX_SHARDS = 64  # Meta's largest LLaMA-1 has 8; more is a wrong directory, not a checkpoint
DIGEST_CHUNK = 1 << 20  # elements hashed per step
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")  # what a cast to f16/f32 makes sense from


def find_shards(model_dir: str | os.PathLike[str]) -> list[Path]:
    """consolidated.00.pth, .01, ... in `model_dir`: numbered from 00, without gaps.

    Raises:
        FormatError: no shard, a gap in the numbering, or too many shards.
    """
    model_dir = Path(model_dir)
    numbered: dict[int, Path] = {}
    for p in model_dir.glob(SHARD_GLOB):
        m = _SHARD_NAME.fullmatch(p.name)
        if m:
            numbered[int(m[1])] = p
    if not numbered:
        raise FormatError("no consolidated.00.pth found; expected Meta's layout (params.json, "
                          "consolidated.NN.pth)", path=str(model_dir))
    if max(numbered) >= MAX_SHARDS:  # checked first: the gap search below loops up to the highest number
        raise FormatError(f"expected at most {MAX_SHARDS} shards, found {numbered[max(numbered)].name}",
                          path=str(model_dir))
    missing = [f"consolidated.{k:02d}.pth" for k in range(max(numbered) + 1) if k not in numbered]
    if missing:
        raise FormatError(f"shards must be numbered from 00 without gaps; missing {', '.join(missing[:4])}",
                          path=str(model_dir))
    return [numbered[k] for k in range(len(numbered))]


def _torch() -> Any:
    import torch

    return torch


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Open one shard without running code from it: tensors are views of a private read-only map.

    Raises:
        FormatError: not a zip-format checkpoint, a pickle that would run code or load other objects,
            or not a mapping of names to tensors. OSError: the file cannot be read.
    """
    torch = _torch()
    path = os.fspath(path)
    check_storage_bounds(path)  # mmap=True trusts the pickle's sizes; see pthcheck
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except OSError:
        raise
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ValueError... for hostile files
        raise FormatError(f"refused to load: {_first_line(e)}", path=path) from None
    return _check_state_dict(obj, path)


def _first_line(e: BaseException) -> str:
    """The informative line of a torch.load error (weights_only's first paragraph is boilerplate)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed") and len(lines) > 1:
        return f"{type(e).__name__}: weights_only refused it: {lines[1][:300]}"
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def _check_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The loaded object as a name -> tensor dict.

    Raises:
        FormatError: it is not a mapping of str to tensors.
    """
    torch = _torch()
    if not isinstance(obj, Mapping):
        raise FormatError(f"expected a state dict (name -> tensor), found {type(obj).__name__}", path=path)
    for name, value in obj.items():
        if not isinstance(name, str):
            raise FormatError(f"expected tensor names, found key {name!r}", path=path)
        if not isinstance(value, torch.Tensor):
            raise FormatError(f"expected a tensor, found {type(value).__name__}", path=path, field=f"tensor {name!r}")
    return dict(obj)


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """What the checks need of one shard tensor, without keeping its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch.", e.g. "float16"
    digest: bytes | None  # sha256 of the data of 1-D tensors (replicated ones must agree across shards)


def describe_shard(path: str | os.PathLike[str]) -> list[TensorMeta]:
    """Names, shapes and dtypes of a shard in key order, plus a digest of each 1-D tensor.

    Raises:
        FormatError, OSError: as load_state_dict.
    """
    state = load_state_dict(path)
    return [_meta(name, t) for name, t in state.items()]


def _meta(name: str, t: torch.Tensor) -> TensorMeta:
    dtype = str(t.dtype).removeprefix("torch.")
    digest = _digest(t) if t.dim() == 1 else None  # a hash: the check need not hold two shards at once
    return TensorMeta(name, tuple(int(n) for n in t.shape), dtype, digest)


def _digest(t: torch.Tensor) -> bytes:
    """sha256 of a 1-D tensor's bytes, copied a bounded chunk at a time (its strides may be anything)."""
    h = hashlib.sha256()
    for start in range(0, t.numel(), DIGEST_CHUNK):
        h.update(t[start : start + DIGEST_CHUNK].contiguous().view(_torch().uint8).numpy())
    return h.digest()


_NP_TO_TORCH = {np.dtype("<f4"): "float32", np.dtype("<f2"): "float16"}


class Shard:
    """One loaded shard; rows of its tensors come out cast to the output dtype, a bounded chunk at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._tensors = load_state_dict(path)
        self._scratch: dict[Any, torch.Tensor] = {}  # output dtype -> reused cast buffer

    def rows(self, name: str, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
        """Rows [start, stop) of `name` (a 1-D tensor counts as one row), as a C-contiguous array of `dtype`.

        Without a cast this is a view of the mapped file. With one, it is a view of a buffer reused
        by the next call (one allocation per shard instead of one per chunk: the allocator would
        otherwise keep several chunks' worth of freed memory), so consume it before calling again.
        """
        t = self._tensors[name]
        chunk = (t.reshape(1, -1) if t.dim() == 1 else t)[start:stop]
        target = getattr(_torch(), _NP_TO_TORCH[np.dtype(dtype)])
        if chunk.dtype == target and chunk.is_contiguous():
            return chunk.numpy()
        out = self._buffer(target, chunk.numel()).view(chunk.shape)
        out.copy_(chunk)
        return out.numpy()

    def _buffer(self, dtype: Any, numel: int) -> torch.Tensor:
        buf = self._scratch.get(dtype)
        if buf is None or buf.numel() < numel:
            buf = self._scratch[dtype] = _torch().empty(numel, dtype=dtype)
        return buf[:numel]

    def close(self) -> None:
        """Drop the tensors and buffers (the map goes away once no array handed out refers to it)."""
        self._tensors = {}
        self._scratch = {}

    def __enter__(self) -> Shard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_row_chunks(n_rows: int, row_bytes: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """[start, stop) row ranges of about chunk_bytes each (at least one row)."""
    step = max(1, chunk_bytes // max(row_bytes, 1))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


# ------------------------------------------------------------------ building checkpoints (demo, tests, bench)


def save_shard(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray]) -> None:
    """Write arrays as a Meta-style shard (torch.save of an ordered name -> tensor dict, in the given order)."""
    torch = _torch()
    torch.save({name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in tensors.items()}, os.fspath(path))


def cat_shards(paths: list[Path], axes: Mapping[str, int | None]) -> dict[str, np.ndarray]:
    """torch.cat of each named tensor over the shards along its axis (None: shard 0's copy), as numpy copies.

    Loads every shard at once: for small checkpoints (demo, tests), not for real models.
    """
    torch = _torch()
    shards = [load_state_dict(p) for p in paths]
    out = {}
    for name, axis in axes.items():
        full = shards[0][name] if axis is None else torch.cat([s[name] for s in shards], dim=axis)
        if full.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            full = full.float()
        out[name] = full.numpy().copy()
    return out
