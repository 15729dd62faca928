"""Meta's checkpoint files: find the consolidated.NN.pth shards and the tokenizer; check the opened shards
against shard 0 (convert.shards plans from what this module found and checked).

Shards are read by convert.pth (our zip reader and restricted unpickler, no torch): no code in a
pickle runs, and tensor data stays in the page cache (views of a read-only map of each file).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np

from convert.pth import Checkpoint, PthTensor
from ggmlfmt.errors import BadLayout, BadValue

SHARD_GLOB = "consolidated.*.pth"
_SHARD_NAME = re.compile(r"consolidated\.(\d{2,})\.pth")
MAX_SHARDS = 64  # Meta's largest LLaMA-1 has 8; more is a wrong directory, not a checkpoint
COMPARE_CHUNK = 1 << 20  # bytes compared per step
TOKENIZER = "tokenizer.model"


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


def check_shards(shards: list[Checkpoint]) -> list[PthTensor]:
    """Shard 0's tensors in key order, after checking every opened shard (convert.pth) against it.

    Each shard must hold the same names with the same shapes and dtypes, floating-point data, and
    byte-identical copies of the replicated 1-D tensors.

    Raises:
        FormatError: names the shard and the tensor.
    """
    first = shards[0]
    for t in first.tensors.values():  # (all floating-point: convert.pth knows no other storage)
        if len(t.shape) not in (1, 2) and not skipped_name(t.name):
            raise BadValue(f"expected 1 or 2 dimensions like every LLaMA tensor, found shape {list(t.shape)}",
                           path=first.path, field=f"tensor {t.name!r}")
    for ck in shards[1:]:
        _compare_shard(first, ck)
    return list(first.tensors.values())


def skipped_name(name: str) -> bool:
    """rope.freqs is a training leftover every 2023 converter dropped (by this very suffix test)."""
    return name.endswith("freqs")


def _compare_shard(first: Checkpoint, ck: Checkpoint) -> None:
    """Raises: FormatError at the first difference between shard `ck` and shard 0."""
    first_name = Path(first.path).name
    for name in ck.tensors:
        if name not in first.tensors:
            raise BadLayout(f"tensor not in {first_name}", path=ck.path, field=f"tensor {name!r}")
    for m in first.tensors.values():
        where = {"path": ck.path, "field": f"tensor {m.name!r}"}
        t = ck.tensors.get(m.name)
        if t is None:
            raise BadLayout(f"missing (present in {first_name})", **where)
        if t.shape != m.shape or t.dtype != m.dtype:
            raise BadLayout(f"{t.dtype} {list(t.shape)} differs from {m.dtype} {list(m.shape)} in "
                            f"{first_name}; every shard of a tensor has the same shape and dtype", **where)
        if len(m.shape) == 1 and not skipped_name(m.name) and not _same_bytes(first.array(m.name), ck.array(m.name)):
            raise BadValue(f"differs from the copy in {first_name}; a replicated 1-D tensor must be "
                           "identical in every shard", **where)


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two views of the same shape and dtype hold the same bytes, compared a bounded chunk at a time
    (the pages stay file-backed)."""
    a, b, n = a.view(np.uint8), b.view(np.uint8), COMPARE_CHUNK
    return all(np.array_equal(a[k : k + n], b[k : k + n]) for k in range(0, a.size, n))
