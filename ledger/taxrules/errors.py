"""Errors raised by the tax-rule engine; each explains what to fix in words a user can act on."""

from __future__ import annotations


class TaxRuleError(Exception):
    """Base error of ledger.taxrules. `diagnostics()` is the one line a CLI prints."""

    def diagnostics(self) -> str:
        return str(self)


class PackError(TaxRuleError):
    """A rule pack could not be read or does not match the pack format."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"rule pack {source}: " + "; ".join(problems))


class InputError(TaxRuleError):
    """A claim input is missing, out of range or contradicts another input."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class PolicyError(TaxRuleError):
    """A policy was built in a way that could pass vacuously or cannot be evaluated."""
