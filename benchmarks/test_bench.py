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
