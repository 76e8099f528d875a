"""Helpers shared by the rule modules: input checks, parameter citations and the finding context."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import TypedDict

from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import (
    ClaimKind,
    Comparison,
    Confidence,
    CustodyModel,
    Finding,
    Requirement,
    make_finding,
)
from ledger.taxrules.pack import ParamLog

CENT = Decimal("0.01")
#: no claim input is this large (the ledger's own quantities stop at 10^12); larger is a typing mistake,
#: refused before any arithmetic could leave the decimal context (review B6)
MAX_MAGNITUDE = Decimal(10) ** 15
#: years outside this range are typing mistakes, not tax years
YEAR_RANGE = (1900, 2200)


def finite(name: str, value: Decimal) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InputError(name, f"must be a finite decimal number, got {value!r}")
    if abs(value) > MAX_MAGNITUDE:
        raise InputError(name, f"is {value}, above the largest accepted value 1e15: check the units")
    return value


def non_negative(name: str, value: Decimal) -> Decimal:
    if finite(name, value) < 0:
        raise InputError(name, f"must be >= 0, got {value}")
    return value


def positive(name: str, value: Decimal) -> Decimal:
    if finite(name, value) <= 0:
        raise InputError(name, f"must be > 0, got {value}")
    return value


def fraction(name: str, value: Decimal) -> Decimal:
    if not 0 <= finite(name, value) <= 1:
        raise InputError(name, f"is a fraction and must be between 0 and 1, got {value}")
    return value


def year(name: str, value: int) -> int:
    lo, hi = YEAR_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(name, f"must be a calendar year between {lo} and {hi}, got {value!r}")
    return value


def usd(value: Decimal) -> Decimal:
    """Round a dollar amount to cents, half up (the credit amounts reported)."""
    with localcontext() as ctx:
        ctx.prec = max(ctx.prec, value.adjusted() + 4)
        return value.quantize(CENT, rounding=ROUND_HALF_UP)


class Cited(TypedDict):
    """The `citation=` and `confidence=` keyword arguments of a policy or requirement."""

    citation: str
    confidence: Confidence


def cited(log: ParamLog, path: str) -> Cited:
    """Citation and confidence of the pack parameter at `path` (looked up, not recorded as read):
    `Threshold(..., **cited(log, path))`."""
    param = log.param(path)
    return Cited(citation=param.citation, confidence=log.confidence(path))


@dataclass
class FindingContext:
    """What every finding of one evaluation shares: claim kind, parameter log (and so the pack),
    custody model, events, warnings, notes and inputs.

    The rule fills the lists and `inputs` as it goes; `finish` reads them, and the parameters the log
    recorded, when the finding is built.
    """

    kind: ClaimKind
    log: ParamLog
    custody_model: CustodyModel
    events: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, object] = field(default_factory=dict)

    def custody_requirement(self) -> Requirement:
        """US rules here trace physical material: book and claim is not accepted (domain.md)."""
        path = "custody.us_accepted_models"
        accepted = self.log.texts(path)
        return Requirement(
            name="chain-of-custody model accepted for US rules",
            passed=self.custody_model.value in accepted,
            value=self.custody_model.value,
            threshold=", ".join(accepted),
            comparison=Comparison.IS_TRUE,
            **cited(self.log, path),
            note="no US rule here accepts book and claim",
        )

    def finish(
        self, requirements: Sequence[Requirement], amounts: Mapping[str, Decimal], applicable: bool = True
    ) -> Finding:
        """The finding: status from `requirements` (or not_applicable), with everything gathered so far."""
        pack = self.log.pack
        return make_finding(
            self.kind,
            requirements,
            parameters_used=self.log.used(),
            pack_id=pack.pack_id,
            pack_version=pack.version,
            amounts=amounts,
            custody_model=self.custody_model,
            events=self.events,
            warnings=self.warnings,
            notes=self.notes,
            inputs=self.inputs,
            applicable=applicable,
        )
