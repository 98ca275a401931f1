"""The public front: validation, dtype rules, axis handling, ``out=`` buffers, dispatch.

Kernels (``fastsm/kernels/*``) only ever see validated 2-D C-contiguous float32/float64
``(rows, classes)`` arrays with rows >= 1 and classes >= 1; everything that can be wrong
with user input is caught here, before any compiled code runs.

dtype rule: float32 and float64 are computed natively and keep their dtype; float16 and
bfloat16 (``ml_dtypes.bfloat16``) are computed in float32 and returned in their own dtype,
read and written as 16-bit values by backends with half kernels (``HALF_KINDS``: c)
where the rows are contiguous, else through a float32 copy; bool and integer input is
computed and returned as float64 (like ``np.exp``).  Anything else raises TypeError.
"""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

import numpy as np

from . import _dispatch, _parallel, _registry

try:
    from numpy.lib.array_utils import normalize_axis_index
except ImportError:  # numpy < 2
    from numpy.core.multiarray import normalize_axis_index

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_F16 = np.dtype(np.float16)
_U16 = np.dtype(np.uint16)
_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------- helpers
def _dtypes(dt: np.dtype, what: str):
    """(compute dtype, result dtype) for an input dtype, or TypeError."""
    if dt == _F32 or dt == _F64:
        return dt, dt
    if _is_half(dt):
        return _F32, dt
    if dt.kind in "biu":
        return _F64, _F64
    raise TypeError(
        f"{what} has dtype {dt}; expected float32 or float64 (float16, bfloat16, integer "
        "and bool are converted; complex, object and strings are not)"
    )


def _reusable_out(out, x, shape, dt):
    """Whether ``out`` can take a kernel's result directly: an ndarray of ``shape`` and
    ``dt``, C-contiguous, writeable, and ``x`` itself or not overlapping it."""
    if type(out) is not np.ndarray or not (out.dtype is dt or out.dtype == dt):
        return False
    flags = out.flags  # a new object per access
    return (out.shape == shape and flags.c_contiguous and flags.writeable
            and (out is x or not np.may_share_memory(out, x)))


def _is_half(dt):
    """float16, or ml_dtypes' bfloat16 (recognised by name: fastsm never imports it; the
    kind test first, and the name from _half_name, since ``dtype.name`` costs 1.4 us and
    this runs on every target)."""
    return dt == _F16 or (dt.kind == "V" and dt.itemsize == 2 and _half_name(dt) == "bfloat16")


_HALF_NAMES: dict = {}  # 2-byte dtype -> its name


def _half_name(dt):
    name = _HALF_NAMES.get(dt)
    if name is None:
        name = dt.name
        if len(_HALF_NAMES) < 16:  # float16, bfloat16 and a few 2-byte others: bounded
            _HALF_NAMES[dt] = name
    return name


def _half_kernels(mod, op, dt):
    """(the backend's ``<op>_half`` kernel, the code of dtype ``dt`` for it), or None where
    the backend has no half kernels (optional in the kernel contract)."""
    code = getattr(mod, "HALF_KINDS", {}).get(_half_name(dt))
    return None if code is None else (getattr(mod, op + "_half"), code)


def _half_last_axis(op, x, axis, out, backend):
    """``op`` over the last axis of C-contiguous float16/bfloat16 ``x`` by the backend's
    half kernel (16-bit reads and writes, float32 compute), into a new array or a
    non-overlapping ``out=`` of the same kind; None where that does not apply."""
    if (type(x) is not np.ndarray or not x.ndim or not x.size or not x.flags.c_contiguous
            or isinstance(axis, bool) or not isinstance(axis, (int, np.integer))
            or axis not in (-1, x.ndim - 1)):
        return None
    dt = x.dtype
    k = x.shape[-1]
    n = x.size // k
    mod = _kernels(backend, op, dt, n, k)
    half = _half_kernels(mod, op, dt)
    if half is None:
        return None
    shape = x.shape if op != "logsumexp" else x.shape[:-1]
    if out is None:
        res = np.empty(shape, dt)
    elif _reusable_out(out, x, shape, dt):
        res = out
    else:
        return None
    rows = res.reshape(n, k) if op != "logsumexp" else res.reshape(n)
    _parallel.run(mod, op, dt, n, k, half[0], x.reshape(n, k).view(_U16), rows.view(_U16),
                  half[1])
    return res


def _integer(name, value):
    """``value`` as a Python int, or a TypeError naming the parameter and the value."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}={value!r} ({type(value).__name__}); expected an integer") from None


def _kernels(backend, op: str, dtype: np.dtype, n: int, k: int):
    if backend is None:
        return _dispatch.kernels_for(op, dtype, n, k)
    if not isinstance(backend, str):
        backend = getattr(backend, "name", backend)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a name or None, got {backend!r}")
    return _registry.load(backend)


def _axes(axis, ndim):
    """``axis`` (an int, a tuple of ints or None for all) as a sorted tuple of distinct
    non-negative axes.  A 0-d array counts as one element along axis 0 (as in torch), so
    0, -1, (0,), () and None all work there."""
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, tuple) else (axis,)
    width = max(ndim, 1)
    axes = []
    for a in items:
        a = normalize_axis_index(_integer("axis", a), width)
        if a in axes:
            raise ValueError(f"axis={axis!r} names axis {a} twice")
        axes.append(a)
    if ndim == 0:
        return ()
    return tuple(sorted(axes))


def _as_rows(x, axis, what="x"):
    """Validate ``x``/``axis``; return (x, compute, result, axes, moved, x2): ``moved`` is x
    with the reduced ``axes`` last, x2 its C-contiguous (n, K) form (K = their size product)."""
    x = np.asarray(x)
    compute, result = _dtypes(x.dtype, what)
    axes = _axes(axis, x.ndim)
    nd, na = x.ndim, len(axes)
    moved = x if axes == tuple(range(nd - na, nd)) else np.moveaxis(x, axes, range(nd - na, nd))
    k = math.prod(moved.shape[nd - na:])  # math.prod: np.prod of a tuple costs 5 us
    n = moved.size // k if k else math.prod(moved.shape[:nd - na])
    if na == 1:
        x2 = _contiguous_rows(x, axes[0], moved, compute, n, k)
    else:
        x2 = np.ascontiguousarray(moved, dtype=compute).reshape(n, k)
    return x, compute, result, axes, moved, x2


def _restore(res, axes, ndim):
    """The inverse of ``_as_rows``' axis move on an array of ``moved``'s shape."""
    na = len(axes)
    if axes == tuple(range(ndim - na, ndim)):
        return res
    return np.moveaxis(res, range(ndim - na, ndim), axes)


def _scalar_if_0d(res):
    """NumPy's convention for whole reductions and 0-d input: a NumPy scalar, not a 0-d array."""
    return res[()] if isinstance(res, np.ndarray) and res.ndim == 0 else res


_TILE = 32


def _contiguous_rows(x, ax, moved, compute, n, k):
    """``moved`` (x with axis ``ax`` last) as a C-contiguous (n, k) array in ``compute``.

    For a C-contiguous x and ax not last this is a transpose of (k, b) slabs.  NumPy's
    one-shot copy of that view reads with a stride of b elements and misses cache on nearly
    every read (1000x512 float32, axis 0: 1.26 ms); copying _TILE slab rows at a time keeps
    both sides in cache (0.37 ms; tiles of 8: 0.47, 64: 0.47, 128: 0.67; tiling the
    other side: 1.3-1.5 ms).  Small or short-strided cases keep the plain copy, where the
    Python loop would cost more than it saves."""
    if ax != x.ndim - 1 and x.flags.c_contiguous and k >= 4 * _TILE:
        a = int(np.prod(x.shape[:ax]))
        b = x.size // (a * k)
        if b >= 64 and a * (k // _TILE) <= 512:
            src = x.reshape(a, k, b)
            dst = np.empty((a, b, k), compute)
            for i in range(a):
                for k0 in range(0, k, _TILE):
                    dst[i, :, k0:k0 + _TILE] = src[i, k0:k0 + _TILE].T
            return dst.reshape(n, k)
    return np.ascontiguousarray(moved, dtype=compute).reshape(n, k)


def _to_result(res, result, out=None):
    """``res`` in the result dtype (float32 -> float16: beyond +-65504 is +-inf, the correctly
    rounded value, so numpy's overflow warning is not raised), into ``out`` if given."""
    with np.errstate(over="ignore"):
        if out is not None:
            np.copyto(out, res, casting="unsafe")  # dtype already checked
            return out
        return res.astype(result, copy=False)


def _check_out(out, shape, dtype, what="out"):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{what} has shape {out.shape}; expected {shape}")
    if out.dtype != dtype:
        raise TypeError(f"{what} has dtype {out.dtype}; expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{what} is read-only")


_COLUMNS_MIN = 16  # contiguous columns below which the transposing path stays


def _by_columns(op, x, axis, out, backend):
    """``op`` over one axis that is not last of a C-contiguous float32/float64 array, by
    the backend's column kernel (``<op>_cols``, optional in the kernel contract: x viewed
    as (a, R, b), reduced over R, with no transposed copy), into a new array or an out= of
    the same kind.  None where that does not apply: the general path then runs (and
    raises for bad arguments)."""
    if type(x) is not np.ndarray or x.ndim < 2 or not x.flags.c_contiguous or not x.size:
        return None
    dt = x.dtype
    if not (dt == _F32 or dt == _F64):
        return None
    if isinstance(axis, tuple):
        if len(axis) != 1:
            return None
        axis = axis[0]
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        return None
    if not -x.ndim <= axis < x.ndim or axis % x.ndim == x.ndim - 1:
        return None
    ax = axis % x.ndim
    r = x.shape[ax]
    b = math.prod(x.shape[ax + 1:])
    if b < _COLUMNS_MIN:
        return None
    name = op + "_cols"
    mod = _kernels(backend, name, dt, x.size // r, r)
    kernel = getattr(mod, name, None)
    names = getattr(mod, "COLS_DTYPES", None)  # dt.name costs ~1.4 us: only where needed
    if kernel is None or (names is not None and dt.name not in names):
        return None
    a = x.size // (r * b)
    if op == "logsumexp":  # (a, b) results; the caller reshapes (no out= here)
        res = np.empty((a, b), dt)
        _parallel.run(mod, name, dt, a * b, r, kernel, x.reshape(a, r, b), res)
        return res
    if out is None:
        res = np.empty(x.shape, dt)
    elif _reusable_out(out, x, x.shape, dt):
        res = out
    else:
        return None
    _parallel.run(mod, name, dt, a * b, r, kernel, x.reshape(a, r, b), res.reshape(a, r, b))
    return res


def _elementwise(op, x, axis, out, backend):
    if axis == -1 and type(x) is np.ndarray and x.ndim == 2:
        # fast path for the common call: (rows, classes) float32/float64 C-contiguous, into a
        # new array or an out= of the same kind that is x itself or does not overlap it
        # (anything else takes the general path below, which also raises for a bad out)
        # (`is`: NumPy's float32/float64 dtypes are singletons, and == costs ~0.1 us; an
        # equal dtype that is another object takes the general path)
        dt = x.dtype
        if (dt is _F32 or dt is _F64) and x.flags.c_contiguous:
            n, k = x.shape
            if out is None:
                res = np.empty((n, k), dt)
            elif _reusable_out(out, x, x.shape, dt):
                res = out  # 64x128 float32 softmax(x, out=buf): 27.7 -> 15 us (softmax(x): 14)
            else:
                res = None
            if res is not None:
                if n and k:
                    mod = _kernels(backend, op, dt, n, k)
                    if mod.MIN_PARALLEL is None or n * k < mod.MIN_PARALLEL:
                        getattr(mod, op)(x, res, 1)  # serial anyway: _parallel.run's rule
                    else:
                        _parallel.run(mod, op, dt, n, k, getattr(mod, op), x, res)
                return res
    # half dtypes: their own kernels over the last axis (_by_columns takes float32/float64
    # only, so its steps are skipped: 0.3 us of an 8x64 float16 softmax)
    dt = getattr(x, "dtype", None)
    if dt is not None and (dt is _F16 or _is_half(dt)):
        done = _half_last_axis(op, x, axis, out, backend)
    else:
        done = _by_columns(op, x, axis, out, backend)
    if done is not None:
        return done
    x, compute, result, axes, moved, x2 = _as_rows(x, axis)
    n, k = x2.shape
    nd = x.ndim
    if out is not None:
        _check_out(out, x.shape, result)
        om = out if nd == 0 else np.moveaxis(out, axes, range(nd - len(axes), nd))
        direct = compute == result and om.flags.c_contiguous
        if direct and np.may_share_memory(om, x2):
            # exact aliasing (out is x) is fine for the kernels; partial overlap is not
            direct = om.__array_interface__["data"][0] == x2.__array_interface__["data"][0]
        if direct:
            if n and k:
                mod = _kernels(backend, op, compute, n, k)
                _parallel.run(mod, op, compute, n, k, getattr(mod, op), x2, om.reshape(n, k))
            return out
    res = np.empty((n, k), compute)
    if n and k:
        mod = _kernels(backend, op, compute, n, k)
        _parallel.run(mod, op, compute, n, k, getattr(mod, op), x2, res)
    res = res.reshape(moved.shape)
    if out is not None:
        _to_result(res, result, om)
        return out
    return _scalar_if_0d(_restore(_to_result(res, result), axes, nd))


# ----------------------------------------------------------------------------- public
def softmax(x, axis=-1, *, out=None, backend=None):
    r"""Softmax along ``axis``: ``p_i = exp(x_i - m) / sum_j exp(x_j - m)``, ``m = max_j x_j``.

    Numerically stable for any finite logits (1e4, -1e30 ...).  ``-inf`` entries get
    probability 0; a slice that is all ``-inf``, or holds NaN or ``+inf``, is NaN (that slice
    only).  Works on any axis of any N-d array and any memory layout; returns the input's
    shape.  ``out`` (same shape, result dtype) receives the result; ``out=x`` is in place.

    >>> softmax(np.array([2.0, 1.0, 0.1]))
    array([0.65900114, 0.24243297, 0.09856589])
    """
    return _elementwise("softmax", x, axis, out, backend)


def log_softmax(x, axis=-1, *, out=None, backend=None):
    r"""Log-softmax along ``axis``: ``x_i - m - log(sum_j exp(x_j - m))``, ``m = max_j x_j``.

    ``-inf`` entries give ``-inf``; all-``-inf``, NaN or ``+inf`` slices give NaN.  Never
    computed as ``log(softmax(x))``, so tiny probabilities keep their exact log.
    """
    return _elementwise("log_softmax", x, axis, out, backend)


def logsumexp(a, axis=-1, b=None, keepdims=False, return_sign=False, *, out=None,
              backend=None):
    r"""``log(sum_i b_i exp(a_i))`` over ``axis``, a drop-in for ``scipy.special.logsumexp``.

    Computed as ``m + log1p(sum_{i != j} exp(a_i - m))`` with ``m = a_j = max_i a_i``: the
    maximal term's 1 is never added to the others, so a result far below 1 keeps its
    relative accuracy (``logsumexp([0, -40]) = 4.25e-18``, scipy gh-18295).

    ``axis``: an int, a tuple of ints or None (every axis; scipy's default, fastsm's is -1).
    A 0-d ``a`` is one element.  ``keepdims`` keeps the reduced axes with size 1.
    ``b``: scale factors broadcast against ``a`` (zero and negative allowed; a zero drops its
    element unless that element is +inf).  The result is ``log|s|`` with
    ``s = sum_i b_i exp(a_i)``; without ``return_sign`` a negative ``s`` gives NaN, with it
    the function returns ``(log|s|, sign(s))``.  The terms are split by the sign of ``b``
    and the two log-sums combined as ``l+ + log1p(-exp(l- - l+))``, so the digits of the
    larger part are kept; cancellation between the parts is the data's own conditioning.

    Special slices: zero elements give ``-inf`` (sign 0); all ``-inf`` gives ``-inf``;
    a ``+inf`` gives ``+inf``; NaN gives NaN (NaN wins over ``+inf``).  Integer and bool
    input is computed in float64; with ``b`` the dtype is ``result_type(a, b)`` (integers
    as float64).  ``out`` (the result's shape and dtype) receives the value; with
    ``return_sign`` it receives ``log|s|``.  A 0-d result is a NumPy scalar, as from
    ``np.sum``.

    >>> logsumexp(np.array([0.0, -40.0]))
    np.float64(4.248354255291589e-18)
    """
    if b is not None:
        return _logsumexp_scaled(a, b, axis, keepdims, return_sign, out, backend)
    if (axis == -1 and out is None and not keepdims and not return_sign
            and type(a) is np.ndarray and a.ndim == 2 and a.flags.c_contiguous
            and (a.dtype is _F32 or a.dtype is _F64) and a.shape[1]):
        # fast path for the common call, as in _elementwise
        res = np.empty(a.shape[0], a.dtype)
        _logsumexp_rows(a, res, backend)
        return res
    if (out is None and not keepdims and not return_sign
            and getattr(a, "dtype", None) is not None and _is_half(a.dtype)):
        res = _half_last_axis("logsumexp", a, axis, None, backend)
        if res is not None:
            return _scalar_if_0d(res)
    if out is None and not return_sign:
        res = _by_columns("logsumexp", a, axis, None, backend)
        if res is not None:
            ax = axis[0] if isinstance(axis, tuple) else axis
            return res.reshape(_reduced_shape(a.shape, (ax % a.ndim,), keepdims))
    x, compute, result, axes, moved, x2 = _as_rows(a, axis, "a")
    n, k = x2.shape
    shape = _reduced_shape(x.shape, axes, keepdims)
    if out is not None:
        _check_out(out, shape, result)
    direct = (out is not None and compute == result and out.flags.c_contiguous
              and not np.may_share_memory(out, x2))
    res = out.reshape(n) if direct else np.empty(n, compute)
    _logsumexp_rows(x2, res, backend)
    if out is None:
        value = _scalar_if_0d(_to_result(res.reshape(shape), result))
    else:
        if not direct:
            _to_result(res.reshape(shape), result, out)
        value = out
    if return_sign:
        with np.errstate(invalid="ignore"):
            sign = np.where(np.isnan(res), np.nan, np.where(res == -np.inf, 0.0, 1.0))
        return value, _scalar_if_0d(sign.astype(result).reshape(shape))
    return value


def _reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _logsumexp_rows(x2, res, backend):
    """res[r] = logsumexp of row r of the (n, K) compute-dtype array x2."""
    n, k = x2.shape
    if k == 0:
        res.fill(-np.inf)
    elif n:
        mod = _kernels(backend, "logsumexp", x2.dtype, n, k)
        if mod.MIN_PARALLEL is None or n * k < mod.MIN_PARALLEL:
            mod.logsumexp(x2, res, 1)  # serial anyway: _parallel.run's rule
        else:
            _parallel.run(mod, "logsumexp", x2.dtype, n, k, mod.logsumexp, x2, res)


def _logsumexp_scaled(a, b, axis, keepdims, return_sign, out, backend):
    """logsumexp with scale factors: log-sums of the positive and the negative terms by the
    kernels, then ``l_big + log1p(-exp(l_small - l_big))`` with the sign of the bigger."""
    a = np.asarray(a)
    b = np.asarray(b)
    for name, arr in (("a", a), ("b", b)):
        _dtypes(arr.dtype, name)  # TypeError for complex, object, strings
    dt = np.result_type(a.dtype, b.dtype)
    compute, result = _dtypes(_F64 if dt.kind in "biu" else dt, "a")
    try:
        a, b = np.broadcast_arrays(a.astype(compute, copy=False), b.astype(compute, copy=False))
    except ValueError:
        raise ValueError(f"b has shape {b.shape}, which does not broadcast against a's "
                         f"shape {a.shape}") from None
    with np.errstate(divide="ignore", invalid="ignore"):
        shifted = a + np.log(np.abs(b))  # b = 0: -inf, so the element drops out (0 * inf: NaN)
        shifted = np.where((b == 0) & (a == np.inf), np.nan, shifted)
        nan = np.isnan(shifted)
        pos = np.where((b > 0) | nan, shifted, -np.inf)
        neg = np.where(b < 0, shifted, -np.inf)
    x, _, _, axes, moved, pos2 = _as_rows(pos, axis, "a")
    neg2 = _as_rows(neg, axis, "a")[5]
    n = pos2.shape[0]
    lp, ln = np.empty(n, compute), np.empty(n, compute)
    _logsumexp_rows(pos2, lp, backend)
    _logsumexp_rows(neg2, ln, backend)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        big, small = np.maximum(lp, ln), np.minimum(lp, ln)
        value = big + np.log1p(-np.exp(small - big))   # inf - inf: NaN, as scipy
        sign = np.where(lp > ln, 1.0, np.where(ln > lp, -1.0, 0.0)).astype(compute)
        tie = lp == ln
        value[tie & (lp == -np.inf)] = -np.inf             # nothing to add: log 0
        value[tie & np.isfinite(lp)] = -np.inf             # exact cancellation
        sign[np.isnan(value)] = np.nan
        if not return_sign:
            value[sign < 0] = np.nan                       # log of a negative number
    shape = _reduced_shape(x.shape, axes, keepdims)
    value = value.reshape(shape)
    if out is not None:
        _check_out(out, shape, result)
        _to_result(value, result, out)
        value = out
    else:
        value = _scalar_if_0d(_to_result(value, result))
    if return_sign:
        return value, _scalar_if_0d(_to_result(sign.reshape(shape), result))
    return value


# ----------------------------------------------------------------------------- lse in parts
def _one_axis_rows(name, x, axis):
    """(axis as a non-negative int,) + ``_as_rows`` for functions of exactly one axis."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{name} needs an array with at least one axis; got a 0-d array")
    ax = normalize_axis_index(_integer("axis", axis), x.ndim)
    return (ax,) + _as_rows(x, ax)


def lse_parts(x, axis=-1, *, backend=None):
    r"""``(m, L)`` along one axis, float64, that axis kept with size 1: ``m = max_i x_i`` and
    ``L = log(sum_i exp(x_i - m))`` (log1p-accurate as ``logsumexp``), one pass, so that
    ``logsumexp = m + L`` where m is finite; where m is +-inf or NaN, L is the slice's
    logsumexp itself.  An empty slice gives ``(-inf, -inf)``.

    For log-sum-exps of a slice held in pieces (``fastsm.dask``): the pieces' parts combine
    as ``M = max_k m_k``, ``L = logsumexp_k(m_k - M + L_k)``; keeping L apart from m keeps a
    tiny L's digits and L itself when |m| is huge (rows of -1e30).
    """
    ax, x, compute, _, axes, moved, x2 = _one_axis_rows("lse_parts", x, axis)
    n, k = x2.shape
    m, L = np.empty(n), np.empty(n)
    if k == 0:
        m[:], L[:] = -np.inf, -np.inf
    elif n:
        mod = _kernels(backend, "lse_parts", compute, n, k)
        _parallel.run(mod, "lse_parts", compute, n, k, mod.lse_parts, x2, m, L)
    shape = moved.shape[:-1]
    return (np.expand_dims(m.reshape(shape), ax), np.expand_dims(L.reshape(shape), ax))


def from_lse_parts(x, m, L, axis=-1, *, log=False, backend=None):
    r"""``log_softmax`` (``log=True``) or ``softmax`` of ``x`` along ``axis`` given each
    slice's log-sum-exp in parts (``m``, ``L`` as from :func:`lse_parts`, of the whole
    slice when x is one piece of it, broadcast against x with that axis of size 1):
    ``(x_i - m) - L``, or its exp.  Computed in x's compute dtype; a slice whose m is not
    finite or whose L is NaN is NaN, as in ``softmax``.
    """
    ax, x, compute, result, axes, moved, x2 = _one_axis_rows("from_lse_parts", x, axis)
    n, k = x2.shape
    reduced = x.shape[:ax] + (1,) + x.shape[ax + 1:]
    parts = []
    for name, v in (("m", m), ("L", L)):
        v = np.asarray(v, np.float64)
        try:
            v = np.broadcast_to(v, reduced)
        except ValueError:
            raise ValueError(f"{name} has shape {v.shape}; expected {reduced} (x's shape with "
                             f"axis {ax} of size 1) or one that broadcasts to it") from None
        parts.append(np.ascontiguousarray(np.moveaxis(v, ax, -1)).reshape(n))
    res = np.empty((n, k), compute)
    if n and k:
        op = "from_lse_parts"
        mod = _kernels(backend, op, compute, n, k)
        _parallel.run(mod, op, compute, n, k, mod.from_lse_parts, x2, parts[0], parts[1],
                      res, bool(log))
    return _restore(_to_result(res.reshape(moved.shape), result), axes, x.ndim)


def _target_kind(target, logits_shape, k):
    """'index' or 'soft' for a validated target; raises on anything else."""
    batch = logits_shape[:-1]
    dt = target.dtype
    floating = dt.kind == "f" or _is_half(dt)
    if target.shape == logits_shape and floating:
        return "soft"
    if dt.kind in "iu" and target.shape == batch:
        return "index"
    if floating and target.shape == batch:
        raise TypeError(
            f"class-index target must have an integer dtype, got {dt}; "
            f"for probabilities pass a target of shape {logits_shape}"
        )
    if dt.kind in "iu" and target.shape == logits_shape:
        raise TypeError(
            f"probability target must have a float dtype, got {dt}; class indices have shape {batch}"
        )
    if dt.kind not in "iu" and not floating:
        raise TypeError(f"target has dtype {dt}; expected integer class indices or float probabilities")
    raise ValueError(
        f"target has shape {target.shape}; expected {batch} (class indices, integer) or "
        f"{logits_shape} (probabilities, float) for logits of shape {logits_shape}"
    )


_UNIT_WEIGHTS: dict = {}  # k -> read-only ones: a constant, made once per class count


def _class_weights(weight, k):
    """``weight`` (None or one finite real per class) as float64 (k,), validated."""
    if weight is None:
        w = _UNIT_WEIGHTS.get(k)
        if w is None:
            # writable, as a caller's weights arrive (a read-only array is another Numba
            # type, another compile); no kernel writes its weights, and this one never
            # leaves fastsm
            w = np.ones(k, np.float64)
            if len(_UNIT_WEIGHTS) < 64 and k <= 1 << 20:  # a few shapes, bounded memory
                _UNIT_WEIGHTS[k] = w
        return w
    w = np.asarray(weight)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"weight has dtype {w.dtype}; expected a real array")
    if w.shape != (k,):
        raise ValueError(f"weight has shape {w.shape}; expected ({k},), one per class")
    w = np.ascontiguousarray(w, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(w))
    if bad.size:  # a NaN weight would otherwise turn the whole mean into a silent nan
        raise ValueError(f"weight[{bad[0]}] = {w[bad[0]]}; class weights must be finite "
                         "(zero and negative weights are allowed, as in torch)")
    return w


class CrossEntropyOutput(NamedTuple):
    """What ``cross_entropy``/``cross_entropy_with_grad`` return with ``return_lse`` or
    ``return_accuracy``: the loss as without them, the gradient (None from
    ``cross_entropy``), each sample's log-sum-exp of the (soft-capped) logits (None unless
    asked) and whether each sample's argmax is its target (bool, first maximum as in
    ``argmax``; False for ignored samples and rows holding NaN; None unless asked)."""

    loss: Any
    grad: Any
    lse: Any
    correct: Any


def _check_ce_options(reduction, label_smoothing, ignore_index):
    """(label_smoothing as float, ignore_index as int) once ``reduction`` is one of
    _REDUCTIONS, or an error naming the bad value (every cross-entropy entry point)."""
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; expected one of {list(_REDUCTIONS)}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r}; expected a value in [0, 1]")
    ignore_index = _integer("ignore_index", ignore_index)
    if not -2**63 <= ignore_index < 2**63:
        raise ValueError(f"ignore_index={ignore_index}; expected an int64 value")
    return eps, ignore_index


def _check_lm_options(z_loss, softcap):
    """(z_loss as float, softcap as float or None), or a ValueError naming the bad value."""
    z = float(z_loss)
    if not (math.isfinite(z) and z >= 0.0):
        raise ValueError(f"z_loss={z_loss!r}; expected a finite value >= 0")
    if softcap is None:
        return z, None
    cap = float(softcap)
    if not (math.isfinite(cap) and cap > 0.0):
        raise ValueError(f"softcap={softcap!r}; expected None or a finite value > 0")
    return z, cap


def _index_targets(target, k, ignore_index, weight_given, w):
    """(int64 targets (n,), ignored mask or None, weight denominator, kept count) for
    class-index targets, or a ValueError naming the first out-of-range one."""
    t = target.reshape(-1)
    n = t.size
    t2 = np.ascontiguousarray(t, dtype=np.int64)  # uint64 >= 2**63 wraps negative: checked below
    # one reduction for both bounds: as uint64 a negative index is >= 2**63 > k
    if (n == 0 or t2.view(np.uint64).max() < k) and not 0 <= ignore_index < k:
        ignored = None  # the common case in two reductions: all are classes, none ignored
    else:
        ignored = t == ignore_index
        bad = ~(((t >= 0) & (t < k)) | ignored)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            where = np.unravel_index(pos, target.shape) if target.ndim > 1 else pos
            raise ValueError(
                f"target value {t[pos]} at index {where} is out of range: expected a class "
                f"index in [0, {k}) or ignore_index={ignore_index}"
            )
    kept = float(n if ignored is None else n - np.count_nonzero(ignored))
    if not weight_given:
        return t2, ignored, kept, kept
    return t2, ignored, float(w[t2 if ignored is None else t2[~ignored]].sum()), kept


_CAP_BLOCK = 1 << 18  # elements per soft-capped block: the capped copy never exceeds it


def _ce_kernel(mod, op, kind, x2, t2, w, ignore_index, eps, scale, loss_rows, grad, z_coef,
               lse, correct, softcap):
    """The backend's cross-entropy kernel on (n, k) rows; returns the sum of the loss rows
    where one kernel call gave it (see the kernel contract), else None.  With ``softcap``
    the rows go in blocks of _CAP_BLOCK elements: each block's capped logits c tanh(x / c)
    are made in a block-sized buffer, the kernel runs on them, and the block's gradient
    takes the chain rule's factor 1 - tanh^2 (the capped copy of the whole array is never
    made).
    ``grad`` may be ``x2`` itself (the gradient written over the logits, as the fused
    linear cross-entropy does to halve its buffers): the kernels read a row's logits after
    writing its gradient row, so each block of logits is then copied to a block-sized
    buffer first and the kernel reads the copy."""
    n, k = x2.shape
    compute = x2.dtype
    if grad is x2 and softcap is None:
        step = max(1, _CAP_BLOCK // k)
        copy = np.empty((min(n, step), k), compute)
        for r0 in range(0, n, step):
            rows = slice(r0, min(n, r0 + step))
            block = copy[: rows.stop - r0]
            np.copyto(block, x2[rows])
            _ce_kernel(mod, op, kind, block, t2[rows], w, ignore_index, eps, scale,
                       loss_rows[rows], grad[rows], z_coef,
                       lse[rows] if lse is not None else None,
                       correct[rows] if correct is not None else None, None)
        return

    def call(rows, xs):
        r = slice(rows.start, rows.stop)
        g = grad[r] if grad is not None else None
        lr = lse[r] if lse is not None else None
        if kind == "index":
            cr = correct[r] if correct is not None else None
            return _parallel.run(mod, op, compute, xs.shape[0], k, mod.ce_index, xs, t2[r],
                                 w, ignore_index, eps, scale, loss_rows[r], g, z_coef, lr, cr)
        _parallel.run(mod, op, compute, xs.shape[0], k, mod.ce_soft, xs, t2[r], w, eps,
                      scale, loss_rows[r], g, z_coef, lr)
        return None

    if softcap is None:
        return call(slice(0, n), x2)  # the kernel's sum of the loss rows, or None
    step = max(1, _CAP_BLOCK // k)
    buf = np.empty((min(n, step), k), compute)
    for r0 in range(0, n, step):
        rows = slice(r0, min(n, r0 + step))
        th = buf[: rows.stop - r0]
        np.divide(x2[rows], compute.type(softcap), out=th)
        np.tanh(th, out=th)
        capped = th * compute.type(softcap)  # th is kept for the gradient's factor
        call(rows, capped)
        if grad is not None:
            np.multiply(th, th, out=th)
            np.subtract(1, th, out=th)
            grad[rows] *= th


def _gradient_scales(reduction, denominator, kept, z):
    """(scale, z_coef) the kernels apply: the main term's 1/denominator for "mean" (else 1)
    and the z-loss term's gradient factor.  The z-term z lse^2 per kept sample is
    unweighted by class weights and its mean divides by the kept count (Liger-Kernel's
    lse_square_scale): d/dx = 2 z lse p / count."""
    mean = reduction == "mean"
    scale = (1.0 / denominator if denominator != 0 else np.inf) if mean else 1.0
    z_coef = 2.0 * z * ((1.0 / kept if kept else np.inf) if mean else 1.0) if z else 0.0
    return scale, z_coef


_LARGEST = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}


def _reduce_loss(loss_rows, lse, z, ignored, reduction, denominator, kept, shape, result,
                 total=None):
    """The loss as returned: per sample (``shape``) or the sum / the mean (over the
    denominator; the z-term's over the kept count), the z-term z lse^2 added.  ``total``:
    the sum of ``loss_rows`` where the kernel gave it."""
    if not z and reduction != "none":
        # Python floats: no NumPy warning to silence (errstate is ~1 us of a small call)
        total = float(loss_rows.sum()) if total is None else total
        value = total if reduction == "sum" else (
            total / denominator if denominator else math.nan)
        top = _LARGEST.get(result)
        if top is not None and not (math.isfinite(value) and abs(value) > top):
            return result.type(value)  # else the cast overflows: the path below says so
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z_rows = None
        if z:
            z_rows = z * lse * lse
            if ignored is not None:
                z_rows[ignored] = 0.0
        if reduction == "none":
            rows = loss_rows if z_rows is None else loss_rows + z_rows
            return rows.reshape(shape).astype(result)
        if reduction == "sum":
            return result.type(loss_rows.sum() + (z_rows.sum() if z_rows is not None else 0.0))
        value = loss_rows.sum() / denominator if denominator else np.nan
        if z_rows is not None:
            value = value + (z_rows.sum() / kept if kept else np.nan)
        return result.type(value)


_I64 = np.dtype(np.int64)
_U64 = np.dtype(np.uint64)


def _cross_entropy_lean(x, target, ignore_index, reduction, backend, want_grad):
    """The common call in few Python steps: 2-D C-contiguous float32/float64 logits (or
    float16/bfloat16 where the backend has half kernels),
    int64 class indices of shape (n,), default options otherwise, an int64 ignore_index
    that is no class and reduction "mean" or "sum".  None where any of that does not hold:
    the general path then runs (and raises for bad arguments).  The targets are checked by
    the backend's ``count_ignored`` where it has one (ignored samples then stay on this
    path: with unit weights the mean's denominator is the kept count), else by one NumPy
    reduction, and any ignored or bad target takes the general path.  A 4x16 float32
    cross_entropy (timeit, this machine): the front cost 12.8 us of a 14.6 us call before
    this path, 6.2 of 8.0 with it (the kernel alone 1.8 us), 4.2 of 4.9 with count_ignored
    and the c backend's NumPy C-API entry points (the kernel 0.65 us).  float16 4096x1000
    on 2 threads: the general path cost 45-60 us beside a 275 us kernel (its Python steps
    run with caches the kernel has just swept), this path 22 us (float32's: 27 us)."""
    if type(x) is not np.ndarray or type(target) is not np.ndarray or x.ndim != 2:
        return None
    dt = x.dtype
    if dt is _F32 or dt is _F64:
        half = False
    elif dt is _F16 or (dt.kind == "V" and _is_half(dt)):
        half = True
    else:
        return None
    if target.dtype is not _I64 or not x.flags.c_contiguous:
        return None
    n, k = x.shape
    if (not n or not k or target.shape != (n,) or not target.flags.c_contiguous
            or type(ignore_index) is not int
            or not (-2**63 <= ignore_index < 0 or k <= ignore_index < 2**63)
            or (reduction != "mean" and reduction != "sum")):
        return None
    op = "cross_entropy_with_grad" if want_grad else "cross_entropy"
    mod = _kernels(backend, op, dt, n, k)
    if half:
        found = _half_kernels(mod, "ce_index", dt)
        if found is None:
            return None  # the general path computes on a float32 copy
        kernel, code = found
    else:
        kernel = mod.ce_index
    plain = None
    count_ignored = mod.count_ignored  # None where absent: the registry's rule
    if count_ignored is not None:  # checks in C; a bad target: the front's ValueError
        kept = n - count_ignored(target, k, ignore_index)
        if not kept:
            return None  # an empty mean: the general path's NaN
    elif np.maximum.reduce(target.view(_U64)) < k:  # as uint64 a negative is >= 2**63
        kept = n  # every target a class, none ignored
        plain = None if half else mod.ce_index_plain  # the same check, not made twice
    else:
        return None  # ignored or out-of-range targets: the general path (names the first)
    loss_rows = np.empty(n, np.float64)
    grad = np.empty((n, k), dt) if want_grad else None
    mean = reduction == "mean"
    scale = 1.0 / kept if mean else 1.0
    serial = mod.MIN_PARALLEL is None or n * k < mod.MIN_PARALLEL  # _parallel.run's rule
    if plain is not None and serial:  # no weights: the plain kernel takes none
        kernel, args = plain, (x, target, scale, loss_rows, grad)
    elif half:  # 16-bit words in and out, and the kind's code
        args = (x.view(_U16), code, target, _class_weights(None, k), ignore_index, 0.0, scale,
                loss_rows, None if grad is None else grad.view(_U16), 0.0, None, None)
    else:
        args = (x, target, _class_weights(None, k), ignore_index, 0.0, scale, loss_rows, grad,
                0.0, None, None)
    if serial:
        total = kernel(*args, 1)
    else:
        total = _parallel.run(mod, op, dt, n, k, kernel, *args)
    if total is None:  # the kernel's sum of the rows (optional in the contract), or ours
        total = float(np.add.reduce(loss_rows))
    value = total / kept if mean else total
    if abs(value) > _LARGEST.get(dt, math.inf) and math.isfinite(value):
        with np.errstate(over="ignore"):  # float32 overflow: inf, as the general path
            loss = dt.type(value)
    else:
        loss = dt.type(value)
    return (loss, grad) if want_grad else loss


def _cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction,
                   backend, want_grad, z_loss=0.0, softcap=None, return_lse=False,
                   return_accuracy=False):
    if (weight is None and not label_smoothing and not z_loss and softcap is None
            and not return_lse and not return_accuracy):
        done = _cross_entropy_lean(logits, target, ignore_index, reduction, backend,
                                   want_grad)
        if done is not None:
            return done
    x = np.asarray(logits)
    compute, result = _dtypes(x.dtype, "logits")
    if x.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (..., classes); got a scalar")
    eps, ignore_index = _check_ce_options(reduction, label_smoothing, ignore_index)
    z, cap = _check_lm_options(z_loss, softcap)
    k = x.shape[-1]
    n = x.size // k if k else int(np.prod(x.shape[:-1]))
    target = np.asarray(target)
    kind = _target_kind(target, x.shape, k)
    if return_accuracy and kind != "index":
        raise ValueError("return_accuracy=True needs class-index targets (argmax == target); "
                         "got probabilities")

    w = _class_weights(weight, k)

    op = "cross_entropy_with_grad" if want_grad else "cross_entropy"
    mod = _kernels(backend, op, result, n, k) if n and k else None
    half = None
    if (mod is not None and compute != result and cap is None
            and (kind == "index" or target.dtype == result)):
        half = _half_kernels(mod, "ce_" + kind, result)
    # half kernels read the 16-bit logits (and targets) and write a 16-bit gradient
    store = result if half else compute
    x2 = np.ascontiguousarray(x, dtype=store).reshape(n, k)
    # every kernel writes every row (ignored: 0); without classes no kernel runs: an empty sum
    loss_rows = np.empty(n, np.float64) if k else np.zeros(n, np.float64)
    grad = np.empty((n, k), store) if want_grad else None
    need_lse = bool(return_lse or z)
    lse = (np.empty(n) if k else np.full(n, -np.inf)) if need_lse else None
    correct = (np.empty(n, np.uint8) if k else np.zeros(n, np.uint8)) if return_accuracy else None

    if kind == "index":
        t2, ignored, denominator, kept = _index_targets(target, k, ignore_index,
                                                        weight is not None, w)
    else:
        t2 = np.ascontiguousarray(target, dtype=store).reshape(n, k)
        ignored, denominator, kept = None, float(n), float(n)

    scale, z_coef = _gradient_scales(reduction, denominator, kept, z)
    total = None  # the sum of the loss rows where the kernel gives it
    if half:
        g = grad.view(_U16) if grad is not None else None
        if kind == "index":
            total = _parallel.run(mod, op, result, n, k, half[0], x2.view(_U16), half[1], t2,
                                  w, ignore_index, eps, scale, loss_rows, g, z_coef, lse,
                                  correct)
        else:
            _parallel.run(mod, op, result, n, k, half[0], x2.view(_U16), half[1],
                          t2.view(_U16), w, eps, scale, loss_rows, g, z_coef, lse)
    elif mod is not None:
        if compute != result:  # the dispatch above saw the half dtype
            mod = _kernels(backend, op, compute, n, k)
        total = _ce_kernel(mod, op, kind, x2, t2, w, ignore_index, eps, scale, loss_rows,
                           grad, z_coef, lse, correct, cap)
    loss = _reduce_loss(loss_rows, lse, z, ignored, reduction, denominator, kept,
                        x.shape[:-1], result, total)
    if want_grad:
        grad = _to_result(grad.reshape(x.shape), result)
    if not (return_lse or return_accuracy):
        return (loss, grad) if want_grad else loss
    batch = x.shape[:-1]
    return CrossEntropyOutput(
        loss, grad,
        _scalar_if_0d(lse.reshape(batch).astype(result)) if return_lse else None,
        _scalar_if_0d(correct.reshape(batch).astype(bool)) if return_accuracy else None)


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  reduction="mean", z_loss=0.0, softcap=None, return_lse=False,
                  return_accuracy=False, backend=None):
    r"""Cross-entropy of ``logits`` (..., K) (classes on the last axis) against ``target``.

    ``target`` is either integer class indices of shape (...) or probabilities of shape
    (..., K).  With ``logp = log_softmax(logits)``, ``w`` = ``weight`` (ones if None),
    ``eps`` = ``label_smoothing``, the per-sample loss is ``l = -sum_c q_c * logp_c`` with

    - class indices y: ``q_c = (1 - eps) * w_y * [c == y] + eps / K * w_c``;
      samples with ``y == ignore_index`` have loss 0 and are left out of the mean;
    - probabilities t: ``q_c = w_c * ((1 - eps) * t_c + eps / K)``.

    ``weight`` must be finite (ValueError naming the first that is not); zero and negative
    weights are allowed and mean what they mean in torch.
    ``reduction``: "none" (per-sample, shape (...)), "sum", or "mean": the sum divided by
    ``sum(w_y)`` over non-ignored samples (class indices) or by the number of samples
    (probabilities) — exactly as ``torch.nn.functional.cross_entropy``.  An empty or
    all-ignored batch has mean NaN.  A term with ``q_c == 0`` contributes 0 even where
    ``logp_c = -inf`` (``0 * log 0 = 0``).

    Language-model options (Liger-Kernel's conventions):

    - ``softcap=c``: the logits are replaced by ``c * tanh(logits / c)`` first (Gemma 2's
      final-logit soft-capping), gradient included; the capped copy is made one block of
      rows at a time, never for the whole array.
    - ``z_loss=z``: adds ``z * lse**2`` per sample (PaLM's auxiliary loss), ``lse`` the
      log-sum-exp of the (capped) logits.  Ignored samples add 0; class weights do not
      scale it; "mean" divides its sum by the number of kept samples (so with class
      weights the two terms have different denominators, as in Liger).
    - ``return_lse`` / ``return_accuracy``: return a :class:`CrossEntropyOutput`
      ``(loss, grad, lse, correct)`` with each sample's log-sum-exp and whether its argmax
      is its target (class-index targets only), from the same pass.  Without them the
      return value is the loss alone.
    """
    return _cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction,
                          backend, False, z_loss, softcap, return_lse, return_accuracy)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100,
                            label_smoothing=0.0, reduction="mean", z_loss=0.0, softcap=None,
                            return_lse=False, return_accuracy=False, backend=None):
    r"""``(loss, d loss / d logits)`` in one fused pass; see :func:`cross_entropy`.

    ``grad[..., c] = s * (softmax(logits)[..., c] * Q - q_c)`` with ``Q = sum_c q_c`` and
    ``s`` = 1/denominator for "mean", 1 otherwise (for "none" it is the gradient of the sum
    of per-sample losses).  Same shape and dtype as ``logits``; ignored samples get 0.
    With ``z_loss`` the gradient adds ``2 z lse softmax_c`` per kept sample (over the kept
    count for "mean"); with ``softcap`` it is taken through the cap (times ``1 - tanh^2``).
    """
    return _cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction,
                          backend, True, z_loss, softcap, return_lse, return_accuracy)


# ----------------------------------------------------------------------------- backends
_OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy", "cross_entropy_with_grad")


class Backend:
    """One backend's view of the public API: the five functions without ``backend=``."""

    def __init__(self, name: str):
        self.name = name
        self.kernels = _registry.load(name)

    def softmax(self, x, axis=-1, *, out=None):
        return softmax(x, axis, out=out, backend=self.name)

    def log_softmax(self, x, axis=-1, *, out=None):
        return log_softmax(x, axis, out=out, backend=self.name)

    def logsumexp(self, a, axis=-1, b=None, keepdims=False, return_sign=False, *, out=None):
        return logsumexp(a, axis, b, keepdims, return_sign, out=out, backend=self.name)

    def cross_entropy(self, logits, target, **options):
        return cross_entropy(logits, target, backend=self.name, **options)

    def cross_entropy_with_grad(self, logits, target, **options):
        return cross_entropy_with_grad(logits, target, backend=self.name, **options)

    def __repr__(self):
        return f"<fastsm backend {self.name!r}>"


_backend_objects: dict = {}


def backends() -> list:
    """Names of the backends available on this machine (cython, c, numba, numpy order)."""
    return _registry.available()


def get_backend(name=None) -> Backend:
    """The backend called ``name``; with None, the default one (``FASTSM_BACKEND`` if set,
    else the first available of c, cython, numba, numpy).  Calls without ``backend=`` may
    still pick another backend per shape from the winners table (see ``fastsm.tune``)."""
    if name is None:
        name = _dispatch.default_backend()
    obj = _backend_objects.get(name)
    if obj is None:
        obj = _backend_objects[name] = Backend(name)
    return obj
