"""Benchmark: one adversarial training recipe with seeds 0 to 4, each model under the full AutoAttack ensemble
on the same test images, to say what a user who runs the recipe once, with any seed, can rely on.

For each seed the script trains ``imgclf train TRAIN-FLAGS --seed S`` into ``OUT/seed-S``, then evaluates the kept
model in an evaluation-only run ``OUT/seed-S-eval`` made with ``--seed 0`` (so every seed's model meets the same
seeded stratified subset of the test split; a run folder's own evaluation draws it with the run's seed): ``imgclf
attack --config OUT/seed-S/config.yaml --weights OUT/seed-S/model.safetensors --seed 0 --preset full --eps 0,EPS
--n-examples N ATTACK-FLAGS``. It prints one row per seed (clean accuracy, worst case, whether training stopped on
catastrophic overfitting or recovered from it, training and evaluation minutes) and the mean, the standard
deviation and the worst seed; ``OUT/study.json`` keeps them.

Every step resumes: a seed whose training stopped is resumed (``imgclf train --resume``), a finished one is
not trained again, and an evaluation killed part way goes on from its last saved batch. The flags are kept in
``OUT/study.json``; running again with other flags is refused (give a new ``--out``).

Targets (``--target``, ``--clean``, ``--minutes``): every seed's worst case and clean accuracy at least these,
every training at most these minutes (issue: 82.9%, 98%, 10 minutes on two CPU cores). Exits 1 if one is
missed, 2 on a bad argument.

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/seed_study.py --out runs/seeds-fast-pgd --attack-flags=--cascade \\
        -- --recipe fast-pgd-mnist
    IMGCLF_DATA_DIR=../shared/data python bench/seed_study.py --out runs/seeds-fgsm-rs --attack-flags=--cascade \\
        -- --recipe fgsm-rs-mnist
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from imgclf.run_folder import atomic_write_text


def imgclf(*args: str) -> None:
    """Run one ``imgclf`` command (printed first); a failure ends the study with its exit status."""
    command = [sys.executable, "-m", "imgclf", *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def train(run: Path, flags: list[str], seed: int) -> dict:
    """The seed's training, started, resumed or found finished; its ``metrics.json``."""
    metrics = run / "metrics.json"
    finished = metrics.is_file() and json.loads(metrics.read_text()).get("training") is not None
    if not finished:
        if (run / "train_state.pt").is_file():
            imgclf("train", "--resume", str(run), "--quiet")
        else:
            imgclf("train", *flags, "--seed", str(seed), "--out", str(run), "--quiet")
    return json.loads(metrics.read_text())


def evaluate(run: Path, evaluation: Path, eps: str, examples: int, extra: list[str]) -> dict:
    """The full ensemble on the seed's kept model, in an evaluation-only run drawn with seed 0 (resumed where
    it stopped; a finished one is read back): its worst case at ``eps``, clean accuracy and seconds."""
    from imgclf.record import WORST_CASE, read_metrics

    model = json.loads((run / "model.json").read_text())
    config = run / "config.yaml"
    if (evaluation / "metrics.json").is_file():
        imgclf("attack", str(evaluation), "--preset", "full", "--eps", f"0,{eps}", "--n-examples", str(examples),
               *extra, "--quiet")
    else:
        imgclf("attack", "--config", str(config), "--weights", str(run / "model.safetensors"), "--seed", "0",
               "--preset", "full", "--eps", f"0,{eps}", "--n-examples", str(examples), *extra,
               "--out", str(evaluation), "--quiet")
    found = read_metrics(evaluation).evaluations[-1]
    rows = {(row.attack, row.eps): row for row in found.robustness}
    worst = next(row for (attack, value), row in rows.items() if attack == WORST_CASE and value > 0)
    clean = next(row for (attack, value), row in rows.items() if attack == WORST_CASE and value == 0)
    return {"model": model.get("model"), "worst_case": worst.accuracy, "clean": clean.accuracy, "n": worst.n,
            "evaluation_seconds": found.seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the study's folder (resumed where it exists)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--eps", default="0.3")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--target", type=float, default=0.829, help="worst case every seed must reach")
    parser.add_argument("--clean", type=float, default=0.98, help="clean accuracy every seed must reach")
    parser.add_argument("--minutes", type=float, default=10.0, help="the longest training allowed")
    parser.add_argument("--attack-flags", default="", help="extra flags of imgclf attack (a tiny check: "
                                                           "'--queries 20')")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then the flags of imgclf train")
    args = parser.parse_args()
    flags = [flag for flag in args.train_flags if flag != "--"]
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: comma-separated integers, e.g. 0,1,2,3,4")
    if not flags:
        parser.error("give the training flags after --, e.g. -- --recipe fgsm-rs-mnist --adversarial n-fgsm")
    study = args.out / "study.json"
    args.out.mkdir(parents=True, exist_ok=True)
    done = json.loads(study.read_text()) if study.is_file() else {"train_flags": flags, "seeds": {}}
    if done["train_flags"] != flags:
        parser.error(f"{args.out} holds a study of other flags ({' '.join(done['train_flags'])}): give a new --out")
    for seed in seeds:
        run = args.out / f"seed-{seed}"
        metrics = train(run, flags, seed)
        adversarial = (metrics["training"].get("adversarial") or {})
        row = {"train_minutes": metrics["timing"]["train_seconds"] / 60,
               "stopped_by_guard": adversarial.get("catastrophic_overfitting") is not None,
               "recoveries": len(adversarial.get("recoveries", [])),
               **evaluate(run, args.out / f"seed-{seed}-eval", args.eps, args.examples, args.attack_flags.split())}
        done["seeds"][str(seed)] = row
        atomic_write_text(study, json.dumps(done, indent=1) + "\n")
    return report(done, seeds, args)


def report(done: dict, seeds: list[int], args: argparse.Namespace) -> int:
    """Print the table and the summary; 1 if a target is missed."""
    rows = [done["seeds"][str(seed)] for seed in seeds]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; flags: "
          f"{' '.join(done['train_flags'])}; {args.examples} test images, eps {args.eps}, "
          f"{' '.join(['--preset full', *args.attack_flags.split()])}")
    print("| seed | clean | worst case | guard | training (min) | evaluation (min) |")
    print("| ---: | ---: | ---: | --- | ---: | ---: |")
    for seed, row in zip(seeds, rows, strict=True):
        guard = "stopped" if row["stopped_by_guard"] else f"{row['recoveries']} restarts" if row["recoveries"] else "-"
        print(f"| {seed} | {row['clean']:.2%} | {row['worst_case']:.2%} | {guard} | {row['train_minutes']:.1f} | "
              f"{row['evaluation_seconds'] / 60:.1f} |")
    worst = [row["worst_case"] for row in rows]
    spread = statistics.stdev(worst) if len(worst) > 1 else 0.0
    print(f"mean {statistics.mean(worst):.2%}, standard deviation {100 * spread:.2f} points, range "
          f"{min(worst):.2%} to {max(worst):.2%}; worst seed {seeds[worst.index(min(worst))]}")
    missed = [seed for seed, row in zip(seeds, rows, strict=True)
              if row["worst_case"] < args.target or row["clean"] < args.clean or row["train_minutes"] > args.minutes]
    if missed:
        print(f"targets missed by seed(s) {', '.join(map(str, missed))} (worst case >= {args.target:.1%}, clean >= "
              f"{args.clean:.0%}, training <= {args.minutes:g} min)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
