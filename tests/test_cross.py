"""The two roads to ggjt meet: migrate(old ggmf parts) is byte-identical to convert-model(the original checkpoint).

docs/format.md §9.2: for f32/f16 models, the 2023 migrate script's output equals what the #613 converter
wrote from the .pth files with the same tokenizer and ftype. The old parts here are made by the
independent struct-based builder (tests/builders.py) from the same weights the checkpoint holds.
"""

from __future__ import annotations

import numpy as np
import pytest

import builders
from convert import convert_checkpoint
from meta import DemoConfig, build_checkpoint, make_weights
from migrate import migrate_file


@pytest.mark.parametrize("outtype", ["f16", "f32"])
@pytest.mark.parametrize("n_parts", [1, 2, 4])
def test_migrate_of_old_parts_equals_convert_of_checkpoint(tmp_path, n_parts, outtype):
    cfg = DemoConfig(n_shards=n_parts, seed=11)
    model_dir = build_checkpoint(tmp_path / "meta", cfg)
    converted = convert_checkpoint(model_dir, tmp_path / "converted.bin", outtype=outtype).outfile
    expected = converted.read_bytes()

    # The old ggmf parts, as the ggmf-era converter wrote them from the same weights and tokenizer.
    parsed = builders.parse_file(expected)
    full = make_weights(cfg.params, cfg.vocab_size, seed=cfg.seed)
    two_d = "F16" if outtype == "f16" else "F32"
    tensors = {name: ("F32" if a.ndim == 1 else two_d, a.astype(np.float32))
               for name, a in full.items() if not name.endswith("freqs")}
    assert [t["name"] for t in parsed["tensors"]] == list(tensors)  # same order on both roads
    parts = builders.build_parts("ggmf", parsed["hparams"], parsed["vocab"], tensors, n_parts)
    old = tmp_path / "old" / "ggml-model.bin"
    old.parent.mkdir()
    for k, data in enumerate(parts):
        (old.parent / (old.name + (f".{k}" if k else ""))).write_bytes(data)

    migrated = tmp_path / "migrated.bin"
    migrate_file(old, migrated)
    assert migrated.read_bytes() == expected
