"""The local broker's life cycle (recallstream.consumers.local_kafka, `recallstream broker`) and its addressing."""

from __future__ import annotations

import os
import socket

import pytest

from recallstream.consumers.cli import main
from recallstream.consumers.local_kafka import BrokerError, LocalBroker, fetch_jars, free_port, server_properties
from recallstream.streaming.kafka_io import create_topics, wait_for_broker
from recallstream.streaming.settings import Settings


@pytest.fixture(scope="module")
def jars_dir():
    return fetch_jars(Settings.resolve().kafka_cache_dir)


def broker_flags(broker: LocalBroker) -> list[str]:
    return ["--port", str(broker.port), "--data-dir", str(broker.data_dir)]


def test_bootstrap_servers_come_from_the_environment_before_the_broker_port():
    assert Settings.resolve(environ={}).bootstrap_servers == "127.0.0.1:9092"
    assert Settings.resolve(environ={"RECALLSTREAM_BROKER_PORT": "9300"}).bootstrap_servers \
        == "127.0.0.1:9300"
    both = {"RECALLSTREAM_BROKER_PORT": "9300", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}
    assert Settings.resolve(environ=both).bootstrap_servers == "kafka:9092"
    assert Settings.resolve(flags={"bootstrap_servers": "h:1"}, environ=both).bootstrap_servers == "h:1"


def test_server_properties_are_one_node_kraft_on_the_given_ports(tmp_path):
    lines = server_properties(tmp_path, port=9400, controller_port=9401).splitlines()
    props = dict(line.split("=", 1) for line in lines)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9400,CONTROLLER://127.0.0.1:9401"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9400"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9401"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == str(tmp_path / "kafka-logs")
    assert len(lines) == len(props)  # no key twice


def test_a_pid_file_naming_another_process_is_not_a_running_broker(tmp_path, jars_dir):
    broker = LocalBroker(tmp_path, free_port(), jars_dir)
    broker.pid_path.write_text(f"{os.getpid()}\n")  # alive, but not a broker of this folder
    assert broker.running_pid() is None
    assert broker.stop() is False
    assert not broker.pid_path.exists()


def test_start_refuses_a_port_taken_by_another_process(tmp_path, jars_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = LocalBroker(tmp_path, taken.getsockname()[1], jars_dir)
        with pytest.raises(BrokerError, match="already in use"):
            broker.start()
    assert broker.running_pid() is None


def test_broker_starts_answers_restarts_with_its_data_and_stops(tmp_path, jars_dir):
    broker = LocalBroker(tmp_path / "kafka", free_port(), jars_dir)
    flags = broker_flags(broker)
    assert main(["broker", "status", *flags]) == 1
    try:
        assert main(["broker", "start", *flags]) == 0
        pid = broker.running_pid()
        assert pid is not None and broker.pid_path.read_text().strip() == str(pid)
        assert main(["broker", "status", *flags]) == 0
        assert broker.start() is False  # already running: left alone
        assert broker.running_pid() == pid
        assert (broker.data_dir / "server.log").stat().st_size > 0
        create_topics(broker.settings, partitions=1)

        assert main(["broker", "stop", *flags]) == 0
        assert broker.running_pid() is None and not _alive(pid)
        assert not wait_for_broker(broker.settings, timeout_s=1)
        assert main(["broker", "status", *flags]) == 1

        assert broker.start() is True  # same folder: storage already formatted, topics kept
        assert create_topics(broker.settings, partitions=1) == []
    finally:
        broker.stop()
    assert broker.running_pid() is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
