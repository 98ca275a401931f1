"""Property-based fuzz of every backend; run in a subprocess by test_robustness.py.

    python -m tests.fuzz --examples 300 [--seed 0] [--trace PATH] [--json PATH]

A crash in compiled code takes the whole interpreter down, so the parent test runs this
module as its own process and asserts its exit status.  For each drawn call (shape 0-d to
4-d, 0 to a few thousand per axis, valid and invalid axes, C/Fortran/reversed/strided/
transposed/read-only/unaligned layouts, float16/32/64, ints, bool, complex, object and
string dtypes, +-inf/NaN/+-1e30/denormals, bad targets, weights and options) every
backend gets a fresh copy of the same input and must:

- raise the same exception type as the others, or none of them raises;
- when nothing raises, match the long-double oracle within the accuracy bar of the
  result dtype, return ``out`` itself when ``out=`` was given, and
- leave its input untouched (unless ``out=`` is the input).

``--trace`` names a file holding the call being made, so a crash can be reproduced.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import fastsm

from . import oracle
from .checks import assert_cross_entropy, assert_logs, assert_probabilities

BACKENDS = fastsm.backends()
MAX_ELEMENTS = 20_000
VALID_DTYPES = ["float16", "float32", "float64", "int8", "int64", "uint16", "bool"]
INVALID_DTYPES = ["complex128", "object", "<U3", "datetime64[s]"]
SPECIALS = [np.inf, -np.inf, np.nan, 1e30, -1e30, 5e-324, -5e-324, 1e-310, 1e-40, 0.0, -0.0,
            1e4, -1e4]
LAYOUTS = ["C", "F", "reversed", "strided", "transposed", "readonly", "unaligned"]

TRIED: Counter = Counter()  # (backend, "result" | "raised ExcType") -> calls
MESSAGES: Counter = Counter()  # first words of each exception message (--verbose)
_trace_path = None


# ----------------------------------------------------------------------------- drawing
def mostly(valid, invalid, odds=4):
    """One of ``valid`` (odds-1)/odds of the time, else one of ``invalid``.

    Picked from a drawn seed: hypothesis draws boundary values and branch choices far more
    often than uniformly, which made nearly every call invalid."""
    def pick(i):
        rng = np.random.default_rng(i)
        pool = invalid if rng.random() < 1 / odds else valid
        return pool[rng.integers(len(pool))]

    return st.integers(0, 2**32 - 1).map(pick)


@st.composite
def shapes(draw, min_dims=0):
    ndim = draw(mostly([max(1, min_dims), 2, 2, 3, 4], [min_dims], odds=10))
    dims = [draw(st.one_of(st.integers(0, 6), st.integers(0, 3000))) for _ in range(ndim)]
    # bound the non-zero dims too: a (707, 2065, 437, 0) array is empty, but its class-index
    # target of shape (707, 2065, 437) is 5 GB
    while math.prod(d for d in dims if d) > MAX_ELEMENTS:
        dims[dims.index(max(dims))] //= 2
    return tuple(dims)


@st.composite
def arrays(draw, shape=None, invalid_dtypes=INVALID_DTYPES, min_dims=0):
    """A recipe (dict) that builds the same array afresh for every backend."""
    shape = draw(shapes(min_dims)) if shape is None else shape
    return dict(
        shape=shape,
        dtype=draw(mostly(VALID_DTYPES, invalid_dtypes, odds=6)),
        seed=draw(st.integers(0, 2**32 - 1)),
        scale=draw(st.sampled_from([1.0, 3.0, 30.0, 1e4, 1e30])),
        specials=draw(st.lists(st.sampled_from(SPECIALS), max_size=5)),
        dead_row=draw(st.sampled_from([None, -np.inf, np.nan, np.inf])),
        layout=draw(st.sampled_from(LAYOUTS)),
        layout_axis=draw(st.integers(0, 3)),
    )


def build(recipe):
    """The array a recipe describes, in its layout (values drawn before the layout)."""
    shape, dtype = recipe["shape"], np.dtype(recipe["dtype"])
    rng = np.random.default_rng(recipe["seed"])
    a = np.asarray(rng.standard_normal(shape) * recipe["scale"])
    if a.size:
        for v in recipe["specials"]:
            a.flat[rng.integers(a.size)] = v
        if recipe["dead_row"] is not None and a.ndim:
            a.reshape(-1, a.shape[-1])[0] = recipe["dead_row"]
    with np.errstate(all="ignore"):
        if dtype.kind in "iub":
            a = np.nan_to_num(a, posinf=1e9, neginf=-1e9)
        a = np.asarray(a.astype(dtype) if dtype.kind != "U" else a.astype(str).astype(dtype))
    layout = recipe["layout"]
    ax = recipe["layout_axis"] % a.ndim if a.ndim else 0
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "reversed" and a.ndim:
        return np.flip(np.flip(a, ax).copy(), ax)
    if layout == "strided" and a.ndim:
        big_shape = list(a.shape)
        big_shape[ax] *= 2
        big = np.zeros(big_shape, a.dtype)
        view = big[(slice(None),) * ax + (slice(None, None, 2),)]
        view[...] = a
        return view
    if layout == "transposed":
        return np.ascontiguousarray(a.T).T
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if layout == "unaligned" and dtype.kind != "O" and dtype.itemsize > 1:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        view = np.ndarray(a.shape, a.dtype, buffer=buf, offset=1)
        view[...] = a
        assert not view.flags.aligned or a.size == 0
        return view
    return a


def _snapshot(a):
    """Shape, dtype and exact contents (repr for object arrays: NaN == NaN there)."""
    return (a.shape, a.dtype.str, repr(a.tolist()) if a.dtype.kind == "O" else a.tobytes())


def _result_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64, np.float16):
        return dtype
    return np.dtype(np.float64) if dtype.kind in "biu" else None


def _compute_dtype(dtype):
    return np.dtype(np.float32) if dtype == np.float16 else _result_dtype(dtype)


def _trace(text):
    if _trace_path:
        with open(_trace_path, "w") as fh:
            fh.write(text)


def _run_all(label, make_args, call):
    """Call every backend on fresh arguments; return {backend: result or exception}."""
    outcomes = {}
    for name in BACKENDS:
        args = make_args()
        before = [_snapshot(a) for a in args["inputs"]]
        _trace(f"{label} backend={name}")
        try:
            outcomes[name] = call(name, args)
        except Exception as exc:  # the outcome under test: compared across backends below
            outcomes[name] = exc
        if not args.get("in_place"):
            after = [_snapshot(a) for a in args["inputs"]]
            assert before == after, f"{name} modified its input: {label}"
        if isinstance(outcomes[name], Exception):
            MESSAGES[f"{type(outcomes[name]).__name__}: {str(outcomes[name])[:60]}"] += 1
        kind = type(outcomes[name]).__name__ if isinstance(outcomes[name], Exception) else "result"
        TRIED[(name, kind if kind == "result" else f"raised {kind}")] += 1
    kinds = {n: type(o) for n, o in outcomes.items() if isinstance(o, Exception)}
    if kinds:
        assert len(kinds) == len(outcomes) and len(set(kinds.values())) == 1, (
            f"backends disagree on {label}: " + ", ".join(
                f"{n}: {o!r}" if isinstance(o, Exception) else f"{n}: ok" for n, o in outcomes.items()))
    return outcomes


# ----------------------------------------------------------------------------- properties
ELEMENTWISE = ("softmax", "log_softmax", "logsumexp")
SETTINGS = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate, Phase.shrink])


@st.composite
def elementwise_calls(draw):
    recipe = draw(arrays())
    ndim = len(recipe["shape"])
    valid = list(range(-ndim, ndim)) or [0]
    valid += [None, tuple(range(ndim)), tuple(range(ndim - 1, -1, -2)), ()]
    axis = draw(mostly(valid, [ndim, ndim + 1, -ndim - 1, 1.5, "0", (0, 0), (0, ndim)], odds=8))
    out = draw(mostly(["none", "none", "fresh", "in_place"],
                      ["wrong_shape", "wrong_dtype", "readonly", "list"], odds=6))
    return draw(st.sampled_from(ELEMENTWISE)), recipe, axis, out


def _make_out(kind, op, x, axis):
    res = _result_dtype(x.dtype) or np.dtype(np.float64)
    if op != "logsumexp":
        shape = x.shape
    elif axis is None:
        shape = ()
    else:
        items = axis if isinstance(axis, tuple) else (axis,)
        try:
            gone = {int(a) % x.ndim for a in items} if x.ndim else set()
        except (TypeError, ValueError):
            gone = {0}
        shape = tuple(d for i, d in enumerate(x.shape) if i not in gone)
    if kind == "fresh":
        return np.full(shape, 7.0, res)
    if kind == "in_place":
        return x
    if kind == "wrong_shape":
        return np.empty(shape + (2,), res)
    if kind == "wrong_dtype":
        return np.empty(shape, np.float32 if res == np.float64 else np.float64)
    if kind == "readonly":
        out = np.empty(shape, res)
        out.flags.writeable = False
        return out
    return [0.0]


@given(elementwise_calls())
def fuzz_elementwise(case):
    op, recipe, axis, out_kind = case
    label = f"{op}(recipe={recipe}, axis={axis!r}, out={out_kind})"

    def make_args():
        x = build(recipe)
        out = None if out_kind == "none" else _make_out(out_kind, op, x, axis)
        return dict(inputs=[x], x=x, out=out, in_place=out is x)

    def call(name, args):
        result = getattr(fastsm, op)(args["x"], axis=axis, out=args["out"], backend=name)
        if args["out"] is not None:
            assert result is args["out"], f"{name}: out= not returned: {label}"
        return result

    outcomes = _run_all(label, make_args, call)
    first = next(iter(outcomes.values()))
    if isinstance(first, Exception):
        return
    x = build(recipe)
    compute, res_dtype = _compute_dtype(x.dtype), _result_dtype(x.dtype)
    ref = getattr(oracle, op)(x.astype(compute), axis)
    for name, result in outcomes.items():
        assert result.dtype == res_dtype and result.shape == ref.shape, f"{name}: {label}"
        if op == "softmax":
            assert_probabilities(result, ref, res_dtype, f"{name}: {label}")
        else:
            assert_logs(result, ref, res_dtype, f"{name}: {label}", x.astype(compute), axis,
                        reduced=op == "logsumexp")


@st.composite
def cross_entropy_calls(draw):
    logits = draw(arrays(invalid_dtypes=["complex128", "object"], min_dims=1))
    shape = logits["shape"]
    k = shape[-1] if shape else 0
    batch = shape[:-1]
    kind = draw(mostly(["index", "index", "soft"], ["wrong_shape", "bool", "float_index"], odds=8))
    target = dict(kind=kind, seed=draw(st.integers(0, 2**32 - 1)),
                  dtype=draw(st.sampled_from(["int64", "int32", "uint8", "int8", "uint64"])),
                  bad=draw(mostly([None, None, "ignore"], ["k", "-1", "big"], odds=6)),
                  soft_dtype=draw(st.sampled_from(["float32", "float64", "float16"])),
                  soft_values=draw(st.sampled_from(["simplex", "unnormalised", "negative", "nan"])),
                  shape=batch, k=k, logits_shape=shape)
    options = dict(
        weight=draw(mostly([None, "random", "zeros", "nan"], ["wrong_shape", "complex"], odds=8)),
        ignore_index=draw(mostly([-100, 0, 1, -1, 2**63, -2**70], [1.0], odds=8)),
        label_smoothing=draw(mostly([0.0, 0.0, 0.1, 1.0], [-0.1, 1.5, float("nan")], odds=8)),
        reduction=draw(mostly(["mean", "sum", "none"], ["avg"], odds=8)),
    )
    return draw(st.booleans()), logits, target, options


def build_target(t):
    rng = np.random.default_rng(t["seed"])
    k, shape = t["k"], t["shape"]
    if t["kind"] == "soft":
        p = rng.random(t["logits_shape"])
        if t["soft_values"] == "simplex" and k:
            p /= p.sum(-1, keepdims=True)
        elif t["soft_values"] == "negative" and p.size:
            p.flat[0] = -0.5
        elif t["soft_values"] == "nan" and p.size:
            p.flat[0] = np.nan
        return p.astype(t["soft_dtype"])
    if t["kind"] == "wrong_shape":
        return np.zeros(shape + (1, 2), np.int64)
    y = rng.integers(0, max(k, 1), size=shape)
    if y.size and t["bad"]:
        y.flat[0] = {"k": k, "-1": -1, "big": 2**40, "ignore": -100}[t["bad"]]
    if t["kind"] == "bool":
        return (y % 2).astype(bool)
    if t["kind"] == "float_index":
        return y.astype(np.float64)
    with np.errstate(all="ignore"):
        return y.astype(t["dtype"])


def build_options(options, k, seed):
    options = dict(options)
    w = options["weight"]
    rng = np.random.default_rng(seed)
    options["weight"] = {None: None, "random": rng.random(k) + 0.25, "zeros": np.zeros(k),
                         "wrong_shape": np.ones(k + 1), "complex": np.ones(k, complex),
                         "nan": np.full(k, np.nan)}[w]
    return options


@given(cross_entropy_calls())
def fuzz_cross_entropy(case):
    with_grad, logits_recipe, target_recipe, option_recipe = case
    fn = "cross_entropy_with_grad" if with_grad else "cross_entropy"
    label = f"{fn}(logits={logits_recipe}, target={target_recipe}, options={option_recipe})"
    k = logits_recipe["shape"][-1]

    def make_args():
        x, t = build(logits_recipe), build_target(target_recipe)
        return dict(inputs=[x, t], x=x, t=t,
                    options=build_options(option_recipe, k, target_recipe["seed"]))

    def call(name, args):
        return getattr(fastsm, fn)(args["x"], args["t"], backend=name, **args["options"])

    outcomes = _run_all(label, make_args, call)
    first = next(iter(outcomes.values()))
    if isinstance(first, Exception):
        return
    x, t = build(logits_recipe), build_target(target_recipe)
    options = build_options(option_recipe, k, target_recipe["seed"])
    compute, res_dtype = _compute_dtype(x.dtype), _result_dtype(x.dtype)
    xc = x.astype(compute)
    tc = t.astype(compute) if t.dtype.kind == "f" else t
    for name, result in outcomes.items():
        loss, grad = result if with_grad else (result, None)
        assert np.asarray(loss).dtype == res_dtype, f"{name}: loss dtype: {label}"
        assert_cross_entropy(loss, grad, xc, tc, options, res_dtype, f"{name}: {label}")


# ----------------------------------------------------------------------------- main
def main(argv=None):
    global _trace_path
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=200, help="examples per property")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", help="file that always holds the call in progress")
    p.add_argument("--json", help="write the per-backend counts here")
    p.add_argument("--verbose", action="store_true", help="also print the errors raised")
    args = p.parse_args(argv)
    _trace_path = args.trace
    np.seterr(all="ignore")  # warnings from casting hostile values are not the subject
    for prop in (fuzz_elementwise, fuzz_cross_entropy):
        seed(args.seed)(settings(SETTINGS, max_examples=args.examples)(prop))()  # reproducible
    if args.verbose:
        for msg, n in MESSAGES.most_common():
            print(f"{n:6d}  {msg}")
    counts = {f"{b} {kind}": n for (b, kind), n in sorted(TRIED.items())}
    print(json.dumps(counts, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(counts, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
