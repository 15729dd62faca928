"""ggmlfmt: the 2023 llama.cpp model files (ggml, ggmf, ggjt v1-v3), read zero-copy and written aligned."""

from .constants import FileVersion, FType, GGMLType
from .dequant import dequantize
from .errors import FormatError
from .layout import HParams, TensorInfo, TensorSpec, Vocab
from .reader import Model, load, read_index
from .writer import FileWriter, save

__all__ = [
    "FType",
    "FileVersion",
    "FileWriter",
    "FormatError",
    "GGMLType",
    "HParams",
    "Model",
    "TensorInfo",
    "TensorSpec",
    "Vocab",
    "dequantize",
    "load",
    "read_index",
    "save",
]
__version__ = "0.1.0"
