"""asv suite: time, peak memory and accuracy of every backend x op x shape x dtype."""

from .common import DTYPES, OPS, SHAPES, accuracy, backends, call, data


class Ops:
    params = (backends(), list(OPS), list(SHAPES), list(DTYPES))
    param_names = ("backend", "op", "shape", "dtype")
    timeout = 300

    def setup(self, backend, op, shape, dtype):
        self.fn = call(backend, op, shape, dtype)
        self.fn()  # compile / warm up outside the timing

    def time_op(self, backend, op, shape, dtype):
        self.fn()

    def track_max_error(self, backend, op, shape, dtype):
        return accuracy(backend, op, shape, dtype)

    track_max_error.unit = "relative error"


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
