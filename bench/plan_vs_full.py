"""Benchmark: the converging plan (``--preset auto``, the default) against the AutoAttack ensemble (``--preset full``).

Targets: on a standard MNIST ``simple-cnn`` (eps 0.1) and on the FGSM-RS anchor model (eps 0.3), the default
plan's worst-case robust accuracy within 0.3 points of ``--preset full``'s on the same 1,000 test images (the
seeded stratified subset both evaluations draw), at no more than a quarter of its forward and backward passes
and of its wall time. Both are run here, one after the other, by the attack stage (``imgclf attack``'s) on the
same run folder; passes are the model's forward and backward passes over every attack and the minimal-norm
search that both run (counted in examples), the wall time is the evaluation's (attacks, the minimal-norm search
and the sanity checks).

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/plan_vs_full.py --run standard=runs/mnist:0.1 \\
        --run fgsm-rs=runs/anchor-fgsm-rs-mnist-eps035:0.3

``--run NAME=FOLDER:EPS`` names a trained run folder and the eps to compare at (repeatable); without any,
a ``simple-cnn`` is trained for one epoch on MNIST first (about a minute) and compared at eps 0.1. The run
folders gain the two evaluations. Prints one row per model and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

#: The largest gap in worst-case robust accuracy (a fraction) and the largest share of full's cost.
GAP, SHARE = 0.003, 0.25


def evaluate(run: Path, preset: str, eps: str, examples: int) -> dict[str, float]:
    """``imgclf attack RUN --preset PRESET`` at ``eps`` (from Python, the same stage): its worst case, passes and
    seconds. An evaluation the run folder holds already is reused with the seconds it took then."""
    import imgclf
    from imgclf.attacks.results import WORST_CASE

    result = imgclf.Run.open(run, quiet=True).attack(attacks=[preset], eps=eps, examples=examples)
    rows, minimal = result.entries, result.minimal_norm
    worst = next(row for row in rows if row.attack == WORST_CASE and row.eps > 0)
    return {"accuracy": worst.accuracy, "seconds": result.seconds,
            "passes": sum(row.forwards + row.backwards for row in rows if row.attack != WORST_CASE)
            + (minimal.forwards + minimal.backwards if minimal is not None else 0),
            "converged": all(o.converged for o in result.plan) if result.plan else None,
            "failed": sum(check["status"] == "failed" for check in result.checks)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=FOLDER:EPS")
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for given in args.run:
            name, _, rest = given.partition("=")
            folder, _, eps = rest.rpartition(":")
            runs.append((name, Path(folder), eps))
        if not runs:
            out = Path(tmp) / "mnist"
            subprocess.run([sys.executable, "-m", "imgclf", "train", "--dataset", "mnist", "--model", "simple-cnn",
                            "--epochs", "1", "--out", str(out), "--quiet"], check=True)
            runs = [("standard", out, "0.1")]
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.examples} test images")
        print("| model | eps | plan worst case | full worst case | gap (points) | plan passes / full | "
              "plan time / full | plan converged | checks failed (plan, full) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
        missed = False
        for name, folder, eps in runs:
            plan = evaluate(folder, "auto", f"0,{eps}", args.examples)
            full = evaluate(folder, "full", f"0,{eps}", args.examples)
            gap = plan["accuracy"] - full["accuracy"]
            passes, seconds = plan["passes"] / full["passes"], plan["seconds"] / full["seconds"]
            missed |= gap > GAP or passes > SHARE or seconds > SHARE
            print(f"| {name} | {eps} | {plan['accuracy']:.2%} | {full['accuracy']:.2%} | {100 * gap:+.2f} | "
                  f"{passes:.3f} ({plan['passes']:,.0f} / {full['passes']:,.0f}) | {seconds:.3f} "
                  f"({plan['seconds']:.0f} s / {full['seconds']:.0f} s) | {plan['converged']} | "
                  f"{plan['failed']}, {full['failed']} |", flush=True)
        print(f"targets: gap <= {100 * GAP:.1f} points, passes and time <= {SHARE:.2f} of full's")
    return 1 if missed else 0


if __name__ == "__main__":
    from imgclf.errors import UsageError

    try:
        sys.exit(main())
    except UsageError as error:  # a run folder that is not there or not a run: one line, not a traceback
        sys.exit(f"plan_vs_full: {error}")
