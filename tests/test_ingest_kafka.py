"""StreamIngestor (with the feature tables it feeds) and `recallstream inspect` on a real broker (fixtures in conftest.py).

Records are produced by a plain kafka-python producer: the catalog as any application
would, the training examples as the joiner job would (its own tests are
test_joiner_kafka.py), poison among them.
"""

from __future__ import annotations

import json
from collections import Counter

import orjson
import pytest
from kafka import KafkaProducer

from recallstream.consumers import cli
from recallstream.streaming.dead_letters import parse_dead_letter, raw_key, raw_value
from recallstream.streaming.entity_tables import EntityTables
from recallstream.streaming.events import Click, EntityRecord, Exposure, Tombstone
from recallstream.streaming.example_joiner import example_record
from recallstream.streaming.joiner import Positive
from recallstream.streaming.ingest import StreamIngestor
from recallstream.streaming.kafka_io import end_offsets, read_topic

ONE_MIB = 1 << 20


def plain_producer(settings) -> KafkaProducer:
    # Raised so that the oversized (> 1 MiB) records reach the broker and can be dead-lettered.
    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=4 * ONE_MIB)


def produce(settings, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    producer = plain_producer(settings)
    deliveries = []
    for topic, key, value in records:
        # Explicit partition by user number keeps a user's events in one partition and the
        # test's outcome independent of the default partitioner.
        partition = int(key.decode().lstrip("ui") or 0) % 2 if key and key[:1] in b"ui" else 0
        deliveries.append(producer.send(topic, key=key, value=value, partition=partition))
    producer.flush()
    for delivery in deliveries:
        delivery.get(timeout=10)
    producer.close()


def example_records(settings, impressions: int, orphan_every: int = 3):
    """Per impression: one training example, the click joined to its exposure at position
    1, or (every ``orphan_every``-th) an orphan."""
    records = []
    for n in range(impressions):
        user = f"u{n % 5}"
        click = Click(f"c{n}", 1000.5 + n, user, f"i{n + 1}", f"m{n}")
        shown = None if n % orphan_every == 0 else Exposure(f"e{n}", 1000.0 + n, user, f"i{n + 1}",
                                                              f"m{n}", 1)
        records.append((settings.topic_examples, click.key(),
                        example_record(Positive(click, shown), lane=0)))
    return records


def event_ends(settings) -> dict[str, dict[int, int]]:
    """End offsets of the non-empty partitions of the topics the ingestor reads."""
    topics = [settings.topic_examples, settings.topic_items, settings.topic_users]
    return {t: {p: o for p, o in end_offsets(settings, t).items() if o > 0} for t in topics}


def at_end(ingestor: StreamIngestor, ends: dict[str, dict[int, int]]) -> bool:
    done = ingestor.offsets()
    return all(done.get(t, {}).get(p, 0) >= o for t in ends for p, o in ends[t].items())


def drain(ingestor: StreamIngestor, settings, max_records: int | None = None,
          stop_after: int | None = None) -> tuple[list, list]:
    """Poll until every partition reaches the end it had at the start (or stop_after records)."""
    ends = event_ends(settings)
    positives, entities, handled = [], [], 0
    for _ in range(600):
        if at_end(ingestor, ends) or (stop_after is not None and handled >= stop_after):
            return positives, entities
        batch = ingestor.poll(timeout_s=0.2, max_records=max_records)
        positives += batch.positives
        entities += batch.entities
        handled += batch.records
    pytest.fail(f"ingestor stuck at {ingestor.offsets()}, ends {ends}")


def dead_letters(settings) -> list[dict]:
    return [parse_dead_letter(r.value) for r in read_topic(settings, settings.topic_dead_letters)]


def test_examples_and_entities_are_consumed_validated_and_tables_updated(topic_settings):
    s = topic_settings
    produce(s, [
        (s.topic_items, b"i1", EntityRecord("items", "i1", 1.0, {"genres": ["Drama"]}).to_json()),
        (s.topic_items, b"i2", EntityRecord("items", "i2", 1.0, {"genres": []}).to_json()),
        (s.topic_items, b"i2", None),
        (s.topic_users, b"u1", EntityRecord("users", "u1", 1.0, {"age": 30}).to_json()),
    ] + example_records(s, impressions=30))
    ingestor = StreamIngestor(s)
    tables = EntityTables()  # the ingestor reports entity changes; its user applies them
    try:
        positives, entities = drain(ingestor, s)
        tables.apply(entities)
        counters = ingestor.counters()
    finally:
        ingestor.close()

    assert sorted((p.click.event_id, p.exposure and (p.exposure.event_id, p.exposure.position))
                  for p in positives) == \
        sorted((f"c{n}", None if n % 3 == 0 else (f"e{n}", 1)) for n in range(30))
    assert (counters["examples_seen"], counters["orphans"], counters["dead_lettered_total"]) \
        == (30, 10, 0)
    assert tables.items == {"i1": {"genres": ["Drama"]}}
    assert tables.users == {"u1": {"age": 30}}
    assert Tombstone("items", "i2") in entities and len(entities) == 4
    assert dead_letters(s) == []


def bad_records(s) -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(topic, key, value, expected reason) of many kinds of bad input."""
    example = orjson.loads(example_record(Positive(Click("bad", 1.0, "u1", "i1", "m1"),
                                                   Exposure("e", 0.5, "u1", "i1", "m1", 0)), 0))
    x = s.topic_examples
    return [
        (x, b"u1", b"{not json", "invalid_json"),
        (x, b"u1", b"\xff\xfe\x00", "invalid_json"),
        (x, b"u1", json.dumps({**example, "ts": float("nan")}).encode(), "invalid_json"),
        (x, b"u1", b"[1, 2, 3]", "not_an_object"),
        (x, b"u1", None, "null_value"),
        (x, b"u1", orjson.dumps({**example, "ts": "noon"}), "wrong_type:ts"),
        (x, b"u1", orjson.dumps({**example, "user_id": True}), "wrong_type:user_id"),
        (x, b"u1", orjson.dumps({**example, "item_id": ""}), "invalid_id:item_id"),
        (x, b"u1", orjson.dumps({**example, "exposure": {**example["exposure"], "position": -2}}),
         "out_of_range:position"),
        (x, b"u1", orjson.dumps({k: v for k, v in example.items() if k != "impression_id"}),
         "missing_field:impression_id"),
        (x, b"u1", orjson.dumps({**example, "exposure": "shown"}), "wrong_type:exposure"),
        (x, b"u1", orjson.dumps({**example, "pad": "x" * (ONE_MIB + 10)}), "too_large"),
        (s.topic_items, b"i1", orjson.dumps({"item_id": "i9", "ts": 1, "features": {}}),
         "key_mismatch"),
        # (A keyless record cannot reach a compacted topic: the broker rejects it.)
        (s.topic_items, b"\xff\x00", orjson.dumps({"item_id": "i9", "ts": 1, "features": {}}),
         "invalid_key"),
        (s.topic_users, b"u1", orjson.dumps({"user_id": "u1", "ts": 1, "features": "old"}),
         "wrong_type:features"),
    ]


def test_every_bad_record_is_dead_lettered_with_its_reason_and_good_ones_processed(topic_settings):
    s = topic_settings
    bad = bad_records(s)
    good = example_records(s, impressions=20)
    mixed = [r for pair in zip(good, [b[:3] for b in bad] + [None] * len(good)) for r in pair if r]
    produce(s, mixed)
    ingestor = StreamIngestor(s)
    try:
        positives, _ = drain(ingestor, s)
        counters = ingestor.counters()
    finally:
        ingestor.close()

    assert sorted(p.click.event_id for p in positives) == sorted(f"c{n}" for n in range(20))
    letters = dead_letters(s)
    # Lossless: the original key and value bytes, with the reason, once each.
    assert Counter((l["topic"], raw_key(l), raw_value(l), l["reason"]) for l in letters) == \
        Counter(bad)
    assert all(not l["raw_truncated"] for l in letters)
    expected_reasons: dict[str, int] = {}
    for *_, reason in bad:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert counters["dead_lettered"] == expected_reasons
    assert (counters["examples_seen"], counters["orphans"]) == (20, 7)


def test_restart_from_saved_offsets_loses_nothing_and_duplicates_nothing(topic_settings):
    s = topic_settings
    produce(s, [(t, k, v) for t, k, v, _ in bad_records(s)[:4]] + example_records(s, 60)
            + [(s.topic_items, f"i{n}".encode(),
                EntityRecord("items", f"i{n}", 1.0, {"n": n}).to_json()) for n in range(10)])

    # Stop every 10 records and start a new ingestor from the saved state, until the end.
    # The tables are saved beside the ingestor's state, as the worker's checkpoint does.
    positives, state, runs = [], None, 0
    while True:
        ingestor = StreamIngestor(s)
        tables = EntityTables()
        try:
            if state is not None:
                ingestor.load_state_dict(state["ingest"])
                tables.load_state_dict(state["entities"])
            drained, entities = drain(ingestor, s, max_records=7, stop_after=10)
            positives += drained
            tables.apply(entities)
            state = orjson.loads(orjson.dumps({"ingest": ingestor.state_dict(),  # as a checkpoint
                                               "entities": tables.state_dict()}))
            finished = at_end(ingestor, event_ends(s))
            counters, offsets, items = ingestor.counters(), ingestor.offsets(), dict(tables.items)
        finally:
            ingestor.close()
        runs += 1
        if finished:
            break
    assert runs >= 5

    clicks = [p.click.event_id for p in positives]
    assert sorted(clicks) == sorted(f"c{n}" for n in range(60))  # each exactly once
    assert sum(p.orphan for p in positives) == counters["orphans"] == 20
    assert counters["examples_seen"] == 60
    assert items == {f"i{n}": {"n": n} for n in range(10)}
    letters = dead_letters(s)
    assert len(letters) == 4 and len({(l["topic"], l["partition"], l["offset"]) for l in letters}) == 4
    assert counters["dead_lettered_total"] == 4
    for topic in (s.topic_examples, s.topic_items):
        assert offsets[topic] == {p: o for p, o in end_offsets(s, topic).items() if o > 0}


def test_inspect_counts_valid_and_invalid_records_by_reason(topic_settings, capsys):
    s = topic_settings
    bad = [b for b in bad_records(s) if b[0] == s.topic_examples and b[3] != "too_large"]
    produce(s, [b[:3] for b in bad] + example_records(s, 4))
    flags = ["--bootstrap-servers", s.bootstrap_servers, "--topic-examples", s.topic_examples,
             "--topic-dead-letters", s.topic_dead_letters]
    assert cli.main(["inspect", s.topic_examples, "--json"] + flags) == 0
    report = json.loads(capsys.readouterr().out)
    reasons: dict[str, int] = {}
    for *_, reason in bad:
        reasons[reason] = reasons.get(reason, 0) + 1
    assert report == {"topic": s.topic_examples, "records": len(bad) + 4, "valid": 4,
                      "invalid": len(bad), "invalid_by_reason": dict(sorted(reasons.items()))}

    ingestor = StreamIngestor(s)
    try:
        drain(ingestor, s)
    finally:
        ingestor.close()
    assert cli.main(["inspect", s.topic_dead_letters, "--json"] + flags) == 0
    letters_report = json.loads(capsys.readouterr().out)
    assert (letters_report["records"], letters_report["invalid"],
            letters_report["invalid_by_reason"]) == (len(bad), len(bad), report["invalid_by_reason"])
