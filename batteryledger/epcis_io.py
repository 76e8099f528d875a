"""EPCIS 2.0 at the edges: the GS1 schema, document and registry files, and the export's store reads.

The mapping itself is pure (schemas/epcis.py); this module does the I/O around it for the CLI
(`batteryledger epcis ...`) and the HTTP API (`GET /v1/batches/{id}/epcis`).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ledger.core import Ledger
from ledger.store import BATCHES, ENTRIES, StoreError, chunks
from schemas.canonical import canonicalize
from schemas.epcis import (
    EntryInfo,
    EpcisError,
    LocationRegistry,
    epcis_document,
    parse_json,
    to_epcis_event,
)
from schemas.events import TRANSFORM_KINDS, Kind

LOCATIONS_ENV = "BATTERYLEDGER_EPCIS_LOCATIONS"
EXPORTED_KINDS = frozenset({*TRANSFORM_KINDS, Kind.BATCH_SHIPPED, Kind.BATCH_RECEIVED})


@cache
def gs1_schema() -> dict[str, Any]:
    text = resources.files("batteryledger").joinpath("gs1/EPCIS-JSON-Schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def gs1_validator() -> Any:
    """Draft-07 validator of the GS1 EPCIS 2.0 JSON Schema, formats checked (uri: RFC 3986, date-time).

    One allowance: a JSON-LD blank node id (``"_:document1"``, as in GS1's own examples) passes as a
    ``uri``; RFC 3986 alone would refuse the standard's examples.
    """
    from jsonschema import Draft7Validator, FormatChecker
    from rfc3986_validator import validate_rfc3986

    checker = FormatChecker()
    for name in ("date-time", "date", "time", "regex"):
        checker.checkers[name] = Draft7Validator.FORMAT_CHECKER.checkers[name]

    def _uri(value: object) -> bool:
        if not isinstance(value, str):
            return True
        return value.startswith("_:") or bool(validate_rfc3986(value, rule="URI"))

    checker.checkers["uri"] = (_uri, ())
    return Draft7Validator(gs1_schema(), format_checker=checker)


def read_document(path: Path) -> Any:
    """An EPCIS document (.json or .jsonld) with exact decimals."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EpcisError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse_json(data)
    except EpcisError as exc:
        raise EpcisError(f"{path}: {exc.message}") from None


def read_registry(path: Path | None) -> LocationRegistry:
    """The operator's location registry: --locations FILE, else $BATTERYLEDGER_EPCIS_LOCATIONS, else empty."""
    if path is None:
        env = os.environ.get(LOCATIONS_ENV)
        if not env:
            return LocationRegistry()
        path = Path(env)
    try:
        obj = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise EpcisError(f"cannot read the location registry {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EpcisError(f"the location registry {path} is not JSON: {exc}") from None
    try:
        return LocationRegistry.from_json(obj)
    except EpcisError as exc:
        raise EpcisError(f"{path}: {exc.message}") from None


def proof_url(seq: int, base_url: str = "") -> str:
    return f"{base_url.rstrip('/')}/v1/proofs/inclusion?seq={seq}"


def lineage_event_ids(led: Ledger, batch_id: str, *, direction: str, depth: int) -> list[tuple[int, bytes]]:
    """(seq, signed bytes) of the lineage's events, in ledger order.

    The batch and every batch within `depth` hops up or down: the event that made each, the shipments
    and receipts of each, and the corrections of any of these events.
    """
    rows = led.lineage(batch_id, direction=direction, depth=depth)  # raises StoreError if unknown
    batch_ids = {batch_id} | {r["parent"] for r in rows} | {r["child"] for r in rows}
    event_ids: set[str] = set()
    out: dict[int, bytes] = {}
    with led.engine.connect() as conn:
        for part in chunks(sorted(batch_ids)):
            for b in conn.execute(select(BATCHES.c.event_id).where(BATCHES.c.batch_id.in_(part))):
                event_ids.add(b.event_id)
        custody = conn.execute(
            select(ENTRIES.c.seq, ENTRIES.c.event_id, ENTRIES.c.data).where(
                ENTRIES.c.kind.in_([Kind.BATCH_SHIPPED.value, Kind.BATCH_RECEIVED.value])
            )
        )
        for c in custody:
            data = bytes(c.data)
            if json.loads(data).get("batch_id") in batch_ids:
                out[int(c.seq)] = data
                event_ids.add(c.event_id)
        for seq, data in led.entry_data(event_ids).values():
            out[seq] = data
        corrections = conn.execute(
            select(ENTRIES.c.seq, ENTRIES.c.data).where(ENTRIES.c.kind == Kind.CORRECTION.value)
        )
        for k in corrections:
            if json.loads(bytes(k.data)).get("corrects") in event_ids:
                out[int(k.seq)] = bytes(k.data)
    return sorted(out.items())


def export_lineage(
    led: Ledger,
    batch_id: str,
    *,
    direction: str = "up",
    depth: int = 50,
    registry: LocationRegistry | None = None,
    base_url: str = "",
) -> dict[str, Any]:
    """An EPCISDocument of the lineage's events, each carrying its ledger entry, event id and proof link."""
    reg = registry or LocationRegistry()
    entries = lineage_event_ids(led, batch_id, direction=direction, depth=depth)
    by_id: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    for seq, data in entries:
        obj = json.loads(data)
        unsigned = {k: v for k, v in obj.items() if k != "sig"}
        event_id = hashlib.sha256(canonicalize(unsigned)).hexdigest()
        by_id[event_id] = obj
        if Kind(obj["kind"]) not in EXPORTED_KINDS and obj["kind"] != Kind.CORRECTION.value:
            continue
        info = EntryInfo(seq, event_id, proof_url(seq, base_url))
        corrected = by_id.get(obj["corrects"]) if obj["kind"] == Kind.CORRECTION.value else None
        if obj["kind"] == Kind.CORRECTION.value and corrected is None:
            continue
        events.append(to_epcis_event(obj, reg, info, corrected=corrected))
    return epcis_document(
        events,
        created=datetime.now(UTC),
        extra={
            "bl:batch_id": batch_id,
            "bl:direction": direction,
            "bl:depth": depth,
            "bl:origin": led.origin,
        },
    )


__all__ = [
    "LOCATIONS_ENV",
    "StoreError",
    "export_lineage",
    "gs1_schema",
    "gs1_validator",
    "lineage_event_ids",
    "read_document",
    "read_registry",
]
