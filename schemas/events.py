"""Event models: the wire contract between plant systems and the ledger.

Every event is a JSON object with a common envelope (`spec`, `kind`, `facility_id`, `time`, optional
`nonce`) and the fields of its kind, plus a detached `sig` added by the signer. Quantities are decimal
strings ("1250.750"), never JSON floats, so a mass balance is exact and the canonical bytes are the
bytes the plant meant. Models validate; they are never re-serialised to check a signature.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)

SPEC = "batteryledger/1"

# Limits against abuse and accidents (documented in README "Event limits").
MAX_EVENT_BYTES = 64 * 1024  # one event on the wire; a bill of materials of 256 lines fits easily
MAX_ID_LEN = 128  # batch / facility ids: long enough for GS1 SGTIN+lot, short enough to index
MAX_TEXT_LEN = 1024  # free text (notes, reasons, legal names)
MAX_LIST_LEN = 256  # inputs / outputs / roles of one event
MAX_QUANTITY = Decimal("1e12")  # kg, kWh, kW, USD: 10^12 is above any single batch or plant-year
MAX_DECIMAL_PLACES = 6  # milligram resolution on kg
#: Latest time any event field may carry (exclusive). A fixed bound keeps validation the same whenever
#: it runs (a ledger re-verified in 2090 decides as it did at append); far enough for key validity.
MAX_TIME = datetime(2100, 1, 1, tzinfo=UTC)
#: Times are RFC 3339 strings with a zone: `2025-03-01T12:00:00Z`, `...T12:00:00.5+01:00`. Not epoch
#: numbers, not digit strings, not dates without a time (pydantic alone would read all of those).
TIME_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
_TIME_RE = re.compile(TIME_PATTERN)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
_ID_RE = re.compile(ID_PATTERN)


class Kind(StrEnum):
    """Event kinds. Registry kinds are signed by the registry authority (the ledger operator)."""

    FACILITY_REGISTERED = "facility.registered"
    FACILITY_ATTESTED = "facility.attested"
    KEY_ROTATED = "key.rotated"
    KEY_REVOKED = "key.revoked"
    BATCH_EXTRACTED = "batch.extracted"
    BATCH_PROCESSED = "batch.processed"
    MATERIAL_PRODUCED = "material.produced"
    CELLS_PRODUCED = "cells.produced"
    MODULES_ASSEMBLED = "modules.assembled"
    PACKS_ASSEMBLED = "packs.assembled"
    BATCH_SHIPPED = "batch.shipped"
    BATCH_RECEIVED = "batch.received"
    BATCH_RECYCLED = "batch.recycled"
    SUPPLIER_CERTIFIED = "supplier.certified"
    CORRECTION = "correction"


REGISTRY_KINDS = frozenset(
    {Kind.FACILITY_REGISTERED, Kind.FACILITY_ATTESTED, Kind.KEY_ROTATED, Kind.KEY_REVOKED}
)
TRANSFORM_KINDS = frozenset(
    {
        Kind.BATCH_EXTRACTED,
        Kind.BATCH_PROCESSED,
        Kind.MATERIAL_PRODUCED,
        Kind.CELLS_PRODUCED,
        Kind.MODULES_ASSEMBLED,
        Kind.PACKS_ASSEMBLED,
        Kind.BATCH_RECYCLED,
    }
)
REGISTRY_FACILITY_ID = "registry"


class Element(StrEnum):
    LI = "li"
    NI = "ni"
    CO = "co"
    MN = "mn"
    GRAPHITE = "graphite"


ELEMENTS: tuple[Element, ...] = tuple(Element)
#: each element's field name in ElementMass, as a plain str (no enum property per call on hot paths)
ELEMENT_FIELD: dict[Element, str] = {e: e.value for e in Element}


class Stage(StrEnum):
    """Supply-chain stages in order; the ledger checks that material only flows forward."""

    EXTRACTION = "extraction"
    PROCESSING = "processing"
    MATERIAL = "material"
    CELL = "cell"
    MODULE = "module"
    PACK = "pack"
    RECYCLING = "recycling"


STAGE_OF_KIND: dict[Kind, Stage] = {
    Kind.BATCH_EXTRACTED: Stage.EXTRACTION,
    Kind.BATCH_PROCESSED: Stage.PROCESSING,
    Kind.MATERIAL_PRODUCED: Stage.MATERIAL,
    Kind.CELLS_PRODUCED: Stage.CELL,
    Kind.MODULES_ASSEMBLED: Stage.MODULE,
    Kind.PACKS_ASSEMBLED: Stage.PACK,
    Kind.BATCH_RECYCLED: Stage.RECYCLING,
}


_DECIMAL_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?")


#: Decimal strings that pass every check below by their spelling alone: at most 12 integer digits
#: (so below MAX_QUANTITY), at most MAX_DECIMAL_PLACES places, no sign. Nearly every quantity on the wire.
_QUANTITY_FAST = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")


def _quantity(value: Any) -> Decimal:
    """Parse and check a quantity in one step (one Python call per field: the verify hot path)."""
    if type(value) is str and _QUANTITY_FAST.fullmatch(value):
        return Decimal(value)
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, str):
        # plain ASCII digits only: Python's Decimal also reads "1_000", "+5", " 5", "NaN" or full-width
        # digits, which other parsers of the same signed bytes would read differently or not at all
        if not _DECIMAL_TEXT.fullmatch(value):
            if value.startswith("-") and _DECIMAL_TEXT.fullmatch(value[1:]):  # "-5", "-0" too
                raise ValueError("must not be negative (no sign, not even -0)")
            raise ValueError(f'{value!r} is not a plain decimal such as "1250.750"')
        d = Decimal(value)
    elif isinstance(value, bool):
        raise ValueError("a quantity cannot be a boolean")
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        raise ValueError('quantities are decimal strings such as "1250.750", not JSON floats')
    else:
        raise ValueError(f"expected a decimal string, got {type(value).__name__}")
    if not d.is_finite():
        raise ValueError("must be a finite number")
    if d < 0 or d.is_signed():
        raise ValueError("must not be negative")
    if d > MAX_QUANTITY:
        raise ValueError(f"must not exceed {MAX_QUANTITY}")
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMAL_PLACES:
        raise ValueError(f"at most {MAX_DECIMAL_PLACES} decimal places")
    return d


QUANTITY_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 10**12},
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,6})?$"},
    ],
    "description": "non-negative exact decimal, as a string (or an integer); at most 6 decimal places",
}

Quantity = Annotated[
    Decimal,
    PlainValidator(_quantity),
    PlainSerializer(lambda d: str(d), return_type=str, when_used="always"),
    WithJsonSchema(QUANTITY_JSON_SCHEMA),
]
"""A non-negative exact decimal, carried as a JSON string."""

Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)]
Text = Annotated[str, Field(max_length=MAX_TEXT_LEN)]
CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2, upper case")]


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):  # built in Python (signers, tests): checked by _utc
        return value
    if not isinstance(value, str):
        raise ValueError(
            f"time must be an RFC 3339 string such as 2025-03-01T12:00:00Z, not {type(value).__name__}"
        )
    if not _TIME_RE.fullmatch(value):
        raise ValueError(
            f"time {value[:40]!r} is not an RFC 3339 datetime with a timezone, e.g. 2025-03-01T12:00:00Z"
        )
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("time must carry a timezone, e.g. 2025-03-01T12:00:00Z")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("time is out of range once converted to UTC") from None
    if utc >= MAX_TIME:
        raise ValueError(f"time must be before {MAX_TIME:%Y-%m-%d} (UTC)")
    return utc


UtcTime = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_utc)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class ElementMass(_Model):
    """Contained mass of each tracked element, in kg (graphite as graphitic carbon)."""

    li: Quantity = Decimal(0)
    ni: Quantity = Decimal(0)
    co: Quantity = Decimal(0)
    mn: Quantity = Decimal(0)
    graphite: Quantity = Decimal(0)

    def get(self, element: Element) -> Decimal:
        value: Decimal = getattr(self, ELEMENT_FIELD[element])
        return value

    def total(self) -> Decimal:
        """Sum over the tracked elements."""
        return self.li + self.ni + self.co + self.mn + self.graphite


class BatchInput(_Model):
    """A quantity of an existing ledger batch consumed by a transformation."""

    batch_id: Identifier
    kg: Quantity


class BatchOutput(_Model):
    """A new batch made by a transformation."""

    batch_id: Identifier
    material: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
    kg: Quantity
    contained_kg: ElementMass = ElementMass()
    value_usd: Quantity | None = None
    production_cost_usd: Quantity | None = None
    direct_material_cost_usd: Quantity | None = None
    pfe_material_cost_usd: Quantity | None = None
    purity_pct: Quantity | None = None
    units: Annotated[int, Field(ge=0, le=10**9, strict=True)] | None = None
    kwh: Quantity | None = None
    max_discharge_kw: Quantity | None = None
    volume_l: Quantity | None = None

    @field_validator("purity_pct")
    @classmethod
    def _pct(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v > 100:
            raise ValueError("purity_pct is a percentage, at most 100")
        return v

    @model_validator(mode="after")
    def _contained_within_mass(self) -> BatchOutput:
        total = self.contained_kg.total()
        if total > self.kg:
            raise ValueError(f"contained element mass {total} kg exceeds the batch mass {self.kg} kg")
        return self


class ExternalFeed(_Model):
    """Recycling feed from outside the ledger (scrap, black mass bought in), declared by the recycler."""

    description: Text
    consumer: Literal["pre", "post"]
    kg: Quantity
    contained_kg: ElementMass = ElementMass()
    origin_country: CountryCode | None = None


class _Envelope(_Model):
    spec: Literal["batteryledger/1"]
    facility_id: Identifier
    time: UtcTime
    nonce: Annotated[str, Field(max_length=64)] | None = None
    note: Text | None = None


class _Transform(_Envelope):
    inputs: Annotated[
        list[BatchInput],
        Field(default_factory=list, max_length=MAX_LIST_LEN, json_schema_extra={"default": []}),
    ]
    outputs: Annotated[list[BatchOutput], Field(min_length=1, max_length=MAX_LIST_LEN)]

    @model_validator(mode="after")
    def _unique_ids(self) -> _Transform:
        outs = [o.batch_id for o in self.outputs]
        if len(set(outs)) != len(outs):
            raise ValueError("output batch ids must be unique within an event")
        ins = [i.batch_id for i in self.inputs]
        if len(set(ins)) != len(ins):
            raise ValueError("an input batch may appear only once per event; add the quantities")
        return self


class BatchExtracted(_Transform):
    kind: Literal[Kind.BATCH_EXTRACTED]
    site: Text | None = None

    @model_validator(mode="after")
    def _no_inputs(self) -> BatchExtracted:
        if self.inputs:
            raise ValueError("extraction has no ledger inputs")
        return self


class BatchProcessed(_Transform):
    kind: Literal[Kind.BATCH_PROCESSED]
    process: Literal["refining", "conversion", "purification", "precursor"] = "refining"


class MaterialProduced(_Transform):
    kind: Literal[Kind.MATERIAL_PRODUCED]


class CellsProduced(_Transform):
    kind: Literal[Kind.CELLS_PRODUCED]


class ModulesAssembled(_Transform):
    kind: Literal[Kind.MODULES_ASSEMBLED]


class PacksAssembled(_Transform):
    kind: Literal[Kind.PACKS_ASSEMBLED]


class BatchRecycled(_Transform):
    kind: Literal[Kind.BATCH_RECYCLED]
    feed_consumer: Literal["pre", "post"] = "post"
    external_feed: Annotated[
        list[ExternalFeed],
        Field(default_factory=list, max_length=MAX_LIST_LEN, json_schema_extra={"default": []}),
    ]

    @model_validator(mode="after")
    def _has_feed(self) -> BatchRecycled:
        if not self.inputs and not self.external_feed:
            raise ValueError("recycling needs ledger inputs or a declared external feed")
        return self


class BatchShipped(_Envelope):
    kind: Literal[Kind.BATCH_SHIPPED]
    batch_id: Identifier
    kg: Quantity
    to_facility_id: Identifier
    from_country: CountryCode | None = None
    to_country: CountryCode | None = None
    value_usd: Quantity | None = None


class BatchReceived(_Envelope):
    kind: Literal[Kind.BATCH_RECEIVED]
    batch_id: Identifier
    kg: Quantity
    from_facility_id: Identifier


class SupplierCertified(_Envelope):
    """A supplier's certification (IRS Notice 2026-15 style) about batches it sold: an attested input."""

    kind: Literal[Kind.SUPPLIER_CERTIFIED]
    batch_ids: Annotated[list[Identifier], Field(min_length=1, max_length=MAX_LIST_LEN)]
    statement: Literal["not_prohibited_foreign_entity", "pfe_cost_share"]
    pfe_cost_share: Quantity | None = None
    reference: Text | None = None


class Correction(_Envelope):
    """Append-only amendment (like EPCIS errorDeclaration): never rewrites the event it refers to."""

    kind: Literal[Kind.CORRECTION]
    corrects: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    reason: Literal["incorrect_data", "did_not_occur", "duplicate", "other"]
    explanation: Text


class Attestation(_Model):
    """Dated, attested status of a facility's owner (domain.md: FEOC / prohibited foreign entity)."""

    feoc: Annotated[bool, Field(strict=True)]
    prohibited_foreign_entity: Annotated[bool, Field(strict=True)] = False
    as_of: UtcTime
    evidence: Text | None = None


class PublicKeyInfo(_Model):
    key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    public_key: Annotated[str, Field(min_length=44, max_length=44)]  # base64 of 32 raw bytes
    valid_from: UtcTime
    valid_until: UtcTime | None = None


class FacilityRegistered(_Envelope):
    kind: Literal[Kind.FACILITY_REGISTERED]
    subject_facility_id: Identifier
    legal_entity: Text
    country: CountryCode
    roles: Annotated[list[Kind], Field(min_length=1, max_length=len(Kind))]
    attestation: Attestation
    key: PublicKeyInfo


class FacilityAttested(_Envelope):
    kind: Literal[Kind.FACILITY_ATTESTED]
    subject_facility_id: Identifier
    attestation: Attestation


class KeyRotated(_Envelope):
    kind: Literal[Kind.KEY_ROTATED]
    subject_facility_id: Identifier
    key: PublicKeyInfo
    retire_key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")] | None = None
    retire_at: UtcTime | None = None


class KeyRevoked(_Envelope):
    kind: Literal[Kind.KEY_REVOKED]
    subject_facility_id: Identifier
    key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    revoked_at: UtcTime
    reason: Literal["compromised", "superseded", "retired"]


Event = Annotated[
    BatchExtracted
    | BatchProcessed
    | MaterialProduced
    | CellsProduced
    | ModulesAssembled
    | PacksAssembled
    | BatchRecycled
    | BatchShipped
    | BatchReceived
    | SupplierCertified
    | Correction
    | FacilityRegistered
    | FacilityAttested
    | KeyRotated
    | KeyRevoked,
    Field(discriminator="kind"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

MODEL_OF_KIND: dict[Kind, type[_Envelope]] = {
    Kind.BATCH_EXTRACTED: BatchExtracted,
    Kind.BATCH_PROCESSED: BatchProcessed,
    Kind.MATERIAL_PRODUCED: MaterialProduced,
    Kind.CELLS_PRODUCED: CellsProduced,
    Kind.MODULES_ASSEMBLED: ModulesAssembled,
    Kind.PACKS_ASSEMBLED: PacksAssembled,
    Kind.BATCH_RECYCLED: BatchRecycled,
    Kind.BATCH_SHIPPED: BatchShipped,
    Kind.BATCH_RECEIVED: BatchReceived,
    Kind.SUPPLIER_CERTIFIED: SupplierCertified,
    Kind.CORRECTION: Correction,
    Kind.FACILITY_REGISTERED: FacilityRegistered,
    Kind.FACILITY_ATTESTED: FacilityAttested,
    Kind.KEY_ROTATED: KeyRotated,
    Kind.KEY_REVOKED: KeyRevoked,
}

TransformEvent = (
    BatchExtracted
    | BatchProcessed
    | MaterialProduced
    | CellsProduced
    | ModulesAssembled
    | PacksAssembled
    | BatchRecycled
)


def parse_event(obj: Any) -> Event:
    """Validate an (unsigned) event object; raises pydantic.ValidationError."""
    return EVENT_ADAPTER.validate_python(obj)


def event_to_json_obj(event: BaseModel) -> dict[str, Any]:
    """The JSON object a signer canonicalises: decimals as strings, times as RFC 3339 with Z."""
    obj = event.model_dump(mode="json", exclude_none=True)
    _fix_times(obj)
    return obj


def _fix_times(obj: Any) -> None:
    # pydantic writes UTC datetimes as "...Z"; a "+00:00" from elsewhere is normalised so producers agree.
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str) and v.endswith("+00:00") and "T" in v:
                obj[k] = v[:-6] + "Z"
            else:
                _fix_times(v)
    elif isinstance(obj, list):
        for v in obj:
            _fix_times(v)


def is_identifier(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value)) and len(value) <= MAX_ID_LEN
