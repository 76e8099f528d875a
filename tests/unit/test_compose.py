"""docker-compose.yml is a valid Compose file and agrees with the code it deploys.

Valid: checked against the Compose specification's JSON Schema (tests/assets/compose-spec.json, copied
from compose-spec/compose-spec). Agrees: the Kafka image is the version streams/broker/pom.xml pins,
the broker settings are LocalBroker's, the topics are streams/topics.py's, and every `batteryledger`
command and flag in it exists in the CLI.
"""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.localbroker import BROKER_SETTINGS, KAFKA_VERSION, POM_PATH, node_settings
from streams.topics import (
    ALL_TOPICS,
    DEFAULT_PARTITIONS,
    LEDGER_CHECKPOINTS,
    MATERIAL_EVENTS,
    MATERIAL_EVENTS_REJECTED,
    MATERIAL_EVENTS_VERIFIED,
    PARTITIONS_ENV,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "assets" / "compose-spec.json"
STORE_URL = "postgresql+psycopg://batteryledger:batteryledger@postgres:5432/batteryledger"
CLUSTER_STORE_URL = STORE_URL.replace("@postgres:", "@postgres-cluster:")
CLUSTER_BROKERS = "kafka-1:9092,kafka-2:9092,kafka-3:9092"
CLUSTER_SERVICES = (
    "kafka-1",
    "kafka-2",
    "kafka-3",
    "postgres-cluster",
    "acls",
    "topics-cluster",
    "worker-1",
    "worker-2",
    "api-cluster",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    single = {"kafka", "postgres", "topics", "worker-key", "worker", "api-auth", "api"}
    assert {name for name, svc in found.items() if not svc.get("profiles")} == single
    assert set(found) - single == set(CLUSTER_SERVICES)
    assert all(found[name]["profiles"] == ["cluster"] for name in CLUSTER_SERVICES)
    return found


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    import jsonschema  # a dev dependency (pyproject.toml)

    schema = json.loads(SCHEMA_FILE.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    # The one rule the schema keeps in definitions/constraints, where validators do not apply it.
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def test_kafka_image_is_the_version_the_pom_pins(services: dict[str, dict[str, Any]]) -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom_version = ET.parse(POM_PATH).getroot().findtext("m:properties/m:kafka.version", namespaces=ns)
    assert pom_version == KAFKA_VERSION
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_kafka_settings_match_the_local_broker(services: dict[str, dict[str, Any]]) -> None:
    env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    for key, value in BROKER_SETTINGS.items():
        # apache/kafka maps KAFKA_FOO_BAR to foo.bar (a literal underscore would need '__').
        assert "_" not in key
        variable = "KAFKA_" + key.upper().replace(".", "_")
        assert env.get(variable) == value, f"{variable} should be {value!r} like server.properties"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert re.fullmatch(r"[A-Za-z0-9_-]{21}[AQgw]", env["CLUSTER_ID"]), "CLUSTER_ID must be a Kafka Uuid"


def test_topic_layout_matches_streams_topics(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    documented = {name: spec["partitions"] for name, spec in compose["x-topics"].items()}
    assert documented == {t.name: t.partitions for t in ALL_TOPICS(DEFAULT_PARTITIONS)}
    for name in ("topics", "worker", "api"):
        assert services[name]["environment"][PARTITIONS_ENV] == f"${{{PARTITIONS_ENV}:-{DEFAULT_PARTITIONS}}}"


def test_services_start_in_order(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka"]["healthcheck"]["test"]
    assert services["postgres"]["healthcheck"]["test"]
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "topics": {"condition": "service_completed_successfully"},
        "worker-key": {"condition": "service_completed_successfully"},
    }
    # the verified hop's worker key is provisioned once and given to the worker (docs/contract.md)
    assert services["worker"]["environment"]["BATTERYLEDGER_WORKER_KEY"] == "/keys/worker.key"
    assert services["worker-key"]["command"] == "batteryledger keys worker /keys/worker.key --if-missing"
    assert services["api"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_published_ports_bind_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published
    assert all(str(port).startswith("127.0.0.1:") for port in published), published


def _cli_command(words: list[str]) -> Any:
    """The click command `batteryledger <words...>` resolves to (fails naming the missing word)."""
    import typer

    from batteryledger.cli import app

    command: Any = typer.main.get_command(app)
    for depth, word in enumerate(words):
        children = getattr(command, "commands", {})
        if word not in children:
            pytest.fail(
                f"docker-compose.yml runs `batteryledger {' '.join(words[: depth + 1])}`, "
                "which the CLI does not have"
            )
        command = children[word]
    return command


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("topics-cluster", f"batteryledger topics create --broker {CLUSTER_BROKERS}"),
        ("worker-1", f"batteryledger worker --broker {CLUSTER_BROKERS} --store {CLUSTER_STORE_URL}"),
        ("worker-2", f"batteryledger worker --broker {CLUSTER_BROKERS} --store {CLUSTER_STORE_URL}"),
        (
            "api-cluster",
            f"batteryledger serve --host 0.0.0.0 --port 8000 --auth /auth/auth.json --store {CLUSTER_STORE_URL}",
        ),
        ("topics", "batteryledger topics create --broker kafka:9092"),
        ("worker", f"batteryledger worker --broker kafka:9092 --store {STORE_URL}"),
        ("api", f"batteryledger serve --host 0.0.0.0 --port 8000 --auth /auth/auth.json --store {STORE_URL}"),
        ("api-auth", "batteryledger auth init --file /auth/auth.json --key /auth/api-token.key --if-missing"),
    ],
)
def test_commands_use_real_cli_flags(
    services: dict[str, dict[str, Any]], service: str, expected: str
) -> None:
    command = services[service]["command"]
    assert shlex.split(command) == shlex.split(expected)
    argv = shlex.split(command)[1:]
    words = argv[: next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))]
    cli = _cli_command(words)
    options = {
        opt
        for param in cli.params
        if getattr(param, "param_type_name", "") == "option"
        for opt in (*param.opts, *param.secondary_opts)
    }
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    missing = [f for f in flags if f not in options]
    assert not missing, f"`batteryledger {' '.join(words)}` has no option {missing}; it has {sorted(options)}"


def test_store_url_matches_the_postgres_service(services: dict[str, dict[str, Any]]) -> None:
    env = services["postgres"]["environment"]
    user, password, db = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    assert f"postgresql+psycopg://{user}:{password}@postgres:5432/{db}" == STORE_URL


def test_dockerfile_installs_the_package_on_python_311() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert "pip install ." in dockerfile


# ------------------------------------------------------------------------------- profile `cluster`


@pytest.mark.parametrize("node", [1, 2, 3])
def test_cluster_nodes_match_local_cluster_settings(services: dict[str, dict[str, Any]], node: int) -> None:
    env = {k: str(v) for k, v in services[f"kafka-{node}"]["environment"].items()}
    assert services[f"kafka-{node}"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    for key, value in node_settings(3).items():
        variable = "KAFKA_" + key.upper().replace(".", "_")
        want = str(node) if key == "node.id" else value
        assert env.get(variable) == want, f"kafka-{node}: {variable} should be {want!r} like LocalCluster"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka-{node}:9092"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert len({services[f"kafka-{n}"]["environment"]["CLUSTER_ID"] for n in (1, 2, 3)}) == 1


def _ip(service: dict[str, Any]) -> str:
    return str(service["networks"]["ledger-cluster"]["ipv4_address"])


def test_acls_let_only_the_workers_write_the_internal_topics(services: dict[str, dict[str, Any]]) -> None:
    script = " ".join(services["acls"]["command"])
    loop = re.search(r"for t in ([^;]+); do", script)
    assert loop, script
    internal = {MATERIAL_EVENTS_VERIFIED, MATERIAL_EVENTS_REJECTED, LEDGER_CHECKPOINTS}
    assert set(loop.group(1).split()) == internal
    assert MATERIAL_EVENTS not in loop.group(1).split()  # plants write raw events: no ACL, open
    rules = [shlex.split(part) for part in script.split(";") if "kafka-acls.sh" in part]
    writers = {
        h
        for rule in rules
        if "Write" in rule
        for i, h in enumerate(rule)
        if i and rule[i - 1] == "--allow-host"
    }
    assert writers == {_ip(services["worker-1"]), _ip(services["worker-2"])}
    creators = {
        h
        for rule in rules
        if "Create" in rule
        for i, h in enumerate(rule)
        if i and rule[i - 1] == "--allow-host"
    }
    assert creators == {_ip(services["topics-cluster"])}
    readers = [rule for rule in rules if "Read" in rule]
    assert readers and all("Write" not in r and "*" in r for r in readers)
    for node in (1, 2, 3):
        env = services[f"kafka-{node}"]["environment"]
        # resources without ACLs (the cluster, material-events, groups) stay open to everyone
        assert str(env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"]) == "true"
    assert services["topics-cluster"]["depends_on"] == {
        "acls": {"condition": "service_completed_successfully"}
    }
