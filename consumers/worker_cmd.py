"""``recallstream worker``: the command line of :class:`~recallstream.consumers.worker.Worker`.

The worker trains on the ``examples`` topic that ``recallstream joiner`` fills;
``--with-joiner`` runs one joiner as a child process of the worker (small
deployments, the demo).

Exit statuses: 0 when done; 1 when the ``--with-joiner`` joiner failed; 2 without a
broker (or bad arguments); 3 when another worker owns the checkpoint directory; 4 when
a Kafka poll never returned; 5 when Qdrant did not take the pending vectors within
``qdrant_drain_timeout_s`` before a checkpoint, or stayed unavailable beyond the index's
retries (e.g. at start-up) (4 and 5: restart it, it resumes from its last checkpoint).
"""

from __future__ import annotations

from recallstream.consumers.joiner_process import JoinerProcess
from recallstream.consumers.thread_policy import stop_on_signals
from recallstream.consumers.usage import CommandError, positive_int, require_broker
from recallstream.consumers.worker import Worker, WorkerOptions
from recallstream.streaming.settings import Settings


class ModelOwned(CommandError):
    """Another worker holds the checkpoint directory (exit status 3)."""

    status = 3


class IngestionStalled(CommandError):
    """Reading stopped, a Kafka poll that never returned or the reading process gone (exit
    status 4): restart, the checkpoint resumes it."""

    status = 4


class IndexStalled(CommandError):
    """Qdrant did not take the pending vectors before a checkpoint's deadline (exit status 5):
    restart, the checkpoint resumes it (offsets never went past the vectors not written)."""

    status = 5


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "worker", parents=[subparsers.settings_parent],
        help="consume events, train the towers incrementally, keep Qdrant fresh")
    parser.add_argument("--exit-when-idle", type=float, default=None, metavar="S",
                        help="stop after S seconds with nothing to read (default: run forever)")
    parser.add_argument("--max-batches", type=positive_int, default=None,
                        help="stop after this many batches")
    parser.add_argument("--lock-timeout", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for another worker to release the model")
    parser.add_argument("--with-joiner", action="store_true",
                        help="also run one joiner (exposures + clicks -> examples) as a child "
                             "process; it stops with the worker")
    parser.add_argument("--progress", action="store_true", help="print progress to stderr")
    parser.add_argument("--json", action="store_true", help="print the final counters as JSON")
    parser.set_defaults(func=run)


def run(args, settings: Settings) -> int:
    """The command: 0 when done; without a broker (status 2), with the model owned by
    another worker (3), with stalled ingestion (4) or a stalled Qdrant (5), a
    :class:`CommandError`."""
    from recallstream.consumers.cli import print_report
    from recallstream.model.checkpoint import CheckpointLocked
    from recallstream.model.index_sync import StalledIndex
    from recallstream.model.edge_index import FolderInUse
    from recallstream.streaming.prefetch import StalledIngestion

    require_broker(settings)
    joiner = JoinerProcess(settings, args.exit_when_idle) if args.with_joiner else None
    worker = Worker(settings, WorkerOptions(exit_when_idle_s=args.exit_when_idle,
                                            max_batches=args.max_batches,
                                            lock_timeout_s=args.lock_timeout,
                                            progress=args.progress), upstream=joiner)
    stop_on_signals(worker.stop)
    try:
        report = worker.run()
    except CheckpointLocked as error:
        raise ModelOwned(str(error)) from error
    except FolderInUse as error:  # edge:PATH outside the checkpoint folder, open elsewhere
        raise CommandError(str(error)) from error
    except StalledIngestion as error:
        raise IngestionStalled(f"{error}; restart it: it resumes from its last checkpoint") from error
    except StalledIndex as error:
        raise IndexStalled(f"{error}; restart it: it resumes from its last checkpoint") from error
    except Exception as error:  # Qdrant away beyond the index's retries (e.g. at start-up)
        from recallstream.model.vector_index import is_unavailable

        if not is_unavailable(error):
            raise
        raise IndexStalled(f"Qdrant unavailable ({str(error)[:200]}); restart it: it resumes "
                           f"from its last checkpoint") from error
    finally:
        if joiner is not None:
            joined = joiner.stop()
    if joiner is not None:
        report = {**report, "joiner": joined}
    print_report(report, args.json)
    return 0
