"""The joiner job against a real broker: exactly one example per valid click, through
SIGKILLs at random moments, restarts and a takeover by a second process of the group.

Input is a synthetic stream written while the joiners run: impressions of 4 exposures,
one click each (10% of impressions never show their exposures: those clicks are
orphans), some clicks and exposures delivered twice, and poison records. Each user
goes to partition ``user % 2`` of both topics; a last far-future exposure per
partition pushes the join's watermark past every click, so every click is decided.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest

from recallstream.streaming.dead_letters import parse_dead_letter
from recallstream.streaming.decoding import REASONS
from recallstream.streaming.events import Click, Exposure
from recallstream.streaming.example_joiner import parse_example
from recallstream.streaming.kafka_io import make_producer, read_topic

WINDOW_S = 60.0
PARTITIONS = 2
POISON = [b"{not json", b'{"event_id": "x", "ts": NaN}', b"[1, 2]",
          b'{"event_id": "p", "ts": "yesterday", "user_id": "1", "item_id": "1", "impression_id": "i"}']
JOINER_FLAGS = ("bootstrap_servers", "topic_exposures", "topic_clicks", "topic_dead_letters",
                "topic_examples", "topic_joiner_state", "consumer_group", "partitions",
                "join_window_s")


@dataclasses.dataclass
class Stream:
    """The records to produce, in order, and what the examples must be."""

    records: list[tuple[str, int, bytes, bytes]]  # (kind, partition, key, value)
    joined: dict[str, tuple[str, int]]  # click id -> (exposure id, position)
    orphans: set[str]
    poison: int


def make_stream(impressions: int, seed: int) -> Stream:
    rng = random.Random(seed)
    records, joined, orphans = [], {}, set()
    t = 1_700_000_000.0
    for n in range(impressions):
        t += rng.uniform(0.2, 2.0)
        user = rng.randrange(50)
        partition, key = user % PARTITIONS, str(user).encode()
        items = rng.sample(range(500), 4)
        shown = rng.random() >= 0.1
        exposures = [Exposure(f"e{n}-{k}", t, str(user), str(item), f"imp{n}", k, {"surface": "home"})
                     for k, item in enumerate(items)]
        if shown:
            records += [("exposures", partition, key, e.to_json()) for e in exposures]
            if rng.random() < 0.05:  # a duplicate delivery
                records.append(("exposures", partition, key, exposures[0].to_json()))
        k = rng.randrange(4)
        click = Click(f"c{n}", t + rng.uniform(0.5, 20.0), str(user), str(items[k]), f"imp{n}")
        records.append(("clicks", partition, key, click.to_json()))
        if rng.random() < 0.05:
            records.append(("clicks", partition, key, click.to_json()))
        if shown:
            joined[click.event_id] = (exposures[k].event_id, k)
        else:
            orphans.add(click.event_id)
        if n % 997 == 5:
            poison = POISON[(n // 997) % len(POISON)]
            records.append((rng.choice(["exposures", "clicks"]), partition, key, poison))
    for partition in range(PARTITIONS):  # past every click's window: all are decided
        flush = Exposure(f"flush-{partition}", t + 100 * WINDOW_S, str(partition), "0", "flush", 0)
        records.append(("exposures", partition, str(partition).encode(), flush.to_json()))
    poison = sum(1 for r in records if r[3] in POISON)
    return Stream(records, joined, orphans, poison)


def produce(settings, stream: Stream, seconds: float) -> None:
    """Produce the stream's records in order, spread over about ``seconds``."""
    topics = {"exposures": settings.topic_exposures, "clicks": settings.topic_clicks}
    producer = make_producer(settings)
    chunk = max(1, len(stream.records) // 40)
    for start in range(0, len(stream.records), chunk):
        for kind, partition, key, value in stream.records[start:start + chunk]:
            producer.send(topics[kind], key=key, value=value, partition=partition)
        producer.flush()
        time.sleep(seconds / 40)  # pacing the input, not waiting for a result
    producer.close()


def start_joiner(settings, instance: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "recallstream.consumers.cli", "joiner", "--instance", instance,
               "--max-poll-records", "150", "--snapshot-every", "3", "--session-timeout", "6",
               "--transaction-timeout", "5", "--json", *extra, *settings.flags(*JOINER_FLAGS)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def committed_examples(settings) -> list[dict]:
    return [parse_example(r.value) for r in read_topic(settings, settings.topic_examples,
                                                       read_committed=True)]


def wait_for(condition, timeout_s: float, what: str, *processes: subprocess.Popen):
    deadline = time.monotonic() + timeout_s
    while True:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"a joiner exited with status {process.returncode} while "
                                     f"waiting for {what}: {process.stderr.read().decode()[-3000:]}")
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> dict:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()[-3000:]
    return orjson.loads(out)


def assert_exactly_once(settings, stream: Stream, examples: list[dict]) -> None:
    ids = [e["event_id"] for e in examples]
    assert len(ids) == len(set(ids)), "an example was produced twice"
    assert set(ids) == set(stream.joined) | stream.orphans, "an example is missing or unexpected"
    for example in examples:
        if example["event_id"] in stream.orphans:
            assert example["exposure"] is None and example["joiner"]["orphan"]
        else:
            exposure_id, position = stream.joined[example["event_id"]]
            assert (example["exposure"]["event_id"], example["exposure"]["position"]) == (exposure_id, position)
            assert example["exposure"]["context"] == {"surface": "home"}
            assert example["joiner"]["lane"] == int(example["user_id"]) % PARTITIONS
    letters = [parse_dead_letter(r.value) for r in read_topic(settings, settings.topic_dead_letters,
                                                               read_committed=True)]
    keys = [(d["topic"], d["partition"], d["offset"]) for d in letters]
    assert len(keys) == len(set(keys)) == stream.poison  # dead letters exactly once too
    assert {d["reason"] for d in letters} <= set(REASONS)


@pytest.fixture
def joiner_settings(topic_settings):
    return dataclasses.replace(topic_settings, join_window_s=WINDOW_S)


def test_joiner_sigkilled_at_random_moments_yields_each_click_exactly_once(joiner_settings):
    settings = joiner_settings
    stream = make_stream(2500, seed=11)
    rng = random.Random(7)
    producer = threading.Thread(target=produce, args=(settings, stream, 6.0))
    producer.start()
    kills = 0
    while producer.is_alive() or kills < 4:
        joiner = start_joiner(settings, "a")
        time.sleep(rng.uniform(0.5, 2.5))  # a random moment: start-up, restore, or mid-transaction
        joiner.send_signal(signal.SIGKILL)
        joiner.wait(timeout=30)
        kills += 1
    producer.join()

    final = start_joiner(settings, "a")
    expected = len(stream.joined) + len(stream.orphans)
    wait_for(lambda: len(committed_examples(settings)) >= expected, 60, f"{expected} examples",
             final)
    report = stop(final)

    assert_exactly_once(settings, stream, committed_examples(settings))
    assert report["restores"] >= PARTITIONS and report["aborted"] == 0


def test_two_joiners_split_the_partitions_and_one_survives_the_other_killed(joiner_settings):
    settings = joiner_settings
    stream = make_stream(2500, seed=12)
    producer = threading.Thread(target=produce, args=(settings, stream, 5.0))
    producer.start()
    a = start_joiner(settings, "a")
    b = start_joiner(settings, "b")
    try:
        # Both own a partition: each has committed transactions to its lane's state log.
        wait_for(lambda: state_writers(settings) >= {"a", "b"}, 60, "both joiners to write", a, b)
        b.send_signal(signal.SIGKILL)
        b.wait(timeout=30)
        producer.join()
        expected = len(stream.joined) + len(stream.orphans)
        wait_for(lambda: len(committed_examples(settings)) >= expected, 75, f"{expected} examples",
                 a)
        report = stop(a)
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert_exactly_once(settings, stream, committed_examples(settings))
    assert report["lanes"] == [0, 1]  # the survivor took over the killed one's partition


def state_writers(settings) -> set[str]:
    return {orjson.loads(r.value)["instance"]
            for r in read_topic(settings, settings.topic_joiner_state, read_committed=True)}


def test_a_joiner_told_to_exit_when_idle_first_joins_its_group_and_reads_to_the_end(joiner_settings):
    # Joining the group and restoring the lanes take longer than this idle limit: they
    # must not count as idle (a busy CI machine once made a 2 s limit exit with nothing).
    from recallstream.streaming.example_joiner import ExampleJoiner, JoinerOptions

    settings = joiner_settings
    stream = make_stream(300, seed=13)
    produce(settings, stream, 0.0)
    expected = len(stream.joined) + len(stream.orphans)

    def join(instance: str) -> dict:
        options = JoinerOptions(instance=instance, exit_when_idle_s=0.01, session_timeout_s=6.0)
        return ExampleJoiner(settings, options).run()

    first = join("a")
    assert first["examples"] == expected and first["lanes"] == [0, 1]
    again = join("b")  # the same group, everything joined: it exits, joining nothing twice
    assert again["examples"] == 0 and again["restores"] == PARTITIONS
    assert_exactly_once(settings, stream, committed_examples(settings))
