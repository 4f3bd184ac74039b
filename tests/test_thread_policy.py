"""The worker's thread policy: torch's threads, and numpy's BLAS kept to one thread."""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os
import numpy, threadpoolctl, torch
from recallstream.consumers.thread_policy import set_training_threads

def blas_threads():
    return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]

before = blas_threads()
threads = set_training_threads()
print(json.dumps({"before": before, "after": blas_threads(), "returned": threads,
                  "torch": torch.get_num_threads(), "cores": os.cpu_count()}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: BLAS has one thread anyway")
def test_training_threads_give_torch_the_other_cores_and_numpy_one_blas_thread():
    # as many BLAS threads as OpenBLAS allows to begin with (it caps them at the cores)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "4"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["before"] and min(figures["before"]) > 1, figures
    assert figures["after"] == [1] * len(figures["before"]), figures
    assert figures["returned"] == figures["torch"] == max(1, figures["cores"] - 1), figures
