"""Benchmark: the from-scratch NumPy MLP on Fashion-MNIST, on pixels and on CNN features.

Targets (issue "the foundations"), on this 2-core CPU, one hidden
layer of 128:

* on Fashion-MNIST pixels: test accuracy >= 0.88, training in under 5 minutes;
* on the penultimate features of a trained ``cnn``: test accuracy >= 0.90, in under 5 minutes.

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/numpy_mlp.py [--cnn-run runs/fm-cnn]

Without ``--cnn-run`` the features part first trains ``cnn`` (dropout 0.1, 12
epochs, about 7 minutes here) with ``imgclf train``. Every step goes through the
installed ``imgclf`` command. Prints one row per job and exits 1 if a target is missed;
the times are ``timing.train_seconds`` (the MLP's training, validation included) and
the whole command's wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_SECONDS = 300


def imgclf(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "imgclf", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cnn-run", type=Path, help="a cnn run folder trained on fashion-mnist (default: train one)")
    args = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cnn = args.cnn_run
        if cnn is None:
            cnn = tmp / "cnn"
            imgclf("train", "--dataset", "fashion-mnist", "--model", "cnn", "--model-option", "dropout=0.1",
                   "--epochs", "12", "--out", str(cnn), "--quiet")
        imgclf("features", str(cnn), "--out", str(tmp / "features.npz"))
        jobs = [("pixels", ["--dataset", "fashion-mnist"], 0.88),
                ("cnn features", ["--features", str(tmp / "features.npz")], 0.90)]
        print(f"{'inputs':<14} {'wall s':>7} {'train s':>8} {'test accuracy':>14}  target")
        for name, inputs, floor in jobs:
            out = tmp / name.replace(" ", "-")
            wall = imgclf("mlp-numpy", *inputs, "--out", str(out), "--quiet")
            metrics = json.loads((out / "metrics.json").read_text())
            train, accuracy = metrics["timing"]["train_seconds"], metrics["clean"]["accuracy"]
            ok = accuracy >= floor and train < LIMIT_SECONDS
            print(f"{name:<14} {wall:>7.1f} {train:>8.1f} {accuracy:>14.4f}  >= {floor} in < {LIMIT_SECONDS} s: "
                  f"{'met' if ok else 'MISSED'}")
            if not ok:
                failures.append(name)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
