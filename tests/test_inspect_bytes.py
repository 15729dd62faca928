"""`ggmlfmt inspect` accounts every byte of GGUF files made by the gguf package's GGUFWriter, padded or not."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from ggmlfmt import load, read_index
from ggmlfmt.cli import main
from ggmlfmt.summary import describe, render

X = np.arange(12, dtype=np.float32).reshape(3, 4)


def write(path, tensors: bool, tensor_section: bool = True, cut_tail: bool = False, extra: bytes = b"") -> None:
    """GGUFWriter's file. Without `tensor_section` it stops after the metadata, as llama.cpp's vocab-only
    files do: no padding after the infos. `cut_tail` drops the padding after the last tensor; `extra`
    appends bytes the counts do not describe."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.name", "odd-length name")  # so the infos do not end on the alignment
    if tensors:
        w.add_tensor("x", X)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    if tensor_section:
        w.write_tensors_to_file()
    w.close()
    if cut_tail:
        r = gguf.GGUFReader(path)
        end = max(t.data_offset + t.n_bytes for t in r.tensors)
        with open(path, "r+b") as f:
            f.truncate(end)
    if extra:
        with open(path, "ab") as f:
            f.write(extra)


CASES = {  # name: (write options, padding bytes after the infos in the file, trailing bytes)
    "no tensors, no padding (llama.cpp vocab files)": (dict(tensors=False, tensor_section=False), 0, 0),
    "no tensors, padding cut short": (dict(tensors=False, tensor_section=False, extra=bytes(3)), 3, 0),
    "no tensors, padded": (dict(tensors=False), None, 0),
    "no tensors, padded, trailing bytes": (dict(tensors=False, extra=b"\x01" * 3), None, 3),
    "tensors, padded after the last": (dict(tensors=True), None, 0),
    "tensors, file ends at the last tensor": (dict(tensors=True, cut_tail=True), None, 0),
    "tensors, padded, trailing bytes": (dict(tensors=True, extra=b"\x01" * 5), None, 5),
}


@pytest.mark.parametrize("case", CASES)
def test_every_byte_is_accounted_once_and_no_field_is_negative(tmp_path, case, capsys):
    options, padded, trailing = CASES[case]
    path = tmp_path / "m.gguf"
    write(path, **options)
    size = path.stat().st_size
    ref = gguf.GGUFReader(path)
    b = describe(read_index(path))["bytes"]
    assert all(v >= 0 for v in b.values()), b
    assert sum(v for k, v in b.items() if k != "total") == b["total"] == size
    assert b["trailing"] == trailing
    assert b["data"] == sum(int(t.n_bytes) for t in ref.tensors)
    assert b["tensor_infos"] == (41 if options["tensors"] else 0)  # name "x": 8 + 1 + 4 + 2 * 8 + 4 + 8
    if padded is not None:  # the file holds nothing but header, metadata and (some of) the padding
        assert b["padding"] == padded and b["header"] + b["metadata"] + padded == size
    else:  # padding up to gguf's data offset, then after the data up to what was appended
        infos_end = b["header"] + b["metadata"] + b["tensor_infos"]
        assert b["padding"] == (ref.data_offset - infos_end) + (size - trailing - ref.data_offset - b["data"])
    # the text and --json outputs carry the same accounting
    assert main(["inspect", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == b
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"trailing {trailing:,}" in text and "-" not in text.splitlines()[-1]
    # the reader and verify accept the file as it is: no padding is required where llama.cpp writes none
    assert main(["verify", str(path)]) == 0 and capsys.readouterr().out.strip() == "OK"
    assert list(load(path).tensors) == [t.name for t in ref.tensors]


def test_control_the_old_accounting_went_negative(tmp_path):
    """Control: the case that used to report 'trailing -22' is the one without padding (and it is short)."""
    path = tmp_path / "m.gguf"
    write(path, tensors=False, tensor_section=False)
    index = read_index(path)
    assert index.data_start > index.file_size == index.infos_end  # the padding llama.cpp does not write
    assert "trailing 0" in render(describe(index))
