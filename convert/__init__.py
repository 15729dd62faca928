"""convert-model: Meta LLaMA consolidated.NN.pth shards -> one aligned ggjt v1 file (docs/format.md §8), or one
GGUF v3 file for today's llama.cpp (docs/format.md §8.1); a Hugging Face LLaMA/Mistral directory -> GGUF (§19).

Nothing here imports torch; importing this package does not import sentencepiece either (reading the
tokenizer does).
"""

from convert.convert import (
    ConversionPlan,
    GGUFContent,
    TensorEntry,
    convert_checkpoint,
    plan_conversion,
    write_conversion,
)
from ggmlfmt.llama.params import Params, read_params

__all__ = ["ConversionPlan", "GGUFContent", "Params", "TensorEntry", "convert_checkpoint", "plan_conversion",
           "read_params", "write_conversion"]
