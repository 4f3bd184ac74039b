"""RecordAligner: the released groups depend on the logs only, never on how fetches interleave."""

import random
from collections import namedtuple

import pytest
from hypothesis import given, settings, strategies as st

from recallstream.streaming.alignment import RecordAligner

Record = namedtuple("Record", "topic partition offset timestamp")


def make_logs(rng: random.Random, partitions: int, records: int) -> dict:
    logs = {}
    for p in range(partitions):
        ts = rng.randrange(0, 300)
        log = []
        for offset in range(rng.randrange(0, records)):
            ts += rng.choice([0, 0, 5, 40, 130])
            # now and then a record older than its predecessor (another producer's clock)
            log.append(Record("t", p, offset, ts - rng.choice([0] * 9 + [60])))
        logs[("t", p)] = log
    return logs


def run(logs: dict, rng: random.Random, window_ms: int = 100) -> list:
    """Feed the logs in random fetch chunks, the way poll() would, and collect the groups."""
    aligner = RecordAligner(window_ms)
    aligner.track(logs)
    fetched = {tp: 0 for tp in logs}
    groups = []
    while True:
        pending = [tp for tp in logs if fetched[tp] < len(logs[tp])]
        if pending:
            tp = rng.choice(pending)
            n = rng.randrange(1, 8)
            aligner.add({tp: logs[tp][fetched[tp]:fetched[tp] + n]})
            fetched[tp] = min(len(logs[tp]), fetched[tp] + n)
        groups += aligner.release(caught_up=lambda tp: fetched[tp] == len(logs[tp]))
        if not pending:
            assert aligner.buffered() == 0
            return [sorted((r.partition, r.offset) for rs in g.values() for r in rs) for g in groups]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 4))
def test_groups_do_not_depend_on_fetch_interleaving(seed, partitions):
    logs = make_logs(random.Random(seed), partitions, 40)
    first = run(logs, random.Random(seed + 1))
    second = run(logs, random.Random(seed + 2))
    assert first == second
    released = [rec for group in first for rec in group]
    # everything released exactly once, and each partition in offset order
    assert sorted(released) == sorted((r.partition, r.offset) for log in logs.values() for r in log)
    for p in range(partitions):
        offsets = [o for (q, o) in released if q == p]
        assert offsets == sorted(offsets)


def test_window_waits_for_a_partition_that_is_behind():
    aligner = RecordAligner(window_ms=100)
    aligner.track(["slow"])
    aligner.add({"fast": [Record("t", 0, 0, 50), Record("t", 0, 1, 250)]})
    assert aligner.release(caught_up=lambda tp: tp == "fast") == []   # "slow" may still hold ts < 100
    aligner.add({"slow": [Record("t", 1, 0, 60), Record("t", 1, 1, 120)]})
    groups = aligner.release(caught_up=lambda tp: False)
    # window [0,100): both partitions passed it; window [100,200): "fast" passed (250), "slow" did (120)? no: 120 < 200
    assert [{tp: [r.offset for r in rs] for tp, rs in g.items()} for g in groups] == [
        {"fast": [0], "slow": [0]}]


def test_restart_between_groups_continues_like_the_uninterrupted_run():
    logs = make_logs(random.Random(7), 3, 60)
    whole = run(logs, random.Random(1))
    cut = len(whole) // 2
    done = {(p, o) for group in whole[:cut] for (p, o) in group}
    # a restarted consumer seeks every partition past what the first groups released
    rest = {tp: [r for r in log if (r.partition, r.offset) not in done] for tp, log in logs.items()}
    assert run(rest, random.Random(99)) == whole[cut:]


def test_rejects_non_positive_window():
    with pytest.raises(ValueError, match="window_ms"):
        RecordAligner(0)


def test_release_in_bounded_steps_keeps_the_same_sequence():
    logs = make_logs(random.Random(11), 3, 80)
    whole = run(logs, random.Random(5))
    aligner = RecordAligner(100)
    aligner.track(logs)
    aligner.add(logs)
    stepped = []
    while True:
        groups = aligner.release(caught_up=lambda tp: True, max_records=10)
        if not groups:
            break
        assert sum(len(rs) for rs in groups[0].values()) >= 1
        stepped += [sorted((r.partition, r.offset) for rs in g.values() for r in rs) for g in groups]
    assert stepped == whole
