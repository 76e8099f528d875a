from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.taxrules.errors import PackError
from ledger.taxrules.pack import (
    Amount,
    DateSchedule,
    Param,
    ParamLog,
    RulePack,
    YearSchedule,
    load_pack,
    parse_pack,
)

from .conftest import param


def _all_params(pack: RulePack) -> dict[str, Param]:
    found: dict[str, Param] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Param):
            found[prefix] = node
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}")
        elif hasattr(type(node), "model_fields"):
            for k in type(node).model_fields:
                walk(getattr(node, k), f"{prefix}.{k}" if prefix else k)

    walk(pack, "")
    return found


def test_default_pack_has_identity_and_dates(pack: RulePack) -> None:
    assert pack.pack_id == "us-eu-battery-rules"
    assert pack.version
    assert pack.as_of == date(2026, 12, 2)
    assert pack.version == "2026.2.0"
    assert load_pack() is pack  # cached


def test_every_parameter_is_cited_with_a_confidence(pack: RulePack) -> None:
    params = _all_params(pack)
    assert len(params) > 40
    for name, p in params.items():
        assert p.citation.strip(), name
        assert p.confidence in ("P", "S", "?"), name
        assert p.note.strip(), name


@pytest.mark.parametrize(
    "path",
    [
        "macr.equality_passes",
        "cv30d.traced_value_formula",
        "cv30d.value_added_safe_harbor_share",
        "domestic_content.safe_harbor_cost_table",
    ],
)
def test_unconfirmed_items_are_marked_and_explained(pack: RulePack, path: str) -> None:
    p = pack.lookup(path)
    assert p.confidence == "?"
    assert "UNCONFIRMED" in p.note


def test_safe_harbor_window_is_dated(pack: RulePack) -> None:
    eff = pack.cv30d.value_added_safe_harbor_share.effective
    assert eff is not None
    assert (eff.start, eff.end) == (date(2024, 5, 6), date(2026, 12, 31))


def test_no_safe_harbor_cost_table_is_shipped_as_fact(pack: RulePack) -> None:
    assert "none shipped" in pack.domestic_content.safe_harbor_cost_table.value


@pytest.mark.parametrize(
    ("code", "day", "expected"),
    [
        ("JP", date(2023, 3, 27), False),
        ("JP", date(2023, 3, 28), True),
        ("KR", date(2020, 1, 1), True),
        ("cl", date(2024, 1, 1), True),
        ("CN", date(2024, 1, 1), False),
    ],
)
def test_fta_list_is_dated(pack: RulePack, code: str, day: date, expected: bool) -> None:
    assert pack.geography.fta_countries.contains(code, day) is expected


def test_north_america_and_covered_nations(pack: RulePack) -> None:
    assert {c.code for c in pack.geography.north_america.value} == {"US", "CA", "MX"}
    assert {c.code for c in pack.geography.feoc_covered_nations.value} == {"CN", "RU", "KP", "IR"}


def test_year_schedule_lookup_boundaries(pack: RulePack) -> None:
    sched = pack.credit45x.component_phase_out_by_sale_year
    assert sched.at(2022) is None
    assert [sched.at(y).value for y in (2023, 2029, 2030, 2031, 2032, 2033, 2040)] == [  # type: ignore[union-attr]
        Decimal(1),
        Decimal(1),
        Decimal("0.75"),
        Decimal("0.50"),
        Decimal("0.25"),
        Decimal(0),
        Decimal(0),
    ]


def test_open_start_schedule_covers_early_years(pack: RulePack) -> None:
    sched = pack.domestic_content.adjusted_percentage_48e
    step = sched.at(date(1990, 1, 1))
    assert step is not None and step.value == Decimal("0.40") and step.confidence == "P"


@pytest.mark.parametrize(
    ("path", "cited"),
    [
        # review C1-C5: the corrected citations
        ("geography.fta_countries", "26 CFR 1.30D-2(b)(13)"),
        ("credit45x.module_capacity_limited_to_cells", "26 CFR 1.45X-3(e)(4)(ii)(A)"),
        ("credit45x.first_module_sale_only", "26 CFR 1.45X-3(e)(4)(i)(A)"),
        ("domestic_content.adjusted_percentage_45y", "26 USC 45Y(g)(11)(C)"),
        ("domestic_content.adjusted_percentage_48e", "26 CFR 1.48E-1(b)(6)(i)"),
        ("credit45x.critical_mineral_cost_excluded_kinds", "26 CFR 1.45X-4(c)(3)(i)"),
        ("credit45x.eam_cost_excluded_kinds", "26 CFR 1.45X-3(e)(2)(iv)(A)(1)"),
    ],
)
def test_corrected_citations(pack: RulePack, path: str, cited: str) -> None:
    citation = pack.lookup(path).citation
    assert cited in citation
    assert "Notice 2023-29" not in citation and "worked example" not in citation


@pytest.mark.parametrize(
    "path",
    [
        "credit45x.critical_mineral_sale_year_phase_out",  # Q1
        "macr.battery_component_first_step_covers_earlier_sales",  # Q2
        "macr.binding_contract_exclusion",  # Q2
        "macr.pfe_cost_attribution",  # Q3
        "cv30d.traced_chain_reading",  # Q4
        "cv30d.component_incremental_value",  # Q6
    ],
)
def test_open_questions_are_unconfirmed_parameters_with_both_readings(pack: RulePack, path: str) -> None:
    p = pack.lookup(path)
    assert p.confidence == "?" and "UNCONFIRMED" in p.note and "Reading" in p.note
    # Q5: one step of the 48E offshore schedule
    step = pack.domestic_content.offshore_wind_adjusted_percentage_48e.at(date(2027, 1, 1))
    assert step is not None and step.confidence == "?"


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("macr", "pfe_cost_attribution", "tiers"),
        ("cv30d", "traced_chain_reading", "proportional"),
        ("cv30d", "component_incremental_value", "all"),
    ],
)
def test_a_reading_outside_the_named_ones_is_refused(
    user_pack: Callable[..., Path], section: str, name: str, value: str
) -> None:
    with pytest.raises(PackError, match=f"{section}.{name}"):
        load_pack(user_pack({section: {name: param(value)}}))


def test_lookup_of_unknown_path_and_section(pack: RulePack) -> None:
    with pytest.raises(KeyError, match="no parameter"):
        pack.lookup("credit45x.nope")
    with pytest.raises(KeyError, match="section"):
        pack.lookup("credit45x")


def test_param_log_records_schedule_reads_with_year(pack: RulePack) -> None:
    log = ParamLog(pack)
    assert log.by_year("credit45x.component_phase_out_by_sale_year", 2031, "sale year") == Decimal("0.50")
    assert log.by_year("macr.battery_component_threshold_by_sale_year", 2025, "sale year") is None
    used = {(u.name, u.applies_to): u.value for u in log.used()}
    assert used[("credit45x.component_phase_out_by_sale_year", "sale year 2031")] == "0.50"
    assert used[("macr.battery_component_threshold_by_sale_year", "sale year 2025")] == "none"


def test_param_log_refuses_wrong_kind(pack: RulePack) -> None:
    with pytest.raises(TypeError, match="expected Amount"):
        ParamLog(pack).amount("macr.equality_passes")


def test_user_pack_extends_default_and_replaces_a_parameter(user_pack: Callable[..., Path]) -> None:
    path = user_pack({"credit45x": {"cell_rate": param("40", unit="usd_per_kwh")}})
    pack = load_pack(path)
    assert pack.pack_id == "user-test"
    assert pack.credit45x.cell_rate.value == Decimal(40)
    assert pack.credit45x.cell_rate.citation == "test notice"
    assert pack.credit45x.module_rate.value == Decimal(10)  # untouched


def test_json_floats_are_read_as_exact_decimals() -> None:
    pack = parse_pack(
        '{"extends": "default", "credit45x": {"electrode_active_material_rate":'
        ' {"value": 0.1, "unit": "fraction", "citation": "c", "confidence": "P"}}}'
    )
    value = pack.credit45x.electrode_active_material_rate.value
    assert isinstance(value, Decimal)
    assert value == Decimal("0.1")  # a float 0.1 would not compare equal


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"pack_id": "x",\n  "version": }', encoding="utf-8")
    with pytest.raises(PackError) as err:
        load_pack(path)
    message = err.value.diagnostics()
    assert str(path) in message
    assert "line 2" in message


def test_missing_field_is_named(user_pack: Callable[..., Path]) -> None:
    path = user_pack({"macr": {"equality_passes": {"value": True, "confidence": "?"}}})
    with pytest.raises(PackError) as err:
        load_pack(path)
    assert str(path) in str(err.value)
    assert "macr.equality_passes.citation" in str(err.value)


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ({"credit45x": {"cell_rate": param("-1", unit="usd_per_kwh")}}, "credit45x.cell_rate", ">= 0"),
        (
            {"credit45x": {"critical_mineral_rate": param("1.5", unit="fraction")}},
            "credit45x.critical_mineral_rate",
            "fraction",
        ),
        (
            {
                "macr": {
                    "battery_component_threshold_by_sale_year": param(
                        [{"from_year": 2027, "value": "0.6"}, {"from_year": 2026, "value": "0.7"}]
                    )
                }
            },
            "macr.battery_component_threshold_by_sale_year",
            "increase",
        ),
        (
            {
                "macr": {
                    "battery_component_threshold_by_sale_year": param([{"from_year": 2026, "value": "60"}])
                }
            },
            "macr.battery_component_threshold_by_sale_year.value.0.value",
            "fraction",
        ),
        (
            {"macr": {"equality_passes": param(True, confidence="maybe")}},
            "macr.equality_passes.confidence",
            "",
        ),
        ({"credit45x": {"cell_rat": param("35", unit="usd_per_kwh")}}, "credit45x.cell_rat", "Extra"),
        (
            {"geography": {"north_america": param([{"code": "usa", "name": "United States"}])}},
            "geography.north_america.value.0.code",
            "",
        ),
    ],
)
def test_invalid_values_are_refused_with_the_field_named(
    user_pack: Callable[..., Path], override: dict[str, Any], field: str, fragment: str
) -> None:
    path = user_pack(override)
    with pytest.raises(PackError) as err:
        load_pack(path)
    assert field in str(err.value)
    assert fragment in str(err.value)


def test_unknown_extends_is_refused() -> None:
    with pytest.raises(PackError, match='only "default"'):
        parse_pack('{"extends": "other"}', "mine.json")


def test_full_pack_without_extends_loads(pack: RulePack, tmp_path: Path) -> None:
    path = tmp_path / "copy.json"
    path.write_text(pack.model_dump_json(), encoding="utf-8")
    assert load_pack(path) == pack


def test_schedule_and_date_schedule_validation() -> None:
    with pytest.raises(ValueError, match="only the first step"):
        YearSchedule.model_validate(
            param([{"from_year": 2020, "value": "0.1"}, {"from_year": None, "value": "0.2"}])
        )
    with pytest.raises(ValueError, match="increase"):
        DateSchedule.model_validate(
            param([{"start": "2024-01-01", "value": "0.1"}, {"start": "2024-01-01", "value": "0.2"}])
        )
    with pytest.raises(ValueError, match="before"):
        Amount.model_validate(param("1", unit="usd", effective={"start": "2025-01-01", "end": "2024-01-01"}))
