"""Which compiled kernels vectorise: per function of the c and cython backends' extensions,
counts of packed (vector) and scalar floating-point instructions in the object code (the
baseline x86-64 build's vectors are SSE2's 128-bit xmm: see its packed add/mul column).

    python -m benchmarks.vector_report [--match rows,finish,fsm_]

Reads ``objdump -d`` of each built extension (c_kernels, _cython_v4/_v3/_base) and prints,
for the functions whose names contain one of ``--match``: instructions on 512-bit (zmm)
and 256-bit (ymm) registers, packed FMAs, packed integer max (the row max on integer
keys), and scalar FMAs / adds (loops gcc left scalar show up there).  A count is evidence
of a vector loop, not a proof that the hot loop is the vector one: read the loop itself
with ``objdump -d --no-show-raw-insn`` where a figure surprises.
"""

import argparse
import glob
import re
import subprocess
from pathlib import Path

KERNELS = Path(__file__).resolve().parent.parent / "fastsm" / "kernels"
CLASSES = {
    "zmm": re.compile(r"%zmm"),
    "ymm": re.compile(r"%ymm"),
    "packed fma": re.compile(r"\bvfn?m(add|sub)\d+p[sd]\b"),
    "packed add/mul": re.compile(r"\bv?(add|sub|mul)p[sd]\b"),
    "packed int max": re.compile(r"\bv?pmaxs[dq]\b"),
    "scalar fma": re.compile(r"\bvfn?m(add|sub)\d+s[sd]\b"),
    "scalar add": re.compile(r"\bv?adds[sd]\b"),
}


def functions(path):
    """{function name: [instruction lines]} of a shared object."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)],
                          capture_output=True, text=True, check=True).stdout
    out, name = {}, None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            name = head.group(1)
            out[name] = []
        elif name and line.strip():
            out[name].append(line)
    return out


def short(name):
    """A readable function name: Cython's mangling and gcc's suffixes trimmed."""
    name = re.sub(r"__pyx_fuse_(\d)__pyx_f_\d+fastsm_\d+kernels_\d+_cython_\w+?__",
                  lambda m: ("float " if m.group(1) == "0" else "double ") + "_", name)
    return name.replace(".arch_x86_64_", " clone ")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--match", default="_rows,_finish,_lanes,fsm_softmax,fsm_ce_index",
                        help="comma-separated parts of function names to report")
    args = parser.parse_args(argv)
    parts = args.match.split(",")
    print(f"{'extension / function':58} " + " ".join(f"{c:>14}" for c in CLASSES))
    for so in sorted(glob.glob(str(KERNELS / "*.so"))):
        print(Path(so).name.split(".")[0])
        for name, lines in sorted(functions(so).items()):
            if not any(p in name for p in parts) or name.endswith("@plt") or "resolver" in name:
                continue
            counts = [sum(bool(rx.search(ln)) for ln in lines) for rx in CLASSES.values()]
            if sum(counts):
                print(f"  {short(name)[:56]:56} " + " ".join(f"{c:>14}" for c in counts))


if __name__ == "__main__":
    main()
