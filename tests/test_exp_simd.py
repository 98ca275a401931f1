"""The c backend's AVX-512 exp loops (rowops.c, FSM_EXP_512) give every exponential the bits
of the portable exp they stand in for: tests/c/exp_simd_check.c, built here from rowops.c's
helpers alone (FSM_HELPERS_ONLY: about a second) and run.  ~4.3 M arguments over each exp's
whole range, the special values, the lane pass's double sums and the masked tails.

Skips where no C compiler is found or the CPU has no AVX-512F (the helpers do not run
there; the kernels' portable code is what the accuracy tests check)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "fastsm" / "kernels"
SOURCE = Path(__file__).resolve().parent / "c" / "exp_simd_check.c"


def _compiler():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("cc")


@pytest.mark.skipif(sys.platform != "linux", reason="the AVX-512 helpers are built on Linux x86-64 only")
def test_avx512_exp_loops_match_the_portable_exp_bit_for_bit(tmp_path):
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "exp_simd_check"
    # the flags setup.py builds rowops.c with (gnu99: FMA contraction as in the kernels)
    build = subprocess.run([cc, "-O3", "-fno-trapping-math", "-std=gnu99", f"-I{KERNELS}",
                            str(SOURCE), "-o", str(exe), "-lm"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    if run.returncode == 77:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 differ" in run.stdout and "checked" in run.stdout, run.stdout
