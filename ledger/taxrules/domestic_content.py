"""48E / 45Y domestic content bonus.

Sources: 26 USC 48E(a)(3)(B) and 45Y(g)(11) (bonus and adjusted percentages), 26 CFR 1.48E-1(b)(6)(i),
49 CFR 661.5 (steel and iron), IRS Notices 2024-41 and 2025-08 (elective safe-harbor cost tables:
user-supplied here, none shipped as fact). 48E and 45Y each have their own schedule keyed by the DATE
construction begins (48E changes on 2025-06-16); offshore wind has its own schedules (see the pack).
Steel and iron not checked is a requirement not met: no bonus on an unchecked half of the test.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum

from ledger.taxrules._common import FindingContext, cited, fraction, non_negative, positive, usd, year
from ledger.taxrules.errors import InputError
from ledger.taxrules.findings import ClaimKind, Comparison, CustodyModel, Finding, Requirement
from ledger.taxrules.pack import ParamLog, RulePack
from ledger.taxrules.policy import Threshold


class CleanElectricityCredit(StrEnum):
    INVESTMENT_48E = "48E"
    PRODUCTION_45Y = "45Y"


def domestic_cost_percentage(us_cost: Decimal, total_cost: Decimal) -> Decimal:
    """Cost of US-manufactured products and components / total manufactured products cost."""
    non_negative("domestic_cost", us_cost)
    positive("total_cost", total_cost)
    if us_cost > total_cost:
        raise InputError("domestic_cost", f"{us_cost} exceeds total_cost {total_cost}")
    return us_cost / total_cost


def safe_harbor_percentage(table: Mapping[str, Decimal], us_components: Collection[str]) -> Decimal:
    """Domestic cost percentage under an elective safe-harbor table (Notices 2024-41, 2025-08): the sum
    of the table shares of the components manufactured in the US. The table is the user's."""
    if not table:
        raise InputError("safe_harbor_table", "is empty")
    for name, share in table.items():
        fraction(f"safe_harbor_table[{name!r}]", share)
    total = sum(table.values(), Decimal(0))
    if total > 1:
        raise InputError("safe_harbor_table", f"shares add up to {total}, more than 1")
    unknown = sorted(set(us_components) - set(table))
    if unknown:
        raise InputError("us_components", f"not in the safe-harbor table: {', '.join(unknown)}")
    return sum((table[name] for name in set(us_components)), Decimal(0))


def _schedule_path(credit: CleanElectricityCredit, offshore_wind: bool) -> str:
    suffix = "48e" if credit is CleanElectricityCredit.INVESTMENT_48E else "45y"
    prefix = "offshore_wind_adjusted_percentage" if offshore_wind else "adjusted_percentage"
    return f"domestic_content.{prefix}_{suffix}"


def construction_start_of(
    construction_start: date | None, construction_year: int | None
) -> tuple[date, bool]:
    """(the day construction began, whether it is exact): `construction_year` alone is a shorthand
    for the year, resolved by `adjusted_percentage` to the strictest day of that year."""
    if construction_start is not None:
        if construction_year is not None and construction_year != construction_start.year:
            raise InputError(
                "construction_year",
                f"{construction_year} disagrees with construction_start {construction_start}",
            )
        return construction_start, True
    if construction_year is None:
        raise InputError("construction_start", "give the date construction began (or its year)")
    year("construction_year", construction_year)
    return date(construction_year, 1, 1), False


def adjusted_percentage(
    log: ParamLog, path: str, start: date, exact: bool, notes: list[str]
) -> tuple[Decimal, date]:
    """The adjusted percentage for construction begun on `start` and the step's day. With only a year
    (`exact` false) and a step change inside that year, the strictest value of the year applies and
    a note says so: a year never earns more than the dates in it would."""
    day = start
    if not exact:
        candidates = [start] + [s.start for s in log.date_steps(path) if s.start.year == start.year]
        best: tuple[Decimal, date] | None = None
        for d in candidates:
            step = log.date_step(path, d)
            if step is not None and (best is None or step.value > best[0]):
                best = (step.value, d)
        if best is not None:
            day = best[1]
        if len(candidates) > 1:
            changes = ", ".join(s.isoformat() for s in candidates[1:] if s != date(start.year, 1, 1))
            if changes:
                notes.append(
                    f"construction start date not given: the percentage changes on {changes} within "
                    f"{start.year}; the strictest value of the year is applied (give the start date)"
                )
    value = log.by_date(path, day, "construction start")
    if value is None:
        raise InputError("construction_start", f"rule pack has no adjusted percentage for {day}")
    return value, day


@dataclass(frozen=True)
class _Subject:
    percentage: Decimal
    steel_iron_us_share: Decimal | None


def evaluate_domestic_content(
    pack: RulePack,
    *,
    construction_year: int | None = None,
    construction_start: date | None = None,
    credit: CleanElectricityCredit = CleanElectricityCredit.INVESTMENT_48E,
    domestic_cost: Decimal | None = None,
    total_cost: Decimal | None = None,
    safe_harbor_table: Mapping[str, Decimal] | None = None,
    us_components: Collection[str] = (),
    steel_iron_us_share: Decimal | None = None,
    offshore_wind: bool = False,
    prevailing_wage: bool = False,
    base_credit_usd: Decimal | None = None,
    events: Sequence[str] = (),
    custody_model: CustodyModel = CustodyModel.MASS_BALANCE,
) -> Finding:
    """Domestic content bonus test (26 USC 48E(a)(3)(B), 45Y(g)(11); 49 CFR 661.5).

    Give either `domestic_cost` and `total_cost`, or a user `safe_harbor_table` (component -> share)
    with the components made in the US. The bonus: 48E +2 points on the rate, or +10 points with
    prevailing wage; 45Y +10% of the credit (with `base_credit_usd`, in dollars too). Construction
    start: the date (`construction_start`), or the year as a shorthand (strictest day of the year).
    """
    start, exact = construction_start_of(construction_start, construction_year)
    log = ParamLog(pack)
    kind = (
        ClaimKind.DOMESTIC_CONTENT_48E
        if credit is CleanElectricityCredit.INVESTMENT_48E
        else ClaimKind.DOMESTIC_CONTENT_45Y
    )
    ctx = FindingContext(kind, log, custody_model, events=list(events))
    by_cost = domestic_cost is not None or total_cost is not None
    if by_cost and safe_harbor_table is not None:
        raise InputError(
            "safe_harbor_table", "give domestic_cost/total_cost or a safe-harbor table, not both"
        )
    if safe_harbor_table is not None:
        percentage = safe_harbor_percentage(safe_harbor_table, us_components)
        log.text("domestic_content.safe_harbor_cost_table")
        log.user_supplied(
            "user.safe_harbor_table",
            ", ".join(f"{k}: {v}" for k, v in safe_harbor_table.items()),
            citation=log.param("domestic_content.safe_harbor_cost_table").citation,
            note="user-supplied table; the pack ships none as fact",
        )
        method = "elective safe-harbor table"
    elif domestic_cost is not None and total_cost is not None:
        if us_components:
            raise InputError("us_components", "applies only with a safe-harbor table")
        percentage = domestic_cost_percentage(domestic_cost, total_cost)
        method = "domestic cost percentage"
    else:
        raise InputError("domestic_cost", "give both domestic_cost and total_cost, or a safe-harbor table")
    if steel_iron_us_share is not None:
        fraction("steel_iron_us_share", steel_iron_us_share)
    if base_credit_usd is not None:
        non_negative("base_credit_usd", base_credit_usd)
        if credit is CleanElectricityCredit.INVESTMENT_48E:
            raise InputError("base_credit_usd", "applies to 45Y; for 48E the bonus is in rate points")
    subject = _Subject(percentage, steel_iron_us_share)

    requirements: list[Requirement] = []
    steel_path = "domestic_content.steel_iron_us_share"
    requirements.append(
        Threshold[_Subject](
            "steel and iron manufactured in the US (share)",
            lambda s: s.steel_iron_us_share,
            log.amount(steel_path),
            comparison=Comparison.GE,
            **cited(log, steel_path),
            note="not given: the 100% US steel and iron requirement is unmet until it is checked"
            if steel_iron_us_share is None
            else "",
        ).evaluate(subject)
    )
    path = _schedule_path(credit, offshore_wind)
    threshold, _day = adjusted_percentage(log, path, start, exact, ctx.notes)
    requirements.append(
        Threshold[_Subject](
            f"manufactured products: {method}",
            lambda s: s.percentage,
            threshold,
            comparison=Comparison.GE,
            **cited(log, path),
            threshold_year=start.year,
            note=f"{credit.value} {'offshore wind ' if offshore_wind else ''}schedule",
        ).evaluate(subject)
    )
    requirements.append(ctx.custody_requirement())
    passed = all(r.passed for r in requirements)

    amounts: dict[str, Decimal] = {"domestic_cost_percentage": percentage, "threshold": threshold}
    if credit is CleanElectricityCredit.INVESTMENT_48E:
        points_path = (
            "domestic_content.bonus_48e_prevailing_wage_points"
            if prevailing_wage
            else "domestic_content.bonus_48e_base_points"
        )
        points = log.amount(points_path)
        amounts["bonus_rate_points"] = points if passed else Decimal(0)
    else:
        increase = log.amount("domestic_content.bonus_45y_credit_increase")
        amounts["bonus_credit_fraction"] = increase if passed else Decimal(0)
        if prevailing_wage:
            ctx.notes.append(
                "45Y: the bonus is a 10% increase whatever the wage rate; prevailing wage sets the base"
            )
        if base_credit_usd is not None:
            bonus = usd(base_credit_usd * increase) if passed else Decimal(0)
            amounts |= {
                "base_credit_usd": base_credit_usd,
                "bonus_usd": bonus,
                "credit_usd": base_credit_usd + bonus,
            }
    # recorded once the checks above have accepted the inputs (us_components is sorted here)
    ctx.inputs.update(
        {
            "credit": credit,
            "construction_year": start.year,
            "construction_start": start if exact else None,
            "domestic_cost": domestic_cost,
            "total_cost": total_cost,
            "us_components": ", ".join(sorted(us_components)) or None,
            "steel_iron_us_share": steel_iron_us_share,
            "offshore_wind": offshore_wind,
            "prevailing_wage": prevailing_wage,
            "base_credit_usd": base_credit_usd,
        }
    )
    return ctx.finish(requirements, amounts)
