"""The soak's accounting: every produced click in exactly one place of the model's lineage.

The model the worker ends with is a snapshot (the one its checkpoint says it reset
to, if any) plus the clicks trained on top of it. The snapshot's manifest says how
many examples it trained on (those before its cut offsets in ``examples``) and the
checkpoint's ``clicks_since_snapshot`` how many the worker applied after the cut.
:func:`account` sets those two counts against the examples topic itself
(``read_committed``) and the clicks the soak produced:

- ``clicks_applied`` = the snapshot's examples + the clicks since the snapshot;
- ``duplicates_applied`` = examples of one click id written twice, plus whatever
  either part applied beyond the examples on its side of the cut;
- ``lost`` = produced clicks with no example, plus the examples of either side of the
  cut that its part did not apply;
- ``unexpected`` = examples of click ids that were never produced.

Examples
--------
>>> examples = [("a", 0, 0), ("b", 0, 1), ("c", 1, 0), ("d", 1, 1)]  # (click id, partition, offset)
>>> lineage = Lineage(snapshot_version=1, snapshot_examples=2, cut={0: 1, 1: 1},
...                   clicks_since_snapshot=2, clicks_trained=4, resets=1)
>>> figures = account({"a", "b", "c", "d"}, examples, lineage)
>>> figures["clicks_applied"], figures["duplicates_applied"], figures["lost"]
(4, 0, 0)
>>> account({"a", "b", "c", "d", "e"}, examples + [("c", 1, 2)], lineage)["lost"]
2
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson

from recallstream.streaming.settings import Settings


@dataclass(frozen=True)
class Lineage:
    """What the final checkpoint and its snapshot's manifest say the model is made of.

    Examples
    --------
    >>> Lineage(None, 0, {}, 10, 10, 0).snapshot_examples
    0
    """

    snapshot_version: int | None
    snapshot_examples: int  # examples before the cut the snapshot trained on (0: no snapshot)
    cut: dict[int, int]  # examples offsets of the snapshot's cut, per partition
    clicks_since_snapshot: int
    clicks_trained: int
    resets: int


def account(produced_ids: set[str], examples: list[tuple[str, int, int]], lineage: Lineage) -> dict:
    """The soak's figures (see the module docstring); ``examples`` are ``(click id,
    partition, offset)`` of the committed examples."""
    before = sum(1 for _, partition, offset in examples if offset < lineage.cut.get(partition, 0))
    after = len(examples) - before
    ids = {event_id for event_id, _, _ in examples}
    applied_before, applied_after = lineage.snapshot_examples, lineage.clicks_since_snapshot
    return {
        "clicks_applied": applied_before + applied_after,
        "duplicates_applied": (len(examples) - len(ids) + max(0, applied_before - before)
                               + max(0, applied_after - after)),
        "lost": (len(produced_ids - ids) + max(0, before - applied_before)
                 + max(0, after - applied_after)),
        "unexpected": len(ids - produced_ids),
        "examples": len(examples),
        "examples_before_cut": before,
        "lineage": asdict(lineage),
    }


def read_examples(settings: Settings) -> list[tuple[str, int, int]]:
    """``(click id, partition, offset)`` of every committed example."""
    from recallstream.streaming.kafka_io import read_topic

    return [(orjson.loads(r.value)["event_id"], r.partition, r.offset)
            for r in read_topic(settings, settings.topic_examples, read_committed=True)]


def count_dead_letters(settings: Settings) -> int:
    """Committed records in the dead-letters topic."""
    from recallstream.streaming.kafka_io import read_topic

    return sum(1 for _ in read_topic(settings, settings.topic_dead_letters, read_committed=True))


def model_lineage(settings: Settings) -> Lineage:
    """The :class:`Lineage` of the worker's newest checkpoint and its snapshot's manifest."""
    from recallstream.consumers.checkpoint_cmd import summarize
    from recallstream.model.checkpoint import CheckpointStore
    from recallstream.model.snapshot_store import SnapshotStore

    state = CheckpointStore(settings.checkpoint_dir).load_latest()
    if state is None:
        raise FileNotFoundError(f"no worker checkpoint in {settings.checkpoint_dir}")
    summary = summarize(state, "")
    version, examples, cut = summary["snapshot_version"], 0, {}
    if version is not None:
        snapshot = SnapshotStore(settings.snapshot_dir).load(version)
        examples = snapshot.examples
        cut = {int(p): o for p, o in snapshot.cut_offsets.get(settings.topic_examples, {}).items()}
    return Lineage(version, examples, cut, summary["clicks_since_snapshot"],
                   summary["clicks_trained"], summary["resets"])
