"""Run by tests/test_processes.py in a subprocess (``python -m tests.procs``), so that a hang
fails that test on its timeout instead of stopping the run.

The parent uses every backend with 2 threads first (starting OpenMP / Numba threads), then
runs the same calls in worker pools of every start method; each worker's answers must equal
the parent's bitwise (rows are split over threads, never computed differently), and each
worker reports whether it may start native threads.  Prints one JSON line.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import sys

import numpy as np

import fastsm

SHAPE = (4096, 64)  # above every backend's parallel threshold


def problem():
    rng = np.random.default_rng(3)
    return (rng.standard_normal(SHAPE).astype(np.float32),
            rng.integers(0, SHAPE[1], SHAPE[0]))


def answers(backend):
    x, t = problem()
    loss, grad = fastsm.cross_entropy_with_grad(x, t, backend=backend)
    return fastsm.softmax(x, backend=backend), loss, grad


def job(backend):
    """In a worker: the answers, whether native threads are allowed here, and the PID."""
    from fastsm import _parallel

    return answers(backend), _parallel.native_allowed(), multiprocessing.current_process().pid


def _same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a, b))


def main():
    fastsm.set_num_threads(2)
    backends = fastsm.backends()
    expected = {b: answers(b) for b in backends}
    for _ in range(3):  # let the controller run native teams in this process
        for b in backends:
            answers(b)
    from fastsm import _parallel

    report = {"parent_started_native": _parallel._native_started, "runs": []}
    for method in ("fork", "forkserver", "spawn"):
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(2) as pool:
            got = pool.map_async(job, backends * 2).get(timeout=120)
        report["runs"].append(_check(f"Pool/{method}", backends * 2, got, expected))
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            got = list(ex.map(job, backends * 2, timeout=120))
        report["runs"].append(_check(f"ProcessPoolExecutor/{method}", backends * 2, got,
                                     expected))
    print(json.dumps(report))
    return 0


def _check(name, jobs, got, expected):
    correct = {}
    for b, res in zip(jobs, got):
        correct[b] = correct.get(b, True) and _same(res[0], expected[b])
    return {"name": name, "correct": correct,
            "native_allowed": sorted({res[1] for res in got}),
            "workers": len({res[2] for res in got})}


if __name__ == "__main__":
    sys.exit(main())
