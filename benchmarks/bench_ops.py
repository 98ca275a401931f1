"""asv suite: time, accuracy and peak memory of every backend x op x shape x dtype.

asv runs each benchmark in a process of its own.  ``setup`` therefore makes the same
untimed warm-up calls as ``fastsm bench`` (first call, then ``WARMUP_CALLS``: JIT load,
the thread controller's start-up probes), so both suites time the steady state.  The
accuracy figures need a long-double reference per cell, the slow part: ``setup_cache``
computes every backend's error once, in one process, and each ``track_max_error`` reads it.
"""

from .common import DTYPES, OPS, SHAPES, WARMUP_CALLS, accuracy, backends, call, data


class Ops:
    params = (backends(), list(OPS), list(SHAPES), list(DTYPES))
    param_names = ("backend", "op", "shape", "dtype")
    timeout = 300

    def setup(self, backend, op, shape, dtype):
        self.fn = call(backend, op, shape, dtype)
        for _ in range(1 + WARMUP_CALLS):
            self.fn()

    def time_op(self, backend, op, shape, dtype):
        self.fn()


class Copy:
    """``np.copyto`` of each cell's input: the memory traffic any out-of-place op pays at
    least, and the yardstick for reading ``time_op`` on a shared machine, whose memory
    bandwidth drifts by tens of percent between minutes (``fastsm bench`` reports each
    contender against the same copy as ``x copy``)."""

    params = (list(SHAPES), list(DTYPES))
    param_names = ("shape", "dtype")

    def setup(self, shape, dtype):
        import numpy as np

        self.x, _ = data(shape, dtype, False)
        self.out = np.empty_like(self.x)
        self.np = np

    def time_copy(self, shape, dtype):
        self.np.copyto(self.out, self.x)


class Accuracy:
    params = Ops.params
    param_names = Ops.param_names
    timeout = 900

    def setup_cache(self):
        errors = {}
        for key in _grid():
            try:
                errors[key] = accuracy(*key)
            except NotImplementedError:  # backend unavailable here
                pass
        return errors

    def setup(self, errors, backend, op, shape, dtype):
        if (backend, op, shape, dtype) not in errors:
            raise NotImplementedError(f"backend {backend} is not available here")

    def track_max_error(self, errors, backend, op, shape, dtype):
        """Max relative error in machine epsilons of the dtype, 3 digits: asv prints any
        unit but seconds and bytes as a bare number (1.0077512001948418e-06 read badly)."""
        import numpy as np

        return float(f"{errors[(backend, op, shape, dtype)] / np.finfo(dtype).eps:.3g}")

    track_max_error.unit = "eps (max relative error / machine epsilon of the dtype)"


def _grid():
    return [(b, o, s, d) for b in Ops.params[0] for o in Ops.params[1]
            for s in Ops.params[2] for d in Ops.params[3]]


class PeakMemory:
    """Peak RSS of softmax(x, out=buf): scratch only, no hidden full-size temporary."""

    params = (backends(), ["4096x1000"], ["float32"])
    param_names = ("backend", "shape", "dtype")

    def setup_cache(self):
        import numpy as np

        return {s: np.empty(tuple(int(d) for d in s.split("x")), np.float32) for s in ["4096x1000"]}

    def setup(self, cache, backend, shape, dtype):
        import fastsm

        self.x, _ = data(shape, dtype, False)
        self.out = cache[shape]
        call(backend, "softmax", shape, dtype)()
        self.fastsm = fastsm

    def peakmem_softmax_out(self, cache, backend, shape, dtype):
        self.fastsm.softmax(self.x, out=self.out, backend=backend)
