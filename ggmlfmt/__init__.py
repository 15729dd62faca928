"""ggmlfmt: llama.cpp model files (2023: ggml, ggmf, ggjt v1-v3; today: GGUF v2/v3), read zero-copy and written aligned."""

from ggmlfmt.blocks.dequant import dequantize
from ggmlfmt.constants import FileVersion, FType, GGMLType, GGUFValueType, GGUFVersion
from ggmlfmt.errors import FormatError, RequestError
from ggmlfmt.gguf import GGUFStrings, plan_gguf
from ggmlfmt.layout import HParams, Index, TensorInfo, Vocab
from ggmlfmt.reader import Model, load, read_index
from ggmlfmt.writer import FileWriter, save

__all__ = [
    "FType",
    "FileVersion",
    "FileWriter",
    "FormatError",
    "GGMLType",
    "Index",
    "GGUFStrings",
    "GGUFValueType",
    "GGUFVersion",
    "HParams",
    "Model",
    "RequestError",
    "TensorInfo",
    "Vocab",
    "dequantize",
    "load",
    "plan_gguf",
    "read_index",
    "save",
]
__version__ = "0.1.0"
