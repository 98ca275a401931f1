"""What every benchmark suite here shares: the grid, the data and the callables.

All three suites (asv, pytest-benchmark, ``fastsm bench``) read the backend registry, so a
new backend shows up everywhere without edits here.  Imports are guarded so the asv suite
still loads on older commits.
"""


try:
    import fastsm
    from fastsm import _registry
    from fastsm.bench import OPS, cell_data, error_of, parse_shape, reference, traffic_bytes
except ImportError:  # an old commit without these modules
    fastsm = None
    OPS = ()
try:
    from fastsm.bench import WARMUP_CALLS
except ImportError:  # older commits warmed up with one call
    WARMUP_CALLS = 0

SHAPES = ("4096x1000", "512x32000", "65536x10", "64x128")
DTYPES = ("float32", "float64")
_cache = {}


def backends():
    return list(_registry.KNOWN) if fastsm is not None else []


def data(shape, dtype, with_target):
    key = (shape, dtype, with_target)
    if key not in _cache:
        _cache[key] = cell_data(parse_shape(shape)[0], dtype, with_target)
    return _cache[key]


def call(backend, op, shape, dtype):
    """A zero-argument callable running ``op`` on ``backend``; raises NotImplementedError
    when the backend is unavailable here (asv's skip signal)."""
    try:
        _registry.load(backend)
    except (ImportError, ValueError) as exc:
        raise NotImplementedError(str(exc))
    x, target = data(shape, dtype, op.startswith("cross"))
    fn = getattr(fastsm, op)
    if target is not None:
        return lambda: fn(x, target, backend=backend)
    return lambda: fn(x, backend=backend)


def accuracy(backend, op, shape, dtype):
    x, target = data(shape, dtype, op.startswith("cross"))
    key = ("ref", op, shape, dtype)
    if key not in _cache:  # the long-double reference is the slow part: once per cell
        _cache[key] = reference(op, x, -1, target)
    return error_of(op, call(backend, op, shape, dtype)(), _cache[key])


def nbytes(op, shape, dtype):
    return traffic_bytes(op, data(shape, dtype, False)[0])
