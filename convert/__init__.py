"""convert-model: Meta LLaMA consolidated.NN.pth shards -> one aligned ggjt v1 file (FORMATS.md §7).

Nothing here imports torch; importing this package does not import sentencepiece either (reading the
tokenizer does).
"""

from .convert import ConversionPlan, TensorEntry, convert_checkpoint, plan_conversion, write_conversion
from .params import Params, read_params

__all__ = ["ConversionPlan", "Params", "TensorEntry", "convert_checkpoint", "plan_conversion", "read_params",
           "write_conversion"]
