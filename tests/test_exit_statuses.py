"""Command errors: one line on stderr, nothing on stdout, and the documented exit status
(``recallstream.consumers.usage.EXIT_STATUSES``: 1 failed, 2 bad arguments or no broker).
test_no_broker covers status 2 without a broker, test_worker_kafka the worker's 3."""

import uuid

import pytest

from recallstream.consumers.cli import main
from recallstream.consumers.local_kafka import free_port
from recallstream.streaming.kafka_io import admin_client, scratch_settings, topic_layout


def fails(capsys, status: int, argv: list[str]) -> str:
    """Run ``argv``; assert ``status`` and a one-line stderr with an empty stdout; return stderr."""
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, (out, err)
    return err


def test_inspect_of_a_topic_of_no_configured_kind_is_a_usage_error(capsys):
    err = fails(capsys, 2, ["inspect", "no-such-kind-of-topic"])
    assert err.startswith("recallstream inspect: error: ") and "pass --kind" in err


def test_inspect_of_a_missing_topic_is_a_usage_error(kafka_settings, capsys):
    err = fails(capsys, 2, ["inspect", "missing-topic", "--kind", "clicks",
                            *kafka_settings.flags("bootstrap_servers")])
    assert "'missing-topic' does not exist" in err


def test_topics_create_over_clicks_partitioned_otherwise_is_a_usage_error(kafka_settings, capsys):
    settings = scratch_settings(kafka_settings, f"exit-{uuid.uuid4().hex[:8]}", partitions=2)
    with admin_client(settings) as admin:
        admin.create_topics({settings.topic_clicks: {"num_partitions": 3}})
    try:
        err = fails(capsys, 2, ["topics", "create", *settings.flags(
            "bootstrap_servers", "partitions", "topic_exposures", "topic_clicks", "topic_items",
            "topic_users", "topic_dead_letters", "topic_examples", "topic_joiner_state")])
        assert "same count" in err
    finally:
        with admin_client(settings) as admin:
            admin.delete_topics(list(topic_layout(settings)), raise_errors=False)


def test_broker_status_without_a_broker_fails_on_stderr(tmp_path, capsys):
    err = fails(capsys, 1, ["broker", "status", "--port", str(free_port()),
                            "--data-dir", str(tmp_path)])
    assert "no broker answers on 127.0.0.1:" in err and "not running" in err


def test_checkpoint_inspect_without_a_checkpoint_fails_on_stderr(tmp_path, capsys):
    err = fails(capsys, 1, ["checkpoint", "inspect", "--checkpoint-dir", str(tmp_path)])
    assert f"no checkpoint in {tmp_path}" in err


@pytest.mark.parametrize("argv", [["--help"], ["topics", "create", "--help"],
                                  ["checkpoint", "inspect", "--help"]])
def test_help_ends_with_the_exit_statuses(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "exit status:" in out and "  2  bad arguments" in out and "  3  worker:" in out
