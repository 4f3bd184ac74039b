"""Every setting of recallstream, in one place.

Each setting is a field of :class:`Settings`. It can be given, from highest to
lowest precedence, as a CLI flag (``--topic-clicks``), as an environment
variable (``RECALLSTREAM_TOPIC_CLICKS``, or the conventional name such as
``KAFKA_BOOTSTRAP_SERVERS`` where one exists), or left at its default.

Examples
--------
>>> s = Settings.resolve(environ={"RECALLSTREAM_TOPIC_CLICKS": "c2"})
>>> s.topic_clicks
'c2'
>>> Settings.resolve(flags={"topic_clicks": "c3"}, environ={"RECALLSTREAM_TOPIC_CLICKS": "c2"}).topic_clicks
'c3'
>>> Settings.resolve(environ={}).bootstrap_servers
'127.0.0.1:9092'
>>> Settings.resolve(environ={"RECALLSTREAM_BROKER_PORT": "9192"}).bootstrap_servers
'127.0.0.1:9192'
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


EDGE_FOLDER = "qdrant-edge"  # the default embedded index, inside the checkpoint folder


def _setting(default: Any, help: str, env: str | None = None, secret: bool = False) -> Any:
    # A secret stays out of repr() too, so no log line or error message shows it by accident.
    return field(default=default, repr=not secret,
                 metadata={"help": help, "env": env, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """The effective settings of one process (see the module docstring)."""

    bootstrap_servers: str = _setting(
        "", "Kafka bootstrap servers; empty means the local broker on --broker-port",
        env="KAFKA_BOOTSTRAP_SERVERS")
    broker_port: int = _setting(9092, "port of the local broker started by `recallstream broker`")
    broker_data_dir: str = _setting("var/kafka", "data and log folder of the local broker")
    kafka_cache_dir: str = _setting("~/.cache/recallstream",
                                    "folder caching the jars of the local broker (kafka-<version>/)")
    topic_exposures: str = _setting("exposures", "topic of exposure events (key user_id)")
    topic_clicks: str = _setting("clicks", "topic of click events (key user_id)")
    topic_items: str = _setting("items", "compacted topic of item catalog records (key item_id)")
    topic_users: str = _setting("users", "compacted topic of user profile records (key user_id)")
    topic_dead_letters: str = _setting("dead-letters", "topic receiving undecodable records")
    topic_examples: str = _setting(
        "examples", "topic of training examples written by the joiner (key user_id, transactional)")
    topic_joiner_state: str = _setting(
        "joiner-state", "topic of the joiner's per-partition state log (snapshots and progress)")
    security_protocol: str = _setting(
        "PLAINTEXT", "Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        env="KAFKA_SECURITY_PROTOCOL")
    sasl_mechanism: str = _setting(
        "", "SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with a SASL_* protocol",
        env="KAFKA_SASL_MECHANISM")
    sasl_plain_username: str = _setting("", "SASL user name", env="KAFKA_SASL_USERNAME")
    sasl_plain_password: str = _setting(
        "", "SASL password (give it in the environment: a flag shows in the process list)",
        env="KAFKA_SASL_PASSWORD", secret=True)
    ssl_cafile: str = _setting("", "CA bundle (PEM) that verifies the brokers' certificates",
                               env="KAFKA_SSL_CAFILE")
    ssl_certfile: str = _setting("", "client certificate (PEM) for mutual TLS",
                                 env="KAFKA_SSL_CERTFILE")
    ssl_keyfile: str = _setting("", "private key (PEM) of the client certificate",
                                env="KAFKA_SSL_KEYFILE")
    ssl_password: str = _setting("", "password of the client's private key",
                                 env="KAFKA_SSL_PASSWORD", secret=True)
    partitions: int = _setting(4, "partition count of the exposures and clicks topics")
    examples_retention_ms: int = _setting(
        -1, "retention of the examples topic in ms (-1: keep; examples carry their click's "
            "event time, so a replay of old data would otherwise expire at once; keep at least "
            "the snapshot's days)")
    consumer_group: str = _setting("recallstream-worker", "consumer group used for lag monitoring")
    qdrant: str = _setting(
        "edge:", "Qdrant: 'edge:' (Qdrant Edge in CHECKPOINT_DIR/qdrant-edge), edge:PATH, "
                 "':memory:' (qdrant-client's local mode), a local path, or a server URL",
        env="QDRANT_URL")
    qdrant_api_key: str = _setting("", "API key of a Qdrant server", env="QDRANT_API_KEY",
                                   secret=True)
    collection_items: str = _setting("items", "Qdrant collection (or alias) of item vectors")
    collection_users: str = _setting("users", "Qdrant collection (or alias) of user vectors")
    checkpoint_dir: str = _setting("var/checkpoints", "folder of the worker's checkpoints")
    join_window_s: float = _setting(1800.0, "click-to-exposure join window in event seconds")
    batch_size: int = _setting(256, "training minibatch size (clicks)")
    batch_timeout_s: float = _setting(0.5, "flush a partial minibatch after this many seconds")
    checkpoint_every_batches: int = _setting(50, "checkpoint after this many batches")
    checkpoint_every_s: float = _setting(30.0, "checkpoint at least this often (seconds)")
    reembed_every_batches: int = _setting(
        20, "re-embed every catalog item into Qdrant after this many batches (dense layers move)")
    qdrant_write_interval_s: float = _setting(
        0.25, "least seconds between two vector writes to Qdrant (updates coalesce meanwhile)")
    qdrant_drain_timeout_s: float = _setting(
        300.0, "longest wait for Qdrant to take the pending vectors before a checkpoint; past "
               "it the worker exits with status 5 (a supervisor restarts it)")
    align_window_ms: int = _setting(
        100, "record-timestamp window that orders records across partitions deterministically")
    reader_process: int = _setting(
        1, "1: the worker reads Kafka in a child process, off the training's GIL; 0: in a "
           "thread of the worker's process")
    metrics_port: int = _setting(8000, "port of the worker's /metrics and /recall endpoint (0: off)")
    joiner_metrics_port: int = _setting(
        0, "port of the joiner's /metrics (0: off; docker-compose uses 8001)")
    http_host: str = _setting("127.0.0.1", "address the worker's HTTP endpoint binds (0.0.0.0: all)")
    recall_url: str = _setting(
        "", "worker endpoint `recallstream recall` asks in embedded mode "
        "(empty: http://127.0.0.1:METRICS_PORT)")
    snapshot_dir: str = _setting(
        "var/snapshots", "folder of the versioned snapshots (`recallstream snapshot` writes, "
        "the worker watches its CURRENT pointer)")
    snapshot_days: float = _setting(
        7.0, "days of event time a snapshot trains on, counted back from the newest example")
    snapshot_epochs: float = _setting(3.0, "passes of a snapshot's training over its examples")
    snapshot_batch_size: int = _setting(1024, "clicks per step of a snapshot's training")
    snapshot_warm_start: int = _setting(
        1, "1: start a snapshot's training from the current snapshot's weights; 0: from scratch")
    snapshot_keep: int = _setting(3, "snapshot versions kept (the newest; the current one always)")
    health_every_batches: int = _setting(
        10, "compute the catalog-wide health figures (norms, collapse, coverage, popularity, "
            "never trained) every N batches")
    snapshot_check_s: float = _setting(
        30.0, "how often the worker looks for a newer snapshot to reset to (seconds)")
    reset_every_event_days: float = _setting(
        0.0, "reset to a newer snapshot only where this many days of event time end (replays: "
             "the demo, tests); 0: as soon as one is published")
    seed: int = _setting(2020, "random seed")

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of setting ``name``."""
        return _fields()[name].metadata["env"] or f"RECALLSTREAM_{name.upper()}"

    @classmethod
    def resolve(cls, flags: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> "Settings":
        """Combine CLI flags (None means unset), the environment and the defaults."""
        flags = flags or {}
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, f in _fields().items():
            if flags.get(name) is not None:
                values[name] = _convert(f, flags[name])
            elif environ.get(cls.env_name(name)):
                values[name] = _convert(f, environ[cls.env_name(name)])
        settings = cls(**values)
        if not settings.bootstrap_servers:
            settings = dataclasses.replace(
                settings, bootstrap_servers=f"127.0.0.1:{settings.broker_port}")
        return settings

    def qdrant_location(self) -> str:
        """Where the vector index is: ``qdrant``, with ``edge:`` alone (the default) made
        ``edge:CHECKPOINT_DIR/qdrant-edge``.

        The embedded index holds vectors derived from the checkpointed model, so it
        lives beside the checkpoints: one worker owns both (the checkpoint folder's
        lock), a fresh checkpoint folder comes with a fresh index, and a restart
        finds the index it left (see ``IndexPublisher.ensure_catalog``).

        >>> Settings.resolve(environ={}).qdrant_location()
        'edge:var/checkpoints/qdrant-edge'
        >>> Settings.resolve(environ={"QDRANT_URL": ":memory:"}).qdrant_location()
        ':memory:'
        """
        if self.qdrant == "edge:":
            return f"edge:{os.path.join(self.checkpoint_dir, EDGE_FOLDER)}"
        return self.qdrant

    def flags(self, *names: str) -> list[str]:
        """The CLI flags that give another process these settings' values of ``names``.

        >>> Settings.resolve(environ={}).flags("topic_clicks", "partitions")
        ['--topic-clicks', 'clicks', '--partitions', '4']
        """
        out: list[str] = []
        for name in names:
            out += [_flag(name), str(getattr(self, name))]
        return out

    def describe(self) -> dict[str, Any]:
        """The settings as a dict, secrets masked (for `recallstream config`)."""
        out = {}
        for name, f in _fields().items():
            value = getattr(self, name)
            out[name] = "***" if f.metadata["secret"] and value else value
        return out


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Settings)}


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _convert(f: dataclasses.Field, raw: Any) -> Any:
    kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"setting {f.name}: {raw!r} is not a valid {kind.__name__}") from None


def add_setting_flags(parser) -> None:
    """Add one ``--flag`` per setting to an argparse parser (all default to unset)."""
    group = parser.add_argument_group("settings (flag > environment variable > default)")
    for name, f in _fields().items():
        group.add_argument(_flag(name), dest=name, default=None,
                           metavar=Settings.env_name(name),
                           help=f"{f.metadata['help']} (default: {f.default!r})")
