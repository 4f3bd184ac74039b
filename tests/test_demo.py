"""`recallstream demo`, shortened to the first 4,000 clicks, on the test session's broker:
the replay in two parts, the joiner, the worker, a snapshot and the reset to it, and the
report (exit status 0)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from recallstream.consumers.local_kafka import free_port


def test_a_shortened_demo_trains_every_click_resets_to_its_snapshot_and_reports(kafka_settings):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers}
    done = subprocess.run([sys.executable, "-m", "recallstream.consumers.cli", "demo", "--limit", "4000",
                           "--metrics-port", str(free_port())],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"clicks trained\s+4,000", out), out
    assert re.search(r"joiner\s+4,000\s+examples from 20,000 records", out), out
    # the snapshot came after the first 2,400 clicks; the worker reset to it once and
    # trained the 1,600 that followed its cut on top of it
    assert re.search(r"snapshot\s+v1\s+\(2,400 examples\); resets 1, clicks trained on top of it 1,600",
                     out), out
    plot = Path(re.search(r"recall over time\s+(\S+\.png)", out).group(1))
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "recall (top 10 from Qdrant, by user id alone)" in out
