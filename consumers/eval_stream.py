"""``recallstream eval stream``: prequential recall of an update policy on a MovieLens replay.

Replays the ratings as clicks through the worker's learner, popularity
estimate and minibatcher (no Kafka), scores every click after the first week
before anything learns from it, and prints recall@50 of the model beside
most-popular-so-far and a daily EASE on the same clicks
(:mod:`recallstream.model.stream_eval` has the protocol). ``--plot FILE.png``
draws recall@50 per week of the three.
"""

from __future__ import annotations

import sys

from recallstream.consumers.usage import UsageError, load_dataset

POLICIES = ("incremental", "snapshot", "snapshot+incremental")


def add_parser(commands, settings_parent) -> None:
    parser = commands.add_parser(
        "stream", parents=[settings_parent],
        help="prequential recall@50 of an update policy on a MovieLens replay (no Kafka)")
    parser.add_argument("--dataset", default="ml-100k", help="ml-100k (default) or ml-1m")
    parser.add_argument("--data-dir", default=None, help="folder with the dataset files")
    parser.add_argument("--policy", choices=POLICIES, default="snapshot+incremental")
    parser.add_argument("--no-log-q", action="store_true", help="train without the logQ correction")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw recall@50 per week of the model and both baselines")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args, settings) -> int:
    import torch

    from recallstream.consumers.cli import print_json, print_report
    from recallstream.model.stream_eval import ClickStream, StreamEvalConfig, StreamEvaluation

    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot takes a .png file name, got {args.plot!r}")
    data = load_dataset(args.dataset, args.data_dir)
    torch.manual_seed(settings.seed)
    torch.set_num_threads(1)  # deterministic, and as fast here: the steps are small
    config = StreamEvalConfig(policy=args.policy, log_q=not args.no_log_q,
                              batch_size=settings.batch_size, seed=settings.seed)
    evaluation = StreamEvaluation(ClickStream.from_ratings(data.ratings), data.users, data.items, config)
    with _progress_bar(args.no_progress) as advance:
        report = evaluation.run(progress=advance)
    if args.plot:
        plot_weekly_recall(evaluation.scoreboard, args.plot, title=_title(report))
        report["plot"] = args.plot
    if args.json:
        print_json(report)
    else:
        print_report({key: value for key, value in report.items() if key not in ("per_day", "config")},
                     as_json=False)
    return 0


def plot_weekly_recall(scoreboard, path: str, title: str) -> None:
    """recall@K per week of event time: the model, most-popular-so-far and EASE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, label in (("model", "two-tower"), ("ease", "EASE (daily)"),
                        ("popularity", "most popular so far")):
        weeks = scoreboard.by_period(name, days_per_period=7)
        axes.plot([w["day"] / 7 for w in weeks], [w["recall"] for w in weeks], marker="o",
                  markersize=3, label=label)
    axes.set_xlabel("week of the stream")
    axes.set_ylabel("prequential recall@50")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _title(report: dict) -> str:
    log_q = "logQ" if report["log_q"] else "no logQ"
    return f"{report['policy']}, {log_q}: {report['prequential_recall@50']:.4f} over {report['clicks_scored']} clicks"


class _progress_bar:
    """A tqdm bar over the days (nothing with ``--no-progress``); yields the callback."""

    def __init__(self, disabled: bool) -> None:
        self.disabled = disabled

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="day", desc="eval stream", disable=self.disabled,
                        file=sys.stderr, leave=False)

        def advance(done: int, total: int) -> None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
        return advance

    def __exit__(self, *exc) -> None:
        self.bar.close()
