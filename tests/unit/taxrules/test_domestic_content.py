from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from ledger.taxrules.domestic_content import (
    CleanElectricityCredit,
    domestic_cost_percentage,
    evaluate_domestic_content,
    safe_harbor_percentage,
)
from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import Finding
from ledger.taxrules.pack import RulePack, load_pack

from .conftest import param


def run(pack: RulePack, pct: str, year: int | None, **kw: Any) -> Finding:
    kw = {"steel_iron_us_share": D(1), "construction_year": year} | kw
    return evaluate_domestic_content(pack, domestic_cost=D(pct) * 1000, total_cost=D(1000), **kw)


GENERAL = [(2020, "0.40"), (2024, "0.40"), (2025, "0.45"), (2026, "0.50"), (2027, "0.55"), (2035, "0.55")]
OFFSHORE = [(2024, "0.20"), (2025, "0.275"), (2026, "0.35"), (2027, "0.45"), (2028, "0.55"), (2035, "0.55")]


@pytest.mark.parametrize(("year", "threshold"), GENERAL)
@pytest.mark.parametrize(("delta", "ok"), [("0", True), ("-0.001", False), ("0.001", True)])
def test_adjusted_percentage(pack: RulePack, year: int, threshold: str, delta: str, ok: bool) -> None:
    f = run(pack, str(D(threshold) + D(delta)), year)
    assert f.amounts["threshold"] == D(threshold)
    assert f.passed is ok


@pytest.mark.parametrize(("year", "threshold"), OFFSHORE)
@pytest.mark.parametrize(("delta", "ok"), [("0", True), ("-0.001", False), ("0.001", True)])
def test_offshore_wind_adjusted_percentage(
    pack: RulePack, year: int, threshold: str, delta: str, ok: bool
) -> None:
    f = run(pack, str(D(threshold) + D(delta)), year, offshore_wind=True)
    assert f.amounts["threshold"] == D(threshold)
    assert f.passed is ok


def test_offshore_reaches_55_percent_a_year_after_general(pack: RulePack) -> None:
    assert run(pack, "0.5", 2027).amounts["threshold"] == D("0.55")
    assert run(pack, "0.5", 2027, offshore_wind=True).amounts["threshold"] == D("0.45")


@pytest.mark.parametrize(("share", "ok"), [("1", True), ("0.999", False)])
def test_steel_and_iron_all_us(pack: RulePack, share: str, ok: bool) -> None:
    f = run(pack, "0.9", 2026, steel_iron_us_share=D(share))
    assert f.passed is ok


def test_steel_not_given_is_an_unmet_requirement(pack: RulePack) -> None:
    # review B12: no bonus while steel and iron are unchecked
    for credit in CleanElectricityCredit:
        f = run(pack, "0.9", 2026, steel_iron_us_share=None, credit=credit)
        steel = f.requirements[0]
        assert steel.name.startswith("steel and iron") and not steel.passed and "not given" in steel.note
        assert f.status == "fail"
        assert (
            f.amounts.get("bonus_rate_points", D(0)) == 0
            and f.amounts.get("bonus_credit_fraction", D(0)) == 0
        )


# review B1: 48E and 45Y have their own date-keyed schedules
E48 = CleanElectricityCredit.INVESTMENT_48E
Y45 = CleanElectricityCredit.PRODUCTION_45Y


@pytest.mark.parametrize(
    ("credit", "start", "threshold", "offshore"),
    [
        (E48, date(2024, 12, 31), "0.40", "0.20"),
        (E48, date(2025, 3, 1), "0.40", "0.20"),
        (E48, date(2025, 6, 15), "0.40", "0.20"),
        (E48, date(2025, 6, 16), "0.45", "0.275"),
        (E48, date(2025, 12, 31), "0.45", "0.275"),
        (E48, date(2026, 1, 1), "0.50", "0.35"),
        (E48, date(2027, 1, 1), "0.55", "0.45"),
        (E48, date(2028, 1, 1), "0.55", "0.55"),
        (Y45, date(2024, 12, 31), "0.40", "0.20"),
        (Y45, date(2025, 1, 1), "0.45", "0.275"),
        (Y45, date(2025, 3, 1), "0.45", "0.275"),
        (Y45, date(2026, 12, 31), "0.50", "0.35"),
        (Y45, date(2027, 1, 1), "0.55", "0.45"),
    ],
)
def test_schedule_by_construction_start_date(
    pack: RulePack, credit: CleanElectricityCredit, start: date, threshold: str, offshore: str
) -> None:
    for wind, expected in ((False, threshold), (True, offshore)):
        f = evaluate_domestic_content(
            pack,
            construction_start=start,
            credit=credit,
            domestic_cost=D(expected) * 1000,
            total_cost=D(1000),
            steel_iron_us_share=D(1),
            offshore_wind=wind,
        )
        assert f.amounts["threshold"] == D(expected), (credit, start, wind)
        assert f.passed  # equal to the percentage passes ("not less than")


def test_review_b1_48e_begun_in_march_2025_passes_at_42_percent(pack: RulePack) -> None:
    f = run(pack, "0.42", None, construction_start=date(2025, 3, 1), credit=E48)
    assert f.amounts["threshold"] == D("0.40") and f.passed
    # the pre-P.L. 119-21 40% step is read in the primary text: confidence P on that step
    assert f.requirements[1].confidence == "P"


def test_48e_year_only_takes_the_strictest_value_of_the_year_and_says_so(pack: RulePack) -> None:
    f = run(pack, "0.42", 2025, credit=E48)
    assert f.amounts["threshold"] == D("0.45") and not f.passed
    assert any("2025-06-16" in n and "start date" in n for n in f.notes)
    assert f.requirements[1].confidence == "S"


def test_48e_offshore_2027_step_is_unconfirmed(pack: RulePack) -> None:
    f = run(pack, "0.5", 2027, credit=E48, offshore_wind=True)
    assert f.requirements[1].confidence == "?"
    assert any(
        p.name == "domestic_content.offshore_wind_adjusted_percentage_48e" for p in f.unconfirmed_parameters()
    )


def test_construction_year_and_start_must_agree(pack: RulePack) -> None:
    with pytest.raises(InputError) as err:
        run(pack, "0.5", 2026, construction_start=date(2025, 3, 1))
    assert err.value.field == "construction_year"
    with pytest.raises(InputError) as err:
        run(pack, "0.5", None)
    assert err.value.field == "construction_start"


@pytest.mark.parametrize(("wage", "points"), [(False, D("0.02")), (True, D("0.10"))])
def test_48e_bonus_points(pack: RulePack, wage: bool, points: D) -> None:
    assert run(pack, "0.9", 2026, prevailing_wage=wage).amounts["bonus_rate_points"] == points


def test_no_bonus_when_the_test_fails(pack: RulePack) -> None:
    assert run(pack, "0.1", 2026).amounts["bonus_rate_points"] == 0


def test_45y_bonus_is_ten_percent_of_the_credit(pack: RulePack) -> None:
    f = run(pack, "0.9", 2026, credit=CleanElectricityCredit.PRODUCTION_45Y, base_credit_usd=D("12345.67"))
    assert f.claim_kind.value == "45Y-domestic-content"
    assert f.amounts["bonus_credit_fraction"] == D("0.10")
    assert f.amounts["bonus_usd"] == D("1234.57")
    assert f.amounts["credit_usd"] == D("13580.24")


def test_45y_failing_gets_no_bonus(pack: RulePack) -> None:
    f = run(pack, "0.1", 2026, credit=CleanElectricityCredit.PRODUCTION_45Y, base_credit_usd=D(100))
    assert f.amounts["bonus_usd"] == 0
    assert f.amounts["credit_usd"] == D(100)


def test_safe_harbor_table_is_user_supplied_and_named(pack: RulePack) -> None:
    table = {"cells": D("0.40"), "inverter": D("0.25"), "enclosure": D("0.35")}
    f = evaluate_domestic_content(
        pack,
        construction_year=2026,
        safe_harbor_table=table,
        us_components=["cells", "enclosure"],
        steel_iron_us_share=D(1),
    )
    assert f.amounts["domestic_cost_percentage"] == D("0.75")
    assert f.passed
    unconfirmed = {p.name for p in f.unconfirmed_parameters()}
    assert {"user.safe_harbor_table", "domestic_content.safe_harbor_cost_table"} <= unconfirmed


@pytest.mark.parametrize(
    ("table", "us", "field"),
    [
        ({}, [], "safe_harbor_table"),
        ({"a": D("0.7"), "b": D("0.4")}, ["a"], "safe_harbor_table"),
        ({"a": D("1.2")}, ["a"], "safe_harbor_table['a']"),
        ({"a": D("0.5")}, ["b"], "us_components"),
    ],
)
def test_bad_safe_harbor_tables(table: dict[str, D], us: list[str], field: str) -> None:
    with pytest.raises(InputError) as err:
        safe_harbor_percentage(table, us)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"domestic_cost": D(5), "total_cost": D(4)}, "domestic_cost"),
        ({"domestic_cost": D(-1), "total_cost": D(4)}, "domestic_cost"),
        ({"domestic_cost": D(1), "total_cost": D(0)}, "total_cost"),
        ({"domestic_cost": D(1)}, "domestic_cost"),
        ({"domestic_cost": D(1), "total_cost": D(2), "safe_harbor_table": {"a": D(1)}}, "safe_harbor_table"),
        ({"domestic_cost": D(1), "total_cost": D(2), "base_credit_usd": D(1)}, "base_credit_usd"),
        ({"domestic_cost": D(1), "total_cost": D(2), "steel_iron_us_share": D(2)}, "steel_iron_us_share"),
    ],
)
def test_bad_input(pack: RulePack, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as err:
        evaluate_domestic_content(pack, construction_year=2026, **kwargs)
    assert err.value.field == field


def test_percentage_formula() -> None:
    assert domestic_cost_percentage(D(45), D(100)) == D("0.45")


def test_user_pack_threshold_changes_result(user_pack: Callable[..., Path]) -> None:
    schedule = [{"start": "1900-01-01", "value": "0.30"}]
    pack = load_pack(user_pack({"domestic_content": {"adjusted_percentage_48e": param(schedule)}}))
    assert run(pack, "0.30", 2027).passed
    assert not run(pack, "0.30", 2027, credit=Y45).passed
