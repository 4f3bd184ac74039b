"""The worker's front stage: Kafka records in, joined positives and entity changes out.

:class:`StreamIngestor` composes four parts, each in its own module:

- :class:`~recallstream.streaming.kafka_source.KafkaSource` reads every partition
  of the examples (``read_committed``: the joiner's committed transactions only),
  items and users topics and tracks the next offset of each;
- an optional :class:`~recallstream.streaming.alignment.RecordAligner` releases
  records across partitions in windows of record time, so the order does not
  depend on how fetches interleave;
- :class:`~recallstream.streaming.record_router.RecordRouter` decodes each record
  and routes it: an invalid one to a dead letter, an item or user record to the
  entity changes it reports (the feature tables,
  :mod:`recallstream.streaming.entity_tables`, are the trainer's to apply), an
  example (a click the joiner job joined to its exposure, or an orphan) to the
  positives;
- :class:`~recallstream.streaming.dead_letter_sink.DeadLetterSink` produces the
  dead letters, confirmed before ``poll`` returns, so :meth:`StreamIngestor.offsets`
  never covers a record whose dead letter might be lost.

Exactly-once: ``offsets()`` and ``state_dict()`` describe everything handled
by the polls so far, positives and entity changes included. The caller must
therefore checkpoint them together with the effects of *all* returned results
(e.g. flush its minibatcher and train before checkpointing). Restoring that
state with :meth:`StreamIngestor.load_state_dict` seeks every partition to its
saved offset, so nothing is handled twice or skipped. Dead letters produced
after the last checkpoint are produced again after a crash (at least once);
their key ``topic:partition:offset`` identifies the copies.

Examples
--------
With a broker (see tests/test_ingest_kafka.py)::

    ingestor = StreamIngestor(settings)
    batch = ingestor.poll(timeout_s=0.5)
    batch.positives, batch.entities, ingestor.offsets(), ingestor.counters()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from recallstream.streaming.alignment import RecordAligner
from recallstream.streaming.dead_letter_sink import DeadLetterSink
from recallstream.streaming.kafka_source import KafkaSource, as_state
from recallstream.streaming.record_router import Ingested, RecordRouter
from recallstream.streaming.settings import Settings

__all__ = ["Ingested", "StreamIngestor", "topic_kinds"]

# 2: the feature tables left the ingestor's state (the trainer keeps them).
# 3: the worker reads the joiner's examples; the join state left the ingestor.
_STATE_VERSION = 3
# With an aligner: records handed on per poll at most (whole windows, so a poll may exceed
# it by one window).
ALIGNED_RECORDS_PER_POLL = 2_000


def topic_kinds(settings: Settings) -> dict[str, str]:
    """Topic name to record kind, for the topics the worker reads.

    Examples
    --------
    >>> topic_kinds(Settings.resolve(environ={"RECALLSTREAM_TOPIC_EXAMPLES": "x"}))["x"]
    'examples'
    """
    return {settings.topic_examples: "examples", settings.topic_items: "items",
            settings.topic_users: "users"}


class StreamIngestor:
    """Consume, validate, dead-letter, and track offsets (see the module docstring).

    Parameters
    ----------
    settings : Settings
        Broker and topic names.
    consumer : KafkaConsumer, optional
        Default: that of :meth:`KafkaSource.connect`.
    producer : KafkaProducer, optional
        Producer of dead letters (default: that of :meth:`DeadLetterSink.connect`).
    aligner : RecordAligner, optional
        When given, :meth:`poll` hands records on in timestamp windows fixed by
        the logs, so the results come out in the same order however the fetches
        interleave; records fetched but not yet released stay in the aligner
        and are not covered by :meth:`offsets`.

    Notes
    -----
    The ingestor owns its consumer and producer: :meth:`close` closes both.
    """

    def __init__(self, settings: Settings, consumer: KafkaConsumer | None = None,
                 producer: KafkaProducer | None = None, aligner: RecordAligner | None = None) -> None:
        kinds = topic_kinds(settings)
        self._source = (KafkaSource(kinds, consumer) if consumer is not None
                        else KafkaSource.connect(settings, kinds))
        self._sink = (DeadLetterSink(settings.topic_dead_letters, producer) if producer is not None
                      else DeadLetterSink.connect(settings))
        self._router = RecordRouter(kinds)
        self._aligner = aligner
        if aligner is not None:
            aligner.track(self._source.partitions)

    @classmethod
    def aligned(cls, settings: Settings) -> "StreamIngestor":
        """The worker's ingestor: records released in windows of ``settings.align_window_ms``
        of record time, so that training never depends on how fetches interleave."""
        return cls(settings, aligner=RecordAligner(settings.align_window_ms))

    def poll(self, timeout_s: float = 1.0, max_records: int | None = None) -> Ingested:
        """Fetch and handle the next records (waiting up to ``timeout_s`` for some).

        Raises
        ------
        kafka.errors.KafkaError
            If a dead letter could not be delivered; the offsets then do not
            cover the records of this poll, but the join state does, so the
            caller must restart from its last checkpoint.
        """
        batches = self._source.fetch(timeout_s, max_records)
        if self._aligner is None:
            return self.handle(batches)
        self._aligner.add(batches)
        out = Ingested()
        for group in self._aligner.release(caught_up=self._fetched_to_end_memo(),
                                           max_records=ALIGNED_RECORDS_PER_POLL):
            out.extend(self.handle(group))
        return out

    def _fetched_to_end_memo(self) -> Callable[[TopicPartition], bool]:
        """:meth:`KafkaSource.fetched_to_end`, asked once per partition: the aligner asks
        for every window it releases, and the consumer's answer (its position) costs
        about 0.1 ms, more than handling a record; within one poll it cannot change
        but for a fetch response arriving meanwhile, which the next poll sees."""
        answers: dict[TopicPartition, bool] = {}

        def fetched_to_end(tp: TopicPartition) -> bool:
            if tp not in answers:
                answers[tp] = self._source.fetched_to_end(tp)
            return answers[tp]
        return fetched_to_end

    def handle(self, batches: Mapping[TopicPartition, Iterable[Any]]) -> Ingested:
        """Handle records already fetched, as :meth:`poll` does (records need
        ``topic``, ``partition``, ``offset``, ``key`` and ``value``)."""
        routed = self._router.route(batches)
        for record, reason in routed.dead_letters:
            self._sink.send(record, reason)
        self._sink.confirm()
        self._source.handled(routed.next_offsets)
        return routed.ingested

    def unstick(self) -> bool:
        """Wake a poll that kafka-python lost track of (:meth:`KafkaSource.unstick`)."""
        return self._source.unstick()

    def caught_up(self) -> bool:
        """True when every partition is read to its last known end and nothing is
        fetched but unhandled."""
        buffered = self._aligner.buffered() if self._aligner is not None else 0
        return buffered == 0 and all(self._source.fetched_to_end(tp) for tp in self._source.partitions)

    def offsets(self) -> dict[str, dict[int, int]]:
        """Topic to partition to the next offset to handle, for every partition handled or sought."""
        return self._source.offsets()

    def lag(self) -> dict[str, int]:
        """Records not yet handled, per topic (:meth:`KafkaSource.lag`; a partition read to
        its end with nothing held in the aligner is not behind)."""
        aligner = self._aligner
        return self._source.lag(lambda tp: aligner is None or aligner.buffered(tp) == 0)

    def seek(self, offsets: Mapping[str, Mapping[int | str, int]]) -> None:
        """Resume from ``offsets`` (as :meth:`KafkaSource.seek`)."""
        self._source.seek(offsets)
        if self._aligner is not None:
            self._aligner.clear()  # buffered records were fetched from the old positions

    def rewind(self, topic: str, offsets: Mapping[int | str, int]) -> None:
        """Read ``topic`` again from ``offsets`` (a reset to a snapshot: its cut); what
        was handled before comes again as ``Ingested.replayed``. Other partitions
        resume where they were: nothing fetched but unhandled is lost."""
        before = self._source.rewind(topic, {int(p): o for p, o in offsets.items()})
        self._router.replay(topic, before)
        if self._aligner is not None:
            self._aligner.clear()  # buffered records were fetched from the old positions

    def counters(self) -> dict[str, Any]:
        """The router's counters (:meth:`RecordRouter.counters`) and ``refetched``
        (records the client fetched a second time, dropped: :class:`KafkaSource`)."""
        return {**self._router.counters(), "refetched": self._source.refetched}

    def state_dict(self) -> dict[str, Any]:
        """Offsets and counters, as plain JSON-able structures."""
        return {"version": _STATE_VERSION, "offsets": as_state(self.offsets()),
                **self._router.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` and seek every saved partition to its offset."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported ingest state version {state.get('version')!r}")
        self._router.load_state_dict(state)
        self.seek(state["offsets"])

    def commit(self, offsets: Mapping[str, Mapping[int | str, int]] | None = None) -> None:
        """Commit offsets to the consumer group, for lag monitoring only
        (:meth:`KafkaSource.commit`); call it after the checkpoint that holds them."""
        self._source.commit(offsets)

    def close(self) -> None:
        """Flush pending dead letters and close the producer and the consumer."""
        self._sink.close()
        self._source.close()
