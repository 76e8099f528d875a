"""45X advanced manufacturing production credit for battery components and critical minerals.

Sources: 26 USC 45X(b)(1)(J)-(M) (rates), 45X(b)(3) (phase-out; critical minerals as amended by
P.L. 119-21), 45X(b)(4) (capacity-to-power ratio), 45X(c)(5)-(6) (definitions), 26 CFR 1.45X-3 and
1.45X-4 (production costs, worked examples), 45X(c)(1)(C) and 45X(d)(4) as amended by P.L. 119-21
(prohibited foreign entities, integrated components). Every number comes from the rule pack.

From taxable years beginning after 2025-07-04 a finding carries the prohibited-foreign-entity
conditions: the taxpayer is neither a specified nor a foreign-influenced entity, and the material
assistance cost ratio meets the threshold for the sale year (a MACR finding from `macr.evaluate_macr`,
linked, decides). A condition the inputs do not establish is a named UNCONFIRMED requirement: assumed
met so the credit is shown, with confidence "?", a warning, and an `unconfirmed.*` entry among the
finding's "?" parameters. Without a taxable year
start, a calendar taxable year is assumed (and a warning says so).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum

from ledger.taxrules._common import FindingContext, cited, fraction, non_negative, positive, usd, year
from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import ClaimKind, Comparison, CustodyModel, Finding, Requirement
from ledger.taxrules.pack import ParamLog, RulePack, YearSchedule
from ledger.taxrules.policy import AllOf, Condition, Policy, Threshold


class Component(StrEnum):
    CELL = "cell"
    MODULE = "module"
    MODULE_WITHOUT_CELLS = "module-without-cells"
    ELECTRODE_ACTIVE_MATERIAL = "electrode-active-material"
    CRITICAL_MINERAL = "critical-mineral"


CAPACITY_COMPONENTS = frozenset({Component.CELL, Component.MODULE, Component.MODULE_WITHOUT_CELLS})
MODULES = frozenset({Component.MODULE, Component.MODULE_WITHOUT_CELLS})
COST_COMPONENTS = frozenset({Component.ELECTRODE_ACTIVE_MATERIAL, Component.CRITICAL_MINERAL})

_RATE_PATH = {
    Component.CELL: "credit45x.cell_rate",
    Component.MODULE: "credit45x.module_rate",
    Component.MODULE_WITHOUT_CELLS: "credit45x.module_without_cells_rate",
    Component.ELECTRODE_ACTIVE_MATERIAL: "credit45x.electrode_active_material_rate",
    Component.CRITICAL_MINERAL: "credit45x.critical_mineral_rate",
}


class CostKind(StrEnum):
    """How a cost line enters production cost (26 CFR 1.45X-3 worked examples)."""

    OWN_PRODUCTION = "own_production"
    CONSTITUENT_MATERIAL = "constituent_material"
    UNREFINED_MATERIAL = "unrefined_material"
    PURCHASED_ELIGIBLE_COMPONENT = "purchased_eligible_component"


@dataclass(frozen=True)
class CostItem:
    description: str
    amount: Decimal
    kind: CostKind
    event_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProductionCost:
    included: Decimal
    excluded: Decimal
    excluded_items: tuple[CostItem, ...]


@dataclass(frozen=True)
class Claim45X:
    """One eligible-component claim; amounts in USD, capacity in kWh, power in kW.

    `purchased_eligible_components_cost` is the purchase price (inside `production_cost`) of material
    that was already an eligible component when bought; it is excluded. Alternatively give
    `cost_items` and let `production_cost_of` classify them. `unit_id` names the material batch so
    `credit_45x_claims` can refuse two credits for one material.
    """

    component: Component
    sale_year: int | None = None
    production_year: int | None = None
    capacity_kwh: Decimal | None = None
    max_discharge_kw: Decimal | None = None
    cells_nameplate_kwh: Decimal | None = None
    energy_density_wh_per_l: Decimal | None = None
    production_cost: Decimal | None = None
    purchased_eligible_components_cost: Decimal = Decimal(0)
    cost_items: tuple[CostItem, ...] = ()
    first_module_sale: bool = True
    unit_id: str | None = None
    events: tuple[str, ...] = ()
    #: first day of the taxpayer's taxable year of the sale (None: the calendar year of the sale)
    taxable_year_start: date | None = None
    #: a 45X MACR finding (`macr.evaluate_macr`) for this component; None: not established
    material_assistance: Finding | None = None
    #: the taxpayer is a specified foreign entity or a foreign-influenced entity; None: not stated
    prohibited_foreign_entity_taxpayer: bool | None = None
    #: the component was integrated into another eligible component of the taxpayer (45X(d)(4))
    integrated: bool = False
    integrated_same_facility: bool | None = None
    #: share of the secondary component's direct material costs from US-made primary components
    integrated_us_primary_share: Decimal | None = None


def _norm_form(form: str) -> str:
    return form.strip().lower().replace("sulphate", "sulfate")


def is_applicable_critical_mineral(
    pack: RulePack, mineral: str, *, purity: Decimal | None = None, form: str | None = None
) -> bool:
    """Whether material is already an applicable critical mineral (26 USC 45X(c)(6), 26 CFR 1.45X-4):
    a listed compound form, or at least the listed purity (e.g. nickel >= 99% Ni)."""
    section = pack.credit45x
    key = mineral.strip().lower()
    forms = section.critical_mineral_forms.value.get(key)
    minimum = section.critical_mineral_min_purity.value.get(key)
    if forms is None and minimum is None:
        raise InputError("mineral", f"{mineral!r} is not listed in rule pack {pack.pack_id}")
    if form is not None and _norm_form(form) in {_norm_form(f) for f in forms or ()}:
        return True
    if purity is not None:
        fraction("purity", purity)
        return minimum is not None and purity >= minimum
    return False


def purchase_cost_kind(
    pack: RulePack, mineral: str, *, purity: Decimal | None = None, form: str | None = None
) -> CostKind:
    """Classify purchased mineral feedstock: already eligible (price excluded) or not (may count)."""
    if is_applicable_critical_mineral(pack, mineral, purity=purity, form=form):
        return CostKind.PURCHASED_ELIGIBLE_COMPONENT
    return CostKind.CONSTITUENT_MATERIAL


def _excluded_kinds_path(component: Component) -> str:
    if component is Component.ELECTRODE_ACTIVE_MATERIAL:
        return "credit45x.eam_cost_excluded_kinds"
    if component is Component.CRITICAL_MINERAL:
        return "credit45x.critical_mineral_cost_excluded_kinds"
    raise InputError("component", f"{component.value} is credited per kWh, not on production cost")


def _production_cost(log: ParamLog, component: Component, items: Sequence[CostItem]) -> ProductionCost:
    excluded_kinds = set(log.texts(_excluded_kinds_path(component)))
    included = Decimal(0)
    excluded = Decimal(0)
    excluded_items: list[CostItem] = []
    for i, item in enumerate(items):
        non_negative(f"cost_items[{i}].amount", item.amount)
        if item.kind.value in excluded_kinds:
            excluded += item.amount
            excluded_items.append(item)
        else:
            included += item.amount
    return ProductionCost(included=included, excluded=excluded, excluded_items=tuple(excluded_items))


def production_cost_of(pack: RulePack, component: Component, items: Sequence[CostItem]) -> ProductionCost:
    """Production cost that earns the 10% credit (26 CFR 1.45X-3): purchased eligible components are
    never counted twice; which kinds are excluded is the pack's (`eam_cost_excluded_kinds`,
    `critical_mineral_cost_excluded_kinds`): material that was not an eligible component when acquired,
    unrefined material included, counts (1.45X-3(e)(2)(iv)(A)(1))."""
    return _production_cost(ParamLog(pack), component, items)


def _validate(claim: Claim45X) -> None:
    c = claim.component
    for name in ("sale_year", "production_year"):
        value = getattr(claim, name)
        if value is not None:
            year(name, value)
    if c is Component.CRITICAL_MINERAL and claim.production_year is None:
        raise InputError(
            "production_year", "is required for critical minerals (phase-out is by production year)"
        )
    if c is not Component.CRITICAL_MINERAL and claim.sale_year is None:
        raise InputError("sale_year", f"is required for {c.value} (phase-out is by sale year)")
    if (
        claim.sale_year is not None
        and claim.production_year is not None
        and claim.production_year > claim.sale_year
    ):
        raise InputError("production_year", f"{claim.production_year} is after sale_year {claim.sale_year}")
    if c in CAPACITY_COMPONENTS:
        if claim.capacity_kwh is None:
            raise InputError("capacity_kwh", f"is required for {c.value}")
        positive("capacity_kwh", claim.capacity_kwh)
        if claim.max_discharge_kw is not None:
            positive("max_discharge_kw", claim.max_discharge_kw)
        for name in ("production_cost", "cost_items"):
            if getattr(claim, name):
                raise InputError(name, f"does not apply to {c.value} (credited per kWh)")
        if claim.purchased_eligible_components_cost:
            raise InputError("purchased_eligible_components_cost", f"does not apply to {c.value}")
    else:
        for name in ("capacity_kwh", "max_discharge_kw"):
            if getattr(claim, name) is not None:
                raise InputError(name, f"does not apply to {c.value} (credited on production cost)")
        if claim.production_cost is None and not claim.cost_items:
            raise InputError("production_cost", f"is required for {c.value}")
        if claim.production_cost is not None and claim.cost_items:
            raise InputError("production_cost", "give production_cost or cost_items, not both")
        if claim.production_cost is not None:
            non_negative("production_cost", claim.production_cost)
            non_negative("purchased_eligible_components_cost", claim.purchased_eligible_components_cost)
            if claim.purchased_eligible_components_cost > claim.production_cost:
                raise InputError(
                    "purchased_eligible_components_cost",
                    f"{claim.purchased_eligible_components_cost} exceeds production_cost {claim.production_cost}",
                )
    if claim.cells_nameplate_kwh is not None:
        if c is not Component.MODULE:
            raise InputError("cells_nameplate_kwh", f"applies to modules built from cells, not {c.value}")
        positive("cells_nameplate_kwh", claim.cells_nameplate_kwh)
    if claim.energy_density_wh_per_l is not None:
        if c is not Component.CELL:
            raise InputError("energy_density_wh_per_l", f"applies to cells, not {c.value}")
        positive("energy_density_wh_per_l", claim.energy_density_wh_per_l)
    if not claim.first_module_sale and c not in MODULES:
        raise InputError("first_module_sale", f"applies to modules, not {c.value}")
    if claim.integrated_us_primary_share is not None:
        fraction("integrated_us_primary_share", claim.integrated_us_primary_share)
    if not claim.integrated and (
        claim.integrated_us_primary_share is not None or claim.integrated_same_facility is not None
    ):
        raise InputError("integrated", "the integrated-component facts apply only to an integrated component")
    ma = claim.material_assistance
    if ma is not None and ma.claim_kind is not ClaimKind.MACR_45X:
        raise InputError("material_assistance", f"must be a 45X MACR finding, got {ma.claim_kind.value}")


def taxable_year_of(
    claim_start: date | None, sale_year: int, warnings: list[str], what: str = "sale"
) -> date:
    """The taxable year start: as given, or the calendar year of the sale (with a warning)."""
    if claim_start is not None:
        return claim_start
    warnings.append(
        f"taxable year start not given: the calendar year of the {what} ({sale_year}-01-01) is assumed"
    )
    return date(sale_year, 1, 1)


def credit_45x(
    pack: RulePack, claim: Claim45X, *, custody_model: CustodyModel = CustodyModel.MASS_BALANCE
) -> Finding:
    """Evaluate one 45X claim (26 USC 45X(b)(1), (b)(3), (b)(4), (c)(5)-(6); 26 CFR 1.45X-3, 1.45X-4).

    Cells and modules: rate x capacity, capacity capped at 100 x maximum discharge (kW) and, for a
    module, at its cells' nameplate. EAM and critical minerals: 10% of eligible production cost.
    Then the phase-out factor: by sale year, except critical minerals by production year.
    """
    _validate(claim)
    log = ParamLog(pack)
    c = claim.component
    ctx = FindingContext(
        ClaimKind.CREDIT_45X,
        log,
        custody_model,
        events=list(claim.events) + [e for item in claim.cost_items for e in item.event_ids],
        inputs={
            "component": c,
            "sale_year": claim.sale_year,
            "production_year": claim.production_year,
            "capacity_kwh": claim.capacity_kwh,
            "max_discharge_kw": claim.max_discharge_kw,
            "cells_nameplate_kwh": claim.cells_nameplate_kwh,
            "energy_density_wh_per_l": claim.energy_density_wh_per_l,
            "production_cost": claim.production_cost,
            "purchased_eligible_components_cost": (
                claim.purchased_eligible_components_cost if c in COST_COMPONENTS else None
            ),
            "first_module_sale": claim.first_module_sale if c in MODULES else None,
            "unit_id": claim.unit_id,
        },
    )

    # 1. In force: 45X covers components produced and sold after 2022.
    first = log.year("credit45x.first_year")
    years = [y for y in (claim.production_year, claim.sale_year) if y is not None]
    in_force = Condition[Claim45X](
        "production and sale in a year 45X covers",
        lambda _: min(years) >= first,
        **cited(log, "credit45x.first_year"),
        show=lambda _: str(min(years)),
        threshold=f">= {first}",
    ).evaluate(claim)
    if not in_force.passed:
        ctx.notes.append(f"45X does not apply to components produced or sold before {first}")
        return ctx.finish([in_force], {"credit_usd": Decimal(0)}, applicable=False)

    # 2. Phase-out factor: critical minerals by production year, everything else by sale year.
    if c is Component.CRITICAL_MINERAL:
        assert claim.production_year is not None
        phase_path, phase_year, phase_what = (
            "credit45x.critical_mineral_phase_out_by_production_year",
            claim.production_year,
            "production year",
        )
    else:
        assert claim.sale_year is not None
        phase_path, phase_year, phase_what = (
            "credit45x.component_phase_out_by_sale_year",
            claim.sale_year,
            "sale year",
        )
    factor = log.by_year(phase_path, phase_year, phase_what)
    if factor is None:
        ctx.notes.append(f"rule pack has no phase-out step for {phase_what} {phase_year}: 45X not in force")
        return ctx.finish([in_force], {"credit_usd": Decimal(0)}, applicable=False)
    if c is Component.CRITICAL_MINERAL and log.flag("credit45x.critical_mineral_sale_year_phase_out"):
        # review Q1, literal reading: the sale-year phase-out applies to critical minerals too
        if claim.sale_year is None:
            raise InputError(
                "sale_year",
                "is required for critical minerals under credit45x.critical_mineral_sale_year_phase_out",
            )
        sale_path = "credit45x.component_phase_out_by_sale_year"
        sale_factor = log.by_year(sale_path, claim.sale_year, "sale year")
        if sale_factor is not None and sale_factor < factor:
            ctx.notes.append(
                f"critical_mineral_sale_year_phase_out (?): the sale-year factor {sale_factor} for "
                f"{claim.sale_year} is lower than the production-year factor {factor} and applies"
            )
            factor, phase_path, phase_year, phase_what = sale_factor, sale_path, claim.sale_year, "sale year"
    phase_req = Threshold[Claim45X](
        f"phase-out factor for {phase_what} {phase_year} above zero",
        lambda _: factor,
        Decimal(0),
        comparison=Comparison.GT,
        **cited(log, phase_path),
        threshold_year=phase_year,
    ).evaluate(claim)

    rate = log.amount(_RATE_PATH[c])
    amounts: dict[str, Decimal] = {"rate": rate, "phase_out_factor": factor}
    requirements: list[Requirement] = [in_force]

    if c in CAPACITY_COMPONENTS:
        assert claim.capacity_kwh is not None
        requirements += [p.evaluate(claim) for p in _definition_policies(log, claim, ctx.warnings)]
        capped = _capped_capacity(log, claim, ctx.warnings, ctx.notes)
        amounts |= {"capacity_kwh": claim.capacity_kwh, "capped_capacity_kwh": capped}
        gross = rate * capped
    else:
        if claim.cost_items:
            cost = _production_cost(log, c, claim.cost_items)
            gross_cost, excluded = cost.included + cost.excluded, cost.excluded
            ctx.notes += [
                f"excluded from production cost: {i.description} ({i.kind.value})"
                for i in cost.excluded_items
            ]
        else:
            assert claim.production_cost is not None
            log.texts(_excluded_kinds_path(c))
            gross_cost, excluded = claim.production_cost, claim.purchased_eligible_components_cost
        eligible = gross_cost - excluded
        if log.flag("credit45x.one_credit_per_material"):
            other = (
                Component.CRITICAL_MINERAL
                if c is Component.ELECTRODE_ACTIVE_MATERIAL
                else Component.ELECTRODE_ACTIVE_MATERIAL
            )
            ctx.notes.append(
                f"one credit per material: this material must not also be claimed as {other.value}"
            )
        amounts |= {
            "production_cost_usd": gross_cost,
            "excluded_cost_usd": excluded,
            "eligible_production_cost_usd": eligible,
        }
        gross = rate * eligible
    requirements.append(phase_req)
    requirements += _foreign_entity_requirements(log, claim, ctx.warnings, ctx.notes, ctx.events)

    passed_all = all(r.passed for r in requirements)
    amounts["credit_usd"] = usd(gross * factor) if passed_all else Decimal(0)
    return ctx.finish(requirements, amounts)


def _foreign_entity_requirements(
    log: ParamLog, claim: Claim45X, warnings: list[str], notes: list[str], events: list[str]
) -> list[Requirement]:
    """P.L. 119-21 conditions for taxable years beginning after its enactment (45X(c)(1)(C), (d)(4))."""
    sale_year = claim.sale_year if claim.sale_year is not None else claim.production_year
    assert sale_year is not None
    out: list[Requirement] = []
    macr_path = "macr.applies_to_taxable_years_beginning_after"
    cutoff = log.pack.macr.applies_to_taxable_years_beginning_after
    start = claim.taxable_year_start
    if start is None and sale_year > cutoff.value.year - 1:
        start = taxable_year_of(None, sale_year, warnings)
    if start is None or start <= cutoff.value:
        if claim.material_assistance is not None or claim.prohibited_foreign_entity_taxpayer is not None:
            notes.append(
                f"prohibited-foreign-entity rules apply to taxable years beginning after {cutoff.value}"
            )
        return out
    # 1. the taxpayer: neither a specified foreign entity nor a foreign-influenced entity
    bar_path = "macr.prohibited_taxpayer_bar_taxable_years_beginning_after"
    if start > log.day(bar_path):
        stated = claim.prohibited_foreign_entity_taxpayer
        name = "taxpayer is neither a specified foreign entity nor a foreign-influenced entity"
        if stated is None:
            out.append(_unconfirmed(log, name, "not stated", "neither", "taxpayer_not_prohibited", warnings))
        else:
            out.append(
                Condition[Claim45X](
                    name,
                    lambda cl: cl.prohibited_foreign_entity_taxpayer is False,
                    **cited(log, bar_path),
                    show=lambda cl: (
                        "prohibited foreign entity" if cl.prohibited_foreign_entity_taxpayer else "neither"
                    ),
                    threshold="neither",
                ).evaluate(claim)
            )
    # 2. no material assistance from a prohibited foreign entity: the MACR finding, linked
    log.day(macr_path)
    category = "critical-mineral" if claim.component is Component.CRITICAL_MINERAL else "battery-component"
    path = f"macr.{category.replace('-', '_')}_threshold_by_sale_year"
    ma = claim.material_assistance
    if ma is not None:
        events.extend(ma.events)
        for p in ma.parameters_used:
            log.record_use(p)
        if ma.status == "not_applicable":
            notes.append("material assistance: the linked MACR finding is not applicable (see its notes)")
        else:
            threshold = ma.amounts.get("threshold")
            out.append(
                Requirement(
                    name=f"no material assistance from a prohibited foreign entity (MACR {category})",
                    passed=ma.passed,
                    value=ma.amounts.get("macr"),
                    threshold=threshold,
                    threshold_year=sale_year,
                    comparison=Comparison.GE,
                    citation=log.param(path).citation,
                    confidence=min(
                        (r.confidence for r in ma.requirements), key=("?", "S", "P").index, default="?"
                    ),
                    note="linked MACR finding: " + ma.status,
                )
            )
    else:
        out += _unestablished_macr(log, path, category, sale_year, notes, warnings)
    # 3. integrated components (taxable years beginning after 2026-12-31)
    if claim.integrated:
        rule_path = "credit45x.integrated_component_rule_taxable_years_beginning_after"
        if start > log.day(rule_path):
            share_path = "credit45x.integrated_component_us_primary_share"
            minimum = log.amount(share_path)
            out.append(
                AllOf[Claim45X](
                    Condition(
                        "primary and secondary component made in the same facility",
                        lambda cl: cl.integrated_same_facility is True,
                        **cited(log, rule_path),
                        show=lambda cl: {None: "not stated", True: "yes", False: "no"}[
                            cl.integrated_same_facility
                        ],
                    ),
                    Threshold(
                        "secondary component's direct material cost from US-made primary components",
                        lambda cl: cl.integrated_us_primary_share,
                        minimum,
                        comparison=Comparison.GE,
                        **cited(log, share_path),
                    ),
                    name="integrated component counts as sold (45X(d)(4))",
                ).evaluate(claim)
            )
    return out


def _unconfirmed(
    log: ParamLog,
    name: str,
    value: str,
    threshold: Decimal | str,
    key: str,
    warnings: list[str],
    year: int | None = None,
) -> Requirement:
    """A P.L. 119-21 condition nobody established: assumed met so the credit is shown, but named, with
    confidence "?", as an unconfirmed input in the finding's parameters and in a warning."""
    log.user_supplied(
        f"unconfirmed.{key}",
        "assumed met",
        citation="P.L. 119-21 (45X(c)(1)(C)); not established by the inputs",
        note=f"{name}: {value}; give it to confirm or refute",
    )
    warnings.append(f"UNCONFIRMED: {name} ({value}); assumed met, give it to confirm")
    return Requirement(
        name=name,
        passed=True,
        value=value,
        threshold=threshold,
        threshold_year=year,
        comparison=Comparison.IS_TRUE if isinstance(threshold, str) else Comparison.GE,
        citation="P.L. 119-21 (45X(c)(1)(C)); not established by the inputs",
        confidence="?",
        note="UNCONFIRMED: assumed met, not established; the credit depends on it",
    )


def _unestablished_macr(
    log: ParamLog, path: str, category: str, sale_year: int, notes: list[str], warnings: list[str]
) -> list[Requirement]:
    """The material-assistance condition when no MACR finding is linked: a named unconfirmed
    requirement, unless the sale year has no threshold or a zero one."""
    threshold = _macr_threshold(log, path, sale_year)
    if threshold is None:
        notes.append(
            f"no {category} MACR threshold for sale year {sale_year}: material assistance not tested"
        )
    elif threshold == 0 and log.flag("macr.equality_passes"):
        notes.append(f"{category} MACR threshold for {sale_year} is 0: any ratio meets it")
    else:
        name = f"no material assistance from a prohibited foreign entity (MACR {category})"
        return [
            _unconfirmed(log, name, "not established", threshold, "material_assistance", warnings, sale_year)
        ]
    return []


def _macr_threshold(log: ParamLog, path: str, sale_year: int) -> Decimal | None:
    """The MACR threshold for a sale year, under the pack's reading of the table's first step (Q2)."""
    threshold = log.by_year(path, sale_year, "sale year")
    if (
        threshold is None
        and path.startswith("macr.battery_component")
        and log.flag("macr.battery_component_first_step_covers_earlier_sales")
    ):
        p = log.param(path)
        assert isinstance(p, YearSchedule)
        threshold = p.value[0].value
    return threshold


def _definition_policies(log: ParamLog, claim: Claim45X, warnings: list[str]) -> list[Policy[Claim45X]]:
    """Cell: >= 12 Wh and >= 100 Wh/L; module: >= 7 kWh and first sale in its chain (45X(c)(5))."""
    c = claim.component
    policies: list[Policy[Claim45X]] = []
    if c is Component.CELL:
        wh_path = "credit45x.cell_min_capacity"
        parts: list[Policy[Claim45X]] = [
            Threshold(
                "cell capacity (Wh)",
                lambda cl: None if cl.capacity_kwh is None else cl.capacity_kwh * 1000,
                log.amount(wh_path),
                comparison=Comparison.GE,
                **cited(log, wh_path),
            )
        ]
        if claim.energy_density_wh_per_l is None:
            warnings.append(
                "energy density not given: the >= 100 Wh/L part of the cell definition was not checked"
            )
        else:
            density_path = "credit45x.cell_min_energy_density"
            parts.append(
                Threshold(
                    "cell energy density (Wh/L)",
                    lambda cl: cl.energy_density_wh_per_l,
                    log.amount(density_path),
                    comparison=Comparison.GE,
                    **cited(log, density_path),
                )
            )
        policies.append(AllOf(*parts, name="battery cell definition"))
    else:
        kwh_path = "credit45x.module_min_capacity"
        policies.append(
            Threshold(
                "module capacity (kWh)",
                lambda cl: cl.capacity_kwh,
                log.amount(kwh_path),
                comparison=Comparison.GE,
                **cited(log, kwh_path),
                note="tested on the stated capacity, before caps",
            )
        )
        if log.flag("credit45x.first_module_sale_only"):
            policies.append(
                Condition(
                    "first sale of this module in its chain",
                    lambda cl: cl.first_module_sale,
                    **cited(log, "credit45x.first_module_sale_only"),
                    show=lambda cl: str(cl.first_module_sale).lower(),
                )
            )
    return policies


def _capped_capacity(log: ParamLog, claim: Claim45X, warnings: list[str], notes: list[str]) -> Decimal:
    """Capacity counted: at most ratio x max discharge (45X(b)(4)); a module at most its cells' nameplate."""
    assert claim.capacity_kwh is not None
    capped = claim.capacity_kwh
    if claim.max_discharge_kw is None:
        warnings.append("maximum discharge not given: the capacity-to-power cap was not applied")
    else:
        ratio = log.amount("credit45x.max_capacity_to_power_ratio")
        limit = ratio * claim.max_discharge_kw
        if limit < capped:
            notes.append(f"capacity capped at {ratio} x {claim.max_discharge_kw} kW = {limit} kWh")
            capped = limit
    if claim.component is Component.MODULE and log.flag("credit45x.module_capacity_limited_to_cells"):
        if claim.cells_nameplate_kwh is None:
            warnings.append("cells' nameplate capacity not given: the module was not capped at its cells")
        elif claim.cells_nameplate_kwh < capped:
            notes.append(f"module capacity capped at its cells' nameplate {claim.cells_nameplate_kwh} kWh")
            capped = claim.cells_nameplate_kwh
    return capped


def credit_45x_claims(
    pack: RulePack, claims: Sequence[Claim45X], *, custody_model: CustodyModel = CustodyModel.MASS_BALANCE
) -> list[Finding]:
    """Evaluate several claims, refusing one material (same `unit_id`) claimed under two components:
    e.g. lithium carbonate is both an electrode active material and a critical mineral, and earns one
    credit, never both (26 CFR 1.45X-3). The caller picks which."""
    if pack.credit45x.one_credit_per_material.value:
        seen: defaultdict[str, list[Component]] = defaultdict(list)
        for claim in claims:
            if claim.unit_id is not None:
                seen[claim.unit_id].append(claim.component)
        for unit, components in seen.items():
            if len(components) > 1:
                listed = " and ".join(x.value for x in components)
                raise InputError(
                    "claims",
                    f"unit {unit!r} is claimed as {listed}: a material earns one 45X credit; keep one claim",
                )
    return [credit_45x(pack, claim, custody_model=custody_model) for claim in claims]
