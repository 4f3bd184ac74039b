"""The worker's progress line on stderr (``recallstream worker --progress``, the demo)."""

from __future__ import annotations

import math
import sys
from typing import Any


def print_progress(report: dict[str, Any]) -> None:
    """One progress line on stderr (rewritten in place)."""
    loss = "-" if math.isnan(report["last_loss"]) else f"{report['last_loss']:.3f}"  # none trained yet
    recall = ""
    if report.get("rolling_recall@50") is not None:
        recall = (f"  recall@50 {report['rolling_recall@50']:.3f} "
                  f"(most popular {report['popularity_rolling_recall@50']:.3f})")
    sys.stderr.write(f"\rworker: {report['clicks_trained']:>8} clicks trained  "
                     f"{report['batches']:>5} batches  {report['examples_seen']:>8} examples  "
                     f"{report['dead_lettered']} dead letters{recall}  loss {loss}")
    sys.stderr.flush()
