"""The demo chain published from EPCIS 2.0 documents through a real Apache Kafka broker.

Each plant publishes its own documents (examples/epcis/, in chain order) with `batteryledger epcis
publish`, signing with its own key; a real worker process verifies and sequences them. The ledger must
then hold the same batches with the same provenance as a ledger of the native demo chain. Re-publishing a
document is a no-op; a document with a bad event publishes nothing unless --skip-bad. Nothing is mocked;
waits are bounded polls, no timing is asserted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batteryledger.cli import app, fta_countries
from batteryledger.epcis_examples import EXAMPLES_DIR
from batteryledger.sample import DemoChain, demo_chain, write_keys
from ledger.core import Ledger, verify_ledger
from schemas.epcis import dumps, parse_json
from schemas.signing import save_private_key
from streams.publisher import Publisher
from streams.settings import Settings
from streams.topics import MATERIAL_EVENTS
from streams.worker import WorkerProcess

DECIDE_TIMEOUT_S = 180.0
LOCATIONS = EXAMPLES_DIR / "locations.json"


@dataclass
class EpcisRig:
    tmp: Path
    chain: DemoChain
    settings: Settings
    worker: WorkerProcess

    def entries(self) -> int:
        with Ledger(self.settings.store) as led:
            return int(led.stats()["entries"])

    def publish(self, doc: Path, *extra: str, facility: str | None = None) -> Any:
        fac = facility or doc.stem.split("-", 1)[1]
        args = [
            "epcis", "publish", str(doc), "--key", str(self.tmp / "keys" / f"{fac}.key"), "--facility", fac,
            "--locations", str(LOCATIONS), "--broker", self.settings.broker, "--store", self.settings.store,
            "--topic-suffix", self.settings.topic_suffix, "--timeout", str(DECIDE_TIMEOUT_S), *extra,
        ]  # fmt: skip
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        if result.exit_code not in (0, 2) and not self.worker.is_running():
            pytest.fail(f"the worker died:\n{self.worker.log_tail(60)}")
        return result


def wait_for(what: str, done: Callable[[], bool], worker: WorkerProcess) -> None:
    deadline = time.monotonic() + DECIDE_TIMEOUT_S
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{worker.log_tail(60)}")


@pytest.fixture
def epcis_rig(
    tmp_path: Path, kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]]
) -> Iterator[EpcisRig]:
    topics = make_topics(2)
    suffix = topics[MATERIAL_EVENTS][len(MATERIAL_EVENTS) + 1 :]
    chain = demo_chain()
    write_keys(chain, tmp_path / "keys")
    store = f"sqlite:///{tmp_path}/ledger.db"
    Ledger.init(store, operator_key=chain.operator_key, origin="test.batteryledger/epcis").close()
    save_private_key(chain.operator_key, tmp_path / "operator.key")
    settings = Settings(
        broker=kafka_bootstrap,
        store=store,
        app_id=f"bl-epcis-{uuid.uuid4().hex[:8]}",
        partitions=2,
        topic_suffix=suffix,
        operator_key=tmp_path / "operator.key",
        park_max_age_s=60.0,
        expire_interval_s=0.5,
        checkpoint_every=500,
        data_dir=tmp_path / "faust",
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    rig = EpcisRig(tmp_path, chain, settings, worker)
    try:
        # the operator registers the facilities (native registry events: EPCIS has none)
        with Publisher(kafka_bootstrap, "registry", None, topic=settings.events_topic) as pub:
            pub.publish_many([e.raw for e in chain.registry_events])
        ids = [e.event_id for e in chain.registry_events]

        def registered() -> bool:
            with Ledger(store) as led:
                dec = led.decisions(ids)
            return all(dec.get(i, ("",))[0] == "appended" for i in ids)

        wait_for("the registry events", registered, worker)
        yield rig
    finally:
        worker.stop()


def native_ledger(chain: DemoChain, path: Path) -> Ledger:
    led = Ledger.init(
        f"sqlite:///{path}", operator_key=chain.operator_key, origin="test.batteryledger/native"
    )
    assert all(r.status == "appended" for r in led.append([e.raw for e in chain.good_events]))
    return led


def test_the_demo_chain_from_epcis_documents_gives_the_native_provenance(epcis_rig: EpcisRig) -> None:
    rig = epcis_rig
    docs = sorted(EXAMPLES_DIR.glob("[0-9]*.jsonld"))
    assert len(docs) > 10
    for doc in docs:
        r = rig.publish(doc)
        assert r.exit_code == 0, (doc.name, r.stdout, r.stderr, rig.worker.log_tail(30))
        assert "rejected" not in r.stdout and "accepted" in r.stdout, (doc.name, r.stdout)
    assert rig.entries() == 1 + len(rig.chain.good_events)  # genesis + registry + every chain event once

    fta = fta_countries()
    with Ledger(rig.settings.store) as led, native_ledger(rig.chain, rig.tmp / "native.db") as native:
        assert not verify_ledger(led).errors
        for pack in rig.chain.final_packs:
            got = led.provenance(pack).summary(fta=fta)
            want = native.provenance(pack).summary(fta=fta)
            # the same origins, shares and values; the event ids differ only by the note with the eventID
            got.pop("events", None)
            want.pop("events", None)
            assert got == want, pack
            assert led.lineage(pack, direction="up", depth=50) == native.lineage(
                pack, direction="up", depth=50
            )

    # publishing a document again is a no-op: the EPCIS eventIDs map to the same ledger events
    before = rig.entries()
    r = rig.publish(docs[0])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "re-published: a no-op" in r.stdout and "accepted" not in r.stdout
    assert rig.entries() == before

    # a document with one bad event publishes nothing ...
    mine = docs[0].stem.split("-", 1)[1]
    doc = parse_json(docs[0].read_bytes())
    good = parse_json(dumps(doc["epcisBody"]["eventList"][0]))  # a commissioning at the mine: a new lot
    good["eventID"] = "urn:uuid:00000000-0000-4000-8000-00000000600d"
    new_lot = "urn:batteryledger:batch:AU-SPOD-EPCIS-2"
    old_lot = good["quantityList"][0]["epcClass"]
    good["quantityList"][0]["epcClass"] = new_lot
    good["ilmd"]["bl:lots"] = {new_lot: good["ilmd"]["bl:lots"][old_lot]}
    bad = parse_json(dumps(good))
    bad["eventID"] = "urn:uuid:00000000-0000-4000-8000-00000000bad1"
    bad["bizStep"] = "inspecting"
    doc["epcisBody"]["eventList"] = [good, bad]
    mixed = rig.tmp / "mixed.jsonld"
    mixed.write_text(dumps(doc))
    r = rig.publish(mixed, facility=mine)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0].startswith("error: event 1: bizStep: unmapped bizStep inspecting")
    assert "published" not in r.stdout
    assert rig.entries() == before
    # ... unless --skip-bad: the good one goes through the broker into the ledger, the skipped one is listed
    r = rig.publish(mixed, "--skip-bad", facility=mine)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert r.stderr.splitlines()[0].startswith("skipped event 1: bizStep:")
    assert "published 1 event(s)" in r.stdout
    assert "event 0 urn:uuid:00000000-0000-4000-8000-00000000600d" in r.stdout and "accepted" in r.stdout
    assert rig.entries() == before + 1
    with Ledger(rig.settings.store) as led:
        assert led.batch("AU-SPOD-EPCIS-2") is not None
