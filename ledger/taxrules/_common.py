"""Helpers shared by the rule modules: input checks and the custody-model requirement."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import Comparison, CustodyModel, Requirement
from ledger.taxrules.pack import ParamLog

CENT = Decimal("0.01")
#: years outside this range are typing mistakes, not tax years
YEAR_RANGE = (1900, 2200)


def finite(name: str, value: Decimal) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InputError(name, f"must be a finite decimal number, got {value!r}")
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
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def custody_requirement(log: ParamLog, model: CustodyModel) -> Requirement:
    """US rules here trace physical material: book and claim is not accepted (domain.md)."""
    path = "custody.us_accepted_models"
    accepted = log.texts(path)
    param = log.param(path)
    return Requirement(
        name="chain-of-custody model accepted for US rules",
        passed=model.value in accepted,
        value=model.value,
        threshold=", ".join(accepted),
        comparison=Comparison.IS_TRUE,
        citation=param.citation,
        confidence=param.confidence,
        note="no US rule here accepts book and claim",
    )
