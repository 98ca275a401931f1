"""Half-precision kernels against float32's, kernel calls alone, interleaved in one process.

``python -m benchmarks.half_kernels [--shape 4096x1000] [--threads 1,2] [--rounds 7]``

For every backend with half kernels (``HALF_KINDS`` in the registry's modules): softmax,
log_softmax and the index cross-entropy's loss on the same values as float32, float16 and
bfloat16 (``ml_dtypes``), outputs allocated once, so the figure is the kernels' own (the
front's ``fastsm bench`` also pays for a fresh output, 16 MiB for float32 and 8 for the half
types at 4096x1000).  Each round times every call ``--calls`` times and keeps the median;
the table shows the fastest round's, in ns per element, and float32's time over the half
type's ("x f32": above 1, more elements per second than float32).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fastsm import _registry
import fastsm


def _median_seconds(call, calls):
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _calls(mod, x32, target, threads):
    """{(op, dtype name): a call of mod's kernel on x32's values in that dtype}"""
    n, k = x32.shape
    weight, loss = np.ones(k), np.empty(n)
    out32 = np.empty_like(x32)
    calls = {
        ("softmax", "float32"): lambda: mod.softmax(x32, out32, threads),
        ("log_softmax", "float32"): lambda: mod.log_softmax(x32, out32, threads),
        ("cross_entropy", "float32"): lambda: mod.ce_index(
            x32, target, weight, -100, 0.0, 1.0, loss, None, 0.0, None, None, threads),
    }
    import ml_dtypes  # the [half] extra

    out16 = np.empty((n, k), np.uint16)
    for name, dtype in (("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)):
        code = mod.HALF_KINDS.get(name)
        if code is None:
            continue
        bits = x32.astype(dtype).view(np.uint16)
        calls[("softmax", name)] = lambda b=bits, c=code: mod.softmax_half(b, out16, c, threads)
        calls[("log_softmax", name)] = lambda b=bits, c=code: mod.log_softmax_half(
            b, out16, c, threads)
        calls[("cross_entropy", name)] = lambda b=bits, c=code: mod.ce_index_half(
            b, c, target, weight, -100, 0.0, 1.0, loss, None, 0.0, None, None, threads)
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x1000")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=25)
    args = parser.parse_args(argv)
    n, k = (int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((n, k)).astype(np.float32)
    target = rng.integers(0, k, n).astype(np.int64)
    mods = [m for m in map(_registry.load, fastsm.backends()) if getattr(m, "HALF_KINDS", None)]
    print(f"{args.shape}, kernel calls alone, interleaved; ns per element (x f32: float32's "
          f"time / this one's), fastest of {args.rounds} rounds' medians of {args.calls} calls")
    for mod in mods:
        for threads in (int(t) for t in args.threads.split(",")):
            calls = _calls(mod, x32, target, threads)
            best = {key: np.inf for key in calls}
            for _ in range(args.rounds):
                for key, call in calls.items():
                    best[key] = min(best[key], _median_seconds(call, args.calls) / (n * k))
            for op in ("softmax", "log_softmax", "cross_entropy"):
                f32 = best[(op, "float32")]
                cells = [f"float32 {f32 * 1e9:.4f}"] + [
                    f"{name} {best[(op, name)] * 1e9:.4f} (x f32 {f32 / best[(op, name)]:.2f})"
                    for name in ("float16", "bfloat16") if (op, name) in best]
                print(f"{mod.NAME:6s} {threads} thread(s)  {op:14s} " + " | ".join(cells))


if __name__ == "__main__":
    main()
