"""How many threads one kernel call gets: the backend's own threads when they pay, else one.

Design
- Two engines per call: *native* (the backend's own parallel runtime: an OpenMP team for
  c and cython, Numba's parallel kernels) and *serial* (the same kernel on the calling thread).
  Backends declare ``MIN_PARALLEL`` (elements); smaller calls, and backends without it
  (numpy), are always serial and never reach the controller's bookkeeping.
- Adaptive, because the machine is shared.  With another program busy on both cores, an
  OpenMP team of 2 waits at its barrier for a descheduled thread and spins while it waits:
  4096x1000 float32 softmax took 10.7 ms on 2 threads against 4.0 ms on 1 (torch loop
  beside it).  So per (backend, op, dtype, shape class) the controller keeps the last five
  times per element of each engine, runs the faster one (the other must be 10% faster by
  median to take over: under load single calls spread by 40% and more), and now and then
  probes the other: every 4 calls at first, the interval doubling (to 128) while the choice
  holds and resetting whenever it flips; a probe replaces the probed engine's older samples,
  so one clear probe can flip the choice.  The running engine's own slowdown shows within
  three calls; only a recovery needs a probe.  Idle cost: one serial call in 128 at steady
  state.
- Many callers: a process-wide count of cores taken by fastsm calls in flight.  A call
  gets extra threads only from the cores no other fastsm call holds (8 Python threads at
  once run 8 serial calls, not 8 teams of 2), so fastsm never oversubscribes by itself.
- Fork: GNU OpenMP's thread pool and Numba's OpenMP layer do not survive fork(); a child
  that starts a team hangs or aborts.  A process forked after fastsm started native
  threads runs every call serially (fork-start pools, gunicorn --preload, DataLoader
  workers).  forkserver/spawn children and processes forked before any parallel call keep
  native threads.
- Rejected, measured (/tmp scripts, 4096x1000 float32 softmax, 2 threads, medians of 300
  interleaved calls): a pool of Python helper threads running the serial kernel on row
  chunks (caller joins in, chunks claimed from a shared counter, passive waits) held
  1.0-1.2x the 1-thread time under load, but cost 1.98-2.30 ms idle against OpenMP's
  1.83-1.93 ms (a 55 us wake/GIL round trip per call); idle speed may not drop.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque

from . import _threads

SERIAL, NATIVE = 1, 2
_SAMPLES = 5          # recent times kept per engine (median: one outlier does not flip it)
_SWITCH = 0.9         # the other engine must be this much faster (time ratio) to take over
_FIRST_PROBE = 4      # calls before the first probe of the other engine
_MAX_INTERVAL = 128   # probe at least once per this many calls

_lock = threading.Lock()
_cores_taken = 0          # cores held by fastsm calls in flight (caller + extra threads)
_native_started = False   # this process has run a native parallel region
_forked_after_native = False
_stats: dict = {}
_adaptive = True          # False: always the requested team (benchmarks show what that costs)


class _Choice:
    """Per (backend, op, dtype, shape class): recent seconds per element of each engine."""

    __slots__ = ("samples", "countdown", "interval", "last_best", "warm", "runs")

    def __init__(self):
        self.samples = {SERIAL: deque(maxlen=_SAMPLES), NATIVE: deque(maxlen=_SAMPLES)}
        self.countdown = self.interval = _FIRST_PROBE
        self.last_best = NATIVE
        self.warm = False  # first native call (thread start-up, JIT) is not a sample
        self.runs = {SERIAL: 0, NATIVE: 0}  # calls made with each engine (for state())

    def median(self, engine):
        s = self.samples[engine]
        return sorted(s)[len(s) // 2] if s else None

    def pick(self):
        """(engine, whether this call is a probe of the engine not running)."""
        med = {NATIVE: self.median(NATIVE), SERIAL: self.median(SERIAL)}
        if not self.warm or med[NATIVE] is None:  # (other callers may have forced serial)
            return NATIVE, False
        if med[SERIAL] is None:  # start: warm-up, two native samples, then one serial
            return (NATIVE, False) if len(self.samples[NATIVE]) < 2 else (SERIAL, True)
        current = self.last_best
        other = SERIAL if current == NATIVE else NATIVE
        # hysteresis: under load single calls spread by 40%+; switch on a clear lead only
        best = other if med[other] < _SWITCH * med[current] else current
        if best != current:  # overturned (by a probe or by its own samples): re-check soon
            self.last_best = best
            self.countdown = self.interval = _FIRST_PROBE
        self.countdown -= 1
        if self.countdown > 0:
            return best, False
        self.interval = min(2 * self.interval, _MAX_INTERVAL)
        self.countdown = self.interval
        return (SERIAL if best == NATIVE else NATIVE), True

    def record(self, engine, seconds_per_element, probe):
        self.runs[engine] += 1
        if engine == NATIVE and not self.warm:
            self.warm = True
            return
        if probe:  # the probed engine's older samples are as old as its last probe
            self.samples[engine].clear()
        self.samples[engine].append(seconds_per_element)


def _shape_class(n: int, k: int) -> int:
    return ((k > 32) + (k > 4096)) * 4 + (n * k > 1 << 20) + (n * k > 1 << 23)


def run(mod, op: str, dtype, n: int, k: int, kernel, *args):
    """``kernel(*args, nthreads)`` with the thread count chosen here (see the design above);
    returns what the kernel returns."""
    global _cores_taken, _native_started
    threshold = mod.MIN_PARALLEL
    if threshold is None or n * k < threshold or n < 2 or _forked_after_native:
        return kernel(*args, 1)  # the small-call path: keep it to these tests
    want = _threads.get_num_threads()
    if want < 2:
        return kernel(*args, 1)
    key = (mod.NAME, op, dtype.num, _shape_class(n, k))
    team = min(want, n)  # the full team for this call (no more threads than rows)
    with _lock:
        choice = _stats.get(key)
        if choice is None:
            choice = _stats[key] = _Choice()
        if _adaptive:
            free = _threads.usable_cpus() - _cores_taken - 1  # cores beyond the caller's own
            nt = min(team, 1 + max(0, free))
            engine, probe = choice.pick() if nt > 1 else (SERIAL, False)
            if engine == SERIAL:
                nt = 1
        else:
            nt, engine, probe = team, NATIVE, False
        _cores_taken += nt
        if nt > 1:
            _native_started = True
    try:
        t0 = time.perf_counter()
        value = kernel(*args, nt)
        elapsed = time.perf_counter() - t0
    finally:
        with _lock:
            _cores_taken -= nt
    if _adaptive and (nt == 1 or nt == team):  # a team cut short by callers: no sample
        with _lock:
            choice.record(engine, elapsed / (n * k), probe)
    return value


@contextlib.contextmanager
def fixed_threads():
    """Within: every parallel-sized call runs the full team, no controller, no core budget
    (fastsm before adaptive threads; for benchmarks).  Forked children stay serial."""
    global _adaptive
    _adaptive = False
    try:
        yield
    finally:
        _adaptive = True


def reset() -> None:
    """Forget every measurement (tests and benchmarks start from a clean slate)."""
    with _lock:
        _stats.clear()


def state() -> dict:
    """What the controller knows now (cores in use, per key: medians, probe interval, calls
    per engine), for benchmarks and debugging."""
    with _lock:
        table = {}
        for key, c in _stats.items():  # key: (backend, op, dtype number, shape class)
            s, p = c.median(SERIAL), c.median(NATIVE)
            table[key] = {
                "serial_ns_per_element": None if s is None else round(s * 1e9, 3),
                "native_ns_per_element": None if p is None else round(p * 1e9, 3),
                "probe_interval": c.interval,
                "calls_serial": c.runs[SERIAL], "calls_native": c.runs[NATIVE]}
        return {"cores_taken_now": _cores_taken, "measured": table}


def native_allowed() -> bool:
    """False in a child forked after this process ran native threads: every call is serial."""
    return not _forked_after_native


def _after_fork_in_child():
    global _lock, _cores_taken, _forked_after_native
    _lock = threading.Lock()   # another thread may have held it at fork time
    _cores_taken = 0           # the calls in flight belong to the parent's threads
    _stats.clear()             # the parent's load is not the child's
    if _native_started:
        _forked_after_native = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
