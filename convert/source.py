"""What every input of a conversion yields: the records both source modules fill and the one planner reads.

A source module (convert.shards: Meta's consolidated.NN.pth; convert.hf: Hugging Face safetensors or
pytorch_model*.bin) finds its files (`locate`: paths only), then opens and parses each file once
(`read`), checks the files against each other and against the hyper-parameters, and returns a
`ModelInput`: one `TensorEntry` per output tensor (its name, dtype, full shape, and where each part's
bytes lie), the vocabulary, and what the GGUF metadata or the ggjt header says. convert.convert turns
that into the plan and writes it; nothing there depends on which source it was.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert.pth import DTYPES, view_dtype  # noqa: F401  # view_dtype: convert.convert imports it from here
from ggmlfmt.job import Note
from ggmlfmt.layout import TensorInfo, Vocab
from ggmlfmt.llama.model import GGUFVocab, LlamaHParams, MetaKV
from ggmlfmt.llama.params import Params

COMPUTED = "computed"  # source_dtype of a tensor no file holds (the plan shows it)
FLOAT_DTYPES = tuple(DTYPES)  # every checkpoint dtype we convert (float16, bfloat16, float32)


@dataclass(frozen=True, slots=True)
class Request:
    """The options of one conversion, already checked against each other (convert.convert.plan_conversion)."""

    fmt: str  # "ggjt" or "gguf"
    outtype: str  # an OUTTYPES key; ggjt's "auto" already resolved to f16
    tokenizer: Path | None  # --vocab
    context_length: int | None
    rms_eps: float | None
    llama_release: str | None


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One output tensor, from the source that found it to the writer: the one tensor record of a conversion.

    parts: one (file index, byte offset of element 0) per part, in part order. heads > 0: a Hugging Face
    q/k weight whose rows go back to llama.cpp's order per head (convert.hf.unpermute_rows). data: the
    values of a computed tensor (no parts). info: its planned place in the output (set by the planner).
    """

    name: str  # its name in the input files
    shape: tuple[int, ...]  # full PyTorch shape
    shard_shape: tuple[int, ...]  # each part's shape
    axis: int | None  # PyTorch axis the parts split; None: replicated (taken from part 0) or one part
    source_dtype: str  # a FLOAT_DTYPES name, or COMPUTED
    parts: tuple[tuple[int, int], ...] = ()
    heads: int = 0
    data: np.ndarray | None = field(default=None, compare=False)
    info: TensorInfo | None = None
    meta_name: str = ""  # Meta's name when the files name it otherwise (Hugging Face); GGUF maps it (§13)

    @property
    def llama_name(self) -> str:
        """Meta's name: the ggjt name, and what ggmlfmt.llama.model maps to the GGUF name."""
        return self.meta_name or self.name


def computed(name: str, values: np.ndarray) -> TensorEntry:
    """A tensor no input holds (rope_freqs.weight), written as float32 from memory."""
    return TensorEntry(name, values.shape, values.shape, None, COMPUTED, data=values)


class Notes(list[Note]):
    """What planning has to say (ggmlfmt.job.Note: level, label, text): logged once planning succeeded, so that
    an error stays one line, and listed by --dry-run."""

    def info(self, label: str, text: str) -> None:
        self.append(Note(logging.INFO, label, text))

    def warning(self, label: str, text: str) -> None:
        self.append(Note(logging.WARNING, label, text))


@dataclass(frozen=True, slots=True)
class Found:
    """The files of an input, found (a Hugging Face index read) but not parsed."""

    model_dir: Path
    config: Path  # params.json or config.json
    vocab: Path
    files: tuple[Path, ...]  # the weight files TensorEntry.parts index, in part order
    index: Path | None = None  # a Hugging Face index (model.safetensors.index.json, ...)

    @property
    def inputs(self) -> list[Path]:
        return [self.config, self.vocab, *self.files]


@dataclass(frozen=True, slots=True)
class ModelInput:
    """Everything a source read and checked, in the terms the planner needs."""

    tensors: tuple[TensorEntry, ...]  # output order; info None
    skipped: tuple[str, ...]  # tensors of the files not written
    vocab: Vocab | GGUFVocab  # Vocab for ggjt
    params: Params | None = None  # ggjt: the header's source (Meta checkpoints only)
    hparams: LlamaHParams | None = None  # GGUF
    n_params: int | None = None  # general.size_label, llama.vocab_size (§14.2)
    extra: tuple[MetaKV, ...] = ()  # GGUF keys after the tokenizer's (a Hugging Face directory's, §19)


def file_stat(path: Path) -> tuple[int, int, int]:
    """What tells a file changed since it was parsed: inode, size, modification time."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns

