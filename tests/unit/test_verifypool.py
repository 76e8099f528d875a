"""streams.verifypool: the verify stage in helper processes (real spawned processes, real keys and store).

A helper must give exactly what the worker's own process gives (byte-equal records: the MAC is
deterministic), keep its registry copy fresh, and neither lose a batch nor outlive its worker when a
process dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from batteryledger.sample import DemoChain, demo_chain
from ledger.core import Ledger
from ledger.intake import H_REASON, H_STAGE, HopKey, unpack_verified, verify_message
from schemas.cloudevents import to_binary
from schemas.signing import decode
from streams.verifypool import (
    MAX_REJECTED_VALUE_BYTES,
    CheckedBatch,
    RawMessage,
    VerifyPool,
    check_batch,
    rejection_record,
)

TOPIC = "material-events-verified"
KEY = HopKey.generate()


@pytest.fixture(scope="module")
def chain() -> DemoChain:
    return demo_chain()


def make_store(path: Path, chain: DemoChain, *, skip: str | None = None) -> str:
    """A store with the demo registry (all but the registration of facility `skip`)."""
    store = f"sqlite:///{path}"
    led = Ledger.init(store, operator_key=chain.operator_key, origin="test/verifypool")
    led.append([e.raw for e in chain.registry_events if skip is None or registers(e.raw) != skip])
    led.close()
    return store


def registers(raw: bytes) -> str:
    return str(json.loads(raw)["subject_facility_id"])


def messages(chain: DemoChain) -> list[RawMessage]:
    """Good events, the hostile ones, and one without CloudEvents headers: (headers, value, source)."""
    out: list[RawMessage] = []
    for i, ev in enumerate(chain.chain_events[:12]):
        m = to_binary(decode(ev.raw))
        out.append((m.headers, m.value, f"material-events/0/{i}"))
    for j, (_label, raw, _reason) in enumerate(chain.bad_events):
        try:
            m = to_binary(decode(raw))
            out.append((m.headers, m.value, f"material-events/1/{j}"))
        except Exception:  # the malformed one cannot be wrapped: it arrives as it is
            out.append(([("ce_specversion", b"1.0")], raw, f"material-events/1/{j}"))
    good = to_binary(decode(chain.chain_events[0].raw))
    out.append(([], good.value, "material-events/1/99"))
    return out


def items(checked: CheckedBatch) -> list[Any]:
    return [
        it
        for headers, value in checked.records
        for it in unpack_verified(headers, value, KEY, topic=TOPIC, position="v/0/0")
    ]


def wait_ready(pool: VerifyPool, timeout: float = 60.0) -> None:
    pool.start()
    deadline = time.monotonic() + timeout
    while not pool.ready:
        assert time.monotonic() < deadline, "verify helpers did not start"
        time.sleep(0.05)


@contextmanager
def helper_pool(
    store: str, size: int = 1, refresh_s: float = 5.0, *, ready: bool = True
) -> Iterator[VerifyPool]:
    """A VerifyPool on `store`, started and waited for unless `ready` is False; closed afterwards."""
    pool = VerifyPool(size, store, KEY, TOPIC, refresh_s=refresh_s)
    try:
        if ready:
            wait_ready(pool)
        yield pool
    finally:
        pool.close()


def wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"processes {pids} still alive after {timeout} s"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


# ------------------------------------------------------------------------------------ check_batch


def test_check_batch_is_verify_message_packed(tmp_path: Path, chain: DemoChain) -> None:
    with Ledger(make_store(tmp_path / "l.db", chain)) as led:
        msgs = messages(chain)
        checked = check_batch(msgs, led.registry, KEY, TOPIC, keep_outcomes=True)
        direct = [verify_message(h, v, led.registry, source=s) for h, v, s in msgs]
    got = items(checked)
    assert [it.source for it in got] == [s for _, _, s in msgs]  # every message, in order
    assert [it.error.reason.value if it.error else None for it in got] == [
        it.error.reason.value if it.error else None for it in direct
    ]
    assert checked.verified == sum(1 for it in direct if it.error is None)
    # the plants' feed: one record per verify-stage rejection, its original bytes, its reason
    rejected = [it for it in direct if it.error is not None]
    assert len(checked.rejections) == len(rejected) >= 3
    for (value, headers), it in zip(checked.rejections, rejected, strict=True):
        assert value == it.raw
        assert dict(headers)[H_REASON] == it.error.reason.value.encode()
        assert dict(headers)[H_STAGE] == b"verify"
    assert {dict(h)[H_REASON] for _, h in checked.rejections} >= {b"bad_signature", b"malformed"}
    assert len(checked.outcomes) == len(msgs)


def test_check_batch_calls_on_unknown_for_an_unknown_key(tmp_path: Path, chain: DemoChain) -> None:
    first = decode(chain.chain_events[0].raw)
    with Ledger(make_store(tmp_path / "l.db", chain, skip=first.facility_id)) as led:
        calls: list[int] = []
        m = to_binary(first)
        checked = check_batch(
            [(m.headers, m.value, "material-events/0/0")],
            led.registry,
            KEY,
            TOPIC,
            on_unknown=lambda: calls.append(1),
        )
    [it] = items(checked)
    assert calls == [1] and it.error is None and not it.signature_checked  # the sequencer decides


def test_rejection_record_cuts_a_huge_original_and_says_so() -> None:
    raw = b"x" * (MAX_REJECTED_VALUE_BYTES + 10)
    value, headers = rejection_record(raw, [(H_REASON, b"oversized")])
    assert value == raw[:MAX_REJECTED_VALUE_BYTES]
    assert dict(headers)["bl_truncated"] == str(len(raw)).encode()
    assert rejection_record(b"small", []) == (b"small", [])


# ------------------------------------------------------------------------------------ helpers


def test_helper_gives_what_the_worker_gives(tmp_path: Path, chain: DemoChain) -> None:
    store = make_store(tmp_path / "l.db", chain)
    msgs = messages(chain)
    with Ledger(store) as led:
        here = check_batch(msgs, led.registry, KEY, TOPIC)
    with helper_pool(store, ready=False) as pool:
        assert run(pool.check(msgs)) is None  # not started yet: the worker checks it itself
        wait_ready(pool)
        there = run(pool.check(msgs))
        assert there is not None
        assert there.records == here.records  # byte for byte, MAC included
        assert there.rejections == here.rejections and there.verified == here.verified
        assert there.outcomes == []  # decoded events stay in the helper
        assert pool.pids() and os.getpid() not in pool.pids()


def test_two_helpers_keep_the_order(tmp_path: Path, chain: DemoChain) -> None:
    store = make_store(tmp_path / "l.db", chain)
    msgs = messages(chain)
    with helper_pool(store, size=2) as pool:
        checked = run(pool.check(msgs))
        assert checked is not None and len(checked.records) == 2  # one record per helper's part
        assert [it.source for it in items(checked)] == [s for _, _, s in msgs]
        assert len(pool.pids()) == 2


def test_helper_reads_a_registration_made_after_it_started(tmp_path: Path, chain: DemoChain) -> None:
    first = decode(chain.chain_events[0].raw)
    store = make_store(tmp_path / "l.db", chain, skip=first.facility_id)
    m = to_binary(first)
    msg = [(m.headers, m.value, "material-events/0/0")]
    with helper_pool(store, refresh_s=0.0) as pool:
        before = run(pool.check(msg))
        assert before is not None and not items(before)[0].signature_checked
        registration = next(e for e in chain.registry_events if registers(e.raw) == first.facility_id)
        with Ledger(store) as led:
            assert led.append([registration.raw])[0].status == "appended"
        after = run(pool.check(msg))
        assert after is not None and items(after)[0].signature_checked


def test_a_killed_helper_costs_no_batch(tmp_path: Path, chain: DemoChain) -> None:
    store = make_store(tmp_path / "l.db", chain)
    msgs = messages(chain)
    with helper_pool(store) as pool:
        [old] = pool.pids()
        os.kill(old, signal.SIGKILL)
        wait_gone([old], timeout=20)
        # the batch during which the pool broke comes back to the worker (None), a new pool starts
        assert run(pool.check(msgs)) is None
        assert pool.restarts == 1
        wait_ready(pool)
        again = run(pool.check(msgs))
        assert again is not None and again.verified > 0
        assert pool.pids() and old not in pool.pids()


def assert_helpers_die_with_their_worker(tmp_path: Path, main: str) -> None:
    """Run `main` (the body of a worker-like script's ``__main__`` block, which starts helper processes
    and prints their pids) in a process of its own, SIGKILL that process, and wait for the helpers to go."""
    script = "import asyncio, time\nfrom pathlib import Path\nfrom ledger.intake import HopKey\n"
    script += 'if __name__ == "__main__":\n' + textwrap.indent(textwrap.dedent(main), "    ")
    script += "    time.sleep(600)\n"
    (tmp_path / "worker_like.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "worker_like.py")], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        helpers = [int(p) for p in line.split()]
        assert helpers and all(alive(p) for p in helpers)
        proc.kill()  # SIGKILL: the worker runs no clean-up
        proc.wait()
        wait_gone(helpers, timeout=10)  # they outlived their worker if this fails
    finally:
        proc.kill()


def saved_hop_key(tmp_path: Path) -> Path:
    """The tests' worker key in a file, for a worker-like script to load."""
    key = tmp_path / "worker.key"
    KEY.save(key)
    return key


def test_a_helper_does_not_outlive_its_worker(tmp_path: Path, chain: DemoChain) -> None:
    store = make_store(tmp_path / "l.db", chain)
    key = saved_hop_key(tmp_path)
    assert_helpers_die_with_their_worker(
        tmp_path,
        f"""
        from streams.verifypool import VerifyPool
        pool = VerifyPool(1, {store!r}, HopKey.load(Path({str(key)!r})), {TOPIC!r}, 5.0)
        pool.start()
        while not pool.ready:
            time.sleep(0.05)
        print(*pool.pids(), flush=True)
        """,
    )


def test_helpers_that_cannot_start_are_given_up(tmp_path: Path, chain: DemoChain) -> None:
    """A helper that cannot open the store: the worker checks every batch itself, after a few tries."""
    msgs = messages(chain)[:2]
    with helper_pool(f"sqlite:///{tmp_path}/missing/l.db", ready=False) as pool:
        deadline = time.monotonic() + 120
        while pool.enabled:
            assert time.monotonic() < deadline, "never gave up"
            assert run(pool.check(msgs)) is None
            time.sleep(0.2)
        assert pool.failed_starts == 3 and pool.restarts == 2
        assert run(pool.check(msgs)) is None and pool.pids() == []
