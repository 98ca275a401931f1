"""fastsm.dask against in-memory fastsm: the threaded scheduler, the processes scheduler and a
real dask.distributed LocalCluster (2 worker processes, 1 thread each)."""

import numpy as np
import pytest

import fastsm

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import fastsm.dask as fd  # noqa: E402

from .checks import assert_logs  # noqa: E402

# class-axis chunkings: one chunk, several even, uneven with a single-element chunk
CLASS_CHUNKS = [(37,), (10, 10, 10, 7), (1, 30, 6)]


def _logits(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((23, 37)) * 3).astype(dtype)
    x[3] = -np.inf                    # all -inf
    x[4, 5] = np.nan                  # NaN
    x[5, 2] = np.inf                  # +inf
    x[6] = -1e30
    x[6, 1] = 0                       # a huge shift
    x[7] = -30
    x[7, 20] = 0                      # confident: results near zero
    x[8, ::3] = -np.inf               # masked
    return x


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, memory_limit="1GiB")
    with cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(params=["threads", "cluster"])
def compute(request):
    """dask.compute of some arrays on the threaded scheduler or on the LocalCluster."""
    if request.param == "threads":
        def run(*arrays):
            return da.compute(*arrays, scheduler="threads")
    else:
        client = request.getfixturevalue("client")

        def run(*arrays):
            return tuple(client.compute(list(arrays), sync=True))
    run.where = request.param
    return run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("class_chunks", CLASS_CHUNKS, ids=["one", "even", "uneven"])
def test_elementwise_and_lse_match_in_memory(dtype, class_chunks, compute):
    x = _logits(dtype)
    dx = da.from_array(x, chunks=((10, 13), class_chunks))
    for name in ("softmax", "log_softmax"):
        got, = compute(getattr(fd, name)(dx))
        ref = getattr(fastsm, name)(x)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=8 * np.finfo(dtype).eps, atol=0,
                                   equal_nan=True, err_msg=f"{name} {class_chunks}")
    for keepdims in (False, True):
        got, = compute(fd.logsumexp(dx, keepdims=keepdims))
        ref = fastsm.logsumexp(x, keepdims=keepdims)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=8 * np.finfo(dtype).eps, atol=0,
                                   equal_nan=True)


@pytest.mark.parametrize("class_chunks", CLASS_CHUNKS, ids=["one", "even", "uneven"])
def test_near_zero_digits_survive_chunking(class_chunks):
    """The confident row's log-probability and lse (~1e-13) keep 4 ulp across chunks."""
    x = _logits(np.float64)[7:8]
    dx = da.from_array(x, chunks=(1, class_chunks))
    from . import oracle
    assert_logs(fd.log_softmax(dx).compute(scheduler="threads"), oracle.log_softmax(x),
                np.float64, "log_softmax", x)
    assert_logs(fd.logsumexp(dx).compute(scheduler="threads"), oracle.logsumexp(x),
                np.float64, "lse", x, reduced=True)


def test_other_axes_and_empty_chunks(compute):
    x = _logits(np.float64).T.copy()  # classes on axis 0
    dx = da.from_array(x, chunks=((10, 10, 17), (5, 18)))
    np.testing.assert_allclose(compute(fd.log_softmax(dx, axis=0))[0], fastsm.log_softmax(x, 0),
                               rtol=1e-14, equal_nan=True)
    empty = da.from_array(np.zeros((0, 6)), chunks=(1, 3))
    assert compute(fd.softmax(empty))[0].shape == (0, 6)
    assert compute(fd.logsumexp(da.zeros((4, 0), chunks=(2, 1))))[0].tolist() == [-np.inf] * 4
    # a class chunk of width 0 between others
    y = x.T.copy()
    dy = da.from_array(y, chunks=((10, 13), (20, 0, 17)))
    assert 0 in dy.chunks[1]
    np.testing.assert_allclose(compute(fd.logsumexp(dy))[0], fastsm.logsumexp(y),
                               rtol=1e-14, equal_nan=True)
    np.testing.assert_allclose(compute(fd.softmax(dy))[0], fastsm.softmax(y), rtol=1e-14,
                               equal_nan=True)


OPTIONS = [dict(weight=w, ignore_index=ii, label_smoothing=ls, reduction=red)
           for w in (None, "random") for ii in (-100, 2) for ls in (0.0, 0.1)
           for red in ("mean", "sum", "none")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("class_chunks", [(11,), (4, 4, 3), (1, 9, 1)],
                         ids=["one", "even", "uneven"])
def test_cross_entropy_every_option(dtype, soft, class_chunks, compute):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((30, 11)) * 2).astype(dtype)
    x[5] = -30
    x[5, 2] = 0  # confident and right (target 2 below): a loss far below 1
    x[9, 1::2] = -np.inf  # masked classes (zero-weight ones must add 0)
    if soft:
        t = rng.random((30, 11))
        t[9, 1::2] = 0
        target = (t / t.sum(1, keepdims=True)).astype(dtype)
        dt = da.from_array(target, chunks=(7, class_chunks))
    else:
        target = rng.integers(0, 11, 30)
        target[::4] = 2
        target[5], target[9] = 2, 0
        dt = da.from_array(target, chunks=7)
    dx = da.from_array(x, chunks=(7, class_chunks))
    # on the cluster every option value and reduction (each compute pays its latency there)
    for options in OPTIONS if compute.where == "threads" else OPTIONS[::5]:
        if options["weight"]:
            w = rng.random(11) + 0.5
            w[1::2] = 0 if options["label_smoothing"] else w[1::2]  # 0 * -inf must add 0
            options = dict(options, weight=w)
        loss, grad = fd.cross_entropy_with_grad(dx, dt, **options)
        ref_loss, ref_grad = fastsm.cross_entropy_with_grad(x, target, **options)
        got_loss, got_grad = compute(loss, grad)
        assert np.asarray(got_loss).dtype == dtype and got_grad.dtype == dtype
        tol = dict(rtol=16 * np.finfo(dtype).eps, atol=np.finfo(dtype).tiny)
        np.testing.assert_allclose(got_loss, ref_loss, err_msg=str(options), **tol)
        # the mean's 1/denominator is applied after the sum here, inside the kernel in
        # memory: entries where p * Q and q cancel (the target class of the confident
        # row 5) differ at the size of those terms, ~ the largest gradient entry
        scale = 16 * np.finfo(dtype).eps * np.nanmax(np.abs(ref_grad))
        same = (np.abs(got_grad - ref_grad) <= scale) | (np.isnan(got_grad) & np.isnan(ref_grad))
        assert same.all(), (str(options), np.argwhere(~same)[:3])
        np.testing.assert_allclose(compute(fd.cross_entropy(dx, dt, **options))[0], ref_loss,
                                   **tol)


@pytest.mark.parametrize("class_chunks", CLASS_CHUNKS[1:], ids=["even", "uneven"])
def test_cross_entropy_special_rows_in_chunks(class_chunks, monkeypatch):
    """_logits' rows (all -inf, NaN, +inf, a huge shift, confident, masked) with the class
    axis chunked: the per-sample losses and gradients of in-memory fastsm.  Slabs of a few
    rows (fd._SLAB lowered), so each block also runs in several row slabs."""
    monkeypatch.setattr(fd, "_SLAB", 64)
    for dtype in (np.float32, np.float64):
        x = _logits(dtype, seed=4)
        target = np.arange(23) % 37
        target[7] = 20  # the confident row's own class
        target[8] = 3   # a live class of the masked row
        target[10] = -100
        dx = da.from_array(x, chunks=(10, class_chunks))
        for smoothing in (0.0, 0.2):
            options = dict(label_smoothing=smoothing, reduction="none")
            loss, grad = da.compute(*fd.cross_entropy_with_grad(dx, da.from_array(target, 10),
                                                                **options))
            ref_loss, ref_grad = fastsm.cross_entropy_with_grad(x, target, **options)
            np.testing.assert_allclose(loss, ref_loss, rtol=16 * np.finfo(dtype).eps,
                                       atol=0, equal_nan=True, err_msg=str(options))
            np.testing.assert_allclose(grad, ref_grad, rtol=16 * np.finfo(dtype).eps,
                                       atol=16 * np.finfo(dtype).eps, equal_nan=True)
        assert loss[10] == 0 and (grad[10] == 0).all()


def test_chunked_classes_reject_bad_targets():
    dx = da.ones((4, 6), chunks=(2, 3))
    with pytest.raises(ValueError, match=r"target value 6 .* out of range"):
        fd.cross_entropy(dx, da.from_array(np.array([0, 6, 1, 2]), 2)).compute()
    with pytest.raises(ValueError, match=r"weight\[1\] = nan"):
        fd.cross_entropy(dx, da.zeros(4, dtype=int, chunks=2), weight=[1, np.nan, 1, 1, 1, 1])


def test_processes_scheduler():
    x = _logits(np.float64)
    dx = da.from_array(x, chunks=((10, 13), (10, 27)))
    got = fd.log_softmax(dx).compute(scheduler="processes", num_workers=2)
    np.testing.assert_allclose(got, fastsm.log_softmax(x), rtol=1e-14, equal_nan=True)


def test_local_cluster(client):
    """A real dask.distributed cluster: two worker processes, pickled functions."""
    x = _logits(np.float32, seed=3)
    dx = da.from_array(x, chunks=((10, 13), (1, 30, 6)))
    lse = client.compute(fd.logsumexp(dx)).result()
    np.testing.assert_allclose(lse, fastsm.logsumexp(x), rtol=8 * np.finfo(np.float32).eps,
                               equal_nan=True)
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((400, 50)).astype(np.float32)
    target = rng.integers(0, 50, 400)
    ref_loss, ref_grad = fastsm.cross_entropy_with_grad(logits, target)
    for class_chunks in (50, 16):  # one chunk, then the class axis in four
        loss, grad = fd.cross_entropy_with_grad(da.from_array(logits, chunks=(100, class_chunks)),
                                                da.from_array(target, chunks=100))
        got_loss, got_grad = client.compute([loss, grad], sync=True)
        np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
        np.testing.assert_allclose(got_grad, ref_grad, rtol=1e-6, atol=1e-12)
    workers = client.scheduler_info()["workers"]
    assert len(workers) == 2 and all(w["nthreads"] == 1 for w in workers.values())
    # the nanny's OMP_NUM_THREADS=1 is fastsm's thread count in each worker: no team beside
    # the worker's own thread
    assert set(client.run(fastsm.get_num_threads).values()) == {1}
