"""The conversion layer both commands share: a `Job` is everything a run will do, `write` does it, `describe` says it.

A command turns its arguments into a Job, then either writes it or describes it; the description is
rendered from the very job that would be written, so `--dry-run` never recomputes anything.

- `Job.plan` is the output file with every offset known (`layout.plan`, `gguf.plan_gguf` or
  `llama.model.plan_llama_gguf`); `Job.tensors[i]` says what plan tensor i is made from.
- `Job.sources(stack)` yields the engine's `unshard.Source` per plan tensor, lazily: the inputs are
  opened read-only (`unshard.open_read_only`) only when `write` iterates, and closed with `stack`. A
  builder usually passes `functools.partial(its_sources, what_it_opened, ...)`.
- The builder checks the destination once per run, `writer.refuse_existing(outfile, overwrite=...,
  inputs=...)`, as soon as it knows the inputs and before reading them; `write` passes `overwrite` on
  to the FileWriter, which never replaces an output the check refused.
- `Job.notes` (rounding, defaults taken, tensors left out) are logged by the command at their levels
  and listed by `describe`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ggmlfmt.constants import CHUNK_BYTES
from ggmlfmt.errors import CannotWrite
from ggmlfmt.layout import Plan, TensorInfo
from ggmlfmt.summary import column_width
from ggmlfmt.unshard import Source, write_tensors
from ggmlfmt.writer import FileWriter

Progress = Callable[[int], Any]
FORMATS = ("ggjt", "gguf")  # what both commands write
SUFFIXES = {"ggjt": ".bin", "gguf": ".gguf"}  # the name each gets, and the format a name implies (docs/format.md §8.1)


class Note(NamedTuple):
    """One thing the run says: logged at `level` (what changes values is a warning, so --quiet keeps it)."""

    level: int  # a logging level; DEBUG notes show in describe and with --verbose only
    label: str  # describe's first column: "scales", "default", ...
    text: str


def output_format(fmt: str | None, outfile: str | os.PathLike[str] | None) -> tuple[str, Note | None]:
    """The output format: `fmt` if given, else what the output's name implies (.bin: ggjt, .gguf: gguf), else gguf;
    and what the command says of a .bin name without `fmt` (once its inputs are checked, so an error stays one line).

    Raises:
        CannotWrite: an unknown format, or ggjt with an output name ending in .gguf.
    """
    name = os.fspath(outfile) if outfile is not None else ""
    implied = next((f for f, suffix in SUFFIXES.items() if name.endswith(suffix)), None)
    if fmt is None:
        said = f"{name}: a .bin name without --format writes the 2023 ggjt file (--format gguf for today's llama.cpp)"
        return implied or "gguf", Note(logging.INFO, "format", said) if implied == "ggjt" else None
    if fmt not in FORMATS:
        raise CannotWrite(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "ggjt" and implied == "gguf":
        raise CannotWrite(f"{name}: a .gguf output name with --format {fmt}; drop one of them")
    return fmt, None


@dataclass(frozen=True, slots=True)
class Tensor:
    """One output tensor: its planned place, and what it is made from (for describe)."""

    info: TensorInfo  # as planned: output name, type, ne, offset, nbytes
    source_name: str  # its name in the inputs
    source_type: str  # its type there: a GGMLType name or a checkpoint dtype
    shape: tuple[int, ...]  # the whole tensor, PyTorch order
    shard_shape: tuple[int, ...]  # what one input holds
    axis: int | None  # the PyTorch axis the inputs split it along; None: each holds all of it


@dataclass(frozen=True, slots=True)
class Job:
    """Everything known before the first byte is written (see the module docstring)."""

    outfile: Path
    plan: Plan
    tensors: tuple[Tensor, ...]  # tensors[i] describes plan.tensors[i]
    sources: Callable[[ExitStack], Iterable[Source]]  # one Source per plan tensor, inputs opened on the stack
    inputs: tuple[Path, ...]  # the files read
    overwrite: bool = False  # outfile may be replaced (checked when the job was built)
    notes: tuple[Note, ...] = ()
    heading: tuple[str, ...] = ()  # describe's first lines
    columns: tuple[str, ...] = ("type", "shape", "split")  # describe's table between name and offset (COLUMNS)
    skipped: tuple[str, ...] = ()  # input tensors left out of the output
    facts: Mapping[str, Any] = field(default_factory=dict)  # further JSON-able values for describe(as_json=True)


def write(job: Job, *, progress: Progress | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Write the planned file: temp file beside outfile, every tensor placed by the engine, coverage proven,
    fsync, rename.

    Raises:
        FileExistsError: outfile appeared although overwrite is False. CannotWrite: a source does not fit
            its planned place. OSError: disk full, an input unreadable, ... (the temp file is removed).
    """
    from ggmlfmt.tools import libc  # the planning's freed temporaries go back before the long write

    libc.release_free_memory()
    with ExitStack() as stack:
        w = stack.enter_context(FileWriter(job.outfile, job.plan, overwrite=job.overwrite, progress=progress))
        write_tensors(w, job.sources(stack), chunk_bytes=chunk_bytes)


def log_notes(job: Job, log: logging.Logger) -> None:
    """Say every note on `log` at its level."""
    for note in job.notes:
        log.log(note.level, "%s", note.text)


def _dims(dims: Iterable[int]) -> str:
    return "x".join(map(str, dims))


SPLIT_WORDS = {0: "rows", 1: "columns", None: "none"}
# describe's middle columns: key -> (heading, cell)
COLUMNS: dict[str, tuple[str, Callable[[Tensor], str]]] = {
    "type": ("type", lambda t: t.info.type.name),
    "types": ("type", lambda t: f"{t.source_type}->{t.info.type.name}"),
    "shape": ("shape", lambda t: _dims(t.shape)),
    "ne": ("ne", lambda t: _dims(t.info.ne)),
    "split": ("split", lambda t: SPLIT_WORDS[t.axis]),
    "axis": ("split", lambda t: "-" if t.axis is None else str(t.axis)),
    "source": ("source", lambda t: t.source_name),
}


def describe(job: Job, *, as_json: bool = False) -> str:
    """The job as text (heading, notes, one line per tensor, totals) or as JSON; nothing is recomputed."""
    if as_json:
        import json

        return json.dumps(_as_dict(job), indent=2)
    p = job.plan
    cells = [[t.info.name, *(COLUMNS[c][1](t) for c in job.columns), f"{t.info.offset:,}", f"{t.info.nbytes:,}"]
             for t in job.tensors]
    head = ["tensor", *(COLUMNS[c][0] for c in job.columns), "offset", "bytes"]
    widths = [column_width((row[i] for row in cells), len(head[i])) for i in range(len(head))]  # capped: names
    right = len(head) - 2  # offset and bytes are right-aligned
    table = ["  ".join(cell.rjust(w) if i >= right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [head, *cells]]
    lines = list(job.heading) + [f"{n.label:<7} {n.text}" for n in job.notes]
    if job.outfile.exists():
        lines.append(f"{'note':<7} {job.outfile} exists; " + ("it will be replaced" if job.overwrite else
                                                               "writing it needs --force"))
    skipped = f"; skipped {', '.join(job.skipped)}" if job.skipped else ""
    total = (f"total   {len(p.tensors)} tensors, {p.data_bytes:,} bytes of tensor data, file size {p.size:,} bytes "
             f"({p.size / (1 << 20):,.1f} MiB){skipped}")
    return "\n".join([*lines, "", *(line.rstrip() for line in table), "", total])


def _as_dict(job: Job) -> dict[str, Any]:
    return {
        "outfile": os.fspath(job.outfile),
        "outfile_exists": job.outfile.exists(),
        "format": str(job.plan.version),
        "inputs": [os.fspath(p) for p in job.inputs],
        **job.facts,
        "notes": [n.text for n in job.notes],
        "skipped": list(job.skipped),
        "tensors": [{"name": t.info.name, "checkpoint_name": t.source_name, "ne": list(t.info.ne),
                     "shape": list(t.shape), "type": t.info.type.name, "split_axis": t.axis,
                     "shard_shape": list(t.shard_shape), "source_dtype": t.source_type, "offset": t.info.offset,
                     "nbytes": t.info.nbytes} for t in job.tensors],
        "data_bytes": job.plan.data_bytes,
        "file_size": job.plan.size,
    }
