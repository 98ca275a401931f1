"""Build fastsm's compiled backends: ``cython`` (kernels written in Cython) and ``c`` (C row
kernels behind a Cython wrapper), both OpenMP.

- ``cython``: cython_rows.pxi is compiled three times, as fastsm.kernels._cython_v4
  (-march=x86-64-v4), _cython_v3 (-march=x86-64-v3) and _cython_base (the compiler's
  baseline); fastsm/kernels/cython_kernels.py loads the widest one the CPU runs.  This is
  the c backend's function multiversioning (target_clones) done with compiler flags, so
  the Cython source needs no C attribute.  Where the compiler lacks -march=x86-64-v3/v4
  (or the machine is not x86-64) only the baseline build is made.
- ``c``: fastsm.kernels.c_kernels, rowops.c with target_clones.

- OpenMP is probed by compiling a tiny program with -fopenmp.  Without it the extension is
  built serial (still vectorised, via -fopenmp-simd where the compiler has it) with a loud
  warning; FASTSM_FAIL_NO_OPENMP=1 makes that an error (CI sets it).
- Flags: -O3 -fno-trapping-math, never -ffast-math (its -ffinite-math-only may delete the
  -inf/NaN handling that masked logits need).  The default build is portable (see above).
  FASTSM_NATIVE=1 adds -march=native to the c and baseline builds, for a local build
  tuned to this CPU only.
- If the extensions cannot be built at all (no compiler), the package still installs with
  the numpy and numba backends, unless FASTSM_REQUIRE_CYTHON=1.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiles(compiler, source, extra_args):
    """Whether ``compiler`` compiles and links ``source`` with ``extra_args``."""
    tmp = tempfile.mkdtemp(prefix="fastsm-probe-")
    try:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        objects = compiler.compile([path], output_dir=tmp, extra_postargs=extra_args)
        compiler.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=extra_args)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OPENMP_PROBE = """
#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
  n += 1;
  return n > 0 ? 0 : 1; }
"""
# the cython backend's builds beyond the baseline: extension name -> extra flags
ISA_BUILDS = {
    "fastsm.kernels._cython_v4": ["-march=x86-64-v4", "-mprefer-vector-width=512"],
    "fastsm.kernels._cython_v3": ["-march=x86-64-v3"],
}
CLONES_PROBE = """
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
int f(int x) { return x + 1; }
int main(void) { return f(-1); }
"""


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:  # four extensions, one per core (pip passes no -j)
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        compiler = self.compiler
        is_msvc = compiler.compiler_type == "msvc"
        if is_msvc:
            compile_args, link_args, omp = ["/O2", "/openmp"], [], True
            self.extensions = [ext for ext in self.extensions if ext.name not in ISA_BUILDS]
        else:
            compile_args = ["-O3", "-fno-trapping-math", "-std=gnu99"]  # gnu: FMA contraction on
            link_args = []
            omp = _compiles(compiler, OPENMP_PROBE, ["-fopenmp"])
            if omp:
                compile_args.append("-fopenmp")
                link_args.append("-fopenmp")
            elif _compiles(compiler, "int main(void){return 0;}", ["-fopenmp-simd"]):
                compile_args.append("-fopenmp-simd")
            if _env_flag("FASTSM_NATIVE"):
                compile_args.append("-march=native")
            if not _compiles(compiler, CLONES_PROBE, []):
                compile_args.append("-DFSM_NO_CLONES")
            levels = {name: flags for name, flags in ISA_BUILDS.items()
                      if _compiles(compiler, "int main(void){return 0;}", flags)}
            # a level the compiler cannot target is not built (cython_kernels.py skips it)
            self.extensions = [ext for ext in self.extensions
                               if ext.name not in ISA_BUILDS or ext.name in levels]
        if not omp:
            message = ("fastsm: OpenMP not found: the cython and c backends are built SERIAL "
                       "(one thread). Install an OpenMP-capable compiler (gcc, or clang "
                       "with libomp) for multi-threaded kernels.")
            if _env_flag("FASTSM_FAIL_NO_OPENMP"):
                raise RuntimeError(message + " (FASTSM_FAIL_NO_OPENMP is set)")
            warnings.warn(message)
            print("*" * 78 + "\n" + message + "\n" + "*" * 78, file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + (
                [] if is_msvc else ISA_BUILDS.get(ext.name, []))
            ext.extra_link_args = link_args
        try:
            super().build_extensions()
        except Exception as exc:
            if _env_flag("FASTSM_REQUIRE_CYTHON"):
                raise
            print(f"fastsm: WARNING: the compiled backends could not be built ({exc}); "
                  "installing without it.", file=sys.stderr)


def extensions():
    try:
        import numpy  # build requirement: the c backend reads arrays with NumPy's C API
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:
        if _env_flag("FASTSM_REQUIRE_CYTHON"):
            raise
        print(f"fastsm: WARNING: Cython unavailable ({exc}); skipping the cython backend",
              file=sys.stderr)
        return []
    c_ext = Extension(
        "fastsm.kernels.c_kernels",
        sources=["fastsm/kernels/c_kernels.pyx", "fastsm/kernels/rowops.c"],
        include_dirs=["fastsm/kernels", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=["fastsm/kernels/rowops.h", "fastsm/kernels/rowops_impl.h"],
    )
    cython_exts = [
        Extension(f"fastsm.kernels._cython_{level}",
                  sources=[f"fastsm/kernels/_cython_{level}.pyx"],
                  depends=["fastsm/kernels/cython_rows.pxi"])
        for level in ("base", "v3", "v4")
    ]
    return cythonize([c_ext] + cython_exts, language_level=3, nthreads=os.cpu_count() or 1)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
