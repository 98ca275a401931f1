"""The independent high-precision oracle every backend is checked against.

Plain NumPy in ``np.longdouble`` (80-bit extended on x86-64: 64-bit mantissa), written
from the definitions with explicit masks for the special rows, and sharing no code with
any backend.  Results are returned in longdouble; tests round/compare them.
"""

from __future__ import annotations

import numpy as np

LD = np.longdouble


def _rows(x, axis):
    x = np.moveaxis(np.asarray(x).astype(LD), axis, -1)
    k = x.shape[-1]
    return x, x.reshape(int(np.prod(x.shape[:-1])), k)


def _special_rows(x2):
    """Rows whose softmax is NaN: any NaN, any +inf, or all -inf (or empty)."""
    has_nan = np.isnan(x2).any(axis=1)
    has_pinf = np.isposinf(x2).any(axis=1)
    all_ninf = np.isneginf(x2).all(axis=1)
    return has_nan | has_pinf | all_ninf


def log_softmax(x, axis=-1):
    moved, x2 = _rows(x, axis)
    out = np.full(x2.shape, np.nan, dtype=LD)
    ok = ~_special_rows(x2)
    xs = x2[ok]
    if xs.size:
        m = xs.max(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = xs - m
            out[ok] = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def softmax(x, axis=-1):
    moved, x2 = _rows(x, axis)
    out = np.full(x2.shape, np.nan, dtype=LD)
    ok = ~_special_rows(x2)
    xs = x2[ok]
    if xs.size:
        e = np.exp(xs - xs.max(axis=1, keepdims=True))
        out[ok] = e / e.sum(axis=1, keepdims=True)
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def logsumexp(x, axis=-1):
    moved, x2 = _rows(x, axis)
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
            out[r] = m + np.log(np.exp(row - m).sum())
    return out.reshape(moved.shape[:-1])


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
