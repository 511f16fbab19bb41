"""bench/gpu_suite.py, the GPU rows of the published anchors, checked on the CPU at its tiny scale."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import ROOT, shared_data


def _cifar_like(parent: Path) -> Path:
    """A 32x32 colour image folder of 10 classes x 16 images (the class is the brightest region)."""
    rng = np.random.default_rng(0)
    root = parent / "cifar-like"
    for k in range(10):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(16):
            array = rng.integers(0, 80, size=(32, 32, 3), dtype=np.uint8)
            array[3 * k:3 * k + 3] += 170
            Image.fromarray(array).save(root / f"class{k}" / f"{i}.png")
    return root


def test_the_gpu_suite_runs_every_part_on_the_cpu_at_its_tiny_scale(tmp_path):
    mnist = shared_data("MNIST").parent
    out = tmp_path / "suite"
    env = {**os.environ, "IMGCLF_DATA_DIR": str(mnist), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--scale", "tiny", "--device", "cpu",
                           "--cifar", str(_cifar_like(tmp_path)), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "gpu-suite.json").read_text())
    assert [row["part"] for row in rows] == ["fast", "fgsm-rs", *["single-step"] * 2, "mnist", "mnist",
                                             *["paths"] * 5, "certify"]
    fast = rows[0]
    assert fast["first_epoch_seconds"] > 0 and len(fast["test_accuracy"]) == 1 and fast["target"] == 0.94
    for row in rows[1:6]:
        assert 0 <= row["robust_accuracy"] <= row["clean_accuracy"] <= 1 and row["n"] == 8
        assert row["train_seconds"] > 0
    assert [row["recipe"] for row in rows[1:6]] == ["fgsm-rs-cifar10", "n-fgsm", "gradalign", "pgd-mnist",
                                                   "trades-mnist"]
    assert all(row["recoveries"] >= 0 for row in rows[2:4])
    assert [row["path"] for row in rows[6:11]] == ["fp32", "bf16", "fp16 + gradient scaler", "bf16 + channels-last",
                                                   "bf16 + channels-last + compile"]
    assert all(row["images_per_second"] > 0 and 0 <= row["test_accuracy"] <= 1 for row in rows[6:11])
    certified = rows[11]
    assert certified["n"] == 8 and certified["samples"] == 200 and set(certified["certified"]) == {
        "0.0", "0.25", "0.5", "0.75"}
    assert all(0 <= value <= 1 for value in certified["certified"].values())
    assert "$ " + sys.executable + " -m imgclf train --recipe fgsm-rs-cifar10" in done.stdout  # commands shown
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--scale", "tiny", "--device",
                            "cpu", "--out", str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists: give a new folder" in again.stderr  # never over earlier results
