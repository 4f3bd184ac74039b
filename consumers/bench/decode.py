"""Decoding and validation speed: records/s for valid, invalid and mixed records, on one core.

Each mix is a list of raw (key, value) records built once (seeded); a run
decodes the whole list with ``recallstream.streaming.decoding.decode``. Figures are medians
over ``--runs`` runs of records per CPU second of this process (``process_time``):
on a shared machine wall time also counts other processes' turns on the core;
``valid_exposures_wall_per_s`` gives the wall-clock figure for comparison. ``orjson_loads_per_s`` is the bare JSON parse of the same
valid exposures, measured in the same run, so ``decode_vs_loads`` shows what
validation and event building cost on top of parsing. Target: at least
200,000 valid records/s.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from recallstream.consumers.usage import positive_int

TARGET_VALID_PER_S = 200_000
# Share of invalid records in the mixed stream (poison input is rare but real).
MIXED_INVALID_SHARE = 0.1


def add_arguments(parser) -> None:
    parser.add_argument("--records", type=positive_int, default=100_000,
                        help="records per mix and run")


def run(args, settings) -> dict[str, Any]:
    rng = random.Random(settings.seed)
    mixes = {
        "valid_exposures": ("exposures", [_exposure(rng, n) for n in range(args.records)]),
        "valid_clicks": ("clicks", [_click(rng, n) for n in range(args.records)]),
        "valid_items": ("items", [_item(rng, n) for n in range(args.records)]),
        "invalid_clicks": ("clicks", [_invalid_click(rng, n) for n in range(args.records)]),
        "mixed_clicks": ("clicks", [_invalid_click(rng, n) if rng.random() < MIXED_INVALID_SHARE
                                    else _click(rng, n) for n in range(args.records)]),
    }
    figures: dict[str, Any] = {}
    for name, (kind, records) in mixes.items():
        figures[f"{name}_per_s"] = _median_rate(lambda: _decode_all(kind, records), len(records),
                                                args.runs)
    exposures = mixes["valid_exposures"][1]
    figures["valid_exposures_wall_per_s"] = _median_rate(
        lambda: _decode_all("exposures", exposures), len(exposures), args.runs, time.perf_counter)
    values = [value for _, value in mixes["valid_exposures"][1]]
    figures["orjson_loads_per_s"] = _median_rate(lambda: _loads_all(values), len(values), args.runs)
    figures["decode_vs_loads"] = round(
        figures["valid_exposures_per_s"] / figures["orjson_loads_per_s"], 3)
    figures["valid_per_s_min"] = min(figures[f"valid_{k}_per_s"]
                                     for k in ("exposures", "clicks", "items"))
    figures["target_valid_per_s"] = TARGET_VALID_PER_S
    figures["meets_target"] = figures["valid_per_s_min"] >= TARGET_VALID_PER_S
    figures.update(records=args.records, runs=args.runs, mixed_invalid_share=MIXED_INVALID_SHARE)
    return figures


def _median_rate(work, count: int, runs: int, clock=time.process_time) -> int:
    rates = []
    for _ in range(runs):
        start = clock()
        work()
        rates.append(count / (clock() - start))
    return int(statistics.median(rates))


def _decode_all(kind: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    from recallstream.streaming.decoding import decode

    for key, value in records:
        decode(kind, key, value)


def _loads_all(values: list[bytes]) -> None:
    import orjson

    loads = orjson.loads
    for value in values:
        loads(value)


def _exposure(rng: random.Random, n: int) -> tuple[bytes, bytes]:
    from recallstream.streaming.events import Exposure

    user = str(rng.randrange(100_000))
    event = Exposure(f"e{n}", 1.7e9 + n * 0.01, user, str(rng.randrange(50_000)), f"imp{n // 5}",
                     n % 5, {"page": "home"} if n % 2 else None)
    return event.key(), event.to_json()


def _click(rng: random.Random, n: int) -> tuple[bytes, bytes]:
    from recallstream.streaming.events import Click

    event = Click(f"c{n}", 1.7e9 + n * 0.01, str(rng.randrange(100_000)),
                  str(rng.randrange(50_000)), f"imp{n}")
    return event.key(), event.to_json()


def _item(rng: random.Random, n: int) -> tuple[bytes, bytes]:
    from recallstream.streaming.events import EntityRecord

    record = EntityRecord("items", str(n), 1.7e9, {
        "title": f"Movie {n}", "release_year": 1950 + rng.randrange(50),
        "genres": rng.sample(["Drama", "Comedy", "Action", "Thriller", "Romance"], 2)})
    return record.key(), record.to_json()


def _invalid_click(rng: random.Random, n: int) -> tuple[bytes | None, bytes | None]:
    import orjson

    key, value = _click(rng, n)
    obj = orjson.loads(value)
    kind = n % 6
    if kind == 0:
        return key, value[: len(value) // 2]              # truncated JSON
    if kind == 1:
        return key, orjson.dumps({**obj, "ts": "yesterday"})
    if kind == 2:
        return key, orjson.dumps({k: v for k, v in obj.items() if k != "item_id"})
    if kind == 3:
        return key, orjson.dumps({**obj, "user_id": ""})
    if kind == 4:
        return key, b"\xff" + value                       # not UTF-8
    return key, orjson.dumps([obj])                       # not an object
