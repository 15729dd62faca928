"""A Hugging Face tokenizer.json (byte-level BPE, as Llama 3's) -> the tokenizer.ggml.* entries GGUF stores.

docs/format.md §19.7. The file is size-capped before it is parsed; the vocabulary must give every id
below config.json's vocab_size exactly one token (model vocabulary and added tokens together); merges
are kept in rank order as "left right"; the pre-tokenizer llama.cpp must use is recognised from what
the file declares (its Split pattern and ByteLevel step), and anything else is refused naming what was
found, never guessed. Special ids come from tokenizer_config.json's token names, else config.json's ids;
add_bos/add_eos from the post-processor's template, else tokenizer_config.json.

The vocabulary is returned as ggmlfmt.llama.model's GGUFVocab in its byte-level BPE form (model "gpt2", pre,
merges, no scores): the form Meta's Llama 3 tiktoken vocabulary takes, so both write the same keys.
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ggmlfmt.constants import GGUFValueType, TokenType
from ggmlfmt.errors import BadValue, FormatError
from ggmlfmt.gguf import GGUFStrings, byte_runs
from ggmlfmt.llama.hf_vocab import (
    MAX_TOKENIZER_CONFIG_BYTES,
    TOKENIZER_CONFIG,
    is_utf8,
    looks_special,
    parse_json,
    read_json,
    read_json_text,
    settings,
)
from ggmlfmt.llama.model import BPE_MODEL, SPACE_MARKER, GGUFVocab, MetaKV

TOKENIZER_JSON = "tokenizer.json"
MAX_TOKENIZER_JSON_BYTES = 64 << 20  # Llama 3's is 9 MB; the largest released ones are ~35 MB
MAX_TOKEN_CHARS = 1024
# Split patterns (with a ByteLevel step that does not split again) -> llama.cpp's pre-tokenizer name.
# Llama 3's pattern, as Meta's tokenizer.json for Llama 3, 3.1, 3.2 and 3.3 declares it.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {LLAMA3_PATTERN: "llama-bpe"}
GPT2_PRE = "gpt-2"  # a lone ByteLevel step with use_regex: GPT-2's own pattern
# tokenizer_config.json's <kind>_token -> tokenizer.ggml.<key> (llama.cpp's spellings, "seperator" included)
SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                "sep": "seperator_token_id", "pad": "padding_token_id", "cls": "cls_token_id", "mask": "mask_token_id"}


def load_bpe_vocab(model_dir: Path, n_vocab: int,
                   config_ids: dict[str, int | None]) -> tuple[GGUFVocab, list[MetaKV]]:
    """The byte-level BPE vocabulary of model_dir's tokenizer.json (and tokenizer_config.json), and the
    tokenizer settings they add (add_bos_token, add_eos_token, add_sep_token, chat_template, ...).

    config_ids: config.json's "<kind>_token_id" values by kind ("bos", ...), used where
    tokenizer_config.json names no token.

    Raises:
        FormatError: the file too large or not JSON, not a byte-level BPE, an unknown pre-tokenizer
            (named), an id missing, repeated or out of range, a malformed merge. OSError: unreadable.
    """
    path = model_dir / TOKENIZER_JSON
    config_path = model_dir / TOKENIZER_CONFIG
    config = read_json(config_path, MAX_TOKENIZER_CONFIG_BYTES) if config_path.is_file() else {}
    return bpe_from_json(parse_tokenizer_json(read_json_text(path, MAX_TOKENIZER_JSON_BYTES), path), config, n_vocab,
                         config_ids, path, config_path)


def parse_tokenizer_json(text: str, path: Path) -> dict[str, Any]:
    """parse_json of a tokenizer.json, with model.merges already checked and encoded (a GGUFStrings) as it is read.

    json.loads would make every merge a str object at once (Llama 3's 280,147: 22 MB, the most of its
    peak of +70 MB); here the text is walked with the json module's own scanner (the C one), every
    other value is decoded by it as json.loads decodes it, and the merges are read as runs of plain
    strings with numpy (Llama 3's: in 0.14 s all told, as json.loads plus the checks and the encoding;
    peak +49 MB). Anything unusual (not an object at the top, a bad merge, text json.loads would
    refuse) is handed to parse_json, whose result or error is then the answer.

    Raises:
        FormatError: as parse_json.
    """
    try:
        obj, end = _JsonWalk(text, path).object(_WS.match(text).end(), _top_member)
        if _WS.match(text, end).end() != len(text):
            raise ValueError("extra data")
        return obj
    except (ValueError, RecursionError, StopIteration, FormatError):
        return parse_json(text, path)


_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, as the json module's decoder skips it
_MERGES_PER_STEP = 1 << 14


class _JsonWalk:
    """A JSON object's members walked one at a time with the json module's scanner. Raises ValueError (or the
    scanner's StopIteration, RecursionError) at anything json.loads would not accept the same way."""

    def __init__(self, text: str, path: Path) -> None:
        self.text, self.path, self.scan = text, path, json.scanner.make_scanner(json.JSONDecoder())

    def expect(self, i: int, chars: str) -> tuple[str, int]:
        i = _WS.match(self.text, i).end()
        c = self.text[i : i + 1]
        if not c or c not in chars:
            raise ValueError(f"expected one of {chars!r} at {i}")
        return c, i + 1

    def object(self, i: int, member: Callable[[_JsonWalk, str, int], tuple[Any, int]]) -> tuple[dict[str, Any], int]:
        """The object at i (its '{'), each member's value parsed by member(walk, key, where it starts)."""
        out: dict[str, Any] = {}
        _, i = self.expect(i, "{")
        if self.at(i) == "}":
            return out, _WS.match(self.text, i).end() + 1
        while True:
            _, i = self.expect(i, '"')
            key, i = json.decoder.scanstring(self.text, i, True)
            _, i = self.expect(i, ":")
            out[key], i = member(self, key, _WS.match(self.text, i).end())  # a repeated key: the last wins, as json's
            c, i = self.expect(i, ",}")
            if c == "}":
                return out, i

    def at(self, i: int) -> str:
        """The first character at or after i that is not whitespace ('' at the end)."""
        i = _WS.match(self.text, i).end()
        return self.text[i : i + 1]

    def value(self, i: int) -> tuple[Any, int]:
        return self.scan(self.text, i)

    def merges(self, i: int) -> tuple[GGUFStrings, int]:
        """The merges array at i (its '['), checked and encoded as it is read: runs of plain strings (no escape,
        as tokenizers writes them) _MERGES_PER_STEP at a time with numpy (_encoded_run), anything else one
        element at a time through _merges."""
        text, encoded, step, count = self.text, bytearray(), [], 0

        def flush() -> None:  # the elements read one by one since the last run, checked and encoded
            nonlocal count
            encoded.extend(GGUFStrings.of(_merges(step, self.path), "tokenizer.ggml.merges").encoded)
            count += len(step)
            step.clear()

        _, i = self.expect(i, "[")
        if self.at(i) == "]":
            return GGUFStrings(b"", None, 0), _WS.match(text, i).end() + 1
        c = ","
        while c == ",":
            run = _PLAIN_RUN.match(text, i) or _PLAIN_LAST.match(text, i)
            if run is not None:
                flush()
                data, n = _encoded_run(text[i : run.end()])
                encoded.extend(data)
                count, i, c = count + n, run.end(), text[run.end() - 1]
                continue
            item, i = self.value(_WS.match(text, i).end())
            step.append(item)
            c, i = self.expect(i, ",]")
        flush()
        return GGUFStrings(bytes(encoded), None, count), i


# a JSON string whose only escapes are \" \\ \/ (tokenizers writes no other in merges), whitespace around it
_PLAIN = r'[ \t\n\r]*"[^"\\\x00-\x1f]*(?:\\["\\/][^"\\\x00-\x1f]*)*"[ \t\n\r]*'
_PLAIN_RUN = re.compile(f"(?:{_PLAIN},){{1,{_MERGES_PER_STEP}}}")  # up to a step of them, each with its comma
_PLAIN_LAST = re.compile(f"{_PLAIN}\\]")  # the array's last element


def _encoded_run(run: str) -> tuple[bytes, int]:
    """Plain JSON strings (each with its comma or the closing bracket) as GGUF encodes them, after _merges'
    check of a "left right" string: exactly one space, neither first nor last.

    Raises:
        ValueError: a string is not such a merge, or holds a lone surrogate (the per-element reading
            then names it).
    """
    # the escapes become bytes no plain JSON string holds (control characters), so quotes are only delimiters
    run = run.replace("\\\\", "\x01").replace('\\"', "\x02").replace("\\/", "/")  # left to right, as JSON pairs them
    raw = np.frombuffer(run.encode("utf-8"), np.uint8)
    quotes = np.flatnonzero(raw == ord('"'))
    starts, lengths = quotes[0::2] + 1, quotes[1::2] - quotes[0::2] - 1
    text, ends = byte_runs(raw, starts, lengths), np.cumsum(lengths)  # the strings one after the other
    text[text == 1], text[text == 2] = ord("\\"), ord('"')
    if not _one_space_inside(text, ends - lengths, ends):
        raise ValueError("a merge that is not 'left right'")
    return GGUFStrings.from_runs(text, (ends - lengths)[:, None], lengths[:, None]).encoded, len(lengths)


def _top_member(walk: _JsonWalk, key: str, i: int) -> tuple[Any, int]:
    if key == "model" and walk.text[i : i + 1] == "{":
        return walk.object(i, _model_member)
    return walk.value(i)


def _model_member(walk: _JsonWalk, key: str, i: int) -> tuple[Any, int]:
    return walk.merges(i) if key == "merges" and walk.text[i : i + 1] == "[" else walk.value(i)


def bpe_from_json(obj: dict[str, Any], config: dict[str, Any], n_vocab: int, config_ids: dict[str, int | None],
                  path: Path, config_path: Path) -> tuple[GGUFVocab, list[MetaKV]]:
    """load_bpe_vocab on the decoded tokenizer.json and tokenizer_config.json objects.

    Raises:
        FormatError: as load_bpe_vocab.
    """
    model = obj.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        found = model.get("type") if isinstance(model, dict) else type(model).__name__
        raise BadValue(f"model type {json.dumps(found)[:40]}; expected a BPE model", path=str(path), field="model")
    if model.get("byte_fallback"):
        raise BadValue("a SentencePiece-style BPE (byte_fallback); convert with its tokenizer.model",
                       path=str(path), field="model.byte_fallback")
    if obj.get("normalizer") is not None:
        kind = obj["normalizer"].get("type") if isinstance(obj["normalizer"], dict) else obj["normalizer"]
        raise BadValue(f"normalizer {json.dumps(kind)[:40]}; a byte-level BPE for llama.cpp has none",
                       path=str(path), field="normalizer")
    pre = pre_tokenizer(obj.get("pre_tokenizer"), path)
    added_tokens = obj.get("added_tokens", [])
    pieces, added = _pieces(model.get("vocab"), added_tokens, n_vocab, path)
    types = np.full(n_vocab, TokenType.NORMAL, np.int32)
    for i, special in added.items():
        text = pieces[i]
        if special or looks_special(text):
            types[i] = TokenType.CONTROL
        else:
            types[i] = TokenType.USER_DEFINED
            pieces[i] = text.replace(SPACE_MARKER, " ")
    merges = GGUFStrings.of(_merges(model.get("merges"), path), "tokenizer.ggml.merges")
    special = special_ids(config, added_tokens, config_ids, n_vocab, config_path)
    extra = settings(config, config_path) if config else []
    extra = post_processor_flags(obj.get("post_processor"), config, extra, path)
    vocab = GGUFVocab(GGUFStrings.of(pieces, "tokenizer.ggml.tokens"), None, types, None, None, None, model=BPE_MODEL,
                      pre=pre, merges=merges)
    return with_special_ids(vocab, special), extra


def with_special_ids(vocab: GGUFVocab, special: dict[str, int]) -> GGUFVocab:
    """vocab with special_ids' result applied: bos, eos and unknown replace the vocabulary's own, the
    others (seperator, padding, cls, mask) become its extra_ids."""
    ids = {k: special.get(k) for k in ("bos_token_id", "eos_token_id", "unknown_token_id")}
    return replace(vocab, bos_id=vocab.bos_id if ids["bos_token_id"] is None else ids["bos_token_id"],
                   eos_id=vocab.eos_id if ids["eos_token_id"] is None else ids["eos_token_id"],
                   unk_id=vocab.unk_id if ids["unknown_token_id"] is None else ids["unknown_token_id"],
                   extra_ids=tuple((k, v) for k, v in special.items() if k not in ids))


def pre_tokenizer(pre: Any, path: Path) -> str:
    """llama.cpp's pre-tokenizer name for what tokenizer.json declares.

    Raises:
        FormatError: not byte-level, or a split pattern we do not know (an excerpt is shown).
    """
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise BadValue(f"pre_tokenizer {json.dumps(pre)[:80]}; expected a ByteLevel step, alone or after a Split",
                       path=str(path), field="pre_tokenizer")
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return GPT2_PRE
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True) \
            and not steps[1].get("add_prefix_space") and steps[0].get("behavior") == "Isolated" \
            and not steps[0].get("invert"):
        pattern = steps[0].get("pattern", {}).get("Regex") if isinstance(steps[0].get("pattern"), dict) else None
        if isinstance(pattern, str) and pattern in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[pattern]
        raise BadValue(f"split pattern {json.dumps(pattern)[:120]} is not one llama.cpp's pre-tokenizers "
                       f"are known to implement (we know {', '.join(PRE_TOKENIZERS.values())}, {GPT2_PRE})",
                       path=str(path), field="pre_tokenizer")
    raise BadValue(f"pre-tokenizer steps {json.dumps(kinds)[:80]}; expected ByteLevel, or Split then ByteLevel",
                   path=str(path), field="pre_tokenizer")


def _pieces(vocab: Any, added: Any, n_vocab: int, path: Path) -> tuple[list[str], dict[int, bool]]:
    """Token text by id (model vocabulary and added tokens), and each added id's "special" flag.

    Raises:
        FormatError: an id outside 0..n_vocab-1, given twice to different texts, or missing.
    """
    if not isinstance(vocab, dict) or not isinstance(added, list):
        raise BadValue("expected model.vocab (an object) and added_tokens (a list)", path=str(path),
                       field="model.vocab")
    if len(vocab) > n_vocab or len(added) > n_vocab:
        raise BadValue(f"{max(len(vocab), len(added)):,} entries for vocab_size {n_vocab:,}", path=str(path),
                       field="model.vocab")
    pieces: list[str | None] = _placed(vocab, n_vocab)
    if pieces is None:  # something is wrong: the loop finds it and says what
        pieces = [None] * n_vocab
        for text, i in vocab.items():
            _place(pieces, text, i, path, "model.vocab")
    flags: dict[int, bool] = {}
    for entry in added:
        if not isinstance(entry, dict):
            raise BadValue("expected objects with id and content", path=str(path), field="added_tokens")
        i = _place(pieces, entry.get("content"), entry.get("id"), path, "added_tokens", again=True)
        flags[i] = bool(entry.get("special"))
    missing = [i for i, p in enumerate(pieces) if p is None]
    if missing:
        raise BadValue(f"no token has id {missing[0]} (vocab_size {n_vocab:,}; {len(missing):,} ids missing)",
                       path=str(path), field="model.vocab")
    return pieces, flags  # type: ignore[return-value]


def _placed(vocab: dict[Any, Any], n_vocab: int) -> list[str | None] | None:
    """The model vocabulary by id when every entry passes _place's checks, found in a few whole-list
    passes (Llama 3's 128,000: 15 ms, not 170 ms); None when any does not."""
    texts, ids = list(vocab), list(vocab.values())
    if not all(type(i) is int for i in ids) or not all(type(t) is str for t in texts):
        return None  # (type(True) is bool: a bool id goes to the loop too)
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    try:
        at = np.array(ids, np.int64)
        "".join(texts).encode("utf-8")  # a lone surrogate escape cannot be written
    except (OverflowError, UnicodeEncodeError):
        return None
    if len(at) and (lengths.min() < 1 or lengths.max() > MAX_TOKEN_CHARS or at.min() < 0 or at.max() >= n_vocab
                    or np.bincount(at, minlength=n_vocab).max() > 1):
        return None
    pieces = np.full(n_vocab, None, object)
    pieces[at] = texts
    return pieces.tolist()


def _place(pieces: list[str | None], text: Any, i: Any, path: Path, field: str, again: bool = False) -> int:
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TOKEN_CHARS or not is_utf8(text):
        raise BadValue(f"token {json.dumps(text)[:40]} is not a UTF-8 string of 1..{MAX_TOKEN_CHARS} characters",
                       path=str(path), field=field)
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(pieces):
        raise BadValue(f"id {json.dumps(i)[:20]} of {text[:40]!r} is not below vocab_size {len(pieces):,}",
                       path=str(path), field=field)
    if pieces[i] is not None and not (again and pieces[i] == text):
        raise BadValue(f"id {i} is given to {pieces[i][:40]!r} and {text[:40]!r}", path=str(path), field=field)
    pieces[i] = text
    return i


def _merges(merges: Any, path: Path) -> Sequence[str]:
    """Merges as "left right"; pairs with spaces in them written with U+0120 for the space (llama.cpp's rule).

    Raises:
        FormatError: not a list of "a b" strings or [a, b] pairs.
    """
    if isinstance(merges, GGUFStrings):  # checked as parse_tokenizer_json read it
        return merges
    if not isinstance(merges, list):
        raise BadValue("expected a list", path=str(path), field="model.merges")
    if merges and all(type(m) is str for m in merges):  # "a b" strings, as Llama 3's: checked all at once
        try:
            raw = np.frombuffer("\n".join(merges).encode("utf-8"), np.uint8)
        except UnicodeEncodeError:
            raw = None
        newlines = np.flatnonzero(raw == ord("\n")) if raw is not None else None
        if newlines is not None and len(newlines) == len(merges) - 1 and _one_space_inside(
                raw, np.concatenate([[0], newlines + 1]), np.append(newlines, len(raw))):
            return merges
    return list(_each_merge(merges, path))


def _one_space_inside(text: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether each string text[starts[i]:ends[i]] (in order; no space between them) holds exactly one space,
    neither first nor last: _each_merge's rule for a "left right" string."""
    spaces = np.flatnonzero(text == ord(" "))
    return bool(len(spaces) == len(ends) and np.array_equal(np.searchsorted(ends, spaces, side="right"),
                                                            np.arange(len(ends)))
                and np.all(spaces > starts) and np.all(spaces < ends - 1))


def _each_merge(merges: list[Any], path: Path) -> Iterable[str]:
    """_merges one by one: any element kind, and the error naming the first bad one."""
    for k, m in enumerate(merges):
        if isinstance(m, str) and m.count(" ") == 1 and " " not in (m[0], m[-1]) and is_utf8(m):
            yield m
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) and s and is_utf8(s) for s in m):
            yield " ".join(s.replace(" ", "\u0120") for s in m)
        else:
            raise BadValue(f"{json.dumps(m)[:40]} is not 'left right' or [left, right]", path=str(path),
                           field=f"model.merges[{k}]")


def special_ids(config: dict[str, Any], added: Any, config_ids: dict[str, int | None], n_vocab: int,
                path: Path) -> dict[str, int]:
    """tokenizer.ggml.<kind>_token_id: the added token tokenizer_config.json names, else config.json's id.

    Raises:
        FormatError: an id outside the vocabulary.
    """
    by_text: dict[str, Any] = {}
    for entry in added if isinstance(added, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            by_text.setdefault(entry["content"], entry.get("id"))
    out = {}
    for kind, key in SPECIAL_KEYS.items():
        name = config.get(f"{kind}_token")
        name = name.get("content") if isinstance(name, dict) else name
        token_id = by_text.get(name) if isinstance(name, str) else None
        if token_id is None:
            token_id = config_ids.get(kind)
        if token_id is None:
            continue
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < n_vocab:
            raise BadValue(f"{kind} id {token_id} is outside the {n_vocab:,} tokens", path=str(path),
                           field=f"{kind}_token")
        out[key] = token_id
    return out


def post_processor_flags(post: Any, config: dict[str, Any], extra: list[MetaKV], path: Path) -> list[MetaKV]:
    """add_bos/add_eos/add_sep as the post-processors say; tokenizer_config.json's flags for the others.

    ByteLevel: bos and eos not added (unless a later step says so); RobertaProcessing: bos, eos, sep
    added; TemplateProcessing: its single template's leading special token adds bos (if it is the bos or
    cls token), its trailing one eos; its pair template's tokens between A and B add sep when they are
    the sep or eos token (llama.cpp's converter reads them so).

    Raises:
        FormatError: a trailing special token that is not the eos token (llama.cpp's converter would
            make it the eos token: refused rather than guessed).
    """
    if not config or not isinstance(post, dict):
        return extra
    names = {k: (v.get("content") if isinstance(v, dict) else v) for k in ("bos", "eos", "cls", "sep")
             for v in [config.get(f"{k}_token")]}
    flags: dict[str, bool] = {}
    steps = post.get("processors", [post])
    for step in steps if isinstance(steps, list) else []:
        kind = step.get("type") if isinstance(step, dict) else None
        if kind == "ByteLevel":
            flags.setdefault("bos", False)
            flags.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            flags.update(bos=True, eos=True, sep=True)
        elif kind == "TemplateProcessing":
            flags.update(_template_flags(step, names, path))
    kept = [kv for kv in extra if kv.key.removeprefix("tokenizer.ggml.add_").removesuffix("_token") not in flags]
    return kept + [MetaKV(f"tokenizer.ggml.add_{k}_token", GGUFValueType.BOOL, v) for k, v in flags.items()]


def _item(item: Any, kind: str) -> str | None:
    """The id of a template item {"SpecialToken": {"id": ...}} or {"Sequence": {"id": ...}}, if it is that kind."""
    inner = item.get(kind) if isinstance(item, dict) else None
    name = inner.get("id") if isinstance(inner, dict) else None
    return name if isinstance(name, str) else None


def _special(item: Any) -> str | None:
    return _item(item, "SpecialToken")


def _template_flags(step: dict[str, Any], names: dict[str, Any], path: Path) -> dict[str, bool]:
    single, pair = step.get("single"), step.get("pair")
    flags: dict[str, bool] = {}
    first = last = None
    if isinstance(single, list) and len(single) > 1:
        if first := _special(single[0]):
            flags["bos"] = first in (names["bos"], names["cls"])
        if last := _special(single[-1]):
            if last != names["eos"]:
                raise BadValue(f"the single template ends with {last[:40]!r}, not the eos token "
                               f"{str(names['eos'])[:40]!r}", path=str(path), field="post_processor")
            flags["eos"] = True
    if isinstance(pair, list) and pair:
        start = 1 if first and _special(pair[0]) == first else 0
        stop = -1 if last and _special(pair[-1]) == last else None
        middle = pair[start:stop]
        ends = [_item(m, "Sequence") for m in middle[:1] + middle[-1:]]
        if ends == ["A", "B"] and (between := middle[1:-1]):
            seps = (names["sep"], names["eos"])
            flags["sep"] = (_special(between[0]) in seps and not last) or (
                len(between) == 2 and _special(between[1]) in seps)
    return flags
