"""The benchmark tools: noise-aware winners for tune(), the load meter, the contention run."""

import json
import math
import subprocess
import sys

import pytest

from fastsm import _tuning, bench, loadbench
from fastsm.bench import Cell, LoadMeter, Result


def _cell(op, shape, times, spread=0.02):
    cell = Cell(op, shape, "float32", 2)
    for name, t in times.items():
        cell.results.append(Result(name, t, t, 1.0, spread=spread))
    return cell


@pytest.fixture
def default_is_cython(monkeypatch):
    monkeypatch.setattr(bench._registry, "preferred_available",
                        lambda: ["cython", "numba", "numpy"])


def test_a_winner_is_recorded_only_beyond_the_noise(default_is_cython):
    decided = bench.winners([
        _cell("softmax", "4096x1000", {"cython": 1.0, "numba": 1.2}),            # default wins
        _cell("log_softmax", "4096x1000", {"cython": 1.04, "numba": 1.0}),      # 4% < 5%
        _cell("logsumexp", "4096x1000", {"cython": 1.3, "numba": 1.0}, 0.2),    # 30% < 2 x 20%
        _cell("cross_entropy", "4096x1000", {"cython": 1.3, "numba": 1.0}),     # 30% > 5%
        _cell("softmax", "1000x512@0", {"cython": 2.0, "numba": 1.0}),          # not a bucket
    ])
    assert {key[0]: name for key, (name, _) in decided.items()} == {
        "softmax": None, "log_softmax": None, "logsumexp": None, "cross_entropy": "numba"}
    assert "within noise 40%" in decided[("logsumexp", "float32", "k<=4096|big")][1]


def test_save_winners_writes_the_table_and_says_what_changed(default_is_cython, tmp_path,
                                                              monkeypatch, capsys):
    monkeypatch.setenv("FASTSM_TUNING_FILE", str(tmp_path / "tuning.json"))
    cells = [_cell("cross_entropy", "4096x1000", {"cython": 1.3, "numba": 1.0})]
    bench.save_winners(cells)
    first = capsys.readouterr().out
    bench.save_winners(cells)
    second = capsys.readouterr().out
    assert "+ cross_entropy float32 k<=4096|big" in first and "[default -> numba]" in first
    assert "= cross_entropy float32 k<=4096|big" in second
    assert _tuning.load_table() == {("cross_entropy", "float32", "k<=4096|big"): "numba"}
    saved = json.loads((tmp_path / "tuning.json").read_text())
    assert saved["winners"][0]["backend"] == "numba"


def test_load_meter_sees_two_busy_neighbours():
    burn = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    try:
        import time
        time.sleep(0.5)
        with LoadMeter() as meter:
            time.sleep(1.0)  # this process idle: what the meter counts is theirs
    finally:
        for p in procs:
            p.kill()
            p.wait()
    if math.isnan(meter.other_cpus):
        pytest.skip("no /proc/stat and no load average here")
    assert meter.other_cpus > 1.0
    assert meter.verdict([_cell("softmax", "4096x1000", {"cython": 1.0})]).startswith("BUSY")


def test_contention_run_has_every_phase_and_equal_answers():
    result = loadbench.run(("softmax", "cross_entropy_with_grad"), "300x200", "float32",
                           threads=2, rounds=2, warmup=1, progress=False,
                           callers_shape="64x3000", callers_rounds=1)
    assert set(result["phases"]) == {"idle", "busy", "forked"}
    for phase, per_op in result["phases"].items():
        for op, res in per_op.items():
            assert {"fastsm", "fastsm 1 thread", "numpy-baseline", "copy"} <= set(res), (phase, op)
            assert all(med > 0 and mean > 0 for med, _, mean in res.values())
    assert "fastsm fixed 2 threads" not in result["phases"]["forked"]["softmax"]
    assert result["callers"]["answers_equal"]
    text = loadbench.report(result)
    assert "busy softmax: default call" in text and "8 callers of softmax 64x3000" in text


def test_the_copy_roofline_sends_no_contender_to_rounds_of_its_own():
    """Only a contender SLOW_FACTOR times slower than the fastest other contender is timed
    apart; the copy, many times faster than any kernel at small shapes, is not a contender."""
    factor = bench.SLOW_FACTOR
    warm = {"copy": 1e-6, "numpy": 25e-6, "numpy-baseline": 20e-6}
    assert bench._slow_contenders(warm) == []
    warm["numpy-baseline"] = 20e-6 * factor * 2  # float16's baseline: ~700x the kernels
    warm["numpy"] = 20e-6
    assert bench._slow_contenders(warm) == ["numpy-baseline"]
    assert bench._slow_contenders({}) == []
    assert bench._slow_contenders({"copy": 1.0}) == []


def test_short_cells_get_rounds_until_their_minimum_time():
    """reps rounds at least; more while under min_s (each a timed call after an untimed
    one), at most MORE_ROUNDS x reps; none past reps without min_s."""
    import random

    calls = {"a": 0, "b": 0}

    def fn(name):
        def call():
            calls[name] += 1
        return call

    fns = {"a": fn("a"), "b": fn("b")}
    samples = {"a": [], "b": []}
    bench._timed_rounds(fns, ["a", "b"], samples, 3, 10.0, random.Random(0), False)
    assert [len(samples["a"]), calls["a"]] == [3, 6]
    samples = {"a": [], "b": []}
    bench._timed_rounds(fns, ["a", "b"], samples, 3, 10.0, random.Random(0), False,
                        min_s=60.0)  # never reached: the cap stops it
    assert len(samples["a"]) == len(samples["b"]) == 3 * bench.MORE_ROUNDS
    samples = {"a": [], "b": []}
    bench._timed_rounds(fns, ["a", "b"], samples, 3, 10.0, random.Random(0), True,
                        min_s=60.0)  # linear cells: reps rounds, one untimed call
    assert len(samples["a"]) == 3
