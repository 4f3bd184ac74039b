"""The worker's trainer trains and scores exactly as the plain learner and monitor do,
though it encodes the catalog once per version and each batch's users once."""

import random

import torch

from recallstream.consumers.index_publisher import IndexPublisher
from recallstream.consumers.stream_trainer import StreamTrainer
from recallstream.model.catalog_vectors import BatchVectors
from recallstream.model.index_sync import IndexSync
from recallstream.model.online import OnlineLearner, stream_tower_config
from recallstream.model.prequential import PrequentialMonitor
from recallstream.model.vector_index import VectorIndex
from recallstream.streaming.entity_tables import EntityTables
from recallstream.streaming.events import EntityRecord
from recallstream.streaming.minibatch import Minibatcher


def learner():
    return OnlineLearner(stream_tower_config(id_buckets=512, dim=8, history_length=5), seed=7)


def test_trainer_matches_train_batch_and_the_monitor_step_by_step():
    rng = random.Random(3)
    tables = EntityTables()
    tables.apply([EntityRecord("items", f"i{n}", 0.0, {"genres": ["g"]}) for n in range(40)])
    index = VectorIndex.connect(":memory:")
    trained = learner()
    sync = IndexSync(index, items="items", users="users", dim=trained.dim)
    trainer = StreamTrainer(trained, tables, PrequentialMonitor(k=5), Minibatcher(16, 60.0),
                            IndexPublisher(sync, trained, tables, reembed_every_batches=4))
    plain, monitor = learner(), PrequentialMonitor(k=5)
    try:
        for step in range(12):
            if step == 6:  # a catalog change between batches: encoded again
                tables.apply([EntityRecord("items", "new", 1.0, {})])
            batch = [(f"u{rng.randrange(9)}", rng.choice(sorted(tables.items) + ["unknown"]),
                      float(step)) for _ in range(16)]
            user_ids, item_ids = [c[0] for c in batch], [c[1] for c in batch]
            vectors = BatchVectors.compute(plain, user_ids, item_ids, tables.users, tables.items)
            monitor.score(plain, user_ids, item_ids, tables.users, tables.items, vectors)
            expected_loss = plain.train_batch(user_ids, item_ids, tables.users, tables.items)
            trainer.train(batch)
            assert trainer.last_loss == expected_loss
            assert trainer.monitor.model_hits.hits == monitor.model_hits.hits
            assert trainer.monitor.model_hits.clicks == monitor.model_hits.clicks == 16 * (step + 1)
        assert monitor.model_hits.hits > 0
        for name, tensor in plain.model.state_dict().items():
            assert torch.equal(trained.model.state_dict()[name], tensor), name
    finally:
        trainer.publisher.close()
        index.close()
