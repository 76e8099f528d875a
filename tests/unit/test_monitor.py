"""`monitor` moves a trusted checkpoint forward only along one history; `checkpoint` prints and signs.

The logs are real SQLite ledgers built from the demo chain with one operator key and origin: a short
one (the first half of the events), a long one (all of them, same prefix), and forks (same key and
origin, other events).
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from batteryledger import cli_proofs
from batteryledger.sample import DemoChain, demo_chain
from ledger.checkpoint import Checkpoint, open_note, vkey
from ledger.core import Ledger, verify_ledger
from schemas.signing import generate_key, save_private_key, sign_object

ORIGIN = "test.example/monitor"


@dataclass
class Logs:
    chain: DemoChain
    short: Path
    long: Path
    short_note: str
    long_note: str
    pub: Path  # the operator's public key file, as `batteryledger init` writes it
    key_file: Path


def build(path: Path, chain: DemoChain, upto: int | None = None) -> tuple[Ledger, str]:
    led = Ledger.init(str(path), operator_key=chain.operator_key, origin=ORIGIN)
    events = chain.good_events[:upto]
    assert all(r.status == "appended" for r in led.append([e.raw for e in events]))
    note = led.make_checkpoint()
    assert note is not None
    return led, note


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Logs:
    d = tmp_path_factory.mktemp("monitor")
    chain = demo_chain()
    half = len(chain.good_events) // 2
    short, short_note = build(d / "short.db", chain, half)
    short.close()
    long, long_note = build(d / "long.db", chain)
    long.close()
    key_file = d / "keys" / "operator.key"
    pub = save_private_key(chain.operator_key, key_file)
    return Logs(chain, d / "short.db", d / "long.db", short_note, long_note, pub, key_file)


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    cli_proofs.register(app)
    return app


def size_of(note: str, logs: Logs) -> int:
    return Checkpoint.parse(open_note(note, ORIGIN, logs.chain.operator_key.public_key())).size


def run(cli: typer.Typer, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in res.output
    return res.exit_code, res.stdout, res.stderr


def test_accepts_a_consistent_newer_checkpoint_and_updates_the_file(
    logs: Logs, cli: typer.Typer, tmp_path: Path
) -> None:
    trusted = tmp_path / "trusted.ckpt"
    trusted.write_text(logs.short_note)
    old, new = size_of(logs.short_note, logs), size_of(logs.long_note, logs)
    assert old < new
    code, out, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(logs.long))
    assert code == 0, err
    assert f"moved from size {old} to {new}" in out
    assert trusted.read_text() == logs.long_note
    code, out, _ = run(cli, "monitor", "--trusted", str(trusted), "--store", str(logs.long), "--json")
    assert code == 0 and '"updated": false' in out
    assert [p.name for p in tmp_path.iterdir()] == ["trusted.ckpt"]  # no temporary files left behind


def test_refuses_to_move_backwards(logs: Logs, cli: typer.Typer, tmp_path: Path) -> None:
    trusted = tmp_path / "trusted.ckpt"
    trusted.write_text(logs.long_note)
    code, _, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(logs.short))
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "older than the trusted one" in err and "backwards" in err
    assert trusted.read_text() == logs.long_note


def test_refuses_a_forked_history(logs: Logs, cli: typer.Typer, tmp_path: Path) -> None:
    # same operator key, same origin, another history: the demo chain again with fresh facility keys
    other = demo_chain(logs.chain.operator_key)
    half = len(other.good_events) // 2
    fork, fork_note = build(tmp_path / "fork.db", other, half)
    trusted = tmp_path / "trusted.ckpt"
    trusted.write_text(logs.short_note)
    # a checkpoint of the same size with another root: both are validly signed, so the log forked
    assert size_of(fork_note, logs) == size_of(logs.short_note, logs)
    code, _, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(tmp_path / "fork.db"))
    assert code == 1 and "different roots" in err and "forked" in err
    # a bigger checkpoint that does not extend the trusted tree
    assert all(r.status == "appended" for r in fork.append([e.raw for e in other.good_events[half:]]))
    assert fork.make_checkpoint() is not None
    fork.close()
    code, _, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(tmp_path / "fork.db"))
    assert code == 1 and "not consistent with the trusted one" in err
    assert trusted.read_text() == logs.short_note


def test_refuses_a_store_that_swapped_the_operator_key(logs: Logs, cli: typer.Typer, tmp_path: Path) -> None:
    # a log under the same origin signed by another key: its checkpoints do not open with the trusted
    # file's key, and its own key does not open the trusted file
    build(tmp_path / "other.db", demo_chain(generate_key()))[0].close()
    trusted = tmp_path / "trusted.ckpt"
    trusted.write_text(logs.short_note)
    code, _, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(tmp_path / "other.db"))
    assert code == 1 and "does not verify under the store's operator key" in err
    code, _, err = run(
        cli,
        "monitor",
        "--trusted",
        str(trusted),
        "--store",
        str(tmp_path / "other.db"),
        "--operator-key",
        str(logs.pub),
    )
    assert code == 1 and "not signed by the trusted key" in err
    assert trusted.read_text() == logs.short_note


def test_refuses_an_edited_trusted_file(logs: Logs, cli: typer.Typer, tmp_path: Path) -> None:
    lines = logs.short_note.split("\n")
    lines[1] = str(int(lines[1]) + 1)  # claim a bigger tree under the same signature
    trusted = tmp_path / "trusted.ckpt"
    trusted.write_text("\n".join(lines))
    code, _, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(logs.long))
    assert code == 1 and "does not verify" in err


def test_first_use_needs_a_pinned_key(logs: Logs, cli: typer.Typer, tmp_path: Path) -> None:
    trusted = tmp_path / "new.ckpt"
    code, _, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(logs.long))
    assert code == 2 and "--operator-key" in err and not trusted.exists()
    wrong = vkey(ORIGIN, generate_key().public_key())
    code, _, err = run(
        cli, "monitor", "--trusted", str(trusted), "--store", str(logs.long), "--operator-vkey", wrong
    )
    assert code == 1 and not trusted.exists()
    right = vkey(ORIGIN, logs.chain.operator_key.public_key())
    code, out, err = run(
        cli, "monitor", "--trusted", str(trusted), "--store", str(logs.long), "--operator-vkey", right
    )
    assert code == 0, err
    assert "first use" in out and trusted.read_text() == logs.long_note


def test_checkpoint_prints_the_latest_and_signs_on_demand(
    logs: Logs, cli: typer.Typer, tmp_path: Path
) -> None:
    code, out, _ = run(cli, "checkpoint", "--store", str(logs.long))
    assert code == 0 and out == logs.long_note
    code, _, err = run(cli, "checkpoint", "--store", str(logs.long), "--sign")
    assert code == 2 and "--operator-key" in err
    # a store with entries past its latest checkpoint: --sign covers them, and the new head is consistent
    led, note = build(tmp_path / "grow.db", logs.chain, 10)
    assert all(r.status == "appended" for r in led.append([e.raw for e in logs.chain.good_events[10:20]]))
    led.close()
    code, out, err = run(
        cli,
        "checkpoint",
        "--store",
        str(tmp_path / "grow.db"),
        "--sign",
        "--operator-key",
        str(logs.key_file),
    )
    assert code == 0, err
    assert (
        f"signed checkpoint at size {size_of(out, logs)}" in err
        and size_of(out, logs) == size_of(note, logs) + 10
    )
    trusted = tmp_path / "trusted.ckpt"
    trusted.write_text(note)
    code, out, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(tmp_path / "grow.db"))
    assert code == 0, err


def test_checkpoint_without_any_says_how_to_make_one(logs: Logs, cli: typer.Typer, tmp_path: Path) -> None:
    Ledger.init(str(tmp_path / "empty.db"), operator_key=logs.chain.operator_key, origin=ORIGIN).close()
    code, _, err = run(cli, "checkpoint", "--store", str(tmp_path / "empty.db"))
    assert code == 2 and "checkpoint --sign --operator-key" in err


def test_deleting_the_last_entries_with_their_checkpoint_passes_verify_but_not_monitor(
    logs: Logs, cli: typer.Typer, tmp_path: Path
) -> None:
    # The store alone cannot show a clean truncation: the prefix that is left is a valid ledger. The
    # checkpoint the operator keeps elsewhere (`monitor --trusted`) is what catches it.
    path = tmp_path / "ledger.db"
    shutil.copy(logs.long, path)
    trusted = tmp_path / "trusted.ckpt"
    trusted.write_text(logs.long_note)
    led = Ledger(str(path), operator_key=logs.chain.operator_key)
    n = led.size
    mine = logs.chain.facilities["mine-cl-atacama"].key
    tail = [
        sign_object(
            {
                "spec": "batteryledger/1",
                "kind": "batch.extracted",
                "facility_id": "mine-cl-atacama",
                "time": f"2026-06-0{i}T00:00:00Z",
                "outputs": [
                    {"batch_id": f"CL-BRINE-T{i}", "material": "lithium_brine_concentrate", "kg": "9"}
                ],
            },
            mine,
        )[0]
        for i in (1, 2)
    ]
    assert [r.status for r in led.append(tail)] == ["appended", "appended"]
    assert led.make_checkpoint() is not None
    led.close()
    code, out, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(path))
    assert code == 0 and f"to {n + 2} consistently" in out, err
    # the attacker deletes the two entries, what they derived, their tree nodes and their checkpoint
    con = sqlite3.connect(path)
    con.execute("DELETE FROM entries WHERE seq >= ?", (n,))
    con.execute("DELETE FROM batches WHERE seq >= ?", (n,))
    for level in range(64):
        con.execute("DELETE FROM merkle_nodes WHERE level = ? AND idx >= ?", (level, n >> level))
    con.execute("DELETE FROM checkpoints WHERE size > ?", (n,))
    con.commit()
    con.close()
    cut = Ledger(str(path))
    assert cut.size == n
    assert verify_ledger(cut, record=False).ok  # nothing in the store itself is inconsistent...
    cut.close()
    code, _, err = run(cli, "monitor", "--trusted", str(trusted), "--store", str(path))
    assert code == 1  # ... but the checkpoint kept elsewhere is ahead of the store: caught
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"the newest checkpoint (size {n}) is older than the trusted one (size {n + 2})" in err
