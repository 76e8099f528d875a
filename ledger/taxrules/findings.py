"""Findings: what a rule concluded, on which numbers, thresholds, parameters and events.

A finding is the unit an auditor re-checks. It is JSON-serialisable (`model_dump_json()`): decimals are
written as strings there, so nothing is lost in an evidence bundle. `dumps_json` is the other encoder,
writing decimals as JSON numbers for human-facing output (the CLI), still without passing through float.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, computed_field, model_validator

Confidence = Literal["P", "S", "?"]
Status = Literal["pass", "fail", "not_applicable"]

#: weakest first: a composite result is only as sure as its least sure part
CONFIDENCE_ORDER: tuple[Confidence, ...] = ("?", "S", "P")


def weakest(confidences: Sequence[Confidence]) -> Confidence:
    """The least certain of the given confidence marks ("?" < "S" < "P")."""
    return min(confidences, key=CONFIDENCE_ORDER.index) if confidences else "?"


class ClaimKind(StrEnum):
    CREDIT_45X = "45X"
    MACR_45X = "45X-MACR"
    DOMESTIC_CONTENT_48E = "48E-domestic-content"
    DOMESTIC_CONTENT_45Y = "45Y-domestic-content"
    CLEAN_VEHICLE_30D = "30D"
    EU_RECYCLED_CONTENT = "EU-2023/1542-recycled-content"


class CustodyModel(StrEnum):
    """ISO 22095:2020 chain-of-custody models."""

    IDENTITY_PRESERVED = "identity_preserved"
    SEGREGATED = "segregated"
    CONTROLLED_BLENDING = "controlled_blending"
    MASS_BALANCE = "mass_balance"
    BOOK_AND_CLAIM = "book_and_claim"


class Comparison(StrEnum):
    GE = ">="
    GT = ">"
    LE = "<="
    LT = "<"
    EQ = "=="
    IS_TRUE = "is true"
    ALL_OF = "all of"
    ANY_OF = "any of"


def compare(value: Decimal, comparison: Comparison, threshold: Decimal) -> bool:
    """Apply a numeric comparison; the composite and boolean forms are not numeric."""
    if comparison is Comparison.GE:
        return value >= threshold
    if comparison is Comparison.GT:
        return value > threshold
    if comparison is Comparison.LE:
        return value <= threshold
    if comparison is Comparison.LT:
        return value < threshold
    if comparison is Comparison.EQ:
        return value == threshold
    raise ValueError(f"{comparison.value!r} is not a numeric comparison")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Requirement(_Frozen):
    """One tested condition. Composite requirements (all of / any of) carry their parts in `children`."""

    name: str
    passed: bool
    value: Decimal | str | None = None
    threshold: Decimal | str | None = None
    threshold_year: int | None = None
    comparison: Comparison
    citation: str
    confidence: Confidence
    note: str = ""
    children: tuple[Requirement, ...] = ()


class ParameterUse(_Frozen):
    """A rule-pack parameter (or a user-supplied table) that a finding relied on."""

    name: str
    value: str
    applies_to: str = ""
    citation: str
    confidence: Confidence
    note: str = ""


class Finding(_Frozen):
    """The outcome of one claim: status, requirements, amounts and the evidence it rests on.

    `status` is "pass" only when there is at least one requirement and every top-level requirement
    passed; nothing passes vacuously. "not_applicable" says the rule was not in force for the inputs
    (e.g. a date before the regime began): a clear answer, not an error.
    """

    claim_kind: ClaimKind
    status: Status
    requirements: tuple[Requirement, ...]
    amounts: dict[str, Decimal]
    parameters_used: tuple[ParameterUse, ...]
    custody_model: CustodyModel
    events: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    inputs: dict[str, str] = {}
    pack_id: str
    pack_version: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @model_validator(mode="after")
    def _status_matches_requirements(self) -> Finding:
        all_passed = bool(self.requirements) and all(r.passed for r in self.requirements)
        if self.status == "pass" and not all_passed:
            raise ValueError("status 'pass' needs at least one requirement and all requirements passed")
        if self.status == "fail" and all_passed:
            raise ValueError("status 'fail' needs at least one failed requirement")
        return self

    def unconfirmed_parameters(self) -> list[ParameterUse]:
        """Parameters marked "?" in the pack: the finding depends on them and says so."""
        return [p for p in self.parameters_used if p.confidence == "?"]


def make_finding(
    kind: ClaimKind,
    requirements: Sequence[Requirement],
    *,
    parameters_used: Sequence[ParameterUse],
    pack_id: str,
    pack_version: str,
    amounts: Mapping[str, Decimal] | None = None,
    custody_model: CustodyModel = CustodyModel.MASS_BALANCE,
    events: Sequence[str] = (),
    warnings: Sequence[str] = (),
    notes: Sequence[str] = (),
    inputs: Mapping[str, object] | None = None,
    applicable: bool = True,
) -> Finding:
    """Build a finding whose status follows from its requirements (or is not_applicable)."""
    if not applicable:
        status: Status = "not_applicable"
    elif requirements and all(r.passed for r in requirements):
        status = "pass"
    else:
        status = "fail"
    return Finding(
        claim_kind=kind,
        status=status,
        requirements=tuple(requirements),
        amounts=dict(amounts or {}),
        parameters_used=tuple(parameters_used),
        custody_model=custody_model,
        events=tuple(dict.fromkeys(events)),
        warnings=tuple(warnings),
        notes=tuple(notes),
        inputs={k: _input_text(v) for k, v in (inputs or {}).items() if v is not None},
        pack_id=pack_id,
        pack_version=pack_version,
    )


def _input_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, StrEnum):
        return value.value
    return str(value)


# ---- JSON with decimal numbers (never via float) -------------------------------------------------

JsonValue = None | bool | int | str | Decimal | Sequence["JsonValue"] | Mapping[str, "JsonValue"]


def decimal_literal(value: Decimal) -> str:
    """A JSON number for a finite decimal, in plain notation without needless trailing zeros."""
    if not value.is_finite():
        raise ValueError(f"{value} cannot be written as a JSON number")
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def dumps_json(value: JsonValue) -> str:
    """Serialise to one line of JSON, writing Decimal as a JSON number exactly as it reads."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return decimal_literal(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}: {dumps_json(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return "[" + ", ".join(dumps_json(v) for v in value) + "]"
