"""`verify` on real store files tampered with by hand: each attack is caught and the entry named."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from batteryledger.sample import DemoChain, demo_chain
from ledger import chain
from ledger.core import Ledger, verify_ledger
from ledger.store import StoreError
from ledger.verify import VERIFIED_HEADER, verified_through
from schemas.signing import sign_object


@pytest.fixture(scope="module")
def chain_keys() -> DemoChain:
    return demo_chain()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, chain_keys: DemoChain) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    c = chain_keys
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


# -- derived tables: recomputed from the signed entries and compared --------------------------------
def _messages(report: object) -> str:
    return " | ".join(m for _, m in report.errors)  # type: ignore[attr-defined]


def test_forged_provenance_index_changes_the_answer_and_verify_names_it(
    pristine: Path, tmp_path: Path
) -> None:
    # US-LIOH-001's lithium was mined in Australia: "US extracted" is 0%. Relabel its index as US-mined.
    def relabel(con: sqlite3.Connection) -> None:
        origins = json.loads(
            con.execute("SELECT origins FROM batches WHERE batch_id = 'US-LIOH-001'").fetchone()[0]
        )
        for row in origins["mass"]["li"]:  # (source, country, consumer, processing country, feoc, kg)
            row[1] = "US"
        con.execute(
            "UPDATE batches SET origins = ? WHERE batch_id = 'US-LIOH-001'",
            (json.dumps(origins, separators=(",", ":")),),
        )

    before = Ledger(str(pristine)).provenance("US-LIOH-001").summary(fta=["AU"])
    led = tampered(pristine, tmp_path, relabel)
    after = led.provenance("US-LIOH-001").summary(fta=["AU"])
    assert before["elements"]["li"]["shares"]["us_extracted"] == 0
    assert after["elements"]["li"]["shares"]["us_extracted"] > 0.7  # the silent lie this catches
    report = verify_ledger(led)
    assert not report.ok
    [line] = [m for m in report.errors if "US-LIOH-001" in m[1]]
    assert line[0] == 23  # the entry that made the batch
    assert line[1].startswith("batches[US-LIOH-001].origins (provenance index) li: stored {mined/US/")
    assert "recomputed {mined/AU/" in line[1] and "\n" not in line[1]


def test_fake_balance_lets_a_double_spend_append_and_verify_names_both(
    pristine: Path, tmp_path: Path, chain_keys: DemoChain
) -> None:
    # AU-SPOD-001 (100 t) was all consumed. Give 90 t back to the refiner in the balance and custody...
    def refill(con: sqlite3.Connection) -> None:
        custody = json.loads(
            con.execute("SELECT custody FROM batches WHERE batch_id = 'AU-SPOD-001'").fetchone()[0]
        )
        custody["holders"]["ref-us-kings-mountain"] = "90000"
        con.execute(
            "UPDATE batches SET consumed_kg = '10000', custody = ? WHERE batch_id = 'AU-SPOD-001'",
            (json.dumps(custody, sort_keys=True),),
        )

    led = tampered(pristine, tmp_path, refill)
    report = verify_ledger(led)
    assert not report.ok
    text = _messages(report)
    assert "batches[AU-SPOD-001].consumed_kg: stored 10000 != recomputed 100000" in text
    assert "batches[AU-SPOD-001].custody: stored" in text
    # ... and the refiner spends the same 90 t again: the edited balance lets it append
    raw, _ = sign_object(
        {
            "spec": "batteryledger/1",
            "kind": "batch.processed",
            "facility_id": "ref-us-kings-mountain",
            "time": "2026-06-01T00:00:00Z",
            "inputs": [{"batch_id": "AU-SPOD-001", "kg": "90000"}],
            "outputs": [
                {
                    "batch_id": "US-LIOH-DOUBLE",
                    "material": "lithium_hydroxide",
                    "kg": "12000",
                    "contained_kg": {"li": "2000"},
                }
            ],
        },
        chain_keys.facilities["ref-us-kings-mountain"].key,
    )
    [res] = led.append([raw])
    assert res.status == "appended", res
    report = verify_ledger(led)
    assert not report.ok
    text = _messages(report)
    assert f"entry {res.seq} does not replay: overdrawn" in text
    assert "batches[US-LIOH-DOUBLE]: stored row made by no entry" in text
    assert "edges[AU-SPOD-001 -> US-LIOH-DOUBLE]: stored edge made by no entry" in text


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "UPDATE edges SET kg = '1' WHERE parent = 'AU-SPOD-001' AND child = 'US-LIOH-001'",
            "edges[AU-SPOD-001 -> US-LIOH-001]: stored kg 1 at entry 23 != recomputed kg 100000 at entry 23",
        ),
        (
            "DELETE FROM edges WHERE parent = 'CN-NISO4-001'",
            "edges[CN-NISO4-001 -> KR-NMC811-001]: missing (recomputed from entry 44)",
        ),
        (
            "INSERT INTO edges (parent, child, kg, seq) VALUES ('US-CELL-001', 'US-PACK-002', '5', 76)",
            "edges[US-CELL-001 -> US-PACK-002]: stored edge made by no entry",
        ),
        (
            "UPDATE batches SET kg = '900000' WHERE batch_id = 'CL-LC-001'",
            "batches[CL-LC-001].kg: stored 900000",
        ),
        (
            "UPDATE batches SET li = '0' WHERE batch_id = 'US-PACK-002'",
            "batches[US-PACK-002].li: stored 0 != ",
        ),
        (
            "UPDATE batches SET country = 'US' WHERE batch_id = 'CN-COSO4-001'",
            "batches[CN-COSO4-001].country",
        ),
        ("UPDATE batches SET feoc = 0 WHERE batch_id = 'CN-COSO4-001'", "batches[CN-COSO4-001].feoc"),
        ("DELETE FROM batches WHERE batch_id = 'CD-COHYD-001'", "batches[CD-COHYD-001]: missing"),
        (
            "UPDATE entries SET kind = 'batch.recycled' WHERE seq = 20",
            "entries[20].kind: stored batch.recycled",
        ),
        (
            "UPDATE entries SET facility_id = 'ref-us-kings-mountain' WHERE seq = 28",
            "entries[28].facility_id: stored ref-us-kings-mountain != recomputed ref-cn-ningbo",
        ),
        (
            "UPDATE entries SET event_id = 'f00' WHERE seq = 30",
            "entries[30].event_id: stored f00 != recomputed",
        ),
    ],
)
def test_each_derived_table_edit_is_named(pristine: Path, tmp_path: Path, sql: str, expected: str) -> None:
    report = verify_ledger(tampered(pristine, tmp_path, lambda con: con.execute(sql)))
    assert not report.ok
    assert expected in _messages(report), report.errors
    assert all("\n" not in m for _, m in report.errors)


def test_bogus_merkle_node_is_found_and_append_refuses_in_one_line(
    pristine: Path, tmp_path: Path, chain_keys: DemoChain
) -> None:
    # a node where the next append will write its leaf: every later append would collide with it
    def plant(con: sqlite3.Connection) -> None:
        n = con.execute("SELECT MAX(seq) + 1 FROM entries").fetchone()[0]
        con.execute("INSERT INTO merkle_nodes (level, idx, hash) VALUES (0, ?, ?)", (n, b"\x01" * 32))

    led = tampered(pristine, tmp_path, plant)
    n = led.size
    report = verify_ledger(led)
    assert f"stored Merkle node (level 0, index {n}) lies beyond the {n} entries" in _messages(report)
    raw, _ = sign_object(
        {
            "spec": "batteryledger/1",
            "kind": "batch.extracted",
            "facility_id": "mine-cl-atacama",
            "time": "2026-06-01T00:00:00Z",
            "outputs": [{"batch_id": "CL-BRINE-009", "material": "lithium_brine_concentrate", "kg": "5"}],
        },
        chain_keys.facilities["mine-cl-atacama"].key,
    )
    with pytest.raises(StoreError) as err:
        led.append([raw])
    message = err.value.diagnostics()
    assert "\n" not in message
    assert f"stored Merkle node (level 0, index {n})" in message and "batteryledger verify" in message
    assert led.size == n and Ledger(led.url).size == n  # nothing half-written


# -- incremental: the verified mark -------------------------------------------------------------------
def test_clean_verify_records_a_checkpoint_bound_mark_and_skips_only_those_signatures(
    pristine: Path, tmp_path: Path
) -> None:
    led = tampered(pristine, tmp_path, lambda con: None)
    first = verify_ledger(led)
    assert first.ok and first.signatures_checked == led.size
    assert verified_through(led.engine, led.origin, led.operator_public_key).size == led.size
    again = verify_ledger(led)
    assert again.ok and again.signatures_from == led.size and again.signatures_checked == 0
    # the derived tables are still recomputed in full: an edit below the mark is still found
    with sqlite3.connect(led.url.removeprefix("sqlite:///")) as con:
        con.execute("UPDATE batches SET consumed_kg = '0' WHERE batch_id = 'CL-LC-001'")
    assert "batches[CL-LC-001].consumed_kg" in _messages(verify_ledger(led))


def test_forged_mark_is_ignored_and_full_rechecks_everything(pristine: Path, tmp_path: Path) -> None:
    led = tampered(pristine, tmp_path, lambda con: None)
    with sqlite3.connect(led.url.removeprefix("sqlite:///")) as con:
        con.execute(
            "INSERT INTO meta (key, value) VALUES ('verified_mark', ?)",
            (json.dumps({"size": led.size - 3, "root": "00" * 32}),),
        )
    report = verify_ledger(led)
    assert report.ok and report.signatures_from == 0 and report.signatures_checked == led.size
    assert any("no checkpoint: ignored" in n for n in report.notes)
    assert verify_ledger(led, full=True).signatures_checked == led.size


def test_read_only_verify_does_not_record_a_mark(pristine: Path, tmp_path: Path) -> None:
    led = tampered(pristine, tmp_path, lambda con: None)
    report = verify_ledger(led, record=False)
    assert report.ok
    assert verified_through(led.engine, led.origin, led.operator_public_key).size == 0


# -- the faces say when an answer rests on an unverified tail ---------------------------------------
def test_cli_and_api_say_when_an_answer_rests_on_an_unverified_tail(
    pristine: Path, tmp_path: Path, chain_keys: DemoChain
) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from batteryledger.api import create_app
    from batteryledger.cli import app

    led = tampered(pristine, tmp_path, lambda con: None)
    store = led.url.removeprefix("sqlite:///")
    runner = CliRunner()

    def cli(*args: str) -> str:
        res = runner.invoke(app, [*args, "--store", store])
        assert res.exit_code == 0, res.output
        return res.output

    # never verified: every answer rests on unverified entries
    assert "unverified: no `batteryledger verify` has vouched" in cli("provenance", "US-PACK-002")
    res = runner.invoke(app, ["lineage", "US-PACK-002", "--json", "--store", store])
    assert json.loads(res.stdout)["batch_id"] == "US-PACK-002"  # stdout stays pure JSON
    assert "note: unverified: no" in res.stderr
    with TestClient(create_app(store)) as client:
        assert client.get("/v1/batches/US-PACK-002/provenance").headers[VERIFIED_HEADER] == f"0/{led.size}"
    assert verify_ledger(led).ok
    n = led.size
    assert "note:" not in cli("provenance", "US-PACK-002")
    assert "note:" not in cli("lineage", "US-PACK-002", "--down")
    # one more entry after the mark: old answers upstream still rest on verified entries only, but the
    # lineage down (and the new batch) rest on the unverified tail
    raw, _ = sign_object(
        {
            "spec": "batteryledger/1",
            "kind": "batch.extracted",
            "facility_id": "mine-cl-atacama",
            "time": "2026-06-01T00:00:00Z",
            "outputs": [{"batch_id": "CL-BRINE-002", "material": "lithium_brine_concentrate", "kg": "5"}],
        },
        chain_keys.facilities["mine-cl-atacama"].key,
    )
    assert led.append([raw])[0].status == "appended"
    assert "note:" not in cli("provenance", "US-PACK-002")
    tail = f"unverified tail: entries {n}..{n} are not verified yet (run `batteryledger verify`)"
    assert tail in cli("provenance", "CL-BRINE-002")
    assert tail in cli("lineage", "CL-LC-001", "--down")
    with TestClient(create_app(store)) as client:
        assert client.get("/v1/status").headers[VERIFIED_HEADER] == f"{n}/{n + 1}"
