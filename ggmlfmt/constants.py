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
MAGIC_GGUF = 0x46554747  # "GGUF" read as u32 LE; bytes b"GGUF" (the successor format, docs/format.md §11)

CHUNK_BYTES = 4 << 20  # output rows gathered or cast per pwrite (convert, migrate): bounds the one private buffer
DEFAULT_ALIGNMENT = 32  # ggjt: every tensor's data starts at an absolute file offset multiple of this
MAX_DIMS = 4  # the record format allows more; no loader of the era accepted more than 4 (LLaMA uses 1-2)
MAX_NAME_LEN = 4096  # no real name comes close; bounds allocation before the file size check
MAX_TOKEN_LEN = 1 << 16  # a vocabulary entry longer than this is corruption, not a token
INT64_MAX = (1 << 63) - 1  # every product of a tensor's dims, in elements and in bytes, stays at or below this

I32_MAX = (1 << 31) - 1
U32 = struct.Struct("<I")
I32 = struct.Struct("<i")
F32 = struct.Struct("<f")
TOKEN_LEN = I32
TOKEN_SCORE = F32


@dataclass(frozen=True, slots=True)
class Field:
    """One fixed-size field of a record: its name, struct code (always little-endian), the values it may hold
    (lo..hi, inclusive) and the message for one outside them. The decoder, its checks and the planner all read it."""

    name: str
    code: str
    lo: int
    hi: int
    msg: str = "expected {lo}..{hi}, found {v}"

    def problem(self, v: int) -> str | None:
        return None if self.lo <= v <= self.hi else self.msg.format(lo=self.lo, hi=self.hi, v=v)


def first_problem(fields: tuple[Field, ...], values: tuple[int, ...]) -> tuple[int, str] | None:
    """(index, why) of the first value outside its field's bounds, else None."""
    for i, (f, v) in enumerate(zip(fields, values)):
        if not f.lo <= v <= f.hi:
            return i, f.problem(v)
    return None


def fields_struct(fields: tuple[Field, ...]) -> struct.Struct:
    return struct.Struct("<" + "".join(f.code for f in fields))


# A ggjt tensor record (docs/format.md §4): this head, then ne[n_dims] (each a DIM), the name, padding, data.
RECORD_FIELDS = (
    Field("n_dims", "i", 1, MAX_DIMS, "expected {lo}..{hi} dims, found {v}"),
    Field("name_len", "i", 1, MAX_NAME_LEN, "expected a name of {lo}..{hi} UTF-8 bytes, got {v}"),
    Field("type", "i", -(1 << 31), I32_MAX),  # any code; the block-layout table of the version decides
)
RECORD = fields_struct(RECORD_FIELDS)
DIM = Field("ne", "i", 0, I32_MAX, "expected a non-negative size, found {v}")


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
    # Codes 9 and up exist in GGUF files only (today's ggml_type enum, as gguf-py 0.19 lists it);
    # the 2023 formats refuse them because no generation table of theirs has a row for them.
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34  # 31-33 were Q4_0_4_4/4_8/8_8, removed from the enum (repacking moved into the runtime)
    TQ2_0 = 35  # 36-38 were IQ4_NL_4_4/4_8/8_8, removed likewise
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


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


# The seven hyper-parameters of the 2023 header (§2), in file order.
HPARAM_FIELDS = (
    *(Field(n, "i", 0, I32_MAX, "expected a non-negative value, found {v}")
      for n in ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot")),
    Field("ftype", "i", min(FType), max(FType),
          f"unknown file type {{v}}; expected {{lo}}..{{hi}} ({', '.join(f.name for f in FType)})"),
)
HPARAMS = fields_struct(HPARAM_FIELDS)


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

# ---------------------------------------------------------------- GGUF (docs/format.md §11)

GGUF_VERSIONS = (2, 3)  # GGUFVersion below; v1 (u32 counts, Aug 2023 only) is not read; v2 and v3 share one layout
GGUF_WRITE_VERSION = 3
GGUF_HEADER = struct.Struct("<IIQQ")  # magic, version, tensor_count, metadata_kv_count
GGUF_ALIGNMENT_KEY = "general.alignment"  # u32, a power of two; absent -> DEFAULT_ALIGNMENT (32)
GGUF_MAX_ALIGNMENT = 1 << 24  # 16 MiB: above any page size a loader aligns to; bounds the padding read on open
GGUF_MAX_NAME_LEN = 63  # llama.cpp's GGML_MAX_NAME (64) counts the NUL; the writer stays inside it
GGUF_MAX_ARRAY_DEPTH = 8  # arrays of arrays nest; deeper than this is corruption (and would recurse)
GGUF_MAX_NE = (1 << 63) - 1  # each dim must fit an int64_t in ggml
# A GGUF tensor info (§11.5): its name (a string, GGUF_NAME_LEN bytes), then these: n_dims, ne[n_dims]
# (each a GGUF_DIM), then GGUF_INFO_TAIL (the type code, whose table is the layouts', and the data offset).
GGUF_NAME_LEN = Field("name length", "Q", 1, MAX_NAME_LEN, "expected a length {lo}..{hi}, found {v}")  # the reader's
GGUF_N_DIMS = Field("n_dims", "I", 1, MAX_DIMS, "expected {lo}..{hi} dims, found {v}")
GGUF_DIM = Field("ne", "Q", 0, GGUF_MAX_NE, "expected a size below 2**63, found {v}")
GGUF_INFO_TAIL = struct.Struct("<IQ")  # type, offset
GGUF_BLOCK_GENERATION = 4  # BLOCK_LAYOUTS key of GGUF's table (generation 3's blocks + today's types)
U64 = struct.Struct("<Q")


class GGUFVersion(IntEnum):
    """The GGUF versions we read; quacks like FileVersion (magic_name, number, block_generation) for callers."""

    V2 = 2
    V3 = 3

    @property
    def magic_name(self) -> str:
        return "gguf"

    @property
    def number(self) -> int:
        return int(self)

    @property
    def block_generation(self) -> int:
        return GGUF_BLOCK_GENERATION

    @property
    def aligned(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"gguf v{int(self)}"


class GGUFValueType(IntEnum):
    """Metadata value type codes (u32 on disk)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7  # one byte, 0 or 1
    STRING = 8  # u64 byte length, then UTF-8 bytes
    ARRAY = 9  # u32 element type, u64 count, then the elements without type tags
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# fixed-size value types -> their little-endian numpy dtype (BOOL is checked to be 0/1 on read)
GGUF_SCALAR_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("u1"),
    GGUFValueType.INT8: np.dtype("i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
# struct codes spelled out: numpy's dtype.char for 64-bit ints is the platform's 'l'/'L', 4 bytes under "<"
GGUF_SCALAR_STRUCTS = {t: struct.Struct("<" + c) for t, c in zip(GGUF_SCALAR_DTYPES, "BbHhIifBQqd")}

# type -> (elements per block, bytes per block): gguf-py 0.19's GGML_QUANT_SIZES, for every GGUF type
GGUF_TYPE_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4), GGMLType.F16: (1, 2), GGMLType.Q4_0: (32, 18), GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22), GGMLType.Q5_1: (32, 24), GGMLType.Q8_0: (32, 34), GGMLType.Q8_1: (32, 40),
    GGMLType.Q2_K: (256, 84), GGMLType.Q3_K: (256, 110), GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176), GGMLType.Q6_K: (256, 210), GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66), GGMLType.IQ2_XS: (256, 74), GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50), GGMLType.IQ4_NL: (32, 18), GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82), GGMLType.IQ4_XS: (256, 136), GGMLType.I8: (1, 1), GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4), GGMLType.I64: (1, 8), GGMLType.F64: (1, 8), GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2), GGMLType.TQ1_0: (256, 54), GGMLType.TQ2_0: (256, 66), GGMLType.MXFP4: (32, 17),
    GGMLType.NVFP4: (64, 36), GGMLType.Q1_0: (128, 18),
}
# Scalar types we view as numbers; BF16 as its raw 16 bits (numpy has no bfloat16; dequantize widens it).
_GGUF_SCALARS = {GGMLType.I8: "i1", GGMLType.I16: "<i2", GGMLType.I32: "<i4", GGMLType.I64: "<i8",
                 GGMLType.F64: "<f8", GGMLType.BF16: "<u2"}


# GGUF's blocks beyond generation 3, field by field in file order (docs/format.md §17); the elements
# per block are GGUF_TYPE_SIZES' (256 for the K, IQ and TQ types, 32 for IQ4_NL and MXFP4, 64 for
# NVFP4). f2 = f16 scale, u1/i1 bytes, u2/u4 read whole. tests/test_gguf.py checks every size.
GGUF_BLOCK_FIELDS: dict[GGMLType, list[tuple]] = {
    GGMLType.Q2_K: [("scales", "u1", 16), ("qs", "u1", 64), ("d", "<f2"), ("dmin", "<f2")],  # 84
    GGMLType.Q3_K: [("hmask", "u1", 32), ("qs", "u1", 64), ("scales", "u1", 12), ("d", "<f2")],  # 110
    GGMLType.Q4_K: [("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qs", "u1", 128)],  # 144
    GGMLType.Q5_K: [("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)],  # 176
    GGMLType.Q6_K: [("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2")],  # 210
    GGMLType.Q8_K: [("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)],  # 292
    GGMLType.IQ4_NL: [("d", "<f2"), ("qs", "u1", 16)],  # 18, 32 elements
    GGMLType.IQ4_XS: [("d", "<f2"), ("scales_h", "<u2"), ("scales_l", "u1", 4), ("qs", "u1", 128)],  # 136
    GGMLType.TQ1_0: [("qs", "u1", 48), ("qh", "u1", 4), ("d", "<f2")],  # 54
    GGMLType.TQ2_0: [("qs", "u1", 64), ("d", "<f2")],  # 66
    GGMLType.MXFP4: [("e", "u1"), ("qs", "u1", 16)],  # 17, 32 elements
    GGMLType.NVFP4: [("d", "u1", 4), ("qs", "u1", 32)],  # 36, 64 elements: 4 UE4M3 scales of 16 values
    # the grid types (§17.5): codes index the lattice grids of ggmlfmt/blocks/iqgrids.py
    GGMLType.IQ2_XXS: [("d", "<f2"), ("qs", "<u2", 32)],  # 66: 8 x (4 grid indices, u32 signs + scale)
    GGMLType.IQ2_XS: [("d", "<f2"), ("qs", "<u2", 32), ("scales", "u1", 8)],  # 74
    GGMLType.IQ2_S: [("d", "<f2"), ("qs", "u1", 32), ("signs", "u1", 32), ("qh", "u1", 8), ("scales", "u1", 8)],  # 82
    GGMLType.IQ3_XXS: [("d", "<f2"), ("qs", "u1", 64), ("scales_signs", "<u4", 8)],  # 98
    GGMLType.IQ3_S: [("d", "<f2"), ("qs", "u1", 64), ("qh", "u1", 8), ("signs", "u1", 32), ("scales", "u1", 4)],  # 110
    GGMLType.IQ1_S: [("d", "<f2"), ("qs", "u1", 32), ("qh", "<u2", 8)],  # 50
    GGMLType.IQ1_M: [("qs", "u1", 32), ("qh", "u1", 16), ("scales", "<u2", 4)],  # 56; the f16 scale is spread over scales
}
# Value tables of the non-linear types (docs/format.md §17.3), as signed integers.
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
MXFP4_VALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)  # E2M1 values times two
IQ1_DELTA = 0.125  # IQ1_S/IQ1_M: added to (or, with the group's sign bit, subtracted from) each grid value


def _gguf_layout(t: GGMLType, elements: int, nbytes: int) -> BlockLayout:
    """GGUF's block of a type: generation 3's record where we know the fields, else `nbytes` opaque bytes."""
    if t in BLOCK_LAYOUTS[3]:  # tests/test_gguf.py checks these agree with GGUF_TYPE_SIZES
        return BLOCK_LAYOUTS[3][t]
    if t in _GGUF_SCALARS:
        return BlockLayout(1, np.dtype(_GGUF_SCALARS[t]))
    if t in GGUF_BLOCK_FIELDS:
        return BlockLayout(elements, np.dtype(GGUF_BLOCK_FIELDS[t]))
    return BlockLayout(elements, np.dtype((np.void, nbytes)))


BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION] = {t: _gguf_layout(t, *size) for t, size in GGUF_TYPE_SIZES.items()}

# GGUF's general.file_type (today's llama_ftype) for "mostly BF16": GGUF only, so not an FType of the 2023
# headers (gguf-py's LlamaFileType.MOSTLY_BF16).
GGUF_FTYPE_MOSTLY_BF16 = 32

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

# GGUF for LLaMA: what llama.cpp reads besides the bytes (docs/format.md §14-§16)


class TokenType(IntEnum):
    """tokenizer.ggml.token_type codes (the i32 array beside the pieces)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


GGUF_QUANTIZATION_VERSION = 2  # general.quantization_version: the ggjt v3 / GGUF block layouts
LLAMA1_CONTEXT_LENGTH = 2048  # no 2023 file or params.json stores it; LLaMA-1 was trained with 2048
LLAMA1_RMS_EPS = 1e-6  # what the 2023 llama.cpp hard-coded; old files do not store it
LLAMA_BYTE_TOKENS = 256  # SentencePiece byte fallback: pieces <0x00> .. <0xFF>, consecutive ids
F16_MAX = 65504.0  # largest finite IEEE binary16

# Tuning of the vectorised walk of ggjt vocabularies and GGUF string arrays (layout.walk_entries), not
# format facts: the section is taken in chunks small enough that numpy's temporaries come from the
# heap (no fresh pages to fault).
VOCAB_CHUNK = (64 << 10) - 64  # bytes per chunk: its offset map (2 bytes each) stays under 128 KiB
VOCAB_STRIDE_LOG = 5  # inside a chunk, Python follows the chain 2**5 = 32 entries per step
VOCAB_VECTOR_MIN = 1024  # fewer entries: the plain loop is cheaper than numpy's per-call cost
VOCAB_MIN_PER_CHUNK = 64  # a chunk that holds fewer entries (long texts) hands over to the plain loop
