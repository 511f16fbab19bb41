"""Benchmark: the main job's targets, end to end through the installed `imgclf` command.

Targets (issue "the main job end to end on real data"), on a 2-core CPU:

* ``imgclf run`` (digits, all defaults): under 120 s, clean test accuracy >= 0.95.
* ``imgclf run --dataset mnist --model simple-cnn --epochs 1``: under 180 s, test
  accuracy >= 0.98, PGD <= FGSM at every eps, eps=0 accuracy equal to the clean
  accuracy on the attacked examples, accuracy at the largest eps below clean.

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/main_job.py [--skip-mnist]

Prints one row per job and exits 1 if a target is missed. Wall times include
start-up and data loading: what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_job(args: list[str], out: Path) -> tuple[float, dict]:
    command = [sys.executable, "-m", "imgclf", "run", *args, "--out", str(out), "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "metrics.json").read_text())


def check(metrics: dict, seconds: float, limit: float, min_accuracy: float) -> list[str]:
    problems = []
    clean = metrics["clean"]["accuracy"]
    if seconds > limit:
        problems.append(f"took {seconds:.0f} s > {limit:.0f} s")
    if clean < min_accuracy:
        problems.append(f"accuracy {clean:.4f} < {min_accuracy}")
    rows = {(r["attack"], r["eps"]): r for r in metrics["evaluations"][-1]["robustness"]}
    eps_values = sorted({eps for _, eps in rows})
    for eps in eps_values:
        if rows[("pgd", eps)]["accuracy"] > rows[("fgsm", eps)]["accuracy"]:
            problems.append(f"PGD weaker than FGSM at eps={eps}")
    for (attack, eps), row in rows.items():
        if eps == 0 and row["accuracy"] != row["clean_accuracy"]:
            problems.append(f"{attack} at eps=0 differs from clean accuracy on the same examples")
    if rows[("pgd", eps_values[-1])]["accuracy"] >= clean:
        problems.append("accuracy at the largest eps is not below clean accuracy")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mnist", action="store_true")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    jobs = [("imgclf run (digits)", [], 120.0, 0.95)]
    if not args.skip_mnist:
        jobs.append(("imgclf run --dataset mnist --model simple-cnn --epochs 1",
                     ["--dataset", "mnist", "--model", "simple-cnn", "--epochs", "1"], 180.0, 0.98))
    failed = False
    work = Path(tempfile.mkdtemp(prefix="imgclf-bench-"))
    try:
        for i, (name, job_args, limit, min_accuracy) in enumerate(jobs):
            seconds, metrics = run_job(job_args, work / f"job{i}")
            problems = check(metrics, seconds, limit, min_accuracy)
            evaluation = metrics["evaluations"][-1]  # the run's one robustness evaluation
            rob = {(r["attack"], r["eps"]): r["accuracy"] for r in evaluation["robustness"]}
            largest = max(eps for _, eps in rob)
            timing = metrics["timing"]
            corruption = f", corruptions {timing['corruption_seconds']:.1f} s" if "corruption_seconds" in timing else \
                ", corruptions skipped"
            print(f"{name}\n  wall {seconds:.1f} s (train {timing['train_seconds']:.1f} s, attack "
                  f"{timing['attack_seconds']:.1f} s{corruption})  test accuracy "
                  f"{metrics['clean']['accuracy']:.4f}  FGSM/PGD at eps {largest:g}: "
                  f"{rob[('fgsm', largest)]:.3f}/{rob[('pgd', largest)]:.3f} "
                  f"(n={evaluation['attack']['n']})  {'OK' if not problems else 'MISSED: ' + '; '.join(problems)}")
            failed |= bool(problems)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
