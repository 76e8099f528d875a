"""Composable policies: a tax rule is a policy evaluated against a subject, giving a Requirement.

Modelled on sigstore-python's verification policies: leaves test one thing, `AllOf` and `AnyOf`
combine them, and an empty combination is refused at construction so nothing passes vacuously.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from decimal import Decimal
from typing import Generic, TypeVar

from ledger.taxrules.errors import PolicyError
from ledger.taxrules.findings import Comparison, Confidence, Requirement, compare, weakest

S = TypeVar("S", contravariant=True)


class Policy(ABC, Generic[S]):
    """Evaluates a subject (a claim, a chain, a vehicle) to one Requirement."""

    name: str

    @abstractmethod
    def evaluate(self, subject: S) -> Requirement: ...


class Threshold(Policy[S]):
    """A measured value compared with a threshold; a missing value fails and says so."""

    def __init__(
        self,
        name: str,
        measure: Callable[[S], Decimal | None],
        threshold: Decimal,
        *,
        comparison: Comparison,
        citation: str,
        confidence: Confidence,
        note: str = "",
        threshold_year: int | None = None,
    ) -> None:
        if comparison in (Comparison.IS_TRUE, Comparison.ALL_OF, Comparison.ANY_OF):
            raise PolicyError(f"policy {name!r}: {comparison.value!r} is not a numeric comparison")
        self.name = name
        self.measure = measure
        self.threshold = threshold
        self.comparison = comparison
        self.citation = citation
        self.confidence: Confidence = confidence
        self.note = note
        self.threshold_year = threshold_year

    def evaluate(self, subject: S) -> Requirement:
        value = self.measure(subject)
        note = self.note
        if value is None:
            passed = False
            note = "; ".join(x for x in (note, "value not supplied") if x)
        else:
            passed = compare(value, self.comparison, self.threshold)
        return Requirement(
            name=self.name,
            passed=passed,
            value=value,
            threshold=self.threshold,
            threshold_year=self.threshold_year,
            comparison=self.comparison,
            citation=self.citation,
            confidence=self.confidence,
            note=note,
        )


class Condition(Policy[S]):
    """A yes/no test, with an optional value shown to the auditor."""

    def __init__(
        self,
        name: str,
        test: Callable[[S], bool],
        *,
        citation: str,
        confidence: Confidence,
        note: str = "",
        show: Callable[[S], Decimal | str | None] | None = None,
        threshold: Decimal | str | None = None,
        threshold_year: int | None = None,
    ) -> None:
        self.name = name
        self.test = test
        self.citation = citation
        self.confidence: Confidence = confidence
        self.note = note
        self.show = show
        self.threshold = threshold
        self.threshold_year = threshold_year

    def evaluate(self, subject: S) -> Requirement:
        return Requirement(
            name=self.name,
            passed=bool(self.test(subject)),
            value=self.show(subject) if self.show else None,
            threshold=self.threshold,
            threshold_year=self.threshold_year,
            comparison=Comparison.IS_TRUE,
            citation=self.citation,
            confidence=self.confidence,
            note=self.note,
        )


class _Composite(Policy[S]):
    comparison: Comparison

    def __init__(self, *policies: Policy[S], name: str | None = None, note: str = "") -> None:
        if not policies:
            raise PolicyError(
                f"{type(self).__name__}() needs at least one policy: an empty combination would pass vacuously"
            )
        self.policies = policies
        self.name = name or f"{self.comparison.value}: " + ", ".join(p.name for p in policies)
        self.note = note

    @abstractmethod
    def _combine(self, results: list[bool]) -> bool: ...

    def evaluate(self, subject: S) -> Requirement:
        children = tuple(p.evaluate(subject) for p in self.policies)
        citations = list(dict.fromkeys(c.citation for c in children if c.citation))
        return Requirement(
            name=self.name,
            passed=self._combine([c.passed for c in children]),
            comparison=self.comparison,
            citation="; ".join(citations),
            confidence=weakest([c.confidence for c in children]),
            note=self.note,
            children=children,
        )


class AllOf(_Composite[S]):
    """Passes when every part passes."""

    comparison = Comparison.ALL_OF

    def _combine(self, results: list[bool]) -> bool:
        return all(results)


class AnyOf(_Composite[S]):
    """Passes when at least one part passes."""

    comparison = Comparison.ANY_OF

    def _combine(self, results: list[bool]) -> bool:
        return any(results)
