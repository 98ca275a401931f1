"""Put generated benchmark results into README.md, between markers, never typed by hand.

    python -m fastsm bench --quick --markdown benchmarks/results/quick.md --plot benchmarks/results/quick.png
    python -m fastsm bench --contention --markdown benchmarks/results/contention.md
    python -m benchmarks.near_zero --save
    python benchmarks/readme_table.py

- ``<!-- bench-excerpt -->``: the softmax rows and dispatch lines of quick.md;
- ``<!-- contention-excerpt -->``: the summary lines of contention.md (busy / idle / callers);
- ``<!-- near-zero -->``: near_zero.md, whole.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks/results"


def excerpt(markdown: str, op: str = "softmax") -> str:
    lines = markdown.splitlines()
    header = [ln for ln in lines if ln.startswith("| op |") or ln.startswith("|---")][:2]
    rows = [ln for ln in lines if ln.startswith(f"| {op} |")]
    dispatch = [ln for ln in lines if ln.startswith(f"- {op} ")]
    verdict = [ln for ln in lines if ln.startswith(("quiet machine", "BUSY MACHINE"))]
    return "\n".join([lines[0], "", *header, *rows, "", "Without `backend=`, fastsm runs:", "",
                      *dispatch, "", *verdict])


def contention_summary(markdown: str) -> str:
    lines = markdown.strip("`\n").splitlines()
    summary = re.compile(r"^((busy|idle) \w+: |8 callers|note:)")  # not the table's rows
    keep = [ln for ln in lines[:2]] + [""] + [ln for ln in lines if summary.match(ln)]
    return "```\n" + "\n".join(keep) + "\n```"


BLOCKS = {"bench-excerpt": (RESULTS / "quick.md", excerpt),
          "contention-excerpt": (RESULTS / "contention.md", contention_summary),
          "near-zero": (RESULTS / "near_zero.md", str.strip)}


def main(readme=ROOT / "README.md"):
    text = Path(readme).read_text()
    for name, (results, make) in BLOCKS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in text or end not in text:
            sys.exit(f"{readme} lacks the {start} / {end} markers")
        block = make(Path(results).read_text())
        text = re.sub(re.escape(start) + ".*?" + re.escape(end),
                      lambda _: f"{start}\n{block}\n{end}", text, flags=re.S)
        print(f"{readme}: {name} from {results}")
    Path(readme).write_text(text)


if __name__ == "__main__":
    main()
