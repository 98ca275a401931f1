"""Peak memory and time of one linear cross-entropy training step (forward + backward):
fastsm.linear_cross_entropy_with_grad (NumPy's BLAS) and fastsm.torch.linear_cross_entropy
(the same chunked loss, torch's BLAS, in a torch autograd step) against torch's unfused F.linear + F.cross_entropy and
torch's chunked F.linear_cross_entropy, each in a fresh process.

    python -m benchmarks.linear_ce_memory [--threads 2] [--shapes 4096x1024:32000,...]

Per contender and shape, a child process makes the inputs (float32), warms up on a tiny
problem (libraries loaded, thread pools started), reads its RSS, runs the step once and
reads its peak RSS (``ru_maxrss``): "extra" is peak minus the RSS before the step, so the
inputs are not counted and everything the step allocates is, its returned gradients
(d_hidden, d_weight: the same bytes for every contender) included; "beyond grads" takes
those out.  The unfused computation's logits + logit gradient (2 x tokens x vocabulary x 4
bytes) is the yardstick.  Then a second step is timed (median of --rounds, each contender
in its own process, one after the other).  Threads: --threads for BLAS, torch and fastsm.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = ("4096x1024:32000", "2048x512:128000")
CONTENDERS = ("fastsm", "fastsm.torch", "torch unfused", "torch chunked")


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _step(name, n, d, v, threads):
    """A zero-argument training step on fresh (n, d), (v, d) float32 inputs."""
    import numpy as np

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = (rng.standard_normal((v, d), dtype=np.float32) * np.float32(2 / d ** 0.5))
    target = rng.integers(0, v, n)
    if name == "fastsm":
        import fastsm

        fastsm.set_num_threads(threads)
        return lambda: fastsm.linear_cross_entropy_with_grad(hidden, weight, target)
    import torch

    torch.set_num_threads(threads)
    functional = torch.nn.functional
    h, w, t = torch.from_numpy(hidden), torch.from_numpy(weight), torch.from_numpy(target)

    def step():
        hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
        if name == "fastsm.torch":
            import fastsm
            import fastsm.torch

            fastsm.set_num_threads(threads)
            loss = fastsm.torch.linear_cross_entropy(hh, ww, t)
        elif name == "torch unfused":
            loss = functional.cross_entropy(functional.linear(hh, ww), t)
        else:
            loss = functional.linear_cross_entropy(hh, ww, t,
                                                   options=torch.nn.LinearCrossEntropyOptions())
        loss.backward()
        return loss.detach(), hh.grad, ww.grad

    return step


def child(name, shape, threads, rounds):
    from fastsm.bench import parse_shape

    (n, d, v), _ = parse_shape(shape)
    _step(name, 64, 16, 100, threads)()  # libraries, pools, JIT: before the baseline
    step = _step(name, n, d, v, threads)
    before = _rss()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    grads = (n * d + v * d) * 4
    print(json.dumps({"extra": peak - before, "grads": grads,
                      "median_s": statistics.median(times)}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], args.threads, args.rounds)
    from fastsm.bench import parse_shape

    print(f"one training step (forward + backward), float32, {args.threads} threads for "
          f"BLAS, torch and fastsm; each contender in a fresh process")
    for shape in args.shapes.split(","):
        (n, d, v), _ = parse_shape(shape)
        unfused = 2 * n * v * 4
        print(f"\n{shape} (tokens x hidden : vocabulary); logits + logit gradient "
              f"{unfused / 2**20:.0f} MiB")
        base = None
        for name in CONTENDERS:
            out = subprocess.run([sys.executable, "-m", "benchmarks.linear_ce_memory",
                                  "--threads", str(args.threads), "--rounds", str(args.rounds),
                                  "--child", name, shape], capture_output=True, text=True)
            if out.returncode:
                print(f"  {name:14s} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or r["median_s"]
            beyond = r["extra"] - r["grads"]
            print(f"  {name:14s} peak extra {r['extra'] / 2**20:7.0f} MiB, beyond the "
                  f"returned gradients {beyond / 2**20:6.0f} MiB "
                  f"({beyond / unfused:.3f} of logits + gradient); step "
                  f"{r['median_s']:.2f} s ({r['median_s'] / base:.2f}x fastsm's time)")


if __name__ == "__main__":
    main()
