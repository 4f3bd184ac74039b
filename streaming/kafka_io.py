"""Kafka clients, topics and bounded reads, configured from :class:`Settings`.

Every Kafka connection of recallstream is made here, so the choices that
matter for correctness live in one place:

- producers wait for all in-sync replicas (``acks='all'``, idempotent) and
  accept records up to :data:`MAX_MESSAGE_BYTES`, so an oversized event still
  reaches the broker and can be dead-lettered instead of failing the sender;
- consumers carry no deserializers (raw bytes are decoded by our own code, see
  ``recallstream.streaming.decoding``) and never commit on their own;
- ``exposures`` and ``clicks`` always have the same partition count, because
  both are keyed by user_id and the join relies on a user's events meeting in
  the same partition number.
- every client gets the connection's security settings (:func:`security_config`:
  SASL and SSL), so a secured cluster needs settings only, never code.

Examples
--------
The topic layout that :func:`create_topics` asks for (no broker needed):

>>> from recallstream.streaming.settings import Settings
>>> layout = topic_layout(Settings.resolve(environ={}), partitions=3)
>>> {name: spec["num_partitions"] for name, spec in layout.items()}
{'exposures': 3, 'clicks': 3, 'items': 3, 'users': 3, 'dead-letters': 1, 'examples': 3, 'joiner-state': 3}
>>> layout["items"]["configs"]["cleanup.policy"]
'compact'
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, TopicAlreadyExistsError

from recallstream.streaming.settings import Settings

log = logging.getLogger(__name__)

# Decoders reject records over 1 MiB; the topics accept up to 4 MiB so that such a
# record (and its base64 copy in a dead letter) is delivered and dead-lettered, not lost.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A dead letter holds a rejected record base64-encoded (4/3 larger) plus metadata, so its
# topic accepts twice the size: a record of MAX_MESSAGE_BYTES is dead-lettered whole.
DEAD_LETTERS_MAX_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES

# A snapshot of one lane of the join state (up to its bound of exposures and clicks).
JOINER_STATE_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CLIENT_ID = "recallstream"

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Setting name -> kafka-python option, passed on when the setting is not empty.
_SECURITY_OPTIONS = {
    "sasl_mechanism": "sasl_mechanism", "sasl_plain_username": "sasl_plain_username",
    "sasl_plain_password": "sasl_plain_password", "ssl_cafile": "ssl_cafile",
    "ssl_certfile": "ssl_certfile", "ssl_keyfile": "ssl_keyfile", "ssl_password": "ssl_password",
}


def security_config(settings: Settings) -> dict:
    """The SASL and SSL options of every Kafka client, from the settings.

    ``security_protocol`` always; each other option only when its setting is not empty
    (kafka-python's defaults apply otherwise).

    Raises
    ------
    ValueError
        For an unknown protocol or mechanism, a SASL mechanism without a SASL protocol
        (or the reverse), or PLAIN/SCRAM without a user name and password.

    Examples
    --------
    >>> from recallstream.streaming.settings import Settings
    >>> security_config(Settings.resolve(environ={}))
    {'security_protocol': 'PLAINTEXT'}
    >>> config = security_config(Settings.resolve(environ={
    ...     "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    ...     "KAFKA_SASL_USERNAME": "worker", "KAFKA_SASL_PASSWORD": "s3cret",
    ...     "KAFKA_SSL_CAFILE": "/etc/kafka/ca.pem"}))
    >>> sorted(config)
    ['sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol', 'ssl_cafile']
    """
    protocol = settings.security_protocol.upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(f"security_protocol must be one of {SECURITY_PROTOCOLS}, "
                         f"got {settings.security_protocol!r}")
    config: dict = {"security_protocol": protocol}
    for name, option in _SECURITY_OPTIONS.items():
        if getattr(settings, name):
            config[option] = getattr(settings, name)
    sasl = protocol.startswith("SASL_")
    mechanism = config.get("sasl_mechanism", "").upper()
    if sasl and not mechanism:
        raise ValueError(f"security_protocol {protocol} needs a sasl_mechanism "
                         f"({', '.join(SASL_MECHANISMS)})")
    if mechanism:
        if not sasl:
            raise ValueError(f"sasl_mechanism {mechanism} needs security_protocol "
                             f"SASL_PLAINTEXT or SASL_SSL, got {protocol}")
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(f"sasl_mechanism must be one of {SASL_MECHANISMS}, got {mechanism!r}")
        if not (settings.sasl_plain_username and settings.sasl_plain_password):
            raise ValueError(f"sasl_mechanism {mechanism} needs sasl_plain_username and "
                             f"sasl_plain_password (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD)")
        config["sasl_mechanism"] = mechanism
    return config


def make_producer(settings: Settings, **overrides) -> KafkaProducer:
    """A producer of raw ``bytes`` keys and values.

    Parameters
    ----------
    settings : Settings
        ``bootstrap_servers`` and the security settings (:func:`security_config`) are used.
    **overrides
        Any ``KafkaProducer`` option, replacing the defaults below.

    Returns
    -------
    KafkaProducer
        ``acks='all'``, idempotent, ``linger_ms=5`` (small batches without
        adding visible latency), ``max_request_size`` of :data:`MAX_MESSAGE_BYTES`.

    Examples
    --------
    With a broker (see tests/test_kafka_io.py):
    ``make_producer(settings).send("clicks", key=b"u1", value=b"{...}").get(10)``.
    """
    config = dict(bootstrap_servers=settings.bootstrap_servers, client_id=CLIENT_ID,
                  acks="all", enable_idempotence=True, linger_ms=5,
                  max_request_size=MAX_MESSAGE_BYTES, **security_config(settings))
    config.update(overrides)
    return KafkaProducer(**config)


def make_consumer(settings: Settings, **overrides) -> KafkaConsumer:
    """A consumer of raw ``bytes`` that never commits by itself.

    Parameters
    ----------
    settings : Settings
        ``bootstrap_servers`` and the security settings (:func:`security_config`) are used.
    **overrides
        Any ``KafkaConsumer`` option. Without ``group_id`` the consumer joins no
        group: assign partitions with ``consumer.assign([...])``.

    Returns
    -------
    KafkaConsumer
        ``group_id=None``, ``enable_auto_commit=False`` (callers commit the
        offsets they have processed), ``auto_offset_reset='earliest'`` (a new
        group starts from the beginning of the stream), no deserializers.

    Examples
    --------
    With a broker: ``make_consumer(settings, group_id="g").subscribe(["clicks"])``.
    """
    config = dict(bootstrap_servers=settings.bootstrap_servers, client_id=CLIENT_ID,
                  group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                  max_partition_fetch_bytes=MAX_MESSAGE_BYTES, **security_config(settings))
    config.update(overrides)
    return KafkaConsumer(**config)


@contextlib.contextmanager
def admin_client(settings: Settings, timeout_s: float = 30.0) -> Iterator[KafkaAdminClient]:
    """A ``KafkaAdminClient`` closed on exit (it runs a network thread of its own)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id=CLIENT_ID,
                             bootstrap_timeout_ms=int(timeout_s * 1000), **security_config(settings))
    try:
        yield admin
    finally:
        admin.close()


def topic_layout(settings: Settings, partitions: int | None = None) -> dict[str, dict]:
    """The topics of recallstream, as ``KafkaAdminClient.create_topics`` specs.

    Parameters
    ----------
    settings : Settings
        Topic names, and ``partitions`` when the argument is None.
    partitions : int, optional
        Partition count of exposures, clicks, items and users.

    Returns
    -------
    dict
        ``{topic: {"num_partitions": n, "configs": {...}}}``; dead-letters has one
        partition (low volume; one partition keeps the failures in arrival order);
        examples and joiner-state have the partition count of clicks (the joiner
        writes lane ``p``'s output and state log to partition ``p``).

    Raises
    ------
    ValueError
        If ``partitions`` is below 1.

    Examples
    --------
    >>> from recallstream.streaming.settings import Settings
    >>> topic_layout(Settings.resolve(environ={}), 2)["clicks"]
    {'num_partitions': 2, 'configs': {'max.message.bytes': '4194304'}}
    """
    partitions = settings.partitions if partitions is None else partitions
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    plain = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    # Keyed by id and holding the latest state only: compaction keeps the last record per key
    # and lets a null value (tombstone) retire the entity.
    compacted = {**plain, "cleanup.policy": "compact"}
    return {
        settings.topic_exposures: {"num_partitions": partitions, "configs": plain},
        settings.topic_clicks: {"num_partitions": partitions, "configs": plain},
        settings.topic_items: {"num_partitions": partitions, "configs": compacted},
        settings.topic_users: {"num_partitions": partitions, "configs": compacted},
        settings.topic_dead_letters: {
            "num_partitions": 1, "configs": {"max.message.bytes": str(DEAD_LETTERS_MAX_MESSAGE_BYTES)}},
        # Examples are stamped with their click's event time (the snapshot job seeks by it).
        settings.topic_examples: {"num_partitions": partitions, "configs": {
            **plain, "retention.ms": str(settings.examples_retention_ms)}},
        # Snapshots of the join state may be large; the joiner writes one at least every
        # few minutes, so a week of retention always keeps the latest.
        settings.topic_joiner_state: {"num_partitions": partitions, "configs": {
            "max.message.bytes": str(JOINER_STATE_MAX_MESSAGE_BYTES)}},
    }


def create_topics(settings: Settings, partitions: int | None = None) -> list[str]:
    """Create the topics of :func:`topic_layout` that do not exist yet.

    Idempotent: existing topics are left as they are, but an existing
    exposures or clicks topic whose partition count differs from the requested
    one is an error, since the click join needs both co-partitioned.

    Parameters
    ----------
    settings : Settings
        Broker and topic names.
    partitions : int, optional
        Partition count (default ``settings.partitions``).

    Returns
    -------
    list of str
        The topics created by this call (empty when all existed), each ready
        (a leader for every partition) when the function returns.

    Raises
    ------
    ValueError
        If ``partitions`` is below 1, or exposures/clicks exist with another
        partition count.

    Examples
    --------
    With a broker (see tests/test_kafka_io.py): the first call returns the seven
    names, the second ``[]``.
    """
    layout = topic_layout(settings, partitions)
    created = []
    with admin_client(settings) as admin:
        existing = set(admin.list_topics())
        for name, spec in layout.items():
            if name in existing:
                continue
            try:
                admin.create_topics({name: spec})
                created.append(name)
            except TopicAlreadyExistsError:  # created meanwhile by another process
                pass
        admin.wait_for_topics(list(layout), timeout_ms=30_000)
        _check_co_partitioned(admin, settings, layout)
    return created


def _check_co_partitioned(admin: KafkaAdminClient, settings: Settings,
                          layout: Mapping[str, dict]) -> None:
    names = [settings.topic_exposures, settings.topic_clicks, settings.topic_examples,
             settings.topic_joiner_state]
    counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
    wanted = layout[settings.topic_exposures]["num_partitions"]
    wrong = {name: count for name, count in counts.items() if count != wanted}
    if wrong:
        raise ValueError(
            f"existing topics have partition counts {counts}, {wanted} wanted: exposures, "
            f"clicks, examples and joiner-state must have the same count so that a user's "
            f"events meet in one partition; "
            f"pass --partitions {next(iter(counts.values()))} if both agree, else recreate them")


def partitions_of(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, sorted; ValueError if the topic does not exist."""
    numbers = consumer.partitions_for_topic(topic)
    if not numbers:
        raise ValueError(f"topic {topic!r} does not exist on {consumer.config['bootstrap_servers']}")
    return [TopicPartition(topic, number) for number in sorted(numbers)]


def list_offsets(consumer, partitions, which: str, timeout_s: float = 60.0) -> dict:
    """``consumer.beginning_offsets`` or ``consumer.end_offsets`` (``which``: "beginning"
    or "end") of ``partitions``, waiting for the consumer's metadata.

    kafka-python 3.0 leaves out of its request the partitions whose leader the client's
    metadata does not know yet (a fresh client, a broker restarting) and then fails with
    a ``KeyError`` on the first one missing: this asks again until ``timeout_s``, then
    raises ``KafkaTimeoutError`` (retriable, as a broker away is).

    Examples
    --------
    With a broker: ``list_offsets(consumer, partitions, "end")`` is
    ``{TopicPartition("clicks", 0): 0, ...}`` for a new topic.
    """
    from kafka.errors import KafkaTimeoutError

    if which not in ("beginning", "end"):
        raise ValueError(f"which must be 'beginning' or 'end', got {which!r}")
    ask = getattr(consumer, f"{which}_offsets")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ask(list(partitions))
        except KeyError as missing:
            if time.monotonic() > deadline:
                raise KafkaTimeoutError(f"no leader known for {missing} after {timeout_s} s") from None
            log.info("%s offsets: no leader known yet for %s; asking again", which, missing)
            time.sleep(0.2)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The offset after the last record of each partition of ``topic``.

    Examples
    --------
    With a broker: ``end_offsets(settings, "clicks")`` is ``{0: 0, 1: 0}`` for a
    new two-partition topic and ``{0: 0, 1: 1}`` after one record to partition 1.
    """
    consumer = make_consumer(settings)
    try:
        ends = list_offsets(consumer, partitions_of(consumer, topic), "end")
    finally:
        consumer.close()
    return {tp.partition: offset for tp, offset in ends.items()}


def read_topic(settings: Settings, topic: str, *, from_offsets: Mapping[int, int] | None = None,
               idle_timeout_s: float = 30.0, read_committed: bool = False) -> Iterator[ConsumerRecord]:
    """Yield the records of ``topic`` up to the end it has when the call starts.

    The consumer is assigned the partitions by hand and belongs to no group, so
    reading commits nothing, creates no group and is invisible to other
    consumers. Records come in offset order within a partition; partitions are
    interleaved as fetched.

    Parameters
    ----------
    settings : Settings
        Broker to read from.
    topic : str
        Topic name.
    from_offsets : mapping of int to int, optional
        First offset per partition; partitions not given start at the beginning.
    idle_timeout_s : float
        Give up when no record arrives for this long although the end is not reached.
    read_committed : bool
        Read only committed transactions, up to the last stable offset (the end then is
        where the first still open transaction begins).

    Yields
    ------
    kafka.consumer.fetcher.ConsumerRecord
        With raw ``key`` and ``value`` bytes (either may be None).

    Raises
    ------
    ValueError
        If the topic does not exist.
    TimeoutError
        If the read stalls for ``idle_timeout_s``.

    Examples
    --------
    With a broker: ``sum(1 for _ in read_topic(settings, "clicks"))`` counts the
    clicks present now; records produced meanwhile are not waited for.
    """
    consumer = make_consumer(settings, isolation_level="read_committed" if read_committed
                             else "read_uncommitted")
    try:
        partitions = partitions_of(consumer, topic)
        ends = list_offsets(consumer, partitions, "end")
        starts = list_offsets(consumer, partitions, "beginning")
        for tp in partitions:
            if from_offsets and tp.partition in from_offsets:
                starts[tp] = from_offsets[tp.partition]
        pending = {tp for tp in partitions if starts[tp] < ends[tp]}
        consumer.assign(sorted(pending, key=lambda tp: tp.partition))
        for tp in pending:
            consumer.seek(tp, starts[tp])
        yield from records_until(consumer, pending, ends, idle_timeout_s)
    finally:
        consumer.close()


def records_until(consumer: KafkaConsumer, pending: set[TopicPartition],
                  ends: Mapping[TopicPartition, int], idle_timeout_s: float) -> Iterator[ConsumerRecord]:
    """The records of the ``pending`` partitions (assigned and sought) before ``ends``,
    pausing each partition as it reaches its end; TimeoutError after ``idle_timeout_s``
    without a record while some have not."""
    last_progress = time.monotonic()
    while pending:
        batches = consumer.poll(timeout_ms=200)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= ends[tp]:
                    break
                yield record
            last_progress = time.monotonic()
        # The position, not the last record, tells the end is reached: compaction and
        # transaction markers leave offsets without a record.
        for tp in [tp for tp in pending if consumer.position(tp) >= ends[tp]]:
            pending.discard(tp)
            consumer.pause(tp)
        if pending and time.monotonic() - last_progress > idle_timeout_s:
            raise TimeoutError(f"no record from {sorted(pending)} for {idle_timeout_s} s "
                               f"before their end offsets {dict(ends)}")


def wait_for_broker(settings: Settings, timeout_s: float) -> bool:
    """Whether a broker answers a metadata request at ``settings.bootstrap_servers`` within ``timeout_s``.

    Examples
    --------
    Nothing listens on port 1:

    >>> from recallstream.streaming.settings import Settings
    >>> wait_for_broker(Settings.resolve(environ={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}), 0.5)
    False
    """
    deadline = time.monotonic() + timeout_s
    with _quiet_kafka_logs():
        while True:
            remaining = deadline - time.monotonic()
            try:
                with admin_client(settings, timeout_s=max(0.1, min(remaining, 1.0))) as admin:
                    admin.describe_cluster()
                return True
            except KafkaError:
                if time.monotonic() + 0.2 >= deadline:
                    return False
                time.sleep(0.2)


@contextlib.contextmanager
def _quiet_kafka_logs() -> Iterator[None]:
    # While a broker is starting, each refused connection logs an ERROR; they are expected.
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def scratch_settings(settings: Settings, run_id: str, partitions: int | None = None) -> Settings:
    """``settings`` with the seven topics named ``{run_id}-<name>`` and the consumer group
    ``run_id`` (and ``partitions``, when given): the names :func:`scratch_topics` creates.

    Examples
    --------
    >>> from recallstream.streaming.settings import Settings
    >>> s = scratch_settings(Settings.resolve(environ={}), "run-1", partitions=2)
    >>> s.topic_clicks, s.topic_dead_letters, s.consumer_group, s.partitions
    ('run-1-clicks', 'run-1-dead-letters', 'run-1', 2)
    """
    partitions = settings.partitions if partitions is None else partitions
    return dataclasses.replace(
        settings, topic_exposures=f"{run_id}-exposures", topic_clicks=f"{run_id}-clicks",
        topic_items=f"{run_id}-items", topic_users=f"{run_id}-users",
        topic_dead_letters=f"{run_id}-dead-letters", topic_examples=f"{run_id}-examples",
        topic_joiner_state=f"{run_id}-joiner-state", consumer_group=run_id, partitions=partitions)


@contextlib.contextmanager
def scratch_topics(settings: Settings, run_id: str, partitions: int | None = None) -> Iterator[Settings]:
    """:func:`scratch_settings`, with the topics created on entry and deleted on exit
    (tests, demos and benchmarks that must not mix with other runs).

    Examples
    --------
    With a broker: ``with scratch_topics(settings, f"bench-{uuid4().hex[:8]}") as s:``
    gives settings whose seven topics exist until the block ends.
    """
    settings = scratch_settings(settings, run_id, partitions)
    topics = create_topics(settings)
    try:
        yield settings
    finally:
        # Only what this call created: leaves a shared broker as it was found.
        with admin_client(settings) as admin:
            admin.delete_topics(topics, raise_errors=False)
