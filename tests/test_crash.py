"""Crash consistency: ``kill -9`` at random moments of ``imgclf run`` (during an epoch, between and
during the atomic writes, during the attacks and the report). Every file of the run folder is then
either absent or complete and valid, and resuming ends with the weights of a run never stopped.

The kill moments are drawn from a seeded generator; ``IMGCLF_CRASH_KILLS=20`` tries more of them by hand.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
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


EXTEND_BASE = ["train", "--model", "mlp", "--epochs", "2", "--quiet"]


@pytest.fixture(scope="module")
def extension(tmp_path_factory) -> tuple[Path, Path, float]:
    """A finished two-epoch run, and a copy of it extended to four epochs without a stop (with its time)."""
    root = tmp_path_factory.mktemp("extend")
    base = root / "base"
    done = imgclf(*EXTEND_BASE, "--out", str(base))
    assert done.wait(timeout=600) == 0, done.communicate()
    whole = root / "whole"
    shutil.copytree(base, whole)
    began = time.perf_counter()
    done = imgclf("train", "--resume", str(whole), "--epochs", "4", "--quiet")
    assert done.wait(timeout=600) == 0, done.communicate()
    return base, whole, time.perf_counter() - began


@pytest.mark.slow
def test_kill_9_during_an_extension_resumes_to_the_weights_of_one_never_stopped(extension, tmp_path):
    """``train --resume RUN --epochs 4`` killed at random moments (``config.yaml`` already says 4 while the
    training state is still the 2-epoch run's, or the other way round), then ``train --resume RUN``."""
    base, whole, seconds = extension
    expected = load_file(str(whole / record.WEIGHTS))
    rng = random.Random(32)
    for k, moment in enumerate(sorted(rng.uniform(0.1, 1.0) * seconds for _ in range(KILLS))):
        out = tmp_path / f"killed-{k}"
        shutil.copytree(base, out)
        process = imgclf("train", "--resume", str(out), "--epochs", "4", "--quiet")
        time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert_every_file_complete(out)
        resumed = imgclf("train", "--resume", str(out), "--quiet")
        assert resumed.wait(timeout=600) == 0, resumed.communicate()
        weights = load_file(str(out / record.WEIGHTS))
        epochs = yaml.safe_load((out / record.CONFIG).read_text())["train"]["epochs"]
        if epochs == 4:  # killed after config.yaml recorded the extension: it went on to the end
            assert all(torch.equal(weights[key], expected[key]) for key in expected), f"kill at {moment:.1f} s"
        else:  # killed before: the run is the finished 2-epoch run, untouched
            assert all(torch.equal(weights[key], value) for key, value in load_file(str(base / record.WEIGHTS)).items())
        assert_every_file_complete(out)


def test_an_extension_on_a_disk_that_fills_up_resumes_to_the_weights_of_one_never_stopped(extension, tmp_path):
    """The disk fills during the first added epoch's writes (history and model written, the training state
    not): one line, and ``train --resume`` on a freed disk ends where an extension never stopped ends."""
    from test_edges import small_disk

    base, whole, _ = extension
    with small_disk(tmp_path / "small-disk", "2m") as small:
        out = small / "run"
        shutil.copytree(base, out)
        state_size = (out / record.TRAIN_STATE).stat().st_size
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        filler = small / "filler"
        filler.write_bytes(b"\0" * max(0, free - state_size // 2))  # room for small files, not for the state
        extended = imgclf("train", "--resume", str(out), "--epochs", "4", "--quiet")
        _, err = extended.communicate(timeout=600)
        assert extended.returncode == 1, err
        assert "No space left on device" in err and "imgclf train --resume" in err and "Traceback" not in err
        assert_every_file_complete(out)
        filler.unlink()
        resumed = imgclf("train", "--resume", str(out), "--quiet")
        assert resumed.wait(timeout=600) == 0, resumed.communicate()
        weights = load_file(str(out / record.WEIGHTS))
        expected = load_file(str(whole / record.WEIGHTS))
        assert all(torch.equal(weights[key], expected[key]) for key in expected)
