"""Mirrors and backups: verified copies of a ledger that trust nothing but the operator's public key.

The source ledger is served by the real HTTP API (uvicorn on a free loopback port, in a thread); the mirror
pulls it over HTTP. Backups are exported and imported on SQLite and on the throwaway PostgreSQL server.
Waits are bounded polls; no timing is asserted.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batteryledger.backup import ForkError, ReplicaError, export_backup, import_backup
from batteryledger.cli import app as cli_app
from batteryledger.mirror import fetch_json, mirror_once, open_mirror, run_mirror
from batteryledger.sample import DemoChain, demo_chain
from ledger.checkpoint import Checkpoint, sign_note
from ledger.core import Ledger, verify_ledger
from ledger.store import CHECKPOINTS, now
from schemas.signing import sign_object

ORIGIN = "test.batteryledger/mirror"


def extraction(chain: DemoChain, tag: str, n: int) -> list[bytes]:
    facs = [f for f in chain.facilities.values() if "batch.extracted" in {r.value for r in f.roles}][:3]
    out = []
    for j in range(n):
        f = facs[j % len(facs)]
        obj = {
            "spec": "batteryledger/1",
            "kind": "batch.extracted",
            "facility_id": f.facility_id,
            "time": (datetime(2025, 3, 1, tzinfo=UTC) + timedelta(minutes=j)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "outputs": [
                {
                    "batch_id": f"{tag}-{j}",
                    "material": "spodumene_concentrate",
                    "kg": "1000",
                    "contained_kg": {"li": "30"},
                }
            ],
        }
        out.append(sign_object(obj, f.key)[0])
    return out


def new_ledger(url: str, chain: DemoChain) -> Ledger:
    led = Ledger.init(url, operator_key=chain.operator_key, origin=ORIGIN)
    res = led.append([e.raw for e in chain.registry_events])
    assert all(r.status == "appended" for r in res), res
    return led


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(store: str) -> Iterator[str]:
    import uvicorn

    from batteryledger.api import create_app

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail(f"the API over {store} did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def chain() -> DemoChain:
    return demo_chain()


def _same_ledger(a: str, b: str) -> None:
    with Ledger(a) as la, Ledger(b) as lb:
        assert la.size == lb.size
        assert la.head() == lb.head()
        assert la.latest_checkpoint() == lb.latest_checkpoint()
        report = verify_ledger(lb)
        assert not report.errors, report.errors


# ------------------------------------------------------------------------------------------- backups


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_backup_export_then_import_into_an_empty_store_verifies_everything(
    kind: str, tmp_path: Path, chain: DemoChain, request: pytest.FixtureRequest
) -> None:
    src = f"sqlite:///{tmp_path}/src.db"
    with new_ledger(src, chain) as led:
        for i in range(3):
            led.append(extraction(chain, f"BK{i}", 200))
            led.make_checkpoint()
    dst = request.getfixturevalue("fresh_pg_url") if kind == "postgresql" else f"sqlite:///{tmp_path}/dst.db"
    backup = tmp_path / "ledger.jsonl"
    with backup.open("w") as fh:
        n, c = export_backup(src, fh)
    assert c == 3 and n > 600
    assert import_backup(backup.open(), dst) == (n, c)
    _same_ledger(src, dst)
    # a second import into the now non-empty store is refused
    with pytest.raises(ReplicaError, match="empty store"):
        import_backup(backup.open(), dst)
    # one changed byte in one signed event is found, whatever the store
    lines = backup.read_text().splitlines()
    entry = json.loads(lines[300])
    import base64

    data = bytearray(base64.b64decode(entry["data"]))
    data[data.index(b'"kg":"1000"') + 6] = ord("9")
    entry["data"] = base64.b64encode(bytes(data)).decode()
    lines[300] = json.dumps(entry)
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    other = f"sqlite:///{tmp_path}/other.db"
    with pytest.raises(ForkError, match=f"entry {entry['seq']}"):
        import_backup((tmp_path / "bad.jsonl").open(), other)


def test_backup_cli_round_trip_and_one_line_errors(tmp_path: Path, chain: DemoChain) -> None:
    src = f"sqlite:///{tmp_path}/src.db"
    with new_ledger(src, chain) as led:
        led.append(extraction(chain, "CLI", 50))
        led.make_checkpoint()
    out = tmp_path / "b.jsonl"
    runner = CliRunner()
    res = runner.invoke(cli_app, ["backup", "export", "--store", src, "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli_app, ["backup", "import", "--store", f"sqlite:///{tmp_path}/dst.db", "--in", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "imported and verified" in res.output
    res = runner.invoke(cli_app, ["backup", "import", "--store", src, "--in", str(out)])
    assert res.exit_code == 1
    assert res.output.strip().count("\n") == 0 and "error:" in res.output


# ------------------------------------------------------------------------------------------- mirrors


def test_mirror_follows_a_ledger_under_load_and_the_api_serves_from_it(
    tmp_path: Path, chain: DemoChain
) -> None:
    src = f"sqlite:///{tmp_path}/src.db"
    mirror_store = f"sqlite:///{tmp_path}/mirror.db"
    new_ledger(src, chain).close()
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:  # the sequencer's load: batches appended, a checkpoint every few
        try:
            with Ledger(src, operator_key=chain.operator_key) as led:
                for i in range(15):
                    res = led.append(extraction(chain, f"LOAD{i}", 100))
                    assert all(r.status == "appended" for r in res)
                    if i % 4 == 3:
                        led.make_checkpoint()
                led.make_checkpoint()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    rounds: list[int] = []
    with serving(src) as url:
        writer.start()

        def caught_up() -> bool:
            if not done.is_set():
                return False
            with Ledger(src) as led:
                return led.size == rounds[-1] if rounds else False

        total = run_mirror(
            url,
            mirror_store,
            follow=True,
            interval=0.1,
            report=lambda s: rounds.append(s.size),
            should_stop=caught_up,
        )
        writer.join()
        assert not errors, errors
        assert total.checkpoints >= 4
        assert len(rounds) > 1, "the mirror should have pulled in several rounds while the writer ran"
        _same_ledger(src, mirror_store)
    # the API serves the mirror: same checkpoint, same provenance as the source
    with serving(mirror_store) as murl, serving(src) as surl:
        for path in ("/v1/batches/LOAD7-5/provenance", "/v1/status"):
            a, b = fetch_json(surl, path), fetch_json(murl, path)
            assert a == b
        assert (
            fetch_json(murl, "/v1/checkpoints")["checkpoints"]
            == fetch_json(surl, "/v1/checkpoints")["checkpoints"]
        )


def test_mirror_refuses_a_rewritten_entry(tmp_path: Path, chain: DemoChain) -> None:
    src, forked = f"sqlite:///{tmp_path}/src.db", f"sqlite:///{tmp_path}/forked.db"
    with new_ledger(src, chain) as led:
        led.append(extraction(chain, "A", 100))
        led.make_checkpoint()
    # the same ledger with one earlier entry rewritten (a different, validly signed event), then grown past it
    with new_ledger(forked, chain) as led:
        events = extraction(chain, "A", 100)
        events[97] = extraction(chain, "REWRITTEN", 1)[0]
        led.append(events)
        led.append(extraction(chain, "B", 20))
        led.make_checkpoint()
    mirror_store = f"sqlite:///{tmp_path}/mirror.db"
    with serving(src) as url, open_mirror(url, mirror_store) as rep:
        mirror_once(rep, url)
        held = rep.size
    with serving(forked) as url, open_mirror(url, mirror_store) as rep:
        with pytest.raises(ForkError, match="rewritten"):
            mirror_once(rep, url)
        assert rep.size == held  # nothing past the fork was taken


def test_mirror_refuses_a_forked_checkpoint_with_exit_code_3(tmp_path: Path, chain: DemoChain) -> None:
    src = f"sqlite:///{tmp_path}/src.db"
    with new_ledger(src, chain) as led:
        led.append(extraction(chain, "C", 100))
        led.make_checkpoint()
        led.append(extraction(chain, "D", 30))
        # the operator signs a second, different root for the current size: a split view
        bogus = Checkpoint(ORIGIN, led.size, bytes(32)).body()
        note = sign_note(bogus, ORIGIN, chain.operator_key)
        with led.engine.begin() as conn:
            conn.execute(
                CHECKPOINTS.insert().values(size=led.size, root_hash=bytes(32), note=note, created_at=now())
            )
    mirror_store = f"sqlite:///{tmp_path}/mirror.db"
    with serving(src) as url:
        res = CliRunner().invoke(cli_app, ["mirror", "--from", url, "--store", mirror_store, "--once"])
        assert res.exit_code == 3, res.output
        assert "forked checkpoint" in res.output
        assert res.output.strip().count("\n") == 0
    with Ledger(mirror_store) as m:
        sizes: list[Any] = [r.size for r in m.engine.connect().execute(CHECKPOINTS.select())]
        assert sizes == [101 + len(chain.registry_events)]  # the genuine checkpoint kept, the forged one not
