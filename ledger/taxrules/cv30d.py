"""Former 30D clean vehicle credit: critical-mineral and battery-component requirements, FEOC exclusion.

Sources: 26 USC 30D(b)(2)-(3) (amounts), 30D(e)(1)-(2) (applicable percentages), 30D(d)(7) (foreign
entities of concern), 30D(h) as amended by P.L. 119-21 (no credit for vehicles acquired after
2025-09-30), T.D. 9995 / 26 CFR 1.30D-3 and 1.30D-6 (traced qualifying value, 50% value-added safe
harbor, impracticable-to-trace materials). Historic claims only. Before 2023-04-18 the requirements
did not apply in this form: the finding says so (not_applicable) instead of failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum

from ledger.taxrules._common import FindingContext, cited, fraction, non_negative
from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import ClaimKind, Comparison, CustodyModel, Finding, Requirement
from ledger.taxrules.pack import ParamLog, RulePack
from ledger.taxrules.policy import AnyOf, Condition, Threshold


class SupplyStep(StrEnum):
    EXTRACTION = "extraction"
    PROCESSING = "processing"
    RECYCLING = "recycling"


def qualifying_location(pack: RulePack, step: SupplyStep, country: str, on: date) -> bool:
    """30D(e)(1)(A): extracted or processed in the US or an FTA country (as dated in the pack, e.g.
    Japan from 2023-03-28), or recycled in North America."""
    geo = pack.geography
    code = country.strip().upper()
    if step is SupplyStep.RECYCLING:
        return geo.north_america.contains(code, on)
    return code == "US" or geo.fta_countries.contains(code, on)


@dataclass(frozen=True)
class EntityControl:
    """Facts about one entity for the FEOC test (DOE interpretation, 2024): where it is organised or
    has its principal place of business, and what a foreign government holds."""

    jurisdiction: str
    government_country: str | None = None
    board_share: Decimal = Decimal(0)
    voting_share: Decimal = Decimal(0)
    equity_share: Decimal = Decimal(0)
    contractual_control: bool = False


def is_foreign_entity_of_concern(pack: RulePack, entity: EntityControl) -> tuple[bool, str]:
    """FEOC if subject to a covered nation's jurisdiction, or a covered-nation government holds
    >= 25% of board seats, votes or equity (each tested alone), or has contractual control."""
    geo = pack.geography
    share = geo.feoc_control_share.value
    covered = geo.feoc_covered_nations
    if covered.contains(entity.jurisdiction.upper()):
        return True, f"subject to the jurisdiction of covered nation {entity.jurisdiction.upper()}"
    if entity.government_country and covered.contains(entity.government_country.upper()):
        gov = entity.government_country.upper()
        for name in ("board_share", "voting_share", "equity_share"):
            held = fraction(name, getattr(entity, name))
            if held >= share:
                return True, f"government of {gov} holds {held} of {name.removesuffix('_share')} (>= {share})"
        if entity.contractual_control:
            return True, f"government of {gov} has contractual control"
    return False, "no covered-nation jurisdiction, control share or contractual control"


@dataclass(frozen=True)
class MineralChain:
    """One procurement chain of applicable critical minerals (T.D. 9995).

    Value-added shares are the fraction of the value added by that step which happened in a
    qualifying place (US/FTA for extraction and processing, North America for recycling).
    """

    chain_id: str
    total_value_usd: Decimal
    traced_qualifying_value_usd: Decimal
    extraction_value_added_share: Decimal | None = None
    processing_value_added_share: Decimal | None = None
    recycling_value_added_share: Decimal | None = None
    event_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class MineralContent:
    content: Decimal
    qualifying_value_usd: Decimal
    total_value_usd: Decimal
    safe_harbor_chains: tuple[str, ...]


def _safe_harbor_policy(log: ParamLog) -> AnyOf[MineralChain]:
    path = "cv30d.value_added_safe_harbor_share"
    share = log.amount(path)

    def step(name: str, attr: str) -> Threshold[MineralChain]:
        return Threshold(
            f"{name} value added in qualifying places",
            lambda ch: getattr(ch, attr),
            share,
            comparison=Comparison.GE,
            **cited(log, path),
        )

    return AnyOf(
        step("extraction", "extraction_value_added_share"),
        step("processing", "processing_value_added_share"),
        step("recycling", "recycling_value_added_share"),
        name="50% value-added safe harbor",
    )


def _mineral_content(
    log: ParamLog,
    chains: Sequence[MineralChain],
    report_date: date | None,
    warnings: list[str],
    notes: list[str],
) -> MineralContent:
    log.text("cv30d.traced_value_formula")
    window = log.param("cv30d.value_added_safe_harbor_share").effective
    use_safe_harbor = False
    if report_date is None:
        warnings.append("report date not given: the 50% value-added safe harbor was not considered")
    elif window is not None and not window.covers(report_date):
        notes.append(f"report date {report_date} is outside the safe-harbor window {window.describe()}")
    else:
        use_safe_harbor = True
    policy = _safe_harbor_policy(log) if use_safe_harbor else None
    total = Decimal(0)
    qualifying = Decimal(0)
    harboured: list[str] = []
    for i, ch in enumerate(chains):
        non_negative(f"mineral_chains[{i}].total_value_usd", ch.total_value_usd)
        non_negative(f"mineral_chains[{i}].traced_qualifying_value_usd", ch.traced_qualifying_value_usd)
        if ch.traced_qualifying_value_usd > ch.total_value_usd:
            raise InputError(
                f"mineral_chains[{i}].traced_qualifying_value_usd", "exceeds the chain's total value"
            )
        for attr in (
            "extraction_value_added_share",
            "processing_value_added_share",
            "recycling_value_added_share",
        ):
            value = getattr(ch, attr)
            if value is not None:
                fraction(f"mineral_chains[{i}].{attr}", value)
        total += ch.total_value_usd
        if policy is not None and policy.evaluate(ch).passed:
            qualifying += ch.total_value_usd
            harboured.append(ch.chain_id)
            notes.append(f"chain {ch.chain_id}: 50% value-added safe harbor met, whole value counts")
        else:
            qualifying += ch.traced_qualifying_value_usd
    if total <= 0:
        raise InputError("mineral_chains", "total value of critical minerals must be > 0")
    return MineralContent(qualifying / total, qualifying, total, tuple(harboured))


def critical_mineral_content(
    pack: RulePack, chains: Sequence[MineralChain], *, report_date: date | None = None
) -> MineralContent:
    """Qualifying critical mineral content = total traced qualifying value / total value (T.D. 9995;
    formula details unconfirmed), a chain counting whole under the 50% value-added safe harbor when the
    report date is inside its window."""
    return _mineral_content(ParamLog(pack), chains, report_date, [], [])


@dataclass(frozen=True)
class _Vehicle:
    acquired: date
    placed_in_service: date
    cm_content: Decimal
    bc_content: Decimal
    feoc_battery_component: bool
    feoc_critical_mineral: bool


def evaluate_30d(
    pack: RulePack,
    *,
    acquired: date,
    placed_in_service: date,
    battery_component_content: Decimal,
    critical_mineral_content: Decimal | None = None,
    mineral_chains: Sequence[MineralChain] = (),
    report_date: date | None = None,
    feoc_battery_component: bool = False,
    feoc_critical_mineral: bool = False,
    feoc_only_impracticable_to_trace: bool = False,
    events: Sequence[str] = (),
    custody_model: CustodyModel = CustodyModel.MASS_BALANCE,
) -> Finding:
    """Evaluate a former-30D claim (26 USC 30D(b), (d)(7), (e), (h); T.D. 9995).

    $3,750 for each of the critical-mineral and battery-component requirements met, nothing if a FEOC
    restriction in force is breached (it takes the vehicle out of "new clean vehicle") or the vehicle
    was acquired after the last acquisition date. Give the critical-mineral content as a fraction, or
    the procurement chains it is computed from.
    """
    if placed_in_service < acquired:
        raise InputError("placed_in_service", f"{placed_in_service} is before acquired {acquired}")
    fraction("battery_component_content", battery_component_content)
    if (critical_mineral_content is None) == (not mineral_chains):
        raise InputError("critical_mineral_content", "give the content or mineral_chains, exactly one")
    if feoc_only_impracticable_to_trace and not feoc_critical_mineral:
        raise InputError(
            "feoc_only_impracticable_to_trace", "needs feoc_critical_mineral (a FEOC-touched mineral)"
        )
    log = ParamLog(pack)
    ctx = FindingContext(
        ClaimKind.CLEAN_VEHICLE_30D,
        log,
        custody_model,
        events=list(events) + [e for ch in mineral_chains for e in ch.event_ids],
        inputs={
            "acquired": acquired,
            "placed_in_service": placed_in_service,
            "critical_mineral_content": critical_mineral_content,
            "battery_component_content": battery_component_content,
            "mineral_chains": len(mineral_chains) or None,
            "report_date": report_date,
            "feoc_battery_component": feoc_battery_component,
            "feoc_critical_mineral": feoc_critical_mineral,
            "feoc_only_impracticable_to_trace": feoc_only_impracticable_to_trace or None,
        },
    )

    # 1. Regime in force: the requirements apply from 2023-04-18 (placed in service).
    effective = log.day("cv30d.requirements_effective")
    in_force = Requirement(
        name="placed in service when the mineral and component requirements apply",
        passed=placed_in_service >= effective,
        value=placed_in_service.isoformat(),
        threshold=f">= {effective}",
        comparison=Comparison.IS_TRUE,
        **cited(log, "cv30d.requirements_effective"),
    )
    if not in_force.passed:
        ctx.notes.append(
            f"the critical-mineral and battery-component requirements did not apply in this form before {effective};"
            " such a vehicle is assessed under the rules then in force, which this rule does not evaluate"
        )
        return ctx.finish([in_force], {}, applicable=False)

    if critical_mineral_content is not None:
        cm_content = fraction("critical_mineral_content", critical_mineral_content)
    else:
        mc = _mineral_content(log, mineral_chains, report_date, ctx.warnings, ctx.notes)
        cm_content = mc.content
        ctx.inputs["critical_mineral_value_usd"] = mc.total_value_usd
        ctx.inputs["qualifying_critical_mineral_value_usd"] = mc.qualifying_value_usd
    v = _Vehicle(
        acquired,
        placed_in_service,
        cm_content,
        battery_component_content,
        feoc_battery_component,
        feoc_critical_mineral,
    )
    requirements: list[Requirement] = [in_force]

    # 2. Acquisition cut-off.
    last = log.day("cv30d.last_acquisition_date")
    requirements.append(
        Condition[_Vehicle](
            "acquired on or before the last acquisition date",
            lambda x: x.acquired <= last,
            **cited(log, "cv30d.last_acquisition_date"),
            show=lambda x: x.acquired.isoformat(),
            threshold=f"<= {last}",
        ).evaluate(v)
    )

    # 3. FEOC exclusions, each from its own placed-in-service date.
    comp_from = log.day("cv30d.feoc_battery_components_from")
    if placed_in_service >= comp_from:
        requirements.append(
            Condition[_Vehicle](
                "no battery component manufactured or assembled by a FEOC",
                lambda x: not x.feoc_battery_component,
                **cited(log, "cv30d.feoc_battery_components_from"),
                show=lambda x: "FEOC component" if x.feoc_battery_component else "none reported",
            ).evaluate(v)
        )
    else:
        ctx.notes.append(
            f"battery-component FEOC restriction applies from {comp_from}: not in force for this vehicle"
        )
    min_from = log.day("cv30d.feoc_critical_minerals_from")
    if placed_in_service >= min_from:
        excused = False
        if feoc_critical_mineral and feoc_only_impracticable_to_trace:
            until = log.day("cv30d.impracticable_to_trace_until")
            if placed_in_service <= until:
                excused = True
                ctx.warnings.append(
                    f"FEOC-touched minerals only in impracticable-to-trace materials: excluded until {until}"
                )
            else:
                ctx.notes.append(f"impracticable-to-trace exclusion ended {until}")
        requirements.append(
            Condition[_Vehicle](
                "no critical mineral extracted, processed or recycled by a FEOC",
                lambda x: not x.feoc_critical_mineral or excused,
                **cited(log, "cv30d.feoc_critical_minerals_from"),
                show=lambda x: "FEOC-touched mineral" if x.feoc_critical_mineral else "none reported",
                note="impracticable-to-trace exclusion applied" if excused else "",
            ).evaluate(v)
        )
    else:
        ctx.notes.append(
            f"critical-mineral FEOC restriction applies from {min_from}: not in force for this vehicle"
        )

    # 4. Content requirements: each worth its own amount; at least one must be met.
    cm_path = "cv30d.critical_mineral_applicable_percentage"
    bc_path = "cv30d.battery_component_applicable_percentage"
    cm_threshold = log.by_date(cm_path, placed_in_service, "placed in service")
    bc_threshold = log.by_date(bc_path, placed_in_service, "placed in service")
    if cm_threshold is None or bc_threshold is None:
        ctx.notes.append(f"rule pack has no applicable percentage for {placed_in_service}")
        return ctx.finish(requirements, {}, applicable=False)
    content = AnyOf[_Vehicle](
        Threshold(
            "critical minerals: qualifying content",
            lambda x: x.cm_content,
            cm_threshold,
            comparison=Comparison.GE,
            **cited(log, cm_path),
            threshold_year=placed_in_service.year,
        ),
        Threshold(
            "battery components: North American content",
            lambda x: x.bc_content,
            bc_threshold,
            comparison=Comparison.GE,
            **cited(log, bc_path),
            threshold_year=placed_in_service.year,
        ),
        name="critical-mineral or battery-component requirement met",
    ).evaluate(v)
    requirements.append(content)
    requirements.append(ctx.custody_requirement())

    cm_met, bc_met = (child.passed for child in content.children)
    eligible = all(r.passed for r in requirements)
    cm_amount = log.amount("cv30d.critical_minerals_credit")
    bc_amount = log.amount("cv30d.battery_components_credit")
    cm_credit = cm_amount if eligible and cm_met else Decimal(0)
    bc_credit = bc_amount if eligible and bc_met else Decimal(0)
    return ctx.finish(
        requirements,
        {
            "credit_usd": cm_credit + bc_credit,
            "critical_minerals_credit_usd": cm_credit,
            "battery_components_credit_usd": bc_credit,
            "critical_mineral_content": cm_content,
            "critical_mineral_threshold": cm_threshold,
            "battery_component_content": battery_component_content,
            "battery_component_threshold": bc_threshold,
        },
    )
