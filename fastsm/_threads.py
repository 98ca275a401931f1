"""One process-wide thread count that every backend reads on each call.

Default: the CPUs this process may use (``os.sched_getaffinity``, so container and taskset
limits count), capped by ``FASTSM_NUM_THREADS``, ``OMP_NUM_THREADS`` or ``NUMBA_NUM_THREADS``
when set (first one found).  It is a plain global, not thread-local: a value set from one
Python thread applies to calls from every thread.
"""

from __future__ import annotations

import os

_ENV_VARS = ("FASTSM_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _default() -> int:
    n = usable_cpus()
    for var in _ENV_VARS:
        raw = os.environ.get(var, "").split(",")[0].strip()
        if raw:
            try:
                value = int(raw)
            except ValueError:
                continue
            if value >= 1:
                return min(n, value)
    return n


_num_threads = _default()


def get_num_threads() -> int:
    """The number of threads fastsm kernels use."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (1 <= n) in every backend from now on, for calls from any thread.

    Values above the usable CPU count are allowed (oversubscription) but rarely help.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads expects an int, got {n!r}")
    n = int(n.__index__()) if not isinstance(n, int) else n
    if n < 1:
        raise ValueError(f"set_num_threads expects n >= 1, got {n}")
    _num_threads = n
