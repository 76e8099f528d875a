"""Read models under the API and the CLI (batteryledger.views, ledger.queries) through the HTTP API.

A real SQLite ledger holding the demo supply chain; every answer is checked against what the ledger
itself says (entries, provenance summary), not against fixed strings alone.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from batteryledger.api import create_app
from batteryledger.views import fta_countries
from ledger.bundle_verify import verify_bundle
from ledger.core import Ledger
from ledger.queries import BatchFilter, QueryError, search_batches
from tests.unit.test_api import PACK, Demo, assert_problem, build_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return build_demo(tmp_path_factory.mktemp("views") / "ledger.db")


@pytest.fixture(scope="module")
def client(demo: Demo) -> Iterator[TestClient]:
    with TestClient(create_app(demo.url)) as c:
        yield c


@pytest.fixture(scope="module")
def led(demo: Demo) -> Iterator[Ledger]:
    ledger = Ledger(demo.url)
    yield ledger
    ledger.close()


# -- find --------------------------------------------------------------------------------------------
def all_ids(led: Ledger) -> list[str]:
    return sorted(b.batch_id for b in (led.batch(i) for i in _ids(led)) if b is not None)


def _ids(led: Ledger) -> list[str]:
    from sqlalchemy import select

    from ledger.store import BATCHES

    with led.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(BATCHES.c.batch_id))]


def test_batches_pages_cover_every_batch_once(client: TestClient, led: Ledger) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/v1/batches", params=params).json()
        assert body["total"] == len(all_ids(led))
        seen += [b["batch_id"] for b in body["batches"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == all_ids(led)


@pytest.mark.parametrize(
    ("params", "check"),
    [
        ({"prefix": "US-PACK"}, lambda b: b["batch_id"].startswith("US-PACK")),
        ({"facility": "ref-cn-ningbo"}, lambda b: b["facility_id"] == "ref-cn-ningbo"),
        ({"material": "lithium_hydroxide"}, lambda b: b["material"] == "lithium_hydroxide"),
        ({"kind": "batch.extracted"}, lambda b: b["kind"] == "batch.extracted"),
        ({"country": "kr"}, lambda b: b["country"] == "KR"),
        ({"since": "2025-06-01T00:00:00Z"}, lambda b: b["time"] >= "2025-06-01"),
        ({"until": "2025-01-10T00:00:00Z"}, lambda b: b["time"] < "2025-01-10"),
    ],
)
def test_batch_filters(client: TestClient, led: Ledger, params: dict[str, str], check: Any) -> None:
    body = client.get("/v1/batches", params={**params, "limit": 500}).json()
    assert body["batches"], params
    assert all(check(b) for b in body["batches"]), body
    assert body["total"] == len(body["batches"]) < len(all_ids(led))


def test_prefix_is_literal_not_a_pattern(led: Ledger) -> None:
    page = search_batches(led.engine, BatchFilter(prefix="US_PACK"))  # '_' is not a wildcard
    assert page.total == 0


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("cursor=%25%25%25", "cursor"),
        ("kind=batch.exploded", "kind="),
        ("limit=0", "limit"),
        ("country=USA", "country"),
    ],
)
def test_bad_batch_queries_are_422(client: TestClient, query: str, needle: str) -> None:
    assert_problem(client.get(f"/v1/batches?{query}"), 422, needle)


def test_search_limit_is_checked_by_the_query_too(led: Ledger) -> None:
    with pytest.raises(QueryError, match="limit"):
        search_batches(led.engine, BatchFilter(), limit=10_000)


# -- the custody timeline -----------------------------------------------------------------------------
def test_timeline_of_a_mine_lot(client: TestClient) -> None:
    body = client.get("/v1/batches/CD-COHYD-001/events").json()
    roles = [e["role"] for e in body["events"]]
    assert roles == ["made", "shipped", "received", "consumed"]
    seqs = [e["seq"] for e in body["events"]]
    assert seqs == sorted(seqs)
    shipped = body["events"][1]["event"]
    assert shipped["batch_id"] == "CD-COHYD-001" and shipped["to_country"] == "CN"
    for e in body["events"]:
        entry = client.get(e["entry_url"]).json()
        assert entry["event_id"] == e["event_id"] and "sig" not in e["event"]
        proof = client.get(e["inclusion_proof_url"])
        assert proof.status_code == 200 and proof.json()["seq"] == e["seq"]


def test_timeline_of_an_unknown_batch_is_404(client: TestClient) -> None:
    assert_problem(client.get("/v1/batches/NO-SUCH/events"), 404, "NO-SUCH")


# -- provenance: origins in words ---------------------------------------------------------------------
def test_origin_table_says_where_each_step_happened(client: TestClient, led: Ledger) -> None:
    body = client.get(f"/v1/batches/{PACK}/provenance/breakdown").json()
    summary = led.provenance(PACK).summary(fta=fta_countries())
    for el, data in body["elements"].items():
        assert sum(o["kg"] for o in data["origins"]) == pytest.approx(
            summary["elements"][el]["contained_kg"], abs=1e-4
        )
        for o in data["origins"]:
            assert o["label"].startswith(("Mined in ", "Recycled in ", "Unknown origin")), o
    li = body["elements"]["li"]["origins"]
    au = next(o for o in li if o["mined_in"] == "AU")
    assert au["label"] == "Mined in Australia (AU), processed in United States (US)"
    assert au["source_facilities"] == ["mine-au-greenbushes"]
    assert au["processing_facilities"] == ["ref-us-kings-mountain"]
    assert au["share"] == pytest.approx(summary["elements"]["li"]["shares"]["fta_or_us_extracted"], abs=1e-6)
    labels = {c["label"] for c in body["categories"]}
    assert "US" not in labels and "Mined or processed in the US" in labels
    ni = body["elements"]["ni"]["origins"]
    assert any(o["feoc_touched"] and o["label"].endswith("FEOC-touched") for o in ni)


# -- the flow graph -----------------------------------------------------------------------------------
def test_graph_has_outside_feeds_and_feoc_steps(client: TestClient, led: Ledger) -> None:
    g = client.get("/v1/batches/CA-BM-001/graph").json()
    nodes = {n["id"]: n for n in g["nodes"]}
    feeds = [n for n in g["nodes"] if n["external"]]
    assert len(feeds) == 1 and feeds[0]["kg"] == "9000" and "end-of-life" in feeds[0]["label"]
    assert nodes["CN-NISO4-001"]["feoc"] and not nodes["AU-SPOD-001"]["feoc"]
    lineage = led.lineage("CA-BM-001", direction="up", depth=50)
    assert {(e["parent"], e["child"]) for e in lineage} <= {(e["source"], e["target"]) for e in g["edges"]}
    for e in g["edges"]:  # material flows left to right
        assert nodes[e["source"]]["column"] < nodes[e["target"]]["column"]
    assert nodes["CA-BM-001"]["column"] == max(n["column"] for n in g["nodes"])


def test_graph_as_dot(client: TestClient) -> None:
    resp = client.get(f"/v1/batches/{PACK}/graph", params={"format": "dot", "depth": 2})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/vnd.graphviz")
    assert "attachment" in resp.headers["content-disposition"]
    g = client.get(f"/v1/batches/{PACK}/graph", params={"depth": 2}).json()
    text = resp.text
    assert text.startswith('digraph "lineage of US-PACK-002" {') and text.rstrip().endswith("}")
    for n in g["nodes"]:
        assert f'"{n["id"]}" [' in text
    assert text.count(" -> ") == len(g["edges"])


# -- the passport -------------------------------------------------------------------------------------
def test_passport_of_a_pack(client: TestClient, led: Ledger) -> None:
    p = client.get(f"/v1/batches/{PACK}/passport").json()
    g = p["generalProductInformation"]
    b = led.batch(PACK)
    assert b is not None
    assert g["batteryIdentifier"]["value"] == PACK and g["batteryIdentifier"]["entries"] == [b.seq]
    assert g["manufacturingDate"]["value"] == b.time.date().isoformat()
    assert g["manufacturerIdentification"]["value"]["facilityId"] == "pack-us-michigan"
    assert p["materialComposition"]["batteryChemistry"]["value"] == "nmc811"
    shares = led.provenance(PACK).summary(fta=fta_countries())["elements"]
    rc = {r["recycledMaterial"]: r for r in p["circularity"]["recycledContent"]}
    for el, name in (("co", "Cobalt"), ("li", "Lithium"), ("ni", "Nickel")):
        assert rc[name]["preConsumerShare"]["value"] == pytest.approx(
            shares[el]["shares"]["recycled_pre_consumer"] * 100, abs=1e-3
        )
        assert rc[name]["postConsumerShare"]["value"] == pytest.approx(
            shares[el]["shares"]["recycled_post_consumer"] * 100, abs=1e-3
        )
    assert rc["Lead"]["preConsumerShare"]["value"] is None
    size = client.get("/v1/status").json()["entries"]
    assert all(0 <= s < size for s in p["entries"])
    assert p["permalink"].endswith("/?batch=US-PACK-002&view=passport")


def test_passport_of_a_mine_lot_is_refused(client: TestClient) -> None:
    assert_problem(client.get("/v1/batches/AU-SPOD-001/passport"), 422, "cells, modules and packs")


def test_passport_qr_is_a_standalone_svg(client: TestClient) -> None:
    resp = client.get(f"/v1/batches/{PACK}/passport/qr.svg")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(resp.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


# -- audits and bundles -------------------------------------------------------------------------------
def test_audit_an_example_claim(client: TestClient, demo: Demo) -> None:
    names = [e["name"] for e in client.get("/v1/audits/examples").json()["examples"]]
    assert "45x-cell.yaml" in names
    claim = client.get("/v1/audits/examples/45x-cell.yaml").text
    body = client.post("/v1/audits", content=claim, headers={"content-type": "text/yaml"}).json()
    assert body["status"] == "pass" and body["bundle_urls"] == ["/v1/batches/US-CELL-001/bundle"]
    html = client.post("/v1/audits?format=html", content=claim, headers={"content-type": "text/yaml"}).text
    assert "cell-us-georgia" in html and "/v1/batches/US-CELL-001/bundle" in html
    led = Ledger(demo.url)
    try:
        assert led.operator_vkey in html  # the real operator key, not a placeholder
    finally:
        led.close()


@pytest.mark.parametrize(
    ("claim", "needle"),
    [("kind: 45z\n", "'45z' is not a claim kind"), ("", "request body"), ("[1, 2", "claim")],
)
def test_bad_claims_are_422_in_one_line(client: TestClient, claim: str, needle: str) -> None:
    body = assert_problem(client.post("/v1/audits", content=claim), 422, needle)
    assert "\n" not in body["detail"]


def test_bundle_download_verifies_offline(client: TestClient, demo: Demo) -> None:
    resp = client.get("/v1/batches/US-CELL-001/bundle")
    assert resp.status_code == 200 and "attachment" in resp.headers["content-disposition"]
    led = Ledger(demo.url)
    try:
        vkey = led.operator_vkey
    finally:
        led.close()
    report = verify_bundle(resp.content, vkey)
    assert report.batch_id == "US-CELL-001"


def test_rejection_detail_decodes_the_payload(client: TestClient, demo: Demo) -> None:
    rows = client.get("/v1/rejections", params={"limit": 100}).json()["rejections"]
    for r in rows:
        d = client.get(f"/v1/rejections/{r['id']}").json()
        raw = base64.b64decode(d["raw_base64"])
        if r["reason"] == "malformed":
            assert d["raw_json"] is None
        else:
            assert d["raw_json"] == json.loads(raw)
        assert d["raw_text"] == raw.decode("utf-8", errors="strict") if d["raw_text"] is not None else True


# -- docs and routers ---------------------------------------------------------------------------------
def test_docs_are_served_from_local_assets(client: TestClient) -> None:
    page = client.get("/v1/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "https://" not in page.text and "http://" not in page.text
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js"):
        resp = client.get(f"/v1/docs/assets/{asset}")
        assert resp.status_code == 200 and len(resp.content) > 10_000
    assert "/v1/openapi.json" in client.get("/v1/docs/init.js").text
    assert_problem(client.get("/v1/docs/assets/..%2Fsecret"), 404)


def test_more_routers_can_be_included(demo: Demo) -> None:
    extra = APIRouter()

    @extra.get("/v1/epcis/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    with TestClient(create_app(demo.url, routers=[extra])) as c:
        assert c.get("/v1/epcis/ping").json() == {"pong": "yes"}
        assert "/v1/epcis/ping" in c.get("/v1/openapi.json").json()["paths"]


def test_new_endpoints_are_in_the_openapi_schema(client: TestClient) -> None:
    paths = set(client.get("/v1/openapi.json").json()["paths"])
    assert {
        "/v1/batches",
        "/v1/batches/{batch_id}/events",
        "/v1/batches/{batch_id}/graph",
        "/v1/batches/{batch_id}/passport",
        "/v1/batches/{batch_id}/passport/qr.svg",
        "/v1/batches/{batch_id}/bundle",
        "/v1/audits",
        "/v1/audits/examples",
    } <= paths


def test_no_import_circle_between_the_faces() -> None:
    for name in ("api.py", "cli_api.py", "views.py"):
        text = (Path(__file__).resolve().parents[2] / "batteryledger" / name).read_text()
        assert (
            "from batteryledger.cli import" not in text and "from batteryledger import cli\n" not in text
        ), name


def test_a_recyclers_outside_feed_is_a_fact_of_its_batch(client: TestClient) -> None:
    b = client.get("/v1/batches/CA-BM-001").json()
    [feed] = b["external_feed"]
    assert feed["kg"] == "9000" and feed["consumer"] == "post" and "end-of-life" in feed["description"]
    inputs = sum(float(e["kg"]) for e in client.get("/v1/batches/CA-BM-001/lineage?depth=1").json()["edges"])
    assert inputs == 2000  # the cell plant's production scrap
    assert b["external_feed_share"] == pytest.approx(9000 / (9000 + inputs))
    assert client.get(f"/v1/batches/{PACK}").json()["external_feed"] == []
