"""Resume after kill -9 gives the weights of an uninterrupted run; two gloo processes train like one."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import needs_gloo
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
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "--resume continues a run with its own config.yaml; drop train.lr" in capsys.readouterr().err.replace(
        "--lr", "train.lr")


def _history(run):
    lines = (run / "history.csv").read_text().splitlines()
    names = lines[0].split(",")
    return lines, [dict(zip(names, map(float, line.split(",")), strict=True)) for line in lines[1:]]


def test_a_finished_run_extends_to_more_epochs_with_a_new_schedule(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "--epochs", "3", "--attack", "fgsm", "--eps", "0.1", "--attack-examples", "60",
                 "--out", str(run), "--quiet"]) == 0
    before, _ = _history(run)
    metrics = json.loads((run / "metrics.json").read_text())
    (evaluation,) = metrics["evaluations"]
    assert evaluation["settings"]["model"] == metrics["training"]["model_fingerprint"]  # of the kept model
    assert "an earlier model" not in (run / "report.html").read_text()
    capsys.readouterr()

    assert main(["train", "--resume", str(run), "--epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert f"extending {run} from 3 to 5 epochs" in out and "a new onecycle schedule over the 2 added epochs" in out
    after, rows = _history(run)
    assert after[:4] == before and len(rows) == 5  # the history goes on
    assert rows[3]["lr"] > 10 * rows[2]["lr"]  # a second cycle, not the annealed end of the first
    extended = json.loads((run / "metrics.json").read_text())
    scores = [row["val_accuracy"] for row in rows]
    best = max(range(5), key=lambda i: (scores[i], i)) + 1  # ties go to the later epoch
    assert extended["training"]["best_epoch"] == best and extended["training"]["epochs_run"] == 5
    assert "epochs: 5" in (run / "config.yaml").read_text()
    assert "evaluating again" in out and "test: accuracy" in out
    if best > 3:  # the kept model changed: new clean metrics; the evaluation is of the earlier one, and says so
        assert extended["clean"] != metrics["clean"]
        assert extended["training"]["model_fingerprint"] != evaluation["settings"]["model"]
        assert "Of an earlier model" in (run / "report.html").read_text()

    assert main(["train", "--resume", str(run), "--epochs", "4"]) == 2
    assert "has trained 5 epochs; --epochs extends it and must be more than 5" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "5"]) == 0  # as it is: finished
    assert "finished training already (epoch 5)" in capsys.readouterr().out
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("\n  epochs: 5\n", "\n  epochs: 7\n"))  # as if stopped after 5 of 7
    state = torch.load(run / "train_state.pt", weights_only=True)
    torch.save({**state, "epochs": 7}, run / "train_state.pt")  # (the training state records the plan too)
    assert main(["train", "--resume", str(run), "--epochs", "9"]) == 2
    assert "stopped after epoch 5 of its 7; resume it to 7 first" in capsys.readouterr().err


@needs_gloo
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


@needs_gloo
def test_every_process_leaves_the_gloo_group_when_it_exits(tmp_path):
    # A gloo group left to the interpreter's teardown aborted a process now and then ("terminate called without an
    # active exception", exit -6); the group must be gone before teardown, whatever order the processes end in.
    script = tmp_path / "join.py"  # the check registered first runs last, after anything imgclf registered
    script.write_text("import atexit, os\nimport torch.distributed as d\n"  # one write per process: lines stay whole
                      "atexit.register(lambda: os.write(1, b'left\\n' if not d.is_initialized() else b'still in\\n'))\n"
                      "from imgclf.distributed import Distributed\nDistributed.from_env()\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["left", "left"], done.stdout
