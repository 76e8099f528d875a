"""The worker key of the verified hop: made by the CLI, loaded, derived, and required (one-line errors)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.core import Ledger
from ledger.intake import HopKey, HopKeyError
from schemas.signing import generate_key, save_private_key
from streams.settings import Settings, resolve_hop_key
from streams.worker import WorkerError, check_store


def bl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("batteryledger")
    env = {k: v for k, v in os.environ.items() if k != "BATTERYLEDGER_DEBUG"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)


def test_keys_worker_writes_a_private_key_file_and_keeps_it_if_asked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "worker.key"
    res = bl("keys", "worker", str(path))
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = HopKey.load(path)
    assert key.kid in res.stdout
    res = bl("keys", "worker", str(path))
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(errors) == 1 and "exists" in errors[0], res.stderr
    res = bl("keys", "worker", str(path), "--if-missing")
    assert res.returncode == 0 and HopKey.load(path) == key  # kept, not replaced


def test_a_worker_key_is_the_file_else_derived_from_the_operator_key(tmp_path: Path) -> None:
    op = generate_key()
    save_private_key(op, tmp_path / "operator.key")
    s = Settings(operator_key=tmp_path / "operator.key", data_dir=tmp_path / "faust")
    derived = resolve_hop_key(s)
    assert derived == resolve_hop_key(s) == HopKey.derived(op)  # every worker of the ledger agrees
    assert derived.secret != op.private_bytes_raw()
    HopKey.generate().save(tmp_path / "worker.key")
    assert resolve_hop_key(s.with_(worker_key=tmp_path / "worker.key")) == HopKey.load(
        tmp_path / "worker.key"
    )
    (tmp_path / "bad.key").write_text("not hex\n")
    with pytest.raises(HopKeyError, match="not a worker key"):
        resolve_hop_key(s.with_(worker_key=tmp_path / "bad.key"))


def test_a_worker_without_any_key_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/l.db"
    Ledger.init(store, operator_key=generate_key(), origin="t/k").close()
    with pytest.raises(WorkerError) as info:
        check_store(Settings(store=store, data_dir=tmp_path / "faust"))
    msg = str(info.value)
    assert "\n" not in msg and "batteryledger keys worker" in msg and "BATTERYLEDGER_WORKER_KEY" in msg
