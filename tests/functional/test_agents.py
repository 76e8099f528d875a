"""The Faust agents through ``agent.test_context()`` (memory store, no broker).

The agents' outputs are captured by swapping the topics they send to for recorders (the agents look
their topics up in ``LedgerAgents.topics``); everything else is the real code: real keys, real signed
bytes, a real SQLite ledger. The broker paths are covered by tests/integration.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batteryledger.sample import DemoChain, demo_chain
from ledger.core import Ledger
from ledger.intake import H_HOP_MAC, H_REASON, H_STAGE, HopKey, unpack_verified
from schemas.cloudevents import to_binary
from schemas.signing import decode
from streams.agents import LedgerAgents, install_agents
from streams.app import create_app
from streams.settings import Settings
from streams.storeproc import StoreProcess


class Recorder:
    """Stands in for a faust Topic's `send`."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kwargs: Any) -> Any:
        self.sent.append(kwargs)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)  # the broker's acknowledgement
        return done


@pytest.fixture(scope="module")
def chain() -> DemoChain:
    return demo_chain()


@pytest.fixture(params=[True, False], ids=["store-process", "store-in-worker"])
def agents(tmp_path: Path, chain: DemoChain, request: pytest.FixtureRequest) -> Iterator[LedgerAgents]:
    store = f"sqlite:///{tmp_path}/ledger.db"
    led = Ledger.init(store, operator_key=chain.operator_key, origin="test/agents")
    led.append([e.raw for e in chain.registry_events])
    led.close()
    key = tmp_path / "worker.key"
    HopKey.generate().save(key)
    settings = Settings(
        broker="127.0.0.1:9",
        store=store,
        app_id="functional",
        data_dir=tmp_path / "faust",
        worker_key=key,
        store_process=request.param,
    )
    app = create_app(settings, install=False)
    state = install_agents(app, settings)
    app.finalize()
    app.flow_control.resume()
    state.topics = {name: Recorder() for name in ("verified", "rejected", "checkpoints")}
    state.direct_send = False
    yield state
    if isinstance(state.store, StoreProcess):
        state.store.close()
    if state.pool is not None:
        state.pool.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def until(done: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not done():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_verify_agent_routes_good_and_bad(agents: LedgerAgents, chain: DemoChain) -> None:
    good = to_binary(decode(chain.chain_events[0].raw))

    async def go() -> None:
        async with agents.agents["verify"].test_context() as agent:
            await agent.put(value=good.value, key=good.key, headers=good.headers)
            await agent.put(value=b"{broken", key=good.key, headers=good.headers)
            await agent.put(value=good.value, key=good.key, headers=[])  # no CloudEvents headers
            # the batch is sent by the agent's pipeline, after the puts return
            await until(lambda: len(agents.topics["rejected"].sent) == 2)

    run(go())
    verified: Recorder = agents.topics["verified"]
    rejected: Recorder = agents.topics["rejected"]
    # good + two verify-stage rejections, all for the store, in authenticated batch records
    items = [
        it
        for m in verified.sent
        for it in unpack_verified(
            m["headers"], m["value"], agents.hop_key, topic=agents.settings.verified_topic, position="v/0/0"
        )
    ]
    assert all(H_HOP_MAC in dict(m["headers"]) for m in verified.sent)
    assert len(items) == 3 and items[0].error is None and items[0].signature_checked
    assert (
        items[0].decoded is not None and items[0].decoded.signed == decode(chain.chain_events[0].raw).signed
    )
    reasons = [dict(m["headers"])[H_REASON] for m in rejected.sent]
    assert reasons == [b"malformed", b"missing_headers"]
    assert all(dict(m["headers"])[H_STAGE] == b"verify" for m in rejected.sent)
    assert rejected.sent[0]["value"] == b"{broken"  # the original bytes


def test_verify_agent_retries_a_refused_send_until_acked(agents: LedgerAgents, chain: DemoChain) -> None:
    """A record the broker refuses is sent again (the raw offsets wait): never acked past, never lost."""
    good = to_binary(decode(chain.chain_events[0].raw))

    class Flaky(Recorder):
        failed = 0

        async def send(self, **kwargs: Any) -> Any:
            if self.failed < 2:
                self.failed += 1
                raise RuntimeError("broker went away")
            return await super().send(**kwargs)

    agents.topics["verified"] = Flaky()

    @dataclasses.dataclass
    class Message:  # what the verify agent reads of a Faust message
        topic: str
        partition: int
        offset: int
        headers: Any
        value: bytes

    run(agents.on_raw_batch([Message("material-events", 0, 0, good.headers, good.value)]))
    sent = agents.topics["verified"].sent
    assert len(sent) == 1 and agents.counters.send_retries == 2
    assert agents.counters.verified == 1 and agents.counters.internal_errors == 0


def test_sequencer_batch_appends_and_routes_its_rejections(agents: LedgerAgents, chain: DemoChain) -> None:
    """The sequencer's batch handler (what the agent calls for each `take_events` batch)."""
    from ledger.intake import VerifiedRecord, pack_verified, verify_message

    # a good extraction, then an event of an unregistered facility (the sequencer rejects it)
    events = [chain.chain_events[0].raw, chain.bad_events[2][1]]
    recs = []
    for i, raw in enumerate(events):
        msg = to_binary(decode(raw))
        inc = verify_message(msg.headers, msg.value, agents.registry, source=f"material-events/0/{i}")
        [(h, v)] = pack_verified([inc], agents.hop_key, "material-events-verified")
        recs.append(VerifiedRecord("material-events-verified", 0, i, h, v))
    run(agents.on_verified_batch(recs))
    assert agents.counters.appended == 1
    rejected: Recorder = agents.topics["rejected"]
    # the unregistered facility's event first waits for a registration that may be on its way...
    assert rejected.sent == []
    # ...and is rejected with its reason once the wait is over (the expiry timer's handler)
    agents.settings = dataclasses.replace(agents.settings, park_max_age_s=0.0)
    agents.owns_sequencer = lambda: True  # type: ignore[method-assign]  # no consumer in a test context
    run(agents.expire_parked())
    assert [dict(m["headers"])[H_REASON] for m in rejected.sent] == [b"unknown_facility"]
    assert dict(rejected.sent[0]["headers"])[H_STAGE] == b"sequence"
    # the same batch again (a restart before Kafka's commit): skipped by the stored offset
    run(agents.on_verified_batch(recs))
    assert agents.counters.skipped == 2 and agents.counters.appended == 1
    with Ledger(agents.settings.store) as led:
        assert led.stats()["rejections"] == {"unknown_facility": 1}
        assert led.stored_offsets("functional") == {("material-events-verified", 0): 2}
