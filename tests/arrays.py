"""The one array generator every backend is tested over.

``cases(dtype)`` yields ``(case_id, array, axis)``: shapes from empty to 4-d, every axis,
C / Fortran / strided / reversed / read-only layouts, and value families that matter to a
softmax: ordinary logits, +-1e4, -1e30, -inf masks, confident slices (one logit ~30 above
the rest: log-sum-exp and the top log-probability far below 1), and rows that are all
-inf, hold NaN or hold +inf.  Fixed seeds: every run sees the same arrays.
"""

from __future__ import annotations

import numpy as np

import fastsm
from fastsm.bench import OPS  # the five public ops, in one place

# (37, 9): 37 short rows are two 16-row lane groups of the C kernels' short-row path plus 5
# rows it takes one at a time; special_rows repeats its rows every 17, so they land in
# different lanes and in the rest
SHAPES = [(1,), (7,), (3, 1), (1, 5), (37, 9), (4, 5, 6), (2, 3, 2, 5), (33, 130)]
EMPTY_SHAPES = [(0,), (5, 0), (0, 5), (2, 0, 3)]
VALUE_FAMILIES = ("normal", "large", "huge_negative", "masked", "confident", "special_rows")


def values(shape, family, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape) * 3.0
    if family == "large":
        a = np.round(a / 3.0 * 1e4) * np.sign(rng.standard_normal(shape))
    elif family == "huge_negative":
        a[rng.random(shape) < 0.4] = -1e30
    elif family == "masked":
        a[rng.random(shape) < 0.3] = -np.inf
    elif family == "confident":
        a -= 30.0
        a[rng.random(shape) < 0.15] += 30.0
    elif family == "special_rows" and a.ndim >= 1:
        flat = a.reshape(-1, a.shape[-1])
        for r in range(0, flat.shape[0], 17):
            block = flat[r:r + 4]
            if len(block) >= 1:
                block[0] = -np.inf
            if len(block) >= 2:
                block[1, 0] = np.nan
            if len(block) >= 3:
                block[2, -1] = np.inf
            if len(block) >= 4:
                block[3, ::2] = -np.inf
        a = flat.reshape(shape)
    with np.errstate(over="ignore"):  # -1e30 is -inf in float16
        return a.astype(dtype)


def layouts(a):
    """(name, view) pairs holding the same values as ``a`` in different memory layouts."""
    yield "C", np.ascontiguousarray(a)
    if a.ndim >= 2:
        yield "F", np.asfortranarray(a)
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    yield "strided", big[..., ::2]
    rev = np.ascontiguousarray(a[::-1])
    yield "reversed", rev[::-1]
    ro = a.copy()
    ro.flags.writeable = False
    yield "readonly", ro


def cases(dtype):
    for shape in EMPTY_SHAPES:
        a = np.zeros(shape, dtype)
        for axis in range(-a.ndim, a.ndim):
            yield f"empty{shape}-axis{axis}", a, axis
    for i, shape in enumerate(SHAPES):
        for family in VALUE_FAMILIES:
            base = values(shape, family, dtype, seed=i)
            for name, arr in layouts(base):
                for axis in range(arr.ndim):
                    yield f"{shape}-{family}-{name}-axis{axis}", arr, axis


def call_op(backend, op, x, target):
    """``op`` (one of OPS) on ``backend``; the cross-entropies also take ``target``."""
    if op.startswith("cross"):
        return getattr(fastsm, op)(x, target, backend=backend)
    return getattr(fastsm, op)(x, backend=backend)
