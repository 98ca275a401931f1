"""Language-model losses: z_loss, softcap, return_lse / return_accuracy, the fused linear
cross-entropy and fastsm.torch, on every backend, against float64 references built from
the formulas here (the oracle's long-double log-sum-exp) and torch autograd where torch
is installed."""

import itertools

import numpy as np
import pytest

import fastsm

from . import oracle

DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
LM_OPTIONS = list(itertools.product(
    [0.0, 1e-2],          # z_loss
    [None, 3.0],          # softcap
    [False, True],        # class weights
    [0.0, 0.1],           # label smoothing
    ["mean", "sum", "none"]))


def reference(x, target, weight=None, ignore_index=-100, label_smoothing=0.0,
              reduction="mean", z_loss=0.0, softcap=None):
    """(loss, grad, lse) in float64 from the formulas: logits capped as c tanh(x / c);
    q as in fastsm.cross_entropy; the z-term z lse^2 per kept sample, unweighted, its mean
    over the kept count; grad = s (p Q - q) + 2 z s_z lse p, times 1 - tanh^2 with a cap."""
    x = np.asarray(x, np.float64)
    n, k = x.shape
    xc = softcap * np.tanh(x / softcap) if softcap else x
    lse = np.asarray(oracle.logsumexp(xc), np.float64)
    with np.errstate(invalid="ignore"):
        logp = xc - lse[:, None]
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    eps = label_smoothing
    if target.shape == x.shape:  # probabilities
        q = w * ((1 - eps) * np.asarray(target, np.float64) + eps / k)
        kept = np.ones(n, bool)
        den = float(n)
    else:
        kept = target != ignore_index
        y = np.where(kept, target, 0)
        q = np.where(kept[:, None], eps / k * w, 0.0)
        q[np.arange(n), y] += np.where(kept, (1 - eps) * w[y], 0.0)
        den = float(w[y][kept].sum())
    with np.errstate(invalid="ignore"):
        rows = -np.where(q != 0, q * logp, 0.0).sum(axis=1)
    z_rows = np.where(kept, z_loss * lse * lse, 0.0)
    count = float(kept.sum())
    mean = reduction == "mean"
    if reduction == "none":
        loss = rows + z_rows
    elif reduction == "sum":
        loss = rows.sum() + z_rows.sum()
    else:
        loss = rows.sum() / den + z_rows.sum() / count
    scale, z_scale = (1 / den, 1 / count) if mean else (1.0, 1.0)
    p = np.exp(logp)
    grad = scale * (p * q.sum(axis=1, keepdims=True) - q)
    grad += np.where(kept[:, None], 2 * z_loss * z_scale * lse[:, None] * p, 0.0)
    if softcap:
        grad *= 1 - np.tanh(x / softcap) ** 2
    return loss, grad, lse


def _problem(dtype, soft, seed=0, n=37, k=29):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, k)) * 4).astype(dtype)
    x[3, 5] = 40.0  # a confident row (its loss far below 1)
    if soft:
        t = rng.random((n, k))
        return x, (t / t.sum(1, keepdims=True)).astype(dtype)
    t = rng.integers(0, k, n)
    t[::6] = -100
    t[3] = 5
    return x, t


def _close(actual, expected, dtype, what):
    tol = TOL[np.dtype(dtype)]
    scale = max(1.0, float(np.max(np.abs(expected)))) if np.size(expected) else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_cross_entropy_lm_options_match_formulas(backend, dtype, soft):
    x, t = _problem(dtype, soft)
    rng = np.random.default_rng(1)
    for z, cap, weighted, eps, red in LM_OPTIONS:
        opts = dict(weight=rng.random(x.shape[1]) + 0.5 if weighted else None,
                    label_smoothing=eps, reduction=red, z_loss=z, softcap=cap)
        what = f"{backend} {np.dtype(dtype)} soft={soft} {opts}"
        ref_loss, ref_grad, ref_lse = reference(x, t, **opts)
        out = fastsm.cross_entropy_with_grad(x, t, return_lse=True, backend=backend, **opts)
        assert isinstance(out, fastsm.CrossEntropyOutput) and out.correct is None
        assert out.grad.dtype == dtype and out.lse.dtype == dtype
        _close(out.loss, ref_loss, dtype, what)
        _close(out.grad, ref_grad, dtype, what + " grad")
        _close(out.lse, ref_lse, dtype, what + " lse")
        plain = fastsm.cross_entropy(x, t, backend=backend, **opts)
        _close(plain, ref_loss, dtype, what + " loss only")
        loss, grad = fastsm.cross_entropy_with_grad(x, t, backend=backend, **opts)
        np.testing.assert_array_equal(grad, out.grad)


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_cross_entropy_lm_options_match_torch_autograd(backend, soft):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    x, t = _problem(np.float64, soft, seed=2)
    for z, cap, weighted, eps, red in LM_OPTIONS:
        w = np.random.default_rng(3).random(x.shape[1]) + 0.5 if weighted else None
        xt = torch.tensor(x, requires_grad=True)
        capped = cap * torch.tanh(xt / cap) if cap else xt
        tt = torch.tensor(t)
        loss = functional.cross_entropy(capped, tt, weight=None if w is None else torch.tensor(w),
                                        label_smoothing=eps, reduction=red)
        if z:
            zr = z * torch.logsumexp(capped, -1) ** 2
            if not soft:
                zr = torch.where(tt == -100, 0.0, zr)
            kept = zr.numel() if soft else int((tt != -100).sum())
            loss = loss + (zr if red == "none" else zr.sum() if red == "sum" else zr.sum() / kept)
        loss.sum().backward()
        got, grad = fastsm.cross_entropy_with_grad(x, t, weight=w, label_smoothing=eps,
                                                   reduction=red, z_loss=z, softcap=cap,
                                                   backend=backend)
        what = f"{backend} z={z} cap={cap} w={weighted} eps={eps} {red}"
        _close(got, loss.detach().numpy(), np.float64, what)
        _close(grad, xt.grad.numpy(), np.float64, what + " grad")


def test_accuracy_and_lse_outputs(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 7))
    x[3] = x[3, 0]        # a tie everywhere: argmax is class 0
    x[4, 2] = np.nan      # never right
    x[5, 1] = np.inf      # argmax is class 1
    x[6] = -np.inf        # all -inf: argmax is class 0
    t = np.argmax(np.nan_to_num(x, nan=-1.0), axis=1)
    t[7] = -100           # ignored: not right
    t[8] = (t[8] + 1) % 7  # wrong
    t[3], t[4], t[5], t[6] = 0, 2, 1, 0
    out = fastsm.cross_entropy(x, t, reduction="none", return_accuracy=True, return_lse=True,
                               backend=backend)
    expected = (np.argmax(x, axis=1) == t) & (t != -100) & ~np.isnan(x).any(axis=1)
    assert out.correct.dtype == bool and out.grad is None
    np.testing.assert_array_equal(out.correct, expected)
    assert expected[3] and not expected[4] and expected[5] and expected[6]
    lse = fastsm.logsumexp(x, backend=backend)
    np.testing.assert_array_equal(np.isnan(out.lse), np.isnan(lse))
    np.testing.assert_allclose(out.lse, lse, rtol=1e-15)
    np.testing.assert_array_equal(out.loss, fastsm.cross_entropy(x, t, reduction="none",
                                                                 backend=backend))
    # N-d: the per-sample outputs have the batch shape; a 0-d batch gives scalars
    x3, t3 = rng.standard_normal((2, 3, 5)), rng.integers(0, 5, (2, 3))
    out3 = fastsm.cross_entropy_with_grad(x3, t3, return_accuracy=True, return_lse=True,
                                          backend=backend)
    assert out3.lse.shape == out3.correct.shape == (2, 3) and out3.grad.shape == x3.shape
    one = fastsm.cross_entropy(x3[0, 0], t3[0, 0], return_lse=True, backend=backend)
    assert np.ndim(one.lse) == 0


def test_bad_lm_options_are_named():
    x, t = np.zeros((2, 3)), np.zeros(2, int)
    with pytest.raises(ValueError, match=r"z_loss=-1"):
        fastsm.cross_entropy(x, t, z_loss=-1)
    with pytest.raises(ValueError, match=r"softcap=0"):
        fastsm.cross_entropy(x, t, softcap=0)
    with pytest.raises(ValueError, match=r"softcap=nan"):
        fastsm.cross_entropy(x, t, softcap=float("nan"))
    with pytest.raises(ValueError, match="return_accuracy=True needs class-index targets"):
        fastsm.cross_entropy(x, np.full((2, 3), 1 / 3), return_accuracy=True)


def test_softcap_works_block_by_block(backend, monkeypatch):
    """More rows than one capped block: every block capped and chained, none missed."""
    from fastsm import _api

    monkeypatch.setattr(_api, "_CAP_BLOCK", 64)
    x, t = _problem(np.float64, False, seed=5, n=50, k=10)
    ref_loss, ref_grad, _ = reference(x, t, softcap=2.0, reduction="sum")
    loss, grad = fastsm.cross_entropy_with_grad(x, t, softcap=2.0, reduction="sum",
                                                backend=backend)
    _close(loss, ref_loss, np.float64, "loss")
    _close(grad, ref_grad, np.float64, "grad")


# ----------------------------------------------------------------------------- linear
def _linear_problem(dtype, seed=0, n=45, d=16, v=37):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal((v, d)) * 0.5).astype(dtype)
    b = rng.standard_normal(v).astype(dtype)
    t = rng.integers(0, v, n)
    t[::7] = -100
    return h, w, b, t


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_equals_the_unfused_computation(backend, dtype):
    h, w, b, t = _linear_problem(dtype)
    rng = np.random.default_rng(6)
    for (z, cap, weighted, eps, red), bias, chunk in itertools.product(
            LM_OPTIONS, [False, True], [None, 1, 8]):
        if chunk == 1 and (weighted or eps):  # one-token chunks: a subset of the options
            continue
        bb = b if bias else None
        cw = rng.random(w.shape[0]) + 0.5 if weighted else None
        opts = dict(label_smoothing=eps, reduction=red, z_loss=z, softcap=cap)
        logits = h.astype(np.float64) @ w.T.astype(np.float64)
        if bias:
            logits += b
        ref_loss, g, _ = reference(logits, t, weight=cw, **opts)
        what = f"{backend} {np.dtype(dtype)} bias={bias} chunk={chunk} w={weighted} {opts}"
        loss, dh, dw, db = fastsm.linear_cross_entropy_with_grad(
            h, w, t, bb, class_weight=cw, chunk_size=chunk, backend=backend, **opts)
        assert dh.dtype == dw.dtype == dtype and dh.shape == h.shape and dw.shape == w.shape
        _close(loss, ref_loss, dtype, what)
        _close(dh, g @ w.astype(np.float64), dtype, what + " d_hidden")
        _close(dw, g.T @ h.astype(np.float64), dtype, what + " d_weight")
        if bias:
            _close(db, g.sum(axis=0), dtype, what + " d_bias")
        else:
            assert db is None
        only = fastsm.linear_cross_entropy(h, w, t, bb, class_weight=cw, chunk_size=chunk,
                                           backend=backend, **opts)
        _close(only, ref_loss, dtype, what + " loss only")


def test_linear_gradient_over_the_logits_block_by_block(backend, monkeypatch):
    """The logit gradient written over the chunk's logits, the kernel reading block-sized
    copies: with blocks of a few rows, every block is still right."""
    from fastsm import _api

    monkeypatch.setattr(_api, "_CAP_BLOCK", 100)
    h, w, b, t = _linear_problem(np.float64)
    for cap in (None, 2.0):
        logits = h @ w.T + b
        ref_loss, g, _ = reference(logits, t, softcap=cap, label_smoothing=0.1, z_loss=0.01)
        loss, dh, dw, db = fastsm.linear_cross_entropy_with_grad(
            h, w, t, b, softcap=cap, label_smoothing=0.1, z_loss=0.01, chunk_size=20,
            backend=backend)
        _close(loss, ref_loss, np.float64, f"cap={cap}")
        _close(dh, g @ w, np.float64, f"cap={cap} d_hidden")
        _close(dw, g.T @ h, np.float64, f"cap={cap} d_weight")
        _close(db, g.sum(axis=0), np.float64, f"cap={cap} d_bias")


def test_linear_cross_entropy_takes_token_batches_and_names_bad_input():
    h, w, b, t = _linear_problem(np.float64)
    loss = fastsm.linear_cross_entropy(h.reshape(5, 9, 16), w, t.reshape(5, 9),
                                       reduction="none")
    assert loss.shape == (5, 9)
    np.testing.assert_allclose(loss.ravel(), fastsm.linear_cross_entropy(h, w, t,
                                                                         reduction="none"))
    with pytest.raises(TypeError, match="must both be float32 or both float64"):
        fastsm.linear_cross_entropy(h.astype(np.float32), w, t)
    with pytest.raises(ValueError, match=r"hidden has shape \(45, 15\); expected \(\.\.\., 16\)"):
        fastsm.linear_cross_entropy(h[:, :15], w, t)
    with pytest.raises(ValueError, match="target value 37"):
        fastsm.linear_cross_entropy(h, w, np.full(45, 37))
    with pytest.raises(ValueError, match="chunk_size=0"):
        fastsm.linear_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(ValueError, match=r"bias has shape \(3,\)"):
        fastsm.linear_cross_entropy(h, w, t, np.zeros(3))


# ----------------------------------------------------------------------------- fastsm.torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_functions_pass_gradcheck_and_match_torch(reduction):
    torch = pytest.importorskip("torch")
    import fastsm.torch as ft

    functional = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randint(0, 5, (6, 3), generator=gen)
    t[0, 0] = -100
    options = dict(reduction=reduction, label_smoothing=0.1)
    assert torch.autograd.gradcheck(
        lambda a: ft.cross_entropy(a, t, z_loss=0.01, softcap=4.0, **options), (x,))
    torch.testing.assert_close(ft.cross_entropy(x, t, **options),
                               functional.cross_entropy(x, t, **options))
    probs = torch.softmax(torch.randn(6, 5, 3, dtype=torch.float64, generator=gen), 1)
    assert torch.autograd.gradcheck(lambda a: ft.cross_entropy(a, probs, **options), (x,))

    h = torch.randn(7, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    tt = torch.randint(0, 9, (7,), generator=gen)
    tt[2] = -100
    assert torch.autograd.gradcheck(
        lambda a, c, e: ft.linear_cross_entropy(a, c, tt, e, z_loss=0.01, softcap=3.0,
                                                chunk_size=3, **options), (h, w, b))
    torch.testing.assert_close(
        ft.linear_cross_entropy(h, w, tt, b, **options),
        functional.cross_entropy(functional.linear(h, w, b), tt, **options))


def test_torch_training_step_matches_torch():
    torch = pytest.importorskip("torch")
    import fastsm.torch as ft

    functional = torch.nn.functional
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(32, 8, generator=gen)
    target = torch.randint(0, 50, (32,), generator=gen)
    grads = []
    for loss_fn in (lambda h, w: ft.linear_cross_entropy(h, w, target, chunk_size=5),
                    lambda h, w: functional.cross_entropy(h @ w.T, target)):
        w = torch.randn(50, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
        h = hidden.clone().requires_grad_(True)
        loss = loss_fn(h, w)
        loss.backward()
        grads.append((loss.detach(), h.grad, w.grad))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_torch_backward_twice_and_scaled_match_torch():
    """The first ``loss.backward()`` hands the kept gradients to torch uncopied; a second
    backward through the same graph recomputes them, and a scaled loss scales them: the
    accumulated ``.grad`` must be torch's in every case."""
    torch = pytest.importorskip("torch")
    import fastsm.torch as ft

    functional = torch.nn.functional
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(12, 6, dtype=torch.float64, generator=gen)
    weight = torch.randn(20, 6, dtype=torch.float64, generator=gen)
    target = torch.randint(0, 20, (12,), generator=gen)
    fns = {
        "ours": (lambda h, w: ft.linear_cross_entropy(h, w, target, chunk_size=5),
                 lambda x: ft.cross_entropy(x, target)),
        "torch": (lambda h, w: functional.cross_entropy(h @ w.T, target),
                  lambda x: functional.cross_entropy(x, target)),
    }
    grads = {}
    for who, (linear, plain) in fns.items():
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        x = (hidden @ weight.T).requires_grad_()
        for loss in (linear(h, w), plain(x)):
            loss.backward(retain_graph=True)
            loss.backward(retain_graph=True)
            (3.0 * loss).backward()
        grads[who] = (h.grad, w.grad, x.grad)
    for ours, theirs in zip(grads["ours"], grads["torch"]):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_linear_cross_entropy_of_16_bit_inputs_is_the_float32_one_rounded(backend, half):
    """16-bit hidden / classifier: computed in float32 (the classifier widened once, the
    tokens chunk by chunk), loss and gradients in the input dtype, each within 1 ulp of
    that type of the float32 computation on the widened inputs."""
    from .test_half import _dtype, assert_within_one_ulp

    dt = _dtype(half)
    rng = np.random.default_rng(11)
    h = rng.standard_normal((45, 16)).astype(dt)
    w = (rng.standard_normal((37, 16)) * 0.5).astype(dt)
    b = rng.standard_normal(37).astype(dt)
    t = rng.integers(0, 37, 45)
    t[3] = -100
    options = dict(chunk_size=10, z_loss=1e-3, label_smoothing=0.05, backend=backend)
    got = fastsm.linear_cross_entropy_with_grad(h, w, t, b, **options)
    want = fastsm.linear_cross_entropy_with_grad(h.astype(np.float32), w.astype(np.float32),
                                                 t, b.astype(np.float32), **options)
    for name, g, ref in zip(("loss", "d_hidden", "d_weight", "d_bias"), got, want):
        assert_within_one_ulp(g, ref, dt, f"{backend} {half} {name}")
    assert_within_one_ulp(fastsm.linear_cross_entropy(h, w, t, b, **options), want[0], dt,
                          "forward only")


def test_torch_bfloat16_tensors_train_like_torch():
    """bfloat16 tensors in fastsm.torch (through ml_dtypes): loss and gradients in
    bfloat16, close to torch's own bfloat16 computation (both compute in float32)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    import fastsm.torch as ft

    functional = torch.nn.functional
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(24, 8, generator=gen).bfloat16()
    weight = torch.randn(30, 8, generator=gen).bfloat16()
    target = torch.randint(0, 30, (24,), generator=gen)
    results = []
    for linear in (lambda h, w: ft.linear_cross_entropy(h, w, target, chunk_size=7),
                   lambda h, w: functional.cross_entropy(functional.linear(h, w), target)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = linear(h, w)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    for ours, theirs in zip(*results):
        assert ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=2e-3)
    x = torch.randn(24, 30, generator=gen).bfloat16().requires_grad_()
    loss = ft.cross_entropy(x, target, label_smoothing=0.1)
    loss.backward()
    y = x.detach().clone().requires_grad_()
    ref = functional.cross_entropy(y, target, label_smoothing=0.1)
    ref.backward()
    assert loss.dtype == x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.float(), ref.float(), rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(x.grad.float(), y.grad.float(), rtol=2e-2, atol=1e-3)
