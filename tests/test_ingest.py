"""StreamIngestor with the aligner, on an in-memory consumer (pure logic: no broker)."""

from collections import namedtuple

import orjson
from kafka import TopicPartition

from recallstream.streaming.alignment import RecordAligner
from recallstream.streaming.ingest import StreamIngestor
from recallstream.streaming.settings import Settings

Record = namedtuple("Record", "topic partition offset timestamp key value")


class LogConsumer:
    """Hands out each partition's log in chunks; counts the position reads (each costs
    a real consumer about 0.1 ms)."""

    def __init__(self, logs, chunk=40):
        self.logs, self.chunk = logs, chunk
        self.next = {tp: 0 for tp in logs}
        self.position_reads = 0
        self.config = {"bootstrap_servers": "memory"}

    def partitions_for_topic(self, topic):
        return {tp.partition for tp in self.logs if tp.topic == topic}

    def assign(self, partitions):
        pass

    def seek_to_beginning(self, *partitions):
        for tp in partitions:
            self.next[tp] = 0

    def poll(self, timeout_ms=0, max_records=None):
        out = {}
        for tp, log in self.logs.items():
            if self.next[tp] < len(log):
                out[tp] = log[self.next[tp]:self.next[tp] + self.chunk]
                self.next[tp] += len(out[tp])
        return out

    def highwater(self, tp):
        return len(self.logs[tp])

    def position(self, tp):
        self.position_reads += 1
        return self.next[tp]

    def close(self):
        pass


def example(partition, offset, ts_ms):
    value = {"event_id": f"c{partition}-{offset}", "ts": ts_ms / 1000, "user_id": f"u{partition}",
             "item_id": f"i{offset % 7}", "impression_id": f"m{partition}-{offset}"}
    return Record("examples", partition, offset, ts_ms, f"u{partition}".encode(), orjson.dumps(value))


def test_the_aligner_asks_each_partition_once_per_poll_whether_it_is_read_to_its_end():
    settings = Settings.resolve(environ={})
    # two example partitions spread over 100 windows of 100 ms; the catalog topics empty
    logs = {TopicPartition("examples", p): [example(p, n, 50 * n + p) for n in range(200)]
            for p in (0, 1)}
    logs.update({TopicPartition(settings.topic_items, 0): [],
                 TopicPartition(settings.topic_users, 0): []})
    consumer = LogConsumer(logs)
    ingestor = StreamIngestor(settings, consumer=consumer, producer=object(),
                              aligner=RecordAligner(100))
    clicks, polls = [], 0
    while len(clicks) < 400:
        polls += 1
        assert polls < 50, "the ingestor stopped handing records on"
        clicks += [p.click for p in ingestor.poll(timeout_s=0).positives]
    # released window by window (100 ms), each window partition by partition
    order = sorted(((50 * n + p) // 100, p, n) for p in (0, 1) for n in range(200))
    assert [c.event_id for c in clicks] == [f"c{p}-{n}" for _, p, n in order]
    assert consumer.position_reads <= polls * len(logs)
