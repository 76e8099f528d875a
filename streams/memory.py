"""glibc malloc settings for the worker and its helper processes (issue 11's soak).

The worker hands verified-topic records of up to 900 KiB to its store process, and the verify helper
hands back records as large: buffers of hundreds of KiB made and freed in several threads (the
executor's feeder and result threads, the event loop). With glibc's defaults such a buffer is carved
from a heap once the dynamic mmap threshold has risen past its size, and each thread may get its own
arena, so freed space is scattered and resident memory creeps up: a 200k-event soak grew the worker
154 -> 182 MiB. With the threshold fixed at 128 KiB (large buffers are mmapped and go back to the system
when freed) and at most two arenas per process, the worker stayed at 140-147 MiB.

:func:`tune_malloc` sets both with ``mallopt`` for the calling process (threads made later use them);
it is a no-op that returns False where the C library is not glibc.

:func:`freeze_heap` is for latency, not size: a worker holds about 120k objects once Faust, aiokafka,
pydantic and SQLAlchemy are loaded, and every full (generation 2) collection walked them all, 80-140 ms
with the event loop stopped, once or twice in every 10 s of load at 1,000 events/s: the largest single
stall in the worker's publish -> appended tail. Frozen after start-up (``gc.freeze``), they are never
walked again; the objects made later are, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

__all__ = ["ARENA_MAX", "MMAP_THRESHOLD", "freeze_heap", "tune_malloc"]

#: glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: allocations at least this large are mmapped (and unmapped when freed); glibc's own starting value,
#: kept from rising
MMAP_THRESHOLD = 128 * 1024
#: arenas per process
ARENA_MAX = 2


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold and cap its arenas for this process; False where not applicable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, ARENA_MAX))


def freeze_heap() -> int:
    """Collect garbage once, then move every object alive now to the collector's permanent generation,
    which later collections do not walk (objects alive at start-up live as long as the process).
    Returns how many objects are frozen. Objects still free normally when their last reference goes;
    a cycle among them made garbage later is not collected, so call this once, after start-up."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
