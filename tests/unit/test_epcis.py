"""EPCIS 2.0 in: the mapping profile (schemas/epcis.py) and `batteryledger epcis convert | publish`.

Real artefacts: GS1's own JSON Schema and worked examples (tests/assets/epcis/, with GS1's notice), the
demo chain's EPCIS documents (examples/epcis/). Every bad-input case names the event index and field.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from batteryledger.cli import app
from batteryledger.epcis_examples import EXAMPLES_DIR, demo_documents, location_registry
from batteryledger.epcis_io import gs1_schema, gs1_validator
from batteryledger.sample import demo_chain
from schemas.epcis import (
    NS,
    EpcisError,
    Location,
    LocationRegistry,
    dumps,
    map_document,
    parse_json,
    unsigned_event_id,
)
from schemas.events import Kind, parse_event

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "epcis"
LOCATIONS = ASSETS / "locations-examples.json"


def load(name: str) -> Any:
    return parse_json((ASSETS / name).read_bytes())


def registry() -> LocationRegistry:
    return LocationRegistry.from_json(json.loads(LOCATIONS.read_text()))


def one_error(doc: Any, reg: LocationRegistry | None = None, **kw: Any) -> EpcisError:
    result = map_document(doc, reg or registry(), validator=gs1_validator(), **kw)
    assert len(result.errors) == 1, [e.diagnostics() for e in result.errors]
    return result.errors[0]


def doc_of(*events: dict[str, Any]) -> dict[str, Any]:
    doc = load("Example_9.6.2-ObjectEvent.jsonld")
    doc["@context"].append({"bl": NS})
    doc["epcisBody"]["eventList"] = list(events)
    return doc


def received() -> dict[str, Any]:
    return copy.deepcopy(load("Example_9.6.2-ObjectEvent.jsonld")["epcisBody"]["eventList"][0])


# -- the assets ----------------------------------------------------------------------------------------


def test_the_packaged_gs1_schema_is_the_asset_and_the_notice_ships_with_it() -> None:
    packaged = Path(__file__).resolve().parents[2] / "batteryledger" / "gs1"
    assert (packaged / "EPCIS-JSON-Schema.json").read_bytes() == (
        ASSETS / "EPCIS-JSON-Schema.json"
    ).read_bytes()
    assert gs1_schema()["$id"] == "https://gs1.github.io/EPCIS/EPCIS-JSON-Schema.json"
    assert "GS1" in (packaged / "LICENSE-GS1-DISCLAIMER.txt").read_text("utf-8")
    assert (ASSETS / "LICENSE-GS1-DISCLAIMER.txt").exists()


def test_the_standard_examples_are_valid_against_the_schema() -> None:
    for p in sorted(ASSETS.glob("Example*.jsonld")) + sorted((ASSETS / "profiled").glob("*.jsonld")):
        errors = list(gs1_validator().iter_errors(parse_json(p.read_bytes())))
        assert not errors, (p.name, errors[0].message)


# -- mapping -------------------------------------------------------------------------------------------


def test_example_9_6_2_receiving_maps_to_batch_received() -> None:
    result = map_document(load("Example_9.6.2-ObjectEvent.jsonld"), registry(), validator=gs1_validator())
    assert not result.errors
    [m] = result.mapped
    assert m.event == {
        "spec": "batteryledger/1",
        "kind": "batch.received",
        "facility_id": "dc-us-example",
        "time": "2013-06-08T14:58:56.591Z",
        "note": "epcis:eventID=ni:///sha-256;a98f08ae6ac4de3482054314d637c07010b448d3802dccb028a06aafcc6a4b10?ver=CBV2.0",
        "batch_id": "urn:epc:class:lgtin:4012345.012345.998877",
        "kg": "200",
        "from_facility_id": "plant-de-example",  # the source of type location, through the registry
    }
    assert m.epcis_event_id is not None and m.epcis_event_id.startswith("ni:///sha-256;a98f")


def test_profiled_transformation_example_maps_by_the_location_kind() -> None:
    doc = parse_json((ASSETS / "profiled" / "Example_9.6.4-TransformationEvent.jsonld").read_bytes())
    [m] = map_document(doc, registry(), validator=gs1_validator()).mapped
    ev = m.event
    assert ev["kind"] == "material.produced"  # generic CBV commissioning at a location registered for it
    assert ev["facility_id"] == "cam-de-example"
    assert [(i["batch_id"], i["kg"]) for i in ev["inputs"]] == [
        ("urn:epc:class:lgtin:4012345.011111.4444", "10"),
        ("urn:epc:class:lgtin:0614141.077777.987", "30"),
        ("urn:epc:id:sgtin:4012345.011122.25", "2.5"),
        ("urn:epc:id:sgtin:4000001.065432.99886655", "7.25"),
    ]
    assert [o["batch_id"] for o in ev["outputs"]] == [
        f"urn:epc:id:sgtin:4012345.077889.{n}" for n in (25, 26, 27, 28)
    ]
    assert ev["outputs"][0] == {
        "batch_id": "urn:epc:id:sgtin:4012345.077889.25",
        "material": "cathode_active_material",
        "kg": "12.125",
        "contained_kg": {"li": "0.7"},
        "value_usd": "1250.5",
    }
    assert ev["outputs"][3]["units"] == 1
    parse_event(ev)


@pytest.mark.parametrize(
    ("quantity", "uom", "kg"),
    [
        ("1250.750", "KGM", "1250.75"),
        ("1.5", "TNE", "1500"),
        ("250", "GRM", "0.25"),
        ("0.001", "GRM", "0.000001"),
    ],
)
def test_mass_units_convert_exactly_to_kg(quantity: str, uom: str, kg: str) -> None:
    ev = received()
    ev["quantityList"][0].update(quantity=parse_json(quantity), uom=uom)
    [m] = map_document(doc_of(ev), registry(), validator=gs1_validator()).mapped
    assert m.event["kg"] == kg


@given(
    st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False),
    st.sampled_from(["KGM", "TNE", "GRM"]),
)
def test_unit_conversion_is_exact_for_any_quantity(quantity: Any, uom: str) -> None:
    from decimal import Decimal

    from schemas.epcis import MASS_UNITS, kg_of

    q = parse_json(str(quantity))  # as a document carries it: a JSON number, read exactly
    kg = kg_of({"epcClass": "urn:epc:class:lgtin:1.2.3", "quantity": q, "uom": uom}, 0, "quantityList[0]")
    assert Decimal(kg) == Decimal(str(quantity)) * MASS_UNITS[uom]
    assert "E" not in kg and (kg == "0" or not kg.endswith(".")) and not kg.startswith("-")


def test_the_epcis_event_id_is_kept_so_equal_events_stay_distinct_and_a_remap_is_identical() -> None:
    a, b = received(), received()
    b["eventID"] = "urn:uuid:7d6f1c3e-0000-4000-8000-000000000001"
    result = map_document(doc_of(a, b), registry(), validator=gs1_validator())
    ids = [m.event_id for m in result.mapped]
    assert len(set(ids)) == 2
    again = map_document(doc_of(a, b), registry(), validator=gs1_validator())
    assert [m.event_id for m in again.mapped] == ids  # re-publishing maps to the same ledger events


def test_error_declaration_maps_to_a_correction_of_the_original() -> None:
    original = received()
    declared = received()
    declared["errorDeclaration"] = {
        "declarationTime": "2013-06-09T10:00:00Z",
        "reason": "incorrect_data",
        "bl:explanation": "200 kg were 190 kg",
    }
    [orig, corr] = map_document(doc_of(original, declared), registry(), validator=gs1_validator()).mapped
    assert corr.event["kind"] == "correction"
    assert corr.event["corrects"] == unsigned_event_id(orig.event)
    assert corr.event["reason"] == "incorrect_data"
    assert corr.event["explanation"] == "200 kg were 190 kg"
    assert corr.event["facility_id"] == "dc-us-example"
    parse_event(corr.event)


def test_the_signer_must_be_the_location_facility() -> None:
    err = one_error(load("Example_9.6.2-ObjectEvent.jsonld"), facility_id="plant-de-example")
    assert (err.index, err.field) == (0, "bizLocation.id")
    assert "facility 'dc-us-example', not 'plant-de-example'" in err.message


# -- bad input: each names the event index and the field -------------------------------------------------


def test_a_document_failing_the_gs1_schema() -> None:
    ev = received()
    del ev["eventTimeZoneOffset"]
    bad = received()
    bad["quantityList"][0]["uom"] = "kg"  # UN/ECE codes are upper case: the schema says ^[A-Z0-9]{2,3}$
    result = map_document(doc_of(received(), ev, bad), registry(), validator=gs1_validator())
    assert len(result.mapped) == 1
    e1, e2 = result.errors
    assert (e1.index, e1.field) == (1, "(event)") and "eventTimeZoneOffset" in e1.message
    assert "GS1 EPCIS 2.0 JSON Schema" in e1.message
    assert (e2.index, e2.field) == (2, "quantityList[0].uom")


def test_a_document_that_is_no_epcis_document_at_all() -> None:
    doc = load("Example_9.6.2-ObjectEvent.jsonld")
    del doc["schemaVersion"]
    with pytest.raises(EpcisError, match=r"GS1 EPCIS 2\.0 JSON Schema") as exc:
        map_document(doc, registry(), validator=gs1_validator())
    assert exc.value.index is None
    with pytest.raises(EpcisError, match="give an EPCISDocument"):
        map_document({"type": "ObjectEvent"}, registry())
    with pytest.raises(EpcisError, match="duplicate key 'type'"):
        parse_json(b'{"type": "EPCISDocument", "type": "x"}')


def test_an_unmapped_bizstep() -> None:
    ev = received()
    ev["bizStep"] = "inspecting"
    err = one_error(doc_of(ev))
    assert (err.index, err.field) == (0, "bizStep")
    assert "unmapped bizStep inspecting" in err.message


def test_an_unknown_location() -> None:
    # both events of 9.6.1 are at unregistered SGLNs; the first names readPoint (it has no bizLocation)
    result = map_document(
        load("Example_9.6.1-ObjectEvent.jsonld"), LocationRegistry(), validator=gs1_validator()
    )
    assert [(e.index, e.field) for e in result.errors] == [(0, "readPoint.id"), (1, "bizLocation.id")]
    assert "unknown location urn:epc:id:sgln:0614141.07346.1234" in result.errors[0].message
    ev = received()
    ev["sourceList"] = [{"type": "location", "source": "urn:epc:id:sgln:9999999.00001.0"}]
    err = one_error(doc_of(ev))
    assert (err.index, err.field) == (0, "sourceList[0].source")


def test_a_quantity_without_a_unit_in_the_standard_transformation_example() -> None:
    err = one_error(load("Example_9.6.4-TransformationEvent.jsonld"))
    assert (err.index, err.field) == (0, "inputQuantityList[1].uom")
    assert "quantity 30 of urn:epc:class:lgtin:0614141.077777.987 has no unit" in err.message


def test_a_mass_in_pieces() -> None:
    ev = received()
    ev["quantityList"][0]["uom"] = "H87"
    err = one_error(doc_of(ev))
    assert (err.index, err.field) == (0, "quantityList[0].uom")
    assert "counts pieces" in err.message


def test_more_bad_input_is_named() -> None:
    ev = received()
    ev["quantityList"][0]["uom"] = "LTR"
    assert one_error(doc_of(ev)).field == "quantityList[0].uom"
    ev = received()
    ev["quantityList"][0].update(quantity=parse_json("0.0000001"), uom="GRM")
    assert "decimal places" in one_error(doc_of(ev)).message
    ev = received()
    ev["quantityList"][0]["epcClass"] = "urn:epc:idpat:sgtin:4012345.066666.*"
    assert "pattern, not a lot" in one_error(doc_of(ev)).message
    ev = received()
    ev["type"] = "AggregationEvent"
    ev.pop("quantityList")
    ev["parentID"] = "urn:epc:id:sscc:0614141.1234567890"
    ev["childEPCs"] = ["urn:epc:id:sgtin:0614141.107346.2017"]
    ev.pop("sourceList")
    ev.pop("destinationList")
    err = one_error(doc_of(ev))
    assert (err.index, err.field) == (0, "type")
    ev = received()
    ev["bl:unknown"] = 1
    assert one_error(doc_of(ev)).field == "bl:unknown"


# -- the CLI -------------------------------------------------------------------------------------------


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def mixed_document(tmp_path: Path) -> Path:
    bad = received()
    bad["bizStep"] = "inspecting"
    second = received()
    second["eventID"] = "urn:uuid:7d6f1c3e-0000-4000-8000-000000000002"
    p = tmp_path / "mixed.jsonld"
    p.write_text(dumps(doc_of(received(), bad, second)))
    return p


def test_convert_prints_the_mapped_events(tmp_path: Path) -> None:
    r = run(
        "epcis", "convert", str(ASSETS / "Example_9.6.2-ObjectEvent.jsonld"), "--locations", str(LOCATIONS)
    )
    assert r.exit_code == 0, r.output
    [line] = r.stdout.splitlines()
    assert json.loads(line)["kind"] == "batch.received"


def test_convert_stops_at_a_bad_event_and_names_it(tmp_path: Path) -> None:
    r = run("epcis", "convert", str(mixed_document(tmp_path)), "--locations", str(LOCATIONS))
    assert r.exit_code == 2
    assert r.stdout == ""  # nothing mapped
    lines = r.stderr.splitlines()
    assert lines[0].startswith("error: event 1: bizStep: unmapped bizStep inspecting")
    assert "1 of 3 events" in lines[-1] and "--skip-bad" in lines[-1]


def test_convert_with_skip_bad_lists_the_skipped(tmp_path: Path) -> None:
    r = run("epcis", "convert", str(mixed_document(tmp_path)), "--locations", str(LOCATIONS), "--skip-bad")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 2
    assert r.stderr.splitlines()[0].startswith("skipped event 1: bizStep:")


def test_publish_of_a_document_with_a_bad_event_publishes_nothing(tmp_path: Path) -> None:
    from schemas.signing import generate_key, save_private_key

    key = save_private_key(generate_key(), tmp_path / "dc.key")
    # the broker address is closed: the command must stop before it ever connects
    r = run(
        "epcis", "publish", str(mixed_document(tmp_path)), "--key", str(key), "--facility", "dc-us-example",
        "--locations", str(LOCATIONS), "--broker", "127.0.0.1:9", "--store", str(tmp_path / "none.db"),
    )  # fmt: skip
    assert r.exit_code == 2
    assert "published" not in r.stdout
    assert "nothing mapped or published" in r.stderr.splitlines()[-1]


def test_missing_files_and_bad_registries_are_one_line_errors(tmp_path: Path) -> None:
    r = run("epcis", "convert", str(tmp_path / "nope.jsonld"))
    assert (
        r.exit_code == 2
        and r.stderr.startswith("error: document: cannot read")
        and len(r.stderr.splitlines()) == 1
    )
    reg = tmp_path / "loc.json"
    reg.write_text('{"urn:epc:id:sgln:1.2.3": {"facility": "x", "country": "usa"}}')
    r = run("epcis", "convert", str(ASSETS / "Example_9.6.2-ObjectEvent.jsonld"), "--locations", str(reg))
    assert r.exit_code == 2 and "not ISO 3166-1 alpha-2" in r.stderr and len(r.stderr.splitlines()) == 1


# -- the demo chain as EPCIS ---------------------------------------------------------------------------


def test_the_committed_examples_are_what_the_generator_writes() -> None:
    chain = demo_chain()
    docs = demo_documents(chain)
    on_disk = sorted(p.name for p in EXAMPLES_DIR.glob("[0-9]*.jsonld"))
    assert on_disk == sorted(docs), "regenerate with: python -m batteryledger.epcis_examples"
    for name, doc in docs.items():
        assert (EXAMPLES_DIR / name).read_text() == dumps(doc) + "\n", name
    assert json.loads((EXAMPLES_DIR / "locations.json").read_text()) == location_registry(chain)


def test_the_examples_map_to_the_native_chain_apart_from_the_note() -> None:
    chain = demo_chain()
    reg = LocationRegistry.from_json(json.loads((EXAMPLES_DIR / "locations.json").read_text()))
    mapped = []
    for p in sorted(EXAMPLES_DIR.glob("[0-9]*.jsonld")):
        facility = p.stem.split("-", 1)[1]
        result = map_document(
            parse_json(p.read_bytes()), reg, facility_id=facility, validator=gs1_validator()
        )
        assert not result.errors, [e.diagnostics() for e in result.errors]
        mapped.extend(m.event for m in result.mapped)
    native = [{k: v for k, v in json.loads(e.raw).items() if k != "sig"} for e in chain.chain_events]
    assert [{k: v for k, v in m.items() if k != "note"} for m in mapped] == native
    assert all(m["note"].startswith("epcis:eventID=urn:uuid:") for m in mapped)


def test_a_query_document_from_an_epcis_repository_maps_too() -> None:
    doc = load("Example_9.6.2-ObjectEvent.jsonld")
    query = {
        "@context": doc["@context"],
        "type": "EPCISQueryDocument",
        "schemaVersion": "2.0",
        "creationDate": "2005-07-11T11:30:47.0Z",
        "epcisBody": {
            "queryResults": {
                "queryName": "SimpleEventQuery",
                "resultsBody": {"eventList": doc["epcisBody"]["eventList"]},
            }
        },
    }
    [m] = map_document(query, registry(), validator=gs1_validator()).mapped
    assert m.event["kind"] == "batch.received"
    query["epcisBody"]["queryResults"]["resultsBody"]["eventList"][0]["quantityList"][0]["uom"] = "kg"
    err = one_error(query)
    assert (err.index, err.field) == (0, "quantityList[0].uom")


def test_commissioning_is_an_extraction_only_at_a_mine_and_generic_steps_need_a_registered_kind() -> None:
    ev = received()
    ev.update(action="ADD", bizStep="commissioning")
    for k in ("sourceList", "destinationList"):
        ev.pop(k)
    ev["ilmd"] = {"bl:lots": {ev["quantityList"][0]["epcClass"]: {"material": "spodumene_concentrate"}}}
    err = one_error(doc_of(ev))  # dc-us-example is no mine
    assert (err.index, err.field) == (0, "bizStep") and "only at a mine" in err.message
    mine = registry()
    mine.locations["urn:epc:id:sgln:0614141.00888.0"] = Location(
        "mine-us-example", "US", Kind.BATCH_EXTRACTED
    )
    [m] = map_document(doc_of(ev), mine, validator=gs1_validator()).mapped
    assert m.event["kind"] == "batch.extracted" and m.event["facility_id"] == "mine-us-example"
    assert m.event["outputs"] == [
        {
            "batch_id": "urn:epc:class:lgtin:4012345.012345.998877",
            "material": "spodumene_concentrate",
            "kg": "200",
        }
    ]
    doc = load("profiled/Example_9.6.4-TransformationEvent.jsonld")
    plain = LocationRegistry({"urn:epc:id:sgln:4012345.00001.0": Location("cam-de-example")})
    err = one_error(doc, plain)
    assert (err.index, err.field) == (0, "bizStep") and "does not say what is made" in err.message
