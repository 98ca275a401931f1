"""pytest-benchmark suite: ``pytest benchmarks --benchmark-only``.

Grouped as ``op|shape|dtype`` with the backend as the parameter, so each group of the
report compares backends side by side.  The normal test run executes each once as a plain
test (``--benchmark-disable`` in addopts): CI proves they work without timing anything.
"""

try:
    import pytest
except ImportError:  # asv's discovery imports this module too; the bench extra has no pytest
    pytest = None

import fastsm

from .common import DTYPES, OPS, SHAPES, WARMUP_CALLS, accuracy, backends, call, nbytes


def test_op(benchmark, backend, op, shape, dtype):
    try:
        fn = call(backend, op, shape, dtype)
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    for _ in range(1 + WARMUP_CALLS):  # as fastsm bench and asv: JIT, controller start-up
        fn()
    benchmark.group = f"{op}|{shape}|{dtype}"
    benchmark.extra_info["threads"] = fastsm.get_num_threads()
    benchmark.extra_info["max_error"] = accuracy(backend, op, shape, dtype)
    benchmark(fn)
    if benchmark.stats is not None:
        benchmark.extra_info["GB/s"] = nbytes(op, shape, dtype) / benchmark.stats.stats.median / 1e9
    assert benchmark.extra_info["max_error"] < (1e-5 if dtype == "float32" else 1e-13)


if pytest is not None:
    for _name, _values in (("backend", backends()), ("op", OPS), ("shape", SHAPES),
                           ("dtype", DTYPES)):  # ids read backend-op-shape-dtype
        test_op = pytest.mark.parametrize(_name, _values)(test_op)


def test_asv_suite_runs_one_cell_of_each_class():
    """The asv classes' own setup/measure methods, once each on the smallest cell: asv
    itself is not run by the tests (minutes), but a broken suite file fails here."""
    import numpy as np

    from . import bench_ops

    ops = bench_ops.Ops()
    ops.setup("numpy", "softmax", "64x128", "float32")
    ops.time_op("numpy", "softmax", "64x128", "float32")
    copy = bench_ops.Copy()
    copy.setup("64x128", "float32")
    copy.time_copy("64x128", "float32")
    np.testing.assert_array_equal(copy.out, copy.x)
    errors = {("numpy", "softmax", "64x128", "float32"): 1e-7}
    acc = bench_ops.Accuracy()
    acc.setup(errors, "numpy", "softmax", "64x128", "float32")
    eps = float(np.finfo(np.float32).eps)
    assert acc.track_max_error(errors, "numpy", "softmax", "64x128", "float32") == float(
        f"{1e-7 / eps:.3g}")
