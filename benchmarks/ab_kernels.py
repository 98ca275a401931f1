"""A/B of kernel modules: another checkout's kernels against this one's, in one process.

    python -m benchmarks.ab_kernels /path/to/other/checkout [--rounds 40] [--threads 2]
        [--shapes 64x128,1000x512@0] [--backends numpy] [--ops ...] [--dtypes ...]

Loads the other checkout's kernel modules (``c_kernels*.so``, or ``cython_kernels*.so`` from
before the C kernels were renamed; ``_cython_v*.so``; ``numba_kernels.py``;
``numpy_kernels.py``) under other module names, then times old and new kernel calls
alternately on the same arrays (``fastsm bench``'s cell data), so both see the same
machine state; prints the median of each and new/old.  A shape ending in ``@0`` times
the column kernels (``<op>_cols`` on the (1, R, b) view; softmax, log_softmax,
logsumexp).  The front (validation, the thread controller) is bypassed: both get
``--threads`` threads.  For kernel changes only: the other checkout must be built in place.
"""

import os
import tempfile

# Numba's cache is keyed by source path, not module name: the other checkout's kernels,
# loaded under another name, would write entries that its own imports then fail to load
# ("No module named ..."), so this process caches in a directory of its own.
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastsm-ab-")

import argparse  # noqa: E402
import glob  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from fastsm import _registry  # noqa: E402
from fastsm.bench import cell_data  # noqa: E402

SHAPES = ((4096, 1000), (512, 32000), (65536, 10), (64, 128))
OPS = ("softmax", "log_softmax", "logsumexp", "ce_with_grad")


def load_other(root, backend):
    """The other checkout's kernels of ``backend``, under a name of their own.  ``c``: its
    c_kernels extension, or cython_kernels in checkouts from before the C kernels got that
    name; ``cython``: the widest _cython_v* build this CPU runs."""
    kernels = Path(root) / "fastsm" / "kernels"
    if backend in ("c", "cython"):
        if backend == "c":
            stems = ["c_kernels", "cython_kernels"]
        else:
            level = _registry.load("cython")._build.isa_level()
            stems = [f"_cython_{v}" for v, need in (("v4", 4), ("v3", 3), ("base", 0))
                     if level >= need]
        found = [(stem, glob.glob(str(kernels / f"{stem}*.so"))) for stem in stems]
        stem, paths = next(((s, p) for s, p in found if p), (None, None))
        if stem is None:
            raise SystemExit(f"{root}: no compiled {backend} kernels ({stems})")
        path = paths[0]
        name = f"fastsm_ab_other.{stem}"  # the extension's init name is its last part
    else:
        path = str(kernels / f"{backend}_kernels.py")
        name = f"fastsm_ab_other_{backend}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outputs(op, x):
    """The cell's output buffers, shared by both contenders: buffers of their own gave the
    second one allocated up to 7% more time on identical kernels (4096x1000 float64, 2
    threads, this checkout against a copy of itself), from where its pages landed."""
    if x.ndim == 3:  # a column kernel's (1, R, b)
        return (np.empty((1, x.shape[2]), x.dtype) if op == "logsumexp" else np.empty_like(x),)
    n, k = x.shape
    if op == "logsumexp":
        return (np.empty(n, x.dtype),)
    if op == "ce_with_grad":
        return np.ones(k), np.empty(n), np.empty_like(x)
    return (np.empty_like(x),)


def caller(mod, op, x, target, threads, bufs):
    if op == "ce_with_grad":
        n, k = x.shape
        w, loss, grad = bufs
        try:  # the contract with z_coef, lse and correct (after 2c9440a)
            mod.ce_index(x, target, w, -100, 0.0, 1.0 / n, loss, grad, 0.0, None, None, threads)
        except TypeError:  # an older checkout's kernels
            return lambda: mod.ce_index(x, target, w, -100, 0.0, 1.0 / n, loss, grad, threads)
        return lambda: mod.ce_index(x, target, w, -100, 0.0, 1.0 / n, loss, grad, 0.0, None,
                                    None, threads)
    name = op + "_cols" if x.ndim == 3 else op
    return lambda: getattr(mod, name)(x, bufs[0], threads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", help="root of the other checkout (built in place)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="c,numba,numpy")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    parser.add_argument("--ops", default=",".join(OPS))
    args = parser.parse_args(argv)
    print(f"{'backend':8} {'op':13} {'shape':10} {'dtype':8} {'old':>10} {'new':>10} new/old")
    for backend in args.backends.split(","):
        new_mod, old_mod = _registry.load(backend), load_other(args.other, backend)
        for op in args.ops.split(","):
            for text in args.shapes.split(","):
                dims, _, axis = text.partition("@")
                shape = tuple(int(d) for d in dims.split("x"))
                if axis and (op == "ce_with_grad" or axis != "0"):
                    continue  # the column kernels: softmax, log_softmax, logsumexp over axis 0
                for dtype in args.dtypes.split(","):
                    x, target = cell_data(shape, dtype, True)
                    if axis:
                        x = x.reshape(1, *shape)
                    bufs = outputs(op, x)
                    fns = [caller(m, op, x, target, args.threads, bufs)
                           for m in (old_mod, new_mod)]
                    for fn in fns * 3:
                        fn()  # JIT load, thread start, page faults
                    times = ([], [])
                    for _ in range(args.rounds):
                        for i in (0, 1) if _ % 2 else (1, 0):
                            t0 = time.perf_counter()
                            fns[i]()
                            times[i].append(time.perf_counter() - t0)
                    old, new = (float(np.median(t)) for t in times)
                    print(f"{backend:8} {op:13} {text:10} {dtype:8} "
                          f"{old * 1e6:9.1f}u {new * 1e6:9.1f}u {new / old:6.3f}", flush=True)


if __name__ == "__main__":
    main()
