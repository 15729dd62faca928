"""The README's two set-up commands are exactly what CI runs, and its library example works."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _shell_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_setup_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = _shell_blocks(setup)
    assert len(commands) == 2, "the set-up is two commands: install (+ demo), then tests"
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    for command in commands:
        assert command in ci, f".ci/run does not run the README command: {command}"
    assert ci.index(commands[0]) < ci.index(commands[1])


def test_readme_library_example_runs(tmp_path, monkeypatch):
    import ggmlfmt

    hp = ggmlfmt.HParams(n_vocab=2, n_embd=32, n_mult=32, n_head=1, n_layer=1, n_rot=32, ftype=1)
    vocab = ggmlfmt.Vocab((b"a", b"b"), np.zeros(2, np.float32))
    wq = np.arange(32 * 32, dtype=np.float16).reshape(32, 32)
    ggmlfmt.save(tmp_path / "ggml-model-f16.bin", {"layers.0.attention.wq.weight": wq}, hparams=hp, vocab=vocab)
    monkeypatch.chdir(tmp_path)
    code = ROOT.joinpath("README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    np.testing.assert_array_equal(scope["w"], wq)
    assert scope["info"].ne == (32, 32)
    assert np.array_equal(ggmlfmt.load(tmp_path / "out.bin").tensors["w"], wq)
