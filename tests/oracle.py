"""The independent high-precision oracle every backend is checked against.

Plain NumPy in ``np.longdouble`` (80-bit extended on x86-64: 64-bit mantissa), written
from the definitions with explicit masks for the special rows, and sharing no code with
any backend.  Results are returned in longdouble; tests round/compare them.
"""

from __future__ import annotations

import numpy as np

LD = np.longdouble


def _axes(axis, ndim):
    """An int, a tuple of ints or None (all axes) as a tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, tuple) else (axis,)
    axes = tuple(_norm(a, ndim) for a in items)
    if len(set(axes)) != len(axes):
        raise ValueError(f"repeated axis in {axis!r}")
    return axes


def _norm(a, ndim):
    if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
        raise TypeError(f"axis {a!r} is not an integer")
    if not -ndim <= a < ndim:
        raise np.exceptions.AxisError(f"axis {a} is out of bounds for {ndim} dimensions")
    return int(a) % ndim


def _rows(x, axis):
    """(moved, x2): x in long double with the reduced axes last, and as (rows, their product)."""
    x = np.asarray(x).astype(LD)
    axes = _axes(axis, x.ndim)
    last = tuple(range(x.ndim - len(axes), x.ndim))
    moved = np.moveaxis(x, axes, last)
    k = int(np.prod(moved.shape[x.ndim - len(axes):]))
    return moved, moved.reshape(int(np.prod(moved.shape[:x.ndim - len(axes)])), k), axes, last


def _back(out2, moved, axes, last):
    """An elementwise result of x2's shape, back in x's layout."""
    return np.moveaxis(out2.reshape(moved.shape), last, axes)


def _special_rows(x2):
    """Rows whose softmax is NaN: any NaN, any +inf, or all -inf (or empty)."""
    has_nan = np.isnan(x2).any(axis=1)
    has_pinf = np.isposinf(x2).any(axis=1)
    all_ninf = np.isneginf(x2).all(axis=1)
    return has_nan | has_pinf | all_ninf


def _log_sum_shifted(z):
    """log(sum_c exp(z_c)) per row of z = x - max (each row holds a 0): log1p of the sum
    without one maximal term, so a tiny total keeps its digits (log(1 + 4e-18) in long
    double would keep only two)."""
    e = np.exp(z)
    rows = np.arange(z.shape[0])
    e[rows, np.argmax(z, axis=1)] = 0
    return np.log1p(e.sum(axis=1, keepdims=True))


def _zero_d(fn):
    """A 0-d input is one element along axis 0 (as in fastsm, torch and scipy)."""
    def wrapper(x, axis=-1):
        if np.ndim(x) == 0:
            if axis not in (0, -1, None, (), (0,), (-1,)):
                raise np.exceptions.AxisError(f"axis {axis} for a 0-d input")
            return np.reshape(fn(np.reshape(x, (1,)), 0), ())
        return fn(x, axis)
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


@_zero_d
def log_softmax(x, axis=-1):
    moved, x2, axes, last = _rows(x, axis)
    out = np.full(x2.shape, np.nan, dtype=LD)
    ok = ~_special_rows(x2)
    xs = x2[ok]
    if xs.size:
        m = xs.max(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = xs - m
            out[ok] = z - _log_sum_shifted(z)
    return _back(out, moved, axes, last)


@_zero_d
def softmax(x, axis=-1):
    moved, x2, axes, last = _rows(x, axis)
    out = np.full(x2.shape, np.nan, dtype=LD)
    ok = ~_special_rows(x2)
    xs = x2[ok]
    if xs.size:
        e = np.exp(xs - xs.max(axis=1, keepdims=True))
        out[ok] = e / e.sum(axis=1, keepdims=True)
    return _back(out, moved, axes, last)


@_zero_d
def logsumexp(x, axis=-1):
    moved, x2, axes, last = _rows(x, axis)
    n = x2.shape[0]
    out = np.empty(n, dtype=LD)
    for r in range(n):
        row = x2[r]
        if np.isnan(row).any():
            out[r] = np.nan
        elif np.isposinf(row).any():
            out[r] = np.inf
        elif row.size == 0 or np.isneginf(row).all():
            out[r] = -np.inf
        else:
            m = row.max()
            out[r] = m + _log_sum_shifted((row - m)[None, :])[0, 0]
    return out.reshape(moved.shape[:moved.ndim - len(axes)])


def cross_entropy_terms(logits, target, weight=None, ignore_index=-100, label_smoothing=0.0):
    """(per-sample loss, q, Q, mean denominator, ignored rows) straight from the torch
    definitions."""
    x = np.asarray(logits).astype(LD)
    k = x.shape[-1]
    n = int(np.prod(x.shape[:-1]))
    x2 = x.reshape(n, k)
    w = np.ones(k, LD) if weight is None else np.asarray(weight).astype(LD)
    eps = LD(label_smoothing)
    target = np.asarray(target)
    if target.shape == x.shape and target.dtype.kind == "f":
        t = target.reshape(n, k).astype(LD)
        q = w * ((1 - eps) * t + eps / k)
        denominator = LD(n)
        ignored = np.zeros(n, bool)
    else:
        y = target.reshape(n).astype(np.int64)
        ignored = y == ignore_index
        q = np.zeros((n, k), LD)
        for r in range(n):
            if not ignored[r]:
                q[r] = eps / k * w
                q[r, y[r]] += (1 - eps) * w[y[r]]
        denominator = w[y[~ignored]].sum() if (~ignored).any() else LD(0)
    logp = log_softmax(x2, axis=-1)
    with np.errstate(invalid="ignore"):
        terms = np.where(q == 0, LD(0), q * logp)
    loss = -terms.sum(axis=1)
    if k:  # no usable logit: NaN even where q is 0 (as torch); no classes: an empty sum, 0
        loss[_special_rows(x2)] = np.nan
    loss[ignored] = 0
    return loss, q, q.sum(axis=1), denominator, ignored


def cross_entropy(logits, target, reduction="mean", **options):
    loss, _, _, denominator, _ = cross_entropy_terms(logits, target, **options)
    if reduction == "none":
        return loss.reshape(np.asarray(logits).shape[:-1])
    if reduction == "sum":
        return loss.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return loss.sum() / denominator if denominator != 0 else LD(np.nan)


def cross_entropy_grad(logits, target, reduction="mean", **options):
    x = np.asarray(logits)
    loss, q, big_q, denominator, ignored = cross_entropy_terms(logits, target, **options)
    p = softmax(x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1]).astype(LD), axis=-1)
    scale = LD(1)
    if reduction == "mean":  # a zero total weight: 0/0 like the loss (torch: NaN too)
        scale = LD(1) / denominator if denominator != 0 else LD(np.inf)
    with np.errstate(invalid="ignore"):
        grad = scale * (p * big_q[:, None] - q)
    grad[ignored] = 0  # masked out, whatever the scale
    return grad.reshape(x.shape)
