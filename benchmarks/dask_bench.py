"""fastsm.dask on a real LocalCluster: speed against dask.array formulas and in-memory
fastsm, and an out-of-core run several times a worker's memory.

    python -m benchmarks.dask_bench [--workers 2] [--memory-limit 1GiB] [--oversize 4]
                                    [--speed-gib 2] [--rounds 5]

1. Speed on data that fits (--speed-gib, default 2 GiB), float32, the class axis in
   several chunks of 64 MiB, on a cluster whose memory_limit holds it: the array is made
   and persisted on the workers first, then each contender's compute() is timed (medians
   of --rounds, contenders interleaved): fastsm.dask, the same formulas
   written with dask.array ufuncs (``m + log(sum(exp(x - m)))``; cross-entropy as
   ``mean(lse - x[target])`` with the target picked by a one-hot comparison, since dask
   has no fancy indexing along a chunked axis), and in-memory fastsm on the same bytes
   gathered into this process (2 threads).  GB/s = logits bytes / time.  Also the
   cluster's latency (the same calls on a 2x4 array: scheduling and transfers, ~45 ms
   on the 2-core machine, paid once per compute whatever the size) and peak worker RSS.
2. Out-of-core: logits --oversize times the cluster's total memory_limit, made chunk-wise
   by ``da.random`` inside the graph (never held whole), the class axis chunked;
   logsumexp and cross_entropy (mean).  Reports the peak RSS of each worker (polled every
   0.1 s), whether any worker process was replaced (killed), and bytes spilled to disk.
Workers run 1 thread each (fastsm inside them: 1 thread, see the README's Dask section).
"""

import argparse
import statistics
import threading
import time

import numpy as np


def _rss(dask_worker=None):
    import psutil

    return psutil.Process().memory_info().rss


def _spilled(dask_worker):
    total = getattr(dask_worker.data, "spilled_total", None)
    return int(getattr(total, "disk", 0) or 0) if total is not None else 0


class PeakMemory:
    """Polls every worker's RSS in a background thread; ``peaks`` per worker address."""

    def __init__(self, client, every=0.1):
        self.client, self.every, self.peaks = client, every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for addr, rss in self.client.run(_rss).items():
                self.peaks[addr] = max(self.peaks.get(addr, 0), rss)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _gather(client, arr):
    """``arr`` assembled here from its blocks (a worker-side concatenate of the whole array
    would need more than a worker's memory_limit)."""
    blocks = arr.to_delayed()
    got = iter(client.compute(blocks.ravel().tolist(), sync=True))
    if blocks.ndim == 1:
        return np.concatenate(list(got))
    return np.block([[next(got) for _ in range(blocks.shape[1])] for _ in range(blocks.shape[0])])


def plain_logsumexp(x):
    import dask.array as da

    m = x.max(axis=-1, keepdims=True)
    return (m + da.log(da.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


def plain_cross_entropy(x, target):
    import dask.array as da

    lse = plain_logsumexp(x)
    classes = da.arange(x.shape[-1], chunks=x.chunks[-1])
    picked = da.where(target[:, None] == classes[None, :], x, 0).sum(axis=-1)
    return (lse - picked).mean()


def timed(fn, rounds):
    samples = {name: [] for name in fn}
    for _ in range(rounds):
        for name, f in fn.items():
            t0 = time.perf_counter()
            f()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def speed(args, limit):
    """Section 1 on its own cluster, sized to hold the data (persisted once on the workers)."""
    import dask.array as da
    from distributed import Client, LocalCluster

    import fastsm
    import fastsm.dask as fd

    classes, chunks = 32768, (2048, 8192)  # 64 MiB float32 chunks, the class axis in 4
    rows = max(chunks[0], int(args.speed_gib * 2**30) // (4 * classes) // chunks[0] * chunks[0])
    nbytes = rows * classes * 4
    # each worker holds its share and one chunk in flight, with room for the kernels
    speed_limit = max(limit, int(1.5 * nbytes / args.workers) + 2**29)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           memory_limit=speed_limit, dashboard_address=None)
    with cluster, Client(cluster) as client:
        x = da.random.default_rng(0).standard_normal((rows, classes), chunks=chunks,
                                                     dtype=np.float32).persist()
        target = da.random.default_rng(1).integers(0, classes, rows, chunks=chunks[0]).persist()
        tiny = da.zeros((2, 4), chunks=(1, 2), dtype=np.float32).persist()
        x_np, t_np = _gather(client, x), _gather(client, target)  # no worker concatenates
        with PeakMemory(client) as mem:
            lse = timed({"fastsm.dask": lambda: fd.logsumexp(x).compute(),
                         "dask.array formulas": lambda: plain_logsumexp(x).compute(),
                         "in-memory fastsm": lambda: fastsm.logsumexp(x_np)}, args.rounds)
            ce = timed({"fastsm.dask": lambda: fd.cross_entropy(x, target).compute(),
                        "dask.array formulas": lambda: plain_cross_entropy(x, target).compute(),
                        "in-memory fastsm": lambda: fastsm.cross_entropy(x_np, t_np)},
                       args.rounds)
            latency = timed({"lse": lambda: fd.logsumexp(tiny).compute(),
                             "ce": lambda: fd.cross_entropy(tiny, np.zeros(2, int)).compute()},
                            args.rounds)
        got = fd.cross_entropy(x, target).compute()
        ref = fastsm.cross_entropy(x_np, t_np)
        assert abs(got - ref) <= 1e-5 * abs(ref), (got, ref)
        print(f"\nspeed, {rows}x{classes} float32 ({nbytes / 2**30:.2f} GiB), chunks "
              f"{chunks[0]}x{chunks[1]} (64 MiB), workers' memory_limit "
              f"{speed_limit / 2**30:.2f} GiB, medians of {args.rounds} interleaved rounds "
              "(in-memory fastsm: this process, 2 threads):")
        for op, res in (("logsumexp", lse), ("cross_entropy (mean)", ce)):
            base = res["fastsm.dask"]
            for name, t in res.items():
                print(f"  {op:22s} {name:20s} {t * 1e3:9.1f} ms  {nbytes / t / 1e9:6.2f} GB/s  "
                      f"time / fastsm.dask {t / base:5.2f}")
        print(f"  the cluster's latency, the same calls on a 2x4 array: logsumexp "
              f"{latency['lse'] * 1e3:.1f} ms, cross_entropy {latency['ce'] * 1e3:.1f} ms")
        print("  peak worker RSS " + ", ".join(f"{p / 2**20:.0f} MiB" for p in mem.peaks.values()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GiB",
                        help="each worker's memory_limit in the out-of-core run")
    parser.add_argument("--oversize", type=float, default=4.0)
    parser.add_argument("--speed-gib", type=float, default=2.0,
                        help="size of the speed run's logits (GiB, float32)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    import dask
    import dask.array as da
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    import fastsm.dask as fd

    limit = parse_bytes(args.memory_limit)
    print(f"{args.workers} workers x 1 thread (LocalCluster, processes); dask {dask.__version__}")
    speed(args, limit)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           memory_limit=limit, dashboard_address=None)
    with cluster, Client(cluster) as client:
        # 2. out of core: --oversize x the cluster's memory, generated inside the graph
        total = int(args.oversize * limit * args.workers)
        big_classes = 32768
        big_rows = max(8192, total // (4 * big_classes) // 8192 * 8192)
        chunks = (8192, 8192)  # 256 MiB float32 chunks, the class axis in 4
        big = da.random.default_rng(2).standard_normal((big_rows, big_classes), chunks=chunks,
                                                       dtype=np.float32)
        big_t = da.random.default_rng(3).integers(0, big_classes, big_rows, chunks=chunks[0])
        pids = client.run(lambda: __import__("os").getpid())
        print(f"\nout of core: {big_rows}x{big_classes} float32 = {big.nbytes / 2**30:.1f} GiB "
              f"({big.nbytes / (limit * args.workers):.1f}x the cluster's memory_limit), chunks "
              f"{chunks[0]}x{chunks[1]} ({chunks[0] * chunks[1] * 4 / 2**20:.0f} MiB)")
        for name, make in (("logsumexp", lambda: fd.logsumexp(big).sum()),
                           ("cross_entropy (mean)", lambda: fd.cross_entropy(big, big_t))):
            with PeakMemory(client) as mem:
                t0 = time.perf_counter()
                value = make().compute()
                elapsed = time.perf_counter() - t0
            after = client.run(lambda: __import__("os").getpid())
            killed = sorted(set(pids.values()) - set(after.values()))
            spilled = sum(client.run(_spilled).values())
            peaks = ", ".join(f"{p / 2**20:.0f} MiB" for p in mem.peaks.values())
            print(f"  {name:22s} {elapsed:7.1f} s  {big.nbytes / elapsed / 1e9:5.2f} GB/s  "
                  f"value {float(value):.6g}  peak worker RSS {peaks}  "
                  f"workers killed {len(killed)}  spilled to disk {spilled / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
