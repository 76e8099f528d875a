"""Cluster sizing rules: what `broker start --nodes` and `topics create` pick, and what they refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from batteryledger.cli import app
from streams.localbroker import BROKER_SETTINGS, CLUSTER_SETTINGS, BrokerError, broker_config, node_settings
from streams.topics import TopicConfigError, replication_for


@pytest.mark.parametrize(("brokers", "rf", "isr"), [(1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2)])
def test_replication_follows_the_cluster_size(brokers: int, rf: int, isr: int) -> None:
    r = replication_for(brokers)
    assert (r.replication_factor, r.min_insync_replicas) == (rf, isr)
    assert r.config == {"min.insync.replicas": str(isr), "unclean.leader.election.enable": "false"}
    assert f"replication factor {rf}, min.insync.replicas {isr}" in r.describe()


def test_replication_refuses_an_empty_cluster() -> None:
    with pytest.raises(TopicConfigError):
        replication_for(0)


def test_one_node_keeps_the_demo_settings_and_three_get_the_cluster_ones() -> None:
    assert node_settings(1) == BROKER_SETTINGS
    three = node_settings(3)
    assert three["min.insync.replicas"] == "2" and three["default.replication.factor"] == "3"
    assert three["unclean.leader.election.enable"] == "false"
    assert {k: three[k] for k in CLUSTER_SETTINGS} == CLUSTER_SETTINGS


@pytest.mark.parametrize("nodes", [0, 2, 10])
def test_unusable_cluster_sizes_are_refused_with_the_sizes_that_work(nodes: int) -> None:
    with pytest.raises(BrokerError, match="use 1"):
        node_settings(nodes)


def test_cluster_node_config_names_itself_and_every_voter(tmp_path: Path) -> None:
    voters = "1@127.0.0.1:9001,2@127.0.0.1:9002,3@127.0.0.1:9003"
    cfg = broker_config(
        port=9101, controller_port=9002, log_dir=tmp_path, node_id=2, voters=voters, settings=node_settings(3)
    )
    assert cfg["node.id"] == "2" and cfg["controller.quorum.voters"] == voters
    assert cfg["listeners"] == "PLAINTEXT://127.0.0.1:9101,CONTROLLER://127.0.0.1:9002"


def test_broker_start_with_two_nodes_is_one_line_and_exit_1(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["broker", "start", "--nodes", "2", "--state-dir", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.strip().startswith("error: --nodes 2 is not a usable cluster size")
    assert res.output.strip().count("\n") == 0
