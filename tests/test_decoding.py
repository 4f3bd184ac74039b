"""Decoding and validation: hand-computed cases, a plain reference validator, and properties."""

from __future__ import annotations

import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recallstream.streaming.decoding import (
    KINDS, MAX_DEPTH, MAX_FEATURES, MAX_FIELDS, MAX_ID_CHARS, MAX_LIST_ITEMS, MAX_OBJECT_KEYS,
    MAX_RECORD_BYTES, REASONS, Invalid, decode,
)
from recallstream.streaming.events import Click, EntityRecord, Exposure, Tombstone

EXPOSURE = {"event_id": "e1", "ts": 1700000000.5, "user_id": "u1", "item_id": "i1",
            "impression_id": "m1", "position": 2, "context": {"page": "home"}}
CLICK = {"event_id": "c1", "ts": 1700000001.0, "user_id": "u1", "item_id": "i1",
         "impression_id": "m1"}
ITEM = {"item_id": "i1", "ts": 5.0, "features": {"genres": ["Drama"], "year": 1995}}


def dumps(obj) -> bytes:
    return orjson.dumps(obj)


def with_fields(base: dict, **changes) -> bytes:
    obj = dict(base)
    for name, value in changes.items():
        if value is _DROP:
            obj.pop(name)
        else:
            obj[name] = value
    return dumps(obj)


_DROP = object()


# --- hand-computed cases ------------------------------------------------------------------

def test_valid_exposure_is_decoded_with_every_field():
    assert decode("exposures", b"u1", dumps(EXPOSURE)) == Exposure(
        "e1", 1700000000.5, "u1", "i1", "m1", 2, {"page": "home"})


def test_integer_ids_are_normalised_to_strings_and_int_ts_to_float():
    event = decode("clicks", None, with_fields(CLICK, user_id=42, item_id=0, ts=7))
    assert (event.user_id, event.item_id, event.ts) == ("42", "0", 7.0)
    assert type(event.ts) is float


def test_unknown_fields_are_kept_in_extra_and_reencoded():
    event = decode("clicks", None, with_fields(CLICK, campaign="x", score=[1, 2]))
    assert event.extra == {"campaign": "x", "score": [1, 2]}
    assert orjson.loads(event.to_json()) == {**CLICK, "campaign": "x", "score": [1, 2]}


def test_optional_fields_may_be_absent_or_null():
    event = decode("exposures", None, with_fields(EXPOSURE, position=_DROP, context=None))
    assert (event.position, event.context, event.extra) == (None, None, None)


@pytest.mark.parametrize("value, reason", [
    (b"", "invalid_json"),
    (b"{", "invalid_json"),
    (b'{"ts": NaN}', "invalid_json"),            # what json.dumps writes for a NaN ts
    (b'{"ts": 1e400}', "invalid_json"),          # overflows to infinity
    (b"\xff\xfe{}", "invalid_json"),             # not UTF-8
    (b'"\\ud800"', "invalid_json"),               # lone surrogate
    (b"[" * 5000 + b"]" * 5000, "invalid_json"),  # nested too deep
    (b"[1, 2]", "not_an_object"),
    (b"null", "not_an_object"),
    (b'"text"', "not_an_object"),
    (with_fields(CLICK, event_id=_DROP), "missing_field:event_id"),
    (with_fields(CLICK, user_id=None), "missing_field:user_id"),
    (with_fields(CLICK, ts=_DROP), "missing_field:ts"),
    (with_fields(CLICK, ts="12"), "wrong_type:ts"),
    (with_fields(CLICK, ts=True), "wrong_type:ts"),
    (with_fields(CLICK, item_id=True), "wrong_type:item_id"),
    (with_fields(CLICK, item_id=1.0), "wrong_type:item_id"),
    (with_fields(CLICK, impression_id=["m"]), "wrong_type:impression_id"),
    (with_fields(CLICK, user_id=""), "invalid_id:user_id"),
    (with_fields(CLICK, user_id="u" * 257), "invalid_id:user_id"),
])
def test_invalid_clicks_get_a_stable_reason(value, reason):
    assert decode("clicks", b"u1", value) == Invalid(reason)


def test_an_id_of_256_characters_is_valid():
    assert decode("clicks", None, with_fields(CLICK, user_id="u" * 256)).user_id == "u" * 256


@pytest.mark.parametrize("changes, reason", [
    ({"position": -1}, "out_of_range:position"),
    ({"position": 1.5}, "wrong_type:position"),
    ({"position": False}, "wrong_type:position"),
    ({"context": "home"}, "wrong_type:context"),
    ({"context": []}, "wrong_type:context"),
])
def test_invalid_exposure_fields(changes, reason):
    assert decode("exposures", None, with_fields(EXPOSURE, **changes)) == Invalid(reason)


def test_first_failing_field_in_schema_order_gives_the_reason():
    value = with_fields(EXPOSURE, ts="x", user_id=_DROP, position=-3)
    assert decode("exposures", None, value) == Invalid("wrong_type:ts")


def test_records_over_one_mebibyte_are_too_large_and_up_to_it_are_not():
    padding = "x" * MAX_RECORD_BYTES
    big = with_fields(CLICK, pad=padding)
    assert decode("clicks", None, big) == Invalid("too_large")
    fitting = with_fields(CLICK, pad="")
    fitting = with_fields(CLICK, pad="x" * (MAX_RECORD_BYTES - len(fitting) - 2))
    assert len(fitting) + 2 == MAX_RECORD_BYTES
    assert isinstance(decode("clicks", b"u1", fitting), Click)
    assert decode("clicks", b"u12", fitting) == Invalid("too_large")  # the key counts too


def test_entity_record_and_tombstone():
    assert decode("items", b"i1", dumps(ITEM)) == EntityRecord(
        "items", "i1", 5.0, {"genres": ["Drama"], "year": 1995})
    assert decode("users", b"7", dumps({"user_id": 7, "ts": 1, "features": {}})) == EntityRecord(
        "users", "7", 1.0, {})
    assert decode("users", b"u9", None) == Tombstone("users", "u9")


@pytest.mark.parametrize("kind, key, value, reason", [
    ("items", None, dumps(ITEM), "missing_key"),
    ("items", None, None, "missing_key"),
    ("items", b"\xff", dumps(ITEM), "invalid_key"),
    ("items", b"", None, "invalid_key"),
    ("items", b"k" * 257, None, "invalid_key"),
    ("items", b"i2", dumps(ITEM), "key_mismatch"),
    ("users", b"i1", dumps(ITEM), "missing_field:user_id"),   # the id field follows the kind
    ("items", b"i1", with_fields(ITEM, features=_DROP), "missing_field:features"),
    ("items", b"i1", with_fields(ITEM, features=[1]), "wrong_type:features"),
    ("items", b"i1", with_fields(ITEM, ts=None), "missing_field:ts"),
    ("clicks", b"u1", None, "null_value"),
])
def test_invalid_entity_records(kind, key, value, reason):
    assert decode(kind, key, value) == Invalid(reason)


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown record kind"):
        decode("ratings", None, b"{}")


# --- against a plain reference validator ----------------------------------------------------

def reference_structure(obj: dict, entity: bool) -> str | None:
    """The structure limits (issue 15), re-stated plainly: the reason of the first one broken."""
    if len(obj) > MAX_FIELDS:
        return "too_many_fields"
    if entity and isinstance(obj.get("features"), dict) and len(obj["features"]) > MAX_FEATURES:
        return "too_many_features"

    def walk(value, depth):
        if isinstance(value, (list, dict)):
            if depth > MAX_DEPTH:
                return "too_deep"
            if isinstance(value, list) and len(value) > MAX_LIST_ITEMS:
                return "list_too_long"
            if isinstance(value, dict) and len(value) > MAX_OBJECT_KEYS:
                return "too_many_keys"
            for item in (value if isinstance(value, list) else value.values()):
                reason = walk(item, depth + 1)
                if reason:
                    return reason
        return None

    for value in obj.values():
        reason = walk(value, 2)
        if reason:
            return reason
    return None


def reference_event(kind: str, obj) -> object:
    """Straightforward re-statement of the rules of issue 2 for exposures and clicks."""
    if not isinstance(obj, dict):
        return Invalid("not_an_object")
    if reference_structure(obj, entity=False):
        return Invalid(reference_structure(obj, entity=False))
    values = {}
    fields = ["event_id", "ts", "user_id", "item_id", "impression_id"]
    if kind == "exposures":
        fields += ["position", "context"]
    for name in fields:
        value = obj.get(name)
        if name == "ts":
            if value is None:
                return Invalid("missing_field:ts")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return Invalid("wrong_type:ts")
            if not math.isfinite(value):
                return Invalid("non_finite:ts")
            values[name] = float(value)
        elif name == "position":
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    return Invalid("wrong_type:position")
                if value < 0:
                    return Invalid("out_of_range:position")
            values[name] = value
        elif name == "context":
            if value is not None and not isinstance(value, dict):
                return Invalid("wrong_type:context")
            values[name] = value
        else:
            if value is None:
                return Invalid(f"missing_field:{name}")
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                return Invalid(f"wrong_type:{name}")
            value = str(value)
            if not 1 <= len(value) <= 256:
                return Invalid(f"invalid_id:{name}")
            values[name] = value
    extra = {k: v for k, v in obj.items() if k not in fields} or None
    cls = Exposure if kind == "exposures" else Click
    return cls(**values, extra=extra)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=300))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
field_values = st.one_of(json_values, st.sampled_from(["", "u" * 256, "u" * 257, 0, -1, 3]))
record_objects = st.dictionaries(
    st.sampled_from(["event_id", "ts", "user_id", "item_id", "impression_id", "position",
                     "context", "other"]), field_values, max_size=8)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(["exposures", "clicks"]), obj=st.one_of(record_objects, json_values),
       valid_base=st.booleans())
def test_decoder_agrees_with_reference(kind, obj, valid_base):
    if valid_base and isinstance(obj, dict):
        obj = {**EXPOSURE, **obj}  # mostly-valid records reach the later rules
    assert decode(kind, None, orjson.dumps(obj)) == reference_event(kind, obj)


# --- properties -------------------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from(KINDS), key=st.one_of(st.none(), st.binary(max_size=300)),
       value=st.one_of(st.none(), st.binary(max_size=300)))
def test_arbitrary_bytes_never_raise_and_reasons_are_bounded(kind, key, value):
    result = decode(kind, key, value)
    if isinstance(result, Invalid):
        assert result.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), obj=json_values)
def test_arbitrary_json_never_raises(kind, obj):
    result = decode(kind, b"u1", orjson.dumps(obj))
    assert not isinstance(result, Invalid) or result.reason in REASONS


ids = st.one_of(st.text(min_size=1, max_size=256), st.integers(0, 2 ** 63 - 1).map(str))
finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(e=st.builds(Exposure, ids, finite, ids, ids, ids, st.none() | st.integers(0, 10 ** 6),
                   st.none() | st.dictionaries(st.text(max_size=5), json_scalars, max_size=3)))
def test_exposure_round_trips_through_json(e):
    assert decode("exposures", e.key(), e.to_json()) == e


def test_json_module_output_decodes_like_orjson_output():
    assert decode("clicks", None, json.dumps(CLICK).encode()) == decode("clicks", None, dumps(CLICK))


def test_reasons_never_contain_raw_values():
    reasons = {decode("clicks", None, with_fields(CLICK, user_id=v)).reason
               for v in ["", "x" * 300, 1.5, [1], {"a": 1}, True]}
    assert reasons <= REASONS
    assert reasons == {"invalid_id:user_id", "wrong_type:user_id"}


# --- input limits (issue 15): each over-limit record gets its own reason, never an exception ---

def nested(depth: int):
    """A value that makes a record ``depth`` containers deep (the record is depth 1)."""
    value = "leaf"
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("kind, base, field", [
    ("exposures", EXPOSURE, "context"), ("clicks", CLICK, "anything"), ("items", ITEM, "features")])
def test_nesting_up_to_the_limit_is_valid_and_beyond_it_is_too_deep(kind, base, field):
    key = b"i1" if kind == "items" else None
    fits = nested(MAX_DEPTH)
    if field in ("context", "features") and not isinstance(fits, dict):
        fits = {"k": nested(MAX_DEPTH - 1)}
    assert not isinstance(decode(kind, key, with_fields(base, **{field: fits})), Invalid)
    deep = {"k": fits}
    assert decode(kind, key, with_fields(base, **{field: deep})) == Invalid("too_deep")


def test_lists_up_to_the_limit_are_valid_and_longer_ones_are_list_too_long():
    fits = {**ITEM["features"], "genres": ["g"] * MAX_LIST_ITEMS}
    assert decode("items", b"i1", with_fields(ITEM, features=fits)).features == fits
    too_long = {"genres": ["g"] * (MAX_LIST_ITEMS + 1)}
    assert decode("items", b"i1", with_fields(ITEM, features=too_long)) == Invalid("list_too_long")
    assert decode("clicks", None, with_fields(CLICK, tags=[[0] * (MAX_LIST_ITEMS + 1)])) == \
        Invalid("list_too_long")


def test_feature_counts_fields_and_nested_keys_are_bounded():
    features = {f"f{n}": n for n in range(MAX_FEATURES)}
    assert decode("users", b"u1", dumps({"user_id": "u1", "ts": 1, "features": features})).features == features
    features[f"f{MAX_FEATURES}"] = 0
    assert decode("users", b"u1", dumps({"user_id": "u1", "ts": 1, "features": features})) == \
        Invalid("too_many_features")
    extra = {f"x{n}": n for n in range(MAX_FIELDS - len(CLICK))}
    assert not isinstance(decode("clicks", None, dumps({**CLICK, **extra})), Invalid)
    assert decode("clicks", None, dumps({**CLICK, **extra, "one_more": 1})) == Invalid("too_many_fields")
    context = {f"c{n}": n for n in range(MAX_OBJECT_KEYS + 1)}
    assert decode("exposures", None, with_fields(EXPOSURE, context=context)) == Invalid("too_many_keys")
    assert decode("items", b"i1", with_fields(ITEM, features={"a": context})) == Invalid("too_many_keys")


def test_the_limit_reasons_are_distinct_documented_reasons():
    limits = {"too_large", "invalid_id:user_id", "invalid_key", "too_many_fields",
              "too_many_features", "too_deep", "list_too_long", "too_many_keys"}
    assert limits <= REASONS
    import recallstream.streaming.decoding as decoding
    for reason in limits - {"invalid_id:user_id"}:
        assert f"``{reason}``" in decoding.__doc__


def structure_ok(value, depth=1) -> bool:
    """Whether a decoded value keeps every limit (the property the decoder promises)."""
    if isinstance(value, list):
        return depth <= MAX_DEPTH and len(value) <= MAX_LIST_ITEMS and all(
            structure_ok(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return depth <= MAX_DEPTH and len(value) <= MAX_OBJECT_KEYS and all(
            structure_ok(item, depth + 1) for item in value.values())
    return True


# Values that reach the limits: deep containers from a few leaves, some leaves a list or an
# object of a size at a limit (only of scalars: widening nested containers would multiply).
short_scalars = json_scalars.filter(lambda v: not isinstance(v, str) or len(v) < 20)
big_leaves = st.one_of(
    st.tuples(short_scalars, st.sampled_from([MAX_LIST_ITEMS, MAX_LIST_ITEMS + 1]))
    .map(lambda pair: [pair[0]] * pair[1]),
    st.tuples(short_scalars, st.sampled_from([MAX_OBJECT_KEYS, MAX_OBJECT_KEYS + 1]))
    .map(lambda pair: {f"k{n}": pair[0] for n in range(pair[1])}))
wide_values = st.recursive(
    st.one_of(short_scalars, big_leaves),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), fields=st.dictionaries(st.text(max_size=8), wide_values, max_size=4),
       id_chars=st.sampled_from([1, MAX_ID_CHARS, MAX_ID_CHARS + 1]), valid_base=st.booleans())
def test_decoded_records_keep_every_limit_and_over_limit_ones_never_raise(kind, fields, id_chars, valid_base):
    entity = kind in ("items", "users")
    id_field = {"items": "item_id", "users": "user_id"}.get(kind, "user_id")
    base = ({id_field: "x" * id_chars, "ts": 1, "features": {}} if entity
            else {**(EXPOSURE if kind == "exposures" else CLICK), "user_id": "x" * id_chars})
    obj = {**base, **fields} if valid_base else fields
    if entity and valid_base and "features" in fields and not isinstance(fields["features"], dict):
        obj["features"] = {"value": fields["features"]}
    key = ("x" * id_chars).encode()
    result = decode(kind, key, dumps(obj))
    if isinstance(result, Invalid):
        assert result.reason in REASONS and result.reason != "decoder_error"
        return
    assert id_chars <= MAX_ID_CHARS and len(obj) <= MAX_FIELDS
    assert all(structure_ok(value, 2) for value in obj.values())
    if entity:
        assert len(result.features) <= MAX_FEATURES
    expected = reference_structure(obj, entity)
    assert expected is None  # the decoder accepted it, so the plain re-statement does too


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(KINDS), fields=st.dictionaries(st.text(max_size=8), wide_values, max_size=4))
def test_the_structure_reason_is_the_reference_one(kind, fields):
    entity = kind in ("items", "users")
    base = {"item_id" if kind == "items" else "user_id": "x", "ts": 1, "features": {}} if entity else dict(CLICK)
    obj = {**base, **fields}
    result = decode(kind, b"x", dumps(obj))
    expected = reference_structure(obj, entity)
    if expected is not None:
        assert result == Invalid(expected)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=2000))
def test_arbitrary_bytes_never_yield_a_decoder_error(kind, data):
    result = decode(kind, data[:10] or None, data)
    assert not isinstance(result, Invalid) or (result.reason in REASONS
                                               and result.reason != "decoder_error")
