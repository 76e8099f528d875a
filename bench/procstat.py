"""CPU time of processes from /proc (Linux), for benches that measure a broker or a database server."""

from __future__ import annotations

from pathlib import Path


def proc_stat(pid: int | str) -> tuple[int, int] | None:
    """(parent pid, user + system clock ticks so far) of a process; None when it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[11]) + int(fields[12])  # ppid; utime + stime
