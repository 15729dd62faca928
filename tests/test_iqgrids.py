"""The shipped lattice grids (ggmlfmt/blocks/iqgrids.py) are what tests/gen_iq_grids.py derives from llama.cpp's
ggml-common.h, and decode to that header's bytes (the gguf package's copy: tests/test_dequant_gguf.py)."""

from __future__ import annotations

import base64
import zlib

import gen_iq_grids
import pytest
import sdist

from ggmlfmt.blocks import iqgrids

pytestmark = pytest.mark.slow  # reads the header from the llama-cpp-python sdist (77 MB, fetched on first use)


@pytest.fixture(scope="module")
def header() -> str:
    return (sdist.llama_cpp_tree() / "ggml" / "src" / "ggml-common.h").read_text()


@pytest.mark.parametrize("name", gen_iq_grids.TABLES)
def test_shipped_grid_is_the_generators_and_decodes_to_the_header_bytes(header: str, name: str) -> None:
    values, per, packed = iqgrids.GRIDS[name.upper()]
    assert (values, per, zlib.decompress(base64.b64decode(packed))) == gen_iq_grids.bitmap(header, name)
    want = gen_iq_grids.table(header, name)  # the C integers as parsed, independent of the bitmap form
    assert iqgrids.grid(name.upper()).tobytes() == want
    assert iqgrids.grid(name.upper()).tobytes() != want[per:] + want[:per]  # control: one entry rotated differs

