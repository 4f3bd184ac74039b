"""ClickJoiner: hand-computed cases, order independence, duplicates, bounds, checkpoints."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recallstream.streaming.events import Click, Exposure
from recallstream.streaming.joiner import ClickJoiner


def exposure(n: int, ts: float, item: str = "i", position: int | None = 0) -> Exposure:
    return Exposure(f"e{n}", ts, "u", f"{item}{n}", f"m{n}", position, {"n": n})


def click(n: int, ts: float, item: str = "i", event: str | None = None) -> Click:
    return Click(event or f"c{n}", ts, "u", f"{item}{n}", f"m{n}")


def summary(positives) -> list[tuple[str, str | None]]:
    return [(p.click.event_id, p.exposure.event_id if p.exposure else None) for p in positives]


def test_click_after_its_exposure_is_joined_at_once_with_position_and_context():
    joiner = ClickJoiner(window_s=60)
    assert joiner.add_exposure(exposure(1, 10.0, position=4)) == []
    [positive] = joiner.add_click(click(1, 20.0))
    assert (positive.exposure.position, positive.exposure.context, positive.orphan) == (4, {"n": 1}, False)


def test_click_before_its_exposure_waits_then_joins():
    joiner = ClickJoiner(window_s=60)
    assert joiner.add_click(click(1, 20.0)) == []
    assert joiner.waiting_clicks() == 1
    assert summary(joiner.add_exposure(exposure(1, 19.0))) == [("c1", "e1")]
    assert joiner.waiting_clicks() == 0


def test_join_needs_the_same_item_in_the_impression():
    joiner = ClickJoiner(window_s=60)
    joiner.add_exposure(exposure(1, 10.0))
    other_item = Click("c1", 11.0, "u", "other", "m1")
    assert joiner.add_click(other_item) == []  # waits: that item was not shown in m1


def test_waiting_click_becomes_an_orphan_when_exposures_pass_its_window():
    joiner = ClickJoiner(window_s=60)
    joiner.add_click(click(1, 100.0))
    assert joiner.add_exposure(exposure(2, 160.0)) == []          # 100 + 60 is not < 160
    assert summary(joiner.add_exposure(exposure(3, 160.5))) == [("c1", None)]
    assert joiner.counters["orphans"] == 1


def test_click_later_than_the_window_is_an_orphan_at_once():
    joiner = ClickJoiner(window_s=60)
    joiner.add_exposure(exposure(9, 500.0))
    assert summary(joiner.add_click(click(1, 100.0))) == [("c1", None)]


def test_exposure_is_forgotten_once_clicks_pass_its_window():
    joiner = ClickJoiner(window_s=60)
    joiner.add_exposure(exposure(1, 10.0))
    joiner.add_click(click(2, 71.0))           # click time 71 > 10 + 60: e1 is evicted
    assert joiner.add_click(click(1, 72.0)) == []  # so c1 waits instead of joining
    assert joiner.waiting_clicks() == 2            # c1 and c2 (whose exposure never came)


def test_duplicates_are_ignored_and_counted():
    joiner = ClickJoiner(window_s=60)
    joiner.add_exposure(exposure(1, 10.0))
    assert joiner.add_exposure(exposure(1, 10.0)) == []
    assert len(joiner.add_click(click(1, 11.0))) == 1
    assert joiner.add_click(click(1, 11.0)) == []
    assert len(joiner.add_click(click(1, 12.0, event="c1-second"))) == 1  # another click event
    assert (joiner.counters["duplicate_exposures"], joiner.counters["duplicate_clicks"],
            joiner.counters["joined"]) == (1, 1, 2)


def test_lanes_have_their_own_watermarks():
    joiner = ClickJoiner(window_s=60)
    joiner.add_click(click(1, 100.0), lane=0)
    joiner.add_exposure(exposure(2, 10_000.0), lane=1)  # lane 1 far ahead: lane 0 unaffected
    assert joiner.waiting_clicks() == 1
    assert summary(joiner.add_exposure(exposure(1, 99.0), lane=0)) == [("c1", "e1")]


def test_waiting_clicks_beyond_the_bound_are_emitted_as_orphans_not_dropped():
    joiner = ClickJoiner(window_s=1e9, max_entries=3)
    out = []
    for n in range(5):
        out += joiner.add_click(click(n, float(n)))
    assert summary(out) == [("c0", None), ("c1", None)]
    assert joiner.waiting_clicks() == 3


def test_exposures_beyond_the_bound_are_evicted_oldest_first():
    joiner = ClickJoiner(window_s=1e9, max_entries=2)
    for n in range(3):
        joiner.add_exposure(exposure(n, float(n)))
    assert joiner.counters["evicted_exposures"] == 1
    assert joiner.add_click(click(0, 5.0)) == []          # e0 is gone
    assert summary(joiner.add_click(click(2, 5.0))) == [("c2", "e2")]


def test_state_dict_is_json_serialisable_and_round_trips():
    joiner = ClickJoiner(window_s=60)
    joiner.add_exposure(exposure(1, 10.0))
    joiner.add_click(click(2, 11.0), lane=3)
    state = orjson.loads(orjson.dumps(joiner.state_dict()))
    restored = ClickJoiner(window_s=60)
    restored.load_state_dict(state)
    assert restored.state_dict() == joiner.state_dict()
    assert summary(restored.add_exposure(exposure(2, 12.0), lane=3)) == [("c2", "e2")]


def test_bad_arguments_and_state_are_rejected():
    with pytest.raises(ValueError):
        ClickJoiner(window_s=0)
    with pytest.raises(ValueError):
        ClickJoiner(max_entries=0)
    with pytest.raises(ValueError):
        ClickJoiner().load_state_dict({"version": 99})


# --- properties against a straightforward model ---------------------------------------------

def stream(num_impressions: int, rng: random.Random, duplicate_rate: float = 0.2):
    """Exposures and clicks of impressions inside one window, interleaved at random,
    with some events delivered twice."""
    events = []
    for n in range(num_impressions):
        events.append(("exposure", exposure(n, 1000.0 + rng.random())))
        events.append(("click", click(n, 1000.0 + rng.random())))
    events += [e for e in events if rng.random() < duplicate_rate]
    rng.shuffle(events)
    return events


def feed(joiner: ClickJoiner, events) -> list:
    out = []
    for kind, event in events:
        out += joiner.add_exposure(event) if kind == "exposure" else joiner.add_click(event)
    return out


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2 ** 32), size=st.integers(1, 30))
def test_any_order_within_the_window_joins_every_click_exactly_once(seed, size):
    out = feed(ClickJoiner(window_s=60), stream(size, random.Random(seed)))
    # The model: click n joins exposure n, once, whatever the order and duplicates.
    assert sorted(summary(out)) == sorted((f"c{n}", f"e{n}") for n in range(size))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2 ** 32), size=st.integers(1, 30), cut=st.floats(0, 1))
def test_checkpoint_at_any_point_changes_nothing(seed, size, cut):
    events = stream(size, random.Random(seed))
    # Timestamps spread over several windows so that expiry and orphans happen too.
    events = [(k, type(e)(**{**{f: getattr(e, f) for f in e.__slots__}, "ts": e.ts * 7 % 400}))
              for k, e in events]
    straight = feed(ClickJoiner(window_s=60, max_entries=8), events)
    at = int(cut * len(events))
    first = ClickJoiner(window_s=60, max_entries=8)
    before = feed(first, events[:at])
    second = ClickJoiner(window_s=60, max_entries=8)
    second.load_state_dict(orjson.loads(orjson.dumps(first.state_dict())))
    after = feed(second, events[at:])
    assert summary(before + after) == summary(straight)
    assert second.counters == feed_counters(events)


def feed_counters(events) -> dict:
    joiner = ClickJoiner(window_s=60, max_entries=8)
    feed(joiner, events)
    return joiner.counters


def test_a_lane_state_moves_to_another_joiner_and_joins_on_identically():
    one, other = ClickJoiner(window_s=60.0), ClickJoiner(window_s=60.0)
    one.add_exposure(Exposure("e1", 10.0, "u1", "i1", "m1", 2), lane=1)
    one.add_click(Click("c0", 11.0, "u1", "i9", "m0"), lane=1)  # waits for its exposure
    one.add_exposure(Exposure("x", 10.0, "u2", "i2", "m2"), lane=0)  # another lane stays
    other.load_lane_state(1, one.lane_state(1))
    one.drop_lane(1)
    assert one.waiting_clicks() == 0 and other.waiting_clicks() == 1
    joined = other.add_click(Click("c1", 12.0, "u1", "i1", "m1"), lane=1)
    assert [(p.click.event_id, p.exposure.position) for p in joined] == [("c1", 2)]
    assert other.add_click(Click("c1", 12.0, "u1", "i1", "m1"), lane=1) == []  # still a duplicate
    other.load_lane_state(1, None)
    assert other.waiting_clicks() == 0
