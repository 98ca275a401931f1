"""The front: dtype rules, out=, axis handling, backend selection and clear errors."""

import numpy as np
import pytest

import fastsm

from . import oracle
from .checks import assert_probabilities

ELEMENTWISE = ["softmax", "log_softmax"]


def test_backends_listed_and_objects_work():
    names = fastsm.backends()
    assert "numpy" in names
    for name in names:
        b = fastsm.get_backend(name)
        assert b.name == name
        x = np.array([[1.0, 2.0, 3.0]])
        np.testing.assert_allclose(b.softmax(x), fastsm.softmax(x, backend="numpy"), rtol=1e-15)
        assert b.cross_entropy(x, np.array([2])) == pytest.approx(
            fastsm.cross_entropy(x, np.array([2]), backend="numpy"), rel=1e-14)
    assert fastsm.get_backend().name in names


@pytest.mark.parametrize("op", ELEMENTWISE)
def test_float16_computed_in_float32(backend, op):
    x = np.linspace(-5, 5, 24, dtype=np.float16).reshape(4, 6)
    result = getattr(fastsm, op)(x, backend=backend)
    assert result.dtype == np.float16
    expected = getattr(fastsm, op)(x.astype(np.float32), backend=backend).astype(np.float16)
    np.testing.assert_array_equal(result, expected)
    assert fastsm.logsumexp(x, backend=backend).dtype == np.float16


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16, np.bool_])
def test_integers_and_bool_become_float64(backend, dtype):
    x = (np.arange(12) % 3).astype(dtype).reshape(3, 4)
    p = fastsm.softmax(x, backend=backend)
    assert p.dtype == np.float64
    assert_probabilities(p, oracle.softmax(x.astype(np.float64)), np.float64, str(dtype))
    assert fastsm.logsumexp(x, backend=backend).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.complex128, object, "U3"])
def test_unsupported_dtypes_raise_type_error(backend, dtype):
    x = np.ones((2, 3)).astype(dtype)
    for op in ("softmax", "log_softmax", "logsumexp"):
        with pytest.raises(TypeError, match="dtype"):
            getattr(fastsm, op)(x, backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        fastsm.cross_entropy(x, np.zeros(2, int), backend=backend)


@pytest.mark.parametrize("op", ELEMENTWISE)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_out_buffers(backend, op, axis):
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    expected = getattr(fastsm, op)(x, axis=axis, backend=backend)
    for out in (np.empty_like(x), np.empty_like(x, order="F"), np.empty((5, 14), np.float32)[:, ::2]):
        result = getattr(fastsm, op)(x, axis=axis, out=out, backend=backend)
        assert result is out
        np.testing.assert_array_equal(out, expected)
    y = x.copy()  # in place
    result = getattr(fastsm, op)(y, axis=axis, out=y, backend=backend)
    assert result is y and np.shares_memory(result, y)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("op", ELEMENTWISE)
@pytest.mark.parametrize("shape", [(40, 600), (300, 100)])
def test_in_place_where_rows_shift_by_their_own_max(backend, op, shape):
    """out=x where every row is shifted by its own max (600 classes; a range of logits too
    wide for one shift per block): the kernels must not write out before reading x."""
    x = np.random.default_rng(1).standard_normal(shape) * 30
    expected = getattr(fastsm, op)(x, backend=backend)
    y = x.copy()
    assert getattr(fastsm, op)(y, out=y, backend=backend) is y
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("op", ELEMENTWISE)
def test_out_and_input_may_be_ndarray_subclasses(backend, op, tmp_path):
    """np.memmap (an ndarray subclass) as out= and as input: the compiled entry points
    take subclasses as they took any buffer before."""
    x = np.random.default_rng(0).standard_normal((5, 7))
    expected = getattr(fastsm, op)(x, backend=backend)
    out = np.memmap(tmp_path / "out", dtype=np.float64, mode="w+", shape=(5, 7))
    assert getattr(fastsm, op)(x, out=out, backend=backend) is out
    np.testing.assert_array_equal(out, expected)
    mx = np.memmap(tmp_path / "x", dtype=np.float64, mode="w+", shape=(5, 7))
    mx[:] = x
    np.testing.assert_array_equal(getattr(fastsm, op)(mx, backend=backend), expected)
    t = np.memmap(tmp_path / "t", dtype=np.int64, mode="w+", shape=(5,))
    t[:] = [0, 6, 3, 2, 1]
    assert (fastsm.cross_entropy(mx, t, backend=backend)
            == fastsm.cross_entropy(x, np.asarray(t).copy(), backend=backend))


@pytest.mark.parametrize("op", ELEMENTWISE)
def test_out_partially_overlapping_input(backend, op):
    buf = np.random.default_rng(1).standard_normal(40)
    x = buf[:30].reshape(5, 6)
    expected = getattr(fastsm, op)(x.copy(), backend=backend)
    out = buf[10:40].reshape(5, 6)
    getattr(fastsm, op)(x, out=out, backend=backend)
    np.testing.assert_array_equal(out, expected)


def test_float16_out(backend):
    x = np.arange(6, dtype=np.float16).reshape(2, 3)
    out = np.empty_like(x)
    fastsm.softmax(x, out=out, backend=backend)
    np.testing.assert_array_equal(out, fastsm.softmax(x, backend=backend))


@pytest.mark.parametrize("bad_out, err, match", [
    (np.empty((3, 3)), ValueError, r"shape \(3, 3\); expected \(2, 3\)"),
    (np.empty((2, 3), np.float32), TypeError, "dtype float32; expected float64"),
    ([[0.0] * 3] * 2, TypeError, "numpy.ndarray"),
])
def test_bad_out(backend, bad_out, err, match):
    with pytest.raises(err, match=match):
        fastsm.softmax(np.ones((2, 3)), out=bad_out, backend=backend)


def test_read_only_out(backend):
    out = np.empty((2, 3))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastsm.log_softmax(np.ones((2, 3)), out=out, backend=backend)


def test_bad_axis(backend):
    with pytest.raises(np.exceptions.AxisError):
        fastsm.softmax(np.ones((2, 3)), axis=2, backend=backend)
    with pytest.raises(np.exceptions.AxisError):  # a 0-d input has one axis-like element
        fastsm.logsumexp(np.float64(1.0), axis=1, backend=backend)
    assert fastsm.logsumexp(np.float64(1.0), backend=backend) == 1.0  # as torch and scipy
    with pytest.raises(TypeError):
        fastsm.softmax(np.ones((2, 3)), axis=1.5, backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        fastsm.softmax(np.ones(3), backend="torch")
    with pytest.raises(ValueError, match="unknown backend"):
        fastsm.get_backend("nope")


CE_BAD = [
    (dict(target=np.array([0, 3])), ValueError, r"target value 3 at index 1 .*\[0, 3\)"),
    (dict(target=np.array([0, -1])), ValueError, r"target value -1 at index 1"),
    (dict(target=np.array([0.0, 1.0])), TypeError, "integer dtype, got float64"),
    (dict(target=np.array([True, False])), TypeError, "dtype bool"),
    (dict(target=np.array([0, 1, 2])), ValueError, r"shape \(3,\); expected \(2,\)"),
    (dict(target=np.ones((2, 3), int)), TypeError, "float dtype, got int64"),
    (dict(target=np.ones((2, 4))), ValueError, r"shape \(2, 4\)"),
    (dict(reduction="avg"), ValueError, r"reduction='avg'; expected one of"),
    (dict(label_smoothing=1.5), ValueError, r"label_smoothing=1.5; expected a value in \[0, 1\]"),
    (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
    (dict(weight=np.ones(4)), ValueError, r"weight has shape \(4,\); expected \(3,\)"),
    (dict(weight=np.ones(3, complex)), TypeError, "weight has dtype complex128"),
    (dict(weight=np.array([1.0, np.nan, 1.0])), ValueError, r"weight\[1\] = nan; .* finite"),
    (dict(weight=np.array([np.inf, 1.0, 1.0])), ValueError, r"weight\[0\] = inf"),
    (dict(ignore_index=1.5), TypeError, r"ignore_index=1.5 \(float\); expected an integer"),
    (dict(ignore_index=2**63), ValueError, r"ignore_index=9223372036854775808; expected an int64"),
    (dict(logits=np.float64(1.0)), ValueError, "at least 1 dimension"),
]


@pytest.mark.parametrize("fn", ["cross_entropy", "cross_entropy_with_grad"])
@pytest.mark.parametrize("bad, err, match", CE_BAD)
def test_cross_entropy_bad_input(backend, fn, bad, err, match):
    args = dict(logits=np.zeros((2, 3)), target=np.array([0, 1]))
    args.update(bad)
    logits, target = args.pop("logits"), args.pop("target")
    with pytest.raises(err, match=match):
        getattr(fastsm, fn)(logits, target, backend=backend, **args)


def test_ignore_index_target_outside_range_is_allowed(backend):
    loss = fastsm.cross_entropy(np.zeros((2, 3)), np.array([-100, 1]), backend=backend)
    assert loss == pytest.approx(np.log(3))


def test_lists_and_nd_inputs(backend):
    assert fastsm.softmax([1.0, 1.0], backend=backend).tolist() == [0.5, 0.5]
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    for axis in range(4):
        p = fastsm.softmax(x, axis=axis, backend=backend)
        np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=1e-14)
        lse = fastsm.logsumexp(x, axis=axis, backend=backend)
        assert lse.shape == tuple(np.delete(np.array(x.shape), axis))
    logits = x.reshape(6, 4, 5)
    target = np.random.default_rng(3).integers(0, 5, (6, 4))
    loss = fastsm.cross_entropy(logits, target, reduction="none", backend=backend)
    assert loss.shape == (6, 4)
    flat = fastsm.cross_entropy(logits.reshape(24, 5), target.reshape(24), reduction="none",
                                backend=backend)
    np.testing.assert_allclose(loss.reshape(24), flat, rtol=1e-15)


def test_threads_setting():
    old = fastsm.get_num_threads()
    try:
        fastsm.set_num_threads(1)
        assert fastsm.get_num_threads() == 1
        with pytest.raises(ValueError, match="n >= 1"):
            fastsm.set_num_threads(0)
        with pytest.raises(TypeError):
            fastsm.set_num_threads(1.5)
    finally:
        fastsm.set_num_threads(old)


def test_show_config(capsys):
    fastsm.show_config()
    out = capsys.readouterr().out
    assert "backend numpy" in out and "threads" in out


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_logsumexp_out(backend, axis):
    x = np.random.default_rng(2).standard_normal((5, 7))
    expected = fastsm.logsumexp(x, axis=axis, backend=backend)
    shape = expected.shape
    for out in (np.empty(shape), np.empty(shape + (2,))[..., 0]):  # contiguous, strided
        result = fastsm.logsumexp(x, axis=axis, out=out, backend=backend)
        assert result is out
        np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match=r"out has shape \(3,\); expected"):
        fastsm.logsumexp(x, axis=axis, out=np.empty(3), backend=backend)
    x16 = x.astype(np.float16)
    out16 = np.empty(shape, np.float16)
    assert fastsm.logsumexp(x16, axis=axis, out=out16, backend=backend) is out16
    np.testing.assert_array_equal(out16, fastsm.logsumexp(x16, axis=axis, backend=backend))


def test_logsumexp_out_inside_its_input(backend):
    """out is a column of x itself: the result must be computed before it is written."""
    x = np.random.default_rng(3).standard_normal((6, 6))
    expected = fastsm.logsumexp(x, axis=1, backend=backend)
    result = fastsm.logsumexp(x, axis=1, out=x[:, 0], backend=backend)
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(x[:, 0], expected)
