"""A plain-data description of a model file: header, vocabulary, tensor table, byte accounting."""

from __future__ import annotations

from typing import Any

from .constants import DEFAULT_ALIGNMENT, FType
from .layout import Index


def _ftype_name(ftype: int) -> str:
    return FType(ftype).name if ftype in FType._value2member_map_ else str(ftype)


def describe(index: Index) -> dict[str, Any]:
    """Everything `ggmlfmt inspect` shows, as JSON-ready data."""
    hp = index.hparams
    tensors = []
    record_bytes = padding = 0
    for t in index.tensors:
        head = 12 + 4 * len(t.ne) + len(t.name.encode())
        pad = t.offset - t.record_offset - head
        record_bytes += head
        padding += pad
        tensors.append({
            "name": t.name,
            "type": t.type.name,
            "shape": list(t.shape),
            "ne": list(t.ne),
            "offset": t.offset,
            "nbytes": t.nbytes,
            "aligned": t.offset % DEFAULT_ALIGNMENT == 0,
        })
    data = sum(t.nbytes for t in index.tensors)
    return {
        "format": index.version.magic_name,
        "version": index.version.number,
        "hparams": {
            "n_vocab": hp.n_vocab, "n_embd": hp.n_embd, "n_mult": hp.n_mult, "n_head": hp.n_head,
            "n_layer": hp.n_layer, "n_rot": hp.n_rot, "ftype": hp.ftype, "ftype_name": _ftype_name(hp.ftype),
            "n_ff": hp.n_ff if hp.n_mult > 0 else None,
        },
        "vocab": {"size": len(index.vocab), "scores": index.vocab.scores is not None},
        "tensors": tensors,
        "bytes": {
            "header": index.header_size,
            "vocab": index.vocab_end - index.header_size,
            "records": record_bytes,
            "padding": padding,
            "data": data,
            "total": index.file_size,
        },
    }


def _human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def render(desc: dict[str, Any]) -> str:
    """The description as aligned text for a terminal."""
    hp, b = desc["hparams"], desc["bytes"]
    version = desc["format"] + ("" if desc["version"] is None else f" v{desc['version']}")
    lines = [
        f"format     {version}",
        "hparams    " + ", ".join(f"{k}={v}" for k, v in hp.items() if k != "ftype"),
        f"vocab      {desc['vocab']['size']} tokens" + ("" if desc["vocab"]["scores"] else " (no scores)"),
        f"tensors    {len(desc['tensors'])}",
        "",
    ]
    width = max([len(t["name"]) for t in desc["tensors"]] + [4])
    lines.append(f"{'name':<{width}}  {'type':<5}  {'shape':<18}  {'offset':>12}  {'bytes':>12}  align")
    for t in desc["tensors"]:
        shape = "x".join(map(str, t["shape"]))
        align = "32" if t["aligned"] else "-"
        lines.append(f"{t['name']:<{width}}  {t['type']:<5}  {shape:<18}  {t['offset']:>12,}  {t['nbytes']:>12,}  {align}")
    lines += ["", "bytes      " + ", ".join(f"{k} {v:,}" for k, v in b.items() if k != "total")
              + f"; total {b['total']:,} ({_human(b['total'])})"]
    return "\n".join(lines)
