"""Accuracy near zero: relative error of log-sum-exp of ``[0, -t]`` (the answer is
``log1p(exp(-t))``, about e^-t) for fastsm's backends and the installed peers.

    python -m benchmarks.near_zero            # prints a Markdown table
    python -m benchmarks.near_zero --save     # also writes benchmarks/results/near_zero.md

The reference is NumPy's long double (64-bit mantissa) log1p(exp(-t)); "numpy" is the plain
``m + log(sum(exp(x - m)))`` a user writes; "CE" is fastsm's cross-entropy of the right answer
(class 0) on the same logits, whose true value is the same number.
"""

import argparse
from pathlib import Path

import numpy as np

import fastsm

TS = (10, 20, 30, 36, 40, 100, 300, 700)
OUT = Path(__file__).resolve().parent / "results" / "near_zero.md"


def contenders():
    found = {f"fastsm {b}": (lambda x, b=b: fastsm.logsumexp(x, backend=b))
             for b in fastsm.backends()}
    found["fastsm CE"] = lambda x: fastsm.cross_entropy(x[None], np.array([0]))
    found["numpy"] = lambda x: x.max() + np.log(np.sum(np.exp(x - x.max())))
    try:
        from scipy.special import logsumexp
        found["scipy"] = logsumexp
    except ImportError:
        pass
    try:
        import torch
        found["torch"] = lambda x: torch.logsumexp(torch.from_numpy(x), 0).item()
    except ImportError:
        pass
    return found


def table():
    funcs = contenders()
    lines = ["| t | log1p(e^-t) | " + " | ".join(funcs) + " |",
             "|---|---|" + "---|" * len(funcs)]
    for t in TS:
        x = np.array([0.0, -float(t)])
        exact = np.log1p(np.exp(-np.longdouble(t)))
        cells = []
        for fn in funcs.values():
            got = np.longdouble(float(fn(x)))
            cells.append(f"{float(abs(got - exact) / exact):.1e}")
        lines.append(f"| {t} | {float(exact):.4g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nrelative error, float64; 1.0e+00 means the answer came out 0."


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help=f"also write {OUT}")
    args = parser.parse_args(argv)
    text = table()
    print(text)
    if args.save:
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(text + "\n")
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
