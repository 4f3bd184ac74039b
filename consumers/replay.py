"""``recallstream replay``: publish a MovieLens dataset to Kafka as a stream of events.

The replay publishes, in this order:

1. every user profile to the users topic and every catalog item to the items
   topic (:class:`~recallstream.streaming.events.EntityRecord`, keyed by id), stamped with the
   exposure time of the first replayed rating, so the feature tables are known
   before the first event;
2. the ratings in timestamp order (ties in file order) as clicks, each preceded by
   the exposures of its simulated impression list (:mod:`recallstream.streaming.impressions`),
   keyed by user_id to the exposures and clicks topics.

Missing topics are created first (as ``recallstream topics create`` does).
``--rate`` paces exposures and clicks (the entity tables go out unpaced, they are
the starting state); ``--max`` sends as fast as the producer can. The producer
batches: no send waits for its acknowledgement, failures are counted through
callbacks and reported after the final flush.

Examples
--------
What the replay would publish, without a broker:

>>> from recallstream.streaming.movielens import MovieLens, make_ratings
>>> from recallstream.streaming.settings import Settings
>>> ml = MovieLens(make_ratings([("u1", "i2", 4.0, 20), ("u2", "i1", 5.0, 10)]),
...                users={"u1": {"age": 30}, "u2": {"age": 40}},
...                items={"i1": {"title": "A"}, "i2": {"title": "B"}}, source="example")
>>> plan = ReplayPlan(ml, exposures_per_click=1, seed=3)
>>> import orjson
>>> for topic, key, value in plan.records(Settings.resolve(environ={})):
...     record = orjson.loads(value)
...     print(topic, key.decode(), record["ts"], record.get("event_id", "-"), record.get("item_id"))
users u1 9.0 - None
users u2 9.0 - None
items i1 9.0 - i1
items i2 9.0 - i2
exposures u2 9.0 example-s3-1/e0 i1
exposures u2 9.0 example-s3-1/e1 i2
clicks u2 10.0 example-s3-1/c i1
exposures u1 19.0 example-s3-0/e0 i2
exposures u1 19.0 example-s3-0/e1 i1
clicks u1 20.0 example-s3-0/c i2
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from recallstream.consumers.usage import CommandError, UsageError, load_dataset, require_broker
from recallstream.streaming.events import EntityRecord
from recallstream.streaming.impressions import ImpressionSimulator
from recallstream.streaming.movielens import MovieLens
from recallstream.streaming.settings import Settings

DEFAULT_RATE = 2000.0  # events/s when neither --rate nor --max is given: a watchable stream
# Past the producer's delivery timeout (kafka-python's default: 120 s) every record sent
# has an outcome, unless the broker is gone: kafka-python 3.0 then waits for it forever.
FLUSH_TIMEOUT_S = 150.0

# The producer's pure-Python send path is the bottleneck of --max (about 20 us per record):
# big, lingering batches and no per-record metrics cut its cost; no compression, because
# the events are small JSON and the broker is usually local. acks='all' and idempotence
# stay on (make_producer's defaults) so that retries never duplicate an event.
PRODUCER_OPTIONS = dict(linger_ms=50, batch_size=512 * 1024, compression_type=None,
                        metrics_enabled=False)


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay of ``dataset`` publishes, in order, as ``(topic, key, value)`` bytes.

    Parameters
    ----------
    dataset : MovieLens
        Ratings, users and items to publish.
    limit : int, optional
        Replay only the first ``limit`` ratings in timestamp order.
    exposures_per_click : int
        Other items shown in each simulated impression list.
    seed : int
        Seed of the impression simulation.
    name : str, optional
        Dataset name used in event ids (default: the dataset's source).
    skip : int
        Leave out the exposures and clicks of the first ``skip`` ratings (the
        second part of a replay split in two; the catalog is published again).

    Examples
    --------
    See the module docstring.
    """

    dataset: MovieLens
    limit: int | None = None
    exposures_per_click: int = 3
    seed: int = 2020
    name: str | None = None
    skip: int = 0

    def __post_init__(self):
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.skip < 0:
            raise ValueError(f"skip must be >= 0, got {self.skip}")

    def order(self) -> np.ndarray:
        """Indices of the ratings replayed, in replay order."""
        return self.dataset.time_order()[:self.limit]

    @property
    def num_clicks(self) -> int:
        return max(0, len(self.order()) - self.skip)

    @property
    def num_exposures(self) -> int:
        return self.num_clicks * (self.exposures_per_click + 1)

    def simulator(self) -> ImpressionSimulator:
        prefix = f"{self.name or self.dataset.source}-s{self.seed}-"
        return ImpressionSimulator(list(self.dataset.items), self.exposures_per_click,
                                   self.seed, id_prefix=prefix)

    def entity_time(self) -> float:
        """The event time of the users and items: just before the first replayed exposure."""
        order = self.order()
        first = self.dataset.ratings["timestamp"][order[0]] if len(order) else 0
        return float(first) - self.simulator().lead_s

    def entity_records(self, settings: Settings) -> Iterator[tuple[str, bytes, bytes]]:
        """The users, then the items, stamped :meth:`entity_time`."""
        ts = self.entity_time()
        for kind, topic, table in (("users", settings.topic_users, self.dataset.users),
                                   ("items", settings.topic_items, self.dataset.items)):
            for entity_id, features in table.items():
                record = EntityRecord(kind, entity_id, ts, features)
                yield topic, record.key(), record.to_json()

    def event_records(self, settings: Settings) -> Iterator[tuple[str, bytes, bytes]]:
        """Per rating in replay order: its exposures, then its click."""
        order = self.order()
        ratings = self.dataset.ratings[order]
        events = self.simulator().events(order, ratings["user_id"].tolist(),
                                         ratings["item_id"].tolist(),
                                         ratings["timestamp"].tolist())
        exposures_topic, clicks_topic = settings.topic_exposures, settings.topic_clicks
        for exposures, click in itertools.islice(events, self.skip, None):
            key = click.key()  # the same user for the whole list
            for exposure in exposures:
                yield exposures_topic, key, exposure.to_json()
            yield clicks_topic, key, click.to_json()

    def records(self, settings: Settings) -> Iterator[tuple[str, bytes, bytes]]:
        """All records: :meth:`entity_records` then :meth:`event_records`."""
        yield from self.entity_records(settings)
        yield from self.event_records(settings)


def send_entity_records(producer, plan: ReplayPlan, settings: Settings, on_error) -> None:
    """Send the plan's users and items, each stamped with its event time as its record time
    (the joiner's examples carry their click's: the worker releases both in record-time
    order); ``on_error(key)`` gives the errback of the record with that key."""
    entity_ms = int(plan.entity_time() * 1000)
    for topic, key, value in plan.entity_records(settings):
        producer.send(topic, key=key, value=value, timestamp_ms=entity_ms).add_errback(on_error(key))


class Pacer:
    """Sleeps so that ``count`` events take at least ``count / rate`` seconds.

    Parameters
    ----------
    rate : float or None
        Events per second; None means no pacing.

    Examples
    --------
    >>> pacer = Pacer(rate=1000.0)
    >>> start = time.monotonic(); pacer.wait_for(50); round(time.monotonic() - start, 2) >= 0.05
    True
    """

    def __init__(self, rate: float | None):
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.start = time.monotonic()

    def wait_for(self, count: int) -> None:
        """Block until ``count`` events are due since the pacer started."""
        if self.rate is None:
            return
        ahead = count / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


@dataclass
class ReplaySummary:
    """Counts of what a replay published, and how fast.

    Examples
    --------
    >>> ReplaySummary("ml-100k", 2, 3, 1, 4, 0.5).as_dict()["events_per_s"]
    10.0
    """

    dataset: str
    users: int
    items: int
    clicks: int
    exposures: int
    seconds: float
    failed: int = 0
    first_error: str | None = None

    def as_dict(self) -> dict:
        events = self.clicks + self.exposures
        return {"dataset": self.dataset, "users": self.users, "items": self.items,
                "clicks": self.clicks, "exposures": self.exposures, "failed": self.failed,
                "first_error": self.first_error, "seconds": round(self.seconds, 3),
                "events_per_s": round(events / self.seconds, 1) if self.seconds > 0 else None}


class ReplayStalled(CommandError):
    """The broker stopped taking or acknowledging the replay's records (it is gone, or
    cannot store them): the replay gives up with this message instead of waiting forever."""


def publish(plan: ReplayPlan, settings: Settings, *, rate: float | None = None,
            progress: bool = True, producer=None,
            flush_timeout_s: float = FLUSH_TIMEOUT_S) -> ReplaySummary:
    """Send the records of ``plan`` to Kafka, flush, and count what was sent.

    Parameters
    ----------
    plan : ReplayPlan
        What to publish.
    settings : Settings
        Broker and topic names.
    rate : float, optional
        Exposures plus clicks per second; None sends as fast as possible.
    progress : bool
        Show a progress bar of clicks on stderr.
    producer : KafkaProducer, optional
        Producer to use (closed by the caller); default a replay-tuned one, closed here.
    flush_timeout_s : float
        Longest wait for the broker to acknowledge the records sent, at the end.

    Returns
    -------
    ReplaySummary
        ``failed`` counts records the broker did not acknowledge, ``first_error``
        describes the first such failure.

    Raises
    ------
    ReplayStalled
        The broker took no more records for the producer's ``max_block_ms``, or
        acknowledged none of the last ones within ``flush_timeout_s``.

    Examples
    --------
    With a broker, see tests/test_replay_kafka.py.
    """
    from kafka.errors import KafkaTimeoutError
    from tqdm import tqdm

    from recallstream.streaming.kafka_io import make_producer

    own_producer = producer is None
    if own_producer:
        producer = make_producer(settings, **PRODUCER_OPTIONS)
    failures: list[BaseException] = []
    start = time.monotonic()
    stalled = False
    try:
        send_entity_records(producer, plan, settings, lambda key: failures.append)
        pacer = Pacer(rate)
        events = 0
        per_list = plan.exposures_per_click + 2  # its exposures and the click
        with tqdm(total=plan.num_clicks, unit="click", file=sys.stderr, disable=not progress,
                  mininterval=0.5, smoothing=0.1) as bar:
            for topic, key, value in plan.event_records(settings):
                producer.send(topic, key=key, value=value).add_errback(failures.append)
                events += 1
                if events % per_list == 0:  # a click closes each list
                    bar.update(1)
                    pacer.wait_for(events)
        producer.flush(timeout=flush_timeout_s)
    except KafkaTimeoutError as error:
        stalled = True
        raise ReplayStalled(
            f"the broker ({settings.bootstrap_servers}) stopped taking or acknowledging the "
            f"replay's records ({error}); is it still running? {len(failures)} records had "
            f"failed before") from None
    finally:
        if own_producer:
            _close(producer, abandon=stalled)
    return ReplaySummary(plan.name or plan.dataset.source, len(plan.dataset.users),
                         len(plan.dataset.items), plan.num_clicks, plan.num_exposures,
                         time.monotonic() - start, failed=len(failures),
                         first_error=repr(failures[0]) if failures else None)


def _close(producer, abandon: bool) -> None:
    if abandon:
        # kafka-python 3.0's close(timeout) raises while records are pending, and so does its
        # __del__ later: fail the records a gone broker will never acknowledge first, as its
        # own forced close does (the sender thread aborts every incomplete batch).
        producer._sender.force_close()
    producer.close(timeout=30.0 if abandon else None)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay", parents=[subparsers.settings_parent],
        help="publish MovieLens users, items, and ratings as exposures + clicks to Kafka",
        description=__doc__.split("\n\n")[0] + " The impression simulation is seeded by --seed.")
    parser.add_argument("--dataset", choices=["ml-100k", "ml-1m"], default="ml-100k")
    parser.add_argument("--data-dir", default=None,
                        help="folder with GroupLens ml-100k/ml-1m files (default: the ml-100k "
                             "files of the recbole 1.2.1 wheel, downloaded once and cached)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="replay only the first N ratings in timestamp order")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, metavar="EVENTS_PER_S",
                      help=f"exposures + clicks per second (default {DEFAULT_RATE:g})")
    pace.add_argument("--max", action="store_true", help="send as fast as possible")
    parser.add_argument("--skip", type=int, default=0, metavar="N",
                        help="leave out the events of the first N ratings (a replay in two parts)")
    parser.add_argument("--exposures-per-click", type=int, default=3, metavar="K",
                        help="other items exposed with each clicked item (default 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args, settings) -> int:
    from recallstream.consumers.cli import print_json
    from recallstream.streaming.kafka_io import create_topics

    rate = None if args.max else (DEFAULT_RATE if args.rate is None else args.rate)
    if rate is not None and not rate > 0:
        raise UsageError(f"--rate must be positive, got {rate}")
    dataset = load_dataset(args.dataset, args.data_dir)
    try:
        plan = ReplayPlan(dataset, limit=args.limit, skip=args.skip,
                          exposures_per_click=args.exposures_per_click,
                          seed=settings.seed, name=args.dataset)
        plan.simulator()  # validates K against the catalog before anything is sent
        require_broker(settings)
        # Idempotent; without it the broker could auto-create the topics without compaction
        # and with a default partition count.
        create_topics(settings)
    except ValueError as error:
        raise UsageError(str(error)) from None
    summary = publish(plan, settings, rate=rate, progress=not args.no_progress)
    if args.json:
        print_json(summary.as_dict())
    else:
        for name, value in summary.as_dict().items():
            print(f"{name:<13} {value}")
    if summary.failed:
        raise CommandError(f"the broker did not acknowledge {summary.failed} records; "
                           f"the first error: {summary.first_error}")
    return 0
