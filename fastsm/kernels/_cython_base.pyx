# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""The cython backend's kernels built for baseline (see cython_rows.pxi, setup.py)."""

BUILD = "baseline"

include "cython_rows.pxi"
