"""What every command of the project shares: the common options, the runner and the progress bar.

Only the commands' cli.py modules use it; it prints (errors to stderr) on their behalf. A bad input file (a
FormatError kind), a request that cannot be carried out (a RequestError kind: BadOption, CannotWrite, ...) or
an OSError becomes one line and exit status 1 (--debug shows the traceback); anything else is a bug and shows
its traceback.
"""

from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from ggmlfmt.errors import FormatError, RequestError


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so temporary files are removed."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


class _StderrHandler(logging.StreamHandler):
    """Writes each record to whatever sys.stderr is at that moment (tests and tools swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options every command has."""
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or log messages, errors only")
    p.add_argument("--verbose", "-v", action="store_true", help="more log messages")
    p.add_argument("--rusage", action="store_true",
                   help="after the work, print what the kernel accounted (time, memory, faults, I/O) to stderr")


def _rusage_module() -> Any:
    """ggmlfmt.tools.rusage, imported only for --rusage (it needs `resource`, which Windows lacks).

    Raises:
        OSError: ENOSYS naming the resource module where it is missing.
    """
    try:
        from ggmlfmt.tools import rusage
    except ImportError:
        raise OSError(errno.ENOSYS, "--rusage needs getrusage (Python's resource module), which this system "
                      "lacks") from None
    return rusage


def run(prog: str, args: argparse.Namespace, body: Callable[[argparse.Namespace], int]) -> int:
    """Run a command body: errors become one line on stderr and exit status 1, Ctrl-C 130, SIGTERM 143."""
    start = time.perf_counter()
    if isinstance(sys.stdout, io.TextIOWrapper):  # a path that is not UTF-8 prints as its bytes, not a traceback
        sys.stdout.reconfigure(errors="surrogateescape")
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format=f"{prog}: %(message)s", handlers=[_StderrHandler()], force=True)
    rusage = None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rusage = _rusage_module() if args.rusage else None  # before the work: refuse early, not after it
        return body(args)
    except BrokenPipeError:  # stdout's reader left (`| head`): not an error of ours, say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail
        return 141  # 128 + SIGPIPE, what a program killed by the signal reports
    except (FormatError, RequestError, OSError) as e:  # the input, the request, the OS; anything else is a bug
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
        if rusage is not None:
            print(rusage.report(rusage.measure(start)), file=sys.stderr)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = ": ".join(str(f) for f in (e.filename, e.filename2) if f)
        return f"{where}: {e.strerror}" if where else e.strerror
    return " ".join(str(e).split()) or type(e).__name__


@contextmanager
def progress_bar(total: int, *, desc: str, quiet: bool,
                 terminal_only: bool = False) -> Iterator[Callable[[int], Any] | None]:
    """A tqdm byte counter on stderr (rate, ETA), or None when quiet or tqdm is not installed (it is optional).

    terminal_only: show it only when stderr is a terminal (tqdm's disable=None).
    """
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if quiet or tqdm is None:
        yield None
        return
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc=desc,
              mininterval=0.5, disable=None if terminal_only else False, leave=False) as bar:
        yield bar.update
