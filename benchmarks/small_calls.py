"""Small calls as users make them: 64x128 cross_entropy, softmax and log_softmax through
the default backend against torch (2 threads), float32 and float64, medians of 9
interleaved timeit batches of 500 calls: idle, beside a busy 2-thread ``torch.softmax``
process, and in a fork-start worker (after a parallel call in the parent).

    python -m benchmarks.small_calls          (needs torch; ~1 min)
"""
import multiprocessing as mp
import subprocess
import sys
import time
import timeit

import numpy as np

import fastsm
from fastsm.bench import cell_data

# torch is imported in the functions: asv imports every module of benchmarks/ to find its
# benchmarks, where torch may be absent
BUSY = ("import torch; torch.set_num_threads(2); x = torch.randn(4096, 1000)\n"
        "while True: torch.softmax(x, -1)")


def measure(label, rounds=9, with_torch=True):
    import torch
    import torch.nn.functional as F

    out = []
    for dt in ("float32", "float64"):
        x, t = cell_data((64, 128), dt, True)
        tx, tt = torch.from_numpy(x), torch.from_numpy(t)
        fs = {"fastsm CE": lambda: fastsm.cross_entropy(x, t),
              "torch CE": lambda: F.cross_entropy(tx, tt),
              "fastsm softmax": lambda: fastsm.softmax(x),
              "torch softmax": lambda: torch.softmax(tx, -1),
              "fastsm log_softmax": lambda: fastsm.log_softmax(x),
              "torch log_softmax": lambda: torch.log_softmax(tx, -1)}
        if not with_torch:
            fs = {k: f for k, f in fs.items() if k.startswith("fastsm")}
        for f in fs.values():
            f()
        ts = {k: [] for k in fs}
        for r in range(rounds):
            for k, f in fs.items():
                ts[k].append(timeit.timeit(f, number=500) / 500 * 1e6)
        med = {k: float(np.median(v)) for k, v in ts.items()}
        ratios = (" | torch/fastsm CE %.2f softmax %.2f log_softmax %.2f" % tuple(
            med[f"torch {o}"] / med[f"fastsm {o}"] for o in ("CE", "softmax", "log_softmax"))
            if with_torch else "")
        out.append(f"{label} {dt}: " + " ".join(f"{k} {v:.1f}us" for k, v in med.items()) + ratios)
    return "\n".join(out)

def child(_):
    # torch's OpenMP pool does not survive fork (its calls hang here): fastsm alone
    return measure("forked worker, fastsm alone", with_torch=False)

if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    print(measure("idle"), flush=True)
    p = subprocess.Popen([sys.executable, "-c", BUSY])
    time.sleep(3)
    try:
        print(measure("busy"), flush=True)
    finally:
        p.kill()
    # a fork-start worker after a parallel call in the parent (the case that hangs OpenMP)
    big = cell_data((4096, 1000), "float32", False)[0]
    fastsm.softmax(big)
    print(measure("parent, fastsm alone, same moment", with_torch=False), flush=True)
    with mp.get_context("fork").Pool(1) as pool:
        print(pool.map_async(child, [0]).get(timeout=120)[0], flush=True)
