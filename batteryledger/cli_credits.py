"""`batteryledger credits ...`: evaluate one tax-credit rule from plain numbers.

Mounted by the main CLI as `credits`. Every command takes `--pack FILE` (a user rule pack; default the
shipped pack) and `--json`.

Input: fractions are 0..1 (0.6, not 60); money in USD; dates ISO 8601 (2024-03-01).

Output with `--json`: one JSON object on one line. Numbers are JSON numbers written from Decimal
(never via float): USD rounded to cents, fractions and other quantities to 6 decimal places, trailing
zeros dropped (3750, 0.6), except where rounding would hide which side of its threshold a value is on:
then the value is written exactly (0.5999996, not 0.6). Keys common to all commands: `status` ("pass", "fail", "not_applicable"),
`passes`, `requirements`, `warnings`, `notes`, `unconfirmed_parameters` (names of "?" parameters the
result rests on), `citations`, `pack` ({id, version}). The exit code is 0 whenever a finding was made,
whatever it says; bad input prints one line `error: ...` on stderr and exits 2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ledger.taxrules.credit45x import Claim45X, Component, credit_45x
from ledger.taxrules.cv30d import evaluate_30d
from ledger.taxrules.domestic_content import CleanElectricityCredit, evaluate_domestic_content
from ledger.taxrules.errors import InputError, TaxRuleError
from ledger.taxrules.findings import Comparison, Finding, JsonValue, Requirement, dumps_json
from ledger.taxrules.macr import MacrCategory, evaluate_macr
from ledger.taxrules.pack import RulePack, load_pack

credits_app = typer.Typer(
    name="credits",
    help="Evaluate US battery tax-credit rules (45X, MACR, 48E/45Y domestic content, former 30D).",
    no_args_is_help=True,
    add_completion=False,
)

CENT = Decimal("0.01")
MICRO = Decimal("0.000001")

#: function argument -> CLI option, so errors name what the user typed
OPTION_OF = {
    "capacity_kwh": "--capacity-kwh",
    "max_discharge_kw": "--max-discharge-kw",
    "production_cost": "--production-cost",
    "production_year": "--production-year",
    "sale_year": "--sale-year",
    "total_direct_material_cost": "--total-direct-cost",
    "pfe_cost": "--pfe-cost",
    "domestic_cost": "--domestic-cost",
    "total_cost": "--total-cost",
    "construction_year": "--construction-year",
    "construction_start": "--construction-start",
    "steel_iron_us_share": "--steel-iron-us-share",
    "taxable_year_start": "--taxable-year-start",
    "integrated": "--integrated",
    "integrated_us_primary_share": "--integrated-us-primary-share",
    "acquired": "--acquired",
    "placed_in_service": "--placed-in-service",
    "critical_mineral_content": "--critical-mineral-content",
    "battery_component_content": "--battery-component-content",
}

PackOpt = Annotated[
    Path | None,
    typer.Option("--pack", help="Rule pack JSON file (default: the shipped pack).", dir_okay=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _diagnose(exc: TaxRuleError) -> str:
    """The error in the CLI's words: argument names become the options the user typed."""
    text = exc.diagnostics()
    if isinstance(exc, InputError):
        text = f"{OPTION_OF.get(exc.field, exc.field)}: {exc.message}"
        for field, option in OPTION_OF.items():
            text = re.sub(rf"(?<![-\w]){field}\b", option, text)
    return text


def _number(option: str, text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise InputError(option, f"{text!r} is not a number") from None
    if not value.is_finite():
        raise InputError(option, f"{text!r} is not a finite number")
    if value < 0:
        raise InputError(option, f"must be >= 0, got {text}")
    return value


def _required_number(option: str, text: str) -> Decimal:
    value = _number(option, text)
    assert value is not None
    return value


def _fraction_opt(option: str, text: str) -> Decimal:
    value = _required_number(option, text)
    if value > 1:
        raise InputError(option, f"is a fraction between 0 and 1, got {text} (write 0.6, not 60)")
    return value


def _date(option: str, text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InputError(option, f"{text!r} is not a date (YYYY-MM-DD)") from None


def _round(value: Decimal | None, step: Decimal = MICRO) -> Decimal | None:
    if value is None:
        return None
    with localcontext() as ctx:  # never an InvalidOperation for a large value (review B6)
        ctx.prec = max(ctx.prec, value.adjusted() + 10)
        return value.quantize(step, rounding=ROUND_HALF_EVEN)


def _round_against(value: Decimal | None, threshold: Decimal | None) -> Decimal | None:
    """Rounded as usual, unless rounding would move the value onto or across its threshold: then the
    exact value, so a failing 0.5999996 never shows as 0.6 (review B9)."""
    rounded = _round(value)
    if value is None or rounded is None or threshold is None:
        return rounded
    side = (value > threshold) - (value < threshold)
    shown_side = (rounded > threshold) - (rounded < threshold)
    return rounded if side == shown_side else value


def _shown(value: Decimal | str | None, threshold: Decimal | str | None = None) -> JsonValue:
    if isinstance(value, Decimal):
        return _round_against(value, threshold if isinstance(threshold, Decimal) else None)
    return value


def _requirement(r: Requirement) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {
        "name": r.name,
        "passed": r.passed,
        "value": _shown(r.value, r.threshold),
        "comparison": r.comparison.value,
        "threshold": _shown(r.threshold),
        "threshold_year": r.threshold_year,
        "citation": r.citation,
        "confidence": r.confidence,
    }
    if r.note:
        out["note"] = r.note
    if r.children:
        out["children"] = [_requirement(c) for c in r.children]
    return out


def _citations(requirements: tuple[Requirement, ...]) -> list[str]:
    found: dict[str, None] = {}
    stack = list(requirements)
    while stack:
        r = stack.pop(0)
        for part in r.citation.split("; "):
            if part:
                found[part] = None
        stack.extend(r.children)
    return list(found)


def _common(finding: Finding) -> dict[str, JsonValue]:
    return {
        "status": finding.status,
        "passes": finding.passed,
        "requirements": [_requirement(r) for r in finding.requirements],
        "warnings": list(finding.warnings),
        "notes": list(finding.notes),
        "unconfirmed_parameters": [p.name for p in finding.unconfirmed_parameters()],
        "citations": _citations(finding.requirements),
        "pack": {"id": finding.pack_id, "version": finding.pack_version},
    }


def _text(value: JsonValue) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return dumps_json(value)


def _emit(title: str, head: Mapping[str, JsonValue], finding: Finding, as_json: bool) -> None:
    payload = dict(head) | _common(finding)
    if as_json:
        typer.echo(dumps_json(payload))
        return
    console = Console(soft_wrap=True)
    summary = Table(title=f"{title}: {finding.status}", show_header=False)
    summary.add_column("item", style="bold")
    summary.add_column("value")
    for key, value in head.items():
        summary.add_row(key, _text(value))
    summary.add_row("pack", f"{finding.pack_id} {finding.pack_version}")
    console.print(summary)
    reqs = Table(title="requirements")
    for col in ("requirement", "ok", "value", "threshold", "conf"):
        reqs.add_column(col, overflow="fold")

    def add(r: Requirement, depth: int) -> None:
        test = r.comparison.value
        if r.threshold is not None:
            shown = _text(_shown(r.threshold))
            test = shown if r.comparison is Comparison.IS_TRUE else f"{test} {shown}"
        if r.threshold_year is not None:
            test = f"{test} ({r.threshold_year})"
        reqs.add_row(
            "  " * depth + r.name,
            "yes" if r.passed else "NO",
            _text(_shown(r.value, r.threshold)),
            test,
            r.confidence,
        )
        for child in r.children:
            add(child, depth + 1)

    for r in finding.requirements:
        add(r, 0)
    console.print(reqs)
    for c in _citations(finding.requirements):
        console.print(f"cites: {c}")
    for w in finding.warnings:
        console.print(f"warning: {w}")
    for n in finding.notes:
        console.print(f"note: {n}")
    for p in finding.unconfirmed_parameters():
        console.print(f"unconfirmed parameter: {p.name} = {p.value} ({p.note})")


T = TypeVar("T")


def _run(body: Callable[[], T]) -> T:
    try:
        return body()
    except TaxRuleError as exc:
        _fail(_diagnose(exc))


def _pack(path: Path | None) -> RulePack:
    return load_pack(path)


@credits_app.command("45x")
def cmd_45x(
    component: Annotated[Component, typer.Option("--component", help="Eligible component kind.")],
    capacity_kwh: Annotated[
        str | None, typer.Option("--capacity-kwh", help="Capacity in kWh (cells, modules).")
    ] = None,
    max_discharge_kw: Annotated[
        str | None, typer.Option("--max-discharge-kw", help="Maximum discharge in kW (100:1 cap).")
    ] = None,
    production_cost: Annotated[
        str | None, typer.Option("--production-cost", help="Production cost in USD (EAM, critical minerals).")
    ] = None,
    production_year: Annotated[int | None, typer.Option("--production-year", help="Year produced.")] = None,
    sale_year: Annotated[int | None, typer.Option("--sale-year", help="Year sold.")] = None,
    taxable_year_start: Annotated[
        str | None,
        typer.Option(
            "--taxable-year-start", help="First day of the taxable year of the sale (default: calendar)."
        ),
    ] = None,
    total_direct_cost: Annotated[
        str | None,
        typer.Option("--total-direct-cost", help="Total direct material cost, USD (for the MACR condition)."),
    ] = None,
    pfe_cost: Annotated[
        str | None,
        typer.Option("--pfe-cost", help="Cost attributable to prohibited foreign entities, USD (MACR)."),
    ] = None,
    prohibited_foreign_entity_taxpayer: Annotated[
        bool | None,
        typer.Option(
            "--prohibited-foreign-entity-taxpayer/--not-prohibited-foreign-entity-taxpayer",
            help="Whether the taxpayer is a specified foreign entity or foreign-influenced entity.",
        ),
    ] = None,
    integrated: Annotated[
        bool,
        typer.Option("--integrated", help="The component went into another eligible component (45X(d)(4))."),
    ] = False,
    integrated_same_facility: Annotated[
        bool | None,
        typer.Option(
            "--integrated-same-facility/--integrated-other-facility",
            help="Primary and secondary component made in the same facility.",
        ),
    ] = None,
    integrated_us_primary_share: Annotated[
        str | None,
        typer.Option(
            "--integrated-us-primary-share",
            help="Share of the secondary component's direct material cost from US-made primary components.",
        ),
    ] = None,
    pack: PackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """45X credit for one component: credit_usd, rate, phase-out factor, capped capacity. For sales in
    taxable years beginning after 2025-07-04 also the prohibited-foreign-entity conditions (MACR from
    --total-direct-cost and --pfe-cost; the taxpayer's status)."""

    def body() -> tuple[Finding, dict[str, JsonValue]]:
        rules = _pack(pack)
        start = None if taxable_year_start is None else _date("--taxable-year-start", taxable_year_start)
        material_assistance = None
        if (total_direct_cost is None) != (pfe_cost is None):
            raise InputError(
                "--total-direct-cost", "give both --total-direct-cost and --pfe-cost, or neither"
            )
        if total_direct_cost is not None and pfe_cost is not None:
            if sale_year is None:
                raise InputError("sale_year", "is required for the material assistance cost ratio")
            material_assistance = evaluate_macr(
                rules,
                category=MacrCategory.CRITICAL_MINERAL
                if component is Component.CRITICAL_MINERAL
                else MacrCategory.BATTERY_COMPONENT,
                total_direct_material_cost=_required_number("--total-direct-cost", total_direct_cost),
                pfe_cost=_required_number("--pfe-cost", pfe_cost),
                sale_year=sale_year,
                taxable_year_start=start,
            )
        claim = Claim45X(
            component,
            sale_year=sale_year,
            production_year=production_year,
            capacity_kwh=_number("--capacity-kwh", capacity_kwh),
            max_discharge_kw=_number("--max-discharge-kw", max_discharge_kw),
            production_cost=_number("--production-cost", production_cost),
            taxable_year_start=start,
            material_assistance=material_assistance,
            prohibited_foreign_entity_taxpayer=prohibited_foreign_entity_taxpayer,
            integrated=integrated,
            integrated_same_facility=integrated_same_facility,
            integrated_us_primary_share=None
            if integrated_us_primary_share is None
            else _fraction_opt("--integrated-us-primary-share", integrated_us_primary_share),
        )
        finding = credit_45x(rules, claim)
        a = finding.amounts
        head: dict[str, JsonValue] = {
            "component": component.value,
            "credit_usd": _round(a.get("credit_usd"), CENT),
            "rate": _round(a.get("rate")),
            "rate_unit": "fraction_of_cost" if "eligible_production_cost_usd" in a else "usd_per_kwh",
            "phase_out_factor": _round(a.get("phase_out_factor")),
            "capacity_kwh": _round(a.get("capacity_kwh")),
            "capped_capacity_kwh": _round(a.get("capped_capacity_kwh")),
            "eligible_production_cost_usd": _round(a.get("eligible_production_cost_usd"), CENT),
            "macr": None if material_assistance is None else _round(material_assistance.amounts.get("macr")),
        }
        return finding, head

    finding, head = _run(body)
    _emit("45X", head, finding, as_json)


@credits_app.command("macr")
def cmd_macr(
    category: Annotated[
        MacrCategory, typer.Option("--category", help="Battery component or critical mineral.")
    ],
    total_direct_cost: Annotated[
        str, typer.Option("--total-direct-cost", help="Total direct material cost, USD.")
    ],
    pfe_cost: Annotated[
        str, typer.Option("--pfe-cost", help="Cost attributable to prohibited foreign entities, USD.")
    ],
    sale_year: Annotated[int, typer.Option("--sale-year", help="Year sold.")],
    taxable_year_start: Annotated[
        str | None,
        typer.Option(
            "--taxable-year-start", help="First day of the taxable year of the sale (default: calendar)."
        ),
    ] = None,
    pack: PackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """45X material assistance cost ratio against the threshold for the sale year."""

    def body() -> Finding:
        return evaluate_macr(
            _pack(pack),
            category=category,
            total_direct_material_cost=_required_number("--total-direct-cost", total_direct_cost),
            pfe_cost=_required_number("--pfe-cost", pfe_cost),
            sale_year=sale_year,
            taxable_year_start=None
            if taxable_year_start is None
            else _date("--taxable-year-start", taxable_year_start),
        )

    finding = _run(body)
    head: dict[str, JsonValue] = {
        "category": category.value,
        "macr": _round_against(finding.amounts["macr"], finding.amounts.get("threshold")),
        "threshold": _round(finding.amounts.get("threshold")),
        "sale_year": sale_year,
    }
    _emit("45X MACR", head, finding, as_json)


@credits_app.command("domestic-content")
def cmd_domestic_content(
    domestic_cost: Annotated[
        str, typer.Option("--domestic-cost", help="Cost of US-manufactured products and components, USD.")
    ],
    total_cost: Annotated[str, typer.Option("--total-cost", help="Total manufactured products cost, USD.")],
    construction_year: Annotated[
        int | None,
        typer.Option("--construction-year", help="Year construction began (shorthand: strictest day of it)."),
    ] = None,
    construction_start: Annotated[
        str | None, typer.Option("--construction-start", help="Date construction began (YYYY-MM-DD).")
    ] = None,
    credit: Annotated[
        str, typer.Option("--credit", help="Which credit's schedule: 45y (default) or 48e.")
    ] = "45y",
    steel_iron_us_share: Annotated[
        str | None,
        typer.Option("--steel-iron-us-share", help="Share of steel and iron manufactured in the US, 0..1."),
    ] = None,
    offshore_wind: Annotated[
        bool, typer.Option("--offshore-wind", help="Use the offshore wind schedule.")
    ] = False,
    pack: PackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """48E / 45Y domestic content: domestic cost percentage against the adjusted percentage for the
    date construction began, and US steel and iron (not given: not met, no bonus)."""

    def body() -> Finding:
        kind = credit.strip().lower()
        if kind not in ("45y", "48e"):
            raise InputError("--credit", f"{credit!r} is not a credit; use 45y or 48e")
        return evaluate_domestic_content(
            _pack(pack),
            construction_year=construction_year,
            construction_start=None
            if construction_start is None
            else _date("--construction-start", construction_start),
            credit=CleanElectricityCredit.INVESTMENT_48E
            if kind == "48e"
            else CleanElectricityCredit.PRODUCTION_45Y,
            domestic_cost=_required_number("--domestic-cost", domestic_cost),
            total_cost=_required_number("--total-cost", total_cost),
            steel_iron_us_share=None
            if steel_iron_us_share is None
            else _fraction_opt("--steel-iron-us-share", steel_iron_us_share),
            offshore_wind=offshore_wind,
        )

    finding = _run(body)
    is_48e = finding.inputs.get("credit") == CleanElectricityCredit.INVESTMENT_48E.value
    threshold = finding.amounts["threshold"]
    head: dict[str, JsonValue] = {
        "percentage": _round_against(finding.amounts["domestic_cost_percentage"], threshold),
        "threshold": _round(threshold),
        "construction_year": int(finding.inputs["construction_year"]),
        "offshore_wind": offshore_wind,
        "bonus_rate_points_48e": _round(finding.amounts.get("bonus_rate_points")),
        "credit": "48e" if is_48e else "45y",
        "construction_start": finding.inputs.get("construction_start"),
        "bonus_credit_fraction_45y": _round(finding.amounts.get("bonus_credit_fraction")),
    }
    _emit("48E domestic content" if is_48e else "45Y domestic content", head, finding, as_json)


@credits_app.command("30d")
def cmd_30d(
    acquired: Annotated[str, typer.Option("--acquired", help="Date acquired (YYYY-MM-DD).")],
    placed_in_service: Annotated[str, typer.Option("--placed-in-service", help="Date placed in service.")],
    critical_mineral_content: Annotated[
        str, typer.Option("--critical-mineral-content", help="Qualifying critical mineral content, 0..1.")
    ],
    battery_component_content: Annotated[
        str,
        typer.Option("--battery-component-content", help="North American battery component content, 0..1."),
    ],
    pack: PackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Former 30D clean vehicle credit from the two content fractions (historic claims)."""

    def body() -> Finding:
        return evaluate_30d(
            _pack(pack),
            acquired=_date("--acquired", acquired),
            placed_in_service=_date("--placed-in-service", placed_in_service),
            critical_mineral_content=_fraction_opt("--critical-mineral-content", critical_mineral_content),
            battery_component_content=_fraction_opt("--battery-component-content", battery_component_content),
        )

    finding = _run(body)
    a = finding.amounts
    head: dict[str, JsonValue] = {
        "credit_usd": _round(a.get("credit_usd"), CENT),
        "critical_minerals_credit_usd": _round(a.get("critical_minerals_credit_usd"), CENT),
        "battery_components_credit_usd": _round(a.get("battery_components_credit_usd"), CENT),
        "critical_mineral_threshold": _round(a.get("critical_mineral_threshold")),
        "battery_component_threshold": _round(a.get("battery_component_threshold")),
    }
    _emit("former 30D", head, finding, as_json)
