"""The worker's progress line (pure formatting, no Kafka): no loss is shown before the first
trained batch instead of ``nan``."""

from recallstream.consumers.progress import print_progress


def progress_line(capsys, **report):
    fields = {"clicks_trained": 0, "batches": 0, "examples_seen": 0, "dead_lettered": 0,
              "last_loss": float("nan"), **report}
    print_progress(fields)
    return capsys.readouterr().err


def test_before_the_first_batch_the_loss_is_a_dash(capsys):
    assert progress_line(capsys).rstrip().endswith("loss -")


def test_after_a_batch_the_loss_has_three_decimals(capsys):
    line = progress_line(capsys, clicks_trained=1024, batches=1, examples_seen=4096,
                         last_loss=6.40213)
    assert line.startswith("\rworker:") and "1024 clicks trained" in line
    assert line.rstrip().endswith("loss 6.402")


def test_the_rolling_recall_stands_beside_most_popular(capsys):
    line = progress_line(capsys, clicks_trained=512, batches=2, last_loss=5.1,
                         **{"rolling_recall@50": 0.4512, "popularity_rolling_recall@50": 0.2499})
    assert "recall@50 0.451 (most popular 0.250)" in line and line.rstrip().endswith("loss 5.100")
