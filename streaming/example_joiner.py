"""The joiner job: exposures and clicks in, one training example per click out, exactly once.

:class:`ExampleJoiner` consumes ``exposures`` and ``clicks`` in a consumer group
(co-partitioned by user id; the range assignor gives partition ``p`` of both topics
to the same process, and ``p`` is the join *lane* of
:class:`~recallstream.streaming.joiner.ClickJoiner`), and produces each click, joined
to its exposure or as an orphan, once to partition ``p`` of ``examples``
(:func:`example_record`). Undecodable records go to ``dead-letters`` with their reason.

Exactly once, with Kafka transactions. Each poll is one transaction of a
transactional producer: the examples and dead letters of the poll's records, one
record per lane touched to ``joiner-state`` (partition ``p``), and the consumed
offsets (``send_offsets_to_transaction`` with the consumer's group metadata as of the
poll that fetched the records, so a stale member is fenced, KIP-447: one that overran
``max_poll_interval_s`` has left the group meanwhile, and its transaction aborts) commit
together or not at all. A transaction
is never open across a ``poll``, so a rebalance never splits one.

The join state of a lane is rebuilt where it goes, from its state log: a lane's
state-log record is either a *snapshot* (the lane's whole join state and the
input offsets it covers; written on the lane's first transaction and every
``snapshot_every`` transactions after) or a *progress* record (the input offsets
after the transaction, and the offset of the snapshot it follows). The join is
deterministic given, per lane and per transaction, the exposures then the clicks
of that transaction; so the state after the last committed transaction is the
snapshot with the input between the progress boundaries fed again (outputs
dropped: they are committed already). A process that gets a partition pauses it,
restores the lane (waiting until the committed offsets and the state log agree:
a previous owner's transaction still open blocks both until it ends), seeks to
the restored offsets and resumes. A SIGKILL at any moment therefore neither
loses nor repeats an example for a ``read_committed`` reader.

Examples
--------
>>> from recallstream.streaming.events import Click, Exposure
>>> from recallstream.streaming.joiner import Positive
>>> value = example_record(Positive(Click("c1", 12.0, "u1", "i1", "m1"),
...                                 Exposure("e1", 10.0, "u1", "i1", "m1", 3, {"surface": "home"})), 0)
>>> example = parse_example(value)
>>> example["event_id"], example["exposure"]["position"], example["exposure"]["context"]
('c1', 3, {'surface': 'home'})
>>> example["joiner"]
{'orphan': False, 'delay_s': 2.0, 'lane': 0}
>>> parse_example(example_record(Positive(Click("c2", 5.0, "u1", "i2", "m9"), None), 1))["exposure"] is None
True
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kafka.errors import KafkaError

from recallstream.streaming.dead_letters import dead_letter_key, dead_letter_record
from recallstream.streaming.decoding import Invalid, decode
from recallstream.streaming.joiner import ClickJoiner, Positive
from recallstream.streaming.kafka_io import list_offsets
from recallstream.streaming.kafka_source import is_retriable
from recallstream.streaming.settings import Settings

log = logging.getLogger(__name__)

SNAPSHOT = "snapshot"
PROGRESS = "progress"
FENCED_AGAIN_S = 60.0  # fenced again this soon: another process runs with the same instance
# A transaction's records go out together at its commit, which flushes them: lingering
# costs no latency, and big batches spare the producer's I/O thread a wake-up (and the
# broker a request) per few dozen examples. No per-record client metrics (unused).
TRANSACTION_PRODUCER_OPTIONS = dict(linger_ms=1000, batch_size=1024 * 1024, metrics_enabled=False)
_KINDS = ("exposures", "clicks")  # the order a lane's records of one transaction are joined in


def example_record(positive: Positive, lane: int) -> bytes:
    """The ``examples`` value (orjson) of one positive: the click's ids and time, the
    impression context its exposure carried (``exposure`` null for an orphan) and the
    joiner's diagnostics (``orphan``, ``delay_s`` from exposure to click, ``lane``)."""
    click, exposure = positive.click, positive.exposure
    out: dict[str, Any] = {"event_id": click.event_id, "user_id": click.user_id,
                           "item_id": click.item_id, "ts": click.ts,
                           "impression_id": click.impression_id}
    if click.extra:
        out["click_extra"] = click.extra
    if exposure is None:
        out["exposure"] = None
        out["joiner"] = {"orphan": True, "delay_s": None, "lane": lane}
    else:
        out["exposure"] = {"event_id": exposure.event_id, "ts": exposure.ts,
                           "position": exposure.position, "context": exposure.context,
                           "extra": exposure.extra}
        out["joiner"] = {"orphan": False, "delay_s": click.ts - exposure.ts, "lane": lane}
    return orjson.dumps(out)


def parse_example(value: bytes) -> dict[str, Any]:
    """An ``examples`` value as a dict (see :func:`example_record`)."""
    return orjson.loads(value)


@dataclass(frozen=True)
class JoinerOptions:
    """How one joiner process runs.

    Attributes
    ----------
    instance : str
        Names this process's transactional id (``<group>-<instance>``): a restart with the
        same instance fences and aborts the transaction the previous one left open.
    snapshot_every : int
        Transactions of a lane between two snapshots of its state: a restore replays at
        most this many transactions' input (held in memory while it is replayed).
    session_timeout_s, transaction_timeout_s : float
        Consumer-group session and producer transaction timeouts.
    max_poll_records : int
        Records per poll, hence per transaction, at most.
    max_poll_interval_s : float
        A process that takes longer than this between two polls (a slow transaction)
        leaves the group: its partitions move to another joiner, and its transaction,
        fenced by its stale group generation, aborts; its next poll rejoins the group.
    exit_when_idle_s : float or None
        Stop after this long with no record to join, once the group has assigned this
        joiner its partitions and it has read them to their end (None: until stopped).
        Joining the group and restoring the lanes do not count as idle: on a busy
        machine they alone can take seconds.
    """

    instance: str = "0"
    snapshot_every: int = 20
    session_timeout_s: float = 10.0
    transaction_timeout_s: float = 60.0
    max_poll_records: int = 5000
    max_poll_interval_s: float = 300.0
    exit_when_idle_s: float | None = None
    restore_timeout_s: float = 120.0


def joiner_group(settings: Settings) -> str:
    """The joiner's consumer group: ``<consumer_group>-joiner``.

    >>> joiner_group(Settings.resolve(environ={}))
    'recallstream-worker-joiner'
    """
    return f"{settings.consumer_group}-joiner"


class _Lane:
    """What the job knows of a lane it owns: next input offsets and its state log."""

    __slots__ = ("offsets", "snapshot_offset", "since_snapshot")

    def __init__(self, offsets: dict[str, int], snapshot_offset: int | None, since_snapshot: int):
        self.offsets = offsets
        self.snapshot_offset = snapshot_offset
        self.since_snapshot = since_snapshot


class ExampleJoiner:
    """The joiner job (see the module docstring); :meth:`run` until stopped or idle."""

    def __init__(self, settings: Settings, options: JoinerOptions = JoinerOptions()) -> None:
        from kafka import TopicPartition
        from kafka.coordinator.assignors.range import RangePartitionAssignor

        from recallstream.streaming.kafka_io import (JOINER_STATE_MAX_MESSAGE_BYTES, make_consumer,
                                                     make_producer)

        self.settings = settings
        self.options = options
        self.stop = threading.Event()
        self.joiner = ClickJoiner(settings.join_window_s)
        self._tp = TopicPartition
        self._topics = {"exposures": settings.topic_exposures, "clicks": settings.topic_clicks}
        self._kind_of = {topic: kind for kind, topic in self._topics.items()}
        group = joiner_group(settings)
        session_ms = int(options.session_timeout_s * 1000)
        self.consumer = make_consumer(
            settings, group_id=group, isolation_level="read_committed",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=session_ms, heartbeat_interval_ms=max(100, session_ms // 4),
            max_poll_records=options.max_poll_records,
            max_poll_interval_ms=int(options.max_poll_interval_s * 1000))
        # Reads state logs and replays input: assigned by hand, no group.
        self._reader = make_consumer(settings, isolation_level="read_committed")
        self._make_producer = lambda: make_producer(
            settings, transactional_id=f"{group}-{options.instance}",
            transaction_timeout_ms=int(options.transaction_timeout_s * 1000),
            max_request_size=JOINER_STATE_MAX_MESSAGE_BYTES, **TRANSACTION_PRODUCER_OPTIONS)
        self.producer = self._make_producer()
        self._fenced_at = -float("inf")
        self._lanes: dict[int, _Lane] = {}
        self._pending: set[int] = set()
        self._assigned = False  # the group gave this joiner its partitions (maybe none)
        self.counters = dict.fromkeys(
            ("records", "exposures", "clicks", "examples", "orphans", "dead_lettered",
             "transactions", "aborted", "restores", "replayed_records", "snapshots", "fenced",
             "refetched"), 0)
        self._busy_s = 0.0

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Join until :attr:`stop` is set (or idle for ``exit_when_idle_s``); the report."""
        self.producer.init_transactions()
        self.consumer.subscribe(list(self._topics.values()), listener=_Listener(self))
        started = last_record = idle_since = time.monotonic()
        first_record: float | None = None
        cpu_at_first = cpu_at_last = 0.0  # the process's CPU (all its threads) while active
        lanes: list[int] = []
        try:
            while not self.stop.is_set():
                batches = self.consumer.poll(timeout_ms=200)
                # The membership these records were fetched under: a process that overruns
                # max_poll_interval leaves the group meanwhile and forgets its generation, and
                # offsets sent with that blank one would commit (a zombie); with this one the
                # broker fences the transaction, which aborts.
                membership = self.consumer.group_metadata()
                if self._pending:
                    restored = set(self._pending)
                    self._restore_pending()
                    # Restored lanes were sought again: their records come anew.
                    batches = {tp: records for tp, records in batches.items()
                               if tp.partition not in restored}
                batches = {tp: records for tp, records in batches.items()
                           if records and tp.partition in self._lanes}
                if batches:
                    if first_record is None:
                        first_record, cpu_at_first = time.monotonic(), time.process_time()
                    self._transaction(batches, membership)
                    last_record, cpu_at_last = time.monotonic(), time.process_time()
                    idle_since = last_record
                elif (self.options.exit_when_idle_s is not None
                      and time.monotonic() - idle_since > self.options.exit_when_idle_s):
                    if self._read_to_the_end():
                        break
                    idle_since = time.monotonic()  # not idle: still joining or restoring
            lanes = sorted(self._lanes)
        finally:
            self.close()
        active = last_record - first_record if first_record is not None else 0.0
        return {**self.report(time.monotonic() - started), "lanes": lanes,
                "active_s": round(active, 3),
                "active_cpu_s": round(cpu_at_last - cpu_at_first, 3),
                # monotonic clock: comparable with another process's on the same machine
                "first_record_at": first_record}

    def report(self, seconds: float) -> dict[str, Any]:
        """Counters, the joiner's waiting clicks, and µs of joiner work per input record."""
        records = self.counters["records"]
        return {**self.counters, "waiting_clicks": self.joiner.waiting_clicks(),
                "lanes": sorted(self._lanes), "seconds": round(seconds, 3),
                "us_per_record": round(1e6 * self._busy_s / records, 2) if records else None}

    def close(self) -> None:
        """Leave the group and close the clients (an open transaction is aborted by the broker)."""
        for client in (self.consumer, self._reader):
            try:
                client.close()
            except Exception:  # closing after a failure: nothing more to do
                log.debug("closing a consumer failed", exc_info=True)
        self.producer.close(timeout=5)

    def _transaction(self, batches: Mapping[Any, list], membership) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        began = time.perf_counter()
        producer = self.producer
        producer.begin_transaction()
        snapshots = {}
        try:
            lanes = sorted({tp.partition for tp in batches})
            for lane in lanes:
                state = self._lanes[lane]
                for kind in _KINDS:
                    records = self._unseen(batches.get(self._tp(self._topics[kind], lane)),
                                           state.offsets[kind])
                    if records:
                        self._join(kind, lane, records)
                        state.offsets[kind] = records[-1].offset + 1
                snapshots[lane] = self._write_state(lane, state)
            # the lanes' next offsets, exactly what their state-log records say
            lane_offsets = {tp: self._lanes[tp.partition].offsets[self._kind_of[tp.topic]]
                            for tp in batches}
            offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in lane_offsets.items()}
            self._busy_s += time.perf_counter() - began
            producer.send_offsets_to_transaction(offsets, membership)
            producer.commit_transaction()
        except KafkaError as error:
            if _fatal(error):
                if not self._recover_from_fencing(error):
                    raise
                return
            log.warning("transaction aborted (%s): restoring the lanes from their state logs", error)
            producer.abort_transaction()
            self.counters["aborted"] += 1
            self._reassign_all()
            return
        self.counters["transactions"] += 1
        for lane, future in snapshots.items():
            state = self._lanes[lane]
            if future is None:
                state.since_snapshot += 1
            else:
                state.snapshot_offset = future.get(timeout=0).offset
                state.since_snapshot = 0
                self.counters["snapshots"] += 1

    def _unseen(self, records: list | None, next_offset: int) -> list | None:
        """``records`` from the lane's next input offset on. After a broker restart the
        client may move its position back by itself (a log truncation it detects through
        the new leader epoch); what it fetches again was joined already."""
        if not records or records[0].offset >= next_offset:
            return records
        fresh = [record for record in records if record.offset >= next_offset]
        self.counters["refetched"] += len(records) - len(fresh)
        log.warning("%s[%d]: %d records below offset %d fetched a second time; dropped",
                    records[0].topic, records[0].partition, len(records) - len(fresh), next_offset)
        return fresh

    def _recover_from_fencing(self, error: Exception) -> bool:
        """After the broker fenced this producer, start a new one and restore the lanes;
        False (the caller raises) for other fatal errors, or when fenced again within
        ``FENCED_AGAIN_S`` (another live process with the same ``--instance``).

        The transaction coordinator fences a producer whose transaction outlived
        ``transaction_timeout_s``, e.g. while the broker restarted: the transaction is
        aborted by then, so a new producer (``init_transactions`` with the same id) and
        the lanes restored from their state logs carry on from what committed.
        """
        from kafka import errors

        fencing = tuple(getattr(errors, name) for name in ("ProducerFencedError",
                                                            "InvalidProducerEpochError")
                        if hasattr(errors, name))
        if not isinstance(error, fencing) or time.monotonic() - self._fenced_at < FENCED_AGAIN_S:
            return False
        self._fenced_at = time.monotonic()
        log.warning("the broker fenced this joiner's producer (%s): starting a new one and "
                    "restoring the lanes from their state logs", error)
        try:
            self.producer.close(timeout=0)
        except Exception:  # a fenced producer may fail to close: it is dropped either way
            log.debug("closing the fenced producer failed", exc_info=True)
        self.producer = self._make_producer()
        self.producer.init_transactions()
        self.counters["fenced"] += 1
        self.counters["aborted"] += 1
        self._reassign_all()
        return True

    def _join(self, kind: str, lane: int, records: list) -> None:
        counters = self.counters
        send = self.producer.send
        examples = self.settings.topic_examples
        add = self.joiner.add_exposure if kind == "exposures" else self.joiner.add_click
        counters["records"] += len(records)
        for record in records:
            event = decode(kind, record.key, record.value)
            if event.__class__ is Invalid:
                counters["dead_lettered"] += 1
                send(self.settings.topic_dead_letters,
                     key=dead_letter_key(record.topic, record.partition, record.offset),
                     value=dead_letter_record(record.topic, record.partition, record.offset,
                                              event.reason, record.value, record.key))
                continue
            counters[kind] += 1
            for positive in add(event, lane):
                counters["examples"] += 1
                counters["orphans"] += positive.exposure is None
                # the record time is the click's event time: readers align and seek by it
                send(examples, key=positive.click.user_id.encode(),
                     value=example_record(positive, lane), partition=lane,
                     timestamp_ms=int(positive.click.ts * 1000))

    def _write_state(self, lane: int, state: _Lane):
        """Send the lane's state-log record of this transaction; the future of a snapshot."""
        topic = self.settings.topic_joiner_state
        if state.snapshot_offset is None or state.since_snapshot + 1 >= self.options.snapshot_every:
            value = {"kind": SNAPSHOT, "offsets": dict(state.offsets),
                     "state": self.joiner.lane_state(lane), "instance": self.options.instance}
            return self.producer.send(topic, key=SNAPSHOT.encode(), value=orjson.dumps(value),
                                      partition=lane)
        value = {"kind": PROGRESS, "offsets": dict(state.offsets),
                 "snapshot_offset": state.snapshot_offset, "instance": self.options.instance}
        self.producer.send(topic, key=PROGRESS.encode(), value=orjson.dumps(value), partition=lane)
        return None

    # -- partitions moving in and out -----------------------------------------------------

    def assigned(self, partitions) -> None:
        """Pause newly assigned partitions until their lane is restored."""
        if partitions:
            self.consumer.pause(*partitions)
        self._pending |= {tp.partition for tp in partitions}
        self._assigned = True

    def _read_to_the_end(self) -> bool:
        """Whether this joiner has its partitions (after the group's assignment), every
        lane restored, and every input partition read to its end (``exit_when_idle_s``)."""
        from kafka.errors import KafkaError

        if not self._assigned or self._pending:
            return False
        assignment = list(self.consumer.assignment())
        if not assignment:
            return True  # more joiners than partitions: nothing to join here
        try:
            ends = list_offsets(self.consumer, assignment, "end")
        except KafkaError as error:  # the broker away: not known to be done
            log.info("could not read the end offsets (%r); not idle yet", error)
            return False
        return all(self.consumer.position(tp) >= end for tp, end in ends.items())

    def revoked(self, partitions) -> None:
        """Forget the lanes of revoked partitions (their state lives in the state log)."""
        for lane in {tp.partition for tp in partitions}:
            self._lanes.pop(lane, None)
            self._pending.discard(lane)
            self.joiner.drop_lane(lane)

    def _reassign_all(self) -> None:
        # After an aborted transaction the in-memory state is ahead of what committed.
        assignment = list(self.consumer.assignment())
        self.revoked(assignment)
        self.assigned(assignment)

    def _restore_pending(self) -> None:
        assignment = self.consumer.assignment()
        for lane in sorted(self._pending):
            tps = [self._tp(self._topics[kind], lane) for kind in _KINDS]
            if not all(tp in assignment for tp in tps):
                raise RuntimeError(
                    f"partition {lane} of exposures and clicks is not assigned to one joiner "
                    f"({sorted(map(tuple, assignment))}): are both topics partitioned alike?")
            try:
                offsets = self._restore(lane)
            except KafkaError as error:
                if not is_retriable(error):
                    raise
                # the broker is away (a restart): the lane stays paused and pending, and the
                # next poll tries again; nothing of it was joined meanwhile
                log.warning("restoring partition %d failed (%r); retrying", lane, error)
                time.sleep(0.5)
                return
            for kind, tp in zip(_KINDS, tps):
                self.consumer.seek(tp, offsets[kind])
            self.consumer.resume(*tps)
            self._pending.discard(lane)
            self.counters["restores"] += 1

    def _restore(self, lane: int) -> dict[str, int]:
        """Rebuild the lane's join state from its state log; the input offsets to resume at."""
        tps = {kind: self._tp(self._topics[kind], lane) for kind in _KINDS}
        deadline = time.monotonic() + self.options.restore_timeout_s
        while True:
            committed = {kind: self.consumer.committed(tp, timeout_ms=30_000)
                         for kind, tp in tps.items()}
            entries = self._state_log(lane)
            if not entries:
                if any(offset is not None for offset in committed.values()):
                    log.warning("lane %d has committed offsets %s but no state log: "
                                "resuming there with an empty join state", lane, committed)
                starts = list_offsets(self._reader, tps.values(), "beginning")
                offsets = {kind: committed[kind] if committed[kind] is not None else starts[tp]
                           for kind, tp in tps.items()}
                self.joiner.load_lane_state(lane, None)
                self._lanes[lane] = _Lane(offsets, None, 0)
                return offsets
            last = entries[-1][1]["offsets"]
            if all(committed[k] is None or committed[k] == last[k] for k in _KINDS):
                break
            # A previous owner's transaction is still open (or just committing): wait for it.
            if time.monotonic() > deadline:
                raise TimeoutError(f"lane {lane}: committed offsets {committed} and state log "
                                   f"{last} still disagree after {self.options.restore_timeout_s} s")
            time.sleep(0.2)
        snapshot_offset, snapshot = entries[0]
        self.joiner.load_lane_state(lane, snapshot["state"])
        self._replay(lane, snapshot["offsets"], [value["offsets"] for _, value in entries[1:]])
        self._lanes[lane] = _Lane(dict(last), snapshot_offset, len(entries) - 1)
        return dict(last)

    def _state_log(self, lane: int) -> list[tuple[int, dict]]:
        """The committed state-log records of ``lane`` from its latest snapshot on (offset, value)."""
        tp = self._tp(self.settings.topic_joiner_state, lane)
        start = list_offsets(self._reader, [tp], "beginning")[tp]
        end = list_offsets(self._reader, [tp], "end")[tp]
        back, last = 4, None
        while last is None:
            first = max(start, end - back)
            records = self._read({tp: (first, end)})[tp]
            if records:
                last = records[-1]
            elif first == start:
                return []
            back *= 4
        value = orjson.loads(last.value)
        snapshot_offset = last.offset if value["kind"] == SNAPSHOT else value["snapshot_offset"]
        if snapshot_offset < start:
            raise RuntimeError(
                f"lane {lane}: the snapshot at offset {snapshot_offset} of {tp.topic} is gone "
                f"(log starts at {start}): its retention must exceed the time between snapshots")
        records = self._read({tp: (snapshot_offset, end)})[tp]
        return [(r.offset, orjson.loads(r.value)) for r in records]

    def _replay(self, lane: int, start: Mapping[str, int], boundaries: list[Mapping[str, int]]) -> None:
        """Feed the lane's input between the snapshot and the last boundary again, in the
        transactions' order, dropping the outputs (they are committed already)."""
        if not boundaries:
            return
        tps = {kind: self._tp(self._topics[kind], lane) for kind in _KINDS}
        records = self._read({tps[k]: (start[k], boundaries[-1][k]) for k in _KINDS})
        counters = dict(self.joiner.counters)  # replay is not new work: keep the diagnostics
        cursor = {kind: 0 for kind in _KINDS}
        for boundary in boundaries:
            for kind in _KINDS:
                add = self.joiner.add_exposure if kind == "exposures" else self.joiner.add_click
                items = records[tps[kind]]
                while cursor[kind] < len(items) and items[cursor[kind]].offset < boundary[kind]:
                    record = items[cursor[kind]]
                    cursor[kind] += 1
                    event = decode(kind, record.key, record.value)
                    if event.__class__ is not Invalid:
                        add(event, lane)
                    self.counters["replayed_records"] += 1
        self.joiner.counters = counters

    def _read(self, ranges: Mapping[Any, tuple[int, int]], timeout_s: float = 60.0) -> dict[Any, list]:
        """Records of each partition in ``[start, end)``, read committed (assigned by hand)."""
        out = {tp: [] for tp in ranges}
        pending = {tp for tp, (start, end) in ranges.items() if start < end}
        if not pending:
            return out
        reader = self._reader
        reader.assign(sorted(pending, key=lambda tp: (tp.topic, tp.partition)))
        for tp in pending:
            reader.seek(tp, ranges[tp][0])
        reader.resume(*pending)  # assign() keeps the pause of a partition read before
        deadline = time.monotonic() + timeout_s
        while pending:
            for tp, records in reader.poll(timeout_ms=200).items():
                end = ranges[tp][1]
                out[tp].extend(r for r in records if r.offset < end)
            for tp in [tp for tp in pending if reader.position(tp) >= ranges[tp][1]]:
                pending.discard(tp)
                reader.pause(tp)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"reading {sorted(pending)} up to {dict(ranges)} took over {timeout_s} s")
        return out


def _fatal(error: Exception) -> bool:
    from kafka import errors

    fatal = tuple(getattr(errors, name) for name in (
        "ProducerFencedError", "InvalidProducerEpochError", "TransactionalIdAuthorizationFailedError",
        "UnsupportedVersionError", "AuthorizationError") if hasattr(errors, name))
    return isinstance(error, fatal)


class _Listener:
    """Rebalance callbacks: they only mark lanes (restoring happens in the job's loop)."""

    def __new__(cls, job: ExampleJoiner):
        from kafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                job.revoked(revoked)

            def on_partitions_assigned(self, assigned):
                job.assigned(assigned)

        return Listener()
