"""`make bench ARGS=--quick` passes `--quick` to every module `bench/__main__.py` runs: each must take it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.__main__ import MODULES


@pytest.mark.parametrize("module", MODULES)
def test_every_bench_module_takes_quick(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout
