"""48E / 45Y domestic content bonus.

Sources: 26 USC 48E(a)(3)(B) and 45Y(g)(11) (bonus and adjusted percentages), 49 CFR 661.5 (steel and
iron), IRS Notices 2024-41 and 2025-08 (elective safe-harbor cost tables: user-supplied here, none
shipped as fact). The adjusted percentage is keyed by the year construction begins; offshore wind has
its own five-step schedule (see the pack notes).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Subject:
    percentage: Decimal
    steel_iron_us_share: Decimal | None


def evaluate_domestic_content(
    pack: RulePack,
    *,
    construction_year: int,
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
    prevailing wage; 45Y +10% of the credit (with `base_credit_usd`, in dollars too).
    """
    year("construction_year", construction_year)
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
    if steel_iron_us_share is None:
        ctx.warnings.append(
            "steel and iron share not given: the 100% US steel and iron requirement was not checked"
        )
    else:
        steel_path = "domestic_content.steel_iron_us_share"
        requirements.append(
            Threshold[_Subject](
                "steel and iron manufactured in the US (share)",
                lambda s: s.steel_iron_us_share,
                log.amount(steel_path),
                comparison=Comparison.GE,
                **cited(log, steel_path),
            ).evaluate(subject)
        )
    path = (
        "domestic_content.offshore_wind_adjusted_percentage_by_construction_year"
        if offshore_wind
        else "domestic_content.adjusted_percentage_by_construction_year"
    )
    threshold = log.by_year(path, construction_year, "construction start year")
    if threshold is None:
        raise InputError("construction_year", f"rule pack has no adjusted percentage for {construction_year}")
    requirements.append(
        Threshold[_Subject](
            f"manufactured products: {method}",
            lambda s: s.percentage,
            threshold,
            comparison=Comparison.GE,
            **cited(log, path),
            threshold_year=construction_year,
            note="offshore wind schedule" if offshore_wind else "",
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
            "construction_year": construction_year,
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
