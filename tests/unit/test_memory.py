"""streams.memory: glibc's mmap threshold fixed and its arenas capped, in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def test_tune_malloc_takes_on_glibc() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    # a fresh interpreter: mallopt changes the process it runs in
    code = textwrap.dedent(
        """
        import ctypes, ctypes.util, platform
        from streams.memory import tune_malloc
        print(platform.libc_ver()[0], tune_malloc())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    libc, took = out.split()
    assert libc == "glibc" and took == "True"


def test_freeze_heap_keeps_start_up_objects_out_of_full_collections() -> None:
    # a fresh interpreter: freezing changes the process it runs in
    code = textwrap.dedent(
        """
        import gc
        import faust, sqlalchemy, pydantic  # what a worker loads
        from streams.memory import freeze_heap
        before = len(gc.get_objects())
        frozen = freeze_heap()
        after = len(gc.get_objects())  # what a full collection still walks
        garbage = [[]]
        garbage[0].append(garbage)  # a cycle made after the freeze is still collected
        del garbage
        print(before, frozen, after, gc.collect())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, frozen, after, collected = map(int, out.split())
    assert frozen >= before * 0.9 and before > 20_000
    assert after < 1_000
    assert collected >= 2
