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
