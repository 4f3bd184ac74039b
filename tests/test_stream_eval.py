"""`recallstream eval stream` on a small planted MovieLens-format replay: the report's keys
and figures, determinism, what each policy changes, the plot, bad arguments."""

import json
import random

import numpy as np
import pytest

from recallstream.consumers.cli import main
from recallstream.model.stream_eval import ClickStream, StreamEvalConfig, StreamEvaluation

DAY = 86_400
GENRE_FLAGS = "|".join(["0"] * 19)


@pytest.fixture(scope="module")
def planted_ml100k(tmp_path_factory):
    """30 days of clicks; each user likes one of 4 clusters of 15 movies."""
    folder = tmp_path_factory.mktemp("ml-100k")
    rng = random.Random(0)
    rows = []
    for day in range(30):
        for n in range(60):
            user = rng.randrange(1, 41)
            movie = (user % 4) * 15 + rng.randrange(15) + 1
            rows.append(f"{user}\t{movie}\t5\t{880_000_000 + day * DAY + n * 60}")
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    (folder / "u.user").write_text("".join(f"{u}|30|F|writer|02139\n" for u in range(1, 41)))
    (folder / "u.item").write_text("".join(f"{m}|Movie {m} (1995)|01-Jan-1995||http://x|{GENRE_FLAGS}\n"
                                           for m in range(1, 61)))
    return folder


def run_json(capsys, *args):
    assert main(["eval", "stream", "--json", "--no-progress", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_report_keys_figures_and_plot(planted_ml100k, capsys, tmp_path):
    plot = tmp_path / "recall.png"
    report = run_json(capsys, "--data-dir", str(planted_ml100k), "--plot", str(plot))
    assert report["policy"] == "snapshot+incremental" and report["log_q"] is True
    assert report["clicks_scored"] == 23 * 60  # days 7..29
    assert [d["day"] for d in report["per_day"]] == list(range(7, 30))
    assert sum(d["clicks"] for d in report["per_day"]) == report["clicks_scored"]
    for key in ("prequential_recall@50", "popularity_recall@50", "ease_recall@50"):
        assert 0.0 <= report[key] <= 1.0
    # 60 movies and k = 50: what matters is whether the model beats the popular list
    assert report["prequential_recall@50"] > report["popularity_recall@50"]
    assert report["wall_s"] > 0 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_seed_gives_the_same_report(planted_ml100k, capsys):
    first = run_json(capsys, "--data-dir", str(planted_ml100k), "--policy", "incremental")
    second = run_json(capsys, "--data-dir", str(planted_ml100k), "--policy", "incremental")
    first.pop("wall_s"), second.pop("wall_s")
    assert first == second


def test_policies_change_only_how_weights_change(planted_ml100k):
    from recallstream.streaming.movielens import load_movielens

    data = load_movielens("ml-100k", planted_ml100k)
    stream = ClickStream.from_ratings(data.ratings)
    reports = {}
    for policy in ("incremental", "snapshot", "snapshot+incremental"):
        evaluation = StreamEvaluation(stream, data.users, data.items,
                                      StreamEvalConfig(policy=policy, batch_size=16))
        reports[policy] = evaluation.run()
        trained_steps = len(evaluation.losses)
        assert (trained_steps == 0) == (policy == "snapshot")
        assert evaluation._snapshots_trained == (1 if policy == "incremental" else 23)
    # the baselines see the same clicks whatever the policy
    assert len({r["popularity_recall@50"] for r in reports.values()}) == 1
    assert len({r["ease_recall@50"] for r in reports.values()}) == 1
    assert len({r["prequential_recall@50"] for r in reports.values()}) == 3


def test_a_snapshot_policy_keeps_its_weights_through_the_day(planted_ml100k):
    from recallstream.streaming.movielens import load_movielens

    data = load_movielens("ml-100k", planted_ml100k)
    evaluation = StreamEvaluation(ClickStream.from_ratings(data.ratings), data.users, data.items,
                                  StreamEvalConfig(policy="snapshot", batch_size=16))
    weights = []
    original = evaluation._replay_batch

    def spy(day, rows):
        weights.append((day, evaluation.learner.model.item_tower.blocks["item_id"].table.weight.detach().clone()))
        original(day, rows)
    evaluation._replay_batch = spy
    evaluation.run()
    by_day = {}
    for day, w in weights:
        by_day.setdefault(day, []).append(w)
    for day, ws in by_day.items():
        assert all(np.array_equal(ws[0].numpy(), w.numpy()) for w in ws), day
    assert not np.array_equal(by_day[8][0].numpy(), by_day[9][0].numpy())


def test_bad_arguments(planted_ml100k, capsys):
    assert main(["eval", "stream", "--data-dir", str(planted_ml100k), "--plot", "x.pdf"]) == 2
    assert "--plot" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "stream", "--policy", "nightly"])
    assert main(["eval", "stream", "--data-dir", str(planted_ml100k.parent)]) == 2
