"""Cross-entropy and its fused gradient: oracle, finite differences and torch parity."""

import itertools
import warnings

import numpy as np
import pytest

import fastsm

from . import oracle
from .checks import assert_cross_entropy

DTYPES = [np.float32, np.float64]
OPTIONS = [
    dict(weight=w, ignore_index=ii, label_smoothing=ls, reduction=red)
    for w, ii, ls, red in itertools.product(
        [None, "random"], [-100, 2], [0.0, 0.1, 1.0], ["mean", "sum", "none"])
]


def _problem(shape, k, dtype, seed, soft=False, masked=False):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape + (k,)) * 2).astype(dtype)
    if masked:
        logits[rng.random(logits.shape) < 0.2] = -np.inf
        logits[..., 0] = 0.0  # keep every row alive
    if soft:
        t = rng.random(shape + (k,))
        target = (t / t.sum(-1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, k, size=shape)
        if masked:  # class 0 is finite in every row; keep the target finite
            target[:] = 0
    return logits, target


def _resolve(options, k, seed):
    options = dict(options)
    if options["weight"] == "random":
        options["weight"] = np.random.default_rng(seed).random(k) + 0.5
    return options


def _check(backend, logits, target, options, dtype):
    dtype = np.dtype(dtype)
    before = (logits.copy(), target.copy())
    loss, grad = fastsm.cross_entropy_with_grad(logits, target, backend=backend, **options)
    loss_only = fastsm.cross_entropy(logits, target, backend=backend, **options)
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(target, before[1])
    # the same kernel with and without the gradient: equal up to summation order
    np.testing.assert_allclose(loss, loss_only, rtol=4 * np.finfo(dtype).eps, atol=0)
    assert np.asarray(loss).dtype == dtype
    assert_cross_entropy(loss, grad, logits, target, options, dtype, f"{backend} {options}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_every_option_matches_oracle(backend, dtype, soft):
    for i, options in enumerate(OPTIONS):
        for shape, k in [((9,), 5), ((3, 4), 7), ((), 6), ((40,), 300)]:
            logits, target = _problem(shape, k, dtype, seed=i, soft=soft)
            if not soft and options["ignore_index"] == 2 and shape:
                target.reshape(-1)[::3] = 2  # some ignored samples
            _check(backend, logits, target, _resolve(options, k, i), dtype)


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_masked_logits(backend, soft):
    for options in OPTIONS:
        logits, target = _problem((50,), 9, np.float64, seed=3, soft=soft, masked=True)
        if soft:
            target[np.isneginf(logits)] = 0  # no probability on masked classes
        options = _resolve(options, 9, 3)
        loss, grad = fastsm.cross_entropy_with_grad(logits, target, backend=backend, **options)
        ref = oracle.cross_entropy(logits, target, **options)
        # smoothing puts weight on masked classes too: +inf where a row is masked
        expect_inf = bool(options["label_smoothing"])
        assert np.isinf(np.asarray(loss)).any() == expect_inf
        np.testing.assert_allclose(np.asarray(loss, np.float64), ref.astype(np.float64),
                                   rtol=1e-13)
        gref = oracle.cross_entropy_grad(logits, target, **options).astype(np.float64)
        np.testing.assert_allclose(grad, gref, rtol=1e-13, atol=1e-15)


def test_all_ignored_and_empty(backend):
    logits = np.zeros((4, 3))
    target = np.full(4, -100)
    loss, grad = fastsm.cross_entropy_with_grad(logits, target, backend=backend)
    assert np.isnan(loss) and (grad == 0).all()
    assert fastsm.cross_entropy(logits, target, reduction="sum", backend=backend) == 0
    np.testing.assert_array_equal(
        fastsm.cross_entropy(logits, target, reduction="none", backend=backend), np.zeros(4))
    empty = np.zeros((0, 3), np.float32)
    assert np.isnan(fastsm.cross_entropy(empty, np.zeros(0, int), backend=backend))
    loss, grad = fastsm.cross_entropy_with_grad(empty, np.zeros((0, 3), np.float32),
                                                reduction="sum", backend=backend)
    assert loss == 0 and grad.shape == (0, 3) and grad.dtype == np.float32


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_gradient_by_central_differences(backend, soft, smoothing):
    """Shift one class column of every sample at once: each sample's loss moves alone."""
    logits, target = _problem((12,), 6, np.float64, seed=7, soft=soft)
    weight = np.linspace(0.5, 2.0, 6)
    opts = dict(weight=weight, label_smoothing=smoothing)
    _, grad = fastsm.cross_entropy_with_grad(logits, target, reduction="none", backend=backend,
                                             **opts)
    h = 1e-6
    for c in range(6):
        plus, minus = logits.copy(), logits.copy()
        plus[:, c] += h
        minus[:, c] -= h
        lp = fastsm.cross_entropy(plus, target, reduction="none", backend=backend, **opts)
        lm = fastsm.cross_entropy(minus, target, reduction="none", backend=backend, **opts)
        np.testing.assert_allclose(grad[:, c], (lp - lm) / (2 * h), rtol=1e-6, atol=1e-8)
    # mean and sum scale the same per-sample gradient
    _, gsum = fastsm.cross_entropy_with_grad(logits, target, reduction="sum", backend=backend,
                                             **opts)
    np.testing.assert_allclose(gsum, grad, rtol=1e-15)




def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_parity_with_torch(backend, dtype, soft):
    torch = _torch()
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for i, options in enumerate(OPTIONS):
        if soft and options["ignore_index"] != -100:
            continue  # torch ignores ignore_index for probability targets; so do we
        for shape, k in [((9,), 5), ((2, 3), 4), ((), 6)]:
            logits, target = _problem(shape, k, dtype, seed=i, soft=soft)
            if not soft and options["ignore_index"] == 2 and shape:
                target.reshape(-1)[::2] = 2
            options_k = _resolve(options, k, i)
            loss, grad = fastsm.cross_entropy_with_grad(logits, target, backend=backend,
                                                        **options_k)
            # torch wants classes on axis 1
            xt = torch.tensor(np.moveaxis(logits, -1, 1) if logits.ndim > 1 else logits,
                              requires_grad=True)
            tt = torch.tensor(np.moveaxis(target, -1, 1) if soft and target.ndim > 1 else target)
            kw = dict(options_k)
            if kw["weight"] is not None:
                kw["weight"] = torch.tensor(kw["weight"], dtype=xt.dtype)
            tloss = torch.nn.functional.cross_entropy(xt, tt, **kw)
            tloss.sum().backward()
            np.testing.assert_allclose(loss, tloss.detach().numpy(), rtol=tol, atol=tol,
                                       err_msg=str(options_k))
            tgrad = xt.grad.numpy()
            tgrad = np.moveaxis(tgrad, 1, -1) if tgrad.ndim > 1 else tgrad
            np.testing.assert_allclose(grad, tgrad, rtol=tol, atol=tol, err_msg=str(options_k))


def test_tutorial_formula_with_one_hot_targets(backend):
    """The tutorial's -(1/N) sum(sum(y * log(p))) equals the soft-target mean."""
    logits, labels = _problem((8,), 4, np.float64, seed=1)
    y = np.eye(4)[labels]
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -(1 / 8) * np.sum(np.sum(y * np.log(p)))
    np.testing.assert_allclose(fastsm.cross_entropy(logits, y, backend=backend), expected,
                               rtol=1e-14)
    np.testing.assert_allclose(fastsm.cross_entropy(logits, labels, backend=backend), expected,
                               rtol=1e-14)


def test_zero_classes(backend):
    """No classes: an empty sum (0) for probabilities; every class index is out of range,
    except ignore_index (found by tests/fuzz.py: the loss was uninitialised memory)."""
    for _ in range(3):  # fresh buffers each time: garbage would show sooner or later
        loss = fastsm.cross_entropy(np.zeros((3, 0)), np.zeros((3, 0)), reduction="none",
                                    backend=backend)
        np.testing.assert_array_equal(loss, np.zeros(3))
        assert fastsm.cross_entropy(np.zeros((0,)), np.array(-100), reduction="sum",
                                    backend=backend) == 0.0
    with pytest.raises(ValueError, match=r"target value 0 at index 0 is out of range"):
        fastsm.cross_entropy(np.zeros((2, 0)), np.array([0, 0]), backend=backend)


@pytest.mark.parametrize("case", ["zero-weights", "all-ignored"])
def test_zero_total_weight_matches_torch(backend, case):
    """mean over a zero total weight: loss NaN; gradient NaN, or 0 on ignored samples."""
    torch = _torch()
    x = np.random.default_rng(4).standard_normal((3, 4))
    target = np.array([0, 1, 2]) if case == "zero-weights" else np.full(3, -100)
    weight = np.zeros(4) if case == "zero-weights" else None
    loss, grad = fastsm.cross_entropy_with_grad(x, target, weight=weight, backend=backend)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(
        xt, torch.tensor(target), weight=None if weight is None else torch.tensor(weight))
    ref.backward()
    np.testing.assert_array_equal(loss, ref.item())  # both NaN
    np.testing.assert_array_equal(grad, xt.grad.numpy())  # NaN where torch has NaN, 0 where 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_negative_class_weights_match_torch(backend, reduction):
    """Negative (and zero) class weights are accepted, as torch accepts them."""
    torch = pytest.importorskip("torch", reason="torch (the compare extra) is not installed")
    x = np.random.default_rng(4).standard_normal((6, 4))
    target = np.array([0, 1, 2, 3, 1, 0])
    weight = np.array([1.0, -0.5, 2.0, 0.0])
    loss, grad = fastsm.cross_entropy_with_grad(x, target, weight=weight, reduction=reduction,
                                                backend=backend)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt, torch.tensor(target), weight=torch.tensor(weight),
                                            reduction=reduction)
    ref.sum().backward()
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_zero_weight_on_a_masked_logit_contributes_zero(backend):
    """0 * log 0 = 0 also for the target's own term and label smoothing's term (the fuzz
    found the C kernels and numba returning nan here, the numpy backend and the oracle 0)."""
    x = np.array([[-np.inf, 0.5], [0.5, -np.inf]], np.float32)
    for target in (np.array([0, 1]), np.array([1, 0])):
        options = dict(weight=np.array([0.0, 1.0]), label_smoothing=0.1, reduction="none")
        options_zero = dict(options, weight=np.array([0.0, 0.0]))
        for opts in (options, options_zero):
            loss, grad = fastsm.cross_entropy_with_grad(x, target, backend=backend, **opts)
            assert_cross_entropy(loss, grad, x, target, opts, np.float32, f"{backend} {opts}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_common_call_path_equals_the_general_one(backend, dtype):
    """The front's lean path for the common call (2-D C-contiguous logits, int64 targets,
    default options) gives bit for bit what the general path gives (reached here through
    explicit unit weights), and every call that is not that common one, or has a bad
    target, still gets the general path's answer or error."""
    rng = np.random.default_rng(7)
    k = 37
    x = (rng.standard_normal((50, k)) * 3).astype(dtype)
    t = rng.integers(0, k, 50)
    ones = np.ones(k)
    for reduction in ("mean", "sum"):
        for ignore_index in (-100, -1, k, 2**63 - 1):
            lean = fastsm.cross_entropy(x, t, reduction=reduction, ignore_index=ignore_index,
                                        backend=backend)
            general = fastsm.cross_entropy(x, t, weight=ones, reduction=reduction,
                                           ignore_index=ignore_index, backend=backend)
            assert type(lean) is type(general) and lean.dtype == dtype
            assert lean == general
            loss, grad = fastsm.cross_entropy_with_grad(x, t, reduction=reduction,
                                                        ignore_index=ignore_index,
                                                        backend=backend)
            loss_g, grad_g = fastsm.cross_entropy_with_grad(
                x, t, weight=ones, reduction=reduction, ignore_index=ignore_index,
                backend=backend)
            assert loss == loss_g and np.array_equal(grad, grad_g) and grad.dtype == dtype
    # ignored samples (the lean path keeps them where the backend counts them in C)
    for ignored_at in (slice(None, None, 4), slice(None)):
        t_out = t.copy()
        t_out[ignored_at] = -100
        for reduction in ("mean", "sum"):
            lean = fastsm.cross_entropy_with_grad(x, t_out, reduction=reduction,
                                                  backend=backend)
            general = fastsm.cross_entropy_with_grad(x, t_out, weight=ones,
                                                     reduction=reduction, backend=backend)
            np.testing.assert_array_equal(lean[0], general[0])  # all ignored: NaN both
            assert np.array_equal(lean[1], general[1])
    # an ignore_index that is a class, targets that are not int64 or not contiguous:
    # the general path, same answers as the oracle-checked one with explicit weights
    t_ign = t.copy()
    t_ign[::5] = 3
    for target, kwargs in ((t_ign, dict(ignore_index=3)), (t.astype(np.int32), {}),
                           (np.repeat(t, 2)[::2], {})):
        assert (fastsm.cross_entropy(x, target, backend=backend, **kwargs)
                == fastsm.cross_entropy(x, target, weight=ones, backend=backend, **kwargs))
    for bad in (k, -1, -(2**62)):
        t_bad = t.copy()
        t_bad[9] = bad
        with pytest.raises(ValueError, match=f"target value {bad} at index 9"):
            fastsm.cross_entropy(x, t_bad, backend=backend)
    # a float32 mean beyond float32's range is inf, without a warning (as the general path)
    if dtype == np.float32:
        huge = np.zeros((2, 3), dtype)
        huge[:, 1:] = 3e38
        huge[:, 0] = -3e38
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert fastsm.cross_entropy(huge, np.array([0, 0]), backend=backend,
                                        reduction="sum") == np.inf
