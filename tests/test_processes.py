"""Worker processes: fork, forkserver and spawn pools after the parent ran native threads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import fastsm

ROOT = Path(__file__).resolve().parents[1]


def test_worker_pools_of_every_start_method_finish_with_correct_answers():
    """A fork-start pool used to hang (c, cython: GNU OpenMP's pool does not survive fork) or
    die (numba: "fork() called from a process already using GNU OpenMP").  Now a child
    forked after native threads ran computes serially; forkserver/spawn children, fresh
    processes, keep native threads.  A hang fails here on the timeout."""
    env = dict(os.environ, FASTSM_QUIET="1")
    proc = subprocess.run([sys.executable, "-m", "tests.procs"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["parent_started_native"], "the parent never ran a native team: nothing tested"
    names = [run["name"] for run in report["runs"]]
    assert names == [f"{kind}/{m}" for m in ("fork", "forkserver", "spawn")
                     for kind in ("Pool", "ProcessPoolExecutor")]
    for run in report["runs"]:
        assert run["correct"] == {b: True for b in fastsm.backends()}, run
        forked = run["name"].endswith("/fork")
        assert run["native_allowed"] == ([False] if forked else [True]), run
