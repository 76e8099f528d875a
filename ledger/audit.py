"""Audit a tax-credit or recycled-content claim against the ledger.

A claim file (YAML or JSON; see examples/claims/README.md) names the rule, the batches (or the plant
and year) it rests on, its dates and the amounts it asserts. `audit` reads the numbers from the
ledger itself: capacity, units, volume and costs from the signed events, value origins and mass
provenance from the provenance index. It hands them to the rule engine (`ledger.taxrules`), checks
every asserted amount against the computed one, and returns an `AuditResult`: the finding (pass /
fail per requirement, thresholds and their years, parameters with citation and confidence), every
ledger fact used and how it was derived, and the events relied on with their seq, leaf hash and
entry hash as stored.

    >>> claim = load_claim("examples/claims/45x-cell.yaml")
    >>> result = audit(Ledger("sqlite:///ledger.db"), claim)
    >>> result.finding.status                     # "pass" | "fail" | "not_applicable"

Where the ledger cannot give a number the rule wants exactly, the audit uses a stated approximation:
each is a `ParameterUse` named `audit.*` (confidence "?") listed in the finding's parameters, never a
silent constant. Custody model: mass balance (ISO 22095:2020), the provenance model of the ledger.

Reads a Ledger (its store tables, read only); no CLI, no Kafka.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypedDict

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import select

from ledger.core import Ledger, row_to_batch
from ledger.provenance import BatchNode, Provenance, post_order
from ledger.rules import BatchState
from ledger.store import BATCHES, CHECKPOINTS, ENTRIES, chunks
from ledger.taxrules.credit45x import (
    CAPACITY_COMPONENTS,
    Claim45X,
    Component,
    CostItem,
    CostKind,
    credit_45x,
    is_applicable_critical_mineral,
)
from ledger.taxrules.cv30d import MineralChain, SupplyStep, evaluate_30d, qualifying_location
from ledger.taxrules.domestic_content import CleanElectricityCredit, evaluate_domestic_content
from ledger.taxrules.errors import TaxRuleError
from ledger.taxrules.eu_recycled import (
    RecycledContent,
    RecycledMaterial,
    evaluate_recycled_content,
    recycled_content_from_masses,
)
from ledger.taxrules.findings import (
    Comparison,
    Confidence,
    CustodyModel,
    Finding,
    JsonValue,
    ParameterUse,
    Requirement,
    Status,
    dumps_json,
    weakest,
)
from ledger.taxrules.macr import MacrCategory, SupplierCertification, evaluate_macr
from ledger.taxrules.pack import RulePack, load_pack
from schemas.events import (
    ELEMENTS,
    ID_PATTERN,
    MAX_ID_LEN,
    STAGE_OF_KIND,
    BatchOutput,
    Correction,
    Element,
    Kind,
    Stage,
    SupplierCertified,
)
from schemas.reasons import EventError
from schemas.signing import DecodedEvent, decode

__all__ = [
    "AUDIT_PARAMETERS",
    "CLAIM_KINDS",
    "SHARE_LABELS",
    "AuditError",
    "AuditResult",
    "BatchRef",
    "Claim",
    "ClaimError",
    "EventRef",
    "Fact",
    "LedgerRef",
    "audit",
    "load_claim",
    "parse_claim",
]

# -- limits (against accidents and abuse) -----------------------------------------------------------
MAX_CLAIM_BYTES = 1024 * 1024
"""A claim is a page of YAML; a megabyte is far above any real one and bounds what the parser reads."""
MAX_SUBJECT_BATCHES = 1000
"""Batches named in one claim: a plant-year of cell lots fits; each costs a provenance lookup."""

MONEY = Decimal("0.01")
SHARE = Decimal("0.000000001")  # fractions: the provenance summary's resolution (1e-9)
QTY = Decimal("0.000001")  # kg, kWh, Wh, kW: the event schema's resolution (6 places)


# -- errors ---------------------------------------------------------------------------------------
class AuditError(Exception):
    """A claim the ledger cannot support as written: names the claim field (or batch) and the fix."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def diagnostics(self) -> str:
        return str(self)


class ClaimError(AuditError):
    """The claim file itself is unreadable or invalid; the message starts with its path."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        super().__init__(field, message)

    def diagnostics(self) -> str:
        return f"{self.source}: {super().diagnostics()}"


# -- the audit's own approximations, each a named parameter ----------------------------------------
_OWN = "batteryledger audit (ledger/audit.py)"


def _param(name: str, value: str, citation: str, note: str, confidence: Confidence = "?") -> ParameterUse:
    return ParameterUse(name=name, value=value, citation=citation, confidence=confidence, note=note)


P_ALLOCATION = _param(
    "audit.multi_output_allocation",
    "by output value_usd",
    f"{_OWN}; ledger/provenance.py (value split of a multi-output event)",
    "the inputs of an event with several outputs are shared among them in proportion to their value "
    "(a by-product such as production scrap carries its share), as the provenance value split does",
)
P_45X_PLACES = _param(
    "audit.45x_production_countries",
    "US, PR, GU, VI, AS, MP",
    "26 CFR 1.45X-1 (eligible components produced within the United States or a US territory)",
    "the producing facility's registered country must be one of these",
)
P_45X_ELIGIBLE_INPUTS = _param(
    "audit.45x_eligible_inputs",
    "material ending in _active_material, or an applicable critical mineral by form or purity",
    "26 CFR 1.45X-3 (no double counting; worked examples 1-3)",
    "a consumed input that was already an eligible component (electrode active material, or a critical "
    "mineral in a listed form or at the listed purity) is excluded from production cost whether bought or "
    "made in-house; its value is value_usd x kg consumed / batch kg",
)
P_45X_UNREFINED = _param(
    "audit.45x_unrefined_inputs",
    "inputs made by batch.extracted events count as direct material cost",
    "26 CFR 1.45X-3(e)(2)(iv)(A)(1), (A)(3)(ii) (Example 2)",
    "unrefined (extracted) material was not an eligible component when acquired, so its cost is "
    "production cost (classified unrefined_material, which the pack does not exclude)",
    confidence="P",
)
P_MACR_PFE = _param(
    "audit.macr_pfe_cost",
    "input bought from a prohibited foreign entity: its whole cost; otherwise look-through of its value origins",
    "26 USC 7701(a)(52) (P.L. 119-21); IRS Notice 2026-15",
    "the part of each input's value added by steps the registry attests as prohibited foreign entities "
    "(value origins flagged pfe); a supplier.certified event in the ledger for an input replaces this "
    "for that input (not_prohibited_foreign_entity: 0; pfe_cost_share: that share of its cost)",
)
P_30D_COMPONENT_STAGES = _param(
    "audit.30d_component_stages",
    "cell, module",
    "26 CFR 1.30D-3 (battery components; incremental value)",
    "North American content = value added by cell and module steps in US/CA/MX / value added by cell "
    "and module steps plus value of unknown step; active-material powders are constituent materials, "
    "not components; the pack's own assembly is not a battery component",
)
P_30D_FEOC_COMPONENT_STAGES = _param(
    "audit.30d_feoc_component_stages",
    "cell, module, pack",
    "26 USC 30D(d)(7); 26 CFR 1.30D-6",
    "a FEOC-attested facility at any of these steps puts a battery component in FEOC hands",
)
P_30D_MINERAL_VALUE = _param(
    "audit.30d_mineral_value",
    "value at the last refining step, carried by mass balance",
    "T.D. 9995 (26 CFR 1.30D-3): content by value of applicable critical minerals",
    "the ledger records value per batch, not per element: each element's value is the value_usd of the "
    "refined (batch.processed) batches it came from, split among a batch's elements by contained mass, "
    "carried to the battery in proportion to the element mass consumed",
)
P_30D_CHAINS = _param(
    "audit.30d_procurement_chains",
    "one chain per element, origin and sequence of processing steps",
    "T.D. 9995 (26 CFR 1.30D-3): traced qualifying value per procurement chain",
    "a chain is a mine or recycler and its country plus every batch.processed step with its country and "
    "value added (review B4); its value is the element's value times its mass share. It qualifies whole "
    "if extracted in the US or an FTA country or recycled in North America; otherwise by its processing "
    "steps as cv30d.traced_chain_reading says; the 50% value-added safe harbor applies to the processing "
    "share when the report date is in its window; unknown origin never qualifies",
)
P_30D_IMPRACTICABLE = _param(
    "audit.30d_impracticable_to_trace_elements",
    "graphite",
    "T.D. 9995 (26 CFR 1.30D-6): graphite in anode material",
    "FEOC-touched mass confined to these elements is treated as impracticable-to-trace material",
)
P_DOMESTIC_COST = _param(
    "audit.domestic_cost_basis",
    "value added in the US by any step (look-through) / component value",
    "26 USC 48E(a)(3)(B), 45Y(g)(11); IRS Notice 2023-38",
    "stricter than the manufactured-product-component rule, which counts a US-made component whole; "
    "value of unknown step counts as not US",
)
P_EU_SCOPE = _param(
    "audit.eu_recycled_scope",
    "batches of cells.produced events of the plant in the calendar year that carry kWh",
    "Regulation (EU) 2023/1542 Art. 8 (per battery model, year and plant)",
    "production scrap (no kWh) is not a battery; shares are mass-weighted over the batches",
)

#: every audit parameter by name, for documentation and the HTML report
AUDIT_PARAMETERS: dict[str, ParameterUse] = {
    p.name: p
    for p in (
        P_ALLOCATION,
        P_45X_PLACES,
        P_45X_ELIGIBLE_INPUTS,
        P_45X_UNREFINED,
        P_MACR_PFE,
        P_30D_COMPONENT_STAGES,
        P_30D_FEOC_COMPONENT_STAGES,
        P_30D_MINERAL_VALUE,
        P_30D_CHAINS,
        P_30D_IMPRACTICABLE,
        P_DOMESTIC_COST,
        P_EU_SCOPE,
    )
}

PLACES_45X = frozenset({"US", "PR", "GU", "VI", "AS", "MP"})
EAM_SUFFIX = "active_material"
COMPONENT_STAGES_30D = frozenset({"cell", "module"})
FEOC_COMPONENT_STAGES_30D = frozenset({"cell", "module", "pack"})
IMPRACTICABLE_ELEMENTS_30D = frozenset({Element.GRAPHITE})

ASSERTED_CITATION = "claim file against the ledger computation (batteryledger audit)"
LEDGER_CITATION = "ledger events relied on (signed, hash-chained)"

#: The bars of the share chart, as fractions of an element's contained mass (mass balance).
SHARE_LABELS: dict[str, str] = {
    "us": "mined, processed or recycled in the US",
    "us_or_fta": "extracted or processed in the US or an FTA country (the pack's dated list)",
    "north_america": "mined, processed or recycled in the US, Canada or Mexico",
    "recycled": "from recycled feed (pre- or post-consumer)",
    "feoc_touched": "a facility attested as a foreign entity of concern handled it at some step",
    "unknown": "origin the ledger cannot show (a parent missing, or more mass out than in)",
}


# -- the claim --------------------------------------------------------------------------------------
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)]
Year = Annotated[int, Field(strict=True, ge=1900, le=2200)]
Flag = Annotated[bool, Field(strict=True)]
Direction = Literal["max", "min"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchSubject(_Model):
    """Ledger batches the claim is about."""

    batches: Annotated[list[Identifier], Field(min_length=1, max_length=MAX_SUBJECT_BATCHES)]

    @model_validator(mode="after")
    def _unique(self) -> BatchSubject:
        seen: set[str] = set()
        for b in self.batches:
            if b in seen:
                raise AuditError("subject.batches", f"batch {b!r} is listed twice")
            seen.add(b)
        return self


class ProjectSubject(BatchSubject):
    """A clean-electricity project (48E / 45Y) and the component batches installed in it."""

    project: Annotated[str, Field(min_length=1, max_length=256)]


class PlantSubject(_Model):
    """A plant and a calendar year (EU recycled content is per model, year and plant)."""

    facility: Identifier
    year: Year
    battery_model: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    #: part of the year (the minimums start on 18 August): cells made on these days, both included
    period_start: date | None = None
    period_end: date | None = None

    @model_validator(mode="after")
    def _period(self) -> PlantSubject:
        start = self.period_start or date(self.year, 1, 1)
        end = self.period_end or date(self.year, 12, 31)
        if start.year != self.year or end.year != self.year or end < start:
            raise AuditError("subject.period_end", f"the period {start}..{end} must lie within {self.year}")
        return self


class _Claim(_Model):
    title: Annotated[str, Field(max_length=1024)] = ""
    claimant: Annotated[str, Field(max_length=256)] | None = None
    asserted: dict[str, Decimal] = {}

    #: asserted amount name -> "max" (may not exceed the computed one) or "min" (may not fall below)
    ASSERTABLE: ClassVar[dict[str, Direction]] = {}

    @model_validator(mode="after")
    def _asserted_known(self) -> _Claim:
        allowed = self.assertable()
        for key, value in self.asserted.items():
            if key not in allowed:
                raise AuditError(
                    f"asserted.{key}", f"not an amount this claim computes; use one of {', '.join(allowed)}"
                )
            if not value.is_finite():
                raise AuditError(f"asserted.{key}", "must be a finite number")
        return self

    def assertable(self) -> dict[str, Direction]:
        return dict(self.ASSERTABLE)

    def as_of(self) -> date:
        """The day country lists (FTA) are read at."""
        raise NotImplementedError


class Claim45XFile(_Claim):
    """45X production credit for cells, modules, electrode active materials or critical minerals."""

    kind: Literal["45x"]
    component: Component
    subject: BatchSubject
    sale_year: Year
    production_year: Year | None = None
    first_module_sale: Flag = True
    #: first day of the taxable year of the sale (default: the calendar year of the sale)
    taxable_year_start: date | None = None
    #: claimant-attested: is the taxpayer a specified foreign entity or a foreign-influenced entity?
    prohibited_foreign_entity_taxpayer: Flag | None = None
    #: claimant-attested (45X(d)(4)): the component went into another eligible component of the taxpayer
    integrated: Flag = False
    integrated_same_facility: Flag | None = None
    integrated_us_primary_share: Decimal | None = None
    ASSERTABLE: ClassVar[dict[str, Direction]] = {
        "credit_usd": "max",
        "capacity_kwh": "max",
        "capped_capacity_kwh": "max",
        "eligible_production_cost_usd": "max",
    }

    def as_of(self) -> date:
        return date(self.sale_year, 12, 31)


class ClaimMacrFile(_Claim):
    """45X material assistance cost ratio (prohibited foreign entities)."""

    kind: Literal["macr"]
    category: MacrCategory
    subject: BatchSubject
    sale_year: Year
    taxable_year_start: date | None = None
    ASSERTABLE: ClassVar[dict[str, Direction]] = {"macr": "max", "pfe_cost_usd": "min"}

    def as_of(self) -> date:
        return date(self.sale_year, 12, 31)


class Claim30DFile(_Claim):
    """Former 30D clean vehicle credit for the vehicle(s) a battery pack went into."""

    kind: Literal["30d"]
    subject: BatchSubject
    vehicle: Annotated[str, Field(max_length=256)] | None = None
    acquired: date
    placed_in_service: date
    report_date: date | None = None
    ASSERTABLE: ClassVar[dict[str, Direction]] = {
        "credit_usd": "max",
        "critical_mineral_content": "max",
        "battery_component_content": "max",
    }

    @model_validator(mode="after")
    def _one_pack(self) -> Claim30DFile:
        if len(self.subject.batches) != 1:
            raise AuditError(
                "subject.batches", "a 30D claim is about one battery pack batch: list exactly one"
            )
        return self

    def as_of(self) -> date:
        return self.placed_in_service


class ClaimDomesticContentFile(_Claim):
    """48E / 45Y domestic content bonus for a project built with the listed component batches."""

    kind: Literal["48e", "45y"]
    subject: ProjectSubject
    #: the day construction began (48E's percentage changes on 2025-06-16); or only its year
    construction_start: date | None = None
    construction_year: Year | None = None
    steel_iron_us_share: Decimal | None = None
    prevailing_wage: Flag = False
    offshore_wind: Flag = False
    base_credit_usd: Decimal | None = None

    @model_validator(mode="after")
    def _base_credit(self) -> ClaimDomesticContentFile:
        if self.base_credit_usd is not None and self.kind == "48e":
            raise AuditError("base_credit_usd", "applies to 45y claims; a 48E bonus is in rate points")
        if self.construction_start is None and self.construction_year is None:
            raise AuditError("construction_start", "missing: the date construction began (YYYY-MM-DD)")
        if (
            self.construction_start is not None
            and self.construction_year is not None
            and self.construction_start.year != self.construction_year
        ):
            raise AuditError("construction_year", "disagrees with construction_start: give one of them")
        return self

    def assertable(self) -> dict[str, Direction]:
        if self.kind == "48e":
            return {"domestic_cost_percentage": "max", "bonus_rate_points": "max"}
        return {
            "domestic_cost_percentage": "max",
            "bonus_credit_fraction": "max",
            "bonus_usd": "max",
            "credit_usd": "max",
        }

    def as_of(self) -> date:
        if self.construction_start is not None:
            return self.construction_start
        assert self.construction_year is not None
        return date(self.construction_year, 12, 31)


_EU_MATERIALS = ("cobalt", "lithium", "nickel")


class ClaimEuRecycledFile(_Claim):
    """EU Battery Regulation recycled content of a plant's cells in a year."""

    kind: Literal["eu-recycled"]
    subject: PlantSubject
    ASSERTABLE: ClassVar[dict[str, Direction]] = {
        f"{m}_{part}": "max"
        for m in _EU_MATERIALS
        for part in ("pre_consumer_share", "post_consumer_share", "recycled_share")
    }

    def as_of(self) -> date:
        return self.subject.period_end or date(self.subject.year, 12, 31)


Claim = Claim45XFile | ClaimMacrFile | Claim30DFile | ClaimDomesticContentFile | ClaimEuRecycledFile

_MODELS: dict[str, type[_Claim]] = {
    "45x": Claim45XFile,
    "macr": ClaimMacrFile,
    "30d": Claim30DFile,
    "48e": ClaimDomesticContentFile,
    "45y": ClaimDomesticContentFile,
    "eu-recycled": ClaimEuRecycledFile,
}
CLAIM_KINDS: tuple[str, ...] = tuple(_MODELS)


# -- reading claim files ----------------------------------------------------------------------------
class _ClaimLoader(yaml.SafeLoader):
    """Safe YAML where a float is a Decimal (0.1 stays 0.1) and a repeated key is an error."""


def _yaml_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    assert isinstance(node, yaml.ScalarNode)
    text = str(loader.construct_scalar(node)).replace("_", "")
    value = Decimal(text) if text.lower().lstrip("+-") not in (".inf", ".nan") else Decimal("NaN")
    if not value.is_finite():
        raise yaml.constructor.ConstructorError(
            None, None, f"{text!r} is not a finite number", node.start_mark
        )
    return value


def _yaml_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict[Any, Any]:
    assert isinstance(node, yaml.MappingNode)
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_ClaimLoader.add_constructor("tag:yaml.org,2002:float", _yaml_decimal)
_ClaimLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _yaml_mapping)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def load_claim(path: str | Path) -> Claim:
    """Read and validate a claim file (.json as JSON, anything else as YAML). Raises ClaimError."""
    p = Path(path)
    source = str(p)
    try:
        size = p.stat().st_size
        if size > MAX_CLAIM_BYTES:
            raise ClaimError(source, "", f"is {size} bytes; a claim file may have at most {MAX_CLAIM_BYTES}")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClaimError(source, "", f"cannot read the claim file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ClaimError(source, "", "is not UTF-8 text") from None
    data: Any
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text, parse_float=Decimal, object_pairs_hook=_json_pairs)
        except json.JSONDecodeError as exc:
            raise ClaimError(
                source, "", f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        except ValueError as exc:
            raise ClaimError(source, "", f"not a valid claim: {exc}") from None
    else:
        try:
            data = yaml.load(text, Loader=_ClaimLoader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ClaimError(source, "", f"not valid YAML{where}: {problem}") from None
    return parse_claim(data, source)


def parse_claim(data: Any, source: str = "<claim>") -> Claim:
    """Validate claim data already parsed from YAML or JSON. Raises ClaimError naming the field."""
    if not isinstance(data, Mapping):
        raise ClaimError(source, "", "a claim is a mapping of fields (kind, subject, dates, asserted)")
    kind = data.get("kind")
    if kind is None:
        raise ClaimError(source, "kind", f"missing: say which rule to audit ({', '.join(CLAIM_KINDS)})")
    if not isinstance(kind, str) or kind.strip().lower() not in _MODELS:
        raise ClaimError(source, "kind", f"{kind!r} is not a claim kind; use one of {', '.join(CLAIM_KINDS)}")
    kind = kind.strip().lower()
    model = _MODELS[kind]
    try:
        claim = model.model_validate({**data, "kind": kind})
    except ValidationError as exc:
        raise ClaimError(source, *_first_problem(exc, model, kind)) from None
    except AuditError as exc:  # raised by a model validator, with the field it is about
        raise ClaimError(source, exc.field, exc.message) from None
    assert isinstance(
        claim, Claim45XFile | ClaimMacrFile | Claim30DFile | ClaimDomesticContentFile | ClaimEuRecycledFile
    )
    return claim


def _first_problem(exc: ValidationError, model: type[BaseModel], kind: str) -> tuple[str, str]:
    """The first validation error as (field path, message in a user's words); a count of the rest."""
    # a misspelt field shows as "unknown" and its real name as "missing": name the misspelling first
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = [str(p) for p in err["loc"]]
    field_path = ".".join(loc)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    etype = err["type"]
    if etype == "missing":
        return field_path, f"missing: a {kind} claim needs it{more}"
    if etype == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return field_path, f"unknown field{hint}{more}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return field_path or "(claim)", f"{msg}{more}"


def _allowed_fields(model: type[BaseModel], loc: Sequence[str]) -> list[str]:
    current: Any = model
    for part in loc:
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return []
        current = info.annotation
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
    return [name for name in getattr(current, "model_fields", {})]


# -- results ----------------------------------------------------------------------------------------
FactValue = Decimal | int | str | bool


@dataclass(frozen=True, slots=True)
class Fact:
    """A number the audit read or derived from the ledger, and how."""

    name: str
    value: FactValue
    unit: str = ""
    batch: str | None = None
    how: str = ""


@dataclass(frozen=True, slots=True)
class EventRef:
    """A ledger entry the finding rests on, as stored (hashes hex)."""

    event_id: str
    seq: int
    kind: str
    leaf_hash: str
    entry_hash: str


@dataclass(frozen=True, slots=True)
class BatchRef:
    batch_id: str
    kind: str
    material: str
    facility_id: str
    country: str
    time: str
    kg: Decimal
    value_usd: Decimal | None
    event_id: str
    seq: int
    feoc: bool
    pfe: bool


@dataclass(frozen=True, slots=True)
class LedgerRef:
    """The ledger state the audit read: re-run against the same head to get the same finding."""

    origin: str
    size: int
    head: str
    checkpoint_size: int | None


@dataclass(frozen=True)
class AuditResult:
    claim: Claim
    finding: Finding
    facts: tuple[Fact, ...]
    batches: tuple[BatchRef, ...]
    events: tuple[EventRef, ...]
    shares: dict[str, dict[str, Decimal]]  # element -> SHARE_LABELS key -> fraction of contained mass
    ledger: LedgerRef
    as_of: date
    custody_model: CustodyModel = CustodyModel.MASS_BALANCE

    @property
    def status(self) -> Status:
        return self.finding.status

    @property
    def subject_batches(self) -> list[str]:
        return [b.batch_id for b in self.batches]

    def to_json_obj(self) -> dict[str, JsonValue]:
        """JSON-ready data; serialise with `taxrules.findings.dumps_json` (decimals exact)."""
        f = self.finding
        return {
            "claim": _jsonable(self.claim.model_dump(mode="python")),
            "status": f.status,
            "passed": f.passed,
            "claim_kind": f.claim_kind.value,
            "requirements": [_requirement_json(r) for r in f.requirements],
            "amounts": dict(f.amounts),
            "custody_model": self.custody_model.value,
            "parameters": [
                {
                    "name": p.name,
                    "value": p.value,
                    "applies_to": p.applies_to,
                    "citation": p.citation,
                    "confidence": p.confidence,
                    "note": p.note,
                }
                for p in f.parameters_used
            ],
            "unconfirmed_parameters": [p.name for p in f.unconfirmed_parameters()],
            "facts": [
                {"name": x.name, "value": x.value, "unit": x.unit, "batch": x.batch, "how": x.how}
                for x in self.facts
            ],
            "shares": {el: dict(s) for el, s in self.shares.items()},
            "shares_as_of": self.as_of.isoformat(),
            "batches": [
                {
                    "batch_id": b.batch_id,
                    "kind": b.kind,
                    "material": b.material,
                    "facility_id": b.facility_id,
                    "country": b.country,
                    "time": b.time,
                    "kg": b.kg,
                    "value_usd": b.value_usd,
                    "event_id": b.event_id,
                    "seq": b.seq,
                    "feoc": b.feoc,
                    "pfe": b.pfe,
                }
                for b in self.batches
            ],
            "events": [
                {
                    "event_id": e.event_id,
                    "seq": e.seq,
                    "kind": e.kind,
                    "leaf_hash": e.leaf_hash,
                    "entry_hash": e.entry_hash,
                }
                for e in self.events
            ],
            "warnings": list(f.warnings),
            "notes": list(f.notes),
            "inputs": dict(f.inputs),
            "pack": {"id": f.pack_id, "version": f.pack_version},
            "ledger": {
                "origin": self.ledger.origin,
                "size": self.ledger.size,
                "head": self.ledger.head,
                "checkpoint_size": self.ledger.checkpoint_size,
            },
        }

    def to_json(self) -> str:
        return dumps_json(self.to_json_obj())

    def summary_lines(self) -> list[str]:
        """A plain-text account (CLI, demo): status, each requirement, amounts, what it rests on."""
        f = self.finding
        title = self.claim.title or f.claim_kind.value
        lines = [f"{title}: {f.status.upper()}  ({f.claim_kind.value}, pack {f.pack_id} {f.pack_version})"]

        def walk(r: Requirement, depth: int) -> None:
            mark = "ok  " if r.passed else "FAIL"
            shown = ""
            year = f" ({r.threshold_year})" if r.threshold_year else ""
            if r.comparison is Comparison.IS_TRUE:
                if r.value is not None:
                    shown = f": {_show(r.value)}"
                if r.threshold is not None:
                    shown += f" (needs {_show(r.threshold)}){year}"
            elif r.value is not None or r.threshold is not None:
                shown = f": {_show(r.value, r.threshold)} {r.comparison.value} {_show(r.threshold)}{year}"
            conf = f" [{r.confidence}]"
            lines.append(f"  {'  ' * depth}{mark} {r.name}{shown}{conf}")
            for c in r.children:
                walk(c, depth + 1)

        for r in f.requirements:
            walk(r, 0)
        if f.amounts:
            lines.append("  amounts: " + ", ".join(f"{k} {_show(v)}" for k, v in f.amounts.items()))
        lines.append(
            f"  custody model {self.custody_model.value}; rests on {len(self.events)} ledger events "
            f"(ledger {self.ledger.origin} size {self.ledger.size}, head {self.ledger.head[:16]}..)"
        )
        unconfirmed = f.unconfirmed_parameters()
        if unconfirmed:
            lines.append("  unconfirmed parameters (?): " + ", ".join(p.name for p in unconfirmed))
        lines += [f"  warning: {w}" for w in f.warnings]
        lines += [f"  note: {n}" for n in f.notes]
        return lines


def _show(value: Decimal | str | None, threshold: Decimal | str | None = None) -> str:
    """A number as a person reads it: thousands separated, fractions to 6 places; exact when rounding
    would put it on or across its threshold (a failing 0.5999996 never reads 0.6, review B9)."""
    if value is None:
        return "-"
    if isinstance(value, Decimal) and isinstance(threshold, Decimal):
        shown = value.quantize(QTY) if abs(value) < 1000 else value.quantize(MONEY)
        if (value > threshold) - (value < threshold) != (shown > threshold) - (shown < threshold):
            return _fmt(value)
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return f"{value:,.0f}"
        if abs(value) >= 1000:
            return f"{value:,.2f}"
        return _fmt(value.quantize(QTY))
    return value


def _requirement_json(r: Requirement) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {
        "name": r.name,
        "passed": r.passed,
        "value": r.value,
        "comparison": r.comparison.value,
        "threshold": r.threshold,
        "threshold_year": r.threshold_year,
        "citation": r.citation,
        "confidence": r.confidence,
        "note": r.note,
    }
    if r.children:
        out["children"] = [_requirement_json(c) for c in r.children]
    return out


def _jsonable(value: Any) -> JsonValue:
    if isinstance(value, StrEnum):
        return value.value
    if value is None or isinstance(value, bool | int | str | Decimal):
        return value
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


# -- reading the ledger -----------------------------------------------------------------------------
def _dec(x: float, step: Decimal = QTY) -> Decimal:
    """A float from the provenance index as a Decimal at a stated resolution."""
    return Decimal(repr(x)).quantize(step, rounding=ROUND_HALF_EVEN)


def _fmt(x: Decimal) -> str:
    return format(x.normalize(), "f")


class _View:
    """Read-only access to one ledger for one audit, with caches (each event decoded once)."""

    def __init__(self, led: Ledger) -> None:
        self.led = led
        self._batches: dict[str, BatchState] = {}
        self._events: dict[str, DecodedEvent] = {}
        self._prov: dict[str, Provenance] = {}
        self._certs: dict[str, tuple[str, SupplierCertified]] | None = None

    def batch(self, batch_id: str, field: str) -> BatchState:
        b = self._batches.get(batch_id)
        if b is None:
            found = self.led.batch(batch_id)
            if found is None:
                raise AuditError(
                    field, f"batch {batch_id!r} is not in the ledger {self.led.origin}: check the id"
                )
            self._batches[batch_id] = b = found
        return b

    def event(self, event_id: str) -> DecodedEvent:
        d = self._events.get(event_id)
        if d is None:
            rows = self.led.entry_data([event_id])
            if event_id not in rows:
                raise AuditError(
                    "ledger", f"event {event_id} is not in the entries: run `batteryledger verify`"
                )
            seq, data = rows[event_id]
            try:
                d = decode(data)
            except EventError as exc:
                raise AuditError(
                    "ledger", f"stored entry {seq} does not decode ({exc.detail}): run `batteryledger verify`"
                ) from None
            self._events[event_id] = d
        return d

    def outputs(self, b: BatchState) -> list[BatchOutput]:
        return list(getattr(self.event(b.event_id).event, "outputs", []))

    def output(self, b: BatchState) -> BatchOutput:
        for o in self.outputs(b):
            if o.batch_id == b.batch_id:
                return o
        raise AuditError(
            "ledger", f"event {b.event_id} does not make batch {b.batch_id}: run `batteryledger verify`"
        )

    def inputs(self, b: BatchState) -> list[tuple[BatchState, Decimal]]:
        ev = self.event(b.event_id).event
        return [(self.batch(i.batch_id, "ledger"), i.kg) for i in getattr(ev, "inputs", [])]

    def value_share(self, b: BatchState) -> Decimal:
        """This output's share of its event's inputs (P_ALLOCATION)."""
        outs = self.outputs(b)
        if len(outs) < 2:
            return Decimal(1)
        values = [o.value_usd for o in outs]
        if any(v is None for v in values) or b.value_usd is None:
            total_kg = sum((o.kg for o in outs), Decimal(0))
            return b.kg / total_kg if total_kg > 0 else Decimal(0)
        total = sum((v for v in values if v is not None), Decimal(0))
        return b.value_usd / total if total > 0 else Decimal(0)

    def provenance(self, batch_id: str) -> Provenance:
        p = self._prov.get(batch_id)
        if p is None:
            self._prov[batch_id] = p = self.led.provenance(batch_id)
        return p

    def entries(self, event_ids: Iterable[str]) -> list[EventRef]:
        out: list[EventRef] = []
        with self.led.engine.connect() as conn:
            for part in chunks(sorted(set(event_ids))):
                rows = conn.execute(
                    select(
                        ENTRIES.c.event_id,
                        ENTRIES.c.seq,
                        ENTRIES.c.kind,
                        ENTRIES.c.leaf_hash,
                        ENTRIES.c.entry_hash,
                    ).where(ENTRIES.c.event_id.in_(part))
                )
                out.extend(
                    EventRef(
                        r.event_id, int(r.seq), r.kind, bytes(r.leaf_hash).hex(), bytes(r.entry_hash).hex()
                    )
                    for r in rows
                )
        return sorted(out, key=lambda e: e.seq)

    def events_of_kind(self, kind: Kind) -> list[tuple[int, DecodedEvent]]:
        with self.led.engine.connect() as conn:
            rows = conn.execute(
                select(ENTRIES.c.seq, ENTRIES.c.event_id, ENTRIES.c.data)
                .where(ENTRIES.c.kind == kind.value)
                .order_by(ENTRIES.c.seq)
            ).all()
        out: list[tuple[int, DecodedEvent]] = []
        for r in rows:
            try:
                d = decode(bytes(r.data))
            except EventError as exc:
                raise AuditError(
                    "ledger",
                    f"stored entry {r.seq} does not decode ({exc.detail}): run `batteryledger verify`",
                ) from None
            self._events.setdefault(d.event_id, d)
            out.append((int(r.seq), d))
        return out

    def plant_batches(self, facility_id: str, kind: Kind) -> list[BatchState]:
        with self.led.engine.connect() as conn:
            rows = conn.execute(
                select(BATCHES)
                .where(BATCHES.c.facility_id == facility_id)
                .where(BATCHES.c.kind == kind.value)
                .order_by(BATCHES.c.seq)
            ).all()
        out = [row_to_batch(r) for r in rows]
        for b in out:
            self._batches.setdefault(b.batch_id, b)
        return out

    def certifications(self) -> dict[str, tuple[str, SupplierCertified]]:
        """Supplier certifications by the batch they cover (read once per audit)."""
        if self._certs is None:
            certs: dict[str, tuple[str, SupplierCertified]] = {}
            for _seq, d in self.events_of_kind(Kind.SUPPLIER_CERTIFIED):
                ev = d.event
                if isinstance(ev, SupplierCertified):
                    for covered in ev.batch_ids:
                        certs[covered] = (d.event_id, ev)  # in seq order: the latest certification wins
            self._certs = certs
        return self._certs

    def ledger_ref(self) -> LedgerRef:
        with self.led.engine.connect() as conn:
            last = conn.execute(
                select(ENTRIES.c.seq, ENTRIES.c.entry_hash).order_by(ENTRIES.c.seq.desc()).limit(1)
            ).first()
            ck = conn.execute(select(CHECKPOINTS.c.size).order_by(CHECKPOINTS.c.size.desc()).limit(1)).first()
        size = 0 if last is None else int(last.seq) + 1
        head = "" if last is None else bytes(last.entry_hash).hex()
        return LedgerRef(self.led.origin, size, head, None if ck is None else int(ck.size))


def _pack_param(pack: RulePack, path: str) -> ParameterUse:
    """A pack parameter as the audit relied on it (for the finding's parameter list)."""
    p = pack.lookup(path)
    return ParameterUse(name=path, value=p.shown(), citation=p.citation, confidence=p.confidence, note=p.note)


# -- the audit --------------------------------------------------------------------------------------
@dataclass
class _Work:
    view: _View
    pack: RulePack
    claim: Claim
    facts: list[Fact] = field(default_factory=list)
    params: dict[str, ParameterUse] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    subjects: list[BatchState] = field(default_factory=list)
    #: checks of ledger facts the rule engine does not make, added to the finding's requirements
    ledger_checks: list[Requirement] = field(default_factory=list)

    def fact(
        self, name: str, value: FactValue, unit: str = "", batch: str | None = None, how: str = ""
    ) -> None:
        self.facts.append(Fact(name, value, unit, batch, how))

    def use(self, *params: ParameterUse) -> None:
        for p in params:
            self.params[p.name] = p

    def subject(self, batch_id: str, field: str) -> BatchState:
        b = self.view.batch(batch_id, field)
        if all(s.batch_id != batch_id for s in self.subjects):
            self.subjects.append(b)
        return b


def audit(ledger: Ledger, claim: Claim, *, pack: RulePack | None = None) -> AuditResult:
    """Audit `claim` against `ledger` with rule pack `pack` (default: the shipped pack).

    Raises AuditError (one line: the claim field and what to fix) when the ledger cannot support the
    claim as written: an unknown batch, a batch of the wrong kind, a number the rule needs missing
    from the events.
    """
    rules = pack or load_pack(None)
    w = _Work(_View(ledger), rules, claim)
    try:
        if isinstance(claim, Claim45XFile):
            base = _audit_45x(w, claim)
        elif isinstance(claim, ClaimMacrFile):
            base = _audit_macr(w, claim)
        elif isinstance(claim, Claim30DFile):
            base = _audit_30d(w, claim)
        elif isinstance(claim, ClaimDomesticContentFile):
            base = _audit_domestic_content(w, claim)
        else:
            base = _audit_eu_recycled(w, claim)
    except TaxRuleError as exc:
        raise AuditError("", f"the rule engine refused the ledger's figures: {exc.diagnostics()}") from None
    if any(not r.passed for r in w.ledger_checks) and base.status != "not_applicable":
        # a failed ledger check takes the credit away, as a failed rule requirement does
        zeroed = {k: Decimal(0) for k in base.amounts if k.endswith("credit_usd")}
        base = base.model_copy(update={"amounts": {**base.amounts, **zeroed}})
    if base.status == "not_applicable":
        asserted: list[Requirement] = []
        if claim.asserted:
            w.notes.append(
                "asserted amounts not checked: the rule is not in force for the claim's dates "
                f"({', '.join(claim.asserted)})"
            )
    else:
        asserted = [
            _asserted_requirement(claim, key, value, base.amounts) for key, value in claim.asserted.items()
        ]
    # every subject's provenance ancestry (and the subject events themselves) is relied on
    for b in w.subjects:
        w.events.append(b.event_id)
        w.events.extend(w.view.provenance(b.batch_id).events)
    events = list(dict.fromkeys([*base.events, *w.events]))
    refs = w.view.entries(events)
    _warn_corrections(w, {e.event_id for e in refs})
    finding = _rebuild(
        base,
        requirements=[*base.requirements, *w.ledger_checks, *asserted],
        parameters=[*base.parameters_used, *w.params.values()],
        events=[e.event_id for e in refs],
        warnings=[*base.warnings, *w.warnings],
        notes=[*base.notes, *w.notes],
    )
    as_of = claim.as_of()
    return AuditResult(
        claim=claim,
        finding=finding,
        facts=tuple(w.facts),
        batches=tuple(_batch_ref(b) for b in w.subjects),
        events=tuple(refs),
        shares=_shares(w, as_of),
        ledger=w.view.ledger_ref(),
        as_of=as_of,
        custody_model=CustodyModel(w.view.provenance(w.subjects[0].batch_id).custody_model)
        if w.subjects
        else CustodyModel.MASS_BALANCE,
    )


def _rebuild(
    base: Finding,
    *,
    requirements: Sequence[Requirement],
    amounts: Mapping[str, Decimal] | None = None,
    parameters: Sequence[ParameterUse] | None = None,
    events: Sequence[str] | None = None,
    warnings: Sequence[str] | None = None,
    notes: Sequence[str] | None = None,
    inputs: Mapping[str, str] | None = None,
) -> Finding:
    """The finding with more requirements or facts; status follows: a rule not in force stays
    not_applicable (its own failed in-force test is the reason, not a failure of the claim), otherwise
    a failed requirement fails it."""
    failed = any(not r.passed for r in requirements)
    status: Status
    if base.status == "not_applicable":
        status = "not_applicable"
    elif requirements and not failed:
        status = "pass"
    else:
        status = "fail"
    used: dict[tuple[str, str], ParameterUse] = {}
    for p in parameters if parameters is not None else base.parameters_used:
        used[(p.name, p.applies_to)] = p
    return Finding(
        claim_kind=base.claim_kind,
        status=status,
        requirements=tuple(requirements),
        amounts=dict(amounts if amounts is not None else base.amounts),
        parameters_used=tuple(used.values()),
        custody_model=base.custody_model,
        events=tuple(dict.fromkeys(events if events is not None else base.events)),
        warnings=tuple(dict.fromkeys(warnings if warnings is not None else base.warnings)),
        notes=tuple(dict.fromkeys(notes if notes is not None else base.notes)),
        inputs=dict(inputs if inputs is not None else base.inputs),
        pack_id=base.pack_id,
        pack_version=base.pack_version,
    )


def _asserted_requirement(
    claim: Claim, key: str, asserted: Decimal, amounts: Mapping[str, Decimal]
) -> Requirement:
    direction = claim.assertable()[key]
    computed = amounts.get(key)
    word = "above" if direction == "max" else "below"
    name = f"asserted {key} not {word} the amount computed from the ledger"
    if computed is None:
        passed = False
        note = "not computed: the rule was not evaluated this far (see notes)"
    else:
        passed = asserted <= computed if direction == "max" else asserted >= computed
        note = "arithmetic check of the claim against the ledger, not a legal threshold"
    return Requirement(
        name=name,
        passed=passed,
        value=asserted,
        threshold=computed,
        comparison=Comparison.LE if direction == "max" else Comparison.GE,
        citation=ASSERTED_CITATION,
        confidence="P",
        note=note,
    )


def _check(
    name: str,
    passed: bool,
    *,
    value: Decimal | str | None,
    threshold: Decimal | str | None = None,
    citation: str = LEDGER_CITATION,
    confidence: Confidence = "P",
    note: str = "",
) -> Requirement:
    return Requirement(
        name=name,
        passed=passed,
        value=value,
        threshold=threshold,
        comparison=Comparison.IS_TRUE,
        citation=citation,
        confidence=confidence,
        note=note,
    )


def _group(name: str, children: Sequence[Requirement]) -> Requirement:
    citations = list(dict.fromkeys(c.citation for c in children if c.citation))
    return Requirement(
        name=name,
        passed=bool(children) and all(c.passed for c in children),
        comparison=Comparison.ALL_OF,
        citation="; ".join(citations),
        confidence=weakest([c.confidence for c in children]),
        children=tuple(children),
    )


def _batch_ref(b: BatchState) -> BatchRef:
    return BatchRef(
        batch_id=b.batch_id,
        kind=b.kind.value,
        material=b.material,
        facility_id=b.facility_id,
        country=b.country,
        time=b.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        kg=b.kg,
        value_usd=b.value_usd,
        event_id=b.event_id,
        seq=b.seq,
        feoc=b.feoc,
        pfe=b.pfe,
    )


def _warn_corrections(w: _Work, event_ids: set[str]) -> None:
    for _seq, d in w.view.events_of_kind(Kind.CORRECTION):
        ev = d.event
        if isinstance(ev, Correction) and ev.corrects in event_ids:
            w.warnings.append(
                f"event {ev.corrects[:16]}.. relied on is corrected by event {d.event_id[:16]}.. "
                f"({ev.reason}: {ev.explanation}): the ledger keeps the original; re-check this finding"
            )


def _shares(w: _Work, as_of: date) -> dict[str, dict[str, Decimal]]:
    """Per-element shares (SHARE_LABELS) over the subject batches, mass-weighted."""
    geo = w.pack.geography
    us = "US"

    def qualifies(code: str) -> bool:
        return code == us or geo.fta_countries.contains(code, as_of)

    def in_na(code: str) -> bool:
        return geo.north_america.contains(code, as_of)

    tests: dict[str, Any] = {
        "us": lambda o: (o[0] in ("mined", "recycled") and o[1] == us) or o[3] == us,
        "us_or_fta": lambda o: (o[0] == "mined" and qualifies(o[1])) or (o[3] != "" and qualifies(o[3])),
        "north_america": lambda o: (
            (o[0] in ("mined", "recycled") and in_na(o[1])) or (o[3] != "" and in_na(o[3]))
        ),
        "recycled": lambda o: o[0] == "recycled",
        "feoc_touched": lambda o: o[4],
        "unknown": lambda o: o[0] == "unknown",
    }
    totals: dict[Element, float] = {}
    kg: dict[Element, dict[str, float]] = {}
    for b in w.subjects:
        for el, split in w.view.provenance(b.batch_id).elements.items():
            if split.contained_kg <= 0:
                continue
            totals[el] = totals.get(el, 0.0) + split.contained_kg
            bucket = kg.setdefault(el, dict.fromkeys(SHARE_LABELS, 0.0))
            for origin, v in split.origins.items():
                for name, test in tests.items():
                    if test(origin):
                        bucket[name] += v
    return {
        el.value: {name: min(Decimal(1), _dec(v / totals[el], SHARE)) for name, v in kg[el].items()}
        for el in ELEMENTS
        if el in totals
    }


# -- 45X ---------------------------------------------------------------------------------------------
_KINDS_45X: dict[Component, frozenset[Kind]] = {
    Component.CELL: frozenset({Kind.CELLS_PRODUCED}),
    Component.MODULE: frozenset({Kind.MODULES_ASSEMBLED, Kind.PACKS_ASSEMBLED}),
    Component.MODULE_WITHOUT_CELLS: frozenset({Kind.MODULES_ASSEMBLED, Kind.PACKS_ASSEMBLED}),
    Component.ELECTRODE_ACTIVE_MATERIAL: frozenset({Kind.MATERIAL_PRODUCED}),
    Component.CRITICAL_MINERAL: frozenset({Kind.BATCH_PROCESSED, Kind.MATERIAL_PRODUCED}),
}


def _mineral_of(pack: RulePack, material: str) -> tuple[str, str | None] | None:
    """(mineral, form) named by a ledger material such as lithium_hydroxide or purified_graphite."""
    tokens = material.lower().split("_")
    section = pack.credit45x
    minerals = set(section.critical_mineral_min_purity.value) | set(section.critical_mineral_forms.value)
    if "graphite" in tokens and "graphite" in minerals:
        return "graphite", None
    if tokens and tokens[0] in minerals:
        return tokens[0], "_".join(tokens[1:]) or None
    return None


def _is_eligible_input(pack: RulePack, view: _View, p: BatchState) -> tuple[bool, str]:
    """Whether a consumed batch was already a 45X eligible component (P_45X_ELIGIBLE_INPUTS)."""
    if p.material.endswith(EAM_SUFFIX):
        return True, "electrode active material"
    found = _mineral_of(pack, p.material)
    if found is None:
        return False, ""
    mineral, form = found
    out = view.output(p)
    purity = None if out.purity_pct is None else out.purity_pct / 100
    if is_applicable_critical_mineral(pack, mineral, purity=purity, form=form):
        how = f"{mineral} as {form}" if form else f"{mineral} at {out.purity_pct}%"
        return True, f"applicable critical mineral ({how})"
    return False, ""


def _audit_45x(w: _Work, claim: Claim45XFile) -> Finding:
    c = claim.component
    per_batch: list[tuple[str, Finding]] = []
    totals: dict[str, Decimal] = {}
    first_finding: Finding | None = None
    for i, bid in enumerate(claim.subject.batches):
        b = w.subject(bid, f"subject.batches[{i}]")
        allowed = _KINDS_45X[c]
        if b.kind not in allowed:
            raise AuditError(
                f"subject.batches[{i}]",
                f"{bid} is a {b.kind.value} batch; a {c.value} claim needs "
                f"{' or '.join(sorted(k.value for k in allowed))} batches",
            )
        finding, amounts = _45x_capacity(w, claim, b) if c in CAPACITY_COMPONENTS else _45x_cost(w, claim, b)
        per_batch.append((bid, finding))
        first_finding = first_finding or finding
        for k, v in amounts.items():
            totals[k] = totals.get(k, Decimal(0)) + v
    assert first_finding is not None
    if len(per_batch) == 1:
        requirements = list(first_finding.requirements)
    else:
        requirements = [_group(f"batch {bid}", f.requirements) for bid, f in per_batch]
    amounts = dict(totals)
    for key in ("rate", "phase_out_factor"):
        if key in first_finding.amounts:
            amounts = {key: first_finding.amounts[key], **amounts}
    all_na = all(f.status == "not_applicable" for _, f in per_batch)
    params = [p for _, f in per_batch for p in f.parameters_used]
    # the status follows from the requirements unless every batch is outside the rule (not_applicable)
    base = first_finding.model_copy(update={"status": "not_applicable" if all_na else "fail"})
    return _rebuild(
        base,
        requirements=requirements,
        amounts=amounts,
        parameters=params,
        warnings=[x for _, f in per_batch for x in f.warnings],
        notes=[x for _, f in per_batch for x in f.notes],
        events=[e for _, f in per_batch for e in f.events],
        inputs={
            k: v
            for k, v in first_finding.inputs.items()
            if k in ("component", "sale_year", "first_module_sale") or len(per_batch) == 1
        },
    )


def _45x_common_checks(w: _Work, claim: Claim45XFile, b: BatchState) -> tuple[list[Requirement], int]:
    """Checks of the ledger facts every 45X batch needs: where it was made, and when."""
    w.use(P_45X_PLACES)
    checks = [
        _check(
            f"{b.batch_id} produced in the United States",
            b.country in PLACES_45X,
            value=f"{b.facility_id} ({b.country})",
            threshold=", ".join(sorted(PLACES_45X)),
            citation=P_45X_PLACES.citation,
            confidence=P_45X_PLACES.confidence,
        )
    ]
    ledger_year = b.time.year
    w.fact("production_year", ledger_year, "", b.batch_id, "year of the producing event's time")
    if claim.production_year is not None:
        checks.append(
            _check(
                f"{b.batch_id} production year as claimed",
                claim.production_year == ledger_year,
                value=str(claim.production_year),
                threshold=str(ledger_year),
                note="the ledger's event time decides; the claim's production_year must match it",
            )
        )
    return checks, ledger_year


class _PfeFacts(TypedDict):
    taxable_year_start: date | None
    prohibited_foreign_entity_taxpayer: bool | None
    material_assistance: Finding | None
    integrated: bool
    integrated_same_facility: bool | None
    integrated_us_primary_share: Decimal | None


def _45x_pfe_facts(w: _Work, claim: Claim45XFile, b: BatchState) -> _PfeFacts:
    """The prohibited-foreign-entity facts of one 45X batch (review B5): the claim's taxable year and
    taxpayer status, and the MACR of the batch computed from the ledger when the rules reach the sale
    (linked into the 45X finding; when an input has no value the condition stays unconfirmed)."""
    cutoff = w.pack.macr.applies_to_taxable_years_beginning_after.value
    start = claim.taxable_year_start or date(claim.sale_year, 1, 1)
    facts = _PfeFacts(
        taxable_year_start=claim.taxable_year_start,
        prohibited_foreign_entity_taxpayer=claim.prohibited_foreign_entity_taxpayer,
        material_assistance=None,
        integrated=claim.integrated,
        integrated_same_facility=claim.integrated_same_facility,
        integrated_us_primary_share=claim.integrated_us_primary_share,
    )
    if start <= cutoff:
        return facts
    try:
        total, pfe, used = _macr_costs(w, [b], ["subject.batches"])
    except _NoCost as exc:
        w.warnings.append(f"material assistance cost ratio of {b.batch_id} not computed: {exc.args[1]}")
        return facts
    if total <= 0:
        return facts
    linked = evaluate_macr(
        w.pack,
        category=MacrCategory.CRITICAL_MINERAL
        if claim.component is Component.CRITICAL_MINERAL
        else MacrCategory.BATTERY_COMPONENT,
        total_direct_material_cost=total,
        pfe_cost=pfe,
        sale_year=claim.sale_year,
        taxable_year_start=claim.taxable_year_start,
        certifications=used,
        events=[b.event_id],
    )
    facts["material_assistance"] = linked
    w.notes.append(
        f"{b.batch_id}: material assistance cost ratio {_fmt(linked.amounts['macr'].quantize(SHARE))} "
        "computed from the ledger (linked MACR finding)"
    )
    return facts


def _finish_batch(finding: Finding, checks: list[Requirement], credit: Decimal) -> tuple[Finding, Decimal]:
    """Add the ledger checks to one batch's finding; a failed check zeroes its credit."""
    reqs = [*finding.requirements, *checks]
    rebuilt = _rebuild(finding, requirements=reqs)
    if rebuilt.status != "pass":
        credit = Decimal(0)
    return rebuilt, credit


def _45x_capacity(w: _Work, claim: Claim45XFile, b: BatchState) -> tuple[Finding, dict[str, Decimal]]:
    """Cells and modules: the rule is per unit (a cell, a module); the batch is `units` of them."""
    out = w.view.output(b)
    bid = b.batch_id
    if out.kwh is None or out.kwh <= 0:
        raise AuditError("subject.batches", f"{bid} has no kwh in its event: a capacity credit needs it")
    if not out.units:
        raise AuditError(
            "subject.batches", f"{bid} has no units in its event: the per-cell / per-module tests need it"
        )
    units = Decimal(out.units)
    unit_kwh = out.kwh / units
    w.fact("kwh", out.kwh, "kWh", bid, "outputs[].kwh of the producing event")
    w.fact("units", out.units, "", bid, "outputs[].units of the producing event")
    w.fact("kwh_per_unit", unit_kwh.quantize(QTY), "kWh", bid, "kwh / units")
    unit_kw: Decimal | None = None
    if out.max_discharge_kw is not None:
        unit_kw = out.max_discharge_kw / units
        w.fact("max_discharge_kw", out.max_discharge_kw, "kW", bid, "outputs[].max_discharge_kw")
    density: Decimal | None = None
    component = claim.component
    checks, year = _45x_common_checks(w, claim, b)
    first_sale = claim.first_module_sale
    nameplate: Decimal | None = None
    if component is Component.CELL:
        w.fact("wh_per_cell", (unit_kwh * 1000).quantize(QTY), "Wh", bid, "kwh x 1000 / units")
        if out.volume_l:
            density = out.kwh * 1000 / out.volume_l
            w.fact("volume_l", out.volume_l, "L", bid, "outputs[].volume_l")
            w.fact("wh_per_l", density.quantize(QTY), "Wh/L", bid, "kwh x 1000 / volume_l")
    else:
        cells_kwh = Decimal(0)
        module_inputs: list[str] = []
        for p, kg in w.view.inputs(b):
            if p.kind is Kind.CELLS_PRODUCED:
                p_out = w.view.output(p)
                if p_out.kwh is not None and p.kg > 0:
                    cells_kwh += p_out.kwh * kg / p.kg
                    w.fact(
                        "cells_kwh_consumed",
                        (p_out.kwh * kg / p.kg).quantize(QTY),
                        "kWh",
                        p.batch_id,
                        f"{_fmt(p_out.kwh)} kWh x {_fmt(kg)} kg / {_fmt(p.kg)} kg",
                    )
            elif p.kind in (Kind.MODULES_ASSEMBLED, Kind.PACKS_ASSEMBLED):
                module_inputs.append(p.batch_id)
        has_cells = cells_kwh > 0
        checks.append(
            _check(
                f"{bid} {'built from cells' if component is Component.MODULE else 'built without cells'}",
                has_cells if component is Component.MODULE else not has_cells,
                value=f"cell inputs {_fmt(cells_kwh)} kWh",
                citation=w.pack.lookup(
                    "credit45x.module_rate"
                    if component is Component.MODULE
                    else "credit45x.module_without_cells_rate"
                ).citation,
                confidence="P",
                note="the rate depends on it: modules using cells $10/kWh, without cells $45/kWh",
            )
        )
        if has_cells:
            outs = [o for o in w.view.outputs(b) if o.kwh]
            share = out.kwh / sum((o.kwh for o in outs if o.kwh), Decimal(0)) if len(outs) > 1 else Decimal(1)
            per_unit = cells_kwh * share / units
            nameplate = per_unit if component is Component.MODULE else None
            w.fact(
                "cells_nameplate_kwh_per_unit",
                per_unit.quantize(QTY),
                "kWh",
                bid,
                "kWh of the cells consumed (x this output's kWh share) / units",
            )
        if module_inputs:
            first_sale = False
            w.notes.append(
                f"{bid} is assembled from module batch(es) {', '.join(module_inputs)}: "
                "not the first module sold in its chain"
            )
    finding = credit_45x(
        w.pack,
        Claim45X(
            component=component,
            sale_year=claim.sale_year,
            production_year=year,
            capacity_kwh=unit_kwh,
            max_discharge_kw=unit_kw,
            cells_nameplate_kwh=nameplate,
            energy_density_wh_per_l=density,
            first_module_sale=first_sale if component is not Component.CELL else True,
            unit_id=bid,
            events=(b.event_id,),
            **_45x_pfe_facts(w, claim, b),
        ),
    )
    amounts: dict[str, Decimal] = {"units": units, "capacity_kwh": out.kwh}
    credit = Decimal(0)
    if "capped_capacity_kwh" in finding.amounts:
        capped = finding.amounts["capped_capacity_kwh"] * units
        amounts["capped_capacity_kwh"] = capped.quantize(QTY)
        factor = finding.amounts["phase_out_factor"]
        if finding.status == "pass":
            credit = (finding.amounts["rate"] * capped * factor).quantize(MONEY)
    w.notes.append(
        f"{bid}: evaluated per unit ({_fmt(unit_kwh)} kWh each) and multiplied by {out.units} units; "
        "cells and modules are credited per kWh, so production cost does not enter the amount"
    )
    finding, credit = _finish_batch(finding, checks, credit)
    amounts["credit_usd"] = credit
    return finding, amounts


def _45x_cost(w: _Work, claim: Claim45XFile, b: BatchState) -> tuple[Finding, dict[str, Decimal]]:
    """Electrode active materials and critical minerals: 10% of production cost, less eligible inputs."""
    out = w.view.output(b)
    bid = b.batch_id
    component = claim.component
    if out.production_cost_usd is None:
        raise AuditError(
            "subject.batches", f"{bid} has no production_cost_usd in its event: a cost-based credit needs it"
        )
    checks, year = _45x_common_checks(w, claim, b)
    if component is Component.ELECTRODE_ACTIVE_MATERIAL:
        is_it, what = b.material.endswith(EAM_SUFFIX), f"material {b.material}"
        citation = w.pack.lookup("credit45x.electrode_active_material_rate").citation
    else:
        found = _mineral_of(w.pack, b.material)
        purity = None if out.purity_pct is None else out.purity_pct / 100
        is_it = found is not None and is_applicable_critical_mineral(
            w.pack, found[0], purity=purity, form=found[1]
        )
        what = f"material {b.material}" + (
            f", purity {out.purity_pct}%" if out.purity_pct is not None else ""
        )
        citation = w.pack.lookup("credit45x.critical_mineral_forms").citation
    checks.append(
        _check(
            f"{bid} is {'an electrode active material' if component is Component.ELECTRODE_ACTIVE_MATERIAL else 'an applicable critical mineral'}",
            is_it,
            value=what,
            citation=citation,
            confidence="P",
        )
    )
    w.use(P_ALLOCATION, P_45X_ELIGIBLE_INPUTS)
    if component is Component.ELECTRODE_ACTIVE_MATERIAL:
        w.use(P_45X_UNREFINED)
    share = w.view.value_share(b)
    items: list[CostItem] = []
    consumed_total = Decimal(0)
    for p, kg in w.view.inputs(b):
        if p.value_usd is None or p.kg <= 0:
            w.warnings.append(
                f"input {p.batch_id} of {bid} has no value_usd: its cost could not be classified"
            )
            continue
        cost = (p.value_usd * kg / p.kg * share).quantize(MONEY)
        consumed_total += cost
        eligible, why = _is_eligible_input(w.pack, w.view, p)
        if eligible:
            kind = CostKind.PURCHASED_ELIGIBLE_COMPONENT
        elif p.kind is Kind.BATCH_EXTRACTED:
            kind, why = CostKind.UNREFINED_MATERIAL, "unrefined (extracted) material"
        else:
            kind, why = CostKind.CONSTITUENT_MATERIAL, "constituent material"
        items.append(CostItem(f"input {p.batch_id}: {why}", cost, kind, (p.event_id,)))
        w.events.append(p.event_id)
        w.fact(
            "input_cost_usd",
            cost,
            "USD",
            p.batch_id,
            f"{_fmt(p.value_usd)} USD x {_fmt(kg)} kg / {_fmt(p.kg)} kg"
            + (f" x output share {_fmt(share.quantize(SHARE))}" if share != 1 else "")
            + f"; {kind.value}",
        )
    own = out.production_cost_usd - consumed_total
    w.fact("production_cost_usd", out.production_cost_usd, "USD", bid, "outputs[].production_cost_usd")
    if own < 0:
        raise AuditError(
            "subject.batches",
            f"{bid}: production_cost_usd {_fmt(out.production_cost_usd)} is less than the value of the inputs "
            f"it consumed ({_fmt(consumed_total)}): 45X production cost includes material costs, so the "
            "event's figures cannot support a cost-based credit",
        )
    items.insert(
        0, CostItem(f"{bid}: own production cost (less inputs)", own, CostKind.OWN_PRODUCTION, (b.event_id,))
    )
    w.fact("own_production_cost_usd", own, "USD", bid, "production_cost_usd - inputs consumed")
    finding = credit_45x(
        w.pack,
        Claim45X(
            component=component,
            sale_year=claim.sale_year,
            production_year=year,
            cost_items=tuple(items),
            unit_id=bid,
            events=(b.event_id,),
            **_45x_pfe_facts(w, claim, b),
        ),
    )
    amounts: dict[str, Decimal] = {
        k: finding.amounts[k]
        for k in ("production_cost_usd", "excluded_cost_usd", "eligible_production_cost_usd")
        if k in finding.amounts
    }
    credit = finding.amounts.get("credit_usd", Decimal(0))
    finding, credit = _finish_batch(finding, checks, credit)
    amounts["credit_usd"] = credit
    return finding, amounts


# -- 45X MACR ----------------------------------------------------------------------------------------
class _NoCost(Exception):
    """An input without value_usd: the MACR cannot be computed from the ledger."""


def _macr_costs(
    w: _Work, batches: Sequence[BatchState], fields: Sequence[str]
) -> tuple[Decimal, Decimal, list[SupplierCertification]]:
    """(total direct material cost, PFE cost, certifications relied on) of the batches' inputs, under
    the pack's macr.pfe_cost_attribution reading. Raises _NoCost naming an input without a value."""
    attribution = _pack_param(w.pack, "macr.pfe_cost_attribution")
    w.use(P_ALLOCATION, P_MACR_PFE, attribution)
    look_through = attribution.value == "look_through"
    certs = w.view.certifications()
    total = Decimal(0)
    pfe = Decimal(0)
    used: list[SupplierCertification] = []
    for b, field_name in zip(batches, fields, strict=True):
        bid = b.batch_id
        inputs = w.view.inputs(b)
        if not inputs:
            raise _NoCost(field_name, f"{bid} consumed no ledger inputs: it has no direct material cost")
        share = w.view.value_share(b)
        for p, kg in inputs:
            if p.value_usd is None or p.kg <= 0:
                raise _NoCost(
                    field_name,
                    f"input {p.batch_id} of {bid} has no value_usd: the material assistance cost ratio "
                    "needs the cost of every input",
                )
            fraction = kg / p.kg * share
            cost = p.value_usd * fraction
            how = f"{_fmt(p.value_usd)} USD x {_fmt(kg)} kg / {_fmt(p.kg)} kg" + (
                f" x output share {_fmt(share.quantize(SHARE))}" if share != 1 else ""
            )
            cert = certs.get(p.batch_id)
            if cert is not None and cert[1].facility_id == p.facility_id:
                cid, cev = cert
                if cev.statement == "not_prohibited_foreign_entity":
                    part, basis = (
                        Decimal(0),
                        f"supplier certification {cid[:16]}..: not a prohibited foreign entity",
                    )
                else:
                    share_pfe = cev.pfe_cost_share if cev.pfe_cost_share is not None else Decimal(1)
                    if share_pfe > 1:
                        raise AuditError(
                            "ledger", f"supplier certification {cid} gives pfe_cost_share {share_pfe} > 1"
                        )
                    part, basis = (
                        cost * share_pfe,
                        f"supplier certification {cid[:16]}..: PFE cost share {share_pfe}",
                    )
                used.append(
                    SupplierCertification(
                        supplier=cev.facility_id, event_id=cid, note=f"covers input {p.batch_id}"
                    )
                )
                w.notes.append(
                    f"input {p.batch_id}: the supplier certification (event {cid[:16]}..) replaces the "
                    "look-through of its value origins"
                )
            elif p.pfe:
                part, basis = cost, "bought from a prohibited foreign entity: whole cost"
            elif not look_through:
                part, basis = (
                    Decimal(0),
                    "not bought from a prohibited foreign entity (supplier-level attribution)",
                )
            else:
                flagged = sum((v for k, v in p.value.items() if k[3]), 0.0)
                part = Decimal(repr(flagged)) * fraction
                basis = f"look-through: {_fmt(_dec(flagged, MONEY))} USD of its value added by PFE steps x {_fmt(fraction.quantize(SHARE))}"
            total += cost
            pfe += part
            w.events.append(p.event_id)
            w.fact("direct_material_cost_usd", cost.quantize(MONEY), "USD", p.batch_id, how)
            w.fact("pfe_cost_usd", part.quantize(MONEY), "USD", p.batch_id, basis)
    total, pfe = total.quantize(MONEY), min(pfe.quantize(MONEY), total.quantize(MONEY))
    w.fact("total_direct_material_cost_usd", total, "USD", None, "sum over the inputs consumed")
    w.fact("total_pfe_cost_usd", pfe, "USD", None, "sum over the inputs consumed")
    return total, pfe, used


def _audit_macr(w: _Work, claim: ClaimMacrFile) -> Finding:
    batches = [w.subject(bid, f"subject.batches[{i}]") for i, bid in enumerate(claim.subject.batches)]
    try:
        total, pfe, used = _macr_costs(w, batches, [f"subject.batches[{i}]" for i in range(len(batches))])
    except _NoCost as exc:
        raise AuditError(*exc.args) from None
    return evaluate_macr(
        w.pack,
        category=claim.category,
        total_direct_material_cost=total,
        pfe_cost=pfe,
        sale_year=claim.sale_year,
        taxable_year_start=claim.taxable_year_start,
        certifications=used,
        events=[b.event_id for b in w.subjects],
    )


# -- 30D -------------------------------------------------------------------------------------------
def _refined_value(nodes: Mapping[str, BatchNode], target: str) -> dict[Element, float]:
    """USD value of each element in `target` at its last refining step (P_30D_MINERAL_VALUE).

    A batch.processed batch sets its elements' value (its value_usd split by contained mass); every
    other step carries the value of what it consumed in proportion to element mass, as `node_mass`
    carries mass (the same known-fraction rule).
    """
    value: dict[str, dict[Element, float]] = {}
    for bid in post_order(nodes, target)[0]:
        n = nodes[bid]
        if STAGE_OF_KIND.get(n.kind) == Stage.PROCESSING and n.value_usd is not None:
            mass = sum(n.contained.get(el, 0.0) for el in ELEMENTS)
            value[bid] = (
                {
                    el: n.value_usd * n.contained.get(el, 0.0) / mass
                    for el in ELEMENTS
                    if n.contained.get(el, 0.0) > 0
                }
                if mass > 0
                else {}
            )
            continue
        here: dict[Element, float] = {}
        for el in ELEMENTS:
            own = n.contained.get(el, 0.0)
            if own <= 0:
                continue
            supplied_kg = sum(f.contained.get(el, 0.0) for f in n.external_feed)
            supplied_value = 0.0
            for parent, kg in n.inputs:
                p = nodes.get(parent)
                if p is None or p.kg <= 0:
                    continue
                supplied_kg += p.contained.get(el, 0.0) * kg / p.kg
                supplied_value += value.get(parent, {}).get(el, 0.0) * kg / p.kg
            if supplied_kg <= 0:
                continue
            produced = max(n.event_produced.get(el, own), own)
            known = min(1.0, supplied_kg / produced)
            here[el] = supplied_value * own * known / supplied_kg
        value[bid] = here
    return value.get(target, {})


ProcessingStep = tuple[str, float]
"""(country of a batch.processed step, USD it added per kg of contained element)."""
Chain = tuple[str, str, str, tuple[ProcessingStep, ...], bool]
"""(source, country, consumer, processing steps in order, feoc_touched): an origin that keeps every
processing step (review B4), where the provenance index keeps only the last processing country."""
_EPS = 1e-12


def _added_per_kg(n: BatchNode, nodes: Mapping[str, BatchNode]) -> float:
    """USD the producing step of `n` added per kg of contained element (its value added split by
    contained mass, as P_30D_MINERAL_VALUE splits value); 0 when a value is not recorded."""
    if n.value_usd is None:
        return 0.0
    consumed = 0.0
    for parent, kg in n.inputs:
        p = nodes.get(parent)
        if p is not None and p.value_usd is not None and p.kg > 0:
            consumed += p.value_usd * kg / p.kg
    total_out = n.event_value_out if n.event_value_out is not None else n.value_usd
    share = n.value_usd / total_out if total_out > 0 else 0.0
    added = max(0.0, (total_out - consumed) * share)
    mass = sum(n.contained.get(el, 0.0) for el in ELEMENTS)
    return added / mass if mass > 0 else 0.0


def processing_chains(nodes: Mapping[str, BatchNode], target: str) -> dict[Element, dict[Chain, float]]:
    """Contained kg of each element of `target` by chain, keeping every processing step's country and
    value added (review B4). The same mass balance as `ledger.provenance.node_mass` (parents' mass in
    proportion to kg consumed, scaled to the output's share of the event's production, a missing
    parent unknown), with the processing steps appended instead of overwritten."""
    unknown: Chain = ("unknown", "", "", (), False)
    mass: dict[str, dict[Element, dict[Chain, float]]] = {}
    for bid in post_order(nodes, target)[0]:
        n = nodes[bid]
        stage = STAGE_OF_KIND.get(n.kind)
        here: dict[Element, dict[Chain, float]] = {}
        step = (n.country, _added_per_kg(n, nodes)) if stage == Stage.PROCESSING else None
        for el in ELEMENTS:
            own = n.contained.get(el, 0.0)
            if own <= 0:
                here[el] = {}
                continue
            if stage == Stage.EXTRACTION:
                here[el] = {("mined", n.country, "", (), n.feoc): own}
                continue
            supplied: dict[Chain, float] = {}
            missing_kg = 0.0
            for parent, kg in sorted(n.inputs):
                p = nodes.get(parent)
                if p is None or parent not in mass:
                    missing_kg += kg
                    continue
                if p.kg <= 0:
                    continue
                for k, v in mass[parent][el].items():
                    supplied[k] = supplied.get(k, 0.0) + v * kg / p.kg
            input_kg = sum(kg for _, kg in n.inputs) + sum(f.kg for f in n.external_feed)
            unknown_fraction = missing_kg / input_kg if input_kg > 0 else 0.0
            for feed in n.external_feed:
                c = feed.contained.get(el, 0.0)
                if c > 0:
                    key: Chain = ("recycled", n.country, feed.consumer, (), n.feoc)
                    supplied[key] = supplied.get(key, 0.0) + c
            relabelled: dict[Chain, float] = {}
            for k, v in supplied.items():
                src, country, consumer, steps, feoc = k
                if src == "unknown":
                    new = unknown
                elif stage == Stage.RECYCLING:
                    new = (
                        k
                        if src == "recycled" and country == n.country and not steps
                        else (
                            "recycled",
                            n.country,
                            consumer if src == "recycled" else (n.feed_consumer or "post"),
                            (),
                            n.feoc,
                        )
                    )
                elif step is not None:
                    new = (src, country, consumer, (*steps, step), feoc or n.feoc)
                else:
                    new = (src, country, consumer, steps, feoc or n.feoc)
                relabelled[new] = relabelled.get(new, 0.0) + v
            total = sum(relabelled.values())
            produced = max(n.event_produced.get(el, own), own)
            if total <= _EPS:
                here[el] = {unknown: own}
                continue
            known = min(1.0, total / produced) * (1.0 - unknown_fraction)
            out = {k: v * own * known / total for k, v in relabelled.items()}
            if known < 1.0:
                out[unknown] = out.get(unknown, 0.0) + own * (1.0 - known)
            here[el] = {k: v for k, v in out.items() if v > _EPS}
        mass[bid] = here
    return mass.get(target, {})


def processing_share(pack: RulePack, steps: Sequence[ProcessingStep], day: date) -> float | None:
    """Share of a chain's processing value added in the US or an FTA country (None: no processing).
    Steps without a recorded value added weigh equally among themselves."""
    if not steps:
        return None
    total = sum(v for _c, v in steps)
    weights = [v for _c, v in steps] if total > 0 else [1.0] * len(steps)
    good = sum(
        w
        for (country, _v), w in zip(steps, weights, strict=True)
        if qualifying_location(pack, SupplyStep.PROCESSING, country, day)
    )
    return good / sum(weights)


def qualifying_part(
    extraction: bool | None, processing: float | None, recycling: bool | None, reading: str
) -> float:
    """The part of a chain's value that is traced qualifying value (cv30d.traced_chain_reading, review
    Q4): whole if extracted in the US/FTA or recycled in North America; otherwise by its processing
    steps, whole only if all were in the US/FTA ("whole_chain") or in proportion to the value they
    added there ("value_added")."""
    if extraction or recycling:
        return 1.0
    if processing is None:
        return 0.0
    if reading == "whole_chain":
        return 1.0 if processing >= 1.0 - _EPS else 0.0
    return processing


def _chain_text(c: Chain) -> str:
    source, country, consumer, steps, feoc = c
    if source == "unknown":
        return "unknown origin"
    parts = [f"{source} {country}" + (f" ({consumer}-consumer)" if consumer else "")]
    if steps:
        parts.append("processed " + " > ".join(country for country, _v in steps))
    if feoc:
        parts.append("FEOC-touched")
    return ", ".join(parts)


def _audit_30d(w: _Work, claim: Claim30DFile) -> Finding:
    bid = claim.subject.batches[0]
    b = w.subject(bid, "subject.batches[0]")
    if b.kind is not Kind.PACKS_ASSEMBLED:
        raise AuditError(
            "subject.batches[0]",
            f"{bid} is a {b.kind.value} batch; a 30D claim needs a packs.assembled batch",
        )
    w.ledger_checks.append(
        _check(
            f"{bid} assembled on or before the vehicle was placed in service",
            b.time.date() <= claim.placed_in_service,
            value=b.time.date().isoformat(),
            threshold=f"<= {claim.placed_in_service}",
            note="a vehicle cannot have been placed in service with a battery pack assembled later",
        )
    )
    prov = w.view.provenance(bid)
    pack = w.pack
    na = pack.geography.north_america
    day = claim.placed_in_service
    incremental = _pack_param(pack, "cv30d.component_incremental_value")
    w.use(incremental)
    if incremental.value != "steps_only":
        raise AuditError(
            "pack",
            f"cv30d.component_incremental_value {incremental.value!r} is not implemented by the audit "
            "(only steps_only); use a pack with steps_only",
        )
    w.use(P_30D_COMPONENT_STAGES, P_30D_FEOC_COMPONENT_STAGES, P_30D_MINERAL_VALUE, P_30D_CHAINS)
    # 1. battery components: incremental value of cell and module steps, by country
    na_value = 0.0
    comp_value = 0.0
    unknown_value = 0.0
    feoc_steps: list[str] = []
    for (stage, country, feoc, _pfe), v in prov.value_origins.items():
        if stage in COMPONENT_STAGES_30D:
            comp_value += v
            if na.contains(country, day):
                na_value += v
        elif stage == "unknown":
            unknown_value += v
        if stage in FEOC_COMPONENT_STAGES_30D and feoc:
            feoc_steps.append(f"{stage} {country}")
    denominator = comp_value + unknown_value
    if denominator <= 0:
        raise AuditError(
            "subject.batches[0]", f"{bid}: the ledger records no cell or module value in its chain"
        )
    bc_content = min(Decimal(1), _dec(na_value / denominator, SHARE))
    w.fact(
        "component_value_north_america_usd",
        _dec(na_value, MONEY),
        "USD",
        bid,
        "value origins: cell and module steps in US/CA/MX",
    )
    w.fact("component_value_usd", _dec(comp_value, MONEY), "USD", bid, "value origins: cell and module steps")
    w.fact(
        "unknown_step_value_usd",
        _dec(unknown_value, MONEY),
        "USD",
        bid,
        "value origins of unknown step (counted as not North American)",
    )
    w.fact("battery_component_content", bc_content, "fraction", bid, "North American / (component + unknown)")
    # 2. critical minerals: per element and origin, valued at the last refining step
    nodes = w.view.led.ancestor_nodes(bid)
    values = _refined_value(nodes, bid)
    traced = processing_chains(nodes, bid)
    reading_param = _pack_param(pack, "cv30d.traced_chain_reading")
    reading = reading_param.value
    w.use(reading_param)
    chains: list[MineralChain] = []
    feoc_elements: set[Element] = set()
    for el, split in prov.elements.items():
        if split.contained_kg <= 0:
            continue
        el_value = values.get(el, 0.0)
        w.fact(f"{el.value}_contained_kg", _dec(split.contained_kg), "kg", bid, "contained mass (provenance)")
        w.fact(
            f"{el.value}_value_usd",
            _dec(el_value, MONEY),
            "USD",
            bid,
            "value at the last refining step, by mass balance",
        )
        if el_value <= 0:
            w.warnings.append(
                f"{el.value}: no refined value recorded in the chain; left out of the critical-mineral value"
            )
        qualifying_kg = 0.0
        for origin, kg in split.origins.items():
            if origin[4] and kg > 0:
                feoc_elements.add(el)
        for chain, kg in sorted(traced.get(el, {}).items()):
            source, country, _consumer, steps, _feoc = chain
            extraction = (
                None if source != "mined" else qualifying_location(pack, SupplyStep.EXTRACTION, country, day)
            )
            recycling = (
                None
                if source != "recycled"
                else qualifying_location(pack, SupplyStep.RECYCLING, country, day)
            )
            processing = processing_share(pack, steps, day)
            part = qualifying_part(extraction, processing, recycling, reading)
            qualifying_kg += kg * part
            chain_value = _dec(el_value * kg / split.contained_kg, MONEY)
            if el_value > 0:
                chains.append(
                    MineralChain(
                        chain_id=f"{el.value}: {_chain_text(chain)}",
                        total_value_usd=chain_value,
                        traced_qualifying_value_usd=min(chain_value, _dec(float(chain_value) * part, MONEY)),
                        extraction_value_added_share=None if extraction is None else Decimal(int(extraction)),
                        processing_value_added_share=None
                        if processing is None
                        else min(Decimal(1), _dec(processing, SHARE)),
                        recycling_value_added_share=None if recycling is None else Decimal(int(recycling)),
                    )
                )
                if len(steps) > 1:
                    w.notes.append(
                        f"{el.value}: chain {_chain_text(chain)}: "
                        f"{_fmt(_dec(processing or 0.0, SHARE))} of its processing value added in the US or "
                        "FTA countries"
                    )
        w.fact(
            f"{el.value}_qualifying_share",
            min(Decimal(1), _dec(qualifying_kg / split.contained_kg, SHARE)),
            "fraction",
            bid,
            "mass extracted or processed in US/FTA or recycled in North America / contained mass",
        )
    if not chains:
        raise AuditError(
            "subject.batches[0]", f"{bid}: no critical-mineral value could be traced in its chain"
        )
    feoc_mineral = bool(feoc_elements)
    only_impracticable = feoc_mineral and feoc_elements <= IMPRACTICABLE_ELEMENTS_30D
    if only_impracticable:
        w.use(P_30D_IMPRACTICABLE)
    if feoc_elements:
        w.notes.append("FEOC-touched critical minerals: " + ", ".join(sorted(e.value for e in feoc_elements)))
    if feoc_steps:
        w.notes.append("battery-component steps at FEOC facilities: " + ", ".join(sorted(set(feoc_steps))))
    return evaluate_30d(
        pack,
        acquired=claim.acquired,
        placed_in_service=claim.placed_in_service,
        battery_component_content=bc_content,
        mineral_chains=chains,
        report_date=claim.report_date,
        feoc_battery_component=bool(feoc_steps),
        feoc_critical_mineral=feoc_mineral,
        feoc_only_impracticable_to_trace=only_impracticable,
        events=[b.event_id],
    )


# -- 48E / 45Y domestic content -----------------------------------------------------------------------
def _audit_domestic_content(w: _Work, claim: ClaimDomesticContentFile) -> Finding:
    w.use(P_DOMESTIC_COST)
    domestic = Decimal(0)
    total = Decimal(0)
    for i, bid in enumerate(claim.subject.batches):
        b = w.subject(bid, f"subject.batches[{i}]")
        if b.value_usd is None:
            raise AuditError(
                f"subject.batches[{i}]", f"{bid} has no value_usd: the domestic cost test needs it"
            )
        prov = w.view.provenance(bid)
        us = sum((v for (_stage, country, _f, _p), v in prov.value_origins.items() if country == "US"), 0.0)
        us_usd = min(b.value_usd, _dec(us, MONEY))
        domestic += us_usd
        total += b.value_usd
        w.fact("value_usd", b.value_usd, "USD", bid, "outputs[].value_usd")
        w.fact("us_value_added_usd", us_usd, "USD", bid, "value origins added by steps in the US")
    if claim.steel_iron_us_share is not None:
        w.notes.append(
            "steel_iron_us_share is taken from the claim (the ledger does not track steel and iron)"
        )
    w.notes.append(f"project {claim.subject.project}: components {', '.join(claim.subject.batches)}")
    return evaluate_domestic_content(
        w.pack,
        construction_year=claim.construction_year,
        construction_start=claim.construction_start,
        credit=CleanElectricityCredit.INVESTMENT_48E
        if claim.kind == "48e"
        else CleanElectricityCredit.PRODUCTION_45Y,
        domestic_cost=domestic,
        total_cost=total,
        steel_iron_us_share=claim.steel_iron_us_share,
        offshore_wind=claim.offshore_wind,
        prevailing_wage=claim.prevailing_wage,
        base_credit_usd=claim.base_credit_usd,
        events=[b.event_id for b in w.subjects],
    )


# -- EU recycled content -----------------------------------------------------------------------------
_EU_ELEMENTS: dict[Element, RecycledMaterial] = {
    Element.CO: RecycledMaterial.COBALT,
    Element.LI: RecycledMaterial.LITHIUM,
    Element.NI: RecycledMaterial.NICKEL,
}


def _audit_eu_recycled(w: _Work, claim: ClaimEuRecycledFile) -> Finding:
    s = claim.subject
    if s.facility not in w.view.led.registry.facilities:
        raise AuditError("subject.facility", f"{s.facility!r} is not a registered facility of this ledger")
    w.use(P_EU_SCOPE)
    found: list[BatchState] = []
    for b in w.view.plant_batches(s.facility, Kind.CELLS_PRODUCED):
        made = b.time.date()
        if made.year != s.year or w.view.output(b).kwh is None:
            continue
        if (s.period_start and made < s.period_start) or (s.period_end and made > s.period_end):
            continue
        if s.battery_model is not None and b.material != s.battery_model:
            continue
        found.append(b)
    if not found:
        model = f" of model {s.battery_model}" if s.battery_model else ""
        raise AuditError("subject", f"the ledger has no cell batches{model} made by {s.facility} in {s.year}")
    total = dict.fromkeys(_EU_ELEMENTS, 0.0)
    pre = dict.fromkeys(_EU_ELEMENTS, 0.0)
    post = dict.fromkeys(_EU_ELEMENTS, 0.0)
    for b in found:
        w.subject(b.batch_id, "subject")
        prov = w.view.provenance(b.batch_id)
        for el in _EU_ELEMENTS:
            split = prov.elements[el]
            total[el] += split.contained_kg
            for (source, _c, consumer, _p, _f), kg in split.origins.items():
                if source == "recycled" and consumer == "pre":
                    pre[el] += kg
                elif source == "recycled" and consumer == "post":
                    post[el] += kg
    contents: list[RecycledContent] = []
    for el, material in _EU_ELEMENTS.items():
        if total[el] <= 0:
            continue
        t, a, c = _dec(total[el]), _dec(pre[el]), _dec(post[el])
        w.fact(f"{material.value}_kg", t, "kg", None, "contained mass summed over the batches")
        w.fact(
            f"{material.value}_pre_consumer_kg", a, "kg", None, "recycled pre-consumer origins (provenance)"
        )
        w.fact(
            f"{material.value}_post_consumer_kg", c, "kg", None, "recycled post-consumer origins (provenance)"
        )
        contents.append(
            recycled_content_from_masses(material, total_kg=t, pre_consumer_kg=a, post_consumer_kg=c)
        )
    models = s.battery_model or "all cell models (" + ", ".join(sorted({b.material for b in found})) + ")"
    w.notes.append(f"batches: {', '.join(b.batch_id for b in found)}")
    return evaluate_recycled_content(
        w.pack,
        plant_id=s.facility,
        battery_model=models,
        year=s.year,
        contents=contents,
        period_start=s.period_start,
        period_end=s.period_end,
        events=[b.event_id for b in found],
    )
