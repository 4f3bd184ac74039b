"""Events' JSON encoding and keys, and dead letters (lossless, bounded, parseable)."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from recallstream.streaming.dead_letters import (FIELDS, MAX_RAW_BYTES, dead_letter_key, dead_letter_record,
                                    parse_dead_letter, raw_key, raw_value)
from recallstream.streaming.decoding import decode
from recallstream.streaming.events import Click, EntityRecord, Exposure, Tombstone
from recallstream.streaming.kafka_io import DEAD_LETTERS_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES


def test_exposure_json_has_the_schema_fields_and_omits_unset_optionals():
    full = Exposure("e", 1.0, "u", "i", "m", 0, {"a": 1})
    assert orjson.loads(full.to_json()) == {"event_id": "e", "ts": 1.0, "user_id": "u",
                                            "item_id": "i", "impression_id": "m",
                                            "position": 0, "context": {"a": 1}}
    assert set(orjson.loads(Exposure("e", 1.0, "u", "i", "m").to_json())) == {
        "event_id", "ts", "user_id", "item_id", "impression_id"}


def test_events_are_keyed_by_user_and_entities_by_their_id():
    assert Click("c", 1.0, "ü1", "i", "m").key() == "ü1".encode()
    assert EntityRecord("users", "u5", 1.0, {}).key() == b"u5"
    assert Tombstone("items", "i5").key() == b"i5"


@pytest.mark.parametrize("record, kind", [
    (Exposure("e", 1.0, "u", "i", "m", 3, {"x": [1]}, {"extra": True}), "exposures"),
    (Click("c", 2.5, "u", "i", "m"), "clicks"),
    (EntityRecord("items", "i", 3.0, {"genres": ["a"]}), "items"),
    (EntityRecord("users", "u", 3.0, {"age": 30}, {"source": "crm"}), "users"),
    (Tombstone("users", "u"), "users"),
])
def test_every_event_round_trips_through_decode(record, kind):
    assert decode(kind, record.key(), record.to_json()) == record


def test_events_are_slotted():
    with pytest.raises(AttributeError):
        Click("c", 1.0, "u", "i", "m").typo = 1


def test_dead_letter_keeps_the_record_losslessly():
    value, key = bytes(range(256)), b"\x00key"
    letter = parse_dead_letter(dead_letter_record("clicks", 3, 77, "invalid_json", value, key,
                                                  now=12.5))
    assert set(letter) == set(FIELDS)
    assert (letter["topic"], letter["partition"], letter["offset"], letter["reason"],
            letter["ts"]) == ("clicks", 3, 77, "invalid_json", 12.5)
    assert raw_value(letter) == value and raw_key(letter) == key
    assert letter["raw"] == base64.b64encode(value).decode()
    assert (letter["raw_size"], letter["raw_sha256"], letter["raw_truncated"]) == (
        256, hashlib.sha256(value).hexdigest(), False)


def test_dead_letter_of_null_key_and_value():
    letter = parse_dead_letter(dead_letter_record("items", 0, 1, "missing_key", None, None))
    assert (raw_value(letter), raw_key(letter), letter["raw_size"], letter["raw_sha256"]) == (
        None, None, None, None)
    assert isinstance(letter["ts"], float)


def test_the_largest_record_a_topic_accepts_fits_whole_in_a_dead_letter():
    assert MAX_RAW_BYTES == MAX_MESSAGE_BYTES
    value = b"\xff" * MAX_MESSAGE_BYTES
    record = dead_letter_record("clicks", 0, 0, "too_large", value, b"k" * 256)
    assert len(record) <= DEAD_LETTERS_MAX_MESSAGE_BYTES - 1024  # room for Kafka's overhead
    assert raw_value(parse_dead_letter(record)) == value


def test_larger_values_are_truncated_with_size_and_digest():
    value = b"abcdefgh"
    letter = parse_dead_letter(dead_letter_record("t", 0, 0, "too_large", value, None,
                                                  max_raw_bytes=3))
    assert (raw_value(letter), letter["raw_truncated"], letter["raw_size"]) == (b"abc", True, 8)
    assert letter["raw_sha256"] == hashlib.sha256(value).hexdigest()


def test_dead_letter_key_and_parse_errors():
    assert dead_letter_key("exposures", 1, 2) == b"exposures:1:2"
    with pytest.raises(ValueError):
        parse_dead_letter(b'{"topic": "t"}')
    with pytest.raises(ValueError):
        parse_dead_letter(b"not json")
    with pytest.raises(ValueError):
        dead_letter_record("t", 0, 0, "r", b"", None, max_raw_bytes=-1)
