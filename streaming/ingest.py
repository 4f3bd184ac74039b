"""The worker's front stage: Kafka records in, joined positives and entity changes out.

:class:`StreamIngestor` reads every partition of the exposures, clicks, items
and users topics with manual assignment, and for each record:

- decodes it (``recallstream.streaming.decoding``); an invalid one becomes a dead letter
  (``recallstream.streaming.dead_letters``) and is counted by reason;
- applies an item or user record to its in-memory feature table (id to
  features; a tombstone removes the id), in offset order, and reports it;
- feeds an exposure or a click to the :class:`~recallstream.streaming.joiner.ClickJoiner`,
  with the partition number as the join lane (the topics are co-partitioned);
- records the partition's next offset.

Within one :meth:`StreamIngestor.poll`, records are handled by kind (items,
users, exposures, then clicks) so that catalog changes precede the clicks on
them and a click usually finds its exposure at once. Dead letters are flushed
(and their delivery checked) before ``poll`` returns, so :meth:`offsets` never
covers a record whose dead letter might be lost.

Exactly-once: ``offsets()`` and ``state_dict()`` describe everything handled
by the polls so far, positives included. The caller must therefore checkpoint
them together with the effects of *all* returned positives (e.g. flush its
minibatcher and train before checkpointing). Restoring that state with
:meth:`StreamIngestor.load_state_dict` seeks every partition to its saved
offset, so nothing is handled twice or skipped. Dead letters produced after
the last checkpoint are produced again after a crash (at least once); their
key ``topic:partition:offset`` identifies the copies.

Examples
--------
With a broker (see tests/test_ingest_kafka.py)::

    ingestor = StreamIngestor(settings)
    batch = ingestor.poll(timeout_s=0.5)
    batch.positives, batch.entities, ingestor.offsets(), ingestor.counters()
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from recallstream.streaming.alignment import RecordAligner
from recallstream.streaming.dead_letters import dead_letter_key, dead_letter_record
from recallstream.streaming.decoding import Invalid, decode
from recallstream.streaming.events import Click, EntityRecord, Exposure, Tombstone
from recallstream.streaming.joiner import ClickJoiner, Positive
from recallstream.streaming.kafka_io import (DEAD_LETTERS_MAX_MESSAGE_BYTES, make_consumer, make_producer,
                                partitions_of)
from recallstream.streaming.settings import Settings

_STATE_VERSION = 1
# With an aligner: records handed on per poll at most (whole windows, so a poll may exceed
# it by one window).
ALIGNED_RECORDS_PER_POLL = 2_000
# Bytes fetched per partition and request: small, so that every fetch brings a little of
# each partition and the aligner never waits long for a lagging one (a larger record still
# comes whole: the broker always returns at least one record batch).
FETCH_BYTES_PER_PARTITION = 256 * 1024
# Handling order of the kinds within one poll (see the module docstring).
_KIND_ORDER = {"items": 0, "users": 1, "exposures": 2, "clicks": 3}


@dataclass(slots=True)
class Ingested:
    """What one poll produced.

    Attributes
    ----------
    positives : list of Positive
        Clicks ready for training, joined to their exposure or orphans.
    entities : list of EntityRecord or Tombstone
        Item and user changes applied to the feature tables, in order.
    records : int
        Raw records handled (valid or not).

    Examples
    --------
    >>> Ingested().records
    0
    """

    positives: list[Positive] = field(default_factory=list)
    entities: list[EntityRecord | Tombstone] = field(default_factory=list)
    records: int = 0


def topic_kinds(settings: Settings) -> dict[str, str]:
    """Topic name to record kind, for the four event topics of ``settings``.

    Examples
    --------
    >>> topic_kinds(Settings.resolve(environ={"RECALLSTREAM_TOPIC_CLICKS": "c"}))["c"]
    'clicks'
    """
    return {settings.topic_exposures: "exposures", settings.topic_clicks: "clicks",
            settings.topic_items: "items", settings.topic_users: "users"}


class StreamIngestor:
    """Consume, validate, dead-letter, join, and track offsets (see the module docstring).

    Parameters
    ----------
    settings : Settings
        Broker, topic names and ``join_window_s``.
    consumer : KafkaConsumer, optional
        Default: ``make_consumer(settings, group_id=settings.consumer_group)``; the
        group is only used by :meth:`commit` (for lag monitoring), never joined.
    producer : KafkaProducer, optional
        Producer of dead letters (default: ``make_producer`` with
        ``max_request_size`` raised for dead letters of the largest records).
    joiner : ClickJoiner, optional
        Default: ``ClickJoiner(settings.join_window_s)``.
    aligner : RecordAligner, optional
        When given, :meth:`poll` hands records on in timestamp windows fixed by
        the logs (``recallstream.streaming.alignment``), so the positives come out in the same
        order however the fetches interleave; records fetched but not yet released
        stay in the aligner and are not covered by :meth:`offsets`.

    Attributes
    ----------
    items, users : dict of str to dict
        The feature tables: id to the features of its latest record.
    joiner : ClickJoiner

    Notes
    -----
    The ingestor owns its consumer and producer: :meth:`close` closes both.
    Every partition starts at its beginning unless :meth:`seek` or
    :meth:`load_state_dict` says otherwise (committed group offsets are not
    used: the checkpoint is the truth).
    """

    def __init__(self, settings: Settings, consumer: KafkaConsumer | None = None,
                 producer: KafkaProducer | None = None, joiner: ClickJoiner | None = None,
                 aligner: RecordAligner | None = None) -> None:
        self.settings = settings
        self._kinds = topic_kinds(settings)
        self._consumer = consumer or make_consumer(
            settings, group_id=settings.consumer_group,
            max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION)
        self._producer = producer or make_producer(
            settings, max_request_size=DEAD_LETTERS_MAX_MESSAGE_BYTES)
        self.joiner = joiner or ClickJoiner(settings.join_window_s)
        self.items: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self._tables = {"items": self.items, "users": self.users}
        self._next: dict[TopicPartition, int] = {}
        self._seen = Counter()
        self._dead_lettered: Counter[str] = Counter()
        self._partitions = [tp for topic in self._kinds for tp in partitions_of(self._consumer, topic)]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)
        self._aligner = aligner
        if aligner is not None:
            aligner.track(self._partitions)

    def poll(self, timeout_s: float = 1.0, max_records: int | None = None) -> Ingested:
        """Fetch and handle the next records (waiting up to ``timeout_s`` for some).

        Raises
        ------
        kafka.errors.KafkaError
            If a dead letter could not be delivered; the offsets then do not
            cover the records of this poll, but the in-memory state does, so
            the caller must restart from its last checkpoint.
        """
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        if self._aligner is None:
            return self.handle(batches)
        self._aligner.add(batches)
        out = Ingested()
        for group in self._aligner.release(caught_up=self._fetched_to_end,
                                           max_records=ALIGNED_RECORDS_PER_POLL):
            handled = self.handle(group)
            out.positives += handled.positives
            out.entities += handled.entities
            out.records += handled.records
        return out

    def unstick(self) -> bool:
        """Wake a :meth:`poll` that kafka-python 3.0.12 lost track of; True if it could.

        Rarely, under heavy load, ``KafkaConsumer.poll`` blocks forever: its
        thread waits for a task of the client's I/O thread that never completes
        (seen here in ``Fetcher.fetch_records``). Failing the client's pending
        cross-thread waits with a timeout makes that poll return as if no record
        had arrived; nothing is skipped, the next poll fetches from the same
        position. This reaches into the client's internals, so it does nothing
        if they are not there.
        """
        from kafka.errors import KafkaTimeoutError

        fail = getattr(getattr(self._consumer, "_net", None), "_fail_pending_waiters", None)
        if fail is None:
            return False
        fail(KafkaTimeoutError("woken by recallstream: the poll was stuck"))
        return True

    def caught_up(self) -> bool:
        """True when every partition is read to its last known end and nothing is
        fetched but unhandled."""
        buffered = self._aligner.buffered() if self._aligner is not None else 0
        return buffered == 0 and all(self._fetched_to_end(tp) for tp in self._partitions)

    def _fetched_to_end(self, tp: TopicPartition) -> bool:
        highwater = self._consumer.highwater(tp)
        return highwater is not None and self._consumer.position(tp) >= highwater

    def handle(self, batches: Mapping[TopicPartition, Iterable[Any]]) -> Ingested:
        """Handle records already fetched, as :meth:`poll` does (records need
        ``topic``, ``partition``, ``offset``, ``key`` and ``value``)."""
        out = Ingested()
        deliveries = []
        next_offsets: dict[TopicPartition, int] = {}
        for tp in sorted(batches, key=lambda tp: (_KIND_ORDER[self._kinds[tp.topic]], tp.partition)):
            kind = self._kinds[tp.topic]
            for record in batches[tp]:
                decoded = decode(kind, record.key, record.value)
                if decoded.__class__ is Invalid:
                    deliveries.append(self._dead_letter(record, decoded.reason))
                else:
                    self._apply(decoded, tp.partition, out)
                out.records += 1
                next_offsets[tp] = record.offset + 1
        if deliveries:
            self._producer.flush()
            for delivery in deliveries:
                delivery.get(timeout=0)  # raises if the broker did not take it
        self._next.update(next_offsets)
        return out

    def offsets(self) -> dict[str, dict[int, int]]:
        """Topic to partition to the next offset to handle, for every partition handled or sought."""
        out: dict[str, dict[int, int]] = {}
        for tp, offset in sorted(self._next.items()):
            out.setdefault(tp.topic, {})[tp.partition] = offset
        return out

    def seek(self, offsets: Mapping[str, Mapping[int | str, int]]) -> None:
        """Resume from ``offsets`` (topic to partition to next offset, as :meth:`offsets`).

        Partitions not named keep their position. Partition numbers may be
        strings (as after a JSON round trip).
        """
        assigned = set(self._partitions)
        for topic, partitions in offsets.items():
            for partition, offset in partitions.items():
                tp = TopicPartition(topic, int(partition))
                if tp not in assigned:
                    raise ValueError(f"{topic}[{partition}] is not one of the consumed partitions")
                self._consumer.seek(tp, offset)
                self._next[tp] = offset
        if self._aligner is not None:
            self._aligner.clear()  # buffered records were fetched from the old positions

    def counters(self) -> dict[str, Any]:
        """``exposures_seen``, ``clicks_seen``, ``entity_records``, ``tombstones`` (valid
        records), ``dead_lettered`` (reason to count), ``dead_lettered_total``, and the
        joiner's ``joined``, ``orphans``, ``duplicate_exposures``, ``duplicate_clicks``,
        ``waiting_clicks``."""
        joiner = self.joiner.counters
        return {
            "exposures_seen": self._seen["exposures"], "clicks_seen": self._seen["clicks"],
            "entity_records": self._seen["entity_records"], "tombstones": self._seen["tombstones"],
            "dead_lettered": dict(self._dead_lettered),
            "dead_lettered_total": sum(self._dead_lettered.values()),
            "joined": joiner["joined"], "orphans": joiner["orphans"],
            "duplicate_exposures": joiner["duplicate_exposures"],
            "duplicate_clicks": joiner["duplicate_clicks"],
            "waiting_clicks": self.joiner.waiting_clicks(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Offsets, feature tables, join state and counters, as plain JSON-able structures."""
        # Partition numbers become strings: JSON object keys are strings.
        offsets = {topic: {str(p): o for p, o in parts.items()} for topic, parts in self.offsets().items()}
        return {"version": _STATE_VERSION, "offsets": offsets,
                "items": dict(self.items), "users": dict(self.users),
                "joiner": self.joiner.state_dict(),
                "seen": dict(self._seen), "dead_lettered": dict(self._dead_lettered)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` and seek every saved partition to its offset."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported ingest state version {state.get('version')!r}")
        self.items.clear()
        self.items.update(state["items"])
        self.users.clear()
        self.users.update(state["users"])
        self.joiner.load_state_dict(state["joiner"])
        self._seen = Counter(state["seen"])
        self._dead_lettered = Counter(state["dead_lettered"])
        self.seek(state["offsets"])

    def commit(self, offsets: Mapping[str, Mapping[int | str, int]] | None = None) -> None:
        """Commit ``offsets`` (default: :meth:`offsets`) to the consumer group, for lag
        monitoring only; call it after the checkpoint that holds them."""
        offsets = self.offsets() if offsets is None else offsets
        self._consumer.commit({
            TopicPartition(topic, int(partition)): OffsetAndMetadata(offset, "", -1)
            for topic, partitions in offsets.items() for partition, offset in partitions.items()})

    def close(self) -> None:
        """Flush pending dead letters and close the producer and the consumer."""
        self._producer.flush()
        self._producer.close()
        self._consumer.close()

    def _apply(self, event: Exposure | Click | EntityRecord | Tombstone, partition: int,
               out: Ingested) -> None:
        cls = event.__class__
        if cls is Exposure:
            self._seen["exposures"] += 1
            out.positives.extend(self.joiner.add_exposure(event, lane=partition))
        elif cls is Click:
            self._seen["clicks"] += 1
            out.positives.extend(self.joiner.add_click(event, lane=partition))
        elif cls is EntityRecord:
            self._seen["entity_records"] += 1
            self._tables[event.kind][event.entity_id] = event.features
            out.entities.append(event)
        else:
            self._seen["tombstones"] += 1
            self._tables[event.kind].pop(event.entity_id, None)
            out.entities.append(event)

    def _dead_letter(self, record: Any, reason: str):
        self._dead_lettered[reason] += 1
        return self._producer.send(
            self.settings.topic_dead_letters,
            key=dead_letter_key(record.topic, record.partition, record.offset),
            value=dead_letter_record(record.topic, record.partition, record.offset, reason,
                                     record.value, record.key))
