"""The CLI as a user runs it: the real console script in a fresh folder, real keys and a real store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from batteryledger.sample import demo_chain

BL = str(Path(sys.executable).with_name("batteryledger"))
README = Path(__file__).resolve().parents[2] / "README.md"


def run(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    env.pop("BATTERYLEDGER_DEBUG", None)
    env.pop("BATTERYLEDGER_STORE", None)
    proc = subprocess.run([BL, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    if ok:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str], words: str) -> None:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_register_sign_append_query_verify(tmp_path: Path) -> None:
    run(tmp_path, "init", "--origin", "test.example/ledger")
    assert (tmp_path / "keys/operator.key").stat().st_mode & 0o777 == 0o600
    run(tmp_path, "keys", "new", "keys/mine.key")
    run(tmp_path, "keys", "new", "keys/ref.key")
    run(
        tmp_path,
        "facility",
        "register",
        "mine-au",
        "--legal-entity",
        "Mine Pty",
        "--country",
        "au",
        "--role",
        "batch.extracted",
        "--role",
        "batch.shipped",
        "--key",
        "keys/mine.key.pub",
    )
    run(
        tmp_path,
        "facility",
        "register",
        "ref-us",
        "--legal-entity",
        "Refinery LLC",
        "--country",
        "US",
        "--role",
        "batch.processed",
        "--role",
        "batch.received",
        "--key",
        "keys/ref.key.pub",
    )
    facilities = json.loads(run(tmp_path, "facility", "list", "--json").stdout)
    assert [f["facility_id"] for f in facilities] == ["mine-au", "ref-us", "registry"]

    # plant files write numbers; `sign` keeps their exact decimal text
    (tmp_path / "mine.jsonl").write_text(
        '{"kind": "batch.extracted", "time": "2025-02-01T00:00:00Z", "outputs": [{"batch_id": "ORE-1", '
        '"material": "spodumene_concentrate", "kg": 1000.50, "contained_kg": {"li": 30.250}, "value_usd": 900}]}\n'
        '{"kind": "batch.shipped", "time": "2025-02-02T00:00:00Z", "batch_id": "ORE-1", "kg": 1000.50, '
        '"to_facility_id": "ref-us"}\n'
    )
    (tmp_path / "ref.jsonl").write_text(
        # the refinery's product first: children before parents within one file are fine
        '{"kind": "batch.processed", "time": "2025-03-01T00:00:00Z", "inputs": [{"batch_id": "ORE-1", "kg": "1000.50"}], '
        '"outputs": [{"batch_id": "LIOH-1", "material": "lithium_hydroxide", "kg": "150", "contained_kg": {"li": "25"}}]}\n'
        '{"kind": "batch.received", "time": "2025-02-20T00:00:00Z", "batch_id": "ORE-1", "kg": "1000.50", '
        '"from_facility_id": "mine-au"}\n'
    )
    run(
        tmp_path, "sign", "mine.jsonl", "--key", "keys/mine.key", "--facility", "mine-au", "-o", "mine.signed"
    )
    run(tmp_path, "sign", "ref.jsonl", "--key", "keys/ref.key", "--facility", "ref-us", "-o", "ref.signed")
    assert '"kg":"1000.50"' in (tmp_path / "mine.signed").read_text()
    (tmp_path / "all.signed").write_text(
        (tmp_path / "mine.signed").read_text().splitlines()[0]
        + "\n"
        + (tmp_path / "ref.signed").read_text()
        + (tmp_path / "mine.signed").read_text().splitlines()[1]
        + "\n"
    )
    out = json.loads(run(tmp_path, "append", "all.signed", "--json").stdout)
    assert [r["status"] for r in out["results"]] == ["appended"] * 4
    assert out["results"][1]["seq"] > out["results"][3]["seq"]  # the product waited for its shipment

    prov = json.loads(run(tmp_path, "provenance", "LIOH-1", "--json").stdout)
    li = prov["elements"]["li"]
    assert li["contained_kg"] == 25
    assert (
        li["shares"]["us_processed"] == 1.0 and li["shares"]["fta_or_us_extracted"] == 1.0
    )  # AU is an FTA country
    assert li["kg_by_extraction_country"] == {"AU": 25.0}
    lineage = json.loads(run(tmp_path, "lineage", "LIOH-1", "--json").stdout)
    assert [(e["parent"], e["child"]) for e in lineage["edges"]] == [("ORE-1", "LIOH-1")]
    down = json.loads(run(tmp_path, "lineage", "ORE-1", "--down", "--json").stdout)
    assert [e["child"] for e in down["edges"]] == ["LIOH-1"]
    report = json.loads(run(tmp_path, "verify", "--json").stdout)
    assert report["ok"] and report["entries"] == 7 and report["signatures_checked"] == 7

    # appending the same file again: every event is a duplicate, nothing new
    again = json.loads(run(tmp_path, "append", "all.signed", "--json").stdout)
    assert again["counts"] == {"duplicate": 4}


def test_rejections_and_errors_are_one_line(tmp_path: Path) -> None:
    chain = demo_chain()
    one_line_error(run(tmp_path, "provenance", "X", ok=False), "no ledger at")
    run(tmp_path, "init")
    one_line_error(run(tmp_path, "provenance", "NOPE", ok=False), "'NOPE' is not in the ledger")
    one_line_error(
        run(tmp_path, "sign", "absent.jsonl", "--key", "keys/operator.key", ok=False), "absent.jsonl"
    )
    (tmp_path / "bad.jsonl").write_text('{"kind": "batch.extracted", "time": "2025-01-01", "outputs": []}\n')
    one_line_error(
        run(tmp_path, "sign", "bad.jsonl", "--key", "keys/operator.key", "--facility", "f", ok=False),
        "bad.jsonl:1",
    )
    one_line_error(run(tmp_path, "keys", "new", "keys/operator.key", ok=False), "refusing to overwrite")
    # bad events appended directly: exit 3, each rejection named, the original bytes kept
    (tmp_path / "bad.signed").write_bytes(b"\n".join(raw for _, raw, _ in chain.bad_events) + b"\n")
    proc = run(tmp_path, "append", "bad.signed", "--json", ok=False)
    assert proc.returncode == 3
    reasons = [r["reason"] for r in json.loads(proc.stdout)["results"]]
    assert reasons == [
        "unknown_facility",
        "unknown_facility",
        "unknown_facility",
        "unknown_facility",
        "malformed",
    ]
    stats = json.loads(run(tmp_path, "stats", "--json").stdout)
    assert stats["rejections"] == {"malformed": 1, "unknown_facility": 4}


def test_every_command_the_readme_names_exists() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    named = set(re.findall(r"batteryledger ([a-z][a-z-]+)", text))
    helps = subprocess.run(
        [BL, "--help"], capture_output=True, text=True, env=dict(os.environ, COLUMNS="200")
    )
    listed = set(re.findall(r"^  ([a-z][a-z-]+)\s", helps.stdout, re.MULTILINE))
    missing = sorted(n for n in named if n not in listed)
    assert not missing, f"README names commands the CLI does not have: {missing}"


@pytest.mark.parametrize("command", ["provenance", "lineage", "verify", "append", "sign", "audit", "prove"])
def test_help_of_each_command(command: str, tmp_path: Path) -> None:
    assert "Usage" in run(tmp_path, command, "--help").stdout


# -- the CLI a person meets ------------------------------------------------------------------------------
def demo_store(tmp_path: Path) -> Path:
    from ledger.core import Incoming, Ledger

    chain = demo_chain()
    db = tmp_path / "ledger.db"
    led = Ledger.init(f"sqlite:///{db}", operator_key=chain.operator_key, origin="cli-test.example/ledger")
    led.append([e.raw for e in chain.good_events])
    led.make_checkpoint()
    led.append([Incoming(raw=raw, source=f"t:{label}") for label, raw, _ in chain.bad_events])
    led.close()
    return db


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_store(tmp_path_factory.mktemp("cli"))


def test_no_arguments_prints_help_and_succeeds(tmp_path: Path) -> None:
    proc = run(tmp_path)
    assert proc.stdout.startswith("Usage: batteryledger") and "provenance" in proc.stdout
    assert proc.stderr == ""
    sub = run(tmp_path, "keys")
    assert sub.stdout.startswith("Usage: batteryledger keys") and "new" in sub.stdout


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    assert run(tmp_path, "--version").stdout.strip() == f"batteryledger {version('batteryledger')}"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["provenance"], "missing argument"),
        (["lineage", "X", "--depth", "0"], "--depth"),
        (["nosuch"], "no such command 'nosuch'"),
        (["provenance", "X", "--nope"], "no such option"),
        (["batches", "list", "--since", "2025-13-01"], "--since '2025-13-01' is not a date"),
    ],
)
def test_usage_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    proc = run(tmp_path, *args, ok=False)
    assert proc.returncode == 2
    one_line_error(proc, words)
    for name in (
        "NoArgsIsHelpError",
        "MissingParameter",
        "BadParameter",
        "UsageError",
        "ValueError",
        "Error:",
    ):
        assert name not in proc.stderr


def test_store_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database, just words " * 100)
    proc = run(tmp_path, "provenance", "X", "--store", "notes.txt", ok=False)
    one_line_error(proc, "store notes.txt is not a SQLite database")
    assert proc.returncode == 2
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"postgresql://u:secret@127.0.0.1:{port}/db"
    proc = run(tmp_path, "stats", "--store", url, ok=False)
    one_line_error(proc, f"store postgresql://u:***@127.0.0.1:{port}/db is unreachable")
    assert "secret" not in proc.stderr


def test_read_commands_speak_json(store: Path, tmp_path: Path) -> None:
    s = str(store)
    stats = json.loads(run(tmp_path, "stats", "--store", s, "--json").stdout)
    status = json.loads(run(tmp_path, "status", "--store", s, "--json").stdout)
    assert stats["entries"] == status["entries"] and status["root"]
    page = json.loads(run(tmp_path, "batches", "list", "US-", "--store", s, "--limit", "3", "--json").stdout)
    assert len(page["batches"]) == 3 and page["total"] > 3 and page["next_cursor"]
    more = json.loads(
        run(
            tmp_path, "batches", "list", "US-", "--store", s, "--cursor", page["next_cursor"], "--json"
        ).stdout
    )
    ids = [b["batch_id"] for b in page["batches"] + more["batches"]]
    assert ids == sorted(set(ids)) and len(ids) == page["total"]
    p = json.loads(run(tmp_path, "passport", "US-PACK-002", "--store", s, "--json").stdout)
    assert p["generalProductInformation"]["batteryIdentifier"]["value"] == "US-PACK-002"
    one_line_error(
        run(tmp_path, "passport", "AU-SPOD-001", "--store", s, ok=False), "cells, modules and packs"
    )
    for cmd in (["facility", "list"], ["provenance", "US-PACK-002"], ["lineage", "US-PACK-002"], ["verify"]):
        json.loads(run(tmp_path, *cmd, "--store", s, "--json").stdout)


@pytest.mark.parametrize(
    "args",
    [
        ["provenance", "US-PACK-002"],
        ["lineage", "US-PACK-002", "--depth", "2"],
        ["batches", "list"],
        ["passport", "US-PACK-002"],
        ["facility", "list"],
        ["stats"],
    ],
)
def test_tables_fit_80_columns_without_cutting_values(store: Path, tmp_path: Path, args: list[str]) -> None:
    env = dict(os.environ, COLUMNS="80")
    env.pop("BATTERYLEDGER_STORE", None)
    proc = subprocess.run(
        [BL, *args, "--store", str(store)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80, proc.stdout
    assert "…" not in proc.stdout  # values wrap; they are never cut
    if args[0] == "provenance":
        assert "Mined in Australia (AU), processed in United States (US)" in " ".join(proc.stdout.split())


def test_help_shows_flags_as_flags(tmp_path: Path) -> None:
    text = run(tmp_path, "lineage", "--help").stdout
    assert "--up / --down" in text and "--json" in text
    assert "<bool>" not in text and " ." not in text


def test_demo_never_empties_a_folder_it_did_not_make(tmp_path: Path) -> None:
    from batteryledger.demo import OUT_DIR_MARK, DemoError, prepare_out_dir

    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(DemoError, match="not made by the demo"):
        prepare_out_dir(mine)
    assert (mine / "thesis.tex").read_text() == "precious"
    fresh = prepare_out_dir(tmp_path / "demo-out")
    (fresh / "ledger.db").write_text("old run")
    again = prepare_out_dir(tmp_path / "demo-out")  # made by the demo: emptied
    assert sorted(p.name for p in again.iterdir()) == [OUT_DIR_MARK]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_out_dir(empty) == empty.resolve()
    proc = run(mine, "demo", "--out-dir", ".", ok=False)
    one_line_error(proc, "not made by the demo")
    assert (mine / "thesis.tex").read_text() == "precious"
