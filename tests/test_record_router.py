"""RecordRouter, EntityTables and DeadLetterSink without Kafka: small hand-checked cases."""

from collections import namedtuple

import orjson
import pytest

from recallstream.streaming.dead_letter_sink import DeadLetterSink
from recallstream.streaming.dead_letters import parse_dead_letter, raw_value
from recallstream.streaming.entity_tables import EntityTables
from recallstream.streaming.events import Click, EntityRecord, Exposure, Tombstone
from recallstream.streaming.example_joiner import example_record
from recallstream.streaming.joiner import Positive
from recallstream.streaming.record_router import RecordRouter

Partition = namedtuple("Partition", "topic partition")
Record = namedtuple("Record", "topic partition offset key value")
KINDS = {"x": "examples", "i": "items", "u": "users"}


def records(topic, partition, values, first_offset=0, key=b"u1"):
    return [Record(topic, partition, first_offset + n, key, value) for n, value in enumerate(values)]


def item(item_id, **features):
    return EntityRecord("items", item_id, 1.0, features).to_json()


def example(click, exposure=None, lane=0):
    return example_record(Positive(click, exposure), lane)


def test_examples_become_positives_and_the_item_comes_first_whatever_the_fetch_order():
    router = RecordRouter(KINDS)
    click = Click("c1", 12.0, "u1", "i1", "m1")
    exposure = Exposure("e1", 10.0, "u1", "i1", "m1", 0, {"surface": "home"})
    orphan = Click("c2", 13.0, "u1", "i2", "m2")
    # examples listed first: the router still handles items, then examples
    routed = router.route({Partition("x", 1): records("x", 1, [example(click, exposure), example(orphan)],
                                                      first_offset=40),
                           Partition("i", 0): records("i", 0, [item("i1", genres=["Drama"])],
                                                      key=b"i1")})
    joined, alone = routed.ingested.positives
    assert (joined.click, joined.exposure) == (click, exposure)
    assert (alone.click, alone.exposure) == (orphan, None)
    assert routed.ingested.entities == [EntityRecord("items", "i1", 1.0, {"genres": ["Drama"]})]
    assert routed.ingested.records == 3 and routed.dead_letters == []
    assert routed.next_offsets == {Partition("x", 1): 42, Partition("i", 0): 1}
    counters = router.counters()
    assert (counters["examples_seen"], counters["orphans"], counters["entity_records"]) == (2, 1, 1)


def test_invalid_records_become_dead_letters_with_their_reason_and_are_passed():
    router = RecordRouter(KINDS)
    good = example(Click("c1", 12.0, "u1", "i1", "m1"))
    no_user = b'{"event_id": "c9", "ts": 1, "item_id": "i", "impression_id": "m", "exposure": null}'
    routed = router.route({Partition("x", 0): records("x", 0, [b"{oops", good, b"[1]", no_user])})
    assert [(r.offset, reason) for r, reason in routed.dead_letters] == \
        [(0, "invalid_json"), (2, "not_an_object"), (3, "missing_field:user_id")]
    assert routed.next_offsets == {Partition("x", 0): 4}  # past the bad ones too
    assert [p.click.event_id for p in routed.ingested.positives] == ["c1"]
    counters = router.counters()
    assert counters["dead_lettered"] == {"invalid_json": 1, "not_an_object": 1,
                                         "missing_field:user_id": 1}
    assert (counters["dead_lettered_total"], counters["examples_seen"]) == (3, 1)


def test_a_router_refuses_kinds_it_cannot_route():
    with pytest.raises(ValueError, match="exposures"):
        RecordRouter({"e": "exposures"})


def test_tombstones_are_reported_in_order_with_records():
    router = RecordRouter(KINDS)
    routed = router.route({Partition("i", 0): [Record("i", 0, 0, b"i1", item("i1")),
                                               Record("i", 0, 1, b"i1", None)]})
    assert routed.ingested.entities == [EntityRecord("items", "i1", 1.0, {}), Tombstone("items", "i1")]
    assert (router.counters()["entity_records"], router.counters()["tombstones"]) == (1, 1)


def test_restored_router_keeps_its_counters():
    router = RecordRouter(KINDS)
    router.route({Partition("x", 0): records("x", 0, [b"{oops", example(Click("c1", 12.0, "u1", "i1", "m1"))])})
    restored = RecordRouter(KINDS)
    restored.load_state_dict(orjson.loads(orjson.dumps(router.state_dict())))  # as a checkpoint
    assert restored.counters() == router.counters()
    restored.route({Partition("x", 0): records("x", 0, [example(Click("c2", 13.0, "u1", "i1", "m1"))],
                                               first_offset=2)})
    assert restored.counters()["examples_seen"] == 2


def test_entity_tables_apply_changes_in_order_and_report_the_final_catalog():
    tables = EntityTables()
    changes = tables.apply([EntityRecord("items", "i1", 1.0, {"n": 1}), Tombstone("items", "i2"),
                            EntityRecord("items", "i3", 1.0, {}), Tombstone("items", "i3"),
                            Tombstone("items", "i1"), EntityRecord("items", "i1", 2.0, {"n": 2}),
                            EntityRecord("users", "u1", 1.0, {"age": 3})])
    assert tables.items == {"i1": {"n": 2}} and tables.users == {"u1": {"age": 3}}
    assert (changes.added_items, changes.retired_items) == (["i1"], ["i2", "i3"])
    restored = EntityTables()
    restored.load_state_dict(orjson.loads(orjson.dumps(tables.state_dict())))
    assert (restored.items, restored.users) == (tables.items, tables.users)


class Delivery:
    def __init__(self, error=None):
        self.error = error

    def get(self, timeout):
        if self.error:
            raise self.error


class Producer:
    def __init__(self, error=None):
        self.sent, self.flushes, self.error = [], 0, error

    def send(self, topic, key, value):
        self.sent.append((topic, key, value))
        return Delivery(self.error)

    def flush(self):
        self.flushes += 1


def test_dead_letter_sink_sends_lossless_letters_and_confirms_only_when_needed():
    producer = Producer()
    sink = DeadLetterSink("dead", producer)
    sink.confirm()
    assert producer.flushes == 0  # nothing sent: nothing to wait for
    sink.send(Record("clicks", 3, 77, b"u1", b"\xff raw"), "invalid_json")
    sink.confirm()
    [(topic, key, value)] = producer.sent
    letter = parse_dead_letter(value)
    assert (topic, key, letter["reason"], raw_value(letter)) == \
        ("dead", b"clicks:3:77", "invalid_json", b"\xff raw")
    assert producer.flushes == 1


def test_dead_letter_sink_raises_when_a_letter_was_not_delivered():
    sink = DeadLetterSink("dead", Producer(error=RuntimeError("broker refused")))
    sink.send(Record("clicks", 0, 1, None, b"x"), "invalid_json")
    with pytest.raises(RuntimeError, match="broker refused"):
        sink.confirm()
