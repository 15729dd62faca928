"""Rewrite the GRIDS table of ggmlfmt/blocks/iqgrids.py from llama.cpp's ggml-common.h (the IQ1/IQ2/IQ3 lattice grids).

    python tests/gen_iq_grids.py PATH/TO/ggml/src/ggml-common.h   # rewrites GRIDS, keeps the code above it

Each table (`GGML_TABLE_BEGIN(type, name, size)` .. `GGML_TABLE_END()`) is read as its C integers, an entry's
little-endian bytes being its values. A grid uses few distinct values (IQ2: 3, IQ3: 8, IQ1: 3), so an entry is
a number in base k (digit j: the rank of byte j among the grid's values); the entries are distinct and ascending
in that number, so the grid is the set of its numbers: a bitmap over k^n (821 or 512 bytes), stored
zlib-compressed in base64. tests/test_iqgrids.py checks that the shipped table is what this derives from the
header and decodes to the header's bytes; tests/test_dequant_gguf.py compares every entry with the gguf package's.
"""

from __future__ import annotations

import base64
import re
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np

TABLES = {"iq2xxs_grid": ("uint64_t", 256), "iq2xs_grid": ("uint64_t", 512), "iq2s_grid": ("uint64_t", 1024),
          "iq3xxs_grid": ("uint32_t", 256), "iq3s_grid": ("uint32_t", 512), "iq1s_grid": ("uint64_t", 2048)}
MODULE = Path(__file__).resolve().parent.parent / "ggmlfmt" / "blocks" / "iqgrids.py"


def table(header: str, name: str) -> bytes:
    """The table's entries as little-endian bytes, entry after entry."""
    ctype, size = TABLES[name]
    body = re.search(rf"GGML_TABLE_BEGIN\({ctype}, {name}, \w+\)(.*?)GGML_TABLE_END\(\)", header, re.S)
    if body is None:
        raise SystemExit(f"table {name} not found")
    values = [int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", body.group(1))]
    if len(values) != size:
        raise SystemExit(f"{name}: {len(values)} entries, expected {size}")
    width = 8 if ctype == "uint64_t" else 4
    return b"".join(v.to_bytes(width, "little") for v in values)


def bitmap(header: str, name: str) -> tuple[tuple[int, ...], int, bytes]:
    """The grid's values (int8, ascending), values per entry, and the bitmap of its entries' numbers."""
    per = 8 if TABLES[name][0] == "uint64_t" else 4
    entries = np.frombuffer(table(header, name), np.int8).reshape(-1, per)
    values = tuple(sorted(set(entries.ravel().tolist())))
    numbers = (np.searchsorted(values, entries).astype(np.int64) * len(values) ** np.arange(per)).sum(axis=1)
    if not np.all(np.diff(numbers) > 0):
        raise SystemExit(f"{name}: entries not ascending: a bitmap cannot keep their order")
    bits = np.zeros(len(values) ** per, np.uint8)
    bits[numbers] = 1
    return values, per, np.packbits(bits, bitorder="little").tobytes()


def grids_text(header: str) -> str:
    """The GRIDS table, as iqgrids.py ends with it."""
    lines = ["GRIDS = {  # name: (values as int8, ascending; values per entry; the bitmap, zlib-compressed, base64)"]
    for name in TABLES:
        values, per, bits = bitmap(header, name)
        lines.append(f'    "{name.upper()}": ({values}, {per}, (')
        lines += [f'        "{chunk}"' for chunk in textwrap.wrap(base64.b64encode(zlib.compress(bits, 9)).decode(), 104)]
        lines.append("    )),")
    return "\n".join(lines + ["}", ""])


if __name__ == "__main__":
    code = MODULE.read_text().split("GRIDS = {")[0]
    MODULE.write_text(code + grids_text(Path(sys.argv[1]).read_text()))
