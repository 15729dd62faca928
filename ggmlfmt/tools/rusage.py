"""What the kernel accounted for this process: wall and CPU time, peak RSS, faults, switches, I/O."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """getrusage(2) of this process and its waited-for children, plus wall time since `start`.

    Peak RSS is this process's alone (children's peaks are not comparable; see _peak_rss_kib).
    """

    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int  # Linux reports ru_maxrss in KiB
    major_faults: int  # a page had to come from disk
    minor_faults: int  # the page was in memory already (page cache, zero page, copy-on-write)
    voluntary_switches: int  # waited (I/O, locks)
    involuntary_switches: int  # preempted
    in_blocks: int  # 512-byte blocks read from storage
    out_blocks: int


def _peak_rss_kib(fallback: int) -> int:
    """This process's peak resident set (VmHWM).

    ru_maxrss is not used for it because Linux carries a parent's RSS into the child across fork
    and exec, so a small command started from a large process would report the parent's peak.
    """
    try:
        with open("/proc/self/status", errors="replace") as f:  # Name: is the command's bytes
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return fallback


def _process_age_s() -> float | None:
    """Seconds since this process started (/proc; 10 ms resolution), or None where /proc is missing."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def measure(start: float) -> Usage:
    """Usage of this process (and its children) since it started, like getrusage itself.

    `start` (a time.perf_counter() value) is the fallback for the wall time where /proc is missing.
    """
    age = _process_age_s()
    wall = max(age, time.perf_counter() - start) if age is not None else time.perf_counter() - start
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)

    def both(field: str) -> Any:
        return getattr(me, field) + getattr(kids, field)

    return Usage(wall_s=wall, user_s=both("ru_utime"), sys_s=both("ru_stime"), max_rss_kib=_peak_rss_kib(me.ru_maxrss),
                 major_faults=both("ru_majflt"), minor_faults=both("ru_minflt"), voluntary_switches=both("ru_nvcsw"),
                 involuntary_switches=both("ru_nivcsw"), in_blocks=both("ru_inblock"), out_blocks=both("ru_oublock"))


def _duration(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:,.0f} µs"
    if s < 1:
        return f"{s * 1e3:,.1f} ms"
    return f"{s:,.2f} s"


def _size(kib: int) -> str:
    for unit, scale in (("GiB", 1 << 20), ("MiB", 1 << 10)):
        if kib >= scale:
            return f"{kib / scale:,.1f} {unit}"
    return f"{kib:,} KiB"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "0%"


def report(u: Usage) -> str:
    """Readable lines, one fact each."""
    cpu = u.user_s + u.sys_s
    faults = u.major_faults + u.minor_faults
    switches = u.voluntary_switches + u.involuntary_switches
    return "\n".join([
        f"rusage: wall time      {_duration(u.wall_s)}",
        f"rusage: peak RSS       {_size(u.max_rss_kib)}",
        f"rusage: CPU time       {_duration(cpu)} ({_share(u.sys_s, cpu)} in the kernel)",
        f"rusage: page faults    {faults:,} ({u.major_faults:,} major from disk, {u.minor_faults:,} minor in memory)",
        f"rusage: ctx switches   {switches:,} ({_share(u.voluntary_switches, switches)} voluntary)",
        f"rusage: block I/O      {u.in_blocks:,} in, {u.out_blocks:,} out (512-byte blocks)",
    ])
