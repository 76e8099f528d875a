"""45X material assistance cost ratio (MACR): the prohibited-foreign-entity test added in 2025.

Sources: 26 USC 45X and 26 USC 7701(a)(52) as added by P.L. 119-21 (taxable years beginning after
2025-07-04); IRS Notice 2026-15 (interim safe harbors, supplier certifications). Thresholds by sale
year come from the rule pack; whether a ratio equal to the threshold passes is an unconfirmed
parameter (`macr.equality_passes`) named in every finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum

from ledger.taxrules._common import FindingContext, cited, finite, non_negative, positive, year
from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import ClaimKind, Comparison, CustodyModel, Finding, Requirement
from ledger.taxrules.pack import ParamLog, RulePack
from ledger.taxrules.policy import Condition, Threshold


class MacrCategory(StrEnum):
    BATTERY_COMPONENT = "battery-component"
    CRITICAL_MINERAL = "critical-mineral"


_THRESHOLD_PATH = {
    MacrCategory.BATTERY_COMPONENT: "macr.battery_component_threshold_by_sale_year",
    MacrCategory.CRITICAL_MINERAL: "macr.critical_mineral_threshold_by_sale_year",
}


@dataclass(frozen=True)
class SupplierCertification:
    """A supplier's certification (IRS Notice 2026-15): an attested input recorded as a ledger event."""

    supplier: str
    event_id: str
    note: str = ""


def material_assistance_cost_ratio(total_direct_material_cost: Decimal, pfe_cost: Decimal) -> Decimal:
    """MACR = (total direct material cost - cost attributable to prohibited foreign entities)
    / total direct material cost (26 USC 7701(a)(52), P.L. 119-21)."""
    positive("total_direct_material_cost", total_direct_material_cost)
    non_negative("pfe_cost", pfe_cost)
    if pfe_cost > total_direct_material_cost:
        raise InputError(
            "pfe_cost", f"{pfe_cost} exceeds total_direct_material_cost {total_direct_material_cost}"
        )
    return (total_direct_material_cost - pfe_cost) / total_direct_material_cost


@dataclass(frozen=True)
class _Subject:
    macr: Decimal
    taxable_year_start: date | None


def evaluate_macr(
    pack: RulePack,
    *,
    category: MacrCategory,
    total_direct_material_cost: Decimal,
    pfe_cost: Decimal,
    sale_year: int,
    taxable_year_start: date | None = None,
    certifications: Sequence[SupplierCertification] = (),
    events: Sequence[str] = (),
    custody_model: CustodyModel = CustodyModel.MASS_BALANCE,
) -> Finding:
    """Test the MACR against the threshold for the sale year (26 USC 7701(a)(52); P.L. 119-21).

    Before the rule applies (taxable year beginning on or before 2025-07-04, or a sale year without a
    threshold in the pack) the finding is not_applicable and says why. Without `taxable_year_start` the
    calendar year of the sale is assumed (a warning says so), for both categories alike.
    """
    year("sale_year", sale_year)
    for v in (total_direct_material_cost, pfe_cost):
        finite("cost", v)
    ratio = material_assistance_cost_ratio(total_direct_material_cost, pfe_cost)
    log = ParamLog(pack)
    subject = _Subject(ratio, taxable_year_start)
    ctx = FindingContext(
        ClaimKind.MACR_45X,
        log,
        custody_model,
        events=list(events),
        inputs={
            "category": category,
            "total_direct_material_cost": total_direct_material_cost,
            "pfe_cost": pfe_cost,
            "sale_year": sale_year,
            "taxable_year_start": taxable_year_start,
        },
    )
    for i, cert in enumerate(certifications):
        if not cert.event_id:
            raise InputError(f"certifications[{i}].event_id", "a certification must name the ledger event")
        ctx.events.append(cert.event_id)
        ctx.notes.append(
            f"supplier certification relied on: {cert.supplier} (event {cert.event_id}) {cert.note}".strip()
        )
    if certifications:
        log.text("macr.supplier_certification")
    amounts: dict[str, Decimal] = {
        "macr": ratio,
        "total_direct_material_cost_usd": total_direct_material_cost,
        "pfe_cost_usd": pfe_cost,
    }

    requirements: list[Requirement] = []
    # 1. Applicability: taxable years beginning after the enactment date.
    start_path = "macr.applies_to_taxable_years_beginning_after"
    cutoff = log.day(start_path)
    if taxable_year_start is None:
        ctx.warnings.append(
            f"taxable year start not given: the calendar year of the sale ({sale_year}-01-01) is assumed"
        )
        subject = _Subject(ratio, date(sale_year, 1, 1))
    applies = Condition[_Subject](
        "taxable year begins after the MACR effective date",
        lambda s: s.taxable_year_start is not None and s.taxable_year_start > cutoff,
        **cited(log, start_path),
        show=lambda s: str(s.taxable_year_start),
        threshold=f"> {cutoff}",
    ).evaluate(subject)
    requirements.append(applies)
    if not applies.passed:
        ctx.notes.append(f"MACR does not apply to taxable years beginning on or before {cutoff}")
        return ctx.finish(requirements, amounts, applicable=False)

    # 2. Threshold for the sale year.
    path = _THRESHOLD_PATH[category]
    threshold = log.by_year(path, sale_year, "sale year")
    # review Q2: does the table's first step cover earlier sales ("sold before 2027")?
    if (
        threshold is None
        and category is MacrCategory.BATTERY_COMPONENT
        and log.flag("macr.battery_component_first_step_covers_earlier_sales")
    ):
        threshold = pack.macr.battery_component_threshold_by_sale_year.value[0].value
        ctx.notes.append(
            f"battery_component_first_step_covers_earlier_sales (?): the first step {threshold} "
            f"applies to sale year {sale_year}"
        )
    if threshold is None:
        ctx.notes.append(
            f"rule pack has no {category.value} MACR threshold for sale year {sale_year}: not applicable"
        )
        return ctx.finish(requirements, amounts, applicable=False)
    amounts["threshold"] = threshold
    log.text("macr.binding_contract_exclusion")
    equality_passes = log.flag("macr.equality_passes")
    p_eq = log.param("macr.equality_passes")
    requirements.append(
        Threshold[_Subject](
            f"material assistance cost ratio ({category.value})",
            lambda s: s.macr,
            threshold,
            comparison=Comparison.GE if equality_passes else Comparison.GT,
            **cited(log, path),
            threshold_year=sale_year,
            note=f"equality {'passes' if equality_passes else 'fails'} (macr.equality_passes, confidence {p_eq.confidence})",
        ).evaluate(subject)
    )
    requirements.append(ctx.custody_requirement())
    return ctx.finish(requirements, amounts)
