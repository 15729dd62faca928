"""What both client runners (run_client.py, run_gguf_client.py) share: arguments, errors, memory cap, stdout.

Runs inside a client venv (stdlib only), imported from the runner's own directory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys


class LoadError(RuntimeError):
    """The model (or its context) could not be created."""


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """The positional arguments of both runners: model, token JSON, n_ctx."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("tokens", help="JSON list of token ids, e.g. '[1, 100, 200]'")
    ap.add_argument("n_ctx", type=int)
    return ap


def client_version() -> str:
    """Installed llama-cpp-python version."""
    from importlib.metadata import version

    return version("llama_cpp_python")


def cap_address_space(max_mem_gb: float) -> None:
    """RLIMIT_AS to max_mem_gb GiB (0: no cap): a garbage size field fails an allocation, not the machine."""
    if max_mem_gb > 0:
        cap = int(max_mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def keep_stdout_for_json() -> int:
    """Send whatever the C side prints on fd 1 to stderr; return a duplicate of the real stdout for the JSON."""
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    return real_stdout


def write_json(fd: int, obj: object) -> None:
    """The JSON result, one line, on the descriptor keep_stdout_for_json returned (closed after)."""
    import json

    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
        f.write("\n")
