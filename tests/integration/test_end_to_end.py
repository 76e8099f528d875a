"""End to end through a real Apache Kafka broker: Publisher -> verify agent -> sequencer -> ledger store.

Every test gets its own topics (fixture ``make_topics``), its own SQLite ledger and its own worker
process (``python -m streams.worker``, the same code as ``batteryledger worker``). Nothing is mocked.
A failure message carries the worker's log tail. Waits are bounded polls of the store; no timing is
asserted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from batteryledger.sample import DemoChain, demo_chain
from ledger.core import Ledger, verify_ledger
from schemas.cloudevents import to_binary
from schemas.signing import decode, save_private_key, sign_object
from streams.publisher import Publisher, Receipt
from streams.settings import Settings
from streams.topics import (
    MATERIAL_EVENTS,
    MATERIAL_EVENTS_REJECTED,
    MATERIAL_EVENTS_VERIFIED,
    TOPIC_MAX_MESSAGE_BYTES,
)
from streams.worker import WorkerProcess
from tests.support.groups import holds, members, pid_of
from tests.support.streams_helpers import family

#: Longest a test waits for the ledger to decide what it published (generous: a slow CI machine).
DECIDE_TIMEOUT_S = 180.0


@dataclass
class Rig:
    """A ledger, its topics, a worker process and a publisher, all for one test."""

    tmp: Path
    bootstrap: str
    topics: dict[str, str]
    chain: DemoChain
    settings: Settings
    workers: list[WorkerProcess] = field(default_factory=list)
    publisher: Publisher | None = None

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.store)

    def entries(self) -> int:
        """Entries in the store now (a fresh reader: a Ledger object's size is its own snapshot)."""
        with self.ledger as led:
            return int(led.stats()["entries"])

    def start_worker(self) -> WorkerProcess:
        w = WorkerProcess(self.settings, self.tmp / f"worker-{len(self.workers)}.log").start()
        self.workers.append(w)
        return w

    def pub(self) -> Publisher:
        if self.publisher is None:
            self.publisher = Publisher(self.bootstrap, "registry", None, topic=self.topics[MATERIAL_EVENTS])
        return self.publisher

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name} (pid {w.pid}) ---\n{w.log_tail(60)}" for w in self.workers)

    def wait_for(self, what: str, done: Callable[[], bool], timeout: float = DECIDE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            for w in self.workers:
                if w.proc is not None and w.proc.returncode not in (None, -9) and not w.is_running():
                    pytest.fail(
                        f"worker exited with {w.proc.returncode} while waiting for {what}\n{self.logs()}"
                    )
            time.sleep(0.2)
        pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{self.logs()}")

    def decided(self, event_ids: Iterable[str] = (), sources: Iterable[str] = ()) -> dict[str, Any]:
        ids, srcs = list(event_ids), list(sources)
        out: dict[str, Any] = {}

        def check() -> bool:
            with self.ledger as led:
                out.clear()
                out.update(led.decisions(ids, srcs))
            return all(k in out and out[k][0] != "parked" for k in [*ids, *srcs])

        self.wait_for(f"{len(ids)} events and {len(srcs)} rejections to be decided", check)
        return out

    def register(self) -> None:
        receipts = self.pub().publish_many([e.raw for e in self.chain.registry_events])
        assert len(receipts) == len(self.chain.registry_events)
        self.decided([e.event_id for e in self.chain.registry_events])

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        for w in self.workers:
            w.stop()


@pytest.fixture
def rig(tmp_path: Path, kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]]) -> Iterator[Rig]:
    topics = make_topics(2)
    suffix = topics[MATERIAL_EVENTS][len(MATERIAL_EVENTS) + 1 :]
    chain = demo_chain()
    store = f"sqlite:///{tmp_path}/ledger.db"
    Ledger.init(store, operator_key=chain.operator_key, origin="test.batteryledger/e2e").close()
    save_private_key(chain.operator_key, tmp_path / "operator.key")
    settings = Settings(
        broker=kafka_bootstrap,
        store=store,
        app_id=f"bl-test-{uuid.uuid4().hex[:8]}",
        partitions=2,
        topic_suffix=suffix,
        operator_key=tmp_path / "operator.key",
        park_max_age_s=5.0,
        expire_interval_s=0.5,
        checkpoint_every=500,
        data_dir=tmp_path / "faust",
    )
    r = Rig(tmp_path, kafka_bootstrap, topics, chain, settings)
    try:
        yield r
    finally:
        r.close()


def chain_ok(led: Ledger) -> None:
    report = verify_ledger(led)
    assert not report.errors, report.errors


def extraction(fac_id: str, key: Any, batch_id: str, minute: int) -> bytes:
    obj = {
        "spec": "batteryledger/1",
        "kind": "batch.extracted",
        "facility_id": fac_id,
        "time": (datetime(2025, 3, 1, tzinfo=UTC) + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "outputs": [
            {
                "batch_id": batch_id,
                "material": "spodumene_concentrate",
                "kg": "1000",
                "contained_kg": {"li": "30"},
            }
        ],
    }
    return sign_object(obj, key)[0]


def rejected_records(r: Rig, sources: set[str], timeout: float = DECIDE_TIMEOUT_S) -> dict[str, Any]:
    """Records of the rejected topic by bl_source, once every source in `sources` is there."""
    consumer = KafkaConsumer(
        bootstrap_servers=r.bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000
    )
    tp = TopicPartition(r.topics[MATERIAL_EVENTS_REJECTED], 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    found: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not sources <= set(found):
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    hdrs = {k: v for k, v in rec.headers}
                    found[hdrs.get("bl_source", b"").decode()] = (rec.value, hdrs)
    finally:
        consumer.close()
    missing = sources - set(found)
    assert not missing, f"no record on the rejected topic for {sorted(missing)}\n{r.logs()}"
    return found


# ------------------------------------------------------------------------------------------------ tests


def test_demo_chain_end_to_end_with_bad_events(rig: Rig) -> None:
    rig.start_worker()
    rig.register()
    pub = rig.pub()
    # the chain in causal order across facilities (each facility is one partition key): see batteryledger.demo
    from batteryledger.demo import publish_causally

    publish_causally(pub, rig.ledger, rig.chain.chain_events, timeout=DECIDE_TIMEOUT_S)
    receipts: dict[str, Receipt] = {}
    for label, raw, _ in rig.chain.bad_events:
        try:
            pub.publish_signed(raw)
            receipts[label] = pub.last_receipt  # type: ignore[assignment]
        except Exception:  # malformed bytes cannot be signed-published: send them as they are
            receipts[label] = pub.publish_raw(
                raw, headers=to_binary(decode(rig.chain.chain_events[0].raw)).headers
            )
    dec = rig.decided(sources=[r.source for label, r in receipts.items() if label != "replayed event"])
    for label, _raw, expected in rig.chain.bad_events:
        if expected == "duplicate":
            continue
        assert dec[receipts[label].source][2] == expected, (label, dec[receipts[label].source])
    with rig.ledger as led:
        assert led.size == 1 + len(rig.chain.good_events)  # genesis + every good event once, replay included
        chain_ok(led)
        for pack in rig.chain.final_packs:
            assert led.batch(pack) is not None


def test_duplicate_publish_gives_one_entry(rig: Rig) -> None:
    rig.start_worker()
    rig.register()
    raw, _ = family(rig.chain, "dup")
    pub = rig.pub()
    first = pub.publish_signed(raw)
    second = pub.publish_signed(raw)
    assert first == second
    rig.decided([first])
    with rig.ledger as led:
        rig.wait_for(
            "the offset of the second copy to be stored",
            lambda: _consumed(led, rig, 2 + len(rig.chain.registry_events)),
        )
    with rig.ledger as led:
        assert led.decisions([first])[first][0] == "appended"
        assert led.entry_data([first])[first][0] == led.size - 1
        assert led.size == 2 + len(rig.chain.registry_events)
        assert led.stats()["rejections"] == {}


def _consumed(led: Ledger, rig: Rig, n: int) -> bool:
    """At least `n` raw messages consumed: the per-raw-partition marks the sequencer stores (verified-topic
    offsets count batches, not events)."""
    return sum(led.stored_offsets(rig.settings.app_id + "/sources").values()) >= n


def test_sigkill_mid_stream_then_restart_appends_every_event_exactly_once(rig: Rig) -> None:
    rig.start_worker()
    rig.register()
    n_facilities, per_facility = 4, 750
    facs = [f for f in rig.chain.facilities.values() if "batch.extracted" in {r.value for r in f.roles}][
        :n_facilities
    ]
    events = [
        extraction(f.facility_id, f.key, f"KILL-{i}-{j}", j)
        for j in range(per_facility)
        for i, f in enumerate(facs)
    ]
    ids = [decode(raw).event_id for raw in events]
    rig.pub().publish_many(events)
    base = 1 + len(rig.chain.registry_events)
    rig.wait_for("the worker to be mid-stream", lambda: rig.entries() > base + 200)
    rig.workers[-1].kill()
    killed_at = rig.entries() - base
    assert killed_at < len(events), "the worker finished before it could be killed: publish more events"
    rig.start_worker()
    dec = rig.decided(ids)
    assert all(v[0] == "appended" for v in dec.values()), [v for v in dec.values() if v[0] != "appended"][:3]
    with rig.ledger as led:
        assert led.size == base + len(events), f"killed after {killed_at} entries"
        assert led.stats()["rejections"] == {}
        seqs = sorted(v[1] for v in dec.values())
        assert seqs == list(range(base, base + len(events)))  # each once, no gaps
        chain_ok(led)


def test_sigkill_mid_batch_appends_every_event_exactly_once(rig: Rig) -> None:
    """One verified record carries up to 500 events; with max_batch 40 the sequencer appends it in
    several transactions, so a SIGKILL lands inside a record: the restart must neither lose nor double."""
    rig.settings = rig.settings.with_(max_batch=40, verify_batch=500)
    rig.start_worker()
    rig.register()
    facs = [f for f in rig.chain.facilities.values() if "batch.extracted" in {r.value for r in f.roles}][:4]
    events = [
        extraction(f.facility_id, f.key, f"MID-{i}-{j}", j) for j in range(600) for i, f in enumerate(facs)
    ]
    ids = [decode(raw).event_id for raw in events]
    base = 1 + len(rig.chain.registry_events)
    rig.pub().publish_many(events)
    rig.wait_for("the worker to be mid-stream", lambda: rig.entries() > base + 100)
    rig.workers[-1].kill()
    killed_at = rig.entries() - base
    assert killed_at < len(events), "the worker finished before it could be killed: publish more events"
    rig.start_worker()
    dec = rig.decided(ids)
    assert all(v[0] == "appended" for v in dec.values())
    with rig.ledger as led:
        assert led.size == base + len(events), f"killed after {killed_at} entries"
        assert sorted(v[1] for v in dec.values()) == list(range(base, base + len(events)))
        assert led.stats()["rejections"] == {}
        chain_ok(led)


def test_children_published_before_parents_wait_then_append(rig: Rig) -> None:
    rig.start_worker()
    rig.register()
    pub = rig.pub()
    parent, child = family(rig.chain, "cbp")
    _, orphan = family(rig.chain, "never")
    child_id, orphan_id = pub.publish_signed(child), pub.publish_signed(orphan)
    with rig.ledger as led:
        rig.wait_for(
            "the child to be parked", lambda: led.decisions([child_id]).get(child_id, ("",))[0] == "parked"
        )
    parent_id = pub.publish_signed(parent)
    dec = rig.decided([parent_id, child_id, orphan_id])
    assert dec[parent_id][0] == "appended" and dec[child_id][0] == "appended"
    assert dec[parent_id][1] < dec[child_id][1]
    assert dec[orphan_id][0] == "rejected" and dec[orphan_id][2] == "parents_timeout"


def test_bad_messages_are_rejected_with_reasons_and_nothing_is_lost(rig: Rig) -> None:
    rig.start_worker()
    rig.register()
    pub = rig.pub()
    fac = rig.chain.facilities["mine-au-greenbushes"]
    good = [extraction(fac.facility_id, fac.key, f"BAD-OK-{j}", j) for j in range(20)]
    template = to_binary(decode(good[0])).headers
    unknown_kind, _ = sign_object(
        {"spec": "batteryledger/1", "kind": "battery.teleported", "facility_id": fac.facility_id}, fac.key
    )
    wrong_id = [(k, b"f" * 64 if k == "ce_id" else v) for k, v in template]
    bad: list[tuple[str, bytes | None, list[tuple[str, bytes]], str]] = [
        ("malformed bytes", b'{"spec": "batteryledger/1", "kind": "batch.extr', template, "malformed"),
        ("not UTF-8", b"\xff\xfe\x00garbage", template, "malformed"),
        ("empty value", None, template, "malformed"),
        ("missing headers", good[1], [], "missing_headers"),
        ("wrong ce_id", good[2], wrong_id, "header_mismatch"),
        ("oversized", b"{" + b" " * (200 * 1024) + b"}", template, "oversized"),
        ("unknown kind", unknown_kind, template, "unknown_kind"),
    ]
    assert TOPIC_MAX_MESSAGE_BYTES > 200 * 1024
    published: list[tuple[str, Receipt]] = []
    for j, raw in enumerate(good):
        if j < len(bad):
            label, value, headers, _ = bad[j]
            published.append((label, pub.publish_raw(value, headers=headers)))
        if j not in (1, 2):  # those two go out only with bad headers above
            pub.publish_signed(raw)
            published.append((f"good {j}", pub.last_receipt))  # type: ignore[arg-type]
    # structured mode is accepted too
    with Publisher(
        rig.bootstrap, fac.facility_id, fac.key, topic=rig.topics[MATERIAL_EVENTS], structured=True
    ) as spub:
        sid = spub.publish(
            {
                "kind": "batch.extracted",
                "time": "2025-04-01T00:00:00Z",
                "outputs": [{"batch_id": "STRUCT-1", "material": "spodumene_concentrate", "kg": "5"}],
            }
        )
    good_ids = [decode(g).event_id for j, g in enumerate(good) if j not in (1, 2)] + [sid]
    dec = rig.decided(good_ids, [r.source for label, r in published if not label.startswith("good")])
    for label, receipt in published:
        if label.startswith("good"):
            continue
        expected = next(b[3] for b in bad if b[0] == label)
        assert dec[receipt.source][2] == expected, (label, dec[receipt.source])
    assert all(dec[i][0] == "appended" for i in good_ids)
    # the plants' feed: each rejection on material-events-rejected with its original bytes and source
    bad_sources = {r.source: label for label, r in published if not label.startswith("good")}
    found = rejected_records(rig, set(bad_sources))
    for source, label in bad_sources.items():
        value, hdrs = found[source]
        sent = next(b for b in bad if b[0] == label)
        assert hdrs["bl_reason"].decode() == sent[3] and hdrs["bl_stage"] == b"verify", (label, hdrs)
        assert (value or b"") == (sent[1] or b""), label
    with rig.ledger as led:
        stats = led.stats()
        n_published = len(published) + 1
        n_rejected = sum(stats["rejections"].values())
        assert (led.size - 1 - len(rig.chain.registry_events)) + n_rejected == n_published
        chain_ok(led)


def test_two_workers_share_the_partitions(rig: Rig) -> None:
    """Two workers split the work: the one holding material-events-verified (the sequencer) verifies
    nothing, the other verifies every raw partition (streams/assignor.py), and every event is appended."""
    workers = [rig.start_worker(), rig.start_worker()]
    verified_topic = rig.topics[MATERIAL_EVENTS_VERIFIED]
    raw_topic = rig.topics[MATERIAL_EVENTS]

    def roles() -> dict[int | None, tuple[bool, bool]]:
        group = members(rig.bootstrap, rig.settings.app_id)
        return {
            pid_of(m): (
                holds(m.get("member_assignment"), raw_topic),
                holds(m.get("member_assignment"), verified_topic),
            )
            for m in group
        }

    pids = {w.pid for w in workers}
    rig.wait_for(
        "both workers in the group, one verifying and one sequencing",
        lambda: set(roles()) == pids and sorted(roles().values()) == [(False, True), (True, False)],
    )
    rig.register()
    facs = [f for f in rig.chain.facilities.values() if "batch.extracted" in {r.value for r in f.roles}]
    events = [
        extraction(f.facility_id, f.key, f"TWO-{i}-{j}", j) for j in range(100) for i, f in enumerate(facs)
    ]
    rig.pub().publish_many(events)
    dec = rig.decided([decode(e).event_id for e in events])
    assert all(v[0] == "appended" for v in dec.values())
    with rig.ledger as led:
        chain_ok(led)


def test_cli_publish_signs_reports_decisions_and_status_shows_lag(rig: Rig) -> None:
    """`batteryledger publish FILE --key --facility`, `status --broker` and `topics create`, as documented."""
    import json as _json

    from typer.testing import CliRunner

    from batteryledger.cli_streams import publish, status, topics_create

    rig.start_worker()
    rig.register()
    runner = CliRunner()
    app = typer_app(publish, status, topics_create)
    suffix = rig.settings.topic_suffix
    common = ["--broker", rig.bootstrap, "--topic-suffix", suffix]

    res = runner.invoke(app, ["topics-create", *common, "--partitions", "2"])
    assert res.exit_code == 0, res.output
    assert "exists" in res.output  # idempotent on the fixture's topics

    fac = rig.chain.facilities["mine-cl-atacama"]
    key_file = rig.tmp / "atacama.key"
    save_private_key(fac.key, key_file)
    lines = [
        {
            "kind": "batch.extracted",
            "time": "2025-05-01T00:00:00Z",
            "outputs": [{"batch_id": "CLI-1", "material": "lithium_brine_concentrate", "kg": "10"}],
        },
        {
            "kind": "batch.extracted",
            "time": "2025-05-01T01:00:00Z",
            "outputs": [{"batch_id": "CLI-2", "material": "lithium_brine_concentrate", "kg": "20"}],
        },
        {
            "kind": "batch.processed",
            "time": "2025-05-01T02:00:00Z",
            "inputs": [{"batch_id": "CLI-1", "kg": "50"}],
            "outputs": [{"batch_id": "CLI-3", "material": "lithium_carbonate", "kg": "1"}],
        },
    ]
    events = rig.tmp / "events.jsonl"
    events.write_text("\n".join(_json.dumps(x) for x in lines) + "\n")
    res = runner.invoke(
        app,
        [
            "publish",
            str(events),
            *common,
            "--key",
            str(key_file),
            "--facility",
            fac.facility_id,
            "--store",
            rig.settings.store,
            "--sign-processes",
            "1",  # signed in a helper process (streams/signpool.py): the same events, the same decisions
        ],
    )
    assert res.exit_code == 3, res.output  # one of them was rejected
    assert "2 accepted" in res.output and "1 rejected" in res.output
    assert "overdrawn" in res.output

    res = runner.invoke(
        app, ["status", "--store", rig.settings.store, *common, "--app-id", rig.settings.app_id]
    )
    assert res.exit_code == 0, res.output
    assert "overdrawn" in res.output and "Consumer lag" in res.output

    res = runner.invoke(app, ["publish", str(events), *common, "--store", rig.settings.store])
    assert (
        res.exit_code == 2 and "give --key" in res.output
    )  # unsigned lines need a key: one line, no traceback


def typer_app(*commands: Any) -> Any:
    import typer

    app = typer.Typer()
    for cmd in commands:
        app.command(cmd.__name__.replace("_", "-"))(cmd)
    return app
