"""A plain-data description of a model file: header, vocabulary, tensor table, byte accounting."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ggmlfmt.constants import DEFAULT_ALIGNMENT, FType
from ggmlfmt.gguf import GGUFStrings, TypePath
from ggmlfmt.layout import Index, align_up, record_head_size
from ggmlfmt.safetensors import DTYPE_OF, VIEW_ALIGNMENT

ARRAY_HEAD = 8  # items of a long metadata array that inspect shows
MAX_COLUMN = 64  # widest name or key column: a longer one overflows its own line, not every line (docs/safety.md)


def column_width(texts: Iterable[str], minimum: int) -> int:
    """Width of a table column for these names or keys: the longest, at least `minimum`, at most MAX_COLUMN.

    A name from a file may be 4,096 bytes; padding every line to it would make the table grow with the
    longest name times the number of lines, not with the file.
    """
    return min(max([len(t) for t in texts] + [minimum]), MAX_COLUMN)


def _ftype_name(ftype: int) -> str:
    return FType(ftype).name if ftype in FType._value2member_map_ else str(ftype)


def _tensor_rows(index: Index, base: int, align: int) -> list[dict[str, Any]]:
    """The tensor table of every format: a tensor is aligned when its offset - base is a multiple of align."""
    st = index.version.magic_name == "safetensors"
    return [{"name": t.name, "type": t.type.name, **({"dtype": DTYPE_OF[t.type]} if st else {}), "shape": list(t.shape),
             "ne": list(t.ne), "offset": t.offset, "nbytes": t.nbytes, "aligned": (t.offset - base) % align == 0}
            for t in index.tensors]


def describe(index: Index) -> dict[str, Any]:
    """Everything `ggmlfmt inspect` shows, as JSON-ready data."""
    if index.version.magic_name == "gguf":
        return describe_gguf(index)
    data = sum(t.nbytes for t in index.tensors)
    if index.version.magic_name == "safetensors":
        return {"format": "safetensors", "version": None, "alignment": VIEW_ALIGNMENT,
                "metadata": dict(index.metadata), "tensors": _tensor_rows(index, 0, VIEW_ALIGNMENT),
                "bytes": {"header": index.header_size, "data": data, "total": index.file_size}}
    hp = index.hparams
    heads = [record_head_size(len(t.ne), len(t.name.encode())) for t in index.tensors]
    return {
        "format": index.version.magic_name,
        "version": index.version.number,
        "hparams": {
            "n_vocab": hp.n_vocab, "n_embd": hp.n_embd, "n_mult": hp.n_mult, "n_head": hp.n_head,
            "n_layer": hp.n_layer, "n_rot": hp.n_rot, "ftype": hp.ftype, "ftype_name": _ftype_name(hp.ftype),
            "n_ff": hp.n_ff if hp.n_mult > 0 else None,
        },
        "vocab": {"size": len(index.vocab), "scores": index.vocab.scores is not None},
        "tensors": _tensor_rows(index, 0, DEFAULT_ALIGNMENT),
        "bytes": {
            "header": index.header_size,
            "vocab": index.vocab_end - index.header_size,
            "records": sum(heads),
            "padding": sum(t.offset - t.record_offset - h for t, h in zip(index.tensors, heads)),
            "data": data,
            "total": index.file_size,
        },
    }


def _type_name(path: TypePath) -> str:
    return "".join(f"{t.name}[" for t in path[:-1]) + path[-1].name + "]" * (len(path) - 1)


def _plain(value: Any) -> Any:
    """A metadata value as JSON-ready data, long arrays cut to their first ARRAY_HEAD items."""
    if isinstance(value, (np.ndarray, GGUFStrings, list)):
        head = value[:ARRAY_HEAD]
        return [_plain(v) for v in (head.tolist() if isinstance(head, np.ndarray) else head)]
    return value


def describe_gguf(index: Index) -> dict[str, Any]:
    """`ggmlfmt inspect`'s data for a GGUF file: metadata (arrays summarised), tensors, byte accounting."""
    metadata = {}
    for key, value in index.metadata.items():
        entry: dict[str, Any] = {"type": _type_name(index.types[key])}
        if isinstance(value, (np.ndarray, GGUFStrings, list)):
            entry["count"] = len(value)
        entry["value" if "count" not in entry or len(value) <= ARRAY_HEAD else "first"] = _plain(value)
        metadata[key] = entry
    tensors = _tensor_rows(index, index.data_start, index.alignment)
    data = sum(t.nbytes for t in index.tensors)
    # Regions in file order, each clipped to the file: the padding after the infos (llama.cpp writes
    # none when there is no tensor data, so it may be short or absent), the data section with its
    # gaps, the padding after the last tensor as far as the file has it, then whatever follows.
    size = index.file_size
    head_end = min(size, index.data_start)
    end = index.data_end if index.tensors else head_end
    padded_end = min(size, index.data_start + align_up(end - index.data_start, index.alignment)) if index.tensors else end
    padding = (head_end - index.infos_end) + (end - index.data_start - data if index.tensors else 0)
    return {
        "format": "gguf",
        "version": index.version.number,
        "alignment": index.alignment,
        "llama_cpp_layout": index.sequential,
        "metadata": metadata,
        "tensors": tensors,
        "bytes": {
            "header": index.header_size,
            "metadata": index.infos_start - index.header_size,
            "tensor_infos": index.infos_end - index.infos_start,
            "padding": padding + padded_end - end,
            "data": data,
            "trailing": size - padded_end,
            "total": size,
        },
    }


def _human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _render_head(desc: dict[str, Any]) -> list[str]:
    """The lines before the tensor table of a GGUF or safetensors file: format, metadata, tensor count."""
    if desc["format"] == "safetensors":
        lines = ["format     safetensors", f"metadata   {len(desc['metadata'])} keys"]
        lines += [f"  {key if key.isprintable() else repr(key)}  {value[:200]!r}" for key, value in desc["metadata"].items()]
        return lines + [f"tensors    {len(desc['tensors'])}", ""]
    layout = "" if desc["llama_cpp_layout"] else " (not llama.cpp's sequential order: llama.cpp refuses it)"
    lines = [f"format     gguf v{desc['version']}, alignment {desc['alignment']}{layout}",
             f"metadata   {len(desc['metadata'])} keys"]
    width = column_width(desc["metadata"], 3)
    for key, m in desc["metadata"].items():
        count = f" x{m['count']}" if "count" in m else ""
        text = _shown(m.get("value", m.get("first")), m["type"] in ("FLOAT32", "ARRAY[FLOAT32]"))
        text = text if "first" not in m else text[:-1] + ", ...]"
        shown_key = key if key.isprintable() else repr(key)  # no raw control bytes from a file on the terminal
        lines.append(f"  {shown_key:<{width}}  {m['type'] + count:<18}  {text[:200]}")
    return lines + [f"tensors    {len(desc['tensors'])}", ""]


def _shown(value: Any, float32: bool) -> str:
    """repr() of a metadata value; float32 values as the shortest decimal that reads back as that float32 (1e-05, where
    repr of the exact value is 9.999999747378752e-06; --json keeps the exact value)."""
    if not float32:
        return repr(value)
    return f"[{', '.join(str(np.float32(x)) for x in value)}]" if isinstance(value, list) else str(np.float32(value))


def render(desc: dict[str, Any]) -> str:
    """The description as aligned text for a terminal."""
    if desc["format"] in ("gguf", "safetensors"):
        return _render_table(desc, _render_head(desc))
    hp = desc["hparams"]
    version = desc["format"] + ("" if desc["version"] is None else f" v{desc['version']}")
    lines = [
        f"format     {version}",
        "hparams    " + ", ".join(f"{k}={v}" for k, v in hp.items() if k != "ftype"),
        f"vocab      {desc['vocab']['size']} tokens" + ("" if desc["vocab"]["scores"] else " (no scores)"),
        f"tensors    {len(desc['tensors'])}",
        "",
    ]
    return _render_table(desc, lines)


def _render_table(desc: dict[str, Any], lines: list[str]) -> str:
    """The tensor table and byte accounting after the header lines."""
    b = desc["bytes"]
    names = [t["name"] if t["name"].isprintable() else repr(t["name"]) for t in desc["tensors"]]  # no raw control bytes
    width = column_width(names, 4)
    tw = max([len(t["type"]) for t in desc["tensors"]] + [5])
    lines.append(f"{'name':<{width}}  {'type':<{tw}}  {'shape':<18}  {'offset':>12}  {'bytes':>12}  align")
    for name, t in zip(names, desc["tensors"]):
        shape = "x".join(map(str, t["shape"]))
        align = str(desc.get("alignment", DEFAULT_ALIGNMENT)) if t["aligned"] else "-"
        lines.append(f"{name:<{width}}  {t['type']:<{tw}}  {shape:<18}  {t['offset']:>12,}  {t['nbytes']:>12,}  {align}")
    lines += ["", "bytes      " + ", ".join(f"{k} {v:,}" for k, v in b.items() if k != "total")
              + f"; total {b['total']:,} ({_human(b['total'])})"]
    return "\n".join(lines)
