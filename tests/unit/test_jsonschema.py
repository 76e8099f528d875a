"""The committed JSON Schemas are current, and they accept the real events the ledger accepts.

Schemas are checked with `jsonschema` (Draft 2020-12) and with the small validator below, which must agree.
The small one implements exactly the keywords pydantic emits and raises on any other keyword, so a schema
construct it does not understand fails the test instead of being ignored; it also checks `date-time`,
which `jsonschema` leaves unchecked without its optional format packages.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from batteryledger.sample import DemoChain
from schemas.events import Kind, parse_event
from schemas.jsonschema_export import SCHEMA_DIR, export, render, schemas

# Keywords that only annotate; validation ignores them.
ANNOTATIONS = {"title", "description", "default", "$id", "$defs", "discriminator", "examples"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def errors(instance: Any, schema: dict[str, Any], root: dict[str, Any], at: str = "$") -> list[str]:
    """Every way `instance` fails `schema` (draft 2020-12 subset), as "path: reason" strings."""
    unknown = set(schema) - ANNOTATIONS - {
        "$ref", "anyOf", "oneOf", "allOf", "const", "enum", "type", "pattern", "minLength", "maxLength",
        "format", "minimum", "maximum", "minItems", "maxItems", "items", "properties", "required",
        "additionalProperties",
    }  # fmt: skip
    if unknown:
        raise AssertionError(f"validator does not implement {sorted(unknown)} (at {at})")
    out: list[str] = []
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        out += errors(instance, root["$defs"][ref.split("/")[-1]], root, at)
    if "allOf" in schema:
        for sub in schema["allOf"]:
            out += errors(instance, sub, root, at)
    if "anyOf" in schema and not any(not errors(instance, s, root, at) for s in schema["anyOf"]):
        out.append(f"{at}: matches none of anyOf")
    if "oneOf" in schema:
        n = sum(not errors(instance, s, root, at) for s in schema["oneOf"])
        if n != 1:
            out.append(f"{at}: matches {n} of oneOf")
    if "const" in schema and not _same(instance, schema["const"]):
        out.append(f"{at}: is not {schema['const']!r}")
    if "enum" in schema and not any(_same(instance, e) for e in schema["enum"]):
        out.append(f"{at}: not in enum")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(TYPES[t](instance) for t in types):
            out.append(f"{at}: not of type {types}")
            return out
    if isinstance(instance, str):
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            out.append(f"{at}: does not match {schema['pattern']}")
        if len(instance) < schema.get("minLength", 0) or len(instance) > schema.get("maxLength", 1 << 62):
            out.append(f"{at}: length {len(instance)} out of bounds")
        if schema.get("format") == "date-time" and not RFC3339.match(instance):
            out.append(f"{at}: not an RFC 3339 date-time")
    if TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            out.append(f"{at}: below minimum")
        if "maximum" in schema and instance > schema["maximum"]:
            out.append(f"{at}: above maximum")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0) or len(instance) > schema.get("maxItems", 1 << 62):
            out.append(f"{at}: {len(instance)} items out of bounds")
        if "items" in schema:
            for i, item in enumerate(instance):
                out += errors(item, schema["items"], root, f"{at}[{i}]")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in instance:
                out.append(f"{at}: missing {name}")
        for name, value in instance.items():
            if name in props:
                out += errors(value, props[name], root, f"{at}.{name}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{at}: unexpected {name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += errors(value, schema["additionalProperties"], root, f"{at}.{name}")
    return out


FORMATS = jsonschema.FormatChecker()
_VALIDATORS: dict[str, jsonschema.Draft202012Validator] = {}


def validate(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Problems found by the small validator; `jsonschema` must find problems exactly when it does."""
    mine = errors(instance, schema, schema)
    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        jsonschema.Draft202012Validator.check_schema(schema)
        _VALIDATORS[key] = jsonschema.Draft202012Validator(schema, format_checker=FORMATS)
    theirs = [e.message for e in _VALIDATORS[key].iter_errors(instance)]
    comparable = mine
    if "date-time" not in FORMATS.checkers:
        comparable = [m for m in mine if "RFC 3339" not in m]
    assert bool(comparable) == bool(theirs), (mine, theirs)
    return mine


@functools.cache
def committed(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text())
    return schema


def test_committed_schemas_are_valid_draft_2020_12() -> None:
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


# -- staleness -------------------------------------------------------------------------------------
def stale_in(directory: Path) -> list[str]:
    """Schema files in `directory` that differ from what the models render now (or are missing)."""
    return [
        name
        for name, schema in sorted(schemas().items())
        if not (directory / name).is_file() or (directory / name).read_text() != render(schema)
    ]


def test_committed_schemas_are_current() -> None:
    stale = stale_in(SCHEMA_DIR)
    assert not stale, (
        f"schemas/jsonschema/v1 is stale for {', '.join(stale)}: the event models changed. "
        "Run `batteryledger schema export` and commit the result."
    )


def test_the_staleness_check_notices_an_edit_and_a_missing_file(tmp_path: Path) -> None:
    export(tmp_path)
    assert stale_in(tmp_path) == []
    edited = tmp_path / "batch.shipped.json"
    edited.write_text(edited.read_text().replace('"maxLength": 128', '"maxLength": 129', 1))
    (tmp_path / "correction.json").unlink()
    assert stale_in(tmp_path) == ["batch.shipped.json", "correction.json"]


def test_no_leftover_schema_files() -> None:
    on_disk = {p.name for p in SCHEMA_DIR.glob("*.json")}
    leftovers = on_disk - set(schemas())
    assert not leftovers, (
        f"{sorted(leftovers)} in schemas/jsonschema/v1 belong to no event kind; "
        "delete them and run `batteryledger schema export`."
    )


def test_one_schema_per_kind_plus_the_union() -> None:
    assert set(schemas()) == {f"{k.value}.json" for k in Kind} | {"event.json"}


def test_export_writes_what_render_makes(tmp_path: Path) -> None:
    paths = export(tmp_path)
    current = schemas()
    assert {p.name for p in paths} == set(current)
    for p in paths:
        assert p.read_text() == render(current[p.name])
        assert p.read_text().endswith("}\n")


def test_render_is_stable_sorted_json() -> None:
    text = render({"b": 1, "a": {"d": 2, "c": 3}})
    assert text == '{\n  "a": {\n    "c": 3,\n    "d": 2\n  },\n  "b": 1\n}\n'


def test_kind_schemas_describe_the_signature() -> None:
    for kind in Kind:
        schema = committed(f"{kind.value}.json")
        assert schema["$id"] == f"https://batteryledger.org/schemas/v1/{kind.value}.json"
        assert schema["additionalProperties"] is False
        assert schema["properties"]["kind"]["const"] == kind.value
        assert schema["properties"]["sig"]["required"] == ["alg", "key_id", "value"]
        assert {"spec", "kind", "facility_id", "time"} <= set(schema["required"])


# -- the schemas accept what the ledger accepts ----------------------------------------------------
def test_each_kind_schema_validates_the_demo_events(bl_demo: DemoChain) -> None:
    seen: set[str] = set()
    for ev in bl_demo.good_events:
        signed = json.loads(ev.raw)
        assert validate(signed, committed(f"{ev.kind}.json")) == [], ev.label
        unsigned = {k: v for k, v in signed.items() if k != "sig"}
        assert validate(unsigned, committed(f"{ev.kind}.json")) == [], ev.label
        assert validate(unsigned, committed("event.json")) == [], ev.label
        seen.add(ev.kind)
    assert len(seen) >= 10


def test_the_union_schema_does_not_describe_sig(bl_demo: DemoChain) -> None:
    signed = json.loads(bl_demo.chain_events[0].raw)
    assert validate(signed, committed("event.json")) != []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda o: o.update(colour="green"), "unexpected colour"),
        (lambda o: o.pop("facility_id"), "missing facility_id"),
        (lambda o: o.update(spec="batteryledger/2"), "is not 'batteryledger/1'"),
        (lambda o: o.update(facility_id="bad id"), "does not match"),
        (lambda o: o.update(time="2025-01-01 00:00"), "RFC 3339"),
        (lambda o: o["outputs"][0].update(units=True), "units"),
        (lambda o: o["outputs"][0].update(units=-1), "units: matches none of anyOf"),
        (lambda o: o.update(outputs=[]), "items out of bounds"),
        (lambda o: o["sig"].update(alg="Ed448"), "is not 'Ed25519'"),
        (lambda o: o["sig"].update(extra="x"), "unexpected extra"),
    ],
    ids=[
        "extra",
        "required",
        "const",
        "pattern",
        "date-time",
        "bool-int",
        "minimum",
        "min-items",
        "sig-alg",
        "sig-extra",
    ],
)
def test_the_schemas_refuse_broken_events(bl_demo: DemoChain, change: Any, words: str) -> None:
    """The validator above can fail: each broken demo event is refused, with the reason."""
    ev = next(e for e in bl_demo.chain_events if e.kind == "cells.produced")
    obj = copy.deepcopy(json.loads(ev.raw))
    change(obj)
    problems = validate(obj, committed("cells.produced.json"))
    assert any(words in p for p in problems), problems


@pytest.mark.parametrize(
    ("instance", "schema", "problem"),
    [
        (-1, {"type": "integer", "minimum": 0}, "$: below minimum"),
        (11, {"type": "integer", "maximum": 10}, "$: above maximum"),
        ("abc", {"type": "string", "maxLength": 2}, "$: length 3 out of bounds"),
        (1.5, {"type": "integer"}, "$: not of type ['integer']"),
        ("x", {"enum": ["a", "b"]}, "$: not in enum"),
        (True, {"const": 1}, "$: is not 1"),
        ({}, {"$defs": {"A": {"required": ["a"]}}, "$ref": "#/$defs/A"}, "$: missing a"),
    ],
)
def test_the_validator_itself(instance: Any, schema: dict[str, Any], problem: str) -> None:
    assert validate(instance, schema) == [problem]


def test_the_validator_refuses_keywords_it_does_not_implement() -> None:
    with pytest.raises(AssertionError, match="does not implement"):
        validate(1, {"multipleOf": 2})


def test_the_union_schema_refuses_an_unknown_kind(bl_demo: DemoChain) -> None:
    obj = {k: v for k, v in json.loads(bl_demo.chain_events[0].raw).items() if k != "sig"}
    obj["kind"] = "batch.teleported"
    assert validate(obj, committed("event.json")) == ["$: matches 0 of oneOf"]


@pytest.mark.parametrize("kg", [1250.75, "lots", "NaN"])
def test_the_schema_refuses_quantities_the_ledger_refuses(bl_demo: DemoChain, kg: Any) -> None:
    ev = next(e for e in bl_demo.chain_events if e.kind == "batch.shipped")
    obj = {k: v for k, v in json.loads(ev.raw).items() if k != "sig"}
    obj["kg"] = kg
    with pytest.raises(Exception, match="kg"):
        parse_event(obj)  # the ledger refuses it
    assert validate(obj, committed("batch.shipped.json")) != []
