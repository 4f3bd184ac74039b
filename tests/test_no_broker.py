"""Every command that needs Kafka says so in one line, with exit status 2, when no broker
answers (nothing listens on port 1), instead of a kafka-python traceback."""

import pytest

import recallstream.consumers.usage
from recallstream.consumers.cli import main

NO_BROKER = ["--bootstrap-servers", "127.0.0.1:1"]


@pytest.mark.parametrize("argv", [
    ["topics", "create"],
    ["inspect", "clicks"],
    ["replay", "--limit", "5"],
    ["worker", "--exit-when-idle", "1"],
    ["snapshot", "--no-progress"],
    ["bench", "replay", "--runs", "1"],
])
def test_commands_that_need_kafka_fail_clearly_without_a_broker(argv, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setattr(recallstream.consumers.usage, "BROKER_WAIT_S", 0.5)
    assert main([*argv, *NO_BROKER, "--checkpoint-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no Kafka broker answers at 127.0.0.1:1" in err and "recallstream broker start" in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # the worker gave up before creating its checkpoint
