"""Resume after kill -9 gives the weights of an uninterrupted run; two gloo processes train like one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from imgclf.checkpoint import load_model
from imgclf.cli import main

ARGS = ["--dataset", "digits", "--model", "cnn", "--epochs", "5", "--batch-size", "8", "--augment", "flip-crop",
        "--ema", "0.9", "--seed", "3"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _weights(path):
    return load_model(path).state_dict()


def test_resume_after_kill_9_gives_the_uninterrupted_weights(tmp_path):
    reference = tmp_path / "reference"
    assert main(["train", *ARGS, "--out", str(reference), "--quiet"]) == 0
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "imgclf", "train", *ARGS, "--out", str(stopped), "--quiet"],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = stopped / "train_state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # mid-epoch 2 (or later): no chance to clean up
    process.wait()
    epoch = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= epoch < 5, "the run must have been stopped part-way"
    assert main(["train", "--resume", str(stopped), "--quiet"]) == 0
    first, second = _weights(reference), _weights(stopped)
    assert all(torch.equal(first[k], second[k]) for k in first)
    history = (stopped / "history.csv").read_text().splitlines()
    assert len(history) == 6  # header and five epochs, none twice
    assert main(["train", "--resume", str(stopped), "--quiet"]) == 0  # a finished run stays as it is


def test_resume_refuses_other_settings(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--epochs", "3"]) == 2
    assert "--resume continues a run with its own config.yaml" in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_two_gloo_processes_train_like_one(tmp_path):
    common = ["--dataset", "digits", "--model", "simple-cnn", "--epochs", "8", "--quiet"]
    single = tmp_path / "single"
    assert main(["train", *common, "--batch-size", "64", "--out", str(single)]) == 0
    double = tmp_path / "double"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "imgclf", "train", *common, "--batch-size", "32", "--out", str(double)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = (json.loads((d / "metrics.json").read_text())["training"] for d in (single, double))
    assert two["processes"] == 2 and one["processes"] == 1
    assert one["best_val_accuracy"] > 0.9 and abs(one["best_val_accuracy"] - two["best_val_accuracy"]) < 0.04
    log = (double / "log.txt").read_text()
    assert log.count("epoch   8/8") == 1  # only rank 0 writes
