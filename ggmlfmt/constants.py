"""Every number of the 2023 llama.cpp file formats, named once (docs/format.md)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum

import numpy as np

# Magics are u32 little-endian whose value spells the name, so the bytes on disk are reversed.
MAGIC_GGML = 0x67676D6C  # "ggml", unversioned; bytes b"lmgg"
MAGIC_GGMF = 0x67676D66  # "ggmf"; bytes b"fmgg"
MAGIC_GGJT = 0x67676A74  # "ggjt"; bytes b"tjgg"
MAGIC_GGLA = 0x67676C61  # "ggla", a LoRA adapter, not a model
MAGIC_GGSN = 0x6767736E  # "ggsn", a session file, not a model
MAGIC_GGUF = 0x46554747  # "GGUF" read as u32 LE; the successor format, not read here

DEFAULT_ALIGNMENT = 32  # ggjt: every tensor's data starts at an absolute file offset multiple of this
MAX_DIMS = 4  # the record format allows more; no loader of the era accepted more than 4 (LLaMA uses 1-2)
MAX_NAME_LEN = 4096  # no real name comes close; bounds allocation before the file size check
MAX_TOKEN_LEN = 1 << 16  # a vocabulary entry longer than this is corruption, not a token

U32 = struct.Struct("<I")
I32 = struct.Struct("<i")
F32 = struct.Struct("<f")
HPARAMS = struct.Struct("<7i")  # n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype
RECORD = struct.Struct("<3i")  # n_dims, name_len, type; always "<", never native
TOKEN_LEN = I32
TOKEN_SCORE = F32


class FileVersion(Enum):
    """The five (magic, version) pairs the mid-2023 loader classified files into."""

    GGML = ("ggml", None)
    GGMF_V1 = ("ggmf", 1)
    GGJT_V1 = ("ggjt", 1)
    GGJT_V2 = ("ggjt", 2)
    GGJT_V3 = ("ggjt", 3)

    @property
    def magic_name(self) -> str:
        return self.value[0]

    @property
    def number(self) -> int | None:
        return self.value[1]

    @property
    def has_version_field(self) -> bool:
        return self is not FileVersion.GGML

    @property
    def has_scores(self) -> bool:
        return self is not FileVersion.GGML

    @property
    def aligned(self) -> bool:
        """Whether tensor data is padded to DEFAULT_ALIGNMENT (ggjt only)."""
        return self.magic_name == "ggjt"

    @property
    def block_generation(self) -> int:
        """Which quantized block layouts the file uses: 1 (ggml, ggmf, ggjt v1), 2 or 3."""
        return {FileVersion.GGJT_V2: 2, FileVersion.GGJT_V3: 3}.get(self, 1)

    def __str__(self) -> str:
        return self.magic_name if self.number is None else f"{self.magic_name} v{self.number}"


MAGICS = {MAGIC_GGML: "ggml", MAGIC_GGMF: "ggmf", MAGIC_GGJT: "ggjt"}
NOT_A_MODEL = {MAGIC_GGLA: "a LoRA adapter ('ggla')", MAGIC_GGSN: "a session file ('ggsn')", MAGIC_GGUF: "GGUF"}
VERSIONS = {(v.magic_name, v.number): v for v in FileVersion}
MAGIC_OF = {"ggml": MAGIC_GGML, "ggmf": MAGIC_GGMF, "ggjt": MAGIC_GGJT}


class GGMLType(IntEnum):
    """Per-tensor type codes as written in files (the C enum after #709); messages print .name."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q4_2 = 4  # 16-element blocks, 2023-04-18 .. 05-12 only
    Q4_3 = 5  # 16-element blocks, 2023-04-20 .. 04-28 only
    Q5_0 = 6  # also Q8_0 for one day (04-25/26); we read 6 as Q5_0, like every later loader
    Q5_1 = 7
    Q8_0 = 8


class FType(IntEnum):
    """Header 'ftype': the file's dominant type (2-D tensors); 1-D tensors are always F32."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q4_1_SOME_F16 = 4
    MOSTLY_Q4_2 = 5
    MOSTLY_Q4_3 = 6
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """One quantization block: how many elements it holds and how its bytes are laid out."""

    elements: int
    dtype: np.dtype  # numpy dtype of one block (a scalar dtype for F32/F16)
    nibble_order: str | None = None  # "interleaved" (v1) or "halves" (v2/v3) for 4/5-bit types

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize


def _block(elements: int, fields: list[tuple], nibbles: str | None) -> BlockLayout:
    return BlockLayout(elements, np.dtype(fields), nibbles)


_F32 = BlockLayout(1, np.dtype("<f4"))
_F16 = BlockLayout(1, np.dtype("<f2"))
_V1 = "interleaved"  # byte j holds elements 2j (low nibble) and 2j+1 (high nibble)
_V2 = "halves"  # byte j holds elements j (low nibble) and j+16 (high nibble)

# generation -> type -> layout. Generation 1 = ggml, ggmf, ggjt v1; 2 = ggjt v2; 3 = ggjt v3.
BLOCK_LAYOUTS: dict[int, dict[GGMLType, BlockLayout]] = {
    1: {
        GGMLType.F32: _F32,
        GGMLType.F16: _F16,
        GGMLType.Q4_0: _block(32, [("d", "<f4"), ("qs", "u1", 16)], _V1),  # 20 bytes
        GGMLType.Q4_1: _block(32, [("d", "<f4"), ("m", "<f4"), ("qs", "u1", 16)], _V1),  # 24
        GGMLType.Q4_2: _block(16, [("d", "<f2"), ("qs", "u1", 8)], _V1),  # 10
        GGMLType.Q4_3: _block(16, [("d", "<f2"), ("m", "<f2"), ("qs", "u1", 8)], _V1),  # 12
        GGMLType.Q5_0: _block(32, [("d", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)], _V1),  # 22
        GGMLType.Q5_1: _block(32, [("d", "<f2"), ("m", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)], _V1),  # 24
        GGMLType.Q8_0: _block(32, [("d", "<f4"), ("qs", "i1", 32)], None),  # 36
    },
    2: {
        GGMLType.F32: _F32,
        GGMLType.F16: _F16,
        GGMLType.Q4_0: _block(32, [("d", "<f4"), ("qs", "u1", 16)], _V2),  # 20
        GGMLType.Q4_1: _block(32, [("d", "<f4"), ("m", "<f4"), ("qs", "u1", 16)], _V2),  # 24
        GGMLType.Q5_0: _block(32, [("d", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)], _V2),  # 22
        GGMLType.Q5_1: _block(32, [("d", "<f2"), ("m", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)], _V2),  # 24
        GGMLType.Q8_0: _block(32, [("d", "<f4"), ("qs", "i1", 32)], None),  # 36
    },
    3: {
        GGMLType.F32: _F32,
        GGMLType.F16: _F16,
        GGMLType.Q4_0: _block(32, [("d", "<f2"), ("qs", "u1", 16)], _V2),  # 18
        GGMLType.Q4_1: _block(32, [("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)], _V2),  # 20
        GGMLType.Q5_0: _block(32, [("d", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)], _V2),  # 22
        GGMLType.Q5_1: _block(32, [("d", "<f2"), ("m", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)], _V2),  # 24
        GGMLType.Q8_0: _block(32, [("d", "<f2"), ("qs", "i1", 32)], None),  # 34
    },
}  # reader, writer and dequantizer all use this table; a new version or type is one more row

# Header ftype -> the type of 2-D tensors it promises (None: a mix, see FType.MOSTLY_Q4_1_SOME_F16).
FTYPE_2D_TYPE = {
    FType.ALL_F32: GGMLType.F32,
    FType.MOSTLY_F16: GGMLType.F16,
    FType.MOSTLY_Q4_0: GGMLType.Q4_0,
    FType.MOSTLY_Q4_1: GGMLType.Q4_1,
    FType.MOSTLY_Q4_1_SOME_F16: None,
    FType.MOSTLY_Q4_2: GGMLType.Q4_2,
    FType.MOSTLY_Q4_3: GGMLType.Q4_3,
    FType.MOSTLY_Q8_0: GGMLType.Q8_0,
    FType.MOSTLY_Q5_0: GGMLType.Q5_0,
    FType.MOSTLY_Q5_1: GGMLType.Q5_1,
}

# The multi-part table of the 2023 tools: n_embd -> number of parts (Meta shards).
N_PARTS_BY_DIM = {4096: 1, 5120: 2, 6656: 4, 8192: 8}

# Tuning of the vectorised vocabulary walk (layout._vocab_end), not format facts: the section is
# taken in chunks small enough that numpy's temporaries come from the heap (no fresh pages to fault).
VOCAB_CHUNK = (64 << 10) - 64  # bytes per chunk: its offset map (2 bytes each) stays under 128 KiB
VOCAB_STRIDE_LOG = 5  # inside a chunk, Python follows the chain 2**5 = 32 entries per step
VOCAB_VECTOR_MIN = 1024  # fewer entries: the plain loop is cheaper than numpy's per-call cost
VOCAB_MIN_PER_CHUNK = 64  # a chunk that holds fewer entries (long texts) hands over to the plain loop
