"""Robustness: hostile input in a subprocess, memory over long runs, missing backends."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastsm

ROOT = Path(__file__).resolve().parent.parent
# 500 examples per property take about 40 s here; raise it for a longer hunt.
FUZZ_EXAMPLES = int(os.environ.get("FASTSM_FUZZ_EXAMPLES", "500"))


# ----------------------------------------------------------------------------- fuzz
def test_fuzz_every_backend_in_a_subprocess(tmp_path):
    """tests/fuzz.py: a crash in a compiled backend kills its process, not this one."""
    trace, counts = tmp_path / "trace.txt", tmp_path / "counts.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", "--examples", str(FUZZ_EXAMPLES),
         "--trace", str(trace), "--json", str(counts)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    last = trace.read_text() if trace.exists() else "(none)"
    assert proc.returncode == 0, (
        f"fuzz exited with status {proc.returncode} (negative: killed by signal "
        f"{-proc.returncode}); call in progress: {last}\n{proc.stdout[-2000:]}\n{proc.stderr[-8000:]}")
    tried = json.loads(counts.read_text())
    for name in fastsm.backends():
        checked = tried.get(f"{name} result", 0)
        raised = sum(n for key, n in tried.items() if key.startswith(f"{name} raised"))
        # both halves were exercised: valid calls checked against the oracle, bad ones raised
        assert checked >= FUZZ_EXAMPLES // 4 and raised >= FUZZ_EXAMPLES // 10, tried


# ----------------------------------------------------------------------------- memory
def _memprobe(which):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, "-m", "tests.memprobe", which], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    return report


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux, glibc)")
def test_no_memory_growth_over_many_calls():
    """RSS after 10,000 calls (8x16, serial) / 2,000 calls (64x600, parallel) of every op
    equals RSS after the warm-up, on every backend (tests/memprobe.py)."""
    report = _memprobe("growth")
    # the measurement can fail: keeping 10,000 small results is seen
    assert report.pop("control") > 4 * 2**20, report
    assert len(report) == 2 * len(fastsm.backends())
    for case, grown in report.items():
        assert grown < 2**20, f"{case}: RSS grew by {grown / 2**20:.2f} MiB"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux, glibc)")
def test_softmax_out_has_no_full_size_temporary():
    """Peak extra RSS of softmax(x, out=buf) is scratch, not a copy of x (tests/memprobe.py)."""
    report = _memprobe("peak")
    for dtype in ("float32", "float64"):
        nbytes = report[f"nbytes {dtype}"]
        # the measurement can fail: a full-size temporary is seen
        assert report[f"control {dtype}"] >= 0.9 * nbytes, report
        for name in fastsm.backends():
            assert report[f"{name} {dtype}"] < nbytes / 8, (name, dtype, report)


# ----------------------------------------------------------------------------- fallbacks
_BLOCKER = """
import json, sys, warnings
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        for blocked in {blocked!r}:
            if name == blocked or name.startswith(blocked + "."):
                raise {error}(f"{{name}} blocked by the test")
sys.meta_path.insert(0, _Blocker())
caught = warnings.catch_warnings(record=True)
log = caught.__enter__()
warnings.simplefilter("always")
"""


def _python(blocked, body, error="ImportError", env=None):
    code = _BLOCKER.format(blocked=blocked, error=error) + textwrap.dedent(body)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FASTSM_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=environ)


_USE_EVERYTHING = """
import numpy as np
import fastsm
x = np.random.default_rng(0).standard_normal((50, 7))
t = np.arange(50) % 7
results = [fastsm.softmax(x), fastsm.log_softmax(x), fastsm.logsumexp(x),
           fastsm.cross_entropy(x, t), fastsm.cross_entropy_with_grad(x, t)[1]]
for name in fastsm.backends():
    fastsm.softmax(x, backend=name)
fastsm.show_config()
print(json.dumps({"backends": fastsm.backends(), "default": fastsm.get_backend().name,
                  "finite": all(bool(np.isfinite(r).all()) for r in results),
                  "warnings": [str(w.message) for w in log if w.category is RuntimeWarning]}))
"""


_MODULE_BACKEND = {"numba": "numba", "fastsm.kernels.cython_kernels": "cython",
                   "fastsm.kernels.c_kernels": "c"}
_C, _CY = "fastsm.kernels.c_kernels", "fastsm.kernels.cython_kernels"


@pytest.mark.parametrize("blocked, error, left, default", [
    (["numba"], "ImportError", ["cython", "c", "numpy"], "c"),
    (["numba"], "RuntimeError", ["cython", "c", "numpy"], "c"),  # broken, not missing
    ([_C], "ImportError", ["cython", "numba", "numpy"], "cython"),
    ([_CY, _C], "ImportError", ["numba", "numpy"], "numba"),
    (["numba", _CY, _C], "ImportError", ["numpy"], "numpy"),
], ids=["no-numba", "broken-numba", "no-c", "no-extensions", "numpy-only"])
def test_missing_backend_leaves_the_rest_working(blocked, error, left, default):
    proc = _python(blocked, _USE_EVERYTHING, error)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backends"] == left and report["default"] == default
    assert report["finite"]
    assert len(report["warnings"]) == 1, report["warnings"]  # said once, however many calls
    message = report["warnings"][0]
    for name in _MODULE_BACKEND.values():
        if name not in left:
            assert re.search(rf"(\(|; ){name}: [A-Za-z]*{error}", message), message
    assert "available: False" in proc.stdout  # show_config lists it, with the reason


def test_forced_backend_that_is_missing_fails_clearly():
    proc = _python(["numba"], """
        import numpy as np, fastsm
        try:
            fastsm.softmax(np.zeros((2, 3)))
        except ImportError as exc:
            print("raised:", exc)
        """, env={"FASTSM_BACKEND": "numba"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "raised: backend 'numba' is not available: ImportError" in proc.stdout, proc.stdout


def _modules_with(attr):
    from fastsm import _registry
    mods = [_registry.load(name) for name in fastsm.backends()]
    return [pytest.param(m, id=m.NAME) for m in mods if getattr(m, attr, None) is not None]


@pytest.mark.parametrize("mod", _modules_with("count_ignored"))
def test_count_ignored_checks_targets_in_compiled_code(mod):
    """The optional target check the front's common cross-entropy call uses: how many
    targets are ignore_index, or the front's ValueError naming the first bad one."""
    t = np.array([0, 4, -100, 2, -100, 3], np.int64)
    assert mod.count_ignored(t, 5, -100) == 2
    assert mod.count_ignored(t[:2], 5, -100) == 0
    assert mod.count_ignored(np.empty(0, np.int64), 5, -100) == 0
    for bad, pos in ((5, 1), (-1, 3), (-(2**63), 0)):
        tb = t.copy()
        tb[pos] = bad
        with pytest.raises(ValueError, match=rf"target value {bad} at index {pos} is out"):
            mod.count_ignored(tb, 5, -100)
    for wrong in (t.astype(np.int32), t[::2], t.reshape(2, 3), list(t)):
        with pytest.raises((TypeError, ValueError)):
            mod.count_ignored(wrong, 5, -100)


@pytest.mark.parametrize("mod", _modules_with("count_ignored"))
def test_compiled_entry_points_reject_arrays_they_would_misread(mod):
    """Direct calls of the ndarray entry points (the front never makes these): a wrong
    dtype, shape, layout or a read-only output is an error, never a read or write out of
    bounds; ce_index checks its targets before any row runs."""
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    out = np.empty_like(x)
    mod.softmax(x, out, 1)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    for args in ((x, np.empty((6, 4), np.float32)), (x, out.astype(np.float64)),
                 (x, ro), (x.T, out.T.copy()), (x[:, ::2], np.empty((6, 3), np.float32)),
                 (x.astype(np.float16), out), (x, out.tolist()), (np.empty((2, 0)), out)):
        with pytest.raises((TypeError, ValueError)):
            mod.softmax(*args, 1)
    with pytest.raises((TypeError, ValueError)):
        mod.logsumexp(x, np.empty(5, np.float32), 1)
    w, loss = np.ones(5), np.empty(6)
    t = np.array([0, 1, 2, 3, 4, 9], np.int64)
    with pytest.raises(ValueError, match="target value 9 at index 5"):
        mod.ce_index(x, t, w, -100, 0.0, 1.0, loss, None, 0.0, None, None, 1)
    t[5] = 0
    for bad in (dict(weight=np.ones(4)), dict(loss=np.empty(5)), dict(grad=out[:5]),
                dict(target=t.astype(np.int32)), dict(lse=np.empty(6, np.float32))):
        a = dict(target=t, weight=w, loss=loss, grad=None, lse=None)
        a.update(bad)
        with pytest.raises((TypeError, ValueError)):
            mod.ce_index(x, a["target"], a["weight"], -100, 0.0, 1.0, a["loss"], a["grad"],
                         0.0, a["lse"], None, 1)


@pytest.mark.parametrize("mod", _modules_with("HALF_KINDS"))
def test_half_cross_entropy_entry_checks_its_arguments(mod):
    """ce_index_half called directly (the front has checked all this): a target out of range,
    a wrong dtype or shape, or a bad kind gives an error before any row runs; a good call
    returns the sum of its loss rows."""
    import math
    x = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float16).view(np.uint16)
    w, loss = np.ones(40), np.empty(6)
    t = np.array([0, 1, 2, 3, 4, 40], np.int64)
    with pytest.raises(ValueError, match="target value 40 at index 5"):
        mod.ce_index_half(x, 0, t, w, -100, 0.0, 1.0, loss, None, 0.0, None, None, 1)
    t[5] = 0
    grad = np.empty_like(x)
    for bad in (dict(x=x.view(np.float16)), dict(x=x[:, ::2]), dict(kind=2),
                dict(weight=np.ones(39)), dict(loss=np.empty(5)), dict(grad=grad[:5]),
                dict(grad=grad.view(np.float16)), dict(target=t.astype(np.int32))):
        a = dict(x=x, kind=0, target=t, weight=w, loss=loss, grad=None)
        a.update(bad)
        with pytest.raises((TypeError, ValueError)):
            mod.ce_index_half(a["x"], a["kind"], a["target"], a["weight"], -100, 0.0, 1.0,
                              a["loss"], a["grad"], 0.0, None, None, 1)
    total = mod.ce_index_half(x, 0, t, w, -100, 0.0, 1.0, loss, grad, 0.0, None, None, 1)
    assert abs(total - math.fsum(loss)) <= 1e-12 * math.fsum(abs(loss))


@pytest.mark.parametrize("mod", _modules_with("count_ignored"))
def test_kernel_loss_sum_is_the_sum_of_the_rows(mod):
    """Where ce_index returns the sum of its loss rows (optional in the contract), that sum
    is as accurate as NumPy's pairwise one, at every length around its block sizes."""
    import math
    rng = np.random.default_rng(3)
    for n in (1, 7, 8, 9, 127, 128, 129, 1000, 4097):
        x = (rng.standard_normal((n, 3)) * rng.choice([0.01, 1, 100], (n, 1))).astype(np.float64)
        t = rng.integers(0, 3, n)
        loss = np.empty(n)
        total = mod.ce_index(x, t, np.ones(3), -100, 0.0, 1.0, loss, None, 0.0, None, None, 1)
        exact = math.fsum(loss)
        assert abs(total - exact) <= 4 * np.finfo(np.float64).eps * math.fsum(abs(loss)), n
