"""torch's own sample inputs (its OpInfo database) for softmax, log_softmax, logsumexp and
nn.functional.cross_entropy, float32 and float64, run through fastsm on every backend and
compared with what torch computes for them.

torch's conventions map onto fastsm's: ``dim``/``keepdim`` are ``axis``/``keepdims``; a 0-d
input is one element; cross-entropy's classes sit on dim 1 of an N-d input (fastsm: the
last axis, so they are moved there, and so is a probability target's); ``dtype=`` casts the
input first.  Needs torch (the compare extra) and expecttest (the test extra), which torch's
testing package imports."""

import numpy as np
import pytest

import fastsm

torch = pytest.importorskip("torch")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

OPS = ("softmax", "log_softmax", "logsumexp", "nn.functional.cross_entropy")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# torch.testing.assert_close's defaults for these dtypes
TOLERANCES = {torch.float32: dict(rtol=1.3e-6, atol=1e-5), torch.float64: dict(rtol=1e-7, atol=1e-7)}


def _samples(dtype):
    found = set()
    for info in op_db:
        if info.name not in OPS:
            continue
        found.add(info.name)
        for i, sample in enumerate(info.sample_inputs("cpu", dtype, requires_grad=False)):
            yield f"{info.name}[{info.variant_test_name}]#{i}", info, sample
    assert found == set(OPS), f"torch's OpInfo database lacks {set(OPS) - found}"


def _numpy(value):
    return value.detach().numpy() if torch.is_tensor(value) else value


def _fastsm(name, sample, backend):
    x = _numpy(sample.input)
    args = [_numpy(a) for a in sample.args]
    kwargs = {k: _numpy(v) for k, v in sample.kwargs.items()}
    if "dtype" in kwargs:  # torch casts the input to dtype= before the op
        x = x.astype(torch.empty(0, dtype=kwargs.pop("dtype")).numpy().dtype)
    if name in ("softmax", "log_softmax"):
        (dim,) = args
        return getattr(fastsm, name)(x, axis=dim, backend=backend)
    if name == "logsumexp":
        dim, keepdim = args
        return fastsm.logsumexp(x, axis=tuple(dim) if isinstance(dim, (list, tuple)) else dim,
                                keepdims=keepdim, backend=backend)
    (target,) = args
    if x.ndim >= 2:  # classes on dim 1 in torch, on the last axis in fastsm
        x = np.moveaxis(x, 1, -1)
        if target.dtype.kind == "f":
            target = np.moveaxis(target, 1, -1)
    return fastsm.cross_entropy(x, target, backend=backend, **kwargs)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_opinfo_samples(backend, dtype):
    tdtype = DTYPES[dtype]
    count = 0
    for label, info, sample in _samples(tdtype):
        expected = info.op(sample.input, *sample.args, **sample.kwargs).numpy()
        got = _fastsm(info.name, sample, backend)
        got_arr = np.asarray(got)
        assert got_arr.shape == expected.shape, f"{label}: shape {got_arr.shape} != {expected.shape}"
        assert got_arr.dtype == expected.dtype, f"{label}: dtype {got_arr.dtype} != {expected.dtype}"
        np.testing.assert_allclose(got_arr, expected, err_msg=label, **TOLERANCES[tdtype])
        count += 1
    assert count >= 50, count  # torch's samples did run
