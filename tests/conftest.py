"""Shared pytest set-up: hypothesis profiles and small fixtures used across the test modules.

Hypothesis profiles: "ci" (the default) keeps every property test to a modest number of examples so the
whole suite stays fast; "long" runs many more; "fuzz" is the long fuzz campaign of docs/safety.md. Pick one with HYPOTHESIS_PROFILE=long pytest ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from ggmlfmt import HParams, Vocab

TESTS = Path(__file__).resolve().parent
for _dir in (TESTS / "client", TESTS):  # `import builders`, `helpers`, and tests/client's modules (not a package)
    if str(_dir) not in sys.path:  # also under --import-mode=importlib
        sys.path.insert(0, str(_dir))

import helpers  # noqa: E402  (needs the path above)

# Writing files per example is slow next to pure functions; deadlines would only make CI flaky.
settings.register_profile(
    "ci", max_examples=25, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
# The fuzz campaign (docs/safety.md): test_fuzz.py and test_fuzz_pth.py size their own runs under this profile.
settings.register_profile(
    "fuzz", max_examples=2000, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: tiny golden files pinned by sha256."""
    return TESTS / "data"


@pytest.fixture
def header() -> Callable[..., tuple[HParams, Vocab]]:
    """helpers.tiny_header: (HParams, Vocab) for a file whose header does not matter to the test."""
    return helpers.tiny_header


@pytest.fixture
def tiny_vocab() -> Vocab:
    """Two tokens b"a", b"b" with zero scores."""
    return helpers.tiny_vocab(2)


@pytest.fixture(scope="session")
def client() -> Path:
    """The python of the 0.3.36 (GGUF) client venv, built once per machine (shared, flock-protected)."""
    import gguf_check

    return helpers.client_python(gguf_check.CLIENT)
