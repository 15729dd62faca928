"""The `ggmlfmt` command, and the runner every command of the project shares.

Only this module (and convert/cli.py, migrate/cli.py) prints, exits or configures logging.
stdout carries results only; logs, progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from . import rusage
from .errors import FormatError
from .reader import read_index
from .summary import describe, render

log = logging.getLogger("ggmlfmt")


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so temporary files are removed."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options every command has."""
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or log messages, errors only")
    p.add_argument("--verbose", "-v", action="store_true", help="more log messages")
    p.add_argument("--rusage", action="store_true",
                   help="after the work, print what the kernel accounted (time, memory, faults, I/O) to stderr")


def run(prog: str, args: argparse.Namespace, body: Callable[[argparse.Namespace], int]) -> int:
    """Run a command body: errors become one line on stderr and exit status 1, Ctrl-C 130, SIGTERM 143."""
    start = time.perf_counter()
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format=f"{prog}: %(message)s", stream=sys.stderr, force=True)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return body(args)
    except (FormatError, OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prog}: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated; nothing was left half-written", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.rusage:
            print(rusage.report(rusage.measure(start)), file=sys.stderr)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = ": ".join(str(f) for f in (e.filename, e.filename2) if f)
        return f"{where}: {e.strerror}" if where else e.strerror
    return " ".join(str(e).split()) or type(e).__name__


def _inspect(args: argparse.Namespace) -> int:
    desc = describe(read_index(args.file))
    print(json.dumps(desc, indent=2) if args.json else render(desc))
    return 0


def _verify(args: argparse.Namespace) -> int:
    read_index(args.file)  # every structural check lives in the decoder
    print("OK")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ggmlfmt", description="Inspect and verify 2023 llama.cpp model files "
                                "(ggml, ggmf, ggjt v1-v3).")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("inspect", help="format, header, vocabulary, tensor table and byte accounting")
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    c.set_defaults(body=_inspect)
    c = sub.add_parser("verify", help="every structural check; prints OK or the first problem")
    c.add_argument("file")
    c.set_defaults(body=_verify)
    for c in sub.choices.values():
        add_common_options(c)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run("ggmlfmt", args, args.body)


if __name__ == "__main__":
    sys.exit(main())
