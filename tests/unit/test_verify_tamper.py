"""`verify` on real store files tampered with by hand: each attack is caught and the entry named."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from batteryledger.sample import demo_chain
from ledger import chain
from ledger.core import Ledger, verify_ledger
from schemas.signing import sign_object


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    c = demo_chain()
    led = Ledger.init(str(path), operator_key=c.operator_key, origin="test.example/ledger")
    half = len(c.good_events) // 2
    assert all(r.status == "appended" for r in led.append([e.raw for e in c.good_events[:half]]))
    led.make_checkpoint()
    assert all(r.status == "appended" for r in led.append([e.raw for e in c.good_events[half:]]))
    led.make_checkpoint()
    led.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path


def tampered(pristine: Path, tmp_path: Path, attack: Callable[[sqlite3.Connection], None]) -> Ledger:
    path = tmp_path / "ledger.db"
    shutil.copy(pristine, path)
    con = sqlite3.connect(path)
    attack(con)
    con.commit()
    con.close()
    return Ledger(str(path))


def test_pristine_store_verifies(pristine: Path, tmp_path: Path) -> None:
    led = tampered(pristine, tmp_path, lambda con: None)
    report = verify_ledger(led)
    assert report.ok, report.errors
    assert report.entries == led.size
    assert report.checkpoints == 2
    assert report.signatures_checked == led.size


def test_flipped_byte_is_named(pristine: Path, tmp_path: Path) -> None:
    def flip(con: sqlite3.Connection) -> None:
        data = bytearray(con.execute("SELECT data FROM entries WHERE seq = 40").fetchone()[0])
        i = data.index(b'"kg":"') + 6
        data[i] = ord("9") if data[i] != ord("9") else ord("8")  # change a quantity's first digit
        con.execute("UPDATE entries SET data = ? WHERE seq = 40", (bytes(data),))

    report = verify_ledger(tampered(pristine, tmp_path, flip))
    assert not report.ok
    seq, message = report.first_error  # type: ignore[misc]
    assert seq == 40
    assert "entry 40" in message and "edited" in message


def test_edit_with_recomputed_hashes_is_caught_by_signature_and_checkpoint(
    pristine: Path, tmp_path: Path
) -> None:
    # a careful attacker rewrites the bytes AND every leaf and entry hash after it: the chain is then
    # internally consistent, but the facility's signature and the signed checkpoints are not
    def rewrite(con: sqlite3.Connection) -> None:
        rows = con.execute("SELECT seq, data FROM entries ORDER BY seq").fetchall()
        prev = chain.GENESIS
        for seq, data in rows:
            if seq == 30:
                data = bytes(data).replace(b'"kg":"', b'"kg":"1', 1)  # ten times the mass, say
            leaf = chain.leaf_of(bytes(data))
            prev = chain.entry_hash(prev, leaf)
            con.execute(
                "UPDATE entries SET data = ?, leaf_hash = ?, entry_hash = ? WHERE seq = ?",
                (bytes(data), leaf, prev, seq),
            )

    report = verify_ledger(tampered(pristine, tmp_path, rewrite))
    assert not report.ok
    messages = " | ".join(m for _, m in report.errors)
    assert report.first_error[0] == 30  # type: ignore[index]
    assert "bad_signature" in messages or "schema_invalid" in messages
    assert "checkpoint" in messages


def test_deleted_row_is_named(pristine: Path, tmp_path: Path) -> None:
    report = verify_ledger(
        tampered(pristine, tmp_path, lambda con: con.execute("DELETE FROM entries WHERE seq = 25"))
    )
    assert not report.ok
    assert report.first_error == (25, "entry 25 is missing (the next stored entry is 26)")


def test_reordered_rows_are_named(pristine: Path, tmp_path: Path) -> None:
    def swap(con: sqlite3.Connection) -> None:
        a = con.execute("SELECT event_id, data, leaf_hash, entry_hash FROM entries WHERE seq = 50").fetchone()
        b = con.execute("SELECT event_id, data, leaf_hash, entry_hash FROM entries WHERE seq = 51").fetchone()
        con.execute("UPDATE entries SET event_id = 'tmp' WHERE seq = 50")
        con.execute(
            "UPDATE entries SET event_id = ?, data = ?, leaf_hash = ? WHERE seq = 51", (a[0], a[1], a[2])
        )
        con.execute(
            "UPDATE entries SET event_id = ?, data = ?, leaf_hash = ? WHERE seq = 50", (b[0], b[1], b[2])
        )

    report = verify_ledger(tampered(pristine, tmp_path, swap))
    assert not report.ok
    assert report.first_error[0] == 50  # type: ignore[index]
    assert "chain broken at entry 50" in report.first_error[1]  # type: ignore[index]


def test_inserted_row_is_named(pristine: Path, tmp_path: Path) -> None:
    # shift every entry from 60 up by one and insert a forged, self-consistent row at 60
    forged_key = (
        demo_chain().operator_key
    )  # not this ledger's operator: the signature cannot match a registered key
    raw, eid = sign_object(
        {
            "spec": "batteryledger/1",
            "kind": "batch.extracted",
            "facility_id": "mine-cd-kolwezi",
            "time": "2025-06-01T00:00:00Z",
            "outputs": [{"batch_id": "FORGED-1", "material": "cobalt_hydroxide", "kg": "1"}],
        },
        forged_key,
    )

    def insert(con: sqlite3.Connection) -> None:
        n = con.execute("SELECT MAX(seq) FROM entries").fetchone()[0]
        for seq in range(n, 59, -1):
            con.execute("UPDATE entries SET seq = seq + 1 WHERE seq = ?", (seq,))
        prev = con.execute("SELECT entry_hash FROM entries WHERE seq = 59").fetchone()[0]
        leaf = chain.leaf_of(raw)
        con.execute(
            "INSERT INTO entries (seq, event_id, kind, facility_id, time, data, leaf_hash, entry_hash, appended_at) "
            "VALUES (60, ?, 'batch.extracted', 'mine-cd-kolwezi', '2025-06-01 00:00:00', ?, ?, ?, '2025-06-01 00:00:00')",
            (eid, raw, leaf, chain.entry_hash(bytes(prev), leaf)),
        )

    report = verify_ledger(tampered(pristine, tmp_path, insert))
    assert not report.ok
    assert report.first_error[0] == 60  # type: ignore[index]
    messages = [m for s, m in report.errors if s == 60]
    assert any("bad_signature" in m or "unknown_key" in m for m in messages), messages


def test_tampered_checkpoint_and_merkle_node(pristine: Path, tmp_path: Path) -> None:
    def attack(con: sqlite3.Connection) -> None:
        note = con.execute("SELECT note FROM checkpoints ORDER BY size LIMIT 1").fetchone()[0]
        con.execute(
            "UPDATE checkpoints SET note = ? WHERE size = (SELECT MIN(size) FROM checkpoints)",
            (note.replace("\n", "\n\n", 1),),
        )
        con.execute(
            "UPDATE merkle_nodes SET hash = ? WHERE level = 0 AND idx = 3", (hashlib.sha256(b"x").digest(),)
        )

    report = verify_ledger(tampered(pristine, tmp_path, attack))
    messages = " | ".join(m for _, m in report.errors)
    assert "checkpoint at size" in messages
    assert "stored Merkle node (level 0, index 3) over entries 3..3" in messages


def test_chain_only_mode_skips_signatures(pristine: Path, tmp_path: Path) -> None:
    report = verify_ledger(tampered(pristine, tmp_path, lambda con: None), signatures=False)
    assert report.ok and report.signatures_checked == 0
