"""Threads: several Python threads calling at once, and thread-count changes between calls."""

import threading

import numpy as np

import fastsm

from .arrays import OPS, call_op


def _problem():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 40)).astype(np.float32)  # above the parallel threshold
    return x, rng.integers(0, 40, 3000)


def _same(a, b):
    if isinstance(a, tuple):
        return all(_same(u, v) for u, v in zip(a, b))
    return np.array_equal(a, b)


def test_every_op_on_every_backend_from_8_threads_at_once():
    """8 Python threads run every op on every backend, repeatedly and in different orders,
    while one of them keeps changing the thread count: each answer is bitwise the
    single-threaded one (rows are split across threads, never computed differently)."""
    x, t = _problem()
    jobs = [(b, op) for b in fastsm.backends() for op in OPS]
    expected = {job: call_op(*job, x, t) for job in jobs}
    errors = []
    old = fastsm.get_num_threads()

    def worker(seed):
        order = list(jobs)
        try:
            for round_ in range(4):
                np.random.default_rng(seed * 10 + round_).shuffle(order)
                for job in order:
                    if seed == 0:
                        fastsm.set_num_threads(1 + (round_ + len(job[1])) % 2)
                    assert _same(call_op(*job, x, t), expected[job]), job
        except Exception as exc:  # collected: assertion errors in threads are otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        fastsm.set_num_threads(old)
    assert not errors, errors[0]


def test_thread_count_changes_between_calls(backend):
    x, _ = _problem()
    p_ref = fastsm.softmax(x, backend=backend)
    old = fastsm.get_num_threads()
    try:
        for n in (1, 2, 1, 3, 2):
            fastsm.set_num_threads(n)
            np.testing.assert_array_equal(fastsm.softmax(x, backend=backend), p_ref)
    finally:
        fastsm.set_num_threads(old)


def test_8_callers_of_a_large_softmax_at_once_get_the_single_call_answer(backend):
    """8 Python threads (Dask's threaded scheduler, a web server) each call softmax
    512x32000 at the same moment: the controller gives extra threads only from free cores,
    so most run serially, and every answer is bitwise the lone call's.  (Wall time against
    the same calls made one after another: `fastsm bench --contention`.)"""
    x = np.random.default_rng(8).standard_normal((512, 32000)).astype(np.float32)
    expected = fastsm.softmax(x, backend=backend)
    results = [None] * 8
    start = threading.Barrier(8)

    def caller(i):
        start.wait()
        results[i] = fastsm.softmax(x, backend=backend)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(r is not None and np.array_equal(r, expected) for r in results)
