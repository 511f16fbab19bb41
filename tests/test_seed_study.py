"""bench/seed_study.py, a recipe across seeds under the full ensemble, checked at a tiny scale on digits."""

import json
import os
import subprocess
import sys

from conftest import ROOT

TRAIN = ["--", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--adversarial", "fgsm-rs", "--adv-eps",
         "0.1", "--robust-val-examples", "16"]


def _study(out, *extra, train=TRAIN):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "seed_study.py"), "--out", str(out), "--seeds", "0,1",
                           "--eps", "0.1", "--examples", "12", "--attack-flags", "--queries 20", "--target", "0",
                           "--clean", "0", *extra, *train], env=env, capture_output=True, text=True, timeout=900)


def test_the_seed_study_evaluates_every_seed_on_the_same_images_and_resumes(tmp_path):
    out = tmp_path / "study"
    done = _study(out)
    assert done.returncode == 0, done.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    assert set(study["seeds"]) == {"0", "1"} and all(row["n"] == 12 for row in study["seeds"].values())
    for seed in (0, 1):
        assert "seed: 0" in (out / f"seed-{seed}-eval" / "config.yaml").read_text()  # the same test subset
        assert f"seed: {seed}" in (out / f"seed-{seed}" / "config.yaml").read_text()
    assert "| 0 |" in done.stdout and "| 1 |" in done.stdout and "mean " in done.stdout
    again = _study(out)  # finished: nothing trained or attacked again, the same table
    assert again.returncode == 0 and "imgclf train" not in again.stdout
    assert again.stdout.splitlines()[-1] == done.stdout.splitlines()[-1]
    other = _study(out, train=[*TRAIN, "--lr", "0.01"])
    assert other.returncode == 2 and "holds a study of other flags" in other.stderr


def test_a_seed_study_stopped_part_way_goes_on_and_a_missed_target_exits_1(tmp_path):
    out = tmp_path / "study"
    first = _study(out, "--seeds", "0", "--target", "1.0")  # as if stopped after seed 0
    assert first.returncode == 1 and "targets missed by seed(s) 0" in first.stdout
    done = _study(out)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = [line for line in done.stdout.splitlines() if line.startswith("$") and " train " in line]
    assert len(trained) == 1 and "--seed 1" in trained[0]
