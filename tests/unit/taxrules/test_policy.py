from __future__ import annotations

from decimal import Decimal

import pytest

from ledger.taxrules.errors import PolicyError
from ledger.taxrules.findings import Comparison
from ledger.taxrules.policy import AllOf, AnyOf, Condition, Threshold


def at_least(name: str, threshold: str, confidence: str = "P") -> Threshold[Decimal]:
    return Threshold(
        name,
        lambda x: x,
        Decimal(threshold),
        comparison=Comparison.GE,
        citation=f"cite {name}",
        confidence=confidence,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("combinator", [AllOf, AnyOf])
def test_empty_combination_is_refused(combinator: type[AllOf[Decimal]]) -> None:
    with pytest.raises(PolicyError, match="vacuously"):
        combinator()


@pytest.mark.parametrize(
    ("value", "comparison", "expected"),
    [
        ("0.5", Comparison.GE, True),
        ("0.4999", Comparison.GE, False),
        ("0.5", Comparison.GT, False),
        ("0.5001", Comparison.GT, True),
        ("0.5", Comparison.LE, True),
        ("0.5001", Comparison.LE, False),
        ("0.5", Comparison.LT, False),
        ("0.5", Comparison.EQ, True),
    ],
)
def test_threshold_comparisons_at_the_boundary(value: str, comparison: Comparison, expected: bool) -> None:
    policy = Threshold[Decimal](
        "x", lambda x: x, Decimal("0.5"), comparison=comparison, citation="c", confidence="P"
    )
    req = policy.evaluate(Decimal(value))
    assert req.passed is expected
    assert req.value == Decimal(value)
    assert req.threshold == Decimal("0.5")
    assert req.comparison is comparison


def test_threshold_refuses_non_numeric_comparison() -> None:
    with pytest.raises(PolicyError):
        Threshold[Decimal](
            "x", lambda x: x, Decimal(1), comparison=Comparison.ANY_OF, citation="c", confidence="P"
        )


def test_missing_value_fails_and_says_so() -> None:
    req = Threshold[Decimal | None](
        "x", lambda x: x, Decimal(0), comparison=Comparison.GE, citation="c", confidence="P"
    ).evaluate(None)
    assert not req.passed
    assert "not supplied" in req.note


def test_all_of_needs_every_part() -> None:
    policy = AllOf(at_least("a", "0.4"), at_least("b", "0.6"))
    assert policy.evaluate(Decimal("0.6")).passed
    failed = policy.evaluate(Decimal("0.5"))
    assert not failed.passed
    assert [c.passed for c in failed.children] == [True, False]
    assert failed.comparison is Comparison.ALL_OF
    assert failed.citation == "cite a; cite b"


def test_any_of_needs_one_part() -> None:
    policy = AnyOf(at_least("a", "0.4"), at_least("b", "0.6"))
    assert policy.evaluate(Decimal("0.4")).passed
    assert not policy.evaluate(Decimal("0.39")).passed


def test_nested_composition_and_weakest_confidence() -> None:
    policy = AllOf(
        at_least("a", "0.1"), AnyOf(at_least("b", "0.5", "?"), at_least("c", "0.2", "S")), name="n"
    )
    req = policy.evaluate(Decimal("0.3"))
    assert req.passed
    assert req.name == "n"
    assert req.confidence == "?"
    assert req.children[1].confidence == "?"
    assert [c.passed for c in req.children[1].children] == [False, True]


def test_condition_shows_value() -> None:
    req = Condition[bool](
        "flag", lambda x: x, citation="c", confidence="S", show=lambda x: str(x), threshold="true"
    ).evaluate(False)
    assert not req.passed
    assert req.value == "False"
    assert req.comparison is Comparison.IS_TRUE
