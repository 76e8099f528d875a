"""Fixtures for tests against a real Apache Kafka broker (and, elsewhere in this folder, a real DB).

* ``local_broker`` (session): a :class:`~streams.localbroker.LocalBroker` in a temporary dir on free
  loopback ports, started once per test session and stopped at its end.
* ``kafka_bootstrap`` (session): its ``"127.0.0.1:<port>"`` bootstrap string.
* ``make_topics`` (function): factory ``make_topics(partitions=2) -> TopicNames`` that creates the
  ledger's standard topics (streams.topics.ALL_TOPICS) as ``<name>-<suffix>`` with a suffix unique to
  the call, so tests sharing the session broker never see each other's records. ``TopicNames`` maps
  logical name -> real name and carries ``.suffix``: give it to a worker as BATTERYLEDGER_TOPIC_SUFFIX.
* ``fresh_topics`` (function): ``make_topics()`` with the default partition count.

A broker that cannot be fetched or started FAILS the tests that need it, with the broker's (or
Maven's) log tail: integration tests never skip for a missing broker.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.localbroker import BrokerError, LocalBroker, create_topics
from streams.topics import ALL_TOPICS, DEFAULT_PARTITIONS

#: Seconds the session broker may take to answer after launch (about 5 s here; generous for slow CI).
BROKER_START_TIMEOUT_S = 120.0

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything in tests/integration is an integration test, marked or not."""
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start(timeout=BROKER_START_TIMEOUT_S)
    except BrokerError as exc:
        broker.stop()
        pytest.fail(f"the test Kafka broker could not be started:\n{exc.diagnostics()}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker) -> str:
    return local_broker.bootstrap


class TopicNames(dict[str, str]):
    """Logical topic name (streams.topics constant) -> the real, test-unique name."""

    def __init__(self, names: dict[str, str], suffix: str) -> None:
        super().__init__(names)
        self.suffix = suffix


MakeTopics = Callable[..., TopicNames]


@pytest.fixture
def make_topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> MakeTopics:
    """Factory: create the standard topics under test-unique names; returns logical -> real name."""
    test_slug = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-")[:40]

    def make(partitions: int = DEFAULT_PARTITIONS) -> TopicNames:
        suffix = f"{test_slug}-{uuid.uuid4().hex[:8]}"
        specs = ALL_TOPICS(partitions)
        real = {spec.name: f"{spec.name}-{suffix}" for spec in specs}
        try:
            create_topics(kafka_bootstrap, [spec.renamed(real[spec.name]) for spec in specs])
        except BrokerError as exc:
            pytest.fail(f"could not create test topics:\n{exc.diagnostics()}", pytrace=False)
        return TopicNames(real, suffix)

    return make


@pytest.fixture
def fresh_topics(make_topics: MakeTopics) -> TopicNames:
    return make_topics()
