"""The thread controller (fastsm/_parallel.py) with fake kernels: its decisions, not timings."""

import multiprocessing
import threading

import numpy as np
import pytest

import fastsm
from fastsm import _parallel, _threads
from fastsm._parallel import NATIVE, SERIAL, _Choice


class FakeBackend:
    """A kernel module whose one kernel records the thread counts it was given."""

    NAME = "fake"
    MIN_PARALLEL = 100

    def __init__(self, block=None):
        self.calls = []
        self.block = block
        self.in_flight = []
        self.lock = threading.Lock()
        self.peak_extra = 0

    def kernel(self, tag, nthreads):
        with self.lock:
            self.calls.append(nthreads)
            self.in_flight.append(nthreads)
            self.peak_extra = max(self.peak_extra, sum(n - 1 for n in self.in_flight))
        if self.block is not None:
            self.block.wait(5)
        with self.lock:
            self.in_flight.remove(nthreads)


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(_threads, "usable_cpus", lambda: 2)
    old = fastsm.get_num_threads()
    fastsm.set_num_threads(2)
    _parallel.reset()
    yield
    fastsm.set_num_threads(old)
    _parallel.reset()


def _feed(choice, times, calls):
    """Run ``calls`` decisions, each engine taking ``times[engine]`` s/element."""
    picks = []
    for _ in range(calls):
        engine, probe = choice.pick()
        choice.record(engine, times[engine], probe)
        picks.append(engine)
    return picks


def test_a_lead_within_the_hysteresis_does_not_flip_the_choice():
    c = _Choice()
    picks = _feed(c, {NATIVE: 1.0, SERIAL: 0.95}, 200)      # serial 5% faster: not enough
    assert picks[-100:].count(NATIVE) > 95
    picks = _feed(c, {NATIVE: 1.0, SERIAL: 0.8}, 200)       # 20% faster: takes over
    assert picks[-100:].count(SERIAL) > 95


def test_native_wins_idle_and_serial_is_probed_ever_more_rarely():
    c = _Choice()
    picks = _feed(c, {NATIVE: 1.0, SERIAL: 2.0}, 600)
    probes = [i for i, e in enumerate(picks) if e == SERIAL]
    gaps = np.diff(probes)
    assert picks[0] == NATIVE and len(probes) < 12          # warm-up, then mostly native
    assert list(gaps[:4]) == sorted(gaps[:4]) and gaps[-1] == _parallel._MAX_INTERVAL


def test_load_flips_to_serial_at_once_and_a_probe_brings_native_back():
    c = _Choice()
    _feed(c, {NATIVE: 1.0, SERIAL: 2.0}, 300)               # idle: native, long interval
    busy = _feed(c, {NATIVE: 5.0, SERIAL: 2.5}, 40)         # a neighbour takes the cores
    assert busy[:4] == [NATIVE] * 3 + [SERIAL]               # three slow samples flip it
    assert busy[3:].count(NATIVE) <= 3                       # then probes 4, 8, 16 calls apart
    idle = _feed(c, {NATIVE: 1.0, SERIAL: 2.0}, 200)        # the neighbour is gone
    first_native = idle.index(NATIVE)
    assert first_native < 40                                 # the next probe finds it
    assert idle[first_native:].count(NATIVE) > 0.9 * len(idle[first_native:])


def test_small_calls_never_reach_the_controller(two_threads):
    fake = FakeBackend()
    _parallel.run(fake, "op", np.dtype(np.float32), 4, 20, fake.kernel, "t")  # 80 < 100
    assert fake.calls == [1] and _parallel.state()["measured"] == {}


def test_serial_only_backends_get_one_thread(two_threads):
    fake = FakeBackend()
    fake.MIN_PARALLEL = None
    _parallel.run(fake, "op", np.dtype(np.float32), 1000, 1000, fake.kernel, "t")
    assert fake.calls == [1]


def test_concurrent_callers_share_the_cores_instead_of_each_starting_a_team(two_threads):
    """8 callers at once: only one can have an extra thread on 2 cores (the others run on
    their own threads), so fastsm never runs more threads than cores plus callers."""
    release = threading.Event()
    fake = FakeBackend(block=release)
    warm = FakeBackend()
    _parallel.run(warm, "op", np.dtype(np.float32), 1000, 1000, warm.kernel, "t")
    assert warm.calls == [2]
    callers = [threading.Thread(target=_parallel.run,
                                args=(fake, "op", np.dtype(np.float32), 1000, 1000,
                                      fake.kernel, "t")) for _ in range(8)]
    for th in callers:
        th.start()
    while len(fake.calls) < 8:
        threading.Event().wait(0.001)
    release.set()
    for th in callers:
        th.join()
    assert fake.peak_extra <= 1 and sorted(fake.calls)[-1] <= 2 and fake.calls.count(1) >= 7
    assert _parallel.state()["cores_taken_now"] == 0


def _child_report(_):
    fake = FakeBackend()
    _parallel.run(fake, "op", np.dtype(np.float32), 1000, 1000, fake.kernel, "t")
    return _parallel.native_allowed(), fake.calls


def test_a_child_forked_after_native_threads_runs_serially(two_threads):
    fake = FakeBackend()
    _parallel.run(fake, "op", np.dtype(np.float32), 1000, 1000, fake.kernel, "t")
    assert fake.calls == [2] and _parallel._native_started
    with multiprocessing.get_context("fork").Pool(1) as pool:
        allowed, calls = pool.map(_child_report, [0])[0]
    assert (allowed, calls) == (False, [1])
    assert _parallel.native_allowed()  # the parent keeps its threads


def test_fewer_rows_than_threads_still_measures_the_team(monkeypatch):
    """A team is as large as the rows allow (8 rows on 16 threads: 8); its times must count
    as native samples, or the controller stays in its warm-up and never tries one thread."""
    monkeypatch.setattr(_threads, "usable_cpus", lambda: 4)
    old = fastsm.get_num_threads()
    fastsm.set_num_threads(4)
    _parallel.reset()
    try:
        fake = FakeBackend()
        for _ in range(12):
            _parallel.run(fake, "op", np.dtype(np.float32), 3, 100_000, fake.kernel, "t")
    finally:
        fastsm.set_num_threads(old)
        _parallel.reset()
    assert fake.calls[0] == 3 and 1 in fake.calls  # teams of 3, and a one-thread probe
