"""EPCIS 2.0 out: `batteryledger epcis export`, `GET /v1/batches/{id}/epcis`, and the round trip.

Every export here is validated against GS1's EPCIS 2.0 JSON Schema (tests/assets/epcis/, jsonschema).
The round trip imports GS1's own ObjectEvent and TransformationEvent examples into a real ledger (signed
by the plants' keys), exports the lineage again, and checks every mapped field survived.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft7Validator
from typer.testing import CliRunner

from batteryledger.api import create_app
from batteryledger.cli import app
from batteryledger.epcis_io import export_lineage, gs1_validator
from batteryledger.sample import DemoChain, demo_chain
from ledger.core import Ledger
from schemas.epcis import LocationRegistry, dumps, map_document, parse_json
from schemas.events import Kind
from tests.unit.ledger_kit import LedgerKit, output

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "epcis"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
GS1 = Draft7Validator(
    json.loads((ASSETS / "EPCIS-JSON-Schema.json").read_text("utf-8")),
    format_checker=Draft7Validator.FORMAT_CHECKER,
)


def assert_gs1_valid(doc: Any) -> Any:
    """Validate the export as a consumer reads it: from its JSON text; formats (uri, date-time) checked."""
    assert {"uri", "date-time"} <= set(GS1.format_checker.checkers), (
        "rfc3986-validator / rfc3339-validator missing"
    )
    parsed = parse_json(dumps(doc))
    errors = sorted(GS1.iter_errors(parsed), key=lambda e: list(e.absolute_path))
    assert not errors, [(list(e.absolute_path), e.message[:200]) for e in errors[:5]]
    assert parsed["type"] == "EPCISDocument" and parsed["schemaVersion"] == "2.0"
    return parsed


def registry() -> LocationRegistry:
    return LocationRegistry.from_json(json.loads((ASSETS / "locations-examples.json").read_text()))


def example(name: str) -> Any:
    return parse_json((ASSETS / name).read_bytes())


def by_event_id(doc: Any, event_id: str) -> dict[str, Any]:
    [ev] = [e for e in doc["epcisBody"]["eventList"] if e.get("eventID") == event_id]
    return dict(ev)


def instant(t: str) -> datetime:
    return datetime.fromisoformat(t)


def append_mapped(kit: LedgerKit, doc: Any, key: Any) -> list[Any]:
    result = map_document(doc, registry(), validator=gs1_validator())
    assert not result.errors, [e.diagnostics() for e in result.errors]
    for m in result.mapped:
        kit.ok(m.event, key)
    return result.mapped


# -- round trip of GS1's examples through a ledger -----------------------------------------------------


def test_round_trip_of_the_standard_object_event_example(bl_kit: LedgerKit) -> None:
    kit = bl_kit
    plant = kit.register("plant-de-example", [Kind.BATCH_EXTRACTED], country="DE", valid_from=LONG_AGO)
    dc = kit.register("dc-us-example", [Kind.BATCH_EXTRACTED], valid_from=LONG_AGO)
    lot = "urn:epc:class:lgtin:4012345.012345.998877"
    kit.ok(
        kit.transform(plant, Kind.BATCH_EXTRACTED, [output(lot, "200", li="5")], time="2013-06-01T00:00:00Z"),
        plant.key,
    )
    ship = kit.shipment(plant, lot, "200", "dc-us-example") | {"time": "2013-06-02T00:00:00Z"}
    kit.ok(ship, plant.key)
    original_doc = example("Example_9.6.2-ObjectEvent.jsonld")
    original = original_doc["epcisBody"]["eventList"][0]
    [mapped] = append_mapped(kit, original_doc, dc.key)

    exported = assert_gs1_valid(export_lineage(kit.led, lot, direction="down", depth=5, registry=registry()))
    ev = by_event_id(exported, original["eventID"])
    # every mapped field survives: type, step, time, where, what and how much, from whom
    assert (ev["type"], ev["bizStep"]) == ("ObjectEvent", "receiving")
    assert instant(ev["eventTime"]) == instant(original["eventTime"])
    assert ev["bizLocation"] == original["bizLocation"]
    assert ev["quantityList"] == original["quantityList"]
    assert [s for s in ev["sourceList"] if s["type"] == "location"] == [
        s for s in original["sourceList"] if s["type"] == "location"
    ]
    # ... and the ledger's own facts, so the export can be checked against the ledger
    assert ev["bl:event_id"] == mapped.event_id
    seq, _ = kit.led.entry_data([mapped.event_id])[mapped.event_id]
    assert ev["bl:entry"] == seq
    assert ev["bl:inclusion_proof"] == f"/v1/proofs/inclusion?seq={seq}"
    # importing the export again gives the very same ledger event (same bytes, same id)
    again = map_document(exported, registry(), validator=gs1_validator())
    assert not again.errors
    [same] = [m for m in again.mapped if m.epcis_event_id == original["eventID"]]
    assert same.event == mapped.event


def test_round_trip_of_the_standard_transformation_event_example(bl_kit: LedgerKit) -> None:
    kit = bl_kit
    cam = kit.register(
        "cam-de-example",
        [Kind.BATCH_EXTRACTED, Kind.BATCH_PROCESSED, Kind.MATERIAL_PRODUCED],
        country="DE",
        valid_from=LONG_AGO,
    )
    inputs = {
        "urn:epc:class:lgtin:4012345.011111.4444": "10",
        "urn:epc:class:lgtin:0614141.077777.987": "30",
        "urn:epc:id:sgtin:4012345.011122.25": "2.5",
        "urn:epc:id:sgtin:4000001.065432.99886655": "7.25",
    }
    ore = [output("ORE-1", "100", li="5")]
    kit.ok(kit.transform(cam, Kind.BATCH_EXTRACTED, ore, time="2013-09-01T00:00:00Z"), cam.key)
    made = [output(b, kg, material="lithium_hydroxide", li="1") for b, kg in inputs.items()]
    refined = kit.transform(cam, Kind.BATCH_PROCESSED, made, [("ORE-1", "100")], time="2013-10-01T00:00:00Z")
    kit.ok(refined, cam.key)
    original_doc = example("profiled/Example_9.6.4-TransformationEvent.jsonld")
    original = original_doc["epcisBody"]["eventList"][0]
    [mapped] = append_mapped(kit, original_doc, cam.key)

    exported = assert_gs1_valid(
        export_lineage(
            kit.led, "urn:epc:id:sgtin:4012345.077889.25", direction="up", depth=5, registry=registry()
        )
    )
    ev = by_event_id(exported, original["eventID"])
    assert ev["type"] == "TransformationEvent"
    assert instant(ev["eventTime"]) == instant(original["eventTime"])
    assert ev["bizLocation"]["id"] == original["readPoint"]["id"]
    for name in ("inputEPCList", "inputQuantityList", "outputEPCList"):
        assert ev[name] == original[name], name
    assert {k: Decimal(str(v)) for k, v in ev["bl:epc_kg"].items()} == {
        k: Decimal(str(v)) for k, v in original["bl:epc_kg"].items()
    }

    def lots(e: dict[str, Any]) -> dict[str, Any]:
        return {
            uri: {k: v if isinstance(v, dict | str) else Decimal(v) for k, v in lot.items()}
            for uri, lot in e["ilmd"]["bl:lots"].items()
        }

    assert {u: lot["material"] for u, lot in lots(ev).items()} == {
        u: lot["material"] for u, lot in lots(original).items()
    }
    for uri, lot in lots(original).items():
        got = lots(ev)[uri]
        assert Decimal(got["contained_kg"]["li"]) == Decimal(lot["contained_kg"]["li"])
        if "value_usd" in lot:
            assert Decimal(got["value_usd"]) == Decimal(lot["value_usd"])
    # the generic CBV step at a location registered for material.produced comes back as our own step
    assert ev["bizStep"] == "https://ns.batteryledger.org/epcis/bizstep/material_producing"
    again = map_document(exported, registry(), validator=gs1_validator())
    assert not again.errors
    [same] = [m for m in again.mapped if m.epcis_event_id == original["eventID"]]
    assert same.event == mapped.event


def test_an_error_declaration_round_trips_as_a_correction(bl_kit: LedgerKit) -> None:
    kit = bl_kit
    plant = kit.register("plant-de-example", [Kind.BATCH_EXTRACTED], country="DE", valid_from=LONG_AGO)
    dc = kit.register("dc-us-example", [Kind.BATCH_EXTRACTED], valid_from=LONG_AGO)
    lot = "urn:epc:class:lgtin:4012345.012345.998877"
    kit.ok(
        kit.transform(plant, Kind.BATCH_EXTRACTED, [output(lot, "200")], time="2013-06-01T00:00:00Z"),
        plant.key,
    )
    kit.ok(kit.shipment(plant, lot, "200", "dc-us-example") | {"time": "2013-06-02T00:00:00Z"}, plant.key)
    doc = example("Example_9.6.2-ObjectEvent.jsonld")
    doc["@context"].append({"bl": "https://ns.batteryledger.org/epcis/"})
    declared = dict(doc["epcisBody"]["eventList"][0])
    declared["errorDeclaration"] = {"declarationTime": "2013-06-10T00:00:00Z", "reason": "did_not_occur"}
    doc["epcisBody"]["eventList"].append(declared)
    original, correction = append_mapped(kit, doc, dc.key)
    assert correction.event["corrects"] == original.event_id

    exported = assert_gs1_valid(export_lineage(kit.led, lot, direction="down", depth=5, registry=registry()))
    [decl] = [e for e in exported["epcisBody"]["eventList"] if "errorDeclaration" in e]
    assert decl["errorDeclaration"]["reason"] == "did_not_occur"
    assert decl["bl:event_id"] == correction.event_id
    again = map_document(exported, registry(), validator=gs1_validator())
    assert correction.event in [m.event for m in again.mapped]


# -- the demo chain: CLI, API ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DemoChain]]:
    chain = demo_chain()
    url = f"sqlite:///{tmp_path_factory.mktemp('epcis') / 'ledger.db'}"
    with Ledger.init(url, operator_key=chain.operator_key, origin="test.batteryledger/epcis") as led:
        assert all(r.status == "appended" for r in led.append([e.raw for e in chain.good_events]))
    yield url, chain


@pytest.mark.parametrize(
    ("batch", "direction"), [("US-PACK-002", "up"), ("AU-SPOD-001", "down"), ("CA-BM-001", "up")]
)
def test_lineage_exports_are_valid_and_tie_to_the_ledger(
    demo: tuple[str, DemoChain], batch: str, direction: str
) -> None:
    url, chain = demo
    with Ledger(url) as led:
        doc = assert_gs1_valid(export_lineage(led, batch, direction=direction, depth=50))
        events = doc["epcisBody"]["eventList"]
        ids = [e["bl:event_id"] for e in events]
        stored = led.entry_data(ids)
        native = {e.event_id: e for e in chain.chain_events}
        assert set(ids) <= set(native) and len(ids) == len(set(ids))
        seqs = [e["bl:entry"] for e in events]
        assert seqs == sorted(seqs)
        for e in events:
            assert stored[e["bl:event_id"]][0] == e["bl:entry"]
            assert e["bl:inclusion_proof"] == f"/v1/proofs/inclusion?seq={e['bl:entry']}"
            assert e["bl:kind"] == native[e["bl:event_id"]].kind
    kinds = {e["bl:kind"] for e in events}
    assert {"batch.shipped", "batch.received"} <= kinds
    assert {"batch.extracted", "packs.assembled"} <= kinds if batch == "US-PACK-002" else True
    # the export imports again (no registry needed: locations are urn:batteryledger:facility:<id>) into
    # the same events the ledger holds, apart from the note that now keeps the EPCIS eventID
    again = map_document(doc, LocationRegistry(), validator=gs1_validator())
    assert not again.errors, [e.diagnostics() for e in again.errors]
    for m, e in zip(again.mapped, events, strict=True):
        ledger_obj = {k: v for k, v in json.loads(native[e["bl:event_id"]].raw).items() if k != "sig"}
        assert {k: v for k, v in m.event.items() if k != "note"} == ledger_obj


def test_depth_limits_the_export(demo: tuple[str, DemoChain]) -> None:
    url, _ = demo
    with Ledger(url) as led:
        one = export_lineage(led, "US-PACK-002", direction="up", depth=1)
        full = export_lineage(led, "US-PACK-002", direction="up", depth=50)
    assert 0 < len(one["epcisBody"]["eventList"]) < len(full["epcisBody"]["eventList"])


def test_cli_export_writes_a_valid_document(demo: tuple[str, DemoChain], tmp_path: Path) -> None:
    url, _ = demo
    out = tmp_path / "pack.jsonld"
    r = CliRunner().invoke(
        app, ["epcis", "export", "US-PACK-002", "--up", "--depth", "3", "-o", str(out), "--store", url]
    )
    assert r.exit_code == 0, r.output
    assert "EPCIS event(s) of the lineage of US-PACK-002" in r.stdout
    doc = assert_gs1_valid(parse_json(out.read_bytes()))
    assert doc["bl:batch_id"] == "US-PACK-002" and doc["bl:depth"] == 3
    r = CliRunner().invoke(app, ["epcis", "export", "NOPE-1", "-o", str(out), "--store", url])
    assert r.exit_code == 1
    assert (
        r.stderr.startswith("error: batch 'NOPE-1' is not in the ledger") and len(r.stderr.splitlines()) == 1
    )


def test_api_serves_the_lineage_as_epcis(
    demo: tuple[str, DemoChain], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, chain = demo
    reg = {
        "urn:epc:id:sgln:0614141.00011.0": {"facility": "pack-us-michigan", "country": "US"},
    }
    path = Path(url.removeprefix("sqlite:///")).with_name("locations.json")
    path.write_text(json.dumps(reg))
    monkeypatch.setenv("BATTERYLEDGER_EPCIS_LOCATIONS", str(path))
    with TestClient(create_app(url)) as client:
        r = client.get("/v1/batches/US-PACK-002/epcis", params={"direction": "up", "depth": 2})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/ld+json")
        doc = assert_gs1_valid(parse_json(r.content))
        events = doc["epcisBody"]["eventList"]
        assert events and all(
            e["bl:inclusion_proof"].startswith("http://testserver/v1/proofs/inclusion?seq=") for e in events
        )
        packs = [e for e in events if e["bl:kind"] == "packs.assembled"]
        assert packs[0]["bizLocation"]["id"] == "urn:epc:id:sgln:0614141.00011.0"  # the registry's SGLN
        # the proof link works
        proof = client.get(events[0]["bl:inclusion_proof"].removeprefix("http://testserver"))
        assert proof.status_code == 200 and proof.json()["seq"] == events[0]["bl:entry"]
        missing = client.get("/v1/batches/NOPE-1/epcis")
        assert missing.status_code == 404 and "not in the ledger" in missing.json()["detail"]
        bad = client.get("/v1/batches/US-PACK-002/epcis", params={"direction": "sideways"})
        assert bad.status_code in (400, 422)
        # the plain batch route still answers (the EPCIS route is mounted before the catch-all)
        assert client.get("/v1/batches/US-PACK-002").status_code == 200
    del chain
