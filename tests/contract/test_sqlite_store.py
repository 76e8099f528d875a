"""The ledger-store contract on SQLite, the embedded default (a file per test)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from batteryledger.sample import demo_chain
from ledger.core import Ledger
from ledger.store import StoreError
from tests.contract.store_contract import ORIGIN, LedgerStoreContract


class TestSQLiteStore(LedgerStoreContract):
    @pytest.fixture
    def store_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture
    def read_only_url(self, store_url: str) -> str:
        return store_url + "?mode=ro"  # SQLite itself refuses every write on this connection


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_store_can_be_initialised_and_used(url: str) -> None:
    # make_engine keeps one connection (StaticPool) for an in-memory database; `init` must hand that
    # same engine to the Ledger it returns, or the schema it created is gone before the first append
    demo = demo_chain()
    with Ledger.init(url, operator_key=demo.operator_key, origin=ORIGIN) as led:
        results = led.append([e.raw for e in demo.good_events])
        assert [r.status for r in results] == ["appended"] * len(demo.good_events)
        assert led.provenance("US-PACK-001").ancestors == 16


# -- broken SQLite stores: read commands never write; failures are one line naming the store ----------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    bl = str(Path(sys.executable).with_name("batteryledger"))
    return subprocess.run([bl, *args], capture_output=True, text=True, timeout=300, cwd="/", check=False)


def _write_protect(*paths: Path, on: bool) -> None:
    """Really read-only, for root too: chmod for a user, the immutable attribute (chattr +i) for root."""
    for p in paths:
        if os.geteuid() == 0:
            proc = subprocess.run(["chattr", "+i" if on else "-i", str(p)], capture_output=True, text=True)
            assert proc.returncode == 0, f"chattr is needed to make a file read-only for root: {proc.stderr}"
        else:
            p.chmod((0o555 if p.is_dir() else 0o444) if on else 0o755)


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and proc.stderr.strip().endswith(lines[0]), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def demo_file(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    demo = demo_chain()
    with Ledger.init(str(path), operator_key=demo.operator_key, origin=ORIGIN) as led:
        assert all(r.status == "appended" for r in led.append([e.raw for e in demo.good_events]))
        led.make_checkpoint()
    return path


def test_a_read_only_ledger_file_is_read_and_left_untouched(demo_file: Path, tmp_path: Path) -> None:
    shared = tmp_path / "ro"
    shared.mkdir()
    path = shared / "ledger.db"
    shutil.copy(demo_file, path)
    before = path.read_bytes()
    _write_protect(path, shared, on=True)
    try:
        assert not os.access(path, os.W_OK)
        prov = _cli("provenance", "US-PACK-002", "--json", "--store", str(path))
        assert prov.returncode == 0, prov.stderr
        assert json.loads(prov.stdout)["batch_id"] == "US-PACK-002"
        ver = _cli("verify", "--store", str(path))
        assert ver.returncode == 0, ver.stderr
        assert "ok:" in ver.stdout and "verified mark not recorded" in ver.stderr
        _one_line_error(_cli("append", "/dev/null", "--store", str(path)), str(path), "is read-only")
        assert path.read_bytes() == before
        assert sorted(p.name for p in shared.iterdir()) == ["ledger.db"]  # no -wal, -shm or lock file
    finally:
        _write_protect(path, shared, on=False)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", ("no ledger at", "batteryledger init")),
        (b"name,kg\nAU-SPOD-001,100000\n" * 200, ("is not a SQLite database", "check --store")),
    ],
)
def test_reading_an_empty_or_foreign_file_changes_nothing_and_says_so_in_one_line(
    tmp_path: Path, content: bytes, words: tuple[str, ...]
) -> None:
    path = tmp_path / "other.db"
    path.write_bytes(content)
    for cmd in (["provenance", "X"], ["lineage", "X"], ["verify"], ["stats"]):
        _one_line_error(_cli(*cmd, "--store", str(path)), str(path), *words)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # not turned into WAL mode


def test_another_applications_sqlite_file_is_not_converted_or_given_tables(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (x TEXT)")
    con.commit()
    con.close()
    _one_line_error(_cli("stats", "--store", str(path)), "no ledger at", "batteryledger init")
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["notes"]
    con.close()


def test_an_unreachable_postgresql_is_one_line_naming_the_store_without_its_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    url = f"postgresql://bl:secret@127.0.0.1:{port}/ledger"
    line = _one_line_error(_cli("stats", "--store", url), "is unreachable", f"127.0.0.1:{port}/ledger")
    assert "secret" not in line


def test_a_full_disk_refuses_the_append_loses_nothing_and_leaves_a_sound_ledger(demo_file: Path) -> None:
    from ledger.core import verify_ledger

    led = Ledger(str(demo_file))
    size, pages = led.size, 0
    with led.engine.connect() as conn:
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)
    led.engine.dispose()

    @event.listens_for(led.engine, "connect")
    def _cap(dbapi_conn: Any, _rec: Any) -> None:  # the disk has room for 2 more pages, no more
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 2}")

    # another chain's events (its authority is unknown here: each is a rejection row with its bytes):
    # far more than 2 pages of writes
    raws = [e.raw for e in demo_chain().good_events]
    with pytest.raises(StoreError) as err:
        led.append(raws)
    message = err.value.diagnostics()
    assert "is full" in message and "nothing was written" in message and str(demo_file) in message
    assert "\n" not in message and "INSERT" not in message
    assert led.size == size
    event.remove(led.engine, "connect", _cap)
    led.engine.dispose()
    fresh = Ledger(str(demo_file))
    assert fresh.size == size
    assert verify_ledger(fresh, record=False).ok
    assert all(r.status in ("appended", "duplicate") for r in fresh.append([demo_file_event(fresh)]))


def demo_file_event(led: Ledger) -> bytes:
    """Any event the ledger takes after the refusal: a replay of its own entry 1 (a no-op)."""
    with led.engine.connect() as conn:
        return bytes(conn.exec_driver_sql("SELECT data FROM entries WHERE seq = 1").scalar())


def test_a_database_failure_mid_command_is_one_line_without_the_sql(demo_file: Path) -> None:
    con = sqlite3.connect(demo_file)
    con.execute("DROP TABLE edges")  # a store damaged by hand: queries fail with a driver error
    con.commit()
    con.close()
    for cmd in (
        ["provenance", "US-PACK-002"],
        ["lineage", "US-PACK-002"],
        ["prove", "US-PACK-002", "-o", "/dev/null"],
    ):
        line = _one_line_error(_cli(*cmd, "--store", str(demo_file)), "no such table: edges")
        assert "[SQL" not in line and "SELECT" not in line and len(line) < 400
