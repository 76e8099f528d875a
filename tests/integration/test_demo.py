"""The README's main command, `batteryledger demo`, run end to end as a user runs it.

It starts its own broker (free loopback ports, so it can run beside the session broker), a worker,
publishes the demo chain and the bad events, and must exit 0 only when every expectation is met. The
ledger it leaves in --out-dir is then checked independently of the demo's own report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.core import Ledger, verify_ledger

#: The demo's own bound is minutes; this only keeps a hung run from holding CI.
DEMO_TIMEOUT_S = 420


def _text(out: bytes | str | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")


def test_demo_runs_end_to_end_and_tidies_up(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    exe = Path(sys.executable).parent / "batteryledger"
    cmd = (
        [str(exe), "demo", "--out-dir", str(out)]
        if exe.exists()
        else [
            sys.executable,
            "-c",
            "from batteryledger.cli import main; main()",
            "demo",
            "--out-dir",
            str(out),
        ]
    )
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
            env={**os.environ, "COLUMNS": "160"},
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        log = (
            (out / "worker.log").read_text(errors="replace")[-4000:] if (out / "worker.log").exists() else ""
        )
        pytest.fail(
            f"demo did not finish in {DEMO_TIMEOUT_S} s\n{_text(exc.stdout)}\n{_text(exc.stderr)}\nworker log:\n{log}"
        )
    text = proc.stdout + proc.stderr
    worker_log = (
        (out / "worker.log").read_text(errors="replace")[-4000:] if (out / "worker.log").exists() else ""
    )
    assert proc.returncode == 0, f"{text[-6000:]}\nworker log:\n{worker_log}"
    assert "all expectations met" in text
    for reason in ("bad_signature", "overdrawn", "unknown_facility", "duplicate", "malformed"):
        assert reason in text
    assert "Provenance of US-PACK-001" in text and "FEOC-touched" in text

    with Ledger(f"sqlite:///{out / 'ledger.db'}") as led:
        stats = led.stats()
        assert stats["rejections"] == {
            "bad_signature": 1,
            "malformed": 1,
            "overdrawn": 1,
            "unknown_facility": 1,
        }
        assert stats["parked"] == 0
        assert stats["latest_checkpoint_size"] == stats["entries"]
        assert not verify_ledger(led).errors
        summary = led.provenance("US-PACK-002").summary()
        assert summary["elements"]["ni"]["shares"]["feoc_touched"] > 0  # Ningbo refined some of its nickel
        assert summary["elements"]["li"]["shares"]["recycled"] > 0  # the recycler's black mass came back

    # it stopped what it started: no worker or broker of this demo is left running
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(out) not in ps
