"""``recallstream soak``: the whole pipeline under a seeded chaos schedule, then an audit.

1. starts a private broker (:class:`~recallstream.consumers.local_kafka.LocalBroker`
   on a free port, in the run's folder), unless ``KAFKA_BOOTSTRAP_SERVERS`` is set:
   then it uses that broker and skips the broker restarts (and says so);
2. creates topics of its own for this run (deleted at the end);
3. replays MovieLens-100K, repeated in passes with fresh event ids and later event
   times until ``--clicks`` clicks (:mod:`recallstream.consumers.soak_feed`), with
   their exposures, at ``--rate`` events/s, and ``--poison-rate`` poison records
   (:mod:`recallstream.consumers.poison`) among them;
4. meanwhile runs ``recallstream joiner`` and ``recallstream worker`` as child
   processes (restarted whenever they exit) and applies the seeded chaos schedule
   (:mod:`recallstream.consumers.chaos`, seeded by ``--seed``): SIGKILLs the
   joiner and the worker (restarted at once), restarts the broker (clean or
   SIGKILL), makes Qdrant fail for ``--outage-s`` seconds (the test hook of
   :mod:`recallstream.model.index_faults`), and takes snapshots (``recallstream
   snapshot``; the replay waits for it) that the worker resets to at the next
   event-day boundary;
5. stops the chaos, stops both children gracefully, and lets a joiner then a
   worker catch up and exit when idle;
6. audits (:mod:`recallstream.consumers.soak_audit`) and prints the figures:
   every produced click must be applied exactly once in the model's lineage, and
   every poison record must be dead-lettered. A missed target exits with status 1.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from recallstream.consumers.usage import CommandError, positive_int
from recallstream.streaming.settings import Settings

WORKER_SETTINGS = ("bootstrap_servers", "topic_examples", "topic_items", "topic_users",
                   "topic_dead_letters", "consumer_group", "batch_size", "batch_timeout_s",
                   "checkpoint_every_s", "checkpoint_every_batches", "checkpoint_dir",
                   "metrics_port", "snapshot_dir", "snapshot_check_s", "reset_every_event_days",
                   "qdrant", "qdrant_drain_timeout_s", "seed")
SNAPSHOT_SETTINGS = ("bootstrap_servers", "topic_examples", "topic_items", "topic_users",
                     "snapshot_dir", "snapshot_days", "snapshot_epochs", "seed")
FINAL_ATTEMPTS = 5  # runs of the final joiner and worker before the soak gives up
MAX_SNAPSHOT_FAILURES = 10  # a snapshot may fail while the broker restarts; not forever


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "soak", parents=[subparsers.settings_parent],
        help="replay under seeded chaos (kills, broker restarts, Qdrant outages, snapshots, "
             "poison) and check that every click is applied exactly once",
        description=__doc__.split("\n\n")[0] + " The chaos and the poison are seeded by --seed.")
    parser.add_argument("--clicks", type=positive_int, default=200_000,
                        help="clicks to produce (default 200,000: two passes of MovieLens-100K)")
    parser.add_argument("--pass-clicks", type=positive_int, default=100_000,
                        help="ratings per pass over MovieLens-100K (default all 100,000)")
    parser.add_argument("--rate", type=float, default=4000.0, metavar="EVENTS_PER_S",
                        help="exposures + clicks + poison per second (default 4,000)")
    parser.add_argument("--exposures-per-click", type=positive_int, default=3, metavar="K",
                        help="other items exposed with each clicked item (default 3)")
    parser.add_argument("--poison-rate", type=float, default=0.01,
                        help="share of poison records among the events (default 0.01)")
    parser.add_argument("--kill-joiner", type=int, default=3, metavar="N",
                        help="SIGKILLs of the joiner (default 3)")
    parser.add_argument("--kill-worker", type=int, default=3, metavar="N",
                        help="SIGKILLs of the worker (default 3)")
    parser.add_argument("--restart-broker", type=int, default=2, metavar="N",
                        help="broker restarts, clean or SIGKILL (default 2)")
    parser.add_argument("--qdrant-outage", type=int, default=2, metavar="N",
                        help="Qdrant outages (default 2)")
    parser.add_argument("--outage-s", type=float, default=10.0,
                        help="length of a Qdrant outage in seconds (default 10)")
    parser.add_argument("--snapshots", type=int, default=1, metavar="N",
                        help="snapshots taken, in the first half of the run (default 1)")
    parser.add_argument("--idle-s", type=float, default=5.0,
                        help="the final joiner and worker exit after this long idle (default 5)")
    parser.add_argument("--keep-files", action="store_true",
                        help="keep the run's folder (logs, checkpoints, snapshots) on success")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(func=run)


def run(args, settings: Settings) -> int:
    """The command: 0 when every target is met, 1 when one is missed (the figures are
    printed either way), 2 for bad arguments or no broker."""
    from recallstream.consumers.cli import print_report
    from recallstream.streaming.kafka_io import scratch_topics

    _check(args)
    run_dir = Path(tempfile.mkdtemp(prefix="recallstream-soak-"))
    say(f"soak: run folder {run_dir}")
    broker = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else _start_broker(run_dir, settings)
    try:
        if broker is not None:
            settings = dataclasses.replace(settings, bootstrap_servers=broker.bootstrap_servers)
        else:
            say(f"soak: KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} is set: using that "
                f"broker and skipping the broker restarts")
            _require(settings)
        run_id = f"soak-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with scratch_topics(settings, run_id) as topics:
            figures = Soak(args, _tuned(topics, run_dir), run_dir, broker).run()
    finally:
        if broker is not None:
            broker.stop()
    print_report(figures, args.json)
    missed = missed_targets(figures)
    if missed:
        raise CommandError(f"soak targets missed: {'; '.join(missed)} (logs, checkpoints and "
                           f"snapshots kept in {run_dir})")
    if not args.keep_files:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def missed_targets(figures: dict) -> list[str]:
    """The targets ``figures`` misses, each as a sentence (empty: all met).

    Examples
    --------
    >>> missed_targets({"lost": 0, "duplicates_applied": 0, "dead_lettered": 5,
    ...                 "poison_injected": 5, "unexpected": 0, "send_failures": 0})
    []
    >>> missed_targets({"lost": 2, "duplicates_applied": 0, "dead_lettered": 4,
    ...                 "poison_injected": 5, "unexpected": 0, "send_failures": 0})
    ['lost == 2, not 0', 'dead_lettered == 4, not poison_injected == 5']
    """
    missed = [f"{name} == {figures[name]}, not 0"
              for name in ("lost", "duplicates_applied", "unexpected", "send_failures")
              if figures[name] != 0]
    if figures["dead_lettered"] != figures["poison_injected"]:
        missed.append(f"dead_lettered == {figures['dead_lettered']}, not poison_injected == "
                      f"{figures['poison_injected']}")
    return missed


def _check(args) -> None:
    from recallstream.consumers.usage import UsageError

    if not args.rate > 0:
        raise UsageError(f"--rate must be positive, got {args.rate}")
    if not 0 <= args.poison_rate < 1:
        raise UsageError(f"--poison-rate must be in [0, 1), got {args.poison_rate}")
    counts = (args.kill_joiner, args.kill_worker, args.restart_broker, args.qdrant_outage,
              args.snapshots)
    if min(counts) < 0 or not args.outage_s > 0 or not args.idle_s > 0:
        raise UsageError("fault counts must be >= 0, --outage-s and --idle-s positive")


def _start_broker(run_dir: Path, settings: Settings):
    from recallstream.consumers.local_kafka import LocalBroker, fetch_jars, free_port

    broker = LocalBroker(data_dir=run_dir / "kafka", port=free_port(),
                         jars_dir=fetch_jars(settings.kafka_cache_dir))
    say(f"soak: starting a private Kafka broker on {broker.bootstrap_servers}")
    broker.start(timeout_s=120)
    return broker


def _require(settings: Settings) -> None:
    from recallstream.consumers.usage import require_broker

    require_broker(settings)


def _tuned(settings: Settings, run_dir: Path) -> Settings:
    """The run's settings: its own folders, frequent checkpoints, quick snapshot checks, a
    reset at each event-day boundary after a snapshot, snapshots of every example before
    their cut (so that the lineage covers every click), no HTTP endpoint."""
    return dataclasses.replace(
        settings, checkpoint_dir=str(run_dir / "checkpoints"),
        snapshot_dir=str(run_dir / "snapshots"), qdrant="edge:", metrics_port=0,
        checkpoint_every_s=5.0, snapshot_check_s=1.0, reset_every_event_days=1.0,
        snapshot_days=1e6, snapshot_epochs=1.0, qdrant_drain_timeout_s=20.0)


class Soak:
    """One soak run on ready topics (see the module docstring); :meth:`run` returns the figures.

    Parameters
    ----------
    args : argparse.Namespace
        The command's options.
    settings : Settings
        The run's topics and folders (:func:`_tuned`).
    run_dir : Path
        Where the logs, checkpoints, snapshots and the outage flag live.
    broker : LocalBroker or None
        The private broker to restart (None: an external one, never restarted).

    Examples
    --------
    Needs a broker and minutes: see tests/test_soak.py.
    """

    def __init__(self, args, settings: Settings, run_dir: Path, broker) -> None:
        from recallstream.consumers.chaos import ChaosSchedule
        from recallstream.consumers.joiner_process import joiner_command
        from recallstream.consumers.poison import PoisonMaker
        from recallstream.consumers.soak_feed import SoakFeed, soak_passes
        from recallstream.consumers.supervised import Supervised
        from recallstream.model.index_faults import OUTAGE_FILE_ENV
        from recallstream.streaming.movielens import load_movielens

        self.args, self.settings, self.run_dir, self.broker = args, settings, run_dir, broker
        plans = soak_passes(load_movielens("ml-100k"), args.clicks, args.pass_clicks,
                            settings.seed, args.exposures_per_click)
        self.feed = SoakFeed(plans, settings, args.rate, PoisonMaker(settings.seed, args.poison_rate))
        duration = self.feed.total_events * (1 + args.poison_rate) / args.rate
        counts = {"kill_joiner": args.kill_joiner, "kill_worker": args.kill_worker,
                  "restart_broker": args.restart_broker if broker is not None else 0,
                  "qdrant_outage": args.qdrant_outage, "snapshot": args.snapshots}
        self.schedule = ChaosSchedule.plan(settings.seed, duration, counts, args.outage_s)
        self.outage_flag = run_dir / "qdrant-down"
        env = {**os.environ, OUTAGE_FILE_ENV: str(self.outage_flag)}
        cli = [sys.executable, "-m", "recallstream.consumers.cli"]
        self.joiner = Supervised("joiner", joiner_command(settings, instance="soak"), run_dir, env)
        self.worker = Supervised("worker", [*cli, "worker", "--json",
                                            *settings.flags(*WORKER_SETTINGS)], run_dir, env)
        self.snapshotter = Supervised("snapshot", [*cli, "snapshot", "--json", "--no-progress",
                                                   *settings.flags(*SNAPSHOT_SETTINGS)], run_dir, env)
        self.done = {kind: 0 for kind in counts}
        self.snapshot_failures = 0
        self._outage_ends: float | None = None
        self._snapshots_wanted = 0
        self._snapshot_retry_at = 0.0

    def run(self) -> dict:
        started = time.monotonic()
        thread = threading.Thread(target=self.feed.run, name="soak-feed", daemon=True)
        thread.start()
        self.joiner.start()
        self.worker.start()
        try:
            try:
                self._chaos(started)
            finally:
                self._end_outage()
                self.feed.release()
            if self.feed.error is not None:
                raise CommandError(f"the soak's producer failed: {self.feed.error!r}")
            self._catch_up()
        finally:  # on any failure (or Ctrl-C) too: no child outlives the soak
            for child in (self.snapshotter, self.joiner, self.worker):
                child.stop(timeout_s=30)
        return self._figures(time.monotonic() - started)

    # -- the chaos phase -----------------------------------------------------------

    def _chaos(self, started: float) -> None:
        from tqdm import tqdm

        with tqdm(total=self.args.clicks, unit="click", desc="soak", file=sys.stderr,
                  disable=self.args.no_progress, mininterval=0.5) as bar:
            while not self._chaos_over():
                elapsed = time.monotonic() - started
                for fault in self.schedule.due(elapsed):
                    self._inject(fault, elapsed)
                if self._outage_ends is not None and elapsed >= self._outage_ends:
                    self._end_outage()
                self._tend_snapshots()
                self.joiner.ensure_running()
                self.worker.ensure_running()
                bar.update(self.feed.clicks_produced() - bar.n)
                bar.set_postfix_str(self._postfix(), refresh=False)
                time.sleep(0.2)

    def _chaos_over(self) -> bool:
        return (self.feed.done.is_set() and not self.schedule.pending()
                and self._outage_ends is None and self._snapshots_wanted == 0
                and not self.snapshotter.alive())

    def _postfix(self) -> str:
        done = sum(self.done.values())
        return (f"faults {done}/{len(self.schedule.faults)}, poison {self.feed.poison_sent}, "
                f"qdrant {'DOWN' if self._outage_ends is not None else 'up'}")

    def _inject(self, fault, elapsed: float) -> None:
        if fault.kind == "kill_joiner":
            self.joiner.kill()
            self.joiner.ensure_running()
        elif fault.kind == "kill_worker":
            self.worker.kill()
            self.worker.ensure_running()
        elif fault.kind == "restart_broker":
            self._restart_broker(fault.hard)
        elif fault.kind == "qdrant_outage":
            self.outage_flag.touch()
            self._outage_ends = max(self._outage_ends or 0.0, elapsed + fault.duration_s)
        elif fault.kind == "snapshot":
            self._snapshots_wanted += 1
            return  # counted once it is published
        self.done[fault.kind] += 1
        self._log(f"{fault.kind}{' (SIGKILL)' if fault.hard else ''} at {elapsed:.1f} s")

    def _restart_broker(self, hard: bool) -> None:
        from recallstream.consumers.local_kafka import BrokerError

        pid = self.broker.running_pid()
        if hard and pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while self.broker.running_pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
        self.broker.stop()
        from recallstream.consumers.local_kafka import port_in_use

        deadline = time.monotonic() + 30
        while port_in_use(self.broker.port) and time.monotonic() < deadline:
            time.sleep(0.2)  # a killed JVM's sockets take a moment to close
        for attempt in range(3):
            try:
                self.broker.start(timeout_s=120)
                return
            except BrokerError as error:  # e.g. the port still held a moment after a SIGKILL
                self._log(f"broker restart attempt {attempt + 1} failed: {error}")
                time.sleep(2.0)
        raise CommandError(f"the broker did not come back; see {self.broker.log_path}")

    def _end_outage(self) -> None:
        self.outage_flag.unlink(missing_ok=True)
        self._outage_ends = None

    def _tend_snapshots(self) -> None:
        """Start a wanted snapshot; count it once published, try again if it failed."""
        if self.snapshotter.alive() or self._snapshots_wanted == 0:
            return
        status = self.snapshotter.stop() if self.snapshotter.starts else None
        if status == 0:
            self._snapshots_wanted -= 1
            self.done["snapshot"] += 1
            self.feed.release()
            self._log("snapshot published")
            if self._snapshots_wanted == 0:
                return
        elif status is not None:
            self.snapshot_failures += 1
            if self.snapshot_failures >= MAX_SNAPSHOT_FAILURES:
                raise CommandError(f"`recallstream snapshot` failed {self.snapshot_failures} "
                                   f"times; see {self.snapshotter.log_path}")
            self._snapshot_retry_at = time.monotonic() + 3.0
        if time.monotonic() >= self._snapshot_retry_at:
            # the stream waits for the snapshot: events after it cross event days the
            # worker resets at, however far behind or ahead of the feed it is
            self.feed.hold()
            self.snapshotter.start()

    # -- the end: catch up and audit -------------------------------------------------

    def _catch_up(self) -> None:
        """Stop both children gracefully, then run a joiner and a worker until each has
        nothing left and exits by itself."""
        self._say("chaos over: the joiner, then the worker, catch up and exit when idle")
        self.joiner.stop()
        self.worker.stop()
        idle = ["--exit-when-idle", str(self.args.idle_s)]
        for child in (self.joiner, self.worker):
            statuses = []
            while not statuses or statuses[-1] != 0:
                if len(statuses) == FINAL_ATTEMPTS:
                    raise CommandError(f"the final {child.name} exited with statuses {statuses}; "
                                       f"see {child.log_path}")
                statuses.append(child.run_once(idle))

    def _figures(self, wall_s: float) -> dict:
        from recallstream.consumers.soak_audit import (account, count_dead_letters,
                                                       model_lineage, read_examples)

        lineage = model_lineage(self.settings)
        audit = account(self.feed.produced_ids(), read_examples(self.settings), lineage)
        return {
            "clicks_produced": self.feed.clicks_produced(),
            "clicks_applied": audit["clicks_applied"],
            "dead_lettered": count_dead_letters(self.settings),
            "poison_injected": self.feed.poison_injected(),
            "duplicates_applied": audit["duplicates_applied"],
            "lost": audit["lost"],
            "unexpected": audit["unexpected"],
            "send_failures": len(self.feed.failed),
            "faults": dict(self.done),
            "resets": lineage.resets,
            "snapshot_version": lineage.snapshot_version,
            "snapshot_examples": lineage.snapshot_examples,
            "clicks_since_snapshot": lineage.clicks_since_snapshot,
            "clicks_trained": lineage.clicks_trained,
            "examples": audit["examples"],
            "poison_kinds": dict(sorted(self.feed.poison_kinds.items())),
            "snapshot_failures": self.snapshot_failures,
            "joiner_exits": {str(k): v for k, v in sorted(self.joiner.exits.items())},
            "worker_exits": {str(k): v for k, v in sorted(self.worker.exits.items())},
            "broker": ("private, restarted by the chaos" if self.broker is not None else
                       "external (KAFKA_BOOTSTRAP_SERVERS): broker restarts skipped"),
            "passes": len(self.feed.plans),
            "rate": self.args.rate,
            "seed": self.settings.seed,
            "wall_s": round(wall_s, 1),
        }

    def _log(self, line: str) -> None:
        with open(self.run_dir / "chaos.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def _say(self, line: str) -> None:
        self._log(line)
        say(line)


def say(line: str) -> None:
    """Progress notes go to stderr: stdout carries the figures (JSON with ``--json``)."""
    print(line, file=sys.stderr, flush=True)
