"""Command line interface (placeholder until the core lands)."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("not yet")
