"""Threads: several Python threads calling at once, and thread-count changes between calls."""

import threading

import numpy as np

import fastsm


def _work(backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 40)).astype(np.float32)  # above the parallel threshold
    t = rng.integers(0, 40, 3000)
    return x, t, (fastsm.softmax(x, backend=backend),
                  fastsm.cross_entropy_with_grad(x, t, backend=backend))


def test_concurrent_calls_match_single_threaded(backend):
    x, t, (p_ref, (l_ref, g_ref)) = _work(backend)
    errors = []

    def worker():
        try:
            for _ in range(10):
                p = fastsm.softmax(x, backend=backend)
                loss, grad = fastsm.cross_entropy_with_grad(x, t, backend=backend)
                np.testing.assert_array_equal(p, p_ref)
                np.testing.assert_array_equal(grad, g_ref)
                assert loss == l_ref
        except Exception as exc:  # collected: assertion errors in threads are otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]


def test_thread_count_changes_between_calls(backend):
    x, t, (p_ref, _) = _work(backend)
    old = fastsm.get_num_threads()
    try:
        for n in (1, 2, 1, 3, 2):
            fastsm.set_num_threads(n)
            np.testing.assert_allclose(fastsm.softmax(x, backend=backend), p_ref, rtol=1e-6)
    finally:
        fastsm.set_num_threads(old)
