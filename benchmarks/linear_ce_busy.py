"""One linear cross-entropy training step (forward + backward) beside a busy program:
fastsm.torch.linear_cross_entropy against torch's unfused F.linear + F.cross_entropy, while
another process loops torch.softmax on 2 threads (where users meet the library).

    python -m benchmarks.linear_ce_busy

2 threads for fastsm, torch and BLAS; float32; medians of 3 interleaved steps per shape.
"""

import multiprocessing as mp, time, statistics, numpy as np

def burner(stop):
    """The program beside: torch.softmax of 4096x1000 on 2 threads, until told to stop."""
    import torch
    torch.set_num_threads(2)
    x = torch.randn(4096, 1000)
    while not stop.is_set():
        torch.softmax(x, 1)

def main():
    import torch, fastsm, fastsm.torch as ft
    torch.set_num_threads(2); fastsm.set_num_threads(2)
    F = torch.nn.functional
    ctx = mp.get_context("spawn")
    stop = ctx.Event(); p = ctx.Process(target=burner, args=(stop,)); p.start(); time.sleep(3)
    try:
        for n, d, v in ((4096, 1024, 32000), (2048, 512, 128000)):
            rng = np.random.default_rng(0)
            h = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
            w = torch.from_numpy((rng.standard_normal((v, d)) * (2 / d ** 0.5)).astype(np.float32))
            t = torch.from_numpy(rng.integers(0, v, n))
            def step(fn):
                hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
                loss = fn(hh, ww); loss.backward()
            fns = {"fastsm.torch": lambda a, b: ft.linear_cross_entropy(a, b, t),
                   "torch unfused": lambda a, b: F.cross_entropy(F.linear(a, b), t)}
            for f in fns.values(): step(f)
            times = {k: [] for k in fns}
            for r in range(3):
                for k, f in (fns.items() if r % 2 == 0 else reversed(list(fns.items()))):
                    t0 = time.perf_counter(); step(f); times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{n}x{d}:{v} busy (torch.softmax 2-thread loop beside), 2 threads: " +
                  ", ".join(f"{k} {m:.2f} s" for k, m in med.items()) +
                  f"; fastsm.torch / torch = {med['fastsm.torch'] / med['torch unfused']:.2f}", flush=True)
    finally:
        stop.set(); p.join()

if __name__ == "__main__":
    main()
