"""Evidence bundles: a real bundle from the demo ledger verifies offline; every kind of tampering fails
and names the entry or proof at fault."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from typer.testing import CliRunner

from batteryledger import cli_proofs
from batteryledger.sample import DemoChain, demo_chain
from ledger import bundle_verify
from ledger.bundle_verify import (
    BundleError,
    ProvenanceParameters,
    dumps_bundle,
    recompute_summary,
    verify_bundle,
)
from ledger.checkpoint import sign_note, vkey
from ledger.core import Ledger
from ledger.merkle import consistency_proof as ref_consistency
from ledger.merkle import inclusion_proof as ref_inclusion
from ledger.proofs import (
    ProofsError,
    checkpoint_at_or_after,
    consistency_proof,
    default_parameters,
    inclusion_proof,
    inclusion_proofs,
    latest_checkpoint_row,
    make_bundle,
)
from ledger.registry import Registry
from ledger.store import ENTRIES
from schemas.events import REGISTRY_KINDS, Kind
from schemas.signing import decode, generate_key, save_private_key, sign_object

ORIGIN = "test.example/ledger"
PACK = "US-PACK-002"
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DIGITS, UPPER, LOWER = range(0x30, 0x3A), range(0x41, 0x5B), range(0x61, 0x7B)


@dataclass
class Proved:
    chain: DemoChain
    path: Path
    bundle: dict[str, Any]
    raw: bytes
    key: Ed25519PublicKey


def build_ledger(path: Path, chain: DemoChain) -> Ledger:
    led = Ledger.init(str(path), operator_key=chain.operator_key, origin=ORIGIN)
    results = led.append([e.raw for e in chain.good_events])
    assert all(r.status == "appended" for r in results), [r for r in results if r.status != "appended"]
    return led


@pytest.fixture(scope="module")
def proved(tmp_path_factory: pytest.TempPathFactory) -> Proved:
    chain = demo_chain()
    path = tmp_path_factory.mktemp("bundle") / "ledger.db"
    led = build_ledger(path, chain)
    assert led.make_checkpoint() is not None
    bundle = make_bundle(led, PACK, created_at=CREATED)
    key = led.operator_public_key
    led.close()
    return Proved(chain, path, bundle, dumps_bundle(bundle), key)


def edited(bundle: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> bytes:
    """A deliberate edit, written back in canonical form: what a careful forger would hand over."""
    b = copy.deepcopy(bundle)
    change(b)
    return dumps_bundle(b)


def rejected(data: bytes | dict[str, Any], key: Ed25519PublicKey | str) -> BundleError:
    with pytest.raises(BundleError) as info:
        verify_bundle(data, key)
    return info.value


def entry_making(bundle: dict[str, Any], batch_id: str) -> int:
    """Index in bundle["entries"] of the event whose outputs include `batch_id`."""
    for i, e in enumerate(bundle["entries"]):
        outputs = json.loads(e["data"]).get("outputs", [])
        if any(o["batch_id"] == batch_id for o in outputs):
            return i
    raise AssertionError(f"no entry makes {batch_id}")


# -- the good path -------------------------------------------------------------------------------------
def test_bundle_verifies_offline_and_matches_the_store(proved: Proved) -> None:
    report = verify_bundle(proved.raw, proved.key)
    led = Ledger(str(proved.path))
    try:
        prov = led.provenance(PACK)
        expected = prov.summary(fta=default_parameters().fta)
    finally:
        led.close()
    assert report.batch_id == PACK
    assert report.origin == ORIGIN
    assert report.events == len(prov.events) == 19
    assert report.proofs == len(proved.bundle["entries"]) == report.events + report.registry_events
    assert report.checkpoint.size == 77
    # the auditor's recomputation from signed events equals the store's answer, number for number
    assert report.summary == json.loads(json.dumps(expected))
    assert report.summary["missing_parents"] == []
    assert report.summary["elements"]["li"]["shares"]["unknown"] == 0
    # the pinned verifier key (origin + key) and the parsed object verify too
    assert verify_bundle(proved.raw, vkey(ORIGIN, proved.key)).events == 19
    assert verify_bundle(json.loads(proved.raw), proved.key).events == 19


def test_bundle_carries_entry_zero_and_the_signers_registrations(proved: Proved) -> None:
    entries = proved.bundle["entries"]
    assert entries[0]["seq"] == 0 and entries[0]["kind"] == "facility.registered"
    signers = {json.loads(e["data"])["facility_id"] for e in entries if e["kind"] not in REGISTRY_KINDS}
    registered = {
        json.loads(e["data"])["subject_facility_id"] for e in entries if e["kind"] == "facility.registered"
    }
    assert registered == signers | {"registry"}
    assert [e["seq"] for e in entries] == sorted({e["seq"] for e in entries})
    assert all(e["leaf_index"] == e["seq"] for e in entries)


# -- any byte changed ----------------------------------------------------------------------------------
def _unsigned_spans(text: str) -> list[tuple[int, int]]:
    """Byte ranges no signature or recomputation covers: created_at's value, and the provenance
    parameters (the prover's stated country lists: an edit to a country no origin uses changes no share,
    so the claim stays true). Both are reported to the auditor as the prover's; see bundle_verify."""
    start = text.index('"created_at": "') + len('"created_at": "')
    params = text.index('"parameters": {')
    return [(start, text.index('"', start)), (params, text.index("}", params) + 1)]


def test_any_byte_changed_fails(proved: Proved) -> None:
    raw = proved.raw
    skip = _unsigned_spans(raw.decode("ascii"))
    rng = random.Random(20260102)
    # a seeded sample across the whole file, plus the first byte of every line (keys, brackets, indent)
    positions = set(rng.sample(range(len(raw)), 800))
    positions |= {i + 1 for i, c in enumerate(raw) if c == ord("\n") and i + 1 < len(raw)}
    positions = {p for p in positions if not any(a <= p < b for a, b in skip)}
    assert len(positions) > 1400
    passed, steps = [], set()
    for pos in sorted(positions):
        old = raw[pos]
        # a digit stays a digit and a letter a letter (the JSON still parses, so the change reaches the
        # proofs, signatures and provenance); any other byte becomes any other byte
        same_class = next((c for c in (DIGITS, UPPER, LOWER) if old in c), range(256))
        new = rng.choice([b for b in same_class if b != old])
        flipped = raw[:pos] + bytes([new]) + raw[pos + 1 :]
        try:
            verify_bundle(flipped, proved.key)
        except BundleError as exc:
            steps.add(exc.step)
            continue
        passed.append((pos, raw[pos - 20 : pos + 1], bytes([new])))
    assert not passed, f"byte changes that still verified: {passed[:5]}"
    assert {1, 2, 3, 4, 8} <= steps  # the sample reached the evidence checks, not only the parser


def test_reformatted_bundle_is_refused_before_anything_else(proved: Proved) -> None:
    pretty = json.dumps(json.loads(proved.raw), indent=2, sort_keys=True).encode() + b"\n"
    err = rejected(pretty, proved.key)
    assert (err.step, err.code) == (1, "not_canonical")
    assert "reformatted or edited" in err.diagnostics()


def test_duplicate_keys_and_oversize_are_refused(proved: Proved, monkeypatch: pytest.MonkeyPatch) -> None:
    dup = proved.raw.replace(b'{\n "batch_id"', b'{\n "batch_id": "X",\n "batch_id"', 1)
    assert rejected(dup, proved.key).code == "format"
    monkeypatch.setattr(bundle_verify, "MAX_BUNDLE_BYTES", len(proved.raw) - 1)
    err = rejected(proved.raw, proved.key)
    assert (err.step, err.code) == (1, "too_large")


# -- deliberate edits, each named ------------------------------------------------------------------------
def test_removed_ancestor_is_named(proved: Proved) -> None:
    i = entry_making(proved.bundle, "KR-NMC811-002")  # the cathode lot inside the cells inside the pack
    consumer = entry_making(proved.bundle, "US-CELL-002")
    cell_seq = proved.bundle["entries"][consumer]["seq"]
    err = rejected(edited(proved.bundle, lambda b: b["entries"].pop(i)), proved.key)
    assert (err.step, err.code) == (8, "missing_ancestor")
    assert "KR-NMC811-002" in err.message and f"entry seq {cell_seq}" in err.message


def _honest_summary(b: dict[str, Any]) -> dict[str, Any]:
    """The summary the remaining bundled events really imply (as a prover owning up would write it)."""
    decoded = [decode(e["data"].encode()) for e in b["entries"]]
    registry = Registry()
    for d in decoded:
        if d.kind in REGISTRY_KINDS:
            registry.apply(d.event, d.event_id)
    p = b["provenance"]["parameters"]
    params = ProvenanceParameters(us=p["us"], fta=tuple(p["fta"]), north_america=tuple(p["north_america"]))
    events = [(d.event, d.event_id) for d in decoded if d.kind not in REGISTRY_KINDS]
    return recompute_summary(b["batch_id"], events, registry, params)[1]


def test_removed_ancestor_owned_up_to_shows_as_unknown_never_as_complete(proved: Proved) -> None:
    def drop_and_own_up(b: dict[str, Any]) -> None:
        b["entries"].pop(entry_making(b, "KR-NMC811-002"))
        # its own ancestors are now unrelated to the pack: drop them too, as step 9 requires
        summary = _honest_summary(b)
        keep = set(summary["events"])
        b["entries"] = [e for e in b["entries"] if e["kind"] in REGISTRY_KINDS or e["event_id"] in keep]
        b["provenance"]["summary"] = _honest_summary(b)

    report = verify_bundle(edited(proved.bundle, drop_and_own_up), proved.key)
    assert report.summary["missing_parents"] == ["KR-NMC811-002"]
    ni = report.summary["elements"]["ni"]["shares"]
    assert ni["unknown"] > 0.9  # the cells' nickel all came through that cathode lot


def test_truncated_proof_names_the_entry(proved: Proved) -> None:
    i = entry_making(proved.bundle, PACK)
    seq = proved.bundle["entries"][i]["seq"]
    err = rejected(edited(proved.bundle, lambda b: b["entries"][i]["inclusion_proof"].pop()), proved.key)
    assert (err.step, err.code, err.seq) == (3, "inclusion", seq)
    assert f"entry seq {seq}" in err.message and "hashes, want" in err.message


def test_swapped_proofs_fail_at_the_first_entry(proved: Proved) -> None:
    i, j = entry_making(proved.bundle, "CL-BRINE-001"), entry_making(proved.bundle, PACK)

    def swap(b: dict[str, Any]) -> None:
        e = b["entries"]
        e[i]["inclusion_proof"], e[j]["inclusion_proof"] = e[j]["inclusion_proof"], e[i]["inclusion_proof"]

    err = rejected(edited(proved.bundle, swap), proved.key)
    assert (err.step, err.code, err.seq) == (3, "inclusion", proved.bundle["entries"][i]["seq"])


def test_edited_event_bytes_fail_their_proof(proved: Proved) -> None:
    i = entry_making(proved.bundle, "ID-MHP-001")
    seq = proved.bundle["entries"][i]["seq"]

    def more_nickel(b: dict[str, Any]) -> None:
        b["entries"][i]["data"] = b["entries"][i]["data"].replace('"ni":"20000"', '"ni":"29000"')

    assert '"ni":"20000"' in proved.bundle["entries"][i]["data"]
    err = rejected(edited(proved.bundle, more_nickel), proved.key)
    assert (err.step, err.seq) == (3, seq)


def test_wrong_operator_key_fails(proved: Proved) -> None:
    stranger = generate_key().public_key()
    err = rejected(proved.raw, stranger)
    assert (err.step, err.code) == (2, "checkpoint")
    assert "not signed by the operator key you gave" in err.message
    err = rejected(proved.raw, vkey("other.example/log", proved.key))
    assert (err.step, err.code) == (2, "operator_key")


def test_tampered_checkpoint_fails(proved: Proved) -> None:
    def other_root(b: dict[str, Any]) -> None:
        lines = b["checkpoint"].split("\n")
        lines[2] = "A" + lines[2][1:] if lines[2][0] != "A" else "B" + lines[2][1:]
        b["checkpoint"] = "\n".join(lines)

    err = rejected(edited(proved.bundle, other_root), proved.key)
    assert (err.step, err.code) == (2, "checkpoint")
    # a checkpoint correctly signed by someone else's key under our origin is no better
    body = proved.bundle["checkpoint"].split("\n\n")[0] + "\n"
    forged = sign_note(body, ORIGIN, generate_key())
    err = rejected(edited(proved.bundle, lambda b: b.update(checkpoint=forged)), proved.key)
    assert err.step == 2


def test_checkpoint_of_a_forked_history_fails_the_proofs(proved: Proved, tmp_path: Path) -> None:
    # the same operator key and origin, another history (other facility keys): a real signed checkpoint
    fork = build_ledger(tmp_path / "fork.db", demo_chain(proved.chain.operator_key))
    note = fork.make_checkpoint()
    fork.close()
    assert note is not None
    err = rejected(edited(proved.bundle, lambda b: b.update(checkpoint=note)), proved.key)
    # entry 0 is the same bytes in both logs, but its path to the root runs through the other history
    assert (err.step, err.code, err.seq) == (3, "inclusion", 0)


def test_provenance_numbers_edited_fail(proved: Proved) -> None:
    def more_us(b: dict[str, Any]) -> None:
        b["provenance"]["summary"]["elements"]["li"]["shares"]["us_extracted"] += 0.01

    err = rejected(edited(proved.bundle, more_us), proved.key)
    assert (err.step, err.code) == (8, "provenance")
    assert "summary.elements.li.shares.us_extracted" in err.message

    def last_digit(b: dict[str, Any]) -> None:  # the smallest edit the rounding allows
        s = b["provenance"]["summary"]["elements"]["ni"]["shares"]
        s["feoc_touched"] = round(s["feoc_touched"] - 1e-9, 9)

    assert rejected(edited(proved.bundle, last_digit), proved.key).code == "provenance"


def test_unregistered_signer_is_named(proved: Proved) -> None:
    def drop_registration(b: dict[str, Any]) -> None:
        b["entries"] = [
            e
            for e in b["entries"]
            if not (
                e["kind"] == "facility.registered" and '"subject_facility_id":"mine-cd-kolwezi"' in e["data"]
            )
        ]

    i = entry_making(proved.bundle, "CD-COHYD-001")
    err = rejected(edited(proved.bundle, drop_registration), proved.key)
    assert (err.step, err.code, err.seq) == (6, "signature", proved.bundle["entries"][i]["seq"])
    assert "unknown_facility" in err.message


def test_entry_zero_is_required(proved: Proved) -> None:
    err = rejected(edited(proved.bundle, lambda b: b["entries"].pop(0)), proved.key)
    assert (err.step, err.code) == (5, "registry")


def test_unrelated_event_is_refused(proved: Proved) -> None:
    # US-PACK-001's pack event is in the same log, with a valid proof against the same checkpoint
    led = Ledger(str(proved.path))
    try:
        other = make_bundle(led, "US-PACK-001", checkpoint_note=proved.bundle["checkpoint"])
    finally:
        led.close()
    extra = other["entries"][entry_making(other, "US-PACK-001")]

    def add(b: dict[str, Any]) -> None:
        b["entries"] = sorted([*b["entries"], extra], key=lambda e: e["seq"])

    err = rejected(edited(proved.bundle, add), proved.key)
    assert (err.step, err.code, err.seq) == (9, "unrelated", extra["seq"])


def test_event_signed_with_a_key_revoked_before_its_time_fails(tmp_path: Path) -> None:
    chain = demo_chain()
    led = build_ledger(tmp_path / "revoked.db", chain)
    pack_event = next(e for e in chain.chain_events if e.label == f"packs.assembled {PACK}")
    when = decode(pack_event.raw).event.time - timedelta(hours=1)
    plant = chain.facilities["pack-us-michigan"]
    revoke, _ = sign_object(
        {
            "spec": "batteryledger/1",
            "kind": Kind.KEY_REVOKED.value,
            "facility_id": "registry",
            "time": (when + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "subject_facility_id": plant.facility_id,
            "key_id": decode(pack_event.raw).key_id,
            "revoked_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": "compromised",
        },
        chain.operator_key,
    )
    assert led.append([revoke])[0].status == "appended"  # found out later; the revocation is dated back
    led.make_checkpoint()
    with pytest.raises(ProofsError, match="key_revoked"):
        make_bundle(led, PACK)  # the prover refuses to hand out evidence that will not hold
    bundle = make_bundle(led, PACK, check=False)
    seq = led.entry_data([pack_event.event_id])[pack_event.event_id][0]
    key = led.operator_public_key
    led.close()
    err = rejected(dumps_bundle(bundle), key)
    assert (err.step, err.code, err.seq) == (6, "signature", seq)
    assert "key_revoked" in err.message and "pack-us-michigan" in err.message


# -- the prover ------------------------------------------------------------------------------------------
def test_prover_needs_a_covering_checkpoint_or_the_key(tmp_path: Path) -> None:
    chain = demo_chain()
    build_ledger(tmp_path / "l.db", chain).close()
    reader = Ledger(str(tmp_path / "l.db"))
    with pytest.raises(ProofsError, match="checkpoint --sign"):
        make_bundle(reader, PACK)
    reader.close()
    writer = Ledger(str(tmp_path / "l.db"), operator_key=chain.operator_key)
    assert latest_checkpoint_row(writer) is None
    bundle = make_bundle(writer, PACK)
    row = latest_checkpoint_row(writer)
    assert row is not None and row.size == writer.size and bundle["checkpoint"] == row.note
    writer.close()


def test_store_proofs_equal_the_reference(proved: Proved) -> None:
    led = Ledger(str(proved.path))
    try:
        with led.engine.connect() as conn:
            leaves = [
                bytes(r.leaf_hash) for r in conn.execute(select(ENTRIES.c.leaf_hash).order_by(ENTRIES.c.seq))
            ]
        for size in (1, 2, 5, 40, 64, 77):
            for seq in {0, size // 2, size - 1}:
                assert inclusion_proof(led, seq, size) == ref_inclusion(leaves[:size], seq)
            if size > 1:
                for old in {1, size // 3 or 1, size - 1}:
                    assert consistency_proof(led, old, size) == ref_consistency(leaves[:size], old)
        bulk = inclusion_proofs(led, range(77), 77)
        assert all(bulk[s] == ref_inclusion(leaves, s) for s in range(77))
        with pytest.raises(ProofsError, match="larger than the ledger"):
            inclusion_proof(led, 3, 78)
        with pytest.raises(ProofsError, match="no consistency proof"):
            consistency_proof(led, 50, 40)
        row = checkpoint_at_or_after(led, 10)
        assert row is not None and row.size == 77
        assert checkpoint_at_or_after(led, 78) is None
    finally:
        led.close()


def test_verifier_imports_nothing_of_the_store_or_the_faces() -> None:
    code = "import ledger.bundle_verify, sys; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    forbidden = ("sqlalchemy", "sqlmodel", "faust", "aiokafka", "kafka", "streams", "batteryledger", "typer")
    bad = [
        m
        for m in out
        if m.split(".")[0] in forbidden or m in ("ledger.store", "ledger.core", "ledger.proofs")
    ]
    assert not bad, bad
    assert "ledger.provenance" in out and "cryptography" in out  # it did import what it needs


# -- the commands ------------------------------------------------------------------------------------------
@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    cli_proofs.register(app)
    return app


def test_prove_then_verify_bundle_commands(proved: Proved, cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    key_file = tmp_path / "keys" / "operator.key"
    pub = save_private_key(proved.chain.operator_key, key_file)
    out = tmp_path / "pack.bundle.json"
    res = runner.invoke(cli, ["prove", PACK, "-o", str(out), "--store", str(proved.path)])
    assert res.exit_code == 0, res.output
    assert "19 events" in res.stdout and out.exists()
    res = runner.invoke(cli, ["verify-bundle", str(out), "--operator-key", str(pub)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"OK: {PACK} from {ORIGIN}: 19 events")
    assert "li " in res.stdout and "US/FTA extracted" in res.stdout
    res = runner.invoke(
        cli, ["verify-bundle", str(out), "--operator-vkey", vkey(ORIGIN, proved.key), "--json"]
    )
    assert res.exit_code == 0 and json.loads(res.stdout)["events"] == 19

    raw = out.read_bytes()
    i = raw.index(b'\\"ni\\":\\"20000') + 10  # inside the escaped event text
    out.write_bytes(raw[:i] + b"9" + raw[i + 1 :])  # one digit of one mine's nickel
    res = runner.invoke(cli, ["verify-bundle", str(out), "--operator-key", str(pub)])
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: bundle rejected at step 3")
    assert "Traceback" not in res.output

    res = runner.invoke(cli, ["verify-bundle", str(out)])
    assert res.exit_code == 2 and "--operator-key" in res.stderr
    res = runner.invoke(cli, ["verify-bundle", str(tmp_path / "absent.json"), "--operator-key", str(pub)])
    assert res.exit_code == 2 and res.stderr.startswith("error: cannot read bundle")
    res = runner.invoke(cli, ["prove", "NO-SUCH-BATCH", "-o", str(out), "--store", str(proved.path)])
    assert res.exit_code != 0 and res.stderr.count("\n") == 1 and "NO-SUCH-BATCH" in res.stderr


# -- the published contract: docs/bundle.md, the shipped JSON Schema, one hash encoding ------------------
def _validator() -> Any:
    import jsonschema

    schema = bundle_verify.bundle_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _as_v1(bundle: dict[str, Any]) -> dict[str, Any]:
    """The same bundle as an older `prove` wrote it: format /1, proof hashes in standard base64."""
    import base64

    b = copy.deepcopy(bundle)
    b["format"] = bundle_verify.FORMAT_V1
    for e in b["entries"]:
        e["inclusion_proof"] = [
            base64.b64encode(bytes.fromhex(h)).decode("ascii") for h in e["inclusion_proof"]
        ]
    return b


def test_a_real_bundle_validates_against_the_shipped_schema(proved: Proved) -> None:
    validator = _validator()
    bundle = json.loads(proved.raw)
    assert bundle["format"] == "batteryledger-bundle/2"
    assert not list(validator.iter_errors(bundle))
    assert not list(validator.iter_errors(_as_v1(bundle)))


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda b: b.update(extra=1), "Additional properties"),
        (lambda b: b["entries"][0]["inclusion_proof"].append("AA" * 32), "does not match"),
        (lambda b: b.update(format="batteryledger-bundle/9"), "is not one of"),
        (lambda b: b["entries"][1].pop("leaf_index"), "'leaf_index' is a required property"),
        (lambda b: b["provenance"]["parameters"].update(us="usa"), "does not match"),
    ],
)
def test_the_schema_refuses_what_the_verifier_refuses(proved: Proved, change: Any, where: str) -> None:
    b = copy.deepcopy(proved.bundle)
    change(b)
    errors = [e.message for e in _validator().iter_errors(b)]
    assert any(where in m for m in errors), errors
    with pytest.raises(BundleError):
        verify_bundle(b, proved.key)


def test_bundle_and_api_share_one_hash_encoding_and_old_bundles_still_verify(proved: Proved) -> None:
    from fastapi.testclient import TestClient

    from batteryledger.api import create_app

    size = checkpoint_size(proved.bundle["checkpoint"])
    entry = proved.bundle["entries"][-1]
    with TestClient(create_app(str(proved.path))) as client:
        api = client.get("/v1/proofs/inclusion", params={"seq": entry["seq"], "size": size}).json()
    assert api["proof"] == entry["inclusion_proof"]  # both lowercase hex
    # a bundle written before the switch (format /1, base64 hashes) still verifies, byte for byte
    old = dumps_bundle(_as_v1(proved.bundle))
    report = verify_bundle(old, proved.key)
    assert report.batch_id == PACK and report.proofs == len(proved.bundle["entries"])
    # ... and one encoding per format: hex under /1 or base64 under /2 is refused
    mixed = copy.deepcopy(proved.bundle)
    mixed["format"] = bundle_verify.FORMAT_V1
    assert rejected(dumps_bundle(mixed), proved.key).step == 1
    assert (
        rejected(dumps_bundle(_as_v1(proved.bundle) | {"format": bundle_verify.FORMAT}), proved.key).step == 1
    )


def checkpoint_size(note: str) -> int:
    return int(note.split("\n")[1])
