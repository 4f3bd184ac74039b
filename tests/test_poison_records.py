"""Poison records (issue 15): every over-limit or malformed record becomes a dead letter with
its own reason, never an exception, and its raw bytes go to the dead letter (base64), never
to a log line. Pure stream logic: the router and the dead-letter encoding, no Kafka."""

from __future__ import annotations

import base64
import logging
from collections import namedtuple

import orjson

from recallstream.streaming.dead_letters import dead_letter_record, parse_dead_letter, raw_value
from recallstream.streaming.decoding import MAX_DEPTH, MAX_FIELDS, MAX_LIST_ITEMS
from recallstream.streaming.record_router import RecordRouter

Partition = namedtuple("Partition", "topic partition")
Record = namedtuple("Record", "topic partition offset key value")
MARKER = "SECRET-PAYLOAD-MARKER"


def poison() -> dict[bytes, str]:
    """Raw values, each with the marker, and the reason each must get."""
    click = {"event_id": "c", "ts": 1, "user_id": "u", "item_id": "i", "impression_id": "m"}
    deep = MARKER
    for _ in range(MAX_DEPTH):
        deep = [deep]
    return {
        b"{" + MARKER.encode(): "invalid_json",
        orjson.dumps([MARKER]): "not_an_object",
        orjson.dumps({**click, "user_id": MARKER * 20}): "invalid_id:user_id",
        orjson.dumps({**click, **{f"{MARKER}{n}": n for n in range(MAX_FIELDS)}}): "too_many_fields",
        orjson.dumps({**click, "x": deep}): "too_deep",
        orjson.dumps({**click, "x": [MARKER] * (MAX_LIST_ITEMS + 1)}): "list_too_long",
        orjson.dumps({**click, "x": MARKER + "x" * (1 << 20)}): "too_large",
    }


def test_poison_is_dead_lettered_whole_with_its_reason_and_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    values = poison()
    records = [Record("c", 0, offset, b"u", value) for offset, value in enumerate(values)]
    routed = RecordRouter({"c": "examples"}).route({Partition("c", 0): records})
    assert [(record.value, reason) for record, reason in routed.dead_letters] == list(values.items())
    assert routed.next_offsets == {Partition("c", 0): len(values)}
    for record, reason in routed.dead_letters:
        letter = parse_dead_letter(dead_letter_record("c", 0, record.offset, reason, record.value, record.key))
        assert letter["reason"] == reason and raw_value(letter) == record.value
        assert letter["raw"] == base64.b64encode(record.value).decode()
        assert MARKER not in letter["reason"]
    assert not [r for r in caplog.records if MARKER in r.getMessage()]
