from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import Comparison, CustodyModel, Finding
from ledger.taxrules.macr import (
    MacrCategory,
    SupplierCertification,
    evaluate_macr,
    material_assistance_cost_ratio,
)
from ledger.taxrules.pack import RulePack, load_pack

from .conftest import param

BC = MacrCategory.BATTERY_COMPONENT
CM = MacrCategory.CRITICAL_MINERAL


def run(pack: RulePack, category: MacrCategory, macr: str, sale_year: int, **kw: Any) -> Finding:
    """MACR given as a fraction: total cost 1,000,000, PFE cost = (1 - macr) x total."""
    total = D(1_000_000)
    return evaluate_macr(
        pack,
        category=category,
        total_direct_material_cost=total,
        pfe_cost=total - total * D(macr),
        sale_year=sale_year,
        **kw,
    )


def test_ratio_formula() -> None:
    assert material_assistance_cost_ratio(D(200), D(50)) == D("0.75")
    assert material_assistance_cost_ratio(D(200), D(0)) == D(1)
    assert material_assistance_cost_ratio(D(200), D(200)) == D(0)


BATTERY_THRESHOLDS = [
    (2026, "0.60"),
    (2027, "0.65"),
    (2028, "0.70"),
    (2029, "0.80"),
    (2030, "0.85"),
    (2040, "0.85"),
]


@pytest.mark.parametrize(("sale_year", "threshold"), BATTERY_THRESHOLDS)
@pytest.mark.parametrize(("delta", "ok"), [("0", True), ("-0.000001", False), ("0.000001", True)])
def test_battery_component_thresholds(
    pack: RulePack, sale_year: int, threshold: str, delta: str, ok: bool
) -> None:
    f = run(pack, BC, str(D(threshold) + D(delta)), sale_year)
    assert f.amounts["threshold"] == D(threshold)
    assert f.passed is ok
    [ratio_req] = [r for r in f.requirements if r.name.startswith("material assistance")]
    assert ratio_req.threshold_year == sale_year


MINERAL_THRESHOLDS = [(2030, "0.25"), (2031, "0.30"), (2032, "0.40"), (2033, "0.50"), (2045, "0.50")]


@pytest.mark.parametrize(("sale_year", "threshold"), MINERAL_THRESHOLDS)
@pytest.mark.parametrize(("delta", "ok"), [("0", True), ("-0.000001", False), ("0.000001", True)])
def test_critical_mineral_thresholds(
    pack: RulePack, sale_year: int, threshold: str, delta: str, ok: bool
) -> None:
    f = run(pack, CM, str(D(threshold) + D(delta)), sale_year)
    assert f.amounts["threshold"] == D(threshold)
    assert f.passed is ok


@pytest.mark.parametrize("sale_year", [2025, 2026, 2029])
def test_critical_minerals_zero_threshold_through_2029(pack: RulePack, sale_year: int) -> None:
    f = run(pack, CM, "0", sale_year, taxable_year_start=date(2025, 7, 5))
    assert f.amounts["threshold"] == 0
    assert f.passed


def test_battery_components_before_2026_have_no_threshold(pack: RulePack) -> None:
    f = run(pack, BC, "0.1", 2025, taxable_year_start=date(2025, 8, 1))
    assert f.status == "not_applicable"
    assert any("no battery-component MACR threshold for sale year 2025" in n for n in f.notes)
    assert "macr.battery_component_first_step_covers_earlier_sales" in {
        p.name for p in f.unconfirmed_parameters()
    }


def test_q2_other_reading_first_step_covers_earlier_sales(user_pack: Callable[..., Path]) -> None:
    pack = load_pack(user_pack({"macr": {"battery_component_first_step_covers_earlier_sales": param(True)}}))
    f = run(pack, BC, "0.59", 2025, taxable_year_start=date(2025, 8, 1))
    assert f.amounts["threshold"] == D("0.60") and f.status == "fail"
    assert run(pack, BC, "0.60", 2025, taxable_year_start=date(2025, 8, 1)).passed


@pytest.mark.parametrize(("category", "sale_year"), [(CM, 1990), (CM, 2025), (BC, 2025), (CM, 2024)])
def test_without_a_taxable_year_a_calendar_year_is_assumed_for_both_categories(
    pack: RulePack, category: MacrCategory, sale_year: int
) -> None:
    # review B8: a critical mineral sold in 1990 or 2025 is outside the rule, as a battery component is
    f = run(pack, category, "0", sale_year)
    assert f.status == "not_applicable"
    assert any("calendar year of the sale" in w for w in f.warnings)


def test_review_b8_repro_critical_mineral_sold_1990(pack: RulePack) -> None:
    f = evaluate_macr(pack, category=CM, total_direct_material_cost=D(100), pfe_cost=D(100), sale_year=1990)
    assert f.status == "not_applicable"


def test_binding_contract_exclusion_is_named(pack: RulePack) -> None:
    f = run(pack, BC, "0.9", 2026)
    assert "macr.binding_contract_exclusion" in {p.name for p in f.unconfirmed_parameters()}


@pytest.mark.parametrize(
    ("start", "status"),
    [(date(2025, 7, 4), "not_applicable"), (date(2025, 7, 5), "pass"), (date(2026, 1, 1), "pass")],
)
def test_applies_to_taxable_years_beginning_after_enactment(pack: RulePack, start: date, status: str) -> None:
    f = run(pack, BC, "0.9", 2026, taxable_year_start=start)
    assert f.status == status


def test_missing_taxable_year_start_is_assumed_and_flagged(pack: RulePack) -> None:
    f = run(pack, BC, "0.9", 2026)
    assert any("taxable year start not given" in w for w in f.warnings)


def test_equality_is_an_unconfirmed_parameter_named_in_the_finding(pack: RulePack) -> None:
    f = run(pack, BC, "0.60", 2026)
    [req] = [r for r in f.requirements if r.name.startswith("material assistance")]
    assert req.comparison is Comparison.GE
    assert "macr.equality_passes" in req.note
    assert "macr.equality_passes" in [p.name for p in f.unconfirmed_parameters()]


def test_user_pack_can_make_equality_fail(user_pack: Callable[..., Path]) -> None:
    pack = load_pack(user_pack({"macr": {"equality_passes": param(False, confidence="?")}}))
    assert not run(pack, BC, "0.60", 2026).passed
    assert run(pack, BC, "0.600001", 2026).passed


def test_user_pack_threshold_changes_the_result(user_pack: Callable[..., Path]) -> None:
    schedule = [{"from_year": 2026, "value": "0.50"}]
    pack = load_pack(user_pack({"macr": {"battery_component_threshold_by_sale_year": param(schedule)}}))
    f = run(pack, BC, "0.55", 2026)
    assert f.passed
    assert f.amounts["threshold"] == D("0.50")


def test_certifications_are_evidence(pack: RulePack) -> None:
    certs = [
        SupplierCertification("Supplier A", "ev-cert-1"),
        SupplierCertification("Supplier B", "ev-cert-2"),
    ]
    f = run(pack, BC, "0.9", 2026, certifications=certs, events=["ev-bom"])
    assert f.events == ("ev-bom", "ev-cert-1", "ev-cert-2")
    assert "macr.supplier_certification" in [p.name for p in f.parameters_used]
    assert any("Supplier A" in n for n in f.notes)


def test_certification_without_event_is_refused(pack: RulePack) -> None:
    with pytest.raises(InputError, match="event"):
        run(pack, BC, "0.9", 2026, certifications=[SupplierCertification("A", "")])


def test_book_and_claim_fails(pack: RulePack) -> None:
    f = run(pack, BC, "0.9", 2026, custody_model=CustodyModel.BOOK_AND_CLAIM)
    assert f.status == "fail"
    assert f.custody_model is CustodyModel.BOOK_AND_CLAIM


@pytest.mark.parametrize(
    ("total", "pfe", "field"),
    [(D(0), D(0), "total_direct_material_cost"), (D(10), D(11), "pfe_cost"), (D(10), D(-1), "pfe_cost")],
)
def test_bad_costs_are_refused(pack: RulePack, total: D, pfe: D, field: str) -> None:
    with pytest.raises(InputError) as err:
        evaluate_macr(pack, category=BC, total_direct_material_cost=total, pfe_cost=pfe, sale_year=2026)
    assert err.value.field == field
