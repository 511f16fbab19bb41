"""Benchmark: how fast the command line answers before any work starts.

Target (issue "no surprise at the edges"), on this 2-core CPU: a bad flag is refused, and
``imgclf datasets`` / ``imgclf models`` print their lists, in under 1 s.

Usage::

    python bench/startup.py [--repeats 5]

Runs each command through the installed ``imgclf`` (a new process each time, as a user
would), prints the median wall time of each and exits 1 if one misses the target.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

TARGET_SECONDS = 1.0
COMMANDS = {
    "bad flag (--seed -1)": ["run", "--seed", "-1"],
    "bad value (--epochs 0)": ["run", "--epochs", "0"],
    "unknown flag": ["run", "--no-such-flag"],
    "unknown model (--model nosuch)": ["run", "--model", "nosuch"],
    "unknown data set (--dataset mnistt)": ["run", "--dataset", "mnistt"],
    "unknown attack (--attack fulll)": ["run", "--attack", "fulll"],
    "unknown corruption (--corruptions smok)": ["run", "--corruptions", "smok"],
    "unknown augmentation (--augment flipp)": ["run", "--augment", "flipp"],
    "unknown recipe (--recipe nosuch)": ["train", "--recipe", "nosuch"],
    "unknown preset (--preset ful)": ["run", "--preset", "ful"],
    "imgclf datasets": ["datasets"],
    "imgclf models": ["models"],
    "imgclf attacks": ["attacks"],
    "imgclf --version": ["--version"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    imgclf = shutil.which("imgclf") or sys.exit("imgclf is not installed in this environment")
    missed = []
    print(f"| command | median of {args.repeats} | target |\n| --- | ---: | ---: |")
    for name, argv in COMMANDS.items():
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            subprocess.run([imgclf, *argv], capture_output=True, check=False)
            times.append(time.perf_counter() - began)
        median = statistics.median(times)
        if median >= TARGET_SECONDS:
            missed.append(name)
        print(f"| `{name}` | {median:.2f} s | < {TARGET_SECONDS:.0f} s |")
    if missed:
        print(f"missed the target: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
