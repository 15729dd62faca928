"""Fuzzing the tiktoken reader: mutated tokenizer.model files give a FormatError or a vocabulary tiktoken agrees with.

Mutants of a small valid file (every byte token plus some merges, as `base64 rank` lines): bytes
flipped, inserted, deleted; lines dropped, repeated, swapped, trading ranks; ranks and base64 texts replaced by
boundary values; long lines and cut files. For every mutant parse_ranks either raises
ggmlfmt.FormatError or returns tokens whose `base64 rank` lines tiktoken's own reader maps to the same
ranks, and bpe_vocab builds from them; within bounded time (hypothesis deadline) and memory
(tracemalloc peak against the input size). `HYPOTHESIS_PROFILE=fuzz` runs the long campaign.
"""

from __future__ import annotations

import base64
import binascii
import os
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggmlfmt import FormatError
from ggmlfmt.llama.tiktoken_vocab import bpe_vocab, parse_ranks, special_tokens

EXAMPLES = {"fuzz": 50_000}.get(os.environ.get("HYPOTHESIS_PROFILE", ""), 300)
TOKENS = [bytes([b]) for b in range(256)] + [b"ab", b"abc", b" the", b"\xe3\x81", b"\xe3\x81\xaf", b"  "]
LINES = [base64.b64encode(t) + b" %d" % r for r, t in enumerate(TOKENS)]
RANKS = [b"0", b"1", b"255", b"256", b"261", b"262", b"9999999", b"-1", b"01", b"1e3", b"", b" ", b"4294967296"]
TEXTS = [b"", b"=", b"YQ", b"YQ=", b"YQ==", b"YWI=", b"!!!!", b"YW=j", b"A" * 2000, b"\xff\xfe", b"YQ==\x00"]


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    lines = list(LINES)
    for _ in range(draw(st.integers(0, 4))):  # swap, trade and blank keep a file valid: both outcomes are reached
        kind = draw(st.sampled_from(["drop", "repeat", "swap", "trade", "rank", "text", "long", "blank"]))
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "drop":
            del lines[i]
        elif kind == "repeat":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "trade":  # two lines exchange their ranks
            j = draw(st.integers(0, len(lines) - 1))
            if b" " in lines[i] and b" " in lines[j]:
                (a, ra), (b, rb) = lines[i].rsplit(b" ", 1), lines[j].rsplit(b" ", 1)
                lines[i], lines[j] = a + b" " + rb, b + b" " + ra
        elif kind == "rank":
            lines[i] = lines[i].split(b" ")[0] + b" " + draw(st.sampled_from(RANKS))
        elif kind == "text":
            lines[i] = draw(st.sampled_from(TEXTS)) + b" " + lines[i].split(b" ")[-1]
        elif kind == "long":
            lines[i] = b"Q" * draw(st.sampled_from([1020, 1024, 1025, 5000])) + b" " + str(i).encode()
        else:
            lines.insert(i, draw(st.sampled_from([b"", b"\r", b" "])))
    data = bytearray(b"\n".join(lines) + draw(st.sampled_from([b"\n", b"", b"\r\n"])))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if how == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif how == "cut":
            del data[at:]
    return bytes(data)


def _tiktoken_view(data: bytes) -> dict[bytes, int]:
    """What tiktoken.load.load_tiktoken_bpe makes of the same bytes (its parsing, restated: split, b64decode)."""
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}


@settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutants())
def test_mutated_tiktoken_file(data: bytes) -> None:
    tracemalloc.start()
    try:
        tokens = parse_ranks(data)
    except FormatError as e:
        assert "\n" not in str(e)
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 * len(data) + (1 << 20), f"peak {peak} bytes for a {len(data)}-byte file"
    try:
        theirs = _tiktoken_view(data)
    except (ValueError, binascii.Error):  # we accepted what tiktoken's reader cannot parse
        raise AssertionError("parse_ranks accepted a file tiktoken's reader refuses") from None
    assert theirs == {t: i for i, t in enumerate(tokens)}
    vocab = bpe_vocab(tokens, special_tokens("3.1"))
    assert len(vocab) == len(tokens) + 256 and len(set(vocab.pieces[: len(tokens)])) == len(tokens)


def test_control_the_unmutated_file_parses() -> None:
    assert parse_ranks(b"\n".join(LINES) + b"\n") == TOKENS
