"""Memory probes run by test_robustness.py, each as a process of its own:

    MALLOC_MMAP_THRESHOLD_=65536 python -m tests.memprobe peak
    MALLOC_MMAP_THRESHOLD_=65536 python -m tests.memprobe growth

A fresh process with glibc's mmap threshold fixed: every allocation of 64 KiB or more maps
fresh pages and unmaps them on free, and the heap holds no space freed by earlier tests, so
RSS shows what is live (in the pytest process, a leak or a temporary could reuse pages that
earlier tests left resident, and the control checks below failed there).

``peak``: extra peak RSS (VmHWM, reset through /proc/self/clear_refs) of
``softmax(x, out=buf)`` per backend and dtype, and of a full-size temporary as a control.
``growth``: RSS growth over many calls of every op per backend, and of keeping every result
of 10,000 calls as a control.  Both print one JSON object.
"""

import gc
import json
import sys

import numpy as np

import fastsm

from .arrays import OPS, call_op


def _status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_extra_bytes(fn):
    """Peak RSS during fn() above the RSS before it."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS mark to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def _every_op(backend, x, target):
    for op in OPS:
        call_op(backend, op, x, target)


def growth():
    """{"<backend> <rows>x<classes> <calls>": RSS growth in bytes, "control": ...}"""
    report = {}
    for shape, calls in (((8, 16), 10_000), ((64, 600), 2_000)):  # serial, parallel path
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(np.float32)
        target = rng.integers(0, shape[1], shape[0])
        for name in fastsm.backends():
            for _ in range(200):  # compile, start threads, fill allocator caches
                _every_op(name, x, target)
            gc.collect()
            before = _status_kib("VmRSS")
            for _ in range(calls):
                _every_op(name, x, target)
            gc.collect()
            report[f"{name} {shape[0]}x{shape[1]} {calls}"] = (_status_kib("VmRSS") - before) * 1024
    x = np.ones((8, 16))  # 1 KiB per result: ~10 MiB kept
    before = _status_kib("VmRSS")
    kept = [fastsm.softmax(x, backend="numpy") for _ in range(10_000)]
    report["control"] = (_status_kib("VmRSS") - before) * 1024
    del kept
    return report


def peak():
    report = {}
    for dtype in ("float32", "float64"):
        x = np.random.default_rng(1).standard_normal((4096, 1000)).astype(dtype)
        buf = np.zeros_like(x)  # touched: its pages count before the call
        report[f"nbytes {dtype}"] = x.nbytes
        report[f"control {dtype}"] = peak_extra_bytes(lambda: float((x * 2).sum()))
        for name in fastsm.backends():
            fastsm.softmax(x, out=buf, backend=name)  # compile, start threads
            report[f"{name} {dtype}"] = peak_extra_bytes(
                lambda: fastsm.softmax(x, out=buf, backend=name))
    return report


if __name__ == "__main__":
    print(json.dumps({"peak": peak, "growth": growth}[sys.argv[1]]()))
