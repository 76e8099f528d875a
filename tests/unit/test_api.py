"""The HTTP API (batteryledger.api) over a real SQLite ledger holding the demo supply chain.

The ledger is written by a Ledger with the operator key (the sequencer), the app reads it: every
endpoint, the 404 / 422 problem responses, and the promise that provenance is exactly what
`batteryledger provenance --json` prints.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError, OperationalError
from typer.testing import CliRunner

from batteryledger.api import (
    BREAKDOWN_CATEGORIES,
    DEFAULT_REJECTIONS_LIMIT,
    MAX_LINEAGE_DEPTH,
    MAX_REJECTIONS_LIMIT,
    PROBLEM_JSON,
    create_app,
    provenance_breakdown,
)
from batteryledger.cli import app as cli_app
from batteryledger.sample import DemoChain, demo_chain
from batteryledger.views import fta_countries
from ledger import chain, merkle
from ledger.checkpoint import Checkpoint, open_note
from ledger.core import Incoming, Ledger
from ledger.store import META, StoreError

PACK = "US-PACK-002"
MISSING = "NO-SUCH-BATCH-42"


@dataclass
class Demo:
    url: str
    chain: DemoChain
    checkpoint_sizes: list[int]
    bad_sources: dict[str, bytes]  # rejection source -> the bytes that were sent


def build_demo(path: Path, *, registry_only: bool = False) -> Demo:
    c = demo_chain()
    url = f"sqlite:///{path}"
    led = Ledger.init(url, operator_key=c.operator_key, origin="api-test.example/ledger")
    events = c.registry_events if registry_only else c.good_events
    half = len(events) // 2
    sizes = []
    for part in (events[:half], events[half:]):
        assert all(r.status == "appended" for r in led.append([e.raw for e in part]))
        led.make_checkpoint()
        sizes.append(led.size)
    bad = {f"test:{label}": raw for label, raw, _ in c.bad_events}
    if not registry_only:
        led.append([Incoming(raw=raw, source=src) for src, raw in bad.items()])
    led.close()
    return Demo(url, c, sizes, bad)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return build_demo(tmp_path_factory.mktemp("api") / "ledger.db")


@pytest.fixture(scope="module")
def client(demo: Demo) -> Iterator[TestClient]:
    with TestClient(create_app(demo.url)) as c:
        yield c


@pytest.fixture(scope="module")
def led(demo: Demo) -> Iterator[Ledger]:
    ledger = Ledger(demo.url)
    yield ledger
    ledger.close()


def assert_problem(resp: Any, status: int, *needles: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM_JSON)
    body = resp.json()
    assert body["status"] == status
    assert body["title"]
    for n in needles:
        assert n in body["detail"], body
    assert "Traceback" not in resp.text
    return dict(body)


# -- ledger-wide ---------------------------------------------------------------------------------
def test_status_is_the_ledger_stats(client: TestClient, led: Ledger) -> None:
    body = client.get("/v1/status").json()
    assert body == led.stats()
    assert body["rejections"] == {"bad_signature": 1, "malformed": 1, "overdrawn": 1, "unknown_facility": 1}
    assert body["latest_checkpoint_size"] == body["entries"]


def test_healthz(client: TestClient, led: Ledger) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "entries": led.size}


def test_checkpoint_is_the_signed_note(client: TestClient, led: Ledger, demo: Demo) -> None:
    resp = client.get("/v1/checkpoint")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text == led.latest_checkpoint()
    body = open_note(resp.text, led.origin, demo.chain.operator_key.public_key())
    cp = Checkpoint.parse(body)
    assert (cp.origin, cp.size) == (led.origin, demo.checkpoint_sizes[-1])


def test_no_checkpoint_yet_is_404(tmp_path: Path) -> None:
    c = demo_chain()
    url = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger.init(url, operator_key=c.operator_key, origin="x.example/l").close()
    with TestClient(create_app(url)) as client:
        assert_problem(client.get("/v1/checkpoint"), 404, "no checkpoint")


def test_facilities_come_from_the_registry(client: TestClient, demo: Demo) -> None:
    body = client.get("/v1/facilities").json()["facilities"]
    by_id = {f["facility_id"]: f for f in body}
    assert set(demo.chain.facilities) <= set(by_id)
    assert "registry" in by_id
    for fid, fac in demo.chain.facilities.items():
        got = by_id[fid]
        assert got["country"] == fac.country
        assert got["feoc"] is fac.feoc
        pub = base64.b64encode(fac.key.public_key().public_bytes_raw()).decode()
        assert [k["public_key"] for k in got["keys"]] == [pub]
    assert any(f["feoc"] for f in body), "the demo has a FEOC refinery"


# -- batches -------------------------------------------------------------------------------------
def test_batch_facts(client: TestClient, led: Ledger) -> None:
    body = client.get(f"/v1/batches/{PACK}").json()
    b = led.batch(PACK)
    assert b is not None
    assert body["batch_id"] == PACK
    assert body["kind"] == "packs.assembled"
    assert body["stage"] == "pack"
    assert body["facility_id"] == b.facility_id
    assert body["country"] == "US"
    assert body["kg"] == str(b.kg)
    assert body["contained_kg"] == {el.value: str(v) for el, v in b.contained.items()}
    assert body["custody"]["holders"] == {k: str(v) for k, v in b.holders.items()}
    assert body["event_id"] == b.event_id


def test_provenance_is_what_the_cli_prints(client: TestClient, led: Ledger, demo: Demo) -> None:
    for batch in demo.chain.final_packs:
        body = client.get(f"/v1/batches/{batch}/provenance").json()
        assert body == led.provenance(batch).summary(fta=fta_countries())
        printed = CliRunner().invoke(cli_app, ["provenance", batch, "--json", "--store", demo.url])
        assert printed.exit_code == 0, printed.output
        assert body == json.loads(printed.stdout)


def test_breakdown_partitions_each_element(client: TestClient, led: Ledger) -> None:
    body = client.get(f"/v1/batches/{PACK}/provenance/breakdown").json()
    summary = led.provenance(PACK).summary(fta=fta_countries())
    assert set(body["elements"]) == set(summary["elements"])
    assert [c["key"] for c in body["categories"]] == [k for k, _, _ in BREAKDOWN_CATEGORIES]
    for el, data in body["elements"].items():
        total = summary["elements"][el]["contained_kg"]
        assert sum(s["kg"] for s in data["segments"]) == pytest.approx(total, abs=1e-5)  # mg rounding
        assert sum(s["share"] for s in data["segments"]) == pytest.approx(1.0, abs=1e-6)
        assert data["shares"] == summary["elements"][el]["shares"]
        seg = {s["category"]: s["share"] for s in data["segments"]}
        assert seg.get("feoc", 0.0) == pytest.approx(data["shares"]["feoc_touched"], abs=1e-6)
        assert seg.get("unknown", 0.0) == pytest.approx(data["shares"]["unknown"], abs=1e-6)
    ni = {s["category"] for s in body["elements"]["ni"]["segments"]}
    assert {"feoc", "recycled_pre", "recycled_post"} <= ni  # Chinese-refined nickel plus recycled black mass


def test_breakdown_assigns_each_origin_once() -> None:
    def origin(
        source: str, country: str, kg: float, *, proc: str = "", consumer: str = "", feoc: bool = False
    ) -> dict[str, Any]:
        return {
            "source": source,
            "country": country,
            "consumer": consumer or None,
            "processing_country": proc or None,
            "feoc_touched": feoc,
            "kg": kg,
        }

    origins = [
        origin("mined", "AU", 10, proc="US"),  # processed in the US
        origin("mined", "CL", 20, proc="KR"),  # FTA
        origin("mined", "MX", 5, proc="MX"),  # North America (MX left out of this FTA list)
        origin("mined", "ID", 30, proc="CN", feoc=True),
        origin("recycled", "CA", 4, proc="US", consumer="pre"),
        origin("recycled", "CA", 6, proc="US", consumer="post"),
        origin("recycled", "CA", 1, proc="US"),
        origin("mined", "BR", 9, proc="BR"),
        origin("unknown", "", 15),
    ]
    summary = {
        "batch_id": "B",
        "custody_model": "mass_balance",
        "ancestors": 3,
        "missing_parents": ["GONE"],
        "elements": {"li": {"contained_kg": 100.0, "shares": {"unknown": 0.15}, "origins": origins}},
    }
    out = provenance_breakdown(summary, fta=["CL", "KR"])
    segs = {s["category"]: s["kg"] for s in out["elements"]["li"]["segments"]}
    assert segs == {
        "us": 10,
        "fta": 20,
        "north_america": 5,
        "feoc": 30,
        "recycled_pre": 4,
        "recycled_post": 6,
        "recycled": 1,
        "other": 9,
        "unknown": 15,
    }
    order = [k for k, _, _ in BREAKDOWN_CATEGORIES]
    got = [s["category"] for s in out["elements"]["li"]["segments"]]
    assert got == sorted(got, key=order.index)
    assert out["missing_parents"] == ["GONE"]
    assert out["fta_countries"] == ["CL", "KR"]


def test_lineage_up_and_down(client: TestClient, led: Ledger) -> None:
    up = client.get(f"/v1/batches/{PACK}/lineage", params={"direction": "up"}).json()
    assert up["direction"] == "up" and up["truncated"] is False
    assert up["edges"] == json.loads(json.dumps(led.lineage(PACK, direction="up", depth=50)))
    assert {"parent": "US-CELL-002", "child": PACK, "depth": 1} in [
        {k: e[k] for k in ("parent", "child", "depth")} for e in up["edges"]
    ]
    near = client.get(f"/v1/batches/{PACK}/lineage", params={"depth": 1}).json()
    assert near["edges"] and {e["depth"] for e in near["edges"]} == {1}
    assert {e["child"] for e in near["edges"]} == {PACK}

    down = client.get("/v1/batches/AU-SPOD-001/lineage", params={"direction": "down", "depth": 2}).json()
    assert down["edges"] == json.loads(json.dumps(led.lineage("AU-SPOD-001", direction="down", depth=2)))
    assert any(e["parent"] == "AU-SPOD-001" for e in down["edges"])
    assert client.get(f"/v1/batches/{PACK}/lineage?direction=down").json()["edges"] == []


@pytest.mark.parametrize("suffix", ["", "/provenance", "/provenance/breakdown", "/lineage"])
def test_unknown_batch_is_404_naming_it(client: TestClient, suffix: str) -> None:
    assert_problem(client.get(f"/v1/batches/{MISSING}{suffix}"), 404, MISSING)


def test_batch_ids_may_contain_slashes(client: TestClient) -> None:
    assert_problem(client.get("/v1/batches/urn:lot/7/provenance"), 404, "'urn:lot/7'")


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("direction=sideways", "direction"),
        ("depth=0", "depth"),
        (f"depth={MAX_LINEAGE_DEPTH + 1}", "depth"),
        ("depth=many", "depth"),
    ],
)
def test_bad_lineage_parameters_are_422(client: TestClient, query: str, param: str) -> None:
    assert_problem(client.get(f"/v1/batches/{PACK}/lineage?{query}"), 422, param)


@pytest.mark.parametrize("bad", ["-leading-dash", "has space", "x" * 129])
def test_malformed_batch_id_is_422(client: TestClient, bad: str) -> None:
    body = assert_problem(client.get(f"/v1/batches/{bad}/provenance"), 422, "is not a batch id")
    assert bad[:20] in body["detail"]


# -- rejections ----------------------------------------------------------------------------------
def test_rejections_list_and_filter(client: TestClient, demo: Demo) -> None:
    body = client.get("/v1/rejections").json()
    rows = body["rejections"]
    assert body["next_before"] is None
    assert {r["reason"] for r in rows} == {"bad_signature", "malformed", "overdrawn", "unknown_facility"}
    assert {r["source"] for r in rows} <= set(demo.bad_sources)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    for r in rows:
        assert set(r) == {"id", "reason", "detail", "source", "created_at", "event_id"}  # no bytes here
    only = client.get("/v1/rejections", params={"reason": "overdrawn"}).json()["rejections"]
    assert [r["reason"] for r in only] == ["overdrawn"]


def test_rejections_page_by_id(client: TestClient) -> None:
    everything = [r["id"] for r in client.get("/v1/rejections").json()["rejections"]]
    first = client.get("/v1/rejections", params={"limit": 3}).json()
    assert len(first["rejections"]) == 3 and first["next_before"] == first["rejections"][-1]["id"]
    rest = client.get("/v1/rejections", params={"limit": 3, "before": first["next_before"]}).json()
    assert rest["next_before"] is None
    assert [r["id"] for r in first["rejections"] + rest["rejections"]] == everything
    assert len(everything) <= DEFAULT_REJECTIONS_LIMIT


@pytest.mark.parametrize(
    ("query", "needle"),
    [("reason=nonsense", "nonsense"), ("limit=0", "limit"), (f"limit={MAX_REJECTIONS_LIMIT + 1}", "limit")],
)
def test_bad_rejection_parameters_are_422(client: TestClient, query: str, needle: str) -> None:
    assert_problem(client.get(f"/v1/rejections?{query}"), 422, needle)


def test_rejection_detail_has_the_original_bytes(client: TestClient, demo: Demo) -> None:
    for row in client.get("/v1/rejections").json()["rejections"]:
        body = client.get(f"/v1/rejections/{row['id']}").json()
        raw = base64.b64decode(body["raw_base64"])
        assert raw == demo.bad_sources[row["source"]]
        assert body["raw_size"] == len(raw)
        assert body["raw_sha256"] == hashlib.sha256(raw).hexdigest()
        assert {k: body[k] for k in row} == row
    assert_problem(client.get("/v1/rejections/999999"), 404, "999999")
    assert_problem(client.get("/v1/rejections/abc"), 422, "rejection_id")


# -- entries and proofs --------------------------------------------------------------------------
def test_entries_chain_up(client: TestClient, led: Ledger) -> None:
    prev = chain.GENESIS
    for seq in range(led.size):
        body = client.get(f"/v1/entries/{seq}").json()
        data = base64.b64decode(body["data_base64"])
        leaf = chain.leaf_of(data)
        assert body["seq"] == seq
        assert body["previous_entry_hash"] == prev.hex()
        assert body["leaf_hash"] == leaf.hex()
        assert body["entry_hash"] == chain.entry_hash(prev, leaf).hex()
        assert body["event"] == json.loads(data)
        prev = bytes.fromhex(body["entry_hash"])
    assert prev == led.head_hash
    assert_problem(client.get(f"/v1/entries/{led.size}"), 404, str(led.size))
    assert_problem(client.get("/v1/entries/-1"), 422, "seq")


def test_inclusion_proofs_verify(client: TestClient, led: Ledger, demo: Demo) -> None:
    note_root = Checkpoint.parse(
        open_note(led.latest_checkpoint() or "", led.origin, demo.chain.operator_key.public_key())
    ).root_hash
    for seq in (0, 1, led.size // 2, led.size - 1):
        body = client.get("/v1/proofs/inclusion", params={"seq": seq}).json()
        assert body["size"] == demo.checkpoint_sizes[-1]  # default: the latest signed checkpoint
        assert bytes.fromhex(body["root_hash"]) == note_root
        entry = client.get(f"/v1/entries/{seq}").json()
        assert body["leaf_hash"] == entry["leaf_hash"]
        merkle.verify_inclusion(
            bytes.fromhex(body["leaf_hash"]),
            seq,
            body["size"],
            [bytes.fromhex(p) for p in body["proof"]],
            bytes.fromhex(body["root_hash"]),
        )
    small = client.get("/v1/proofs/inclusion", params={"seq": 2, "size": 5}).json()
    assert small["size"] == 5
    merkle.verify_inclusion(
        bytes.fromhex(small["leaf_hash"]),
        2,
        5,
        [bytes.fromhex(p) for p in small["proof"]],
        bytes.fromhex(small["root_hash"]),
    )


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("seq=10&size=10", "seq=10"),
        ("seq=0&size=100000", "size=100000"),
        ("seq=-1", "seq"),
        ("size=3", "seq"),
    ],
)
def test_bad_inclusion_parameters_are_422(client: TestClient, query: str, needle: str) -> None:
    assert_problem(client.get(f"/v1/proofs/inclusion?{query}"), 422, needle)


def test_consistency_proofs_verify(client: TestClient, demo: Demo) -> None:
    old, new = demo.checkpoint_sizes
    for a, b in ((old, new), (1, new), (new, new), (3, 7)):
        body = client.get("/v1/proofs/consistency", params={"old": a, "new": b}).json()
        assert (body["old"], body["new"]) == (a, b)
        merkle.verify_consistency(
            a,
            b,
            bytes.fromhex(body["old_root"]),
            bytes.fromhex(body["new_root"]),
            [bytes.fromhex(p) for p in body["proof"]],
        )
    default = client.get("/v1/proofs/consistency", params={"old": old}).json()
    assert default["new"] == new


@pytest.mark.parametrize(
    ("query", "needle"),
    [("old=5&new=4", "old=5"), ("old=0", "old"), ("old=1&new=100000", "new=100000"), ("", "old")],
)
def test_bad_consistency_parameters_are_422(client: TestClient, query: str, needle: str) -> None:
    assert_problem(client.get(f"/v1/proofs/consistency?{query}"), 422, needle)


# -- behaviour of the app ------------------------------------------------------------------------
def test_follows_the_writer_without_restart(tmp_path: Path) -> None:
    """The app sees entries and facilities the sequencer appends after it started."""
    demo = build_demo(tmp_path / "l.db", registry_only=True)
    with TestClient(create_app(demo.url)) as client:
        before = client.get("/v1/status").json()
        assert_problem(client.get(f"/v1/batches/{PACK}"), 404, PACK)
        writer = Ledger(demo.url, operator_key=demo.chain.operator_key)
        extra = generate_facility(writer, "late-recycler-us")
        assert all(r.status == "appended" for r in writer.append([e.raw for e in demo.chain.chain_events]))
        writer.close()
        after = client.get("/v1/status").json()
        assert after["entries"] == before["entries"] + 1 + len(demo.chain.chain_events)
        assert after["facilities"] == before["facilities"] + 1
        ids = {f["facility_id"] for f in client.get("/v1/facilities").json()["facilities"]}
        assert extra in ids
        assert client.get(f"/v1/batches/{PACK}").status_code == 200
        proof = client.get(
            "/v1/proofs/inclusion", params={"seq": after["entries"] - 1, "size": after["entries"]}
        )
        assert proof.status_code == 200


def test_reloads_when_the_store_is_not_the_chain_it_read(demo: Demo) -> None:
    app = create_app(demo.url)
    reader = app.state.reader
    real = reader.sync()
    reader.ledger.head_hash = bytes(32)  # as if the file had been swapped for another ledger
    reader.ledger.registry.facilities.clear()
    assert reader.sync() == real
    assert len(reader.ledger.registry.facilities) == len(demo.chain.facilities) + 1  # + the registry
    reader.close()


def generate_facility(writer: Ledger, facility_id: str) -> str:
    from schemas.signing import generate_key, key_id, public_key_b64, sign_object

    assert writer.operator_key is not None
    pub = generate_key().public_key()
    obj = {
        "spec": "batteryledger/1",
        "kind": "facility.registered",
        "facility_id": "registry",
        "time": "2024-06-01T00:00:00Z",
        "subject_facility_id": facility_id,
        "legal_entity": "Late Recycling Inc",
        "country": "US",
        "roles": ["batch.recycled"],
        "attestation": {"feoc": False, "as_of": "2024-06-01T00:00:00Z"},
        "key": {
            "key_id": key_id(pub),
            "public_key": public_key_b64(pub),
            "valid_from": "2024-06-01T00:00:00Z",
        },
    }
    [res] = writer.append([sign_object(obj, writer.operator_key)[0]])
    assert res.status == "appended", res
    return facility_id


def test_the_app_cannot_write(client: TestClient) -> None:
    engine = client.app.state.reader.engine  # type: ignore[attr-defined]
    with pytest.raises(OperationalError, match="readonly"), engine.begin() as conn:
        conn.execute(insert(META).values(key="graffiti", value="x"))


def test_missing_store_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(StoreError, match="no ledger"):
        create_app(str(path))
    assert not path.exists()


def test_internal_errors_are_problems_without_traces(demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(demo.url)

    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.state.reader.ledger, "provenance", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get(f"/v1/batches/{PACK}/provenance")
        body = assert_problem(resp, 500)
        assert "secret" not in body["detail"]


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404, "/v1/nothing-here")
    assert_problem(client.post("/v1/status"), 405)


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    paths = set(client.get("/v1/openapi.json").json()["paths"])
    assert {
        "/v1/status",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/provenance",
        "/v1/batches/{batch_id}/provenance/breakdown",
        "/v1/batches/{batch_id}/lineage",
        "/v1/facilities",
        "/v1/rejections",
        "/v1/rejections/{rejection_id}",
        "/v1/checkpoint",
        "/v1/proofs/inclusion",
        "/v1/proofs/consistency",
        "/v1/entries/{seq}",
        "/healthz",
    } <= paths


def test_web_page_and_assets_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="batch-input"' in page.text and '<label for="batch-input"' in page.text
    for asset, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        resp = client.get(f"/static/{asset}")
        assert resp.status_code == 200 and ctype in resp.headers["content-type"]
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        text = text.replace("http://www.w3.org/2000/svg", "")  # a namespace name, never fetched
        assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere


# -- the serve command ---------------------------------------------------------------------------
def serve_cli() -> typer.Typer:
    from batteryledger import cli_api

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """A group, so `serve` stays a subcommand."""

    cli_api.register(app)
    return app


def test_serve_runs_uvicorn_on_loopback(demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    result = CliRunner().invoke(serve_cli(), ["serve", "--store", demo.url, "--port", "8123"])
    assert result.exit_code == 0, result.output
    [call] = calls
    assert (call["host"], call["port"]) == ("127.0.0.1", 8123)
    assert call["app"].state.reader.ledger.origin == "api-test.example/ledger"


def test_serve_refuses_a_missing_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(serve_cli(), ["serve", "--store", str(tmp_path / "none.db")])
    assert result.exit_code != 0
    assert isinstance(result.exception, StoreError)
    assert "no ledger" in str(result.exception)


def test_serve_defaults_match_the_cli() -> None:
    from batteryledger import cli, cli_api

    assert cli_api.DEFAULT_STORE == cli.DEFAULT_STORE


def test_serve_help_names_its_options() -> None:
    result = CliRunner().invoke(serve_cli(), ["serve", "--help"])
    assert result.exit_code == 0
    for opt in ("--store", "--host", "--port"):
        assert opt in result.output


@pytest.mark.integration
def test_postgres_store_serves_the_same_answers(fresh_pg_url: str, tmp_path: Path) -> None:
    """The reader on PostgreSQL: same queries, and its sessions are read-only too."""
    demo = build_demo(tmp_path / "unused.db")  # keys and events; the ledger below is on PostgreSQL
    led = Ledger.init(fresh_pg_url, operator_key=demo.chain.operator_key, origin="pg.example/ledger")
    assert all(r.status == "appended" for r in led.append([e.raw for e in demo.chain.good_events]))
    led.make_checkpoint()
    with TestClient(create_app(fresh_pg_url)) as client:
        assert client.get("/v1/status").json() == led.stats()
        body = client.get(f"/v1/batches/{PACK}/provenance").json()
        assert body == led.provenance(PACK).summary(fta=fta_countries())
        lineage = client.get(f"/v1/batches/{PACK}/lineage").json()["edges"]
        assert lineage == json.loads(json.dumps(led.lineage(PACK, direction="up", depth=50)))
        proof = client.get("/v1/proofs/inclusion", params={"seq": 3}).json()
        merkle.verify_inclusion(
            bytes.fromhex(proof["leaf_hash"]),
            3,
            proof["size"],
            [bytes.fromhex(p) for p in proof["proof"]],
            bytes.fromhex(proof["root_hash"]),
        )
        engine = client.app.state.reader.engine  # type: ignore[attr-defined]
        with pytest.raises(DBAPIError, match="read-only"), engine.begin() as conn:
            conn.execute(insert(META).values(key="graffiti", value="x"))
    led.close()
