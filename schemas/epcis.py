"""EPCIS 2.0 mapping profile: GS1 EPCIS documents in, ledger events out, and back.

Pure: no files, no network, no Kafka. The field-by-field table is in docs/epcis.md; this module is its
code. In: :func:`map_document` turns the events of an EPCISDocument (already parsed with
:func:`parse_json`, so every number is an exact Decimal) into unsigned ledger events, or names, for
each bad event, its index in the event list and the field at fault. Out: :func:`to_epcis_event` turns a
ledger event back into an EPCIS event; :func:`epcis_document` wraps a list of them.

Identities. A batch is an EPCIS class (``urn:epc:class:lgtin:...``, a GS1 Digital Link with a lot, any
URI that is a valid ledger id) or a serialised EPC; ``urn:batteryledger:batch:X`` is ledger batch ``X``.
A location (readPoint / bizLocation / source / destination) is a facility through the operator's
:class:`LocationRegistry`; ``urn:batteryledger:facility:X`` is facility ``X`` without one. The EPCIS
eventID is kept in the ledger event's ``note`` (``epcis:eventID=...``): it is part of the signed
bytes, so two EPCIS events never collapse into one, and a re-published document maps to the same bytes
and the same ledger event ids (a no-op).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.canonical import canonicalize
from schemas.events import (
    MAX_DECIMAL_PLACES,
    MAX_TEXT_LEN,
    SPEC,
    Kind,
    is_identifier,
    parse_event,
)

# -- names --------------------------------------------------------------------------------------------

NS = "https://ns.batteryledger.org/epcis/"
"""Our JSON-LD namespace: extension fields and bizStep values (declare it in @context, prefix ``bl``)."""
PREFIX = "bl"
BIZSTEP_NS = NS + "bizstep/"
BATCH_URN = "urn:batteryledger:batch:"
FACILITY_URN = "urn:batteryledger:facility:"
EVENT_URN = "urn:batteryledger:event:"
EPC_INSTANCE = "urn:epc:id:"
NOTE_EVENT_ID = "epcis:eventID="
NOTE_ERROR_DECLARATION = "epcis:errorDeclaration="
GS1_CONTEXT = "https://ref.gs1.org/standards/epcis/epcis-context.jsonld"
CBV_BIZSTEP_PREFIXES = ("https://ref.gs1.org/cbv/BizStep-", "urn:epcglobal:cbv:bizstep:")

#: uom (UN/ECE Recommendation 20 codes) -> kg per unit. Exact decimals.
MASS_UNITS: dict[str, Decimal] = {"KGM": Decimal(1), "TNE": Decimal(1000), "GRM": Decimal("0.001")}
#: Counting units: a quantity of pieces is not a mass.
PIECE_UNITS = frozenset({"H87", "EA", "C62", "PCE", "NAR", "NPL", "SET", "PR"})

#: Our bizSteps (``bl:<name>`` or the full IRI) -> (kind, batch.processed `process` or None).
BIZSTEPS: dict[str, tuple[Kind, str | None]] = {
    "extracting": (Kind.BATCH_EXTRACTED, None),
    "refining": (Kind.BATCH_PROCESSED, "refining"),
    "converting": (Kind.BATCH_PROCESSED, "conversion"),
    "purifying": (Kind.BATCH_PROCESSED, "purification"),
    "precursor_making": (Kind.BATCH_PROCESSED, "precursor"),
    "material_producing": (Kind.MATERIAL_PRODUCED, None),
    "cell_producing": (Kind.CELLS_PRODUCED, None),
    "module_assembling": (Kind.MODULES_ASSEMBLED, None),
    "pack_assembling": (Kind.PACKS_ASSEMBLED, None),
    "recycling": (Kind.BATCH_RECYCLED, None),
}
BIZSTEP_OF: dict[tuple[Kind, str | None], str] = {v: k for k, v in BIZSTEPS.items()}
#: CBV bizSteps a TransformationEvent may carry: the kind is the one the location is registered for.
GENERIC_TRANSFORM_STEPS = frozenset({"commissioning", "creating_class_instance", "assembling", "other"})

#: Output (lot) fields carried in ilmd ``bl:lots`` under the lot's EPCIS identifier.
LOT_DECIMALS = (
    "value_usd",
    "production_cost_usd",
    "direct_material_cost_usd",
    "pfe_material_cost_usd",
    "purity_pct",
    "kwh",
    "max_discharge_kw",
    "volume_l",
)
ELEMENT_KEYS = ("li", "ni", "co", "mn", "graphite")
#: Our fields the exporter adds so an export can be checked against the ledger; ignored on import.
EXPORT_ONLY = frozenset({"event_id", "entry", "inclusion_proof", "facility_id", "kind"})
KNOWN_EVENT_EXTENSIONS = frozenset(
    {"value_usd", "from_country", "to_country", "site", "feed_consumer", "external_feed", "epc_kg", "process"}
)


# -- errors -------------------------------------------------------------------------------------------


class EpcisError(ValueError):
    """Bad EPCIS input: names the event (index in the event list) and the field at fault."""

    def __init__(self, message: str, *, index: int | None = None, field: str = "") -> None:
        super().__init__(message)
        self.index = index
        self.field = field
        self.message = message

    def diagnostics(self) -> str:
        where = "document" if self.index is None else f"event {self.index}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def __str__(self) -> str:
        return self.diagnostics()


class SchemaError(Protocol):
    """What the mapper needs of a JSON Schema validation error (jsonschema's ValidationError)."""

    message: str

    @property
    def absolute_path(self) -> Sequence[str | int]: ...


class SchemaValidator(Protocol):
    def iter_errors(self, instance: Any) -> Iterable[SchemaError]: ...


# -- parsing ------------------------------------------------------------------------------------------


def parse_json(text: str | bytes) -> Any:
    """JSON with every number as an exact Decimal (EPCIS quantities are JSON numbers) and no duplicate keys."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise EpcisError(f"duplicate key {k!r}: a JSON object may name a field only once")
            out[k] = v
        return out

    if isinstance(text, bytes):
        if text.startswith(b"\xef\xbb\xbf"):
            text = text[3:]
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EpcisError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_float=Decimal, parse_int=Decimal, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise EpcisError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def event_list(doc: Any) -> list[Any]:
    """The events of an EPCISDocument or EPCISQueryDocument."""
    if not isinstance(doc, dict):
        raise EpcisError("not a JSON object: give an EPCISDocument")
    kind = doc.get("type")
    if kind == "EPCISDocument":
        body = doc.get("epcisBody")
        events = body.get("eventList") if isinstance(body, dict) else None
    elif kind == "EPCISQueryDocument":
        body = doc.get("epcisBody")
        results = body.get("queryResults") if isinstance(body, dict) else None
        rb = results.get("resultsBody") if isinstance(results, dict) else None
        events = rb.get("eventList") if isinstance(rb, dict) else None
    else:
        raise EpcisError(f"type is {kind!r}: give an EPCISDocument (or an EPCISQueryDocument)", field="type")
    if not isinstance(events, list):
        raise EpcisError("no event list", field="epcisBody.eventList")
    return events


def _path_text(path: Sequence[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_violations(doc: Any, validator: SchemaValidator) -> tuple[list[EpcisError], dict[int, EpcisError]]:
    """GS1 JSON Schema errors: (document-level errors, first error of each bad event by index)."""
    doc_errors: list[EpcisError] = []
    by_event: dict[int, EpcisError] = {}
    events_path = (
        ("epcisBody", "queryResults", "resultsBody", "eventList")
        if isinstance(doc, dict) and doc.get("type") == "EPCISQueryDocument"
        else ("epcisBody", "eventList")
    )
    n = len(events_path)
    errors = sorted(validator.iter_errors(doc), key=lambda e: -len(list(e.absolute_path)))
    for err in errors:
        path = list(err.absolute_path)
        if len(path) > n and tuple(path[:n]) == events_path and isinstance(path[n], int):
            idx = int(path[n])
            if idx not in by_event:
                by_event[idx] = EpcisError(
                    f"fails the GS1 EPCIS 2.0 JSON Schema: {_short(err.message)}",
                    index=idx,
                    field=_path_text(path[n + 1 :]) or "(event)",
                )
        elif not doc_errors:
            doc_errors.append(
                EpcisError(
                    f"fails the GS1 EPCIS 2.0 JSON Schema: {_short(err.message)}",
                    field=_path_text(path) or "(document)",
                )
            )
    return doc_errors, by_event


def _short(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


# -- the operator's location registry -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Location:
    facility_id: str
    country: str | None = None
    kind: Kind | None = None  # what a generic TransformationEvent here makes; batch.extracted = a mine


@dataclass
class LocationRegistry:
    """EPCIS location (SGLN URN, GS1 Digital Link, any URI) -> facility: maintained by the operator."""

    locations: dict[str, Location] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any) -> LocationRegistry:
        """``{"<location uri>": "facility-id" | {"facility": ..., "country": "US", "kind": "..."}}``."""
        if not isinstance(obj, dict):
            raise EpcisError('the location registry is a JSON object {"<location uri>": "<facility id>"}')
        out: dict[str, Location] = {}
        for uri, v in obj.items():
            if uri.startswith("$") or uri.startswith("_"):
                continue  # "$comment" and the like
            if isinstance(v, str):
                v = {"facility": v}
            if not isinstance(v, dict) or not isinstance(v.get("facility"), str):
                raise EpcisError(f"location {uri!r}: give a facility id or an object with 'facility'")
            if not is_identifier(v["facility"]):
                raise EpcisError(f"location {uri!r}: {v['facility']!r} is not a facility id")
            extra = set(v) - {"facility", "country", "kind", "name"}
            if extra:
                raise EpcisError(
                    f"location {uri!r}: unknown key(s) {sorted(extra)}; use facility, country, kind"
                )
            country = v.get("country")
            if country is not None and not (isinstance(country, str) and re.fullmatch(r"[A-Z]{2}", country)):
                raise EpcisError(f"location {uri!r}: country {country!r} is not ISO 3166-1 alpha-2 (e.g. US)")
            kind = v.get("kind")
            try:
                k = Kind(kind) if kind is not None else None
            except ValueError:
                raise EpcisError(f"location {uri!r}: kind {kind!r} is not an event kind") from None
            out[uri] = Location(v["facility"], country, k)
        return cls(out)

    def lookup(self, uri: str) -> Location | None:
        loc = self.locations.get(uri)
        if loc is not None:
            return loc
        if uri.startswith(FACILITY_URN) and is_identifier(uri[len(FACILITY_URN) :]):
            return Location(uri[len(FACILITY_URN) :])
        return None

    def uri_of(self, facility_id: str) -> str:
        """The facility's location URI: the first registry entry naming it, else our URN."""
        for uri, loc in self.locations.items():
            if loc.facility_id == facility_id:
                return uri
        return FACILITY_URN + facility_id

    def country_of(self, facility_id: str) -> str | None:
        for loc in self.locations.values():
            if loc.facility_id == facility_id and loc.country:
                return loc.country
        return None


# -- in: EPCIS -> ledger events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MappedEvent:
    index: int  # position in the document's event list
    epcis_event_id: str | None
    event: dict[str, Any]  # unsigned ledger event (validated by schemas.events)

    @property
    def event_id(self) -> str:
        return unsigned_event_id(self.event)


@dataclass
class DocumentMapping:
    mapped: list[MappedEvent] = field(default_factory=list)
    errors: list[EpcisError] = field(default_factory=list)


def unsigned_event_id(obj: dict[str, Any]) -> str:
    """The ledger event id of an unsigned event: SHA-256 of its canonical bytes."""
    return hashlib.sha256(canonicalize(obj)).hexdigest()


def map_document(
    doc: Any,
    registry: LocationRegistry,
    *,
    facility_id: str | None = None,
    validator: SchemaValidator | None = None,
) -> DocumentMapping:
    """Map every event; bad ones become errors naming their index and field (the rest still map).

    Document-level problems (not an EPCISDocument, schema errors outside the event list) raise.
    `facility_id`: the signer; an event at another facility's location is an error.
    """
    events = event_list(doc)
    by_event: dict[int, EpcisError] = {}
    if validator is not None:
        doc_errors, by_event = schema_violations(doc, validator)
        if doc_errors:
            raise doc_errors[0]
    prefixes = _prefixes(doc.get("@context"))
    result = DocumentMapping()
    for i, ev in enumerate(events):
        if i in by_event:
            result.errors.append(by_event[i])
            continue
        try:
            result.mapped.append(map_event(ev, i, registry, facility_id=facility_id, prefixes=prefixes))
        except EpcisError as exc:
            result.errors.append(exc)
    return result


def _prefixes(context: Any) -> dict[str, str]:
    """JSON-LD prefixes declared in @context (objects in it): prefix -> IRI."""
    out: dict[str, str] = {}
    items = context if isinstance(context, list) else [context]
    for item in items:
        if isinstance(item, dict):
            for k, v in item.items():
                if isinstance(v, str) and not k.startswith("@"):
                    out[k] = v
    return out


def _expand(term: str, prefixes: Mapping[str, str]) -> str:
    head, sep, rest = term.partition(":")
    if sep and head in prefixes and not rest.startswith("//"):
        return prefixes[head] + rest
    return term


def _ours(obj: Mapping[str, Any], prefixes: Mapping[str, str], index: int, where: str) -> dict[str, Any]:
    """Fields of `obj` in our namespace, by local name."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        iri = _expand(k, prefixes)
        if iri.startswith(NS):
            out[iri[len(NS) :]] = v
        elif k.startswith(PREFIX + ":") and PREFIX not in prefixes:
            raise EpcisError(
                f'prefix "{PREFIX}" is not declared: add {{"{PREFIX}": "{NS}"}} to the document\'s @context',
                index=index,
                field=f"{where}{k}",
            )
    return out


def map_event(
    ev: Any,
    index: int,
    registry: LocationRegistry,
    *,
    facility_id: str | None = None,
    prefixes: Mapping[str, str] | None = None,
) -> MappedEvent:
    """One EPCIS event -> one unsigned ledger event (raises EpcisError naming the field)."""
    px = dict(prefixes or {})
    if not isinstance(ev, dict):
        raise EpcisError("not a JSON object", index=index)
    if isinstance(ev.get("@context"), list | dict):
        px.update(_prefixes(ev["@context"]))
    declaration = ev.get("errorDeclaration")
    if declaration is not None:
        return _map_error_declaration(ev, index, registry, facility_id, px)
    etype = ev.get("type")
    ext = _ours(ev, px, index, "")
    for k in ext:
        if k not in KNOWN_EVENT_EXTENSIONS and k not in EXPORT_ONLY:
            raise EpcisError(
                f"unknown extension field in our namespace; known: {sorted(KNOWN_EVENT_EXTENSIONS)}",
                index=index,
                field=f"{PREFIX}:{k}",
            )
    loc_field, loc_uri = _location_uri(ev, index)
    loc = registry.lookup(loc_uri)
    if loc is None:
        raise EpcisError(
            f"unknown location {loc_uri}: add it to the location registry (--locations FILE)",
            index=index,
            field=loc_field,
        )
    if facility_id is not None and loc.facility_id != facility_id:
        raise EpcisError(
            f"location {loc_uri} is facility {loc.facility_id!r}, not {facility_id!r} (the signer): "
            "publish it with that facility's key",
            index=index,
            field=loc_field,
        )
    eid = ev.get("eventID")
    obj: dict[str, Any] = {
        "spec": SPEC,
        "kind": "",
        "facility_id": loc.facility_id,
        "time": _time(ev.get("eventTime"), index, "eventTime"),
    }
    if eid is not None:
        note = NOTE_EVENT_ID + str(eid)
        if len(note) > MAX_TEXT_LEN:
            raise EpcisError(
                f"longer than {MAX_TEXT_LEN - len(NOTE_EVENT_ID)} characters", index=index, field="eventID"
            )
        obj["note"] = note
    step = _bizstep(ev.get("bizStep"), px)
    if etype == "TransformationEvent":
        _map_transformation(ev, index, obj, step, loc, loc_uri, ext, px)
    elif etype == "ObjectEvent":
        _map_object(ev, index, obj, step, loc, loc_uri, ext, registry, px)
    else:
        raise EpcisError(
            f"{etype} is not mapped by the profile: use ObjectEvent or TransformationEvent",
            index=index,
            field="type",
        )
    _check(obj, index)
    return MappedEvent(index, None if eid is None else str(eid), obj)


def _check(obj: dict[str, Any], index: int) -> None:
    try:
        parse_event(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"][1:]) or "(event)"
        raise EpcisError(
            f"the mapped {obj.get('kind')} event is invalid at {loc}: {err['msg']}",
            index=index,
            field="(mapped)",
        ) from None


def _location_uri(ev: dict[str, Any], index: int) -> tuple[str, str]:
    for name in ("bizLocation", "readPoint"):
        v = ev.get(name)
        if isinstance(v, dict) and isinstance(v.get("id"), str):
            return f"{name}.id", v["id"]
    raise EpcisError(
        "missing: the profile needs bizLocation (or readPoint) to name the facility",
        index=index,
        field="bizLocation",
    )


def _time(value: Any, index: int, where: str) -> str:
    if not isinstance(value, str):
        raise EpcisError("missing: an RFC 3339 time with a zone", index=index, field=where)
    try:
        t = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise EpcisError(f"{value!r} is not an RFC 3339 time", index=index, field=where) from None
    if t.tzinfo is None:
        raise EpcisError(f"{value!r} has no zone (add Z or an offset)", index=index, field=where)
    return format_time(t)


def format_time(t: datetime) -> str:
    t = t.astimezone(UTC)
    if t.microsecond:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0") + "Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bizstep(value: Any, px: Mapping[str, str]) -> str | None:
    """Bare CBV name ('shipping') or 'bl:<name>' for ours; None when absent."""
    if not isinstance(value, str):
        return None
    iri = _expand(value, px)
    if iri.startswith(BIZSTEP_NS):
        return PREFIX + ":" + iri[len(BIZSTEP_NS) :]
    if iri.startswith(NS):
        return PREFIX + ":" + iri[len(NS) :]
    for p in CBV_BIZSTEP_PREFIXES:
        if iri.startswith(p):
            return iri[len(p) :]
    return value


def batch_id_of(uri: Any, index: int, where: str) -> str:
    if not isinstance(uri, str):
        raise EpcisError("missing identifier", index=index, field=where)
    if uri.startswith(BATCH_URN):
        bid = uri[len(BATCH_URN) :]
    elif uri.startswith("urn:epc:idpat:"):
        raise EpcisError(
            f"{uri} is a pattern, not a lot: use a lot-level class (urn:epc:class:lgtin:...) or an EPC",
            index=index,
            field=where,
        )
    else:
        bid = uri
    if not is_identifier(bid):
        raise EpcisError(
            f"{uri} cannot be a ledger batch id (up to 128 characters of A-Z a-z 0-9 . _ : / -)",
            index=index,
            field=where,
        )
    return bid


def batch_uri(batch_id: str) -> str:
    """EPCIS identifier of a ledger batch: URIs as they are, our plain ids under urn:batteryledger:batch:."""
    if re.match(r"^(urn:|https?://)", batch_id):
        return batch_id
    return BATCH_URN + batch_id


def _decimal_text(d: Decimal) -> str:
    if d == 0:
        return "0"
    text = format(d.normalize(), "f")
    return text


def _exact(value: Any, index: int, where: str) -> Decimal:
    if isinstance(value, bool):
        raise EpcisError("a boolean is not a number", index=index, field=where)
    if isinstance(value, Decimal | int):
        d = Decimal(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value) if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value) else Decimal("NaN")
        except InvalidOperation:
            d = Decimal("NaN")
        if d.is_nan():
            raise EpcisError(f'{value!r} is not a plain decimal such as "1250.750"', index=index, field=where)
    elif isinstance(value, float):
        d = Decimal(repr(value))
    else:
        raise EpcisError(f"expected a number, got {type(value).__name__}", index=index, field=where)
    if not d.is_finite() or d < 0:
        raise EpcisError(f"{value} must be a finite, non-negative number", index=index, field=where)
    return d


def _dec(value: Any, index: int, where: str) -> str:
    d = _exact(value, index, where)
    text = _decimal_text(d)
    if "." in text and len(text.split(".")[1]) > MAX_DECIMAL_PLACES:
        raise EpcisError(
            f"{value} has more than {MAX_DECIMAL_PLACES} decimal places", index=index, field=where
        )
    return text


def kg_of(q: Mapping[str, Any], index: int, where: str) -> str:
    """A quantity element -> exact kg decimal string; refuses counts and non-mass units."""
    if "quantity" not in q:
        raise EpcisError(
            f"no quantity for {q.get('epcClass')}: the profile needs its mass",
            index=index,
            field=f"{where}.quantity",
        )
    uom = q.get("uom")
    if uom is None:
        raise EpcisError(
            f"quantity {q['quantity']} of {q.get('epcClass')} has no unit: give uom KGM, TNE or GRM "
            "(without uom EPCIS counts pieces)",
            index=index,
            field=f"{where}.uom",
        )
    if uom in PIECE_UNITS:
        raise EpcisError(
            f"uom {uom} counts pieces, not mass: give the lot's mass in KGM, TNE or GRM",
            index=index,
            field=f"{where}.uom",
        )
    factor = MASS_UNITS.get(uom)
    if factor is None:
        raise EpcisError(
            f"uom {uom} is not a mass unit the profile converts: use KGM, TNE or GRM",
            index=index,
            field=f"{where}.uom",
        )
    d = _exact(q["quantity"], index, f"{where}.quantity") * factor
    return _dec(d, index, f"{where}.quantity")


def _lines(
    ev: dict[str, Any], index: int, qlist: str, elist: str, epc_kg: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """(EPCIS identifier, batch id, kg) of each quantity line and EPC of one side of an event."""
    out: list[tuple[str, str, str]] = []
    for j, q in enumerate(ev.get(qlist) or []):
        where = f"{qlist}[{j}]"
        uri = q.get("epcClass")
        out.append((uri, batch_id_of(uri, index, f"{where}.epcClass"), kg_of(q, index, where)))
    for j, epc in enumerate(ev.get(elist) or []):
        where = f"{elist}[{j}]"
        bid = batch_id_of(epc, index, where)
        if epc not in epc_kg:
            raise EpcisError(
                f"no mass for {epc}: an EPC carries none; give it in {PREFIX}:epc_kg (kg) or use a quantity list",
                index=index,
                field=where,
            )
        out.append((epc, bid, _dec(epc_kg[epc], index, f"{PREFIX}:epc_kg[{epc}]")))
    return out


def _lot_fields(uri: str, bid: str, kg: str, lots: Mapping[str, Any], index: int) -> dict[str, Any]:
    where = f"ilmd.{PREFIX}:lots[{uri}]"
    lot = lots.get(uri)
    if not isinstance(lot, dict):
        raise EpcisError(
            f"no lot master data for output {uri}: the profile needs at least its material",
            index=index,
            field=where,
        )
    extra = set(lot) - {"material", "contained_kg", "units", *LOT_DECIMALS}
    if extra:
        raise EpcisError(f"unknown field(s) {sorted(extra)}", index=index, field=where)
    if not isinstance(lot.get("material"), str):
        raise EpcisError(
            "missing: the output's material (e.g. lithium_hydroxide)", index=index, field=f"{where}.material"
        )
    o: dict[str, Any] = {"batch_id": bid, "material": lot["material"], "kg": kg}
    contained = lot.get("contained_kg")
    if contained is not None:
        if not isinstance(contained, dict) or set(contained) - set(ELEMENT_KEYS):
            raise EpcisError(
                f"an object with keys among {list(ELEMENT_KEYS)}", index=index, field=f"{where}.contained_kg"
            )
        o["contained_kg"] = {
            k: _dec(contained[k], index, f"{where}.contained_kg.{k}") for k in ELEMENT_KEYS if k in contained
        }
    for name in LOT_DECIMALS:
        if name in lot:
            o[name] = _dec(lot[name], index, f"{where}.{name}")
    if "units" in lot:
        u = lot["units"]
        if isinstance(u, bool) or not isinstance(u, Decimal | int) or Decimal(u) != int(u):
            raise EpcisError(f"{u} is not a whole number of units", index=index, field=f"{where}.units")
        o["units"] = int(u)
    return o


def _map_transformation(
    ev: dict[str, Any],
    index: int,
    obj: dict[str, Any],
    step: str | None,
    loc: Location,
    loc_uri: str,
    ext: dict[str, Any],
    px: Mapping[str, str],
) -> None:
    process: str | None = None
    if step is not None and step.startswith(PREFIX + ":") and step[len(PREFIX) + 1 :] in BIZSTEPS:
        kind, process = BIZSTEPS[step[len(PREFIX) + 1 :]]
    elif step is None or step in GENERIC_TRANSFORM_STEPS:
        if loc.kind is None or loc.kind not in BIZSTEP_OF_KIND:
            raise EpcisError(
                f"bizStep {step or '(none)'} does not say what is made: use one of ours "
                f"({', '.join(PREFIX + ':' + s for s in BIZSTEPS)}) or register a transformation kind "
                f"for location {loc_uri}",
                index=index,
                field="bizStep",
            )
        kind = loc.kind
    else:
        raise EpcisError(
            f"unmapped bizStep {step} for a TransformationEvent: use one of "
            f"{', '.join(PREFIX + ':' + s for s in BIZSTEPS)} (or a generic CBV step at a registered location)",
            index=index,
            field="bizStep",
        )
    if kind == Kind.BATCH_PROCESSED and "process" in ext:
        process = str(ext["process"])
    obj["kind"] = kind.value
    epc_kg = ext.get("epc_kg") or {}
    if not isinstance(epc_kg, dict):
        raise EpcisError("an object {EPC: kg}", index=index, field=f"{PREFIX}:epc_kg")
    ilmd = _ours(ev.get("ilmd") or {}, px, index, "ilmd.")
    lots = ilmd.get("lots") or {}
    if not isinstance(lots, dict):
        raise EpcisError(
            "an object {lot identifier: {material, kg fields}}", index=index, field=f"ilmd.{PREFIX}:lots"
        )
    inputs = _lines(ev, index, "inputQuantityList", "inputEPCList", epc_kg)
    outputs = _lines(ev, index, "outputQuantityList", "outputEPCList", epc_kg)
    if not outputs:
        raise EpcisError(
            "a transformation must make at least one output lot", index=index, field="outputQuantityList"
        )
    if inputs:
        obj["inputs"] = [{"batch_id": b, "kg": kg} for _, b, kg in inputs]
    obj["outputs"] = [_lot_fields(uri, b, kg, lots, index) for uri, b, kg in outputs]
    if kind == Kind.BATCH_PROCESSED and process is not None and process != "refining":
        obj["process"] = process
    if kind == Kind.BATCH_EXTRACTED and "site" in ext:
        obj["site"] = ext["site"]
    if kind == Kind.BATCH_RECYCLED:
        if "feed_consumer" in ext:
            obj["feed_consumer"] = ext["feed_consumer"]
        if "external_feed" in ext:
            obj["external_feed"] = _external_feed(ext["external_feed"], index)


BIZSTEP_OF_KIND = frozenset(k for k, _ in BIZSTEPS.values())


def _external_feed(value: Any, index: int) -> list[dict[str, Any]]:
    where = f"{PREFIX}:external_feed"
    if not isinstance(value, list):
        raise EpcisError(
            "a list of feeds {description, consumer, kg, contained_kg, origin_country}",
            index=index,
            field=where,
        )
    out = []
    for j, f in enumerate(value):
        if not isinstance(f, dict):
            raise EpcisError("an object", index=index, field=f"{where}[{j}]")
        g = dict(f)
        if "kg" in g:
            g["kg"] = _dec(g["kg"], index, f"{where}[{j}].kg")
        if isinstance(g.get("contained_kg"), dict):
            g["contained_kg"] = {
                k: _dec(v, index, f"{where}[{j}].contained_kg.{k}") for k, v in g["contained_kg"].items()
            }
        out.append(g)
    return out


def _party(items: Any, key: str, index: int, where: str, registry: LocationRegistry) -> tuple[str, Location]:
    """The facility of a sourceList / destinationList: type location first, then possessing, owning party."""
    if not isinstance(items, list) or not items:
        raise EpcisError(
            f"missing: the profile needs a {key} of type location that the registry maps to a facility",
            index=index,
            field=where,
        )
    order = {"location": 0, "possessing_party": 1, "owning_party": 2}
    ranked = sorted(
        ((order.get(str(s.get("type")), 9), j, s) for j, s in enumerate(items) if isinstance(s, dict)),
        key=lambda t: (t[0], t[1]),
    )
    for _, j, s in ranked:
        uri = s.get(key)
        loc = registry.lookup(uri) if isinstance(uri, str) else None
        if loc is not None:
            return f"{where}[{j}].{key}", loc
    first = ranked[0]
    raise EpcisError(
        f"unknown location {first[2].get(key)}: add it to the location registry (--locations FILE)",
        index=index,
        field=f"{where}[{first[1]}].{key}",
    )


def _map_object(
    ev: dict[str, Any],
    index: int,
    obj: dict[str, Any],
    step: str | None,
    loc: Location,
    loc_uri: str,
    ext: dict[str, Any],
    registry: LocationRegistry,
    px: Mapping[str, str],
) -> None:
    epc_kg = ext.get("epc_kg") or {}
    if step == "commissioning":
        if loc.kind != Kind.BATCH_EXTRACTED:
            raise EpcisError(
                f"a commissioning ObjectEvent maps to batch.extracted only at a mine: location {loc_uri} is "
                'not registered with "kind": "batch.extracted"',
                index=index,
                field="bizStep",
            )
        if ev.get("action") != "ADD":
            raise EpcisError("commissioning at a mine is action ADD", index=index, field="action")
        ilmd = _ours(ev.get("ilmd") or {}, px, index, "ilmd.")
        lots = ilmd.get("lots") or {}
        outputs = _lines(ev, index, "quantityList", "epcList", epc_kg)
        if not outputs:
            raise EpcisError("nothing commissioned", index=index, field="quantityList")
        obj["kind"] = Kind.BATCH_EXTRACTED.value
        obj["outputs"] = [_lot_fields(uri, b, kg, lots, index) for uri, b, kg in outputs]
        if "site" in ext:
            obj["site"] = ext["site"]
        return
    if step not in ("shipping", "receiving"):
        raise EpcisError(
            f"unmapped bizStep {step or '(none)'} for an ObjectEvent: the profile maps shipping, receiving "
            "and commissioning (at a mine)",
            index=index,
            field="bizStep",
        )
    lines = _lines(ev, index, "quantityList", "epcList", epc_kg)
    if len(lines) != 1:
        raise EpcisError(
            f"{len(lines)} lots: the profile maps one lot per {step} event (one ledger event each); split it",
            index=index,
            field="quantityList",
        )
    _, bid, kg = lines[0]
    if step == "shipping":
        where, dest = _party(ev.get("destinationList"), "destination", index, "destinationList", registry)
        if dest.facility_id == loc.facility_id:
            raise EpcisError("the destination is the shipping facility itself", index=index, field=where)
        obj["kind"] = Kind.BATCH_SHIPPED.value
        obj.update(batch_id=bid, kg=kg, to_facility_id=dest.facility_id)
        from_c = ext.get("from_country") or loc.country
        to_c = ext.get("to_country") or dest.country
        if from_c:
            obj["from_country"] = from_c
        if to_c:
            obj["to_country"] = to_c
        if "value_usd" in ext:
            obj["value_usd"] = _dec(ext["value_usd"], index, f"{PREFIX}:value_usd")
    else:
        _, src = _party(ev.get("sourceList"), "source", index, "sourceList", registry)
        obj["kind"] = Kind.BATCH_RECEIVED.value
        obj.update(batch_id=bid, kg=kg, from_facility_id=src.facility_id)


def _map_error_declaration(
    ev: dict[str, Any],
    index: int,
    registry: LocationRegistry,
    facility_id: str | None,
    px: Mapping[str, str],
) -> MappedEvent:
    """errorDeclaration -> correction of the event the same EPCIS event (without it) maps to."""
    decl = ev["errorDeclaration"]
    original = {k: v for k, v in ev.items() if k != "errorDeclaration"}
    target = map_event(original, index, registry, facility_id=facility_id, prefixes=px)
    reason = decl.get("reason") if isinstance(decl, dict) else None
    ours = _ours(decl, px, index, "errorDeclaration.") if isinstance(decl, dict) else {}
    explanation = ours.get("explanation")
    if not isinstance(explanation, str) or not explanation:
        ids = decl.get("correctiveEventIDs") or []
        explanation = "EPCIS errorDeclaration" + (
            f"; corrective events: {', '.join(map(str, ids))}" if ids else ""
        )
    obj: dict[str, Any] = {
        "spec": SPEC,
        "kind": Kind.CORRECTION.value,
        "facility_id": target.event["facility_id"],
        "time": _time(decl.get("declarationTime"), index, "errorDeclaration.declarationTime"),
        "corrects": target.event_id,
        "reason": reason if reason in ("did_not_occur", "incorrect_data") else "other",
        "explanation": explanation[:MAX_TEXT_LEN],
    }
    eid = ev.get("eventID")
    if eid is not None:
        obj["note"] = (NOTE_ERROR_DECLARATION + str(eid))[:MAX_TEXT_LEN]
    _check(obj, index)
    return MappedEvent(index, None if eid is None else str(eid), obj)


# -- out: ledger events -> EPCIS ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """Where a ledger event sits: exported as extension fields so the export can be checked."""

    seq: int
    event_id: str
    proof_url: str


def context() -> list[Any]:
    return [GS1_CONTEXT, {PREFIX: NS}]


def epcis_document(
    events: list[dict[str, Any]], *, created: datetime, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@context": context(),
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": format_time(created),
    }
    if extra:
        doc.update(extra)
    doc["epcisBody"] = {"eventList": events}
    return doc


def _q(batch_id: str, kg: Any) -> dict[str, Any]:
    return {"epcClass": batch_uri(batch_id), "quantity": Decimal(str(kg)), "uom": "KGM"}


def _put(
    ev: dict[str, Any], items: Iterable[tuple[str, Any]], qname: str, ename: str, epc_kg: dict[str, str]
) -> None:
    """Lots go to the quantity list; serialised items (urn:epc:id:...) to the EPC list, mass in bl:epc_kg."""
    for bid, kg in items:
        if bid.startswith(EPC_INSTANCE):
            ev.setdefault(ename, []).append(bid)
            epc_kg[bid] = str(kg)
        else:
            ev.setdefault(qname, []).append(_q(bid, kg))


def _bl(name: str) -> str:
    return f"{PREFIX}:{name}"


def epcis_event_id(obj: Mapping[str, Any], event_id: str) -> str:
    note = obj.get("note")
    if isinstance(note, str) and note.startswith(NOTE_EVENT_ID):
        return note[len(NOTE_EVENT_ID) :]
    return EVENT_URN + event_id


def to_epcis_event(
    obj: Mapping[str, Any],
    registry: LocationRegistry,
    info: EntryInfo | None = None,
    *,
    corrected: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ledger event (its JSON object, signed or not) as an EPCIS 2.0 event.

    A correction needs the event it corrects (`corrected`): EPCIS declares an error by repeating that
    event with an errorDeclaration.
    """
    kind = Kind(obj["kind"])
    if kind == Kind.CORRECTION:
        if corrected is None:
            raise EpcisError(f"correction {obj['corrects']}: the corrected event is needed to export it")
        base = to_epcis_event(corrected, registry, None)
        decl: dict[str, Any] = {"declarationTime": str(obj["time"])}
        if obj["reason"] in ("did_not_occur", "incorrect_data"):
            decl["reason"] = obj["reason"]
        decl[_bl("explanation")] = obj["explanation"]
        base["errorDeclaration"] = decl
        _stamp(base, obj, info, registry)
        return base
    here = registry.uri_of(str(obj["facility_id"]))
    ev: dict[str, Any] = {"type": "", "eventTime": str(obj["time"]), "eventTimeZoneOffset": "+00:00"}
    if info is not None:
        ev["eventID"] = epcis_event_id(obj, info.event_id)
    elif isinstance(obj.get("note"), str) and str(obj["note"]).startswith(NOTE_EVENT_ID):
        ev["eventID"] = str(obj["note"])[len(NOTE_EVENT_ID) :]
    if kind in BIZSTEP_OF_KIND:
        ev["type"] = "TransformationEvent"
        process = obj.get("process", "refining") if kind == Kind.BATCH_PROCESSED else None
        ev["bizStep"] = BIZSTEP_NS + BIZSTEP_OF[(kind, process)]
        epc_kg: dict[str, str] = {}
        _put(
            ev,
            ((i["batch_id"], i["kg"]) for i in obj.get("inputs") or []),
            "inputQuantityList",
            "inputEPCList",
            epc_kg,
        )
        _put(
            ev,
            ((o["batch_id"], o["kg"]) for o in obj["outputs"]),
            "outputQuantityList",
            "outputEPCList",
            epc_kg,
        )
        if epc_kg:
            ev[_bl("epc_kg")] = epc_kg
        if not obj.get("inputs"):
            # GS1's schema: a TransformationEvent with outputs only (extraction, recycling of outside
            # feed) needs a transformationID; ours names the event
            unsigned = {k: v for k, v in obj.items() if k != "sig"}
            ev["transformationID"] = ev.get("eventID") or EVENT_URN + unsigned_event_id(unsigned)
        ev["readPoint"] = {"id": here}
        ev["bizLocation"] = {"id": here}
        lots: dict[str, Any] = {}
        for o in obj["outputs"]:
            lot: dict[str, Any] = {"material": o["material"]}
            if o.get("contained_kg"):
                lot["contained_kg"] = {k: str(v) for k, v in o["contained_kg"].items()}
            for name in LOT_DECIMALS:
                if o.get(name) is not None:
                    lot[name] = str(o[name])
            if o.get("units") is not None:
                lot["units"] = int(o["units"])
            lots[batch_uri(o["batch_id"])] = lot
        ev["ilmd"] = {_bl("lots"): lots}
        for name in ("site", "feed_consumer"):
            if obj.get(name) is not None:
                ev[_bl(name)] = obj[name]
        if obj.get("external_feed"):
            ev[_bl("external_feed")] = [dict(f) for f in obj["external_feed"]]
    elif kind in (Kind.BATCH_SHIPPED, Kind.BATCH_RECEIVED):
        ev["type"] = "ObjectEvent"
        ev["action"] = "OBSERVE"
        ev["bizStep"] = "shipping" if kind == Kind.BATCH_SHIPPED else "receiving"
        ev["disposition"] = "in_transit" if kind == Kind.BATCH_SHIPPED else "in_progress"
        epc_kg = {}
        _put(ev, [(str(obj["batch_id"]), obj["kg"])], "quantityList", "epcList", epc_kg)
        if epc_kg:
            ev[_bl("epc_kg")] = epc_kg
        ev["readPoint"] = {"id": here}
        ev["bizLocation"] = {"id": here}
        if kind == Kind.BATCH_SHIPPED:
            there = registry.uri_of(str(obj["to_facility_id"]))
            ev["sourceList"] = [{"type": "location", "source": here}]
            ev["destinationList"] = [{"type": "location", "destination": there}]
            for name in ("from_country", "to_country", "value_usd"):
                if obj.get(name) is not None:
                    ev[_bl(name)] = str(obj[name])
        else:
            there = registry.uri_of(str(obj["from_facility_id"]))
            ev["sourceList"] = [{"type": "location", "source": there}]
            ev["destinationList"] = [{"type": "location", "destination": here}]
    else:
        raise EpcisError(f"{kind.value} events have no EPCIS form in the profile")
    _stamp(ev, obj, info, registry)
    return ev


def _stamp(
    ev: dict[str, Any], obj: Mapping[str, Any], info: EntryInfo | None, registry: LocationRegistry
) -> None:
    if info is None:
        return
    ev[_bl("kind")] = str(obj["kind"])
    ev[_bl("facility_id")] = str(obj["facility_id"])
    ev[_bl("event_id")] = info.event_id
    ev[_bl("entry")] = info.seq
    ev[_bl("inclusion_proof")] = info.proof_url


# -- exact JSON out -----------------------------------------------------------------------------------


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """JSON text with Decimals written as exact JSON numbers (the json module would refuse them)."""
    marks: dict[str, str] = {}

    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            key = f"\x00dec{len(marks)}\x00"
            marks[key] = _decimal_text(o)
            return key
        raise TypeError(f"{type(o).__name__} is not JSON")

    def walk(o: Any) -> Any:
        if isinstance(o, Decimal):
            return default(o)
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    text = json.dumps(walk(obj), indent=indent, ensure_ascii=False)
    for key, number in marks.items():
        text = text.replace(json.dumps(key), number)
    return text
