"""A single-node Apache Kafka broker (KRaft, combined mode) run from its own jars.

``recallstream broker`` and the test session use it to get a real broker
without Docker. The jars are fetched once by Maven from ``deploy/kafka/pom.xml``
into ``<kafka_cache_dir>/kafka-<version>/jars`` (outside the git tree, so clean
clones on one machine share them). Each broker owns a data folder holding:

- ``server.properties`` (rewritten at every start with the current ports),
- ``kafka-logs/`` (the partitions and the KRaft metadata log, formatted once),
- ``server.log`` (the broker's log4j2 log) and ``console.log`` (JVM output),
- ``broker.pid`` while it runs.

The controller quorum is static (``controller.quorum.voters``) rather than
formatted with ``--standalone``: the voter's address is then not written into
the metadata log, so a free controller port can be picked afresh at every
start and brokers side by side never collide on a remembered port.

Examples
--------
>>> from pathlib import Path
>>> broker = LocalBroker(data_dir=Path("/tmp/k"), port=9192, jars_dir=Path("/tmp/jars"))
>>> broker.bootstrap_servers
'127.0.0.1:9192'
>>> props = server_properties(Path("/tmp/k"), port=9192, controller_port=9193)
>>> "listeners=PLAINTEXT://127.0.0.1:9192,CONTROLLER://127.0.0.1:9193" in props
True
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recallstream.consumers.usage import CommandError, UsageError
from recallstream.streaming.kafka_io import MAX_MESSAGE_BYTES, wait_for_broker
from recallstream.streaming.settings import Settings

KAFKA_PROJECT = Path(__file__).resolve().parent.parent / "deploy" / "kafka"

# One small broker on a 2-core machine: a bounded heap keeps several test brokers cheap,
# and G1 with short pauses keeps produce latency steady.
JVM_OPTIONS = ["-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]


class BrokerError(CommandError, RuntimeError):
    """The local broker could not be fetched, started or stopped (a command exits 1)."""


def kafka_version(pom: Path = KAFKA_PROJECT / "pom.xml") -> str:
    """The Kafka release named by ``deploy/kafka/pom.xml``.

    Examples
    --------
    >>> kafka_version().startswith("4.")
    True
    """
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    return ElementTree.parse(pom).getroot().find("m:properties/m:kafka.version", namespace).text


def fetch_jars(cache_dir: str | Path) -> Path:
    """Download the broker's jars once; return the folder holding them.

    Quick when already done: a stamp holds the hash of the pom the jars came
    from, so editing the pom fetches again.

    Parameters
    ----------
    cache_dir : str or Path
        Cache root (``~`` is expanded); jars go to ``<cache_dir>/kafka-<version>/jars``.

    Raises
    ------
    BrokerError
        If Maven is missing or fails.

    Examples
    --------
    Fetching needs Maven Central; see tests/test_broker.py.
    """
    pom = KAFKA_PROJECT / "pom.xml"
    home = Path(cache_dir).expanduser() / f"kafka-{kafka_version(pom)}"
    jars, stamp = home / "jars", home / "fetched-from-pom.sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest and jars.is_dir():
        return jars
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed to fetch the Kafka jars: apt-get install maven")
    staging = home / f"jars.partial-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    command = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"fetching the Kafka jars failed ({' '.join(command)}):\n"
                          f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    # Staged then renamed, so an interrupted fetch never leaves a half-filled jars folder.
    shutil.rmtree(jars, ignore_errors=True)
    staging.rename(jars)
    stamp.write_text(digest + "\n")
    return jars


def random_cluster_id() -> str:
    """A new KRaft cluster id, as ``kafka-storage random-uuid`` makes them.

    Kafka's ``Uuid`` prints 16 random bytes as unpadded URL-safe base64 and
    avoids a leading ``-`` (it would read as a command-line option). Made here
    to save starting a JVM.

    Examples
    --------
    >>> cluster_id = random_cluster_id()
    >>> len(cluster_id), cluster_id[0] != "-", len(base64.urlsafe_b64decode(cluster_id + "=="))
    (22, True, 16)
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    """The ``server.properties`` of a one-node broker for development and tests.

    Examples
    --------
    >>> from pathlib import Path
    >>> props = server_properties(Path("/d"), 9092, 9093)
    >>> "controller.quorum.voters=1@127.0.0.1:9093" in props, "log.dirs=/d/kafka-logs" in props
    (True, True)
    """
    settings = {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": data_dir / "kafka-logs",
        # One node: every internal topic has a single replica.
        "default.replication.factor": 1,
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # Fast to create and cheap to hold for many short-lived test topics and groups.
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.num.partitions": 4,
        "group.initial.rebalance.delay.ms": 0,
        # After a SIGKILL the restarted node serves its partitions under its previous
        # registration until the controller (restarted with it) lets that registration's
        # session expire; it then fences the node, and for a moment every partition has no
        # leader. Transaction markers sent in that moment are dropped for good (Kafka takes
        # a leaderless partition for a deleted one), which leaves a transaction hanging:
        # read_committed readers stall at it. A short session makes that moment come
        # right after the restart, before any transaction started since times out.
        "broker.session.timeout.ms": 2000,
        "broker.heartbeat.interval.ms": 500,
        # A joiner killed and not restarted leaves its transaction open: abort it soon after
        # its timeout (default scan every 10 s) so its partitions' new owner can go on.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": 1000,
        "num.partitions": 1,
        "log.segment.bytes": 16 * 1024 * 1024,
        "log.index.size.max.bytes": 1024 * 1024,
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        "log.cleaner.backoff.ms": 1000,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "message.max.bytes": MAX_MESSAGE_BYTES,
        # Topics come from `recallstream topics create` only: an auto-created exposures or
        # items topic would silently get the wrong partition count or no compaction.
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


@dataclass(frozen=True)
class LocalBroker:
    """A broker on 127.0.0.1:``port`` whose files live in ``data_dir``.

    Parameters
    ----------
    data_dir : Path
        Data folder (created on start).
    port : int
        Client port; the controller port is picked free at each start.
    jars_dir : Path
        Folder of the Kafka jars (see :func:`fetch_jars`).

    Examples
    --------
    >>> from pathlib import Path
    >>> broker = LocalBroker(Path("/nonexistent/k"), 9192, Path("/nonexistent/jars"))
    >>> broker.running_pid() is None, broker.log_path.name
    (True, 'server.log')
    """

    data_dir: Path
    port: int
    jars_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> "LocalBroker":
        """The local broker of ``settings`` (port, data folder), jars fetched if needed."""
        return cls(Path(settings.broker_data_dir).expanduser().resolve(), settings.broker_port,
                   fetch_jars(settings.kafka_cache_dir))

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        """Settings whose bootstrap servers are this broker (other fields default)."""
        return dataclasses.replace(Settings(), bootstrap_servers=self.bootstrap_servers,
                                   broker_port=self.port, broker_data_dir=str(self.data_dir))

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def console_path(self) -> Path:
        return self.data_dir / "console.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    def running_pid(self) -> int | None:
        """The pid of this folder's broker if it runs (checked in /proc, not just the pid file)."""
        try:
            pid = int(self.pid_path.read_text())
        except (OSError, ValueError):
            return None
        _reap(pid)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # A recycled pid runs something else; a zombie has an empty command line.
        return pid if str(self.properties_path).encode() in command else None

    def answers(self, timeout_s: float = 2.0) -> bool:
        """Whether a broker answers metadata requests on this port."""
        return wait_for_broker(self.settings, timeout_s)

    def start(self, timeout_s: float = 90.0) -> bool:
        """Start the broker in the background and wait until it answers.

        Returns
        -------
        bool
            True if started, False if it was already running and answering.

        Raises
        ------
        BrokerError
            If the port is taken by something else, or the broker exits or does
            not answer within ``timeout_s`` (the message names the log file).
        """
        pid = self.running_pid()
        if pid is not None:
            if self.answers(timeout_s):
                return False
            raise BrokerError(f"broker pid {pid} runs but does not answer on "
                              f"{self.bootstrap_servers}; see {self.log_path}")
        if port_in_use(self.port):
            raise BrokerError(f"port {self.port} is already in use by another process; "
                              f"choose another with --port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(
            server_properties(self.data_dir, self.port, controller_port=free_port()))
        if not (self.data_dir / "kafka-logs" / "meta.properties").exists():
            self._format_storage()
        process = self._launch()
        self._wait_until_answering(process, timeout_s)
        return True

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker: SIGTERM (a clean shutdown), then SIGKILL after ``timeout_s``.

        Returns
        -------
        bool
            True if a running broker was stopped, False if none ran.
        """
        pid = self.running_pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return False
        _signal(pid, signal.SIGTERM)
        if not self._wait_for_exit(timeout_s):
            _signal(pid, signal.SIGKILL)
            self._wait_for_exit(10.0)
        _collect_exit_status(pid)
        self.pid_path.unlink(missing_ok=True)
        return True

    def _java(self, main_class: str, *args: str, jvm_options: list[str] = ()) -> list[str]:
        return ["java", *jvm_options, f"-Dkafka.logs.dir={self.data_dir}",
                f"-Dlog4j2.configurationFile={KAFKA_PROJECT / 'log4j2.properties'}",
                "-cp", str(self.jars_dir / "*"), main_class, *args]

    def _format_storage(self) -> None:
        # A short-lived tool: the quick first JIT tier starts it faster.
        command = self._java("kafka.tools.StorageTool", "format", "-t", random_cluster_id(),
                             "-c", str(self.properties_path),
                             jvm_options=["-XX:TieredStopAtLevel=1"])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerError(f"formatting {self.data_dir} failed:\n{done.stdout}{done.stderr}")

    def _launch(self) -> subprocess.Popen:
        with open(self.console_path, "ab") as console:
            # A session of its own: the broker outlives `recallstream broker start` and
            # ignores the terminal's Ctrl-C.
            process = subprocess.Popen(
                self._java("kafka.Kafka", str(self.properties_path), jvm_options=JVM_OPTIONS),
                cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=console,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_path.write_text(f"{process.pid}\n")
        _CHILDREN[process.pid] = process
        return process

    def _wait_until_answering(self, process: subprocess.Popen, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_path.unlink(missing_ok=True)
                raise BrokerError(f"the broker exited with code {process.returncode} while "
                                  f"starting; see {self.log_path} and {self.console_path}:\n"
                                  f"{_tail(self.console_path)}{_tail(self.log_path)}")
            # A cheap TCP probe first: a metadata request only once the port is open.
            if port_in_use(self.port) and self.answers(max(0.1, deadline - time.monotonic())):
                return
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"the broker did not answer on {self.bootstrap_servers} within "
                          f"{timeout_s:.0f} s and was stopped; see {self.log_path}")

    def _wait_for_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.running_pid() is None:
                return True
            time.sleep(0.1)
        return False


# Brokers started by this process, kept so that their exit status is collected (no zombie).
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    process = _CHILDREN.get(pid)
    if process is not None and process.poll() is not None:
        del _CHILDREN[pid]


def _collect_exit_status(pid: int) -> None:
    # An exited child stays a zombie (still signalable) until its status is collected.
    process = _CHILDREN.pop(pid, None)
    if process is not None:
        process.wait(timeout=10)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # exited meanwhile
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def running_broker(settings: Settings, say=None) -> Iterator[Settings]:
    """``settings`` with a broker that answers: the configured one if it answers,
    else the local broker, started here and stopped on exit."""
    if wait_for_broker(settings, timeout_s=3):
        yield settings
        return
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        raise UsageError(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} does not answer")
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))  # stdout may be JSON
    say(f"starting the local Kafka broker on port {settings.broker_port} ...")
    broker = LocalBroker.from_settings(settings)
    broker.start()
    try:
        yield dataclasses.replace(settings, bootstrap_servers=broker.bootstrap_servers)
    finally:
        say("stopping the local Kafka broker")
        broker.stop()
