"""Rule packs: every threshold, rate, schedule and country list as versioned, cited data.

A pack is one JSON file (format below). The default pack ships inside this package
(`packs/us-eu-2026.json`); a user can load their own for a new notice without code changes, either a
complete pack or one that starts with `"extends": "default"` and replaces only some parameters.

Every parameter is an object with `value`, `citation`, `confidence` ("P" read in the primary text,
"S" two or more secondary sources agree, "?" unconfirmed), an optional `note` and an optional
`effective` window `{"start": date, "end": date}` (inclusive). Value shapes:

- amount:        `"value": "35"` with `"unit"` (fraction, usd, usd_per_kwh, wh, kwh, wh_per_l, ratio)
- flag / date / year / text / text list: plain JSON values
- year schedule: `[{"from_year": 2030, "value": "0.75"}, ...]` steps, increasing; the first step may have
  `"from_year": null` (all earlier years). A year before the first step has no value (rule not in force).
- date schedule: `[{"start": "2024-01-01", "value": "0.50"}, ...]`, same idea at day resolution.
- a step of either schedule may carry its own `"confidence"` when it is less (or more) sure than the
  schedule (e.g. one year of a ramp unconfirmed); a finding that reads that step uses its mark.
- a text parameter that selects a reading of an open question accepts only the named readings
  (`PFE_ATTRIBUTIONS`, `TRACED_CHAIN_READINGS`, `COMPONENT_VALUE_READINGS`).
- fraction table: `{"nickel": "0.99", ...}`; forms table: `{"nickel": ["sulphate"], ...}`
- country list: `[{"code": "JP", "name": "Japan", "start": "2023-03-28", "end": null}, ...]`

Numbers may be JSON numbers or strings; they are read as Decimal (JSON floats never become float).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ledger.taxrules.errors import PackError
from ledger.taxrules.findings import Confidence, ParameterUse

DEFAULT_PACK = "us-eu-2026.json"
PACK_FORMAT = 1

#: readings of the open questions that a user pack can switch (review Q3, Q4, Q6)
PFE_ATTRIBUTIONS = ("look_through", "supplier")
TRACED_CHAIN_READINGS = ("whole_chain", "value_added")
COMPONENT_VALUE_READINGS = ("steps_only", "with_constituents")

Unit = Literal["fraction", "usd", "usd_per_kwh", "wh", "kwh", "wh_per_l", "ratio"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Effective(_Frozen):
    start: date | None = None
    end: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Effective:
        if self.start and self.end and self.end < self.start:
            raise ValueError("effective.end is before effective.start")
        return self

    def covers(self, day: date) -> bool:
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)

    def describe(self) -> str:
        return f"{self.start or '...'}..{self.end or '...'}"


class Param(_Frozen):
    citation: str = Field(min_length=1)
    confidence: Confidence
    note: str = ""
    effective: Effective | None = None

    def shown(self) -> str:
        """The value as an auditor reads it in a finding."""
        raise NotImplementedError


def _fraction(value: Decimal, what: str) -> Decimal:
    if not value.is_finite() or value < 0 or value > 1:
        raise ValueError(f"{what} must be a fraction between 0 and 1, got {value}")
    return value


class Amount(Param):
    value: Decimal
    unit: Unit

    @model_validator(mode="after")
    def _range(self) -> Amount:
        if not self.value.is_finite() or self.value < 0:
            raise ValueError(f"value must be a finite number >= 0, got {self.value}")
        if self.unit == "fraction":
            _fraction(self.value, "value")
        return self

    def shown(self) -> str:
        return f"{self.value} {self.unit}"


class Flag(Param):
    value: bool

    def shown(self) -> str:
        return "true" if self.value else "false"


class Day(Param):
    value: date

    def shown(self) -> str:
        return self.value.isoformat()


class Year(Param):
    value: int = Field(ge=1900, le=2200)

    def shown(self) -> str:
        return str(self.value)


class Text(Param):
    value: str

    def shown(self) -> str:
        return self.value


class TextList(Param):
    value: tuple[str, ...]

    def shown(self) -> str:
        return ", ".join(self.value)


class YearStep(_Frozen):
    from_year: int | None
    value: Decimal
    #: a step may be less sure than its schedule (e.g. one year of a ramp is unconfirmed)
    confidence: Confidence | None = None

    @field_validator("value")
    @classmethod
    def _is_fraction(cls, v: Decimal) -> Decimal:
        return _fraction(v, "step value")


class YearSchedule(Param):
    value: tuple[YearStep, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _increasing(self) -> YearSchedule:
        for i, step in enumerate(self.value):
            if step.from_year is None and i != 0:
                raise ValueError("only the first step may have from_year null")
            prev = self.value[i - 1].from_year if i else None
            if i and step.from_year is not None and prev is not None and step.from_year <= prev:
                raise ValueError(f"steps must increase: {step.from_year} follows {prev}")
        return self

    def at(self, year: int) -> YearStep | None:
        """The step in force in `year`, or None if the year is before the first step."""
        found: YearStep | None = None
        for step in self.value:
            if step.from_year is None or year >= step.from_year:
                found = step
        return found

    def shown(self) -> str:
        return ", ".join(
            f"{s.from_year or '...'}+: {s.value}" + (f" [{s.confidence}]" if s.confidence else "")
            for s in self.value
        )


class DateStep(_Frozen):
    start: date
    value: Decimal
    confidence: Confidence | None = None

    @field_validator("value")
    @classmethod
    def _is_fraction(cls, v: Decimal) -> Decimal:
        return _fraction(v, "step value")


class DateSchedule(Param):
    value: tuple[DateStep, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _increasing(self) -> DateSchedule:
        for prev, step in zip(self.value, self.value[1:], strict=False):
            if step.start <= prev.start:
                raise ValueError(f"steps must increase: {step.start} follows {prev.start}")
        return self

    def at(self, day: date) -> DateStep | None:
        found: DateStep | None = None
        for step in self.value:
            if day >= step.start:
                found = step
        return found

    def shown(self) -> str:
        return ", ".join(
            f"{s.start}+: {s.value}" + (f" [{s.confidence}]" if s.confidence else "") for s in self.value
        )


class FractionTable(Param):
    value: dict[str, Decimal]

    @field_validator("value")
    @classmethod
    def _fractions(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        for key, item in v.items():
            _fraction(item, key)
        return v

    def shown(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.value.items())


class FormsTable(Param):
    value: dict[str, tuple[str, ...]]

    def shown(self) -> str:
        return "; ".join(f"{k}: {', '.join(v)}" for k, v in self.value.items())


class Country(_Frozen):
    code: str = Field(pattern=r"^[A-Z]{2}$")
    name: str
    start: date | None = None
    end: date | None = None

    def in_force(self, day: date | None) -> bool:
        if day is None:
            return self.start is None and self.end is None
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)


class CountryList(Param):
    value: tuple[Country, ...]

    def contains(self, code: str, on: date | None = None) -> bool:
        """Whether `code` is listed and in force on `on` (None: listed with no dates at all)."""
        return any(c.code == code.upper() and c.in_force(on) for c in self.value)

    def shown(self) -> str:
        return ", ".join(c.code + (f" (from {c.start})" if c.start else "") for c in self.value)


# ---- sections ------------------------------------------------------------------------------------


class Credit45X(_Frozen):
    first_year: Year
    cell_rate: Amount
    module_rate: Amount
    module_without_cells_rate: Amount
    electrode_active_material_rate: Amount
    critical_mineral_rate: Amount
    cell_min_energy_density: Amount
    cell_min_capacity: Amount
    module_min_capacity: Amount
    max_capacity_to_power_ratio: Amount
    module_capacity_limited_to_cells: Flag
    first_module_sale_only: Flag
    component_phase_out_by_sale_year: YearSchedule
    critical_mineral_phase_out_by_production_year: YearSchedule
    critical_mineral_sale_year_phase_out: Flag
    critical_mineral_min_purity: FractionTable
    critical_mineral_forms: FormsTable
    eam_cost_excluded_kinds: TextList
    critical_mineral_cost_excluded_kinds: TextList
    one_credit_per_material: Flag
    integrated_component_rule_taxable_years_beginning_after: Day
    integrated_component_us_primary_share: Amount


class Macr(_Frozen):
    applies_to_taxable_years_beginning_after: Day
    battery_component_threshold_by_sale_year: YearSchedule
    battery_component_first_step_covers_earlier_sales: Flag
    critical_mineral_threshold_by_sale_year: YearSchedule
    equality_passes: Flag
    binding_contract_exclusion: Text
    pfe_cost_attribution: Text
    prohibited_taxpayer_bar_taxable_years_beginning_after: Day
    supplier_certification: Text

    @field_validator("pfe_cost_attribution")
    @classmethod
    def _attribution(cls, v: Text) -> Text:
        if v.value not in PFE_ATTRIBUTIONS:
            raise ValueError(f"value must be one of {', '.join(PFE_ATTRIBUTIONS)}, got {v.value!r}")
        return v


class DomesticContent(_Frozen):
    steel_iron_us_share: Amount
    adjusted_percentage_45y: DateSchedule
    offshore_wind_adjusted_percentage_45y: DateSchedule
    adjusted_percentage_48e: DateSchedule
    offshore_wind_adjusted_percentage_48e: DateSchedule
    bonus_48e_base_points: Amount
    bonus_48e_prevailing_wage_points: Amount
    bonus_45y_credit_increase: Amount
    safe_harbor_cost_table: Text


class CleanVehicle30D(_Frozen):
    requirements_effective: Day
    last_acquisition_date: Day
    critical_minerals_credit: Amount
    battery_components_credit: Amount
    critical_mineral_applicable_percentage: DateSchedule
    battery_component_applicable_percentage: DateSchedule
    feoc_battery_components_from: Day
    feoc_critical_minerals_from: Day
    impracticable_to_trace_until: Day
    traced_chain_reading: Text
    component_incremental_value: Text
    traced_value_formula: Text
    value_added_safe_harbor_share: Amount

    @field_validator("traced_chain_reading")
    @classmethod
    def _chain_reading(cls, v: Text) -> Text:
        if v.value not in TRACED_CHAIN_READINGS:
            raise ValueError(f"value must be one of {', '.join(TRACED_CHAIN_READINGS)}, got {v.value!r}")
        return v

    @field_validator("component_incremental_value")
    @classmethod
    def _incremental(cls, v: Text) -> Text:
        if v.value not in COMPONENT_VALUE_READINGS:
            raise ValueError(f"value must be one of {', '.join(COMPONENT_VALUE_READINGS)}, got {v.value!r}")
        return v


class Geography(_Frozen):
    north_america: CountryList
    fta_countries: CountryList
    feoc_covered_nations: CountryList
    feoc_control_share: Amount


class Custody(_Frozen):
    us_accepted_models: TextList


class EuRecycled(_Frozen):
    minimum_share: dict[str, DateSchedule]
    battery_pass_model: Text


class RulePack(_Frozen):
    format: Literal[1] = 1
    pack_id: str = Field(min_length=1)
    version: str = Field(min_length=1)
    as_of: date
    title: str = ""
    credit45x: Credit45X
    macr: Macr
    domestic_content: DomesticContent
    cv30d: CleanVehicle30D
    geography: Geography
    custody: Custody
    eu_recycled: EuRecycled

    def lookup(self, path: str) -> Param:
        """The parameter at a dotted path such as "macr.equality_passes"."""
        node: Any = self
        for part in path.split("."):
            if isinstance(node, BaseModel) and part in type(node).model_fields:
                node = getattr(node, part)
            elif isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                raise KeyError(f"rule pack {self.pack_id} has no parameter {path!r}")
        if not isinstance(node, Param):
            raise KeyError(f"{path!r} in rule pack {self.pack_id} is a section, not a parameter")
        return node


# ---- loading -------------------------------------------------------------------------------------


def _read_json(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise PackError(
            source, [f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    if not isinstance(data, dict):
        raise PackError(source, ["top level must be a JSON object"])
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay a partial pack; a parameter object (one with "value") replaces the base one whole,
    so a changed value can never keep a stale citation."""
    merged = dict(base)
    for key, item in override.items():
        old = merged.get(key)
        if isinstance(item, Mapping) and isinstance(old, dict) and "value" not in item and "value" not in old:
            merged[key] = _merge(old, item)
        else:
            merged[key] = item
    return merged


def _default_text() -> str:
    return (
        resources.files("ledger.taxrules")
        .joinpath("packs")
        .joinpath(DEFAULT_PACK)
        .read_text(encoding="utf-8")
    )


def parse_pack(text: str, source: str = "<string>") -> RulePack:
    """Validate pack JSON text; errors name the source and each offending field."""
    data = _read_json(text, source)
    extends = data.pop("extends", None)
    if extends is not None:
        if extends != "default":
            raise PackError(source, [f'extends: only "default" is supported, got {extends!r}'])
        data = _merge(_read_json(_default_text(), f"builtin:{DEFAULT_PACK}"), data)
    try:
        return RulePack.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        ]
        raise PackError(source, problems) from None


@lru_cache(maxsize=1)
def _default_pack() -> RulePack:
    return parse_pack(_default_text(), f"builtin:{DEFAULT_PACK}")


def load_pack(path: str | Path | None = None) -> RulePack:
    """Load a rule pack from `path`, or the default shipped pack when `path` is None."""
    if path is None:
        return _default_pack()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackError(str(p), [f"cannot read: {exc.strerror or exc}"]) from None
    return parse_pack(text, str(p))


# ---- reading parameters with a record of what was read -------------------------------------------


class ParamLog:
    """Reads parameters from a pack and records each read, so `parameters_used` is complete."""

    def __init__(self, pack: RulePack) -> None:
        self.pack = pack
        self._used: dict[tuple[str, str], ParameterUse] = {}
        self._confidence: dict[str, Confidence] = {}

    def _record(
        self, path: str, param: Param, value: str, applies_to: str = "", confidence: Confidence | None = None
    ) -> None:
        note = param.note
        if param.effective is not None:
            note = "; ".join(x for x in (note, f"effective {param.effective.describe()}") if x)
        self._used[(path, applies_to)] = ParameterUse(
            name=path,
            value=value,
            applies_to=applies_to,
            citation=param.citation,
            confidence=confidence or param.confidence,
            note=note,
        )
        self._confidence[path] = confidence or param.confidence

    def confidence(self, path: str) -> Confidence:
        """The confidence of the parameter at `path` as last read: a schedule step's own mark when it
        has one, otherwise the parameter's."""
        return self._confidence.get(path) or self.pack.lookup(path).confidence

    def _get(self, path: str, kind: type[Param]) -> Any:
        param = self.pack.lookup(path)
        if not isinstance(param, kind):
            raise TypeError(f"{path} is a {type(param).__name__}, expected {kind.__name__}")
        return param

    def param(self, path: str) -> Param:
        """The parameter itself (citation, confidence) without recording a read."""
        return self.pack.lookup(path)

    def amount(self, path: str) -> Decimal:
        p: Amount = self._get(path, Amount)
        self._record(path, p, p.shown())
        return p.value

    def flag(self, path: str) -> bool:
        p: Flag = self._get(path, Flag)
        self._record(path, p, p.shown())
        return p.value

    def day(self, path: str) -> date:
        p: Day = self._get(path, Day)
        self._record(path, p, p.shown())
        return p.value

    def year(self, path: str) -> int:
        p: Year = self._get(path, Year)
        self._record(path, p, p.shown())
        return p.value

    def text(self, path: str) -> str:
        p: Text = self._get(path, Text)
        self._record(path, p, p.shown())
        return p.value

    def texts(self, path: str) -> tuple[str, ...]:
        p: TextList = self._get(path, TextList)
        self._record(path, p, p.shown())
        return p.value

    def fractions(self, path: str) -> dict[str, Decimal]:
        p: FractionTable = self._get(path, FractionTable)
        self._record(path, p, p.shown())
        return p.value

    def forms(self, path: str) -> dict[str, tuple[str, ...]]:
        p: FormsTable = self._get(path, FormsTable)
        self._record(path, p, p.shown())
        return p.value

    def countries(self, path: str) -> CountryList:
        p: CountryList = self._get(path, CountryList)
        self._record(path, p, p.shown())
        return p

    def by_year(self, path: str, year: int, what: str = "year") -> Decimal | None:
        """The schedule's value for `year`; None (recorded as such) if the year precedes the schedule."""
        p: YearSchedule = self._get(path, YearSchedule)
        step = p.at(year)
        shown = "none" if step is None else str(step.value)
        self._record(path, p, shown, f"{what} {year}", None if step is None else step.confidence)
        return None if step is None else step.value

    def by_date(self, path: str, day: date, what: str = "date") -> Decimal | None:
        p: DateSchedule = self._get(path, DateSchedule)
        step = p.at(day)
        shown = "none" if step is None else str(step.value)
        self._record(path, p, shown, f"{what} {day.isoformat()}", None if step is None else step.confidence)
        return None if step is None else step.value

    def date_step(self, path: str, day: date) -> DateStep | None:
        """The step of a date schedule in force on `day`, without recording a read."""
        p: DateSchedule = self._get(path, DateSchedule)
        return p.at(day)

    def date_steps(self, path: str) -> tuple[DateStep, ...]:
        """All steps of a date schedule, without recording a read."""
        p: DateSchedule = self._get(path, DateSchedule)
        return p.value

    def user_supplied(self, name: str, value: str, *, citation: str, note: str) -> None:
        """Record an input the user supplied in place of pack data (always confidence "?")."""
        self._used[(name, "")] = ParameterUse(
            name=name, value=value, citation=citation, confidence="?", note=note
        )

    def record_use(self, use: ParameterUse) -> None:
        """Record a parameter another finding relied on (a linked finding's parameters)."""
        self._used.setdefault((use.name, use.applies_to), use)

    def used(self) -> list[ParameterUse]:
        return list(self._used.values())
