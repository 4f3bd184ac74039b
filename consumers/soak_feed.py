"""The soak's producer: MovieLens-100K passes with fresh event ids, paced, with poison.

:func:`soak_passes` cuts the clicks asked for into passes of at most
``pass_clicks`` ratings (in time order). Pass ``k`` is a
:class:`~recallstream.consumers.replay.ReplayPlan` named ``soak<k>``, so its event
ids (``soak<k>-s<seed>-...``) are new, and its event times are those of the
dataset shifted by ``k`` times the pass's span (whole days, plus one), so that event
time keeps moving forward across passes as the joiner, the worker's alignment and
its event-day resets expect.

:class:`SoakFeed` sends every pass (its users and items, then per rating its
exposures and its click) with one idempotent producer, at ``rate`` events per
second, and puts a poison record (:class:`~recallstream.consumers.poison.PoisonMaker`)
before about ``poison_rate`` of the events, into exposures or clicks. It counts
what the broker acknowledged: the clicks (with their ids) and the poison records.

Examples
--------
>>> from recallstream.streaming.movielens import MovieLens, make_ratings
>>> ml = MovieLens(make_ratings([("u1", "i1", 4.0, 86_400 * 3), ("u2", "i1", 4.0, 86_400 * 4)]),
...                users={}, items={"i1": {}, "i2": {}}, source="tiny")
>>> [(p.name, p.limit, int(p.dataset.ratings["timestamp"].min())) for p in soak_passes(ml, 5, 2, 1, 1)]
[('soak0', 2, 259200), ('soak1', 2, 432000), ('soak2', 1, 604800)]
"""

from __future__ import annotations

import dataclasses
import math
import threading

import orjson

from recallstream.consumers.poison import PoisonMaker
from recallstream.consumers.replay import (PRODUCER_OPTIONS, Pacer, ReplayPlan,
                                           send_entity_records)
from recallstream.streaming.movielens import MovieLens
from recallstream.streaming.settings import Settings

DAY_S = 86_400


def soak_passes(dataset: MovieLens, clicks: int, pass_clicks: int, seed: int,
                exposures_per_click: int = 3) -> list[ReplayPlan]:
    """The replay plans that make ``clicks`` clicks (see the module docstring)."""
    if clicks < 1 or pass_clicks < 1:
        raise ValueError(f"clicks and pass_clicks must be >= 1, got {clicks} and {pass_clicks}")
    pass_clicks = min(pass_clicks, len(dataset.ratings))
    order = dataset.time_order()[:pass_clicks]
    times = dataset.ratings["timestamp"][order]
    shift = (math.ceil((int(times.max()) - int(times.min())) / DAY_S) + 1) * DAY_S
    plans = []
    for k in range(math.ceil(clicks / pass_clicks)):
        ratings = dataset.ratings.copy()
        ratings["timestamp"] += k * shift
        plans.append(ReplayPlan(dataclasses.replace(dataset, ratings=ratings),
                                limit=min(pass_clicks, clicks - k * pass_clicks),
                                exposures_per_click=exposures_per_click, seed=seed,
                                name=f"soak{k}"))
    return plans


class SoakFeed:
    """Sends the passes with poison, paced, and counts what was acknowledged.

    Parameters
    ----------
    plans : list of ReplayPlan
        From :func:`soak_passes`.
    settings : Settings
        Broker and topics.
    rate : float
        Exposures, clicks and poison records per second.
    poison : PoisonMaker

    Attributes
    ----------
    clicks_sent, poison_sent : int
        Handed to the producer so far.
    failed : list
        ``(what, error)`` of every record the broker did not acknowledge.

    Examples
    --------
    Needs a broker: see tests/test_soak.py. Without sending anything:

    >>> from recallstream.streaming.movielens import MovieLens, make_ratings
    >>> ml = MovieLens(make_ratings([("u1", "i1", 4.0, 10)]), {}, {"i1": {}, "i2": {}}, "tiny")
    >>> feed = SoakFeed(soak_passes(ml, 1, 1, 0, exposures_per_click=1), Settings.resolve(environ={}), 100.0,
    ...                 PoisonMaker(0, 0.01))
    >>> feed.total_events, feed.clicks_produced(), feed.done.is_set()
    (3, 0, False)
    """

    def __init__(self, plans: list[ReplayPlan], settings: Settings, rate: float,
                 poison: PoisonMaker) -> None:
        self.plans = plans
        self.settings = settings
        self.rate = rate
        self.poison = poison
        self.clicks_sent = 0
        self.poison_sent = 0
        self.poison_kinds: dict[str, int] = {}
        self.failed: list[tuple[str, str]] = []
        self.click_ids: list[str] = []
        self.failed_click_ids: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.held, self.released = threading.Event(), threading.Event()

    def hold(self) -> None:
        """Stop sending (once what was handed to the producer is flushed) until :meth:`release`."""
        self.released.clear()
        self.held.set()

    def release(self) -> None:
        self.held.clear()
        self.released.set()

    @property
    def total_events(self) -> int:
        """Exposures and clicks of every pass (poison not included)."""
        return sum(p.num_exposures + p.num_clicks for p in self.plans)

    def run(self) -> None:
        """Send everything, flush, set :attr:`done` (a failure is kept in :attr:`error`)."""
        from recallstream.streaming.kafka_io import make_producer

        producer = make_producer(self.settings, **PRODUCER_OPTIONS)
        try:
            pacer, events, paced_from = Pacer(self.rate), 0, 0
            for plan in self.plans:
                self._send_entities(producer, plan)
                for topic, key, value in plan.event_records(self.settings):
                    if self.held.is_set():
                        producer.flush()
                        self.released.wait()
                        pacer, paced_from = Pacer(self.rate), events  # no burst after a hold
                    events += self._maybe_poison(producer, topic)
                    self._send_event(producer, topic, key, value)
                    events += 1
                    pacer.wait_for(events - paced_from)
            producer.flush()
        except BaseException as error:  # noqa: BLE001 - reported by the soak
            self.error = error
        finally:
            producer.close()
            self.done.set()

    def clicks_produced(self) -> int:
        """Clicks acknowledged (valid ones; poison is counted apart); while sending, the
        clicks handed to the producer."""
        return len(self.click_ids) - len(self.failed_click_ids)

    def produced_ids(self) -> set[str]:
        """Event ids of the acknowledged clicks."""
        return set(self.click_ids) - set(self.failed_click_ids)

    def poison_injected(self) -> int:
        """Poison records acknowledged."""
        return self.poison_sent - sum(1 for what, _ in self.failed if what == "poison")

    def _send_entities(self, producer, plan: ReplayPlan) -> None:
        send_entity_records(producer, plan, self.settings,
                            lambda key: self._failure("entity", key.decode()))

    def _send_event(self, producer, topic: str, key: bytes, value: bytes) -> None:
        if topic != self.settings.topic_clicks:
            producer.send(topic, key=key, value=value).add_errback(self._failure("exposure", ""))
            return
        event_id = orjson.loads(value)["event_id"]
        self.click_ids.append(event_id)
        self.clicks_sent += 1
        producer.send(topic, key=key, value=value).add_errback(self._failure("click", event_id))

    def _maybe_poison(self, producer, topic: str) -> int:
        made = self.poison.maybe()
        if made is None:
            return 0
        kind, key, value = made
        self.poison_sent += 1
        self.poison_kinds[kind] = self.poison_kinds.get(kind, 0) + 1
        producer.send(topic, key=key, value=value).add_errback(self._failure("poison", kind))
        return 1

    def _failure(self, what: str, what_id: str):
        def record(error) -> None:
            self.failed.append((what, repr(error)))
            if what == "click":
                self.failed_click_ids.append(what_id)
        return record
