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
    stats = json.loads(run(tmp_path, "stats").stdout)
    assert stats["rejections"] == {"malformed": 1, "unknown_facility": 4}


def test_every_command_the_readme_names_exists() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    named = set(re.findall(r"batteryledger ([a-z][a-z-]+)", text))
    helps = subprocess.run(
        [BL, "--help"], capture_output=True, text=True, env=dict(os.environ, COLUMNS="200")
    )
    listed = set(re.findall(r"│ ([a-z][a-z-]+) ", helps.stdout))
    missing = sorted(n for n in named if n not in listed)
    assert not missing, f"README names commands the CLI does not have: {missing}"


@pytest.mark.parametrize("command", ["provenance", "lineage", "verify", "append", "sign", "audit", "prove"])
def test_help_of_each_command(command: str, tmp_path: Path) -> None:
    assert "Usage" in run(tmp_path, command, "--help").stdout
