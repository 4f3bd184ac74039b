"""What ``recallstream replay`` publishes, checked without a broker (ReplayPlan, Pacer, CLI errors)."""

from __future__ import annotations

import orjson
import pytest

from recallstream.consumers.cli import main
from recallstream.consumers.replay import Pacer, ReplayPlan
from recallstream.streaming.decoding import decode
from recallstream.streaming.movielens import MovieLens, make_ratings
from recallstream.streaming.settings import Settings

SETTINGS = Settings.resolve(environ={})


@pytest.fixture
def tiny():
    # Two ratings share ts 30: the replay keeps their file order (rows 1 then 3).
    ratings = make_ratings([("u1", "a", 4.0, 50), ("u2", "b", 3.0, 30),
                            ("u1", "c", 5.0, 40), ("u3", "a", 1.0, 30)])
    users = {u: {"age": age} for u, age in (("u1", 20), ("u2", 30), ("u3", 40))}
    items = {i: {"title": i.upper(), "release_year": None, "genres": []} for i in "abcde"}
    return MovieLens(ratings, users, items, source="tiny")


def test_records_order_users_items_then_lists_in_time_order(tiny):
    records = list(ReplayPlan(tiny, exposures_per_click=2, seed=1, name="t").records(SETTINGS))
    topics = [topic for topic, _, _ in records]
    assert topics == ["users"] * 3 + ["items"] * 5 + (["exposures"] * 3 + ["clicks"]) * 4
    clicks = [decode("clicks", key, value) for topic, key, value in records if topic == "clicks"]
    assert [(c.user_id, c.item_id, c.ts) for c in clicks] == [
        ("u2", "b", 30.0), ("u3", "a", 30.0), ("u1", "c", 40.0), ("u1", "a", 50.0)]
    assert [c.event_id for c in clicks] == ["t-s1-1/c", "t-s1-3/c", "t-s1-2/c", "t-s1-0/c"]
    for topic, key, value in records:  # every record decodes, keyed by its user or entity id
        event = decode(topic, key, value)
        assert key.decode() == getattr(event, "user_id", getattr(event, "entity_id", None))


def test_entities_are_stamped_before_the_first_exposure(tiny):
    entities = list(ReplayPlan(tiny).entity_records(SETTINGS))
    assert {orjson.loads(value)["ts"] for _, _, value in entities} == {29.0}  # 30 - 1 s lead
    assert orjson.loads(entities[3][2]) == {
        "item_id": "a", "ts": 29.0, "features": {"title": "A", "release_year": None, "genres": []}}


def test_limit_replays_the_time_order_prefix_with_the_same_records(tiny):
    full = list(ReplayPlan(tiny, exposures_per_click=1, seed=5).event_records(SETTINGS))
    limited = ReplayPlan(tiny, limit=2, exposures_per_click=1, seed=5)
    assert (limited.num_clicks, limited.num_exposures) == (2, 4)
    assert list(limited.event_records(SETTINGS)) == full[:6]
    assert list(ReplayPlan(tiny, limit=0).event_records(SETTINGS)) == []
    with pytest.raises(ValueError, match="limit"):
        ReplayPlan(tiny, limit=-1)


def test_topics_come_from_the_settings(tiny):
    settings = Settings.resolve(flags={"topic_clicks": "c", "topic_exposures": "e",
                                       "topic_items": "i", "topic_users": "u"}, environ={})
    topics = {topic for topic, _, _ in ReplayPlan(tiny).records(settings)}
    assert topics == {"c", "e", "i", "u"}


def test_pacer_without_rate_never_waits():
    pacer = Pacer(None)
    pacer.wait_for(10**9)  # would sleep for ages if it paced
    with pytest.raises(ValueError, match="positive"):
        Pacer(0.0)


def test_cli_rejects_bad_arguments_before_sending(tmp_path, capsys):
    # No broker listens on port 1: a replay that got as far as sending would hang or fail.
    broker = ["--bootstrap-servers", "127.0.0.1:1"]
    assert main(["replay", "--data-dir", str(tmp_path), *broker]) == 2
    assert "no MovieLens files" in capsys.readouterr().err
    assert main(["replay", "--rate", "0", *broker]) == 2
    assert "--rate must be positive" in capsys.readouterr().err
    assert main(["replay", "--exposures-per-click", "5000", *broker]) == 2
    assert "cannot fill" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", "--rate", "10", "--max"])  # mutually exclusive
