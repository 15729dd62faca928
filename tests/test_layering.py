"""Imports point left only (STYLE.md): checked by parsing every module of the project with ast.

ggmlfmt.constants, errors <- layout <- codecs, writer, blocks <- reader, engine, llama <- convert.*, migrate.* <- */cli.py
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ggmlfmt", "convert", "migrate")

# Rank of each ggmlfmt module: a module may import only modules of a lower rank. A new module must be
# given a rank here on purpose, which is the point of this table.
GGMLFMT_RANKS = {
    # 0: numbers, errors, and stdlib-only levers and data
    "ggmlfmt.constants": 0,
    "ggmlfmt.errors": 0,
    "ggmlfmt.blocks": 0,  # subpackage markers: docstring only
    "ggmlfmt.tools": 0,
    "ggmlfmt.llama": 0,
    "ggmlfmt.tools.libc": 0,  # the C calls os/mmap lack (mincore, mlock, sync_file_range), each optional, lazily bound
    "ggmlfmt.tools.rusage": 0,  # what the kernel accounted
    "ggmlfmt.blocks.iqgrids": 0,  # the IQ1/IQ2/IQ3 lattice grids, compressed; decoded on first use (tests/gen_iq_grids.py)
    # 1: records and the ggjt codec, element casts, page-cache options
    "ggmlfmt.layout": 1,
    "ggmlfmt.blocks.floats": 1,  # element casts (f16, f32, bf16) bit-identical to torch's
    "ggmlfmt.tools.loadopts": 1,  # how a file's bytes are brought into memory (map, advice, lock, pread)
    "ggmlfmt.tools.cachestat": 1,  # page-cache diagnostics: residency (mincore), eviction, which mapping holds an array
    # 2: the other codecs, the writer, block conversions
    "ggmlfmt.gguf": 2,
    "ggmlfmt.safetensors": 2,
    "ggmlfmt.writer": 2,  # FileWriter, and TempFile (beside the target, fsync, rename) and the one "output exists" check
    "ggmlfmt.parts": 2,
    "ggmlfmt.blocks.dequant": 2,  # blocks -> float32; below reader, whose Model.floats uses it
    "ggmlfmt.blocks.quantize": 2,  # float rows -> Q8_0 blocks as llama.cpp's reference
    # 3: load, describe, the conversion engine, what GGUF says about a LLaMA model
    "ggmlfmt.reader": 3,
    "ggmlfmt.summary": 3,
    "ggmlfmt.unshard": 3,  # n parts of each tensor -> their places in one output (convert and migrate)
    "ggmlfmt.blocks.requant": 3,  # old blocks -> GGUF blocks; imports dequant for the F32 targets
    "ggmlfmt.tools.copying": 3,  # the page-cache-friendly copy of `ggmlfmt copy`; writes through the writer
    "ggmlfmt.command": 3,  # what every command's cli.py shares: options, runner (errors -> one line), progress bar
    "ggmlfmt.llama.model": 3,  # names, hyper-parameters, GGUF metadata, the vocabulary in GGUF's terms; pure
    # 4-5: LLaMA inputs: params.json and the vocabularies
    "ggmlfmt.llama.params": 4,
    "ggmlfmt.llama.spm": 4,  # SentencePiece tokenizer.model (sentencepiece, lazily)
    "ggmlfmt.llama.tiktoken_vocab": 4,  # Meta's Llama 3 tiktoken tokenizer.model -> byte-level BPE vocabulary
    "ggmlfmt.llama.hf_vocab": 4,  # tokenizer_config.json / added_tokens.json on a SentencePiece vocabulary
    # 4: the conversion layer both commands share
    "ggmlfmt.job": 4,  # Job (plan + a source per tensor + notes + destination), write, describe
    "ggmlfmt.llama.hf_bpe": 5,  # tokenizer.json byte-level BPE (uses hf_vocab's JSON reading)
    "ggmlfmt": 6,  # the package's public surface re-exports the modules below it
}
APP_RANK = 7  # convert.*, migrate.*
CLI_RANK = 8  # ggmlfmt.cli, convert.cli, migrate.cli
MAIN_RANK = 9  # package __main__ modules run a cli

# Third-party modules allowed in one place only (the lazy torch hand-off is the one documented exception).
ONLY_IN = {
    "torch": {"ggmlfmt.reader"},  # convert.pth reads checkpoints natively
    "sentencepiece": {"ggmlfmt.llama.spm"},
}
LAZY_ONLY = {("torch", "ggmlfmt.reader"), ("sentencepiece", "ggmlfmt.llama.spm")}  # inside a function or under TYPE_CHECKING, never at import time


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports, resolved to a module name
    line: int
    executed_on_import: bool  # at module level (not in a function, not under `if TYPE_CHECKING:`)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute module names an ImportFrom brings in (`from . import x` imports the submodule x)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    out = []
    for alias in node.names:
        candidate = f"{prefix}.{alias.name}"
        top = candidate.split(".")[0]
        sub = ROOT.joinpath(*candidate.split("."))
        if top in PACKAGES and (sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()):
            out.append(candidate)
        else:
            out.append(prefix)
    return sorted(set(out))


def imports_of(path: Path) -> list[Import]:
    module = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, executed: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.body:
                    visit(ast.Module(body=[sub], type_ignores=[]), False)
                for sub in child.orelse:
                    visit(ast.Module(body=[sub], type_ignores=[]), executed)
            elif isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, executed) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.module == "__future__":
                    continue
                found.extend(Import(module, t, child.lineno, executed) for t in _resolve(module, is_package, child))
            else:
                visit(child, executed)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def rank(module: str) -> int:
    top, _, rest = module.partition(".")
    if rest == "__main__" or rest.endswith(".__main__"):
        return MAIN_RANK
    if rest == "cli":
        return CLI_RANK
    if top == "ggmlfmt":
        if module not in GGMLFMT_RANKS:
            pytest.fail(f"{module} has no rank in tests/test_layering.py GGMLFMT_RANKS; give it one on purpose")
        return GGMLFMT_RANKS[module]
    return APP_RANK


ALL_IMPORTS = [imp for path in project_files() for imp in imports_of(path)]


def _project(imp: Import) -> bool:
    return imp.target.split(".")[0] in PACKAGES


def test_the_parser_sees_the_known_imports():
    # guards the guard: if parsing silently found nothing, every rule below would pass vacuously
    pairs = {(i.module, i.target) for i in ALL_IMPORTS}
    assert ("ggmlfmt.layout", "ggmlfmt.constants") in pairs
    assert ("ggmlfmt.reader", "ggmlfmt.layout") in pairs
    assert ("ggmlfmt", "ggmlfmt.reader") in pairs
    assert ("ggmlfmt.command", "ggmlfmt.tools.rusage") in pairs  # `from ggmlfmt.tools import rusage` resolves to the module
    assert any(i.target == "torch" and not i.executed_on_import for i in ALL_IMPORTS)


def test_project_imports_point_left_only():
    bad = []
    for imp in filter(_project, ALL_IMPORTS):
        src, dst = rank(imp.module), rank(imp.target)
        same_app_package = src == dst == APP_RANK and imp.module.split(".")[0] == imp.target.split(".")[0]
        own_cli = src == MAIN_RANK and dst == CLI_RANK and imp.module.split(".")[0] == imp.target.split(".")[0]
        if dst >= src and not (same_app_package or own_cli):
            bad.append(f"{imp.module}:{imp.line} imports {imp.target} (rank {src} -> {dst})")
    assert bad == []


def test_convert_and_migrate_never_import_each_other_and_the_core_imports_neither():
    bad = [f"{i.module}:{i.line} imports {i.target}" for i in ALL_IMPORTS
           if (i.module.split(".")[0], i.target.split(".")[0]) in
           {("convert", "migrate"), ("migrate", "convert"), ("ggmlfmt", "convert"), ("ggmlfmt", "migrate")}]
    assert bad == []


@pytest.mark.parametrize("library", sorted(ONLY_IN))
def test_heavy_libraries_are_imported_in_one_place_only(library):
    users = {i.module for i in ALL_IMPORTS if i.target.split(".")[0] == library}
    assert users <= ONLY_IN[library], f"{library} imported by {sorted(users - ONLY_IN[library])}"
    eager = {i.module for i in ALL_IMPORTS
             if i.target.split(".")[0] == library and i.executed_on_import and (library, i.module) in LAZY_ONLY}
    assert eager == set(), f"{library} must be imported lazily in {sorted(eager)}"


def test_nothing_in_ggmlfmt_or_migrate_imports_torch_when_imported():
    eager = [f"{i.module}:{i.line}" for i in ALL_IMPORTS
             if i.module.split(".")[0] in ("ggmlfmt", "migrate") and i.target.split(".")[0] == "torch"
             and i.executed_on_import]
    assert eager == []


def test_the_core_needs_numpy_alone():
    allowed = set(sys.stdlib_module_names) | {"numpy", "ggmlfmt"}
    bad = [f"{i.module}:{i.line} imports {i.target}" for i in ALL_IMPORTS
           if i.module.split(".")[0] == "ggmlfmt" and i.executed_on_import and i.target.split(".")[0] not in allowed]
    assert bad == []


def test_the_architecture_doc_states_every_rank():
    """docs/architecture.md's module table says what GGMLFMT_RANKS says, for every ggmlfmt module with code."""
    import re
    doc = (ROOT / "docs" / "architecture.md").read_text()
    stated = {module_name(ROOT / path): float(rank)
              for rank, path in re.findall(r"^\| (\d+) \| `(ggmlfmt/[\w/]+\.py)` \|", doc, flags=re.M)}
    markers = {m for m in GGMLFMT_RANKS if m in ("ggmlfmt.blocks", "ggmlfmt.tools", "ggmlfmt.llama")}
    assert len(stated) > 20  # guards the guard: the table was found and parsed
    assert stated == {m: float(r) for m, r in GGMLFMT_RANKS.items() if m not in markers}
