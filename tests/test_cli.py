"""The command line as a user meets it: help, usage errors that name the bad value, outputs."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from fastsm import bench


def fastsm(*args):
    return subprocess.run([sys.executable, "-m", "fastsm", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, says", [
    ((), "commands:"), (("--help",), "commands:"), (("bench", "--help"), "--contention"),
    (("tune", "--help"), "--full"), (("config", "--help"), "usage: fastsm config")])
def test_help_goes_to_stdout_and_exits_0(args, says):
    proc = fastsm(*args)
    assert proc.returncode == 0 and says in proc.stdout and proc.stderr == ""


@pytest.mark.parametrize("args, names", [
    (("nope",), "'nope'"),
    (("bench", "--shapes", "12xx"), "'12xx'"),
    (("bench", "--shapes", "10x10@2"), "axis 2"),
    (("bench", "--dtypes", "int8"), "'int8'"),
    (("bench", "--ops", "linear_cross_entropy", "--dtypes", "float16"), "float32 or float64"),
    (("bench", "--ops", "softmax,nope"), "'nope'"),
    (("bench", "--peers", "numpyy"), "'numpyy'"),
    (("bench", "--backends", "cuda"), "'cuda'"),
    (("bench", "--threads", "0"), "--threads 0"),
    (("tune", "--threads", "0"), "--threads 0"),
    (("bench", "--data", "noisy"), "'noisy'"),
    (("bench", "--data", "masked", "--save"), "--data masked")])
def test_usage_errors_exit_2_naming_the_bad_value(args, names):
    proc = fastsm(*args)
    assert proc.returncode == 2 and names in proc.stderr and "usage:" in proc.stderr


def test_plot_without_matplotlib_fails_before_measuring():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from fastsm.__main__ import main\n"
            "sys.exit(main(['bench', '--plot', 'x.png']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "pip install -e '.[bench]'" in proc.stderr
    assert "[1/" not in proc.stderr  # no cell was run


def test_a_small_run_writes_what_it_says(tmp_path):
    out = tmp_path / "r.json"
    proc = fastsm("bench", "--quick", "--ops", "softmax,cross_entropy", "--shapes",
                  "40x30,30x20@0", "--peers", "none", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "machine:" in proc.stdout.lower()
    assert "not measured: cross_entropy at 30x20@0" in proc.stderr
    cells = json.loads(out.read_text())["cells"]
    assert [(c["op"], c["shape"]) for c in cells] == [
        ("softmax", "40x30"), ("cross_entropy", "40x30"), ("softmax", "30x20@0")]


def test_a_masked_run_checks_every_contender_against_the_reference(tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    proc = fastsm("bench", "--quick", "--data", "masked", "--ops",
                  "softmax,log_softmax,cross_entropy_with_grad", "--shapes", "40x30,30x20@0",
                  "--peers", "none", "--json", str(out), "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    assert "data: masked (half the logits -inf" in proc.stdout
    assert "Data: masked (half the logits -inf" in md.read_text()
    cells = json.loads(out.read_text())["cells"]
    assert len(cells) == 5 and {c["data"] for c in cells} == {"masked"}
    for cell in cells:  # -inf log-probabilities compare equal, not as NaN errors
        errors = [r["error"] for r in cell["results"] if r["contender"] != "copy"]
        assert errors and all(0 <= e < 1e-5 for e in errors), (cell["op"], errors)


@pytest.mark.parametrize("dims, axis", [((64, 10), -1), ((64, 10), 0), ((3, 8, 5), 1)])
def test_masked_cell_data_leaves_every_slice_and_target_a_finite_logit(dims, axis):
    normal, target = bench.cell_data(dims, "float32", True)
    x, t = bench.cell_data(dims, "float32", True, "masked", axis)
    np.testing.assert_array_equal(t, target)
    masked = np.isneginf(x)
    assert 0.35 < masked.mean() < 0.6
    np.testing.assert_array_equal(x[~masked], normal[~masked])
    assert np.isfinite(x).any(axis=axis).all()
    assert np.isfinite(np.take_along_axis(x.reshape(dims[0], -1), t[:, None] % x[0].size, 1)).all()
    with pytest.raises(ValueError, match="'noisy'"):
        bench.cell_data(dims, "float32", False, "noisy")


def test_error_of_takes_matching_infinities_as_exact_and_a_wrong_one_as_infinite():
    ref = np.array([[-np.inf, -0.5, -1.0]], np.longdouble)
    got = np.array([[-np.inf, -0.5, -1.0 + 1e-7]], np.float32)
    assert 0 < bench.error_of("log_softmax", got, ref) < 1e-6
    assert bench.error_of("log_softmax", np.array([[-1e30, -0.5, -1.0]], np.float32), ref) > 1
    assert bench.error_of("log_softmax", np.array([[np.nan, -0.5, -1.0]], np.float32),
                          ref) == np.inf
    assert bench.error_of("softmax", np.array([[0.0, 0.5, 0.5]]), np.array([[0, 0.5, 0.5]])) == 0


def test_parse_shape():
    assert bench.parse_shape("4096x1000") == ((4096, 1000), -1)
    assert bench.parse_shape("2x3x4@1") == ((2, 3, 4), 1)
    for bad in ("", "x", "12xx", "0x5", "3x-4", "4x4@", "4x4@a", "4x4@-3"):
        with pytest.raises(ValueError, match="bad shape"):
            bench.parse_shape(bad)


def test_plot_writes_a_png_with_every_contender(tmp_path):
    pytest.importorskip("matplotlib", reason="the bench extra (matplotlib) is not installed")
    out = tmp_path / "p.png"
    proc = fastsm("bench", "--quick", "--ops", "softmax,logsumexp", "--shapes", "40x30,64x8",
                  "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_import_from_the_folder_holding_a_clone_named_fastsm(tmp_path):
    # The checkout's root, seen under the name `fastsm` from its parent folder, is a directory
    # without __init__.py: an import hook placed after the path scan loses to it (the namespace
    # package has no softmax). Installed fastsm, editable or not, must win.
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "fastsm").symlink_to(root, target_is_directory=True)
    proc = subprocess.run([sys.executable, "-c",
                           "import fastsm; print(fastsm.softmax([0.0, 0.0]).tolist())"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0.5, 0.5]"


def test_bench_measures_the_linear_cross_entropy_beside_torch(tmp_path):
    """--ops linear_cross_entropy_with_grad on a tokens x hidden : vocabulary shape: every
    backend, the NumPy baseline and, where torch is installed, torch's unfused and chunked
    computations, each with its error against the float64 reference."""
    out = tmp_path / "cells.json"
    proc = fastsm("bench", "--ops", "linear_cross_entropy_with_grad,softmax", "--shapes",
                  "64x16:100", "--dtypes", "float32", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "softmax at 64x16:100" in proc.stderr  # the shape is the linear ops' only
    cells = json.loads(out.read_text())["cells"]
    assert [(c["op"], c["shape"]) for c in cells] == [("linear_cross_entropy_with_grad",
                                                       "64x16:100")]
    names = {r["contender"]: r for r in cells[0]["results"]}
    assert set(bench._registry.available()) | {"numpy-baseline"} <= set(names)
    try:
        import torch  # noqa: F401
        assert {"torch", "fastsm.torch"} <= set(names)
    except ImportError:
        pass
    assert all(r["error"] < 1e-5 for r in names.values())
