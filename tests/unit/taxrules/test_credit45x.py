from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from ledger.taxrules.credit45x import (
    Claim45X,
    Component,
    CostItem,
    CostKind,
    credit_45x,
    credit_45x_claims,
    is_applicable_critical_mineral,
    production_cost_of,
    purchase_cost_kind,
)
from ledger.taxrules.errors import InputError
from ledger.taxrules.macr import MacrCategory, evaluate_macr
from ledger.taxrules.pack import RulePack, load_pack

from .conftest import param


def clean(component: Component, **kw: Any) -> Claim45X:
    """A claim whose taxpayer and material assistance meet the P.L. 119-21 conditions (a MACR of 1, a
    taxpayer neither SFE nor FIE, a calendar taxable year), so the other rules are tested alone."""
    sale = kw.get("sale_year") or kw.get("production_year")
    if isinstance(sale, int) and 2026 <= sale <= 2200:
        category = (
            MacrCategory.CRITICAL_MINERAL
            if component is Component.CRITICAL_MINERAL
            else MacrCategory.BATTERY_COMPONENT
        )
        start = date(sale, 1, 1)
        defaults: dict[str, Any] = {"taxable_year_start": start, "prohibited_foreign_entity_taxpayer": False}
        if "material_assistance" not in kw:
            defaults["material_assistance"] = evaluate_macr(
                load_pack(),
                category=category,
                total_direct_material_cost=D(100),
                pfe_cost=D(0),
                sale_year=sale,
                taxable_year_start=kw.get("taxable_year_start", start),
            )
        kw = defaults | kw
    return Claim45X(component, **kw)


def cell(**kw: Any) -> Claim45X:
    defaults: dict[str, Any] = {"sale_year": 2026, "capacity_kwh": D(1)}
    return clean(Component.CELL, **(defaults | kw))


def module(**kw: Any) -> Claim45X:
    defaults: dict[str, Any] = {"sale_year": 2026, "capacity_kwh": D(10)}
    return clean(Component.MODULE, **(defaults | kw))


def mineral(**kw: Any) -> Claim45X:
    defaults: dict[str, Any] = {"production_year": 2026, "production_cost": D(1000)}
    return clean(Component.CRITICAL_MINERAL, **(defaults | kw))


def eam(**kw: Any) -> Claim45X:
    defaults: dict[str, Any] = {"sale_year": 2026, "production_cost": D(1000)}
    return clean(Component.ELECTRODE_ACTIVE_MATERIAL, **(defaults | kw))


# ---- rates ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "credit"),
    [
        (cell(capacity_kwh=D(100)), D("3500")),
        (module(capacity_kwh=D(10)), D("100")),
        (clean(Component.MODULE_WITHOUT_CELLS, sale_year=2026, capacity_kwh=D(10)), D("450")),
        (eam(), D("100")),
        (mineral(), D("100")),
    ],
)
def test_rates(pack: RulePack, claim: Claim45X, credit: D) -> None:
    f = credit_45x(pack, claim)
    assert f.status == "pass"
    assert f.amounts["credit_usd"] == credit


def test_credit_is_rounded_to_cents(pack: RulePack) -> None:
    f = credit_45x(pack, cell(capacity_kwh=D("0.0123456")))
    assert f.amounts["credit_usd"] == D("0.43")


# ---- phase-out --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sale_year", "factor", "credit", "status"),
    [
        (2023, D(1), D("35"), "pass"),
        (2029, D(1), D("35"), "pass"),
        (2030, D("0.75"), D("26.25"), "pass"),
        (2031, D("0.50"), D("17.50"), "pass"),
        (2032, D("0.25"), D("8.75"), "pass"),
        (2033, D(0), D(0), "fail"),
        (2040, D(0), D(0), "fail"),
    ],
)
def test_component_phase_out_by_sale_year(
    pack: RulePack, sale_year: int, factor: D, credit: D, status: str
) -> None:
    f = credit_45x(pack, cell(sale_year=sale_year))
    assert f.amounts["phase_out_factor"] == factor
    assert f.amounts["credit_usd"] == credit
    assert f.status == status


@pytest.mark.parametrize(
    ("production_year", "factor", "credit"),
    [
        (2023, D(1), D("100")),
        (2030, D(1), D("100")),
        (2031, D("0.75"), D("75")),
        (2032, D("0.50"), D("50")),
        (2033, D("0.25"), D("25")),
        (2034, D(0), D(0)),
    ],
)
def test_critical_mineral_phase_out_by_production_year(
    pack: RulePack, production_year: int, factor: D, credit: D
) -> None:
    f = credit_45x(pack, mineral(production_year=production_year))
    assert f.amounts["phase_out_factor"] == factor
    assert f.amounts["credit_usd"] == credit


def test_critical_mineral_uses_production_not_sale_year(pack: RulePack) -> None:
    f = credit_45x(pack, mineral(production_year=2030, sale_year=2033))
    assert f.amounts["phase_out_factor"] == D(1)


def test_electrode_material_uses_sale_not_production_year(pack: RulePack) -> None:
    f = credit_45x(pack, eam(production_year=2029, sale_year=2030))
    assert f.amounts["phase_out_factor"] == D("0.75")
    assert f.amounts["credit_usd"] == D("75")


@pytest.mark.parametrize("claim", [cell(sale_year=2022), cell(production_year=2022, sale_year=2023)])
def test_before_2023_is_not_applicable(pack: RulePack, claim: Claim45X) -> None:
    f = credit_45x(pack, claim)
    assert f.status == "not_applicable"
    assert f.amounts["credit_usd"] == 0
    assert any("before 2023" in n for n in f.notes)


# ---- definitions and caps ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kwh", "ok"), [(D("0.012"), True), (D("0.0119"), False), (D("0.0121"), True)])
def test_cell_minimum_capacity_12_wh(pack: RulePack, kwh: D, ok: bool) -> None:
    f = credit_45x(pack, cell(capacity_kwh=kwh))
    assert f.passed is ok
    assert (f.amounts["credit_usd"] > 0) is ok


@pytest.mark.parametrize(("density", "ok"), [(D(100), True), (D("99.99"), False), (D("100.01"), True)])
def test_cell_minimum_energy_density(pack: RulePack, density: D, ok: bool) -> None:
    f = credit_45x(pack, cell(energy_density_wh_per_l=density))
    assert f.passed is ok
    assert not any("energy density" in w for w in f.warnings)


def test_cell_without_energy_density_is_flagged(pack: RulePack) -> None:
    f = credit_45x(pack, cell())
    assert any("energy density not given" in w for w in f.warnings)


@pytest.mark.parametrize(("kwh", "ok"), [(D(7), True), (D("6.999"), False), (D("7.001"), True)])
def test_module_minimum_capacity_7_kwh(pack: RulePack, kwh: D, ok: bool) -> None:
    assert credit_45x(pack, module(capacity_kwh=kwh)).passed is ok


@pytest.mark.parametrize(
    ("discharge_kw", "counted"),
    [(D(1), D(100)), (D("0.99"), D(99)), (D("1.01"), D(100)), (D("0.5"), D(50))],
)
def test_capacity_to_power_ratio_cap(pack: RulePack, discharge_kw: D, counted: D) -> None:
    f = credit_45x(pack, cell(capacity_kwh=D(100), max_discharge_kw=discharge_kw))
    assert f.amounts["capped_capacity_kwh"] == counted
    assert f.amounts["credit_usd"] == counted * 35
    assert not any("capacity-to-power" in w for w in f.warnings)


def test_missing_discharge_leaves_capacity_uncapped_with_warning(pack: RulePack) -> None:
    f = credit_45x(pack, cell(capacity_kwh=D(100)))
    assert f.amounts["capped_capacity_kwh"] == D(100)
    assert any("capacity-to-power cap was not applied" in w for w in f.warnings)


@pytest.mark.parametrize(("cells", "counted"), [(D(9), D(9)), (D(10), D(10)), (D(11), D(10))])
def test_module_capacity_capped_at_cells(pack: RulePack, cells: D, counted: D) -> None:
    f = credit_45x(pack, module(capacity_kwh=D(10), cells_nameplate_kwh=cells))
    assert f.amounts["capped_capacity_kwh"] == counted
    assert f.amounts["credit_usd"] == counted * 10


def test_module_without_cells_nameplate_warns(pack: RulePack) -> None:
    assert any("nameplate" in w for w in credit_45x(pack, module()).warnings)


def test_only_first_module_sale_earns_credit(pack: RulePack) -> None:
    f = credit_45x(pack, module(first_module_sale=False))
    assert f.status == "fail"
    assert f.amounts["credit_usd"] == 0
    assert any(r.name.startswith("first sale") and not r.passed for r in f.requirements)


# ---- production cost: 26 CFR 1.45X-3 worked examples ------------------------------------------------


def test_example_integrated_component_costs_are_not_stacked(pack: RulePack) -> None:
    """A first component costs 50; a second component built from it adds 100: costs are 50 and 100."""
    first = credit_45x(pack, eam(production_cost=D(50)))
    second = credit_45x(pack, eam(production_cost=D(150), purchased_eligible_components_cost=D(50)))
    assert first.amounts["eligible_production_cost_usd"] == D(50)
    assert second.amounts["eligible_production_cost_usd"] == D(100)
    assert first.amounts["credit_usd"] + second.amounts["credit_usd"] == D(15)  # 10% of 150, not of 200
    items = (
        CostItem("first component, bought", D(50), CostKind.PURCHASED_ELIGIBLE_COMPONENT),
        CostItem("integration", D(100), CostKind.OWN_PRODUCTION),
    )
    assert production_cost_of(pack, Component.ELECTRODE_ACTIVE_MATERIAL, items).included == D(100)


def test_example_nickel_at_99_percent_is_excluded(pack: RulePack) -> None:
    kind = purchase_cost_kind(pack, "nickel", purity=D("0.99"))
    assert kind is CostKind.PURCHASED_ELIGIBLE_COMPONENT
    items = (
        CostItem("nickel 99%", D(800), kind, ("ev-ni",)),
        CostItem("conversion to sulfate", D(200), CostKind.OWN_PRODUCTION),
    )
    f = credit_45x(pack, mineral(production_cost=None, cost_items=items))
    assert f.amounts["eligible_production_cost_usd"] == D(200)
    assert f.amounts["credit_usd"] == D(20)
    assert "ev-ni" in f.events


def test_example_nickel_at_90_percent_is_included(pack: RulePack) -> None:
    kind = purchase_cost_kind(pack, "nickel", purity=D("0.90"))
    assert kind is CostKind.CONSTITUENT_MATERIAL
    items = (CostItem("nickel 90%", D(800), kind), CostItem("refining", D(200), CostKind.OWN_PRODUCTION))
    f = credit_45x(pack, mineral(production_cost=None, cost_items=items))
    assert f.amounts["eligible_production_cost_usd"] == D(1000)


def test_example_cam_counts_unrefined_material_that_was_not_an_eligible_component(pack: RulePack) -> None:
    # review B2: 1.45X-3(e)(2)(iv)(A)(1) counts every direct material cost except material that was an
    # eligible component when acquired; unrefined C was not one, so its 150 counts (Example 2)
    items = (
        CostItem("CAM synthesis", D(300), CostKind.OWN_PRODUCTION),
        CostItem("refined A", D(200), CostKind.CONSTITUENT_MATERIAL),
        CostItem("refined B", D(100), CostKind.CONSTITUENT_MATERIAL),
        CostItem("unrefined C (source of A)", D(150), CostKind.UNREFINED_MATERIAL),
    )
    f = credit_45x(pack, eam(production_cost=None, cost_items=items))
    assert f.amounts["eligible_production_cost_usd"] == D(750)
    assert f.amounts["excluded_cost_usd"] == D(0)
    assert f.amounts["credit_usd"] == D("75.00")


def test_review_b2_repro_raw_concentrate_counts(pack: RulePack) -> None:
    f = credit_45x(
        pack,
        eam(
            production_cost=None,
            cost_items=(
                CostItem("own", D(50), CostKind.OWN_PRODUCTION),
                CostItem("raw concentrate, not an eligible component", D(100), CostKind.UNREFINED_MATERIAL),
            ),
        ),
    )
    assert f.amounts["eligible_production_cost_usd"] == D(150) and f.amounts["credit_usd"] == D("15.00")


def test_only_eligible_components_are_excluded_from_eam_cost(pack: RulePack) -> None:
    # nickel bought at 99% is an applicable critical mineral (excluded); the same nickel at 90% is not
    items = (
        CostItem("own", D(50), CostKind.OWN_PRODUCTION),
        CostItem("nickel 99%", D(100), purchase_cost_kind(pack, "nickel", purity=D("0.99"))),
        CostItem("nickel 90%", D(70), purchase_cost_kind(pack, "nickel", purity=D("0.90"))),
    )
    f = credit_45x(pack, eam(production_cost=None, cost_items=items))
    assert f.amounts["excluded_cost_usd"] == D(100) and f.amounts["eligible_production_cost_usd"] == D(120)


def test_example_lithium_carbonate_earns_one_credit(pack: RulePack) -> None:
    assert is_applicable_critical_mineral(pack, "lithium", form="carbonate")
    both = [eam(unit_id="li2co3-lot-7"), mineral(unit_id="li2co3-lot-7")]
    with pytest.raises(InputError, match="one 45X credit"):
        credit_45x_claims(pack, both)
    [only] = credit_45x_claims(pack, [mineral(unit_id="li2co3-lot-7")])
    assert only.amounts["credit_usd"] == D(100)
    assert any("must not also be claimed as electrode-active-material" in n for n in only.notes)


def test_different_units_may_each_earn_a_credit(pack: RulePack) -> None:
    findings = credit_45x_claims(pack, [eam(unit_id="a"), mineral(unit_id="b")])
    assert [f.amounts["credit_usd"] for f in findings] == [D(100), D(100)]


@pytest.mark.parametrize(
    ("mineral_name", "purity", "form", "expected"),
    [
        ("nickel", D("0.99"), None, True),
        ("nickel", D("0.9899"), None, False),
        ("cobalt", D("0.996"), None, True),
        ("cobalt", D("0.9959"), None, False),
        ("lithium", D("0.999"), None, True),
        ("manganese", D("0.9969"), None, False),
        ("graphite", D("0.999"), None, True),
        ("nickel", None, "sulfate", True),
        ("cobalt", None, "sulphate", True),
        ("lithium", None, "hydroxide", True),
        ("lithium", None, "chloride", False),
    ],
)
def test_applicable_critical_mineral_forms(
    pack: RulePack, mineral_name: str, purity: D | None, form: str | None, expected: bool
) -> None:
    assert is_applicable_critical_mineral(pack, mineral_name, purity=purity, form=form) is expected


def test_unknown_mineral_is_refused(pack: RulePack) -> None:
    with pytest.raises(InputError, match="not listed"):
        is_applicable_critical_mineral(pack, "unobtainium", purity=D(1))


# ---- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "field"),
    [
        (Claim45X(Component.CELL, sale_year=2026), "capacity_kwh"),
        (Claim45X(Component.CELL, capacity_kwh=D(1)), "sale_year"),
        (Claim45X(Component.CRITICAL_MINERAL, sale_year=2026, production_cost=D(1)), "production_year"),
        (cell(production_year=2027, sale_year=2026), "production_year"),
        (cell(capacity_kwh=D(-1)), "capacity_kwh"),
        (cell(capacity_kwh=D(0)), "capacity_kwh"),
        (cell(capacity_kwh=D("NaN")), "capacity_kwh"),
        (cell(max_discharge_kw=D(0)), "max_discharge_kw"),
        (cell(production_cost=D(5)), "production_cost"),
        (eam(capacity_kwh=D(5)), "capacity_kwh"),
        (eam(production_cost=None), "production_cost"),
        (eam(cost_items=(CostItem("x", D(1), CostKind.OWN_PRODUCTION),)), "production_cost"),
        (eam(production_cost=D(-1)), "production_cost"),
        (
            eam(production_cost=D(10), purchased_eligible_components_cost=D(11)),
            "purchased_eligible_components_cost",
        ),
        (cell(first_module_sale=False), "first_module_sale"),
        (module(energy_density_wh_per_l=D(200)), "energy_density_wh_per_l"),
        (
            Claim45X(
                Component.MODULE_WITHOUT_CELLS, sale_year=2026, capacity_kwh=D(10), cells_nameplate_kwh=D(9)
            ),
            "cells_nameplate_kwh",
        ),
        (cell(sale_year=1800), "sale_year"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(pack: RulePack, claim: Claim45X, field: str) -> None:
    with pytest.raises(InputError) as err:
        credit_45x(pack, claim)
    assert err.value.field == field


# ---- pack-driven ------------------------------------------------------------------------------------


def test_user_pack_rate_changes_the_credit(user_pack: Callable[..., Path]) -> None:
    pack = load_pack(user_pack({"credit45x": {"cell_rate": param("40", unit="usd_per_kwh")}}))
    f = credit_45x(pack, cell(capacity_kwh=D(10)))
    assert f.amounts["credit_usd"] == D(400)
    assert f.pack_id == "user-test"
    used = {u.name: u for u in f.parameters_used}
    assert used["credit45x.cell_rate"].citation == "test notice"


def test_user_pack_phase_out_changes_the_factor(user_pack: Callable[..., Path]) -> None:
    schedule = [{"from_year": 2023, "value": "1"}, {"from_year": 2028, "value": "0.5"}]
    pack = load_pack(user_pack({"credit45x": {"component_phase_out_by_sale_year": param(schedule)}}))
    assert credit_45x(pack, cell(sale_year=2028)).amounts["phase_out_factor"] == D("0.5")
    assert credit_45x(pack, cell(sale_year=2027)).amounts["phase_out_factor"] == D(1)


def test_finding_records_parameters_and_custody(pack: RulePack) -> None:
    f = credit_45x(pack, cell(sale_year=2031, events=("ev-1",)))
    names = {(u.name, u.applies_to) for u in f.parameters_used}
    assert ("credit45x.component_phase_out_by_sale_year", "sale year 2031") in names
    assert ("credit45x.cell_rate", "") in names
    assert f.custody_model.value == "mass_balance"
    assert f.events == ("ev-1",)
    for u in f.parameters_used:
        pack.lookup(u.name)  # every recorded name resolves in the pack


# ---- P.L. 119-21: prohibited foreign entities, integrated components, Q1 ------------------------------


def test_q1_critical_mineral_sold_after_2029_both_readings(
    pack: RulePack, user_pack: Callable[..., Path]
) -> None:
    claim = mineral(production_year=2030, sale_year=2031)
    # default reading: the production-year phase-out only; produced 2030 -> 100%
    f = credit_45x(pack, claim)
    assert f.amounts["phase_out_factor"] == 1 and f.amounts["credit_usd"] == D(100)
    assert "credit45x.critical_mineral_sale_year_phase_out" in {p.name for p in f.unconfirmed_parameters()}
    # literal reading: the sale-year phase-out (2031: 50%) applies too, the lower factor wins
    literal = load_pack(user_pack({"credit45x": {"critical_mineral_sale_year_phase_out": param(True)}}))
    g = credit_45x(literal, claim)
    assert g.amounts["phase_out_factor"] == D("0.50") and g.amounts["credit_usd"] == D(50)
    assert any("sale-year factor" in n for n in g.notes)
    with pytest.raises(InputError) as err:
        credit_45x(literal, mineral(production_year=2030, sale_year=None, material_assistance=None))
    assert err.value.field == "sale_year"


def test_pfe_conditions_only_for_taxable_years_beginning_after_enactment(pack: RulePack) -> None:
    bare = Claim45X(Component.CELL, sale_year=2026, capacity_kwh=D(1), taxable_year_start=date(2025, 7, 4))
    assert credit_45x(pack, bare).passed  # a fiscal year that began on 2025-07-04
    later = Claim45X(Component.CELL, sale_year=2026, capacity_kwh=D(1), taxable_year_start=date(2025, 7, 5))
    f = credit_45x(pack, later)
    unconfirmed = {r.name for r in f.requirements if r.confidence == "?" and "UNCONFIRMED" in r.note}
    assert unconfirmed == {
        "taxpayer is neither a specified foreign entity nor a foreign-influenced entity",
        "no material assistance from a prohibited foreign entity (MACR battery-component)",
    }
    assert f.passed and {"unconfirmed.material_assistance", "unconfirmed.taxpayer_not_prohibited"} <= {
        p.name for p in f.unconfirmed_parameters()
    }
    assert not {"unconfirmed.material_assistance"} & {p.name for p in credit_45x(pack, bare).parameters_used}
    # a 2025 sale with no taxable year given: a calendar year is assumed, the rules do not reach it
    f2025 = credit_45x(pack, Claim45X(Component.CELL, sale_year=2025, capacity_kwh=D(1)))
    assert f2025.passed and any("calendar year" in w for w in f2025.warnings)


def test_prohibited_taxpayer_is_barred(pack: RulePack) -> None:
    f = credit_45x(pack, cell(prohibited_foreign_entity_taxpayer=True))
    assert f.status == "fail" and f.amounts["credit_usd"] == 0


@pytest.mark.parametrize(("pfe", "ok"), [("40", True), ("40.0001", False)])
def test_linked_macr_decides_material_assistance(pack: RulePack, pfe: str, ok: bool) -> None:
    ma = evaluate_macr(
        pack,
        category=MacrCategory.BATTERY_COMPONENT,
        total_direct_material_cost=D(100),
        pfe_cost=D(pfe),
        sale_year=2026,
        taxable_year_start=date(2026, 1, 1),
    )
    f = credit_45x(pack, cell(material_assistance=ma))
    req = next(r for r in f.requirements if r.name.startswith("no material assistance"))
    assert req.passed is ok and req.threshold == D("0.60") and f.passed is ok
    assert "macr.equality_passes" in {p.name for p in f.unconfirmed_parameters()}  # carried over


def test_critical_mineral_zero_threshold_needs_no_macr(pack: RulePack) -> None:
    f = credit_45x(pack, mineral(production_year=2028, material_assistance=None))
    assert f.passed and any("threshold for 2028 is 0" in n for n in f.notes)


@pytest.mark.parametrize(
    ("start", "same", "share", "ok"),
    [
        (date(2027, 1, 1), True, D("0.65"), True),
        (date(2027, 1, 1), True, D("0.6499"), False),
        (date(2027, 1, 1), False, D("0.9"), False),
        (date(2027, 1, 1), None, D("0.9"), False),
        (date(2026, 12, 31), False, None, True),  # the rule starts with taxable years after 2026-12-31
    ],
)
def test_integrated_component_65_percent_rule(
    pack: RulePack, start: date, same: bool | None, share: D | None, ok: bool
) -> None:
    ma = evaluate_macr(
        pack,
        category=MacrCategory.BATTERY_COMPONENT,
        total_direct_material_cost=D(100),
        pfe_cost=D(0),
        sale_year=2027,
        taxable_year_start=start,
    )
    claim = cell(
        sale_year=2027,
        taxable_year_start=start,
        material_assistance=ma,
        integrated=True,
        integrated_same_facility=same,
        integrated_us_primary_share=share,
    )
    assert credit_45x(pack, claim).passed is ok
