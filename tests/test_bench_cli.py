"""The CPU-only benchmark commands run and print their figures as one JSON object (tiny sizes:
these check the commands, not the speed), and bad counts are argparse errors."""

import orjson
import pytest

from recallstream.consumers.cli import main


def bench_json(capsys, *argv):
    assert main(["bench", *argv, "--runs", "1", "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


def test_bench_train_reports_sparse_aware_and_dense_throughput_at_batch_1024(capsys):
    figures = bench_json(capsys, "train", "--steps", "2")
    assert figures["batch_size"] == 1024 and figures["steps_per_run"] == 2
    assert figures["train_samples_per_s"] > 0 and figures["dense_optimizer_samples_per_s"] > 0
    assert figures["speedup"] == pytest.approx(
        figures["train_samples_per_s"] / figures["dense_optimizer_samples_per_s"], rel=0.01)


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
