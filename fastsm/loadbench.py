"""``fastsm bench --contention``: fastsm where users run it, not on an idle machine.

Four phases, each timing its contenders interleaved round by round (shuffled) so that
drift hits all of them equally:

- ``idle``: nothing else running.
- ``busy``: another process keeps 2 threads busy (a ``torch.softmax`` loop on 2 threads,
  torch's default here; without torch, two processes looping NumPy's exp).
- ``forked``: a worker forked from this process after its parallel calls (how
  ``multiprocessing.Pool``'s fork start, gunicorn --preload and DataLoader workers run).
- ``callers``: 8 Python threads each making the same call at once, against the same
  8 calls one after another (Dask's threaded scheduler, a web server).

Contenders: fastsm's default call (adaptive threads), the same call on 1 thread, the same
call with a fixed team of N threads (fastsm before adaptive threads), torch on N threads
(1 in the forked worker, as torch's DataLoader does: its OpenMP pool hangs after fork),
the NumPy baseline and ``np.copyto`` of the same bytes.  The phase's ``x 1 thread`` column
is the time over fastsm's 1-thread time under the same load.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import subprocess
import sys
import threading
import time

import numpy as np

from . import _api, _parallel, _threads, bench

COMPETITOR_TORCH = """
import sys, time, torch
torch.set_num_threads({threads})
x = torch.randn(4096, 1000)
end = time.time() + {seconds}
while time.time() < end:
    torch.softmax(x, -1)
"""
COMPETITOR_NUMPY = """
import sys, time, numpy as np
x = np.random.default_rng(0).standard_normal(1 << 20)
end = time.time() + {seconds}
while time.time() < end:
    np.exp(x)
"""


@contextlib.contextmanager
def busy_neighbour(threads: int, seconds: float = 600):
    """Another program keeping ``threads`` CPUs busy until the block ends."""
    try:
        import torch  # noqa: F401

        cmds = [COMPETITOR_TORCH.format(threads=threads, seconds=seconds)]
        what = f"torch.softmax 4096x1000 loop on {threads} threads"
    except ImportError:
        cmds = [COMPETITOR_NUMPY.format(seconds=seconds)] * threads
        what = f"{threads} processes looping np.exp"
    procs = [subprocess.Popen([sys.executable, "-c", c]) for c in cmds]
    try:
        time.sleep(1.5)  # past its start-up, into its loop
        yield what
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _on_threads(n, fn):
    def call():
        old = _threads.get_num_threads()
        _threads.set_num_threads(n)
        try:
            return fn()
        finally:
            _threads.set_num_threads(old)
    return call


def _fixed(fn):
    def call():
        with _parallel.fixed_threads():
            return fn()
    return call


def contenders(op, x, target, threads, forked=False):
    if op.startswith("cross"):
        fastsm_call = lambda: getattr(_api, op)(x, target)  # noqa: E731
    else:
        fastsm_call = lambda: getattr(_api, op)(x)  # noqa: E731
    found = {"fastsm": fastsm_call, "fastsm 1 thread": _on_threads(1, fastsm_call)}
    if not forked:  # a forked child never starts a team (it would hang): nothing to show
        found[f"fastsm fixed {threads} threads"] = _fixed(fastsm_call)
    try:
        # torch's own OpenMP pool hangs in a forked child too (seen here: the worker never
        # returned); torch's DataLoader gives its workers 1 thread, and so does this phase
        found["torch"] = bench._torch_fn(op, x, -1, target, 1 if forked else threads)
    except ImportError:
        pass
    found.update(bench.references(op, x, -1, target))
    return found


def measure(op, shape, dtype, threads, rounds, warmup, forked=False, data="normal"):
    """{contender: (median s, spread, mean s)} for one op, interleaved and shuffled.

    Under load one call either gets a core or shares one (1 thread beside a 2-thread torch
    loop: ~3.5 or ~8 ms), so the median of a few dozen calls can land on either mode; the
    mean (the throughput cost) is reported beside it."""
    dims, _ = bench.parse_shape(shape)
    x, target = bench.cell_data(dims, dtype, op.startswith("cross"), data)
    fns = contenders(op, x, target, threads, forked)
    names = list(fns)
    samples = {name: [] for name in names}
    rng = random.Random(1)
    for r in range(warmup + rounds):  # warm-up rounds: the controller meets this load
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            fns[name]()
            if r >= warmup:
                samples[name].append(time.perf_counter() - t0)
    return {name: (float(np.median(s)), bench.relative_spread(s), float(np.mean(s)))
            for name, s in samples.items()}


def native_share():
    """{op: share of the controller's calls that ran the backend's own threads}, so far."""
    shares = {}
    for (_, op, _, _), entry in _parallel.state()["measured"].items():
        runs = entry["calls_serial"] + entry["calls_native"]
        total = shares.setdefault(op, [0, 0])
        total[0] += entry["calls_native"]
        total[1] += runs
    return {op: native / runs for op, (native, runs) in shares.items() if runs}


def _forked_worker(conn, args, data):
    try:
        conn.send({op: measure(op, *args[1:], forked=True, data=data) for op in args[0]})
    finally:
        conn.close()


def measure_forked(ops, shape, dtype, threads, rounds, warmup, data="normal"):
    """``measure`` for each op inside a worker forked from this process."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forked_worker,
                       args=(child, (ops, shape, dtype, threads, rounds, warmup), data))
    proc.start()
    child.close()
    try:
        if parent.poll(300):
            return parent.recv()
        raise RuntimeError("the forked worker did not answer in 300 s (hung)")
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()


def callers(shape="512x32000", dtype="float32", n_callers=8, rounds=7):
    """(median s of n calls one after another, of n callers at once, all answers equal)."""
    dims, _ = bench.parse_shape(shape)
    x, _ = bench.cell_data(dims, dtype, False)
    expected = _api.softmax(x)

    def one_after_another():
        return [_api.softmax(x) for _ in range(n_callers)]

    def at_once():
        results = [None] * n_callers
        start = threading.Barrier(n_callers)

        def caller(i):
            start.wait()
            results[i] = _api.softmax(x)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(n_callers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return results

    times = {"seq": [], "conc": []}
    same = True
    for r in range(rounds):
        order = [("seq", one_after_another), ("conc", at_once)]
        for name, fn in order if r % 2 else order[::-1]:
            t0 = time.perf_counter()
            results = fn()
            times[name].append(time.perf_counter() - t0)
            same &= all(np.array_equal(res, expected) for res in results)
    return float(np.median(times["seq"])), float(np.median(times["conc"])), same


def run(ops=("softmax", "cross_entropy_with_grad"), shape="4096x1000", dtype="float32",
        threads=None, rounds=40, warmup=8, progress=True, callers_shape="512x32000",
        callers_rounds=7, data="normal"):
    """Every phase; returns a dict ready for JSON and for ``report``."""
    threads = threads or _threads.get_num_threads()
    old = _threads.get_num_threads()
    _threads.set_num_threads(threads)

    def say(text):
        if progress:
            print(f"\r{text}".ljust(72), end="", file=sys.stderr, flush=True)

    result = {"shape": shape, "dtype": dtype, "data": data, "threads": threads, "phases": {}}
    try:
        say("idle ...")
        with bench.LoadMeter() as meter:
            result["phases"]["idle"] = {op: measure(op, shape, dtype, threads, rounds, warmup,
                                                    data=data) for op in ops}
        result["idle_other_cpus"] = meter.other_cpus
        result["native_share"] = {"idle": native_share()}
        _parallel.reset()  # count the busy phase's calls alone (the choice re-forms in 3 calls)
        say("busy neighbour ...")
        with busy_neighbour(threads) as what:
            result["neighbour"] = what
            result["phases"]["busy"] = {op: measure(op, shape, dtype, threads, rounds, warmup,
                                                    data=data) for op in ops}
        result["native_share"]["busy"] = native_share()
        say("forked worker ...")
        result["phases"]["forked"] = measure_forked(ops, shape, dtype, threads, rounds, warmup,
                                                    data)
        say("8 callers ...")
        seq, conc, same = callers(callers_shape, dtype, 8, callers_rounds)
        result["callers"] = {"shape": callers_shape, "callers": 8, "one_after_another_s": seq,
                             "at_once_s": conc, "answers_equal": same}
    finally:
        _threads.set_num_threads(old)
        say("")
        if progress:
            print("\r", end="", file=sys.stderr)
    return result


def report(result) -> str:
    threads = result["threads"]
    lines = [f"fastsm bench --contention — {bench.machine_line(threads)}",
             f"{result['shape']} {result['dtype']}"
             + (f", {result['data']} data" if result.get("data", "normal") != "normal" else "")
             + f"; {threads} threads for fastsm and torch; "
             f"busy = {result.get('neighbour', '?')} beside this process; medians of "
             "interleaved rounds",
             "x 1 thread = time / fastsm's 1-thread time in the same phase; "
             "vs torch = torch time / time (>1: faster than torch)", ""]
    head = f"{'phase':<7} {'op':<24} {'contender':<24} {'median':>10} {'spread':>7} " \
           f"{'mean':>10} {'x 1 thread':>10} {'vs torch':>9}"
    lines += [head, "-" * len(head)]
    nan3 = (float("nan"),) * 3
    for phase, per_op in result["phases"].items():
        for op, res in per_op.items():
            one = res["fastsm 1 thread"][0]
            torch_t = res.get("torch", nan3)[0]
            for name, (med, spread, mean) in sorted(res.items(), key=lambda kv: kv[1][0]):
                lines.append(f"{phase:<7} {op:<24} {name:<24} {bench._fmt_time(med):>10} "
                             f"{spread:>7.0%} {bench._fmt_time(mean):>10} {med / one:>10.2f} "
                             f"{torch_t / med:>9.2f}")
            lines.append("")
    busy = result["phases"].get("busy", {})
    idle = result["phases"].get("idle", {})
    share = result.get("native_share", {})
    for op, res in busy.items():
        mine, one = res["fastsm"], res["fastsm 1 thread"]
        if "torch" in res:
            vs_torch = (f"torch / fastsm = {res['torch'][0] / mine[0]:.2f} (median), "
                        f"{res['torch'][2] / mine[2]:.2f} (mean) (bar > 1)")
        else:
            vs_torch = "torch not installed"
        lines.append(f"busy {op}: default call / its 1-thread time = {mine[0] / one[0]:.2f} "
                     f"(median), {mine[2] / one[2]:.2f} (mean) (bar 1.3); {vs_torch}; own "
                     f"threads in {share.get('busy', {}).get(op, float('nan')):.0%} of calls")
    for op, res in idle.items():
        fixed = next(v for k, v in res.items() if k.startswith("fastsm fixed"))
        lines.append(f"idle {op}: default / fixed team = {res['fastsm'][0] / fixed[0]:.2f} "
                     "(adaptive threads cost nothing idle if ~1.00); own threads in "
                     f"{share.get('idle', {}).get(op, float('nan')):.0%} of calls")
    c = result.get("callers")
    if c:
        lines.append(f"{c['callers']} callers of softmax {c['shape']}: at once "
                     f"{bench._fmt_time(c['at_once_s'])} vs one after another "
                     f"{bench._fmt_time(c['one_after_another_s'])} = "
                     f"{c['at_once_s'] / c['one_after_another_s']:.2f} (bar <= 1); answers "
                     f"{'bitwise equal' if c['answers_equal'] else 'DIFFER'}")
    other = result.get("idle_other_cpus")
    if other is not None and other > bench.LoadMeter.BUSY:
        lines.append(f"note: the idle phase was not idle (other processes kept {other:.2f} "
                     "CPUs busy)")
    return "\n".join(lines)
