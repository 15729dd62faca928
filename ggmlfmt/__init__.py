"""ggmlfmt: llama.cpp model files (2023: ggml, ggmf, ggjt v1-v3; today: GGUF v2/v3), read zero-copy and written aligned."""

from .constants import FileVersion, FType, GGMLType, GGUFValueType, GGUFVersion
from .dequant import dequantize
from .errors import FormatError
from .gguf import GGUFIndex, GGUFStrings, plan_gguf
from .layout import HParams, TensorInfo, TensorSpec, Vocab
from .reader import Model, load, read_index
from .writer import FileWriter, save

__all__ = [
    "FType",
    "FileVersion",
    "FileWriter",
    "FormatError",
    "GGMLType",
    "GGUFIndex",
    "GGUFStrings",
    "GGUFValueType",
    "GGUFVersion",
    "HParams",
    "Model",
    "TensorInfo",
    "TensorSpec",
    "Vocab",
    "dequantize",
    "load",
    "plan_gguf",
    "read_index",
    "save",
]
__version__ = "0.1.0"
