"""Reductions over a non-last axis: the column kernels against the transposing path.

    python -m benchmarks.ab_columns [--rounds 41] [--threads 2]

For every backend with column kernels (``softmax_cols`` & co., optional in the kernel
contract), softmax, log_softmax and logsumexp along axis 0 of a C-contiguous 1000x512
array, float32 and float64: the column kernel, the same backend through the front's
transposed copy (``fastsm._api._COLUMNS_MIN`` raised for those calls), torch (if
installed) and ``np.copyto`` of the same bytes, timed in interleaved rounds in one process
(each timed call after an untimed one of its own); medians and ratios.
"""

import argparse
import time

import numpy as np

import fastsm
from fastsm import _api, _registry

OPS = ("softmax", "log_softmax", "logsumexp")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    fastsm.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    backends = [b for b in _registry.available() if hasattr(_registry.load(b), "softmax_cols")]
    rng = np.random.default_rng(0)
    print(f"1000x512, axis 0, {args.threads} threads, medians of {args.rounds} rounds")
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal((1000, 512)) * 2).astype(dtype)
        buf = np.empty_like(x)
        for op in OPS:
            fn = getattr(fastsm, op)
            contenders = {"copy": lambda: np.copyto(buf, x)}
            for b in backends:
                contenders[f"{b} columns"] = (lambda b=b: _path(fn, x, b, 16))
                contenders[f"{b} transposing"] = (lambda b=b: _path(fn, x, b, 1 << 60))
            if torch is not None:
                tx = torch.from_numpy(x)
                contenders["torch"] = {"softmax": lambda: torch.softmax(tx, 0),
                                       "log_softmax": lambda: torch.log_softmax(tx, 0),
                                       "logsumexp": lambda: torch.logsumexp(tx, 0)}[op]
            med = _medians(contenders, args.rounds)
            line = "  ".join(f"{k} {v * 1e6:.0f} us" for k, v in med.items())
            ratios = "  ".join(f"{k}/{b} columns {med[k] / med[f'{b} columns']:.2f}"
                               for b in backends for k in med
                               if k in (f"{b} transposing", "torch"))
            print(f"{np.dtype(dtype).name} {op}: {line}  |  {ratios}")


def _path(fn, x, backend, columns_min):
    _api._COLUMNS_MIN = columns_min
    try:
        return fn(x, axis=0, backend=backend)
    finally:
        _api._COLUMNS_MIN = 16


def _medians(contenders, rounds):
    samples = {k: [] for k in contenders}
    for _ in range(5):
        for f in contenders.values():
            f()
    for _ in range(rounds):
        for k, f in contenders.items():
            f()
            t0 = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in samples.items()}


if __name__ == "__main__":
    main()
