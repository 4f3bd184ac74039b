"""The CPU-only benchmark commands run and print their figures as one JSON object (tiny sizes:
these check the commands, not the speed), and bad counts are argparse errors."""

import math

import orjson
import pytest

from recallstream.consumers.cli import main


def bench_json(capsys, *argv):
    assert main(["bench", *argv, "--runs", "1", "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


def test_bench_train_reports_sparse_aware_and_dense_throughput_at_the_batch_size(capsys, monkeypatch):
    import recallstream.model.train_step as train_step_module

    steps = []  # (sparse-aware optimizer?, model has sparse tables?) of every timed step
    real_train_step = train_step_module.train_step

    def spy(model, optimizers, batch, config):
        steps.append((optimizers.sparse is not None, bool(model.sparse_parameters())))
        assert len(batch.item_ids) == 512
        return real_train_step(model, optimizers, batch, config)

    monkeypatch.setattr(train_step_module, "train_step", spy)
    figures = bench_json(capsys, "train", "--steps", "2", "--batch-size", "512")
    assert {"train_samples_per_s", "dense_optimizer_samples_per_s", "speedup", "batch_size",
            "steps_per_run", "runs", "threads"} <= set(figures), sorted(figures)
    assert figures["batch_size"] == 512 and figures["steps_per_run"] == 2
    assert figures["runs"] == 1 and figures["threads"] == 2
    for key in ("train_samples_per_s", "dense_optimizer_samples_per_s", "speedup"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]) \
            and figures[key] > 0, (key, figures[key])
    # one warm-up and two timed steps per run: first the sparse-aware model and optimizers,
    # then a baseline that really is dense (no sparse table left, no SparseAdam)
    assert steps == [(True, True)] * 3 + [(False, False)] * 3


def test_bench_train_reports_the_median_of_each_measurement_and_their_ratio(capsys, monkeypatch):
    import recallstream.consumers.bench.train as bench_train

    measured = {False: [3000.0, 1000.0, 2000.0], True: [450.0, 1100.0, 500.0]}  # dense? -> runs
    monkeypatch.setattr(bench_train, "_samples_per_s",
                        lambda args, settings, *, dense: measured[dense].pop(0))
    assert main(["bench", "train", "--runs", "3", "--steps", "1", "--json"]) == 0
    figures = orjson.loads(capsys.readouterr().out)
    assert measured == {False: [], True: []}  # three runs of each
    assert figures["train_samples_per_s"] == 2000.0  # medians, not means or the last run
    assert figures["dense_optimizer_samples_per_s"] == 500.0
    assert figures["speedup"] == 4.0  # sparse-aware over dense: > 1 when sparse is faster
    assert figures["runs"] == 3


@pytest.mark.parametrize("argv, keys", [
    (["popularity", "--steps", "5", "--catalog", "1000"],
     {"update_ids_per_s", "probability_ids_per_s", "update_cold_ids_per_s"}),
    (["sampler", "--steps", "3", "--catalog", "1000"],
     {"steps_per_s_exact", "steps_per_s_rebuild_every_10", "steps_per_s_naive_choice"}),
    (["decode", "--records", "200"],
     {"valid_exposures_per_s", "valid_clicks_per_s", "orjson_loads_per_s"}),
])
def test_cpu_benchmarks_print_their_figures(capsys, argv, keys):
    figures = bench_json(capsys, *argv)
    assert keys <= set(figures), sorted(figures)
    assert all(figures[key] > 0 for key in keys)


@pytest.mark.parametrize("argv", [["train", "--runs", "0"], ["decode", "--records", "-5"],
                                  ["sampler", "--negatives", "0"]])
def test_counts_below_one_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
