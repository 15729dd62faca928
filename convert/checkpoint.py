"""The sources of a conversion: find Meta's consolidated.NN.pth shards and tokenizer, describe and check them.

As migrate/sources.py is to migrate.py: convert.py plans and writes what this module found and checked.

Shards are read by convert.pth (our zip reader and restricted unpickler, no torch): no code in a
pickle runs, and tensor data stays in the page cache (views of a read-only map of each file).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.pth import DTYPES, Checkpoint
from ggmlfmt.errors import BadLayout, BadValue

log = logging.getLogger(__name__)

SHARD_GLOB = "consolidated.*.pth"
_SHARD_NAME = re.compile(r"consolidated\.(\d{2,})\.pth")
MAX_SHARDS = 64  # Meta's largest LLaMA-1 has 8; more is a wrong directory, not a checkpoint
DIGEST_CHUNK = 1 << 20  # bytes hashed per step
TOKENIZER = "tokenizer.model"
FLOAT_DTYPES = tuple(DTYPES)  # every dtype convert.pth reads (its table); all cast to f16/f32


def is_hf_dir(model_dir: Path) -> bool:
    """A Hugging Face layout (convert.hf): config.json and no Meta params.json."""
    return (model_dir / "config.json").is_file() and not (model_dir / "params.json").exists()


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
        raise BadLayout("no consolidated.00.pth found; expected Meta's layout (params.json, "
                        "consolidated.NN.pth)", path=str(model_dir))
    if max(numbered) >= MAX_SHARDS:  # checked first: the gap search below loops up to the highest number
        raise BadValue(f"expected at most {MAX_SHARDS} shards, found {numbered[max(numbered)].name}",
                       path=str(model_dir))
    missing = [f"consolidated.{k:02d}.pth" for k in range(max(numbered) + 1) if k not in numbered]
    if missing:
        raise BadLayout(f"shards must be numbered from 00 without gaps; missing {', '.join(missing[:4])}",
                        path=str(model_dir))
    return [numbered[k] for k in range(len(numbered))]


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """What the checks need of one shard tensor, without keeping its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float16", "bfloat16" or "float32"
    digest: bytes | None  # sha256 of the data of 1-D tensors (replicated ones must agree across shards)


def describe_shard(ck: Checkpoint) -> list[TensorMeta]:
    """Names, shapes and dtypes of an opened shard in key order, plus a digest of each 1-D tensor."""
    return [_meta(ck, t.name) for t in ck.tensors.values()]


def _meta(ck: Checkpoint, name: str) -> TensorMeta:
    t = ck.tensors[name]
    digest = _digest(ck.array(name)) if len(t.shape) == 1 else None  # a hash: no need to hold two shards at once
    return TensorMeta(name, t.shape, t.dtype, digest)


def _digest(a: np.ndarray) -> bytes:
    """sha256 of a contiguous tensor's bytes, a bounded chunk at a time (the pages stay file-backed)."""
    h = hashlib.sha256()
    raw = a.reshape(-1).view(np.uint8)
    for start in range(0, raw.size, DIGEST_CHUNK):
        h.update(raw[start : start + DIGEST_CHUNK])
    return h.digest()


# ------------------------------------------------------------------ the tokenizer, and the shards against shard 0


def find_tokenizer(model_dir: Path, tokenizer: str | os.PathLike[str] | None) -> Path:
    """The tokenizer: `tokenizer` if given, else tokenizer.model in MODEL_DIR, else in its parent (Meta's layout).

    Raises:
        FileNotFoundError: none of those exists.
    """
    if tokenizer is not None:
        return Path(tokenizer)
    for candidate in (model_dir / TOKENIZER, model_dir.parent / TOKENIZER):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(errno.ENOENT, f"no {TOKENIZER} here or in the parent directory (use --vocab PATH)",
                            str(model_dir / TOKENIZER))


def check_shards(shards: list[Checkpoint]) -> list[TensorMeta]:
    """Shard 0's tensors in key order, after checking every opened shard (convert.pth) against it.

    Each shard must hold the same names with the same shapes and dtypes, floating-point data, and
    byte-identical copies of the replicated 1-D tensors.

    Raises:
        FormatError: names the shard and the tensor.
    """
    first = describe_shard(shards[0])
    for meta in first:
        _check_tensor(meta, Path(shards[0].path))
    for ck in shards[1:]:
        _compare_shard(first, describe_shard(ck), Path(shards[0].path), Path(ck.path))
    return first


def skipped_name(name: str) -> bool:
    """rope.freqs is a training leftover every 2023 converter dropped (by this very suffix test)."""
    return name.endswith("freqs")


def _check_tensor(meta: TensorMeta, path: Path) -> None:
    """Raises: FormatError for a tensor that cannot go into the file."""
    if skipped_name(meta.name):
        return
    if meta.dtype not in FLOAT_DTYPES:
        raise BadValue(f"expected floating-point data ({', '.join(FLOAT_DTYPES)}), found {meta.dtype}",
                       path=str(path), field=f"tensor {meta.name!r}")
    if len(meta.shape) not in (1, 2):
        raise BadValue(f"expected 1 or 2 dimensions like every LLaMA tensor, found shape {list(meta.shape)}",
                       path=str(path), field=f"tensor {meta.name!r}")


def _compare_shard(first: list[TensorMeta], other: list[TensorMeta], first_path: Path, path: Path) -> None:
    """Raises: FormatError at the first difference between shard `path` and shard 0."""
    theirs = {m.name: m for m in other}
    ours = {m.name for m in first}
    for m in other:
        if m.name not in ours:
            raise BadLayout(f"tensor not in {first_path.name}", path=str(path), field=f"tensor {m.name!r}")
    for m in first:
        where = {"path": str(path), "field": f"tensor {m.name!r}"}
        t = theirs.get(m.name)
        if t is None:
            raise BadLayout(f"missing (present in {first_path.name})", **where)
        if t.shape != m.shape or t.dtype != m.dtype:
            raise BadLayout(f"{t.dtype} {list(t.shape)} differs from {m.dtype} {list(m.shape)} in "
                            f"{first_path.name}; every shard of a tensor has the same shape and dtype", **where)
        if m.digest is not None and t.digest != m.digest and not skipped_name(m.name):
            raise BadValue(f"differs from the copy in {first_path.name}; a replicated 1-D tensor must be "
                           "identical in every shard", **where)
