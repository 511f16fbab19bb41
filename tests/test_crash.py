"""Crash consistency: ``kill -9`` at random moments of ``imgclf run`` (during an epoch, between and
during the atomic writes, during the attacks and the report). Every file of the run folder is then
either absent or complete and valid, and resuming ends with the weights of a run never stopped.

The kill moments are drawn from a seeded generator; ``IMGCLF_CRASH_KILLS=20`` tries more of them by hand.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from imgclf import record
from imgclf.run_folder import RunFolder

KILLS = int(os.environ.get("IMGCLF_CRASH_KILLS", "3"))
RUN = ["run", "--model", "mlp", "--epochs", "4", "--attack", "fgsm,pgd", "--eps", "0,0.1", "--n-examples", "60",
       "--quiet"]


def imgclf(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgclf", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def assert_every_file_complete(folder: Path) -> None:
    """Each file is absent or reads back whole (the checks of imgclf's own readers)."""
    run = RunFolder(folder)
    if (folder / record.METRICS).is_file():
        json.loads((folder / record.METRICS).read_text())
    if (folder / record.MODEL_INFO).is_file():
        json.loads((folder / record.MODEL_INFO).read_text())
    if (folder / record.WEIGHTS).is_file():
        assert all(torch.isfinite(t).all() for t in load_file(str(folder / record.WEIGHTS)).values())
    if (folder / record.TRAIN_STATE).is_file():
        state = torch.load(folder / record.TRAIN_STATE, weights_only=True)
        record.TrainState.from_dict(state, str(folder / record.TRAIN_STATE))
    run.read_csv(record.HISTORY)
    for name in (record.SPLITS, record.SAMPLES, record.ADVERSARIAL_EXAMPLES):
        arrays = run.read_arrays(name)
        assert arrays is None or all(isinstance(a, np.ndarray) for a in arrays.values())
    if (folder / record.ADVERSARIAL_IMAGES).is_file():
        torch.load(folder / record.ADVERSARIAL_IMAGES, weights_only=True)
    if (folder / record.REPORT).is_file():
        assert (folder / record.REPORT).read_text().rstrip().endswith("</html>")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("crash") / "whole"
    began = time.perf_counter()
    done = imgclf(*RUN, "--out", str(out))
    assert done.wait(timeout=600) == 0, done.communicate()
    return out, time.perf_counter() - began


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_complete_files_and_resumes_bit_identically(uninterrupted, tmp_path):
    whole, seconds = uninterrupted
    rng = random.Random(15)
    moments = sorted(rng.uniform(0.2, 1.0) * seconds for _ in range(KILLS))
    expected = load_file(str(whole / record.WEIGHTS))
    for k, moment in enumerate(moments):
        out = tmp_path / f"killed-{k}"
        process = imgclf(*RUN, "--out", str(out))
        time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        if not out.exists():
            continue  # killed before the folder was made
        assert_every_file_complete(out)
        if (out / record.TRAIN_STATE).is_file():
            resumed = imgclf("train", "--resume", str(out), "--quiet")
            assert resumed.wait(timeout=600) == 0, resumed.communicate()
            assert not list(out.glob(".*.tmp"))
            weights = load_file(str(out / record.WEIGHTS))
            assert all(torch.equal(weights[key], expected[key]) for key in expected), f"kill at {moment:.1f} s"
            finish = imgclf("report", str(out))
            assert finish.wait(timeout=600) == 0, finish.communicate()
        assert_every_file_complete(out)
