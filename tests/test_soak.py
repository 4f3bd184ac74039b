"""`recallstream soak`, shortened to 6,000 clicks in two passes of 3,000 with one fault of
each kind, on a private broker of its own (so that it can restart it): every produced
click is applied exactly once in the model's lineage, every poison record is
dead-lettered, each fault happened, and the worker reset to the snapshot."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

CLICKS = 4000
SHORT = ["--clicks", str(CLICKS), "--pass-clicks", str(CLICKS // 2), "--rate", "2000", "--kill-joiner", "1",
         "--kill-worker", "1", "--restart-broker", "1", "--qdrant-outage", "1", "--outage-s", "5",
         "--snapshots", "1", "--idle-s", "3", "--seed", "7"]


def test_a_short_soak_loses_nothing_applies_nothing_twice_and_dead_letters_all_poison():
    # no KAFKA_BOOTSTRAP_SERVERS: the soak starts (and restarts) a broker of its own
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    done = subprocess.run([sys.executable, "-m", "recallstream.consumers.cli", "soak", "--json",
                           "--no-progress", *SHORT], capture_output=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    figures = orjson.loads(done.stdout)
    assert figures["clicks_produced"] == CLICKS and figures["passes"] == 2
    assert figures["clicks_applied"] == figures["clicks_produced"]
    assert (figures["lost"], figures["duplicates_applied"], figures["unexpected"]) == (0, 0, 0)
    assert figures["poison_injected"] > 0
    assert figures["dead_lettered"] == figures["poison_injected"]
    assert figures["faults"] == {"kill_joiner": 1, "kill_worker": 1, "restart_broker": 1,
                                 "qdrant_outage": 1, "snapshot": 1}
    assert figures["resets"] >= 1 and figures["snapshot_version"] == 1
    # the lineage: the snapshot's examples before its cut, the worker's clicks after it
    assert figures["snapshot_examples"] + figures["clicks_since_snapshot"] == CLICKS
    assert 0 < figures["snapshot_examples"] < CLICKS
    assert figures["broker"].startswith("private")
    assert b"soak: starting a private Kafka broker" in done.stderr


def test_a_soak_with_an_external_broker_says_it_skips_broker_restarts(kafka_settings):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers}
    done = subprocess.run([sys.executable, "-m", "recallstream.consumers.cli", "soak", "--json",
                           "--no-progress", "--clicks", "500", "--rate", "2000", "--kill-joiner",
                           "0", "--kill-worker", "1", "--restart-broker", "1", "--qdrant-outage",
                           "0", "--snapshots", "0", "--idle-s", "2"],
                          capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    figures = orjson.loads(done.stdout)
    assert b"skipping the broker restarts" in done.stderr
    assert figures["faults"]["restart_broker"] == 0 and figures["faults"]["kill_worker"] == 1
    assert figures["broker"].startswith("external")
    assert (figures["clicks_applied"], figures["lost"], figures["duplicates_applied"]) == (500, 0, 0)


def test_bad_soak_arguments_are_refused_before_any_broker_starts(capsys):
    from recallstream.consumers.cli import main

    for argv, message in ((["--rate", "0"], "--rate must be positive"),
                          (["--poison-rate", "1.5"], "--poison-rate must be in [0, 1)"),
                          (["--kill-worker", "-1"], "fault counts must be >= 0")):
        assert main(["soak", *argv]) == 2
        out, err = capsys.readouterr()
        assert out == "" and message in err and "starting a private Kafka broker" not in err
