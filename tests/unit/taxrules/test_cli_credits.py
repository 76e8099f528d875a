from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from batteryledger.cli_credits import credits_app

from .conftest import param

app = typer.Typer()
app.add_typer(credits_app, name="credits")
runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, ["credits", *args])


def as_json(*args: str) -> dict[str, Any]:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1  # one JSON object, one line
    data: dict[str, Any] = json.loads(result.stdout, parse_float=Decimal)
    return data


def assert_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


# ---- 45x --------------------------------------------------------------------------------------------
#: the P.L. 119-21 conditions met (MACR 1, the taxpayer neither SFE nor FIE): the other rules alone
CLEAN = ["--total-direct-cost", "100", "--pfe-cost", "0", "--not-prohibited-foreign-entity-taxpayer"]


def test_45x_cell(tmp_path: Path) -> None:
    data = as_json(
        "45x",
        "--component",
        "cell",
        "--capacity-kwh",
        "100",
        "--max-discharge-kw",
        "0.5",
        "--sale-year",
        "2030",
        *CLEAN,
    )
    assert data["credit_usd"] == Decimal("1312.5")  # 35 x 50 kWh x 0.75
    assert data["rate"] == 35
    assert data["phase_out_factor"] == Decimal("0.75")
    assert data["capped_capacity_kwh"] == 50
    assert data["status"] == "pass" and data["passes"] is True
    assert "26 USC 45X(b)(3)" in data["citations"]
    assert data["pack"]["id"] == "us-eu-battery-rules"


@pytest.mark.parametrize(
    ("args", "credit"),
    [
        (["--component", "module", "--capacity-kwh", "10", "--sale-year", "2026"], 100),
        (["--component", "module-without-cells", "--capacity-kwh", "10", "--sale-year", "2026"], 450),
        (
            ["--component", "electrode-active-material", "--production-cost", "1000", "--sale-year", "2032"],
            25,
        ),
        (
            [
                "--component",
                "critical-mineral",
                "--production-cost",
                "1000",
                "--production-year",
                "2031",
                "--sale-year",
                "2031",
            ],
            75,
        ),
        (["--component", "cell", "--capacity-kwh", "1", "--sale-year", "2033"], 0),
    ],
)
def test_45x_components(args: list[str], credit: int) -> None:
    assert as_json("45x", *args, *CLEAN)["credit_usd"] == credit


def test_45x_json_integer_credit_is_a_number() -> None:
    result = invoke(
        "45x", "--component", "cell", "--capacity-kwh", "100", "--sale-year", "2026", *CLEAN, "--json"
    )
    assert '"credit_usd": 3500,' in result.stdout


def test_review_b5_repro_2027_sale_carries_the_foreign_entity_conditions() -> None:
    data = as_json("45x", "--component", "cell", "--capacity-kwh", "1", "--sale-year", "2027")
    # before: pass, $35, nothing about prohibited foreign entities. Now the two P.L. 119-21 conditions
    # are there, unconfirmed (assumed met, confidence "?"), named as "?" inputs and in warnings
    assert data["status"] == "pass" and data["credit_usd"] == 35
    names = {r["name"]: r for r in data["requirements"]}
    macr = names["no material assistance from a prohibited foreign entity (MACR battery-component)"]
    assert macr["value"] == "not established" and macr["confidence"] == "?" and "UNCONFIRMED" in macr["note"]
    assert macr["threshold"] == Decimal("0.65") and macr["threshold_year"] == 2027
    taxpayer = names["taxpayer is neither a specified foreign entity nor a foreign-influenced entity"]
    assert taxpayer["value"] == "not stated" and taxpayer["confidence"] == "?"
    assert {"unconfirmed.material_assistance", "unconfirmed.taxpayer_not_prohibited"} <= set(
        data["unconfirmed_parameters"]
    )
    assert sum("UNCONFIRMED" in w for w in data["warnings"]) == 2
    assert any("calendar year" in w for w in data["warnings"])
    # a taxpayer that is a prohibited foreign entity gets nothing
    barred = as_json(
        "45x",
        "--component",
        "cell",
        "--capacity-kwh",
        "1",
        "--sale-year",
        "2027",
        "--prohibited-foreign-entity-taxpayer",
    )
    assert barred["status"] == "fail" and barred["credit_usd"] == 0
    # with the costs and the taxpayer's status: the linked MACR decides
    ok = as_json("45x", "--component", "cell", "--capacity-kwh", "1", "--sale-year", "2027", *CLEAN)
    assert ok["status"] == "pass" and ok["credit_usd"] == 35 and ok["macr"] == 1
    low = as_json(
        "45x",
        "--component",
        "cell",
        "--capacity-kwh",
        "1",
        "--sale-year",
        "2027",
        "--total-direct-cost",
        "100",
        "--pfe-cost",
        "36",
        "--not-prohibited-foreign-entity-taxpayer",
    )
    assert low["status"] == "fail" and low["macr"] == Decimal("0.64") and low["credit_usd"] == 0
    # a fiscal year that began before 2025-07-05: the rules do not reach the sale
    early = as_json(
        "45x",
        "--component",
        "cell",
        "--capacity-kwh",
        "1",
        "--sale-year",
        "2026",
        "--taxable-year-start",
        "2025-07-01",
    )
    assert early["status"] == "pass" and early["credit_usd"] == 35


def test_review_b6_repro_huge_capacity_is_a_usage_error() -> None:
    assert_error(
        invoke("45x", "--component", "cell", "--capacity-kwh", "1e20", "--sale-year", "2026", "--json"),
        "--capacity-kwh: is 1E+20, above the largest accepted value",
    )
    # just below the bound a finding is made, to the cent
    data = as_json("45x", "--component", "cell", "--capacity-kwh", "1e15", "--sale-year", "2026", *CLEAN)
    assert data["credit_usd"] == Decimal(35) * 10**15


@pytest.mark.parametrize(
    "args",
    [
        ["macr", "--category", "solar", "--total-direct-cost", "3", "--pfe-cost", "1", "--sale-year", "2026"],
        ["45x", "--component", "widget", "--capacity-kwh", "1", "--sale-year", "2026"],
        ["45x", "--capacity-kwh", "1", "--sale-year", "2026"],
    ],
)
def test_review_b7_usage_errors_exit_2_through_the_real_entry_point(args: list[str]) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from batteryledger.cli import main; main()", "credits", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--component", "cell", "--sale-year", "2026"], "--capacity-kwh: is required for cell"),
        (
            ["--component", "cell", "--capacity-kwh", "-5", "--sale-year", "2026"],
            "--capacity-kwh: must be >= 0",
        ),
        (
            ["--component", "cell", "--capacity-kwh", "abc", "--sale-year", "2026"],
            "--capacity-kwh: 'abc' is not a number",
        ),
        (["--component", "cell", "--capacity-kwh", "inf", "--sale-year", "2026"], "finite"),
        (["--component", "critical-mineral", "--production-cost", "10"], "--production-year: is required"),
        (["--component", "cell", "--capacity-kwh", "1"], "--sale-year: is required"),
        (
            ["--component", "cell", "--capacity-kwh", "1", "--sale-year", "2026", "--production-cost", "5"],
            "--production-cost: does not apply",
        ),
        (
            [
                "--component",
                "cell",
                "--capacity-kwh",
                "1",
                "--sale-year",
                "2026",
                "--production-year",
                "2027",
            ],
            "--production-year: 2027 is after --sale-year 2026",
        ),
    ],
)
def test_45x_bad_input(args: list[str], fragment: str) -> None:
    assert_error(invoke("45x", *args), fragment)


def test_45x_table_output() -> None:
    result = invoke("45x", "--component", "cell", "--capacity-kwh", "100", "--sale-year", "2026", *CLEAN)
    assert result.exit_code == 0
    assert "3500" in result.stdout
    assert "credit_usd" in result.stdout
    assert "warning: energy density not given" in result.stdout


# ---- macr -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pfe", "year", "passes"),
    [("40", "2026", True), ("40.01", "2026", False), ("15", "2030", True), ("15.01", "2030", False)],
)
def test_macr(pfe: str, year: str, passes: bool) -> None:
    data = as_json(
        "macr",
        "--category",
        "battery-component",
        "--total-direct-cost",
        "100",
        "--pfe-cost",
        pfe,
        "--sale-year",
        year,
    )
    assert data["passes"] is passes
    assert data["macr"] == (Decimal(100) - Decimal(pfe)) / 100
    assert "macr.equality_passes" in data["unconfirmed_parameters"]


def test_macr_critical_mineral_threshold() -> None:
    data = as_json(
        "macr",
        "--category",
        "critical-mineral",
        "--total-direct-cost",
        "3",
        "--pfe-cost",
        "1",
        "--sale-year",
        "2033",
    )
    assert data["threshold"] == Decimal("0.5")
    assert data["macr"] == Decimal("0.666667")  # rounded to 6 places
    assert data["passes"] is True


@pytest.mark.parametrize(
    ("total", "pfe", "fragment"),
    [
        ("100", "150", "--pfe-cost: 150 exceeds --total-direct-cost 100"),
        ("0", "0", "--total-direct-cost: must be > 0"),
        ("100", "-1", "--pfe-cost"),
    ],
)
def test_macr_bad_input(total: str, pfe: str, fragment: str) -> None:
    result = invoke(
        "macr",
        "--category",
        "battery-component",
        "--total-direct-cost",
        total,
        "--pfe-cost",
        pfe,
        "--sale-year",
        "2026",
    )
    assert_error(result, fragment)


# ---- domestic-content -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domestic", "year", "offshore", "threshold", "passes"),
    [
        ("45", "2025", False, Decimal("0.45"), True),
        ("44.9", "2025", False, Decimal("0.45"), False),
        ("27.5", "2025", True, Decimal("0.275"), True),
        ("54.9", "2028", True, Decimal("0.55"), False),
    ],
)
def test_domestic_content(domestic: str, year: str, offshore: bool, threshold: Decimal, passes: bool) -> None:
    args = [
        "domestic-content",
        "--domestic-cost",
        domestic,
        "--total-cost",
        "100",
        "--construction-year",
        year,
        "--steel-iron-us-share",
        "1",
    ]
    data = as_json(*args, *(["--offshore-wind"] if offshore else []))
    assert data["percentage"] == Decimal(domestic) / 100
    assert data["threshold"] == threshold
    assert data["passes"] is passes
    assert data["credit"] == "45y" and data["bonus_credit_fraction_45y"] == (Decimal("0.1") if passes else 0)
    assert data["bonus_rate_points_48e"] is None  # the 48E key stays, empty for 45Y


DC = ["domestic-content", "--domestic-cost", "42", "--total-cost", "100", "--steel-iron-us-share", "1"]


def test_review_b1_repro_48e_schedule_by_start_date() -> None:
    # 45Y (the default): 45% for construction begun in 2025
    data = as_json(*DC, "--construction-year", "2025")
    assert (data["credit"], data["threshold"], data["passes"]) == ("45y", Decimal("0.45"), False)
    # 48E begun 2025-03-01: 40% (before 2025-06-16), so 42% passes with +2 points
    data = as_json(*DC, "--construction-start", "2025-03-01", "--credit", "48e")
    assert (data["threshold"], data["passes"], data["bonus_rate_points_48e"]) == (
        Decimal("0.4"),
        True,
        Decimal("0.02"),
    )
    assert data["construction_start"] == "2025-03-01" and data["construction_year"] == 2025
    data = as_json(*DC, "--construction-start", "2025-06-16", "--credit", "48e")
    assert (data["threshold"], data["passes"]) == (Decimal("0.45"), False)
    # the year alone for 48E in 2025: the strictest value, and a note asking for the date
    data = as_json(*DC, "--construction-year", "2025", "--credit", "48e")
    assert data["threshold"] == Decimal("0.45") and any("2025-06-16" in n for n in data["notes"])
    assert_error(
        invoke(*DC, "--construction-year", "2025", "--credit", "48x"), "--credit: '48x' is not a credit"
    )
    assert_error(invoke(*DC[:-2], "--json"), "--construction-start: give the date construction began")


def test_review_b12_repro_no_bonus_without_steel_and_iron() -> None:
    data = as_json(
        "domestic-content",
        "--domestic-cost",
        "45",
        "--total-cost",
        "100",
        "--construction-year",
        "2026",
        "--credit",
        "48e",
    )
    assert data["status"] == "fail" and data["bonus_rate_points_48e"] == 0
    steel = data["requirements"][0]
    assert steel["name"].startswith("steel and iron") and steel["passed"] is False and steel["value"] is None


def test_review_b9_repro_rounding_never_hides_a_failure() -> None:
    data = as_json(
        "macr",
        "--category",
        "battery-component",
        "--total-direct-cost",
        "1000000",
        "--pfe-cost",
        "400000.4",
        "--sale-year",
        "2026",
    )
    assert data["passes"] is False and data["threshold"] == Decimal("0.6")
    assert data["macr"] == Decimal("0.5999996")
    assert data["requirements"][1]["value"] == Decimal("0.5999996")
    # away from the threshold the usual 6 places
    data = as_json(
        "macr",
        "--category",
        "battery-component",
        "--total-direct-cost",
        "3",
        "--pfe-cost",
        "1",
        "--sale-year",
        "2026",
    )
    assert data["macr"] == Decimal("0.666667")


def test_domestic_content_contradiction() -> None:
    result = invoke(
        "domestic-content", "--domestic-cost", "101", "--total-cost", "100", "--construction-year", "2026"
    )
    assert_error(result, "--domestic-cost: 101 exceeds --total-cost 100")


# ---- 30d --------------------------------------------------------------------------------------------


def thirty_d(acquired: str, pis: str, cm: str, bc: str) -> dict[str, Any]:
    return as_json(
        "30d",
        "--acquired",
        acquired,
        "--placed-in-service",
        pis,
        "--critical-mineral-content",
        cm,
        "--battery-component-content",
        bc,
    )


@pytest.mark.parametrize(
    ("cm", "bc", "credit"),
    [("0.5", "0.6", 7500), ("0.5", "0.59", 3750), ("0.49", "0.6", 3750), ("0.49", "0.59", 0)],
)
def test_30d(cm: str, bc: str, credit: int) -> None:
    data = thirty_d("2024-03-01", "2024-03-02", cm, bc)
    assert data["credit_usd"] == credit
    assert data["critical_mineral_threshold"] == Decimal("0.5")
    assert data["battery_component_threshold"] == Decimal("0.6")


def test_30d_after_acquisition_cutoff() -> None:
    data = thirty_d("2025-10-01", "2025-10-02", "1", "1")
    assert data["credit_usd"] == 0
    assert data["status"] == "fail"


def test_30d_before_requirements_is_not_applicable() -> None:
    data = thirty_d("2023-01-01", "2023-04-17", "1", "1")
    assert data["status"] == "not_applicable"
    assert data["credit_usd"] is None
    assert any("did not apply in this form" in n for n in data["notes"])


@pytest.mark.parametrize(
    ("acquired", "pis", "cm", "bc", "fragment"),
    [
        (
            "2024-03-02",
            "2024-03-01",
            "0.5",
            "0.5",
            "--placed-in-service: 2024-03-01 is before --acquired 2024-03-02",
        ),
        ("2024-03-01", "2024-03-01", "60", "0.5", "--critical-mineral-content: is a fraction"),
        ("2024-03-01", "2024-03-01", "0.5", "1.01", "--battery-component-content: is a fraction"),
        ("2024-03-01", "2024-03-01", "-0.1", "0.5", "--critical-mineral-content: must be >= 0"),
        ("03/01/2024", "2024-03-01", "0.5", "0.5", "--acquired: '03/01/2024' is not a date"),
    ],
)
def test_30d_bad_input(acquired: str, pis: str, cm: str, bc: str, fragment: str) -> None:
    result = invoke(
        "30d",
        "--acquired",
        acquired,
        "--placed-in-service",
        pis,
        "--critical-mineral-content",
        cm,
        "--battery-component-content",
        bc,
    )
    assert_error(result, fragment)


# ---- --pack -----------------------------------------------------------------------------------------


def test_user_pack_changes_the_cli_result(user_pack: Callable[..., Path]) -> None:
    path = user_pack(
        {"macr": {"battery_component_threshold_by_sale_year": param([{"from_year": 2026, "value": "0.5"}])}}
    )
    args = [
        "macr",
        "--category",
        "battery-component",
        "--total-direct-cost",
        "100",
        "--pfe-cost",
        "45",
        "--sale-year",
        "2026",
    ]
    assert as_json(*args)["passes"] is False
    data = as_json(*args, "--pack", str(path))
    assert data["passes"] is True
    assert data["pack"] == {"id": "user-test", "version": "0.0.1"}


def test_malformed_pack_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"extends": "default", "macr": {"equality_passes": {"value": true}}}', encoding="utf-8")
    result = invoke(
        "macr",
        "--category",
        "battery-component",
        "--total-direct-cost",
        "1",
        "--pfe-cost",
        "0",
        "--sale-year",
        "2026",
        "--pack",
        str(path),
    )
    assert_error(result, "macr.equality_passes.citation")
    assert str(path) in result.stderr


def test_missing_pack_file() -> None:
    result = invoke(
        "30d",
        "--acquired",
        "2024-01-01",
        "--placed-in-service",
        "2024-01-01",
        "--critical-mineral-content",
        "0",
        "--battery-component-content",
        "0",
        "--pack",
        "/no/such/pack.json",
    )
    assert_error(result, "cannot read")


@pytest.mark.parametrize(
    "args",
    [
        ["45x", "--component", "pack", "--capacity-kwh", "1", "--sale-year", "2026"],
        ["macr", "--category", "battery-component", "--total-direct-cost", "1", "--pfe-cost", "0"],
        ["45x", "--component", "cell", "--capacity-kwh", "1", "--sale-year", "twenty"],
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_integrated_component_rule_from_the_command_line() -> None:
    base = ["45x", "--component", "cell", "--capacity-kwh", "1", "--sale-year", "2027", *CLEAN]
    ok = as_json(*base, "--integrated", "--integrated-same-facility", "--integrated-us-primary-share", "0.65")
    assert ok["status"] == "pass"
    low = as_json(
        *base, "--integrated", "--integrated-same-facility", "--integrated-us-primary-share", "0.64"
    )
    assert low["status"] == "fail" and low["credit_usd"] == 0
    assert_error(invoke(*base, "--integrated-us-primary-share", "0.7", "--json"), "--integrated: ")
