"""Robustness evaluations survive kill -9 (per-batch commits) and are shared by processes under torchrun, ending
with exactly the numbers of one uninterrupted process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import needs_gloo
from imgclf.cli import main
from imgclf.stages.attack import BatchFiles

ATTACK = ["--attack", "pgd,apgd-ce", "--eps", "0.05,0.1", "--attack-batch-size", "16"]
#: The converging plan after PGD: its escalations are dealt the examples still standing as it goes, so a
#: resumed plan must rebuild the same decisions from the committed units.
PLAN = ["--attack", "pgd,plan", "--eps", "0.1", "--attack-batch-size", "16"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--epochs", "2", "--out", str(run), "--quiet"]) == 0
    return run


def _evaluation(run):
    (evaluation,) = json.loads((run / "metrics.json").read_text())["evaluations"]
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in evaluation["robustness"]]
    checks = [(c["name"], c["status"], c["detail"]) for c in evaluation["attack"]["checks"]]
    checks += [(o["eps"], o["converged"], o["reason"], [{k: v for k, v in step.items() if k != "seconds"}
                                                         for step in o["steps"]]) for o in evaluation["attack"]["plan"]]
    saved = torch.load(run / "evaluations" / evaluation["key"] / "adversarial.pt", weights_only=True)
    return evaluation["key"], rows, checks, saved


def _same(first, second):
    (key, rows, checks, saved), (key2, rows2, checks2, saved2) = first, second
    assert key == key2 and rows == rows2 and checks == checks2
    assert all(torch.equal(saved[k], saved2[k]) for k in ("images", "fooled", "fooled_by", "test_positions"))


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


@pytest.mark.parametrize("attack", [ATTACK, PLAN], ids=["attacks", "plan"])
def test_an_evaluation_killed_mid_way_continues_to_the_uninterrupted_numbers(digits_run, tmp_path, attack):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    shutil.copytree(digits_run, reference)
    shutil.copytree(digits_run, stopped)
    command = [sys.executable, "-m", "imgclf", "attack", *attack, "--quiet"]
    assert subprocess.run([*command, str(reference)], env=_env(1), timeout=600).returncode == 0
    process = subprocess.Popen([*command, str(stopped)], env=_env(1), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if len(list(stopped.glob("evaluations/*/batches/*.pt"))) >= (12 if attack is ATTACK else 40):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # part-way: no chance to clean up
    process.wait()
    committed = list(stopped.glob("evaluations/*/batches/*.pt"))
    assert len(committed) >= 12 and "evaluations" not in json.loads((stopped / "metrics.json").read_text())
    for unit in committed:  # every committed unit is whole (atomic writes)
        assert set(BatchFiles(unit.parent).load(unit.stem)) >= {"hit", "keep", "adv", "forwards"}
    # Damage two units: zeroed bytes inside one (a bad disk block), an empty result with a valid checksum in
    # the other. Neither is trusted: both are run again.
    damaged = bytearray(committed[0].read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 64] = bytes(64)
    committed[0].write_bytes(bytes(damaged))
    assert BatchFiles(committed[0].parent).load(committed[0].stem) is None
    BatchFiles(committed[1].parent).save(committed[1].stem, {})
    done = subprocess.run([*command[:-1], str(stopped)], env=_env(1), timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(committed)} batch(es) were committed before it stopped" in done.stdout
    _same(_evaluation(reference), _evaluation(stopped))
    assert not list(stopped.glob("evaluations/*/batches"))  # cleared once the evaluation is saved whole


@needs_gloo
@pytest.mark.parametrize("attack", [ATTACK, PLAN], ids=["attacks", "plan"])
def test_two_gloo_processes_share_an_evaluation_and_merge_it_into_one_processs_numbers(digits_run, tmp_path, attack):
    single, double = tmp_path / "single", tmp_path / "double"
    shutil.copytree(digits_run, single)
    shutil.copytree(digits_run, double)
    command = ["-m", "imgclf", "attack", *attack, "--quiet"]
    assert subprocess.run([sys.executable, *command, str(single)], env=_env(1), timeout=600).returncode == 0
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *command, str(double)], env=_env(1), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    _same(_evaluation(single), _evaluation(double))
    (evaluation,) = json.loads((double / "metrics.json").read_text())["evaluations"]
    assert evaluation["processes"] == 2
    log = (double / "log.txt").read_text()
    assert log.count("sanity checks:") == 1  # only rank 0 writes
    assert "2 processes shared the work" in (double / "report.html").read_text()


def test_a_cascade_finds_the_same_worst_case_for_less_work(digits_run):
    from imgclf import Run
    from imgclf.attacks import AttackSpec, robustness

    run = Run.open(digits_run, quiet=True)
    images, labels = run.data.test.float_images(list(range(120))), run.data.test.labels[:120]
    results = {cascade: robustness(run.model, images, labels, attacks=[AttackSpec("fgsm"), AttackSpec("pgd", steps=10)],
                                   eps_values=[0.1, 0.2], device=torch.device("cpu"), batch_size=32, cascade=cascade)
               for cascade in (False, True)}
    for eps in (0.1, 0.2):
        alone = {e.attack: e for e in results[False].entries if e.eps == eps}
        cascade = {e.attack: e for e in results[True].entries if e.eps == eps}
        assert cascade["fgsm"].accuracy == alone["fgsm"].accuracy  # the first attack runs on everything
        assert cascade["pgd"].accuracy == cascade["worst-case"].accuracy <= cascade["fgsm"].accuracy  # cumulative
        assert abs(cascade["worst-case"].accuracy - alone["worst-case"].accuracy) <= 0.02
        assert cascade["pgd"].attacked < alone["pgd"].attacked and cascade["pgd"].backwards < alone["pgd"].backwards
    names = {c["name"]: c for c in results[True].checks}
    assert names["pgd beats fgsm"]["detail"].startswith("probe")  # cumulative rows cannot compare the two
