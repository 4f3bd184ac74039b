"""The worker's components, built and wired together from the settings.

One place says which parts the worker is made of and how they share state:
the ingestor reports entity changes and the trainer applies them to the one
:class:`~recallstream.streaming.entity_tables.EntityTables`, which the
learner, the monitor and the publisher all read.
"""

from __future__ import annotations

from typing import NamedTuple

from recallstream.consumers.stream_trainer import StreamTrainer
from recallstream.consumers.worker_state import WorkerState
from recallstream.streaming.settings import Settings


class Components(NamedTuple):
    """What :func:`open_components` returns (the index too, for closing when it is ours).

    Examples
    --------
    >>> Components._fields
    ('ingestor', 'trainer', 'state', 'index', 'follower')
    """

    ingestor: object
    trainer: StreamTrainer
    state: WorkerState
    index: object
    follower: object


def open_components(settings: Settings, index, recall_k: int, rolling_clicks: int) -> Components:
    """Connect to Kafka and Qdrant (``index``, or a new VectorIndex on
    ``settings.qdrant_location()``) and build the worker's parts, in their initial state."""
    from recallstream.consumers.index_publisher import IndexPublisher
    from recallstream.consumers.snapshot_follower import SnapshotFollower
    from recallstream.model.index_sync import IndexSync
    from recallstream.model.online import OnlineLearner
    from recallstream.model.prequential import PrequentialMonitor
    from recallstream.model.vector_index import VectorIndex
    from recallstream.streaming.entity_tables import EntityTables
    from recallstream.streaming.ingest import StreamIngestor
    from recallstream.streaming.ingest_process import IngestorProcess
    from recallstream.streaming.minibatch import Minibatcher

    s = settings
    ingestor = IngestorProcess(s) if s.reader_process else StreamIngestor.aligned(s)
    learner = OnlineLearner(seed=s.seed)
    tables = EntityTables()
    index = index or VectorIndex.connect(s.qdrant_location(), s.qdrant_api_key or None)
    sync = IndexSync(index, items=s.collection_items, users=s.collection_users,
                     dim=learner.dim, min_interval_s=s.qdrant_write_interval_s,
                     drain_timeout_s=s.qdrant_drain_timeout_s)
    trainer = StreamTrainer(learner, tables, PrequentialMonitor(recall_k, rolling_clicks),
                            Minibatcher(s.batch_size, s.batch_timeout_s),
                            IndexPublisher(sync, learner, tables, s.reembed_every_batches),
                            s.health_every_batches)
    follower = SnapshotFollower(s.snapshot_dir, s.snapshot_check_s, s.reset_every_event_days or None)
    return Components(ingestor, trainer, WorkerState(ingestor, trainer, follower), index, follower)
