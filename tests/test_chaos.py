"""The soak's seeded chaos schedule, poison and accounting (no broker)."""

from __future__ import annotations

import pytest

from recallstream.consumers.chaos import FAULT_KINDS, WINDOW, ChaosSchedule, Fault
from recallstream.consumers.poison import POISON_VALUES, PoisonMaker
from recallstream.consumers.soak_audit import Lineage, account
from recallstream.consumers.soak_feed import soak_passes
from recallstream.streaming.decoding import Invalid, decode
from recallstream.streaming.settings import Settings

COUNTS = {"kill_joiner": 3, "kill_worker": 3, "restart_broker": 2, "qdrant_outage": 2, "snapshot": 1}


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    first = ChaosSchedule.plan(seed=11, duration_s=300.0, counts=COUNTS)
    assert first == ChaosSchedule.plan(seed=11, duration_s=300.0, counts=COUNTS)
    assert first != ChaosSchedule.plan(seed=12, duration_s=300.0, counts=COUNTS)


@pytest.mark.parametrize("seed", range(20))
def test_a_schedule_holds_the_faults_asked_for_in_time_order_inside_the_window(seed):
    schedule = ChaosSchedule.plan(seed=seed, duration_s=300.0, counts=COUNTS, outage_s=9.0)
    assert schedule.counts() == {kind: COUNTS.get(kind, 0) for kind in FAULT_KINDS}
    times = [f.at_s for f in schedule.faults]
    assert times == sorted(times)
    assert WINDOW[0] * 300.0 <= times[0] and times[-1] <= WINDOW[1] * 300.0
    # one slot each, started in its first half: at least half a slot between two faults
    width = (WINDOW[1] - WINDOW[0]) * 300.0 / len(times)
    assert all(b - a >= width / 2 - 1e-6 for a, b in zip(times, times[1:]))
    # snapshots early enough for the stream to cross event days after them
    assert all(f.at_s <= 300.0 * (WINDOW[0] + WINDOW[1]) / 2 for f in schedule.faults
               if f.kind == "snapshot")
    assert all(f.duration_s == (9.0 if f.kind == "qdrant_outage" else 0.0) for f in schedule.faults)
    assert not any(f.hard for f in schedule.faults if f.kind != "restart_broker")


def test_both_clean_and_hard_broker_restarts_occur_over_seeds():
    hard = {f.hard for seed in range(20) for f in
            ChaosSchedule.plan(seed, 100.0, {"restart_broker": 2}).faults}
    assert hard == {True, False}


def test_due_hands_out_each_fault_once_when_its_time_has_come():
    schedule = ChaosSchedule([Fault(1.0, "kill_worker"), Fault(2.0, "snapshot"),
                              Fault(5.0, "qdrant_outage", duration_s=3.0)])
    assert schedule.due(0.5) == []
    assert [f.kind for f in schedule.due(2.0)] == ["kill_worker", "snapshot"]
    assert schedule.due(4.9) == [] and len(schedule.pending()) == 1
    assert [f.kind for f in schedule.due(100.0)] == ["qdrant_outage"] and schedule.pending() == []


def test_a_schedule_refuses_unknown_kinds_negative_counts_and_no_duration():
    with pytest.raises(ValueError, match="unknown fault kind"):
        ChaosSchedule.plan(1, 10.0, {"unplug": 1})
    with pytest.raises(ValueError, match=">= 0"):
        ChaosSchedule.plan(1, 10.0, {"kill_worker": -1})
    with pytest.raises(ValueError, match="positive"):
        ChaosSchedule.plan(1, 0.0, {"kill_worker": 1})


def test_poison_is_seeded_near_its_rate_and_never_decodes():
    maker = PoisonMaker(seed=5, rate=0.01)
    made = [maker.maybe() for _ in range(20_000)]
    again = PoisonMaker(seed=5, rate=0.01)
    assert made == [again.maybe() for _ in range(20_000)]
    poison = [m for m in made if m is not None]
    assert 150 <= len(poison) <= 250
    assert {kind for kind, _, _ in poison} == set(POISON_VALUES)
    for topic in ("exposures", "clicks"):
        assert all(isinstance(decode(topic, key, value), Invalid) for _, key, value in poison)


def test_passes_have_fresh_event_ids_and_move_event_time_forward():
    from recallstream.streaming.movielens import load_movielens

    settings = Settings.resolve(environ={})
    plans = soak_passes(load_movielens("ml-100k"), clicks=2_500, pass_clicks=1_000, seed=3)
    assert [p.limit for p in plans] == [1_000, 1_000, 500]
    ids, spans = [], []
    for plan in plans:
        clicks = [value for topic, _, value in plan.event_records(settings) if topic == "clicks"]
        ids.append({c.split(b'"event_id":"')[1].split(b'"')[0] for c in clicks})
        times = plan.dataset.ratings["timestamp"][plan.order()]
        spans.append((int(times.min()), int(times.max())))
    assert [len(i) for i in ids] == [1_000, 1_000, 500]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])
    assert spans[0][1] < spans[1][0] and spans[1][1] < spans[2][0]
    assert (spans[1][0] - spans[0][0]) % 86_400 == 0  # shifted by whole days


LINEAGE = Lineage(snapshot_version=2, snapshot_examples=2, cut={0: 1, 1: 1},
                  clicks_since_snapshot=2, clicks_trained=4, resets=1)
EXAMPLES = [("a", 0, 0), ("b", 0, 1), ("c", 1, 0), ("d", 1, 1)]


def test_the_audit_finds_every_click_once_in_the_lineage():
    figures = account({"a", "b", "c", "d"}, EXAMPLES, LINEAGE)
    assert (figures["clicks_applied"], figures["duplicates_applied"], figures["lost"],
            figures["unexpected"], figures["examples_before_cut"]) == (4, 0, 0, 0, 2)


def test_the_audit_counts_duplicates_and_losses_on_either_side_of_the_cut():
    import dataclasses

    # an example written twice (the joiner's exactly-once broken)
    assert account({"a", "b", "c", "d"}, EXAMPLES + [("d", 1, 2)],
                   dataclasses.replace(LINEAGE, clicks_since_snapshot=3))["duplicates_applied"] == 1
    # the worker applied one click after the cut twice
    assert account({"a", "b", "c", "d"}, EXAMPLES,
                   dataclasses.replace(LINEAGE, clicks_since_snapshot=3))["duplicates_applied"] == 1
    # a click never joined, and an example before the cut missing from the snapshot
    lost = account({"a", "b", "c", "d", "e"}, EXAMPLES,
                   dataclasses.replace(LINEAGE, snapshot_examples=1))
    assert (lost["lost"], lost["duplicates_applied"]) == (2, 0)
    # an example of a click nobody produced
    assert account({"a", "b", "c"}, EXAMPLES, LINEAGE)["unexpected"] == 1


def test_without_a_snapshot_the_worker_alone_must_hold_every_click():
    alone = Lineage(None, 0, {}, clicks_since_snapshot=4, clicks_trained=4, resets=0)
    assert account({"a", "b", "c", "d"}, EXAMPLES, alone)["lost"] == 0
    short = Lineage(None, 0, {}, clicks_since_snapshot=3, clicks_trained=3, resets=0)
    assert account({"a", "b", "c", "d"}, EXAMPLES, short)["lost"] == 1
