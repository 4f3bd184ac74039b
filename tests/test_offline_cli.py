"""``recallstream train`` and ``recallstream eval offline`` end to end on MovieLens-100K (short
runs), and their answers to bad input: one line on stderr, exit status 2, no traceback."""

import orjson
import pytest

from recallstream.consumers.cli import main
from recallstream.model.snapshot import load_snapshot

movielens = pytest.importorskip("recallstream.streaming.movielens")


@pytest.fixture(scope="module")
def ml100k():
    try:
        return movielens.load_movielens("ml-100k")
    except movielens.DatasetUnavailable as error:  # offline machine without the cached wheel
        pytest.skip(f"MovieLens-100K unavailable: {error}")


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


def first_ratings(folder, count: int):
    """MovieLens-100K's recbole files in ``folder`` with only its first ``count`` ratings
    (an epoch of all 100,000 took 2.5 minutes of the suite on a slow machine)."""
    import zipfile

    with zipfile.ZipFile(movielens.recbole_wheel()) as archive:
        for suffix in ("inter", "user", "item"):
            text = archive.read(f"recbole/dataset_example/ml-100k/ml-100k.{suffix}").decode("utf-8")
            if suffix == "inter":
                text = "\n".join(text.splitlines()[:count + 1])  # the header, then ratings
            (folder / f"ml-100k.{suffix}").write_text(text, "utf-8")
    return movielens.load_movielens("ml-100k", folder)


def test_train_writes_a_snapshot_that_loads_and_ranks_the_catalog(ml100k, tmp_path, capsys):
    data = first_ratings(tmp_path, 15_000)
    summary = run_json(capsys, "train", "--epochs", "1", "--data-dir", str(tmp_path),
                       "--out", str(tmp_path / "snap"))
    ratings = data.ratings
    assert summary["epochs"] == 1 and len(summary["epoch_losses"]) == 1
    assert summary["interactions"] == len(ratings) == 15_000
    assert (summary["first_timestamp"], summary["last_timestamp"]) == (
        int(ratings["timestamp"].min()), int(ratings["timestamp"].max()))
    snapshot = load_snapshot(tmp_path / "snap")
    assert snapshot.data_range["interactions"] == 15_000
    assert snapshot.metadata["variant"] == "features_history"
    assert snapshot.metadata["epoch_losses"] == summary["epoch_losses"]
    catalog = sorted(ml100k.items)
    vectors = snapshot.model.embed_items(catalog, ml100k.items)
    assert vectors.shape == (1682, snapshot.model.config.output_dim)
    assert vectors.norm(dim=1).sub(1).abs().max() < 1e-5  # L2-normalised towers


def test_eval_offline_recbole_reports_metrics_popularity_and_settings(ml100k, capsys):
    figures = run_json(capsys, "eval", "offline", "--epochs", "3", "--no-progress")
    for key in ("recall@10", "ndcg@10", "hit@10", "mrr@10", "precision@10"):
        assert 0.0 <= figures[key] <= 1.0
        assert f"popularity_{key}" in figures
    # RecBole's split (torch.randperm, seed 2020): the most-popular list always scores this
    assert (figures["popularity_recall@10"], figures["popularity_ndcg@10"]) == (0.1278, 0.1418)
    settings = figures["settings"]
    assert settings["variant"] == "default" and settings["dataset"] == "ml-100k"
    assert 1 <= settings["best_epoch"] <= settings["epochs_run"] <= 3


def test_eval_offline_tfrs_reports_top_k_shares(ml100k, capsys):
    figures = run_json(capsys, "eval", "offline", "--protocol", "tfrs", "--epochs", "1",
                       "--no-progress")
    shares = [figures[f"top{k}"] for k in (1, 5, 10, 50, 100)]
    assert shares == sorted(shares) and 0.0 < shares[-1] <= 1.0  # top-K shares grow with K
    assert figures["popularity_top100"] == pytest.approx(0.2947, abs=1e-4)


def test_eval_offline_ablation_prints_each_named_variant(ml100k, tmp_path, capsys):
    first_ratings(tmp_path, 15_000)
    result = run_json(capsys, "eval", "offline", "--ablation", "default", "no_log_q",
                      "--epochs", "1", "--no-progress", "--data-dir", str(tmp_path))
    assert result["protocol"] == "recbole" and list(result["variants"]) == ["default", "no_log_q"]
    for figures in result["variants"].values():
        assert {"recall@10", "ndcg@10", "mrr@10", "popularity_ndcg@10", "seconds"} <= set(figures)


@pytest.mark.parametrize("argv, message", [
    (["train", "--data-dir", "{tmp}"], "holds no MovieLens files"),
    (["eval", "offline", "--data-dir", "{tmp}"], "holds no MovieLens files"),
    (["eval", "offline", "--dataset", "ml-1m"], "not shipped in the recbole wheel"),
])
def test_bad_datasets_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["train", "--epochs", "0"], ["eval", "offline", "--epochs", "-1"],
                                  ["train", "--epochs", "ten"]])
def test_bad_epoch_counts_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "--epochs" in capsys.readouterr().err
