from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from ledger.taxrules.cv30d import (
    EntityControl,
    MineralChain,
    SupplyStep,
    critical_mineral_content,
    evaluate_30d,
    is_foreign_entity_of_concern,
    qualifying_location,
)
from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import Finding
from ledger.taxrules.pack import RulePack, load_pack

from .conftest import param


def run(pack: RulePack, pis: date, cm: str = "1", bc: str = "1", **kw: Any) -> Finding:
    acquired = kw.pop("acquired", pis)
    return evaluate_30d(
        pack,
        acquired=acquired,
        placed_in_service=pis,
        critical_mineral_content=D(cm) if "mineral_chains" not in kw else None,
        battery_component_content=D(bc),
        **kw,
    )


MINERALS = [
    (date(2023, 4, 18), "0.40"),
    (date(2023, 12, 31), "0.40"),
    (date(2024, 1, 1), "0.50"),
    (date(2024, 12, 31), "0.50"),
    (date(2025, 1, 1), "0.60"),
    (date(2026, 1, 1), "0.70"),
    (date(2027, 1, 1), "0.80"),
    (date(2030, 6, 1), "0.80"),
]
COMPONENTS = [
    (date(2023, 4, 18), "0.50"),
    (date(2023, 12, 31), "0.50"),
    (date(2024, 1, 1), "0.60"),
    (date(2025, 12, 31), "0.60"),
    (date(2026, 1, 1), "0.70"),
    (date(2027, 1, 1), "0.80"),
    (date(2028, 1, 1), "0.90"),
    (date(2029, 1, 1), "1"),
    (date(2031, 1, 1), "1"),
]
EARLY_ACQUIRED = date(2023, 4, 18)  # acquired before the cut-off; placed in service later


@pytest.mark.parametrize(("pis", "threshold"), MINERALS)
@pytest.mark.parametrize(("delta", "ok"), [("0", True), ("-0.0001", False), ("0.0001", True)])
def test_critical_mineral_percentage(pack: RulePack, pis: date, threshold: str, delta: str, ok: bool) -> None:
    cm = min(D(threshold) + D(delta), D(1))
    f = run(pack, pis, cm=str(cm), bc="0", acquired=EARLY_ACQUIRED)
    assert f.amounts["critical_mineral_threshold"] == D(threshold)
    assert f.amounts["critical_minerals_credit_usd"] == (D(3750) if ok else 0)
    assert f.passed is ok


@pytest.mark.parametrize(("pis", "threshold"), COMPONENTS)
@pytest.mark.parametrize(("delta", "ok"), [("0", True), ("-0.0001", False)])
def test_battery_component_percentage(
    pack: RulePack, pis: date, threshold: str, delta: str, ok: bool
) -> None:
    f = run(pack, pis, cm="0", bc=str(D(threshold) + D(delta)), acquired=EARLY_ACQUIRED)
    assert f.amounts["battery_component_threshold"] == D(threshold)
    assert f.amounts["battery_components_credit_usd"] == (D(3750) if ok else 0)


def test_battery_component_just_above_threshold(pack: RulePack) -> None:
    f = run(pack, date(2026, 3, 1), cm="0", bc="0.7001", acquired=EARLY_ACQUIRED)
    assert f.amounts["battery_components_credit_usd"] == D(3750)


@pytest.mark.parametrize(
    ("cm", "bc", "credit", "status"),
    [
        ("1", "1", D(7500), "pass"),
        ("1", "0", D(3750), "pass"),
        ("0", "1", D(3750), "pass"),
        ("0", "0", D(0), "fail"),
    ],
)
def test_credit_amounts(pack: RulePack, cm: str, bc: str, credit: D, status: str) -> None:
    f = run(pack, date(2024, 6, 1), cm=cm, bc=bc)
    assert f.amounts["credit_usd"] == credit
    assert f.status == status


@pytest.mark.parametrize(("acquired", "credit"), [(date(2025, 9, 30), D(7500)), (date(2025, 10, 1), D(0))])
def test_no_credit_for_vehicles_acquired_after_cutoff(pack: RulePack, acquired: date, credit: D) -> None:
    f = run(pack, date(2025, 10, 2), acquired=acquired)
    assert f.amounts["credit_usd"] == credit


@pytest.mark.parametrize("pis", [date(2023, 4, 17), date(2022, 6, 1)])
def test_before_requirements_applied_is_a_clear_not_applicable(pack: RulePack, pis: date) -> None:
    f = run(pack, pis, cm="0", bc="0")
    assert f.status == "not_applicable"
    assert "credit_usd" not in f.amounts
    assert any("did not apply in this form before 2023-04-18" in n for n in f.notes)


def test_first_day_of_requirements_applies(pack: RulePack) -> None:
    assert run(pack, date(2023, 4, 18)).status == "pass"


@pytest.mark.parametrize(("pis", "credit"), [(date(2023, 12, 31), D(7500)), (date(2024, 1, 1), D(0))])
def test_feoc_battery_component_from_2024(pack: RulePack, pis: date, credit: D) -> None:
    f = run(pack, pis, feoc_battery_component=True)
    assert f.amounts["credit_usd"] == credit


@pytest.mark.parametrize(("pis", "credit"), [(date(2024, 12, 31), D(7500)), (date(2025, 1, 1), D(0))])
def test_feoc_critical_mineral_from_2025(pack: RulePack, pis: date, credit: D) -> None:
    f = run(pack, pis, feoc_critical_mineral=True)
    assert f.amounts["credit_usd"] == credit


@pytest.mark.parametrize(("pis", "credit"), [(date(2026, 12, 31), D(7500)), (date(2027, 1, 1), D(0))])
def test_impracticable_to_trace_exclusion_until_2027(pack: RulePack, pis: date, credit: D) -> None:
    f = run(
        pack,
        pis,
        acquired=EARLY_ACQUIRED,
        feoc_critical_mineral=True,
        feoc_only_impracticable_to_trace=True,
    )
    assert f.amounts["credit_usd"] == credit


def test_impracticable_flag_needs_a_feoc_mineral(pack: RulePack) -> None:
    with pytest.raises(InputError):
        run(pack, date(2025, 2, 1), feoc_only_impracticable_to_trace=True)


# ---- traced value and the 50% value-added safe harbor ----------------------------------------------


CHAINS = (
    MineralChain("lithium", D(600), D(100), extraction_value_added_share=D("0.50"), event_ids=("ev-li",)),
    MineralChain("nickel", D(400), D(300), processing_value_added_share=D("0.49")),
)


@pytest.mark.parametrize(
    ("report", "content"),
    [
        (None, D("0.4")),  # traced only: (100 + 300) / 1000
        (date(2024, 5, 5), D("0.4")),
        (date(2024, 5, 6), D("0.9")),  # lithium chain counts whole: (600 + 300) / 1000
        (date(2026, 12, 31), D("0.9")),
        (date(2027, 1, 1), D("0.4")),
    ],
)
def test_safe_harbor_window_and_share(pack: RulePack, report: date | None, content: D) -> None:
    assert critical_mineral_content(pack, CHAINS, report_date=report).content == content


def test_chains_feed_the_30d_finding_with_their_events(pack: RulePack) -> None:
    f = run(pack, date(2024, 6, 1), mineral_chains=CHAINS, report_date=date(2024, 6, 1), events=["ev-vin"])
    assert f.amounts["critical_mineral_content"] == D("0.9")
    assert f.amounts["critical_minerals_credit_usd"] == D(3750)
    assert set(f.events) == {"ev-vin", "ev-li"}
    unconfirmed = {p.name for p in f.unconfirmed_parameters()}
    assert {"cv30d.traced_value_formula", "cv30d.value_added_safe_harbor_share"} <= unconfirmed


def test_chain_without_report_date_warns(pack: RulePack) -> None:
    f = run(pack, date(2024, 6, 1), mineral_chains=CHAINS)
    assert any("safe harbor was not considered" in w for w in f.warnings)


@pytest.mark.parametrize(
    "chains",
    [
        (MineralChain("x", D(10), D(11)),),
        (MineralChain("x", D(0), D(0)),),
        (MineralChain("x", D(10), D(1), recycling_value_added_share=D("1.1")),),
    ],
)
def test_bad_chains(pack: RulePack, chains: tuple[MineralChain, ...]) -> None:
    with pytest.raises(InputError):
        critical_mineral_content(pack, chains, report_date=date(2024, 6, 1))


# ---- places and entities ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "country", "day", "ok"),
    [
        (SupplyStep.EXTRACTION, "US", date(2023, 5, 1), True),
        (SupplyStep.EXTRACTION, "CL", date(2023, 5, 1), True),
        (SupplyStep.PROCESSING, "JP", date(2023, 3, 27), False),
        (SupplyStep.PROCESSING, "JP", date(2023, 3, 28), True),
        (SupplyStep.PROCESSING, "CN", date(2023, 5, 1), False),
        (SupplyStep.RECYCLING, "MX", date(2023, 5, 1), True),
        (SupplyStep.RECYCLING, "CL", date(2023, 5, 1), False),  # FTA, but not North America
    ],
)
def test_qualifying_location(pack: RulePack, step: SupplyStep, country: str, day: date, ok: bool) -> None:
    assert qualifying_location(pack, step, country, day) is ok


@pytest.mark.parametrize(
    ("entity", "feoc"),
    [
        (EntityControl("CN"), True),
        (EntityControl("US"), False),
        (EntityControl("US", government_country="CN", equity_share=D("0.25")), True),
        (EntityControl("US", government_country="CN", equity_share=D("0.2499")), False),
        (EntityControl("US", government_country="RU", board_share=D("0.30")), True),
        (EntityControl("US", government_country="CN", contractual_control=True), True),
        (EntityControl("US", government_country="FR", voting_share=D("0.9")), False),
    ],
)
def test_feoc_determination(pack: RulePack, entity: EntityControl, feoc: bool) -> None:
    assert is_foreign_entity_of_concern(pack, entity)[0] is feoc


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"acquired": date(2024, 2, 1), "placed_in_service": date(2024, 1, 1)}, "placed_in_service"),
        ({"critical_mineral_content": D("1.2")}, "critical_mineral_content"),
        ({"battery_component_content": D("-0.1")}, "battery_component_content"),
        ({"critical_mineral_content": None}, "critical_mineral_content"),
    ],
)
def test_bad_input(pack: RulePack, kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {
        "acquired": date(2024, 1, 1),
        "placed_in_service": date(2024, 1, 2),
        "critical_mineral_content": D("0.5"),
        "battery_component_content": D("0.5"),
    } | kwargs
    with pytest.raises(InputError) as err:
        evaluate_30d(pack, **args)
    assert err.value.field == field


def test_user_pack_percentage_changes_result(user_pack: Callable[..., Path]) -> None:
    schedule = [{"start": "2023-04-18", "value": "0.30"}]
    pack = load_pack(user_pack({"cv30d": {"critical_mineral_applicable_percentage": param(schedule)}}))
    f = run(pack, date(2025, 6, 1), cm="0.30", bc="0")
    assert f.amounts["critical_minerals_credit_usd"] == D(3750)
