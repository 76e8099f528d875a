"""Event models: every kind validates; every documented limit and malformation is refused by name."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from batteryledger.sample import DemoChain
from schemas import events
from schemas.events import (
    ID_PATTERN,
    MAX_DECIMAL_PLACES,
    MAX_EVENT_BYTES,
    MAX_ID_LEN,
    MAX_LIST_LEN,
    MAX_QUANTITY,
    MAX_TEXT_LEN,
    MODEL_OF_KIND,
    Kind,
    event_to_json_obj,
    is_identifier,
    parse_event,
)
from schemas.signing import decode, generate_key, key_id, public_key_b64

KEY = generate_key()
KEY_ID = key_id(KEY.public_key())


def processed() -> dict[str, Any]:
    """A valid batch.processed event using most output fields."""
    return {
        "spec": "batteryledger/1",
        "kind": "batch.processed",
        "facility_id": "ref-us-kings-mountain",
        "time": "2025-02-01T08:00:00Z",
        "nonce": "n-1",
        "note": "lot 7",
        "process": "conversion",
        "inputs": [{"batch_id": "AU-SPOD-001", "kg": "1000"}, {"batch_id": "AU-SPOD-002", "kg": "250.5"}],
        "outputs": [
            {
                "batch_id": "US-LIOH-001",
                "material": "lithium_hydroxide",
                "kg": "1250.750",
                "contained_kg": {"li": "200.125", "ni": "0", "co": "0", "mn": "0", "graphite": "0"},
                "value_usd": "31000.50",
                "purity_pct": "99.5",
                "units": 10,
            }
        ],
    }


def registered() -> dict[str, Any]:
    return {
        "spec": "batteryledger/1",
        "kind": "facility.registered",
        "facility_id": "registry",
        "time": "2024-01-01T00:00:00Z",
        "subject_facility_id": "mine-au-greenbushes",
        "legal_entity": "Pilbara Spodumene Pty Ltd",
        "country": "AU",
        "roles": ["batch.extracted", "batch.shipped"],
        "attestation": {"feoc": False, "as_of": "2024-01-01T00:00:00Z"},
        "key": {
            "key_id": KEY_ID,
            "public_key": public_key_b64(KEY.public_key()),
            "valid_from": "2024-01-01T00:00:00Z",
        },
    }


# Valid examples of the kinds the demo chain does not exercise.
EXTRA_VALID: dict[str, dict[str, Any]] = {
    "facility.attested": {
        "spec": "batteryledger/1",
        "kind": "facility.attested",
        "facility_id": "registry",
        "time": "2025-01-01T00:00:00Z",
        "subject_facility_id": "ref-cn-ningbo",
        "attestation": {"feoc": True, "prohibited_foreign_entity": True, "as_of": "2025-01-01T00:00:00Z"},
    },
    "key.rotated": {
        "spec": "batteryledger/1",
        "kind": "key.rotated",
        "facility_id": "registry",
        "time": "2025-01-01T00:00:00Z",
        "subject_facility_id": "ref-cn-ningbo",
        "key": {
            "key_id": KEY_ID,
            "public_key": public_key_b64(KEY.public_key()),
            "valid_from": "2025-01-01T00:00:00Z",
        },
        "retire_key_id": "0123456789abcdef",
        "retire_at": "2025-01-02T00:00:00Z",
    },
    "key.revoked": {
        "spec": "batteryledger/1",
        "kind": "key.revoked",
        "facility_id": "registry",
        "time": "2025-01-01T00:00:00Z",
        "subject_facility_id": "ref-cn-ningbo",
        "key_id": "0123456789abcdef",
        "revoked_at": "2024-12-01T00:00:00Z",
        "reason": "compromised",
    },
    "supplier.certified": {
        "spec": "batteryledger/1",
        "kind": "supplier.certified",
        "facility_id": "ref-us-kings-mountain",
        "time": "2025-01-01T00:00:00Z",
        "batch_ids": ["US-LIOH-001"],
        "statement": "pfe_cost_share",
        "pfe_cost_share": "0.125",
    },
    "correction": {
        "spec": "batteryledger/1",
        "kind": "correction",
        "facility_id": "ref-us-kings-mountain",
        "time": "2025-01-01T00:00:00Z",
        "corrects": "ab" * 32,
        "reason": "incorrect_data",
        "explanation": "assay re-run",
    },
}


def test_every_kind_of_the_demo_chain_validates(bl_demo: DemoChain) -> None:
    seen: set[str] = set()
    for ev in bl_demo.good_events:
        obj = json.loads(ev.raw)
        del obj["sig"]
        model = parse_event(obj)
        assert model.kind == ev.kind
        assert isinstance(model, MODEL_OF_KIND[Kind(ev.kind)])
        assert decode(ev.raw).event == model
        seen.add(ev.kind)
    # the demo plus EXTRA_VALID reach every kind of the contract
    assert seen | set(EXTRA_VALID) == {k.value for k in Kind}


@pytest.mark.parametrize("kind", sorted(EXTRA_VALID))
def test_kinds_outside_the_demo_validate(kind: str) -> None:
    model = parse_event(copy.deepcopy(EXTRA_VALID[kind]))
    assert model.kind == kind
    assert isinstance(model, MODEL_OF_KIND[Kind(kind)])


def test_valid_base_events_validate() -> None:
    ev = parse_event(processed())
    assert ev.outputs[0].kg == Decimal("1250.750")  # type: ignore[union-attr]
    assert parse_event(registered()).kind == "facility.registered"


def test_the_documented_limits_exist() -> None:
    assert MAX_EVENT_BYTES == 64 * 1024
    assert MAX_ID_LEN == 128
    assert MAX_TEXT_LEN == 1024
    assert MAX_LIST_LEN == 256
    assert Decimal("1e12") == MAX_QUANTITY
    assert MAX_DECIMAL_PLACES == 6


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_states_the_limits_the_code_enforces() -> None:
    text = README.read_text()
    start = text.index("**Limits**")
    bullet = text[start : text.index("\n- ", start)]
    assert f"{MAX_EVENT_BYTES // 1024} KiB per event" in bullet
    assert f"ids up to {MAX_ID_LEN} characters" in bullet
    assert ID_PATTERN.strip("^$") in bullet
    assert f"free text up to {MAX_TEXT_LEN}" in bullet
    assert f"at most {MAX_LIST_LEN} inputs/outputs" in bullet
    assert Decimal(10) ** 12 == MAX_QUANTITY and "10^12" in bullet
    assert f"at most {MAX_DECIMAL_PLACES} decimals" in bullet


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutation that sets a dotted path (list indices as numbers) to `value`."""

    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _dup_outputs(obj: dict[str, Any]) -> None:
    obj["outputs"].append(copy.deepcopy(obj["outputs"][0]))


def _dup_inputs(obj: dict[str, Any]) -> None:
    obj["inputs"][1]["batch_id"] = obj["inputs"][0]["batch_id"]


def _many(field: str, n: int) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        template = obj[field][0]
        obj[field] = [dict(template, batch_id=f"B-{i}") for i in range(n)]

    return mutate


def _contained_over_kg(obj: dict[str, Any]) -> None:
    obj["outputs"][0]["kg"] = "100"
    obj["outputs"][0]["contained_kg"] = {"li": "60", "ni": "40.000001"}


# (case id, mutation of processed(), dotted location the error names, words of the message)
REJECTS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("negative-kg", _set("outputs.0.kg", "-1"), "outputs.0.kg", "must not be negative"),
    ("negative-input", _set("inputs.0.kg", "-0.5"), "inputs.0.kg", "must not be negative"),
    ("negative-element", _set("outputs.0.contained_kg.li", "-1"), "contained_kg.li", "must not be negative"),
    ("nan-string", _set("outputs.0.kg", "NaN"), "outputs.0.kg", "plain decimal"),
    ("snan-string", _set("outputs.0.kg", "sNaN"), "outputs.0.kg", "plain decimal"),
    ("infinity-string", _set("outputs.0.kg", "Infinity"), "outputs.0.kg", "plain decimal"),
    ("minus-infinity", _set("inputs.0.kg", "-Infinity"), "inputs.0.kg", "plain decimal"),
    ("json-float", _set("outputs.0.kg", 1250.75), "outputs.0.kg", "not JSON floats"),
    ("json-float-whole", _set("inputs.0.kg", 1000.0), "inputs.0.kg", "not JSON floats"),
    ("float-purity", _set("outputs.0.purity_pct", 99.5), "purity_pct", "not JSON floats"),
    ("bool-quantity", _set("outputs.0.kg", True), "outputs.0.kg", "boolean"),
    ("seven-decimals", _set("outputs.0.kg", "1.0000001"), "outputs.0.kg", "at most 6 decimal places"),
    ("trailing-zero-decimals", _set("outputs.0.kg", "1.0000000"), "outputs.0.kg", "at most 6 decimal places"),
    (
        "over-max-quantity",
        _set("outputs.0.value_usd", "1000000000000.000001"),
        "value_usd",
        "must not exceed",
    ),
    ("not-a-number", _set("outputs.0.kg", "ten"), "outputs.0.kg", "decimal"),
    ("purity-over-100", _set("outputs.0.purity_pct", "100.1"), "purity_pct", "at most 100"),
    ("unknown-top-field", _set("colour", "green"), "colour", "Extra inputs are not permitted"),
    ("unknown-output-field", _set("outputs.0.colour", "green"), "outputs.0.colour", "Extra inputs"),
    ("unknown-element", _set("outputs.0.contained_kg.fe", "1"), "contained_kg.fe", "Extra inputs"),
    ("naive-time", _set("time", "2025-02-01T08:00:00"), "time", "timezone"),
    ("date-only-time", _set("time", "2025-02-01"), "time", "timezone"),
    ("garbage-time", _set("time", "yesterday"), "time", "datetime"),
    ("id-too-long", _set("outputs.0.batch_id", "B" * (MAX_ID_LEN + 1)), "outputs.0.batch_id", "at most 128"),
    ("id-empty", _set("inputs.0.batch_id", ""), "inputs.0.batch_id", "at least 1"),
    ("id-space", _set("outputs.0.batch_id", "US LIOH 001"), "outputs.0.batch_id", "pattern"),
    ("id-leading-dash", _set("facility_id", "-ref"), "facility_id", "pattern"),
    ("id-non-ascii", _set("facility_id", "réf-1"), "facility_id", "pattern"),
    ("id-trailing-newline", _set("facility_id", "ref-1\n"), "facility_id", "pattern"),
    ("outputs-over-max", _many("outputs", MAX_LIST_LEN + 1), "outputs", "at most 256"),
    ("inputs-over-max", _many("inputs", MAX_LIST_LEN + 1), "inputs", "at most 256"),
    ("no-outputs", _set("outputs", []), "outputs", "at least 1"),
    ("contained-over-kg", _contained_over_kg, "outputs.0", "exceeds the batch mass"),
    ("duplicate-output-ids", _dup_outputs, "batch.processed", "output batch ids must be unique"),
    ("duplicate-input-ids", _dup_inputs, "batch.processed", "an input batch may appear only once"),
    ("bool-units", _set("outputs.0.units", True), "outputs.0.units", "integer"),
    ("float-units", _set("outputs.0.units", 10.0), "outputs.0.units", "integer"),
    ("string-units", _set("outputs.0.units", "10"), "outputs.0.units", "integer"),
    ("negative-units", _set("outputs.0.units", -1), "outputs.0.units", "greater than or equal to 0"),
    ("too-many-units", _set("outputs.0.units", 10**9 + 1), "outputs.0.units", "less than or equal"),
    ("note-too-long", _set("note", "x" * (MAX_TEXT_LEN + 1)), "note", "at most 1024"),
    ("wrong-spec", _set("spec", "batteryledger/2"), "spec", "batteryledger/1"),
    ("unknown-process", _set("process", "smelting"), "process", "refining"),
    ("bad-material", _set("outputs.0.material", "Lithium Hydroxide"), "outputs.0.material", "pattern"),
]


@pytest.mark.parametrize(("mutate", "loc", "words"), [r[1:] for r in REJECTS], ids=[r[0] for r in REJECTS])
def test_rejects_with_a_message_naming_the_field(
    mutate: Callable[[dict[str, Any]], None], loc: str, words: str
) -> None:
    obj = processed()
    mutate(obj)
    with pytest.raises(ValidationError) as info:
        parse_event(obj)
    errors = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]
    assert any(loc in where and words in msg for where, msg in errors), errors


REGISTRY_REJECTS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("country-lower", _set("country", "au"), "country", "pattern"),
    ("country-three", _set("country", "AUS"), "country", "pattern"),
    ("country-digit", _set("country", "A1"), "country", "pattern"),
    ("feoc-string", _set("attestation.feoc", "false"), "attestation.feoc", "boolean"),
    ("feoc-int", _set("attestation.feoc", 0), "attestation.feoc", "boolean"),
    ("key-id-upper", _set("key.key_id", KEY_ID.upper()), "key.key_id", "pattern"),
    ("key-id-short", _set("key.key_id", KEY_ID[:15]), "key.key_id", "pattern"),
    ("public-key-short", _set("key.public_key", "AAAA"), "key.public_key", "at least 44"),
    ("no-roles", _set("roles", []), "roles", "at least 1"),
    ("unknown-role", _set("roles", ["batch.teleported"]), "roles.0", "Input should be"),
    ("legal-entity-too-long", _set("legal_entity", "x" * (MAX_TEXT_LEN + 1)), "legal_entity", "at most 1024"),
    ("naive-valid-from", _set("key.valid_from", "2024-01-01T00:00:00"), "key.valid_from", "timezone"),
]


@pytest.mark.parametrize(
    ("mutate", "loc", "words"), [r[1:] for r in REGISTRY_REJECTS], ids=[r[0] for r in REGISTRY_REJECTS]
)
def test_registry_event_rejects(mutate: Callable[[dict[str, Any]], None], loc: str, words: str) -> None:
    obj = registered()
    mutate(obj)
    with pytest.raises(ValidationError) as info:
        parse_event(obj)
    errors = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]
    assert any(loc in where and words in msg for where, msg in errors), errors


def test_unknown_kind_is_refused_by_the_discriminator() -> None:
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_event(dict(processed(), kind="batch.teleported"))


def test_extraction_takes_no_ledger_inputs() -> None:
    obj = dict(processed(), kind="batch.extracted")
    del obj["process"]
    with pytest.raises(ValidationError, match="extraction has no ledger inputs"):
        parse_event(obj)
    del obj["inputs"]
    assert parse_event(obj).kind == "batch.extracted"


def test_recycling_needs_inputs_or_a_declared_feed() -> None:
    obj = dict(processed(), kind="batch.recycled", inputs=[])
    del obj["process"]
    with pytest.raises(ValidationError, match="recycling needs ledger inputs or a declared external feed"):
        parse_event(obj)
    obj["external_feed"] = [{"description": "EoL packs", "consumer": "post", "kg": "9000"}]
    assert parse_event(obj).kind == "batch.recycled"


def test_correction_target_must_be_an_event_id() -> None:
    obj = dict(EXTRA_VALID["correction"], corrects="AB" * 32)
    with pytest.raises(ValidationError, match="corrects"):
        parse_event(obj)


BOUNDARY_ACCEPTS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("id-at-max", _set("outputs.0.batch_id", "B" * MAX_ID_LEN)),
    ("id-gs1-chars", _set("outputs.0.batch_id", "urn:epc:id:sgtin:0614141.112345.LOT_7/A-1")),
    ("outputs-at-max", _many("outputs", MAX_LIST_LEN)),
    ("inputs-at-max", _many("inputs", MAX_LIST_LEN)),
    ("quantity-at-max", _set("outputs.0.value_usd", "1000000000000")),
    ("six-decimals", _set("outputs.0.kg", "1250.000001")),
    ("zero", _set("inputs.0.kg", "0")),
    ("integer-quantity", _set("inputs.0.kg", 1000)),
    ("purity-100", _set("outputs.0.purity_pct", "100")),
    ("units-at-max", _set("outputs.0.units", 10**9)),
    ("note-at-max", _set("note", "x" * MAX_TEXT_LEN)),
    ("offset-time", _set("time", "2025-02-01T10:00:00+02:00")),
]


@pytest.mark.parametrize("mutate", [m for _, m in BOUNDARY_ACCEPTS], ids=[i for i, _ in BOUNDARY_ACCEPTS])
def test_accepts_values_at_the_limits(mutate: Callable[[dict[str, Any]], None]) -> None:
    obj = processed()
    mutate(obj)
    parse_event(obj)


def test_contained_mass_equal_to_batch_mass_is_allowed() -> None:
    obj = processed()
    obj["outputs"][0]["kg"] = "100"
    obj["outputs"][0]["contained_kg"] = {"li": "60", "ni": "40"}
    parse_event(obj)


def test_times_are_normalised_to_utc_and_keep_the_instant() -> None:
    ev = parse_event(dict(processed(), time="2025-02-01T10:00:00+02:00"))
    assert ev.time.utcoffset() == timedelta(0)
    assert ev.time == datetime(2025, 2, 1, 8, tzinfo=UTC)


def test_event_to_json_obj_writes_z_times_and_decimal_strings() -> None:
    obj = registered()
    obj["time"] = "2024-01-01T00:00:00+00:00"
    obj["key"]["valid_from"] = "2024-01-01T01:00:00+01:00"
    out = event_to_json_obj(parse_event(obj))
    assert out["time"] == "2024-01-01T00:00:00Z"
    assert out["key"]["valid_from"] == "2024-01-01T00:00:00Z"
    assert out["attestation"]["as_of"] == "2024-01-01T00:00:00Z"
    dumped = event_to_json_obj(parse_event(processed()))
    assert dumped["outputs"][0]["kg"] == "1250.750"  # the decimal keeps its written precision
    assert "valid_until" not in json.dumps(out)  # None is left out, not written as null


def test_is_identifier_agrees_with_the_pattern() -> None:
    assert is_identifier("US-LIOH-001")
    assert is_identifier("a" * MAX_ID_LEN)
    assert not is_identifier("a" * (MAX_ID_LEN + 1))
    assert not is_identifier("-x")
    assert not is_identifier("")


def test_is_identifier_refuses_a_trailing_newline() -> None:
    with pytest.raises(ValidationError):
        parse_event(dict(processed(), facility_id="ref-1\n"))
    assert not is_identifier("ref-1\n")


@pytest.mark.parametrize("text", ["1_000", "１０", " 5", "5\n", "+5"])
def test_quantity_strings_are_plain_decimal_notation(text: str) -> None:
    obj = processed()
    obj["inputs"][0]["kg"] = text
    with pytest.raises(ValidationError):
        parse_event(obj)


def test_models_are_frozen() -> None:
    ev = parse_event(processed())
    with pytest.raises(ValidationError):
        ev.facility_id = "other"  # type: ignore[misc]


def test_module_exports_every_kind_model() -> None:
    assert set(MODEL_OF_KIND) == set(Kind)
    assert set(Kind) >= events.REGISTRY_KINDS and set(Kind) >= events.TRANSFORM_KINDS
    assert set(events.STAGE_OF_KIND) == set(events.TRANSFORM_KINDS)
