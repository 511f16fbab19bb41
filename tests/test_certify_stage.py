"""``imgclf certify`` end to end on a model trained with Gaussian noise: the bracket recorded and reported, reused
and accumulated like robustness evaluations, the radius cap warned about, a killed certification resumed to the
uninterrupted numbers, two gloo processes merged into one process's numbers, and ``compare``'s columns."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import needs_gloo
from imgclf.cli import main

CERTIFY = ["--n-samples", "2000", "--certify-examples", "150", "--radii", "0,0.1,0.3", "--smooth-adv-n", "200"]


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """Digits, the default CNN, 3 epochs with Gaussian-noise augmentation at sigma 0.25."""
    run = tmp_path_factory.mktemp("runs") / "noisy"
    assert main(["train", "--epochs", "3", "--augment", "gaussian-noise:sigma=0.25", "--out", str(run),
                 "--quiet"]) == 0
    return run


def _certifications(run):
    return json.loads((run / "metrics.json").read_text()).get("certifications", [])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_certify_records_the_bracket_reports_it_and_reuses_it(noisy_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(noisy_run, run)
    assert main(["certify", str(run), *CERTIFY]) == 0
    out = capsys.readouterr().out
    (done,) = _certifications(run)
    rows = done["rows"]
    assert [row["radius"] for row in rows] == [0.0, 0.1, 0.3] and done["n"] == 150 and done["samples"] == 2000
    certified = [row["certified"] for row in rows]
    assert certified == sorted(certified, reverse=True) and certified[0] > 0.5  # a model that learnt something
    for row in rows:  # certified <= true <= SmoothAdv's, up to the Monte Carlo noise of 150 examples
        assert row["certified"] <= row["smoothed_attack"] + 0.02
        assert 0 <= row["base_attack"] <= 1
    assert done["forwards_per_example"] >= 2100 and done["backwards_per_example"] > 0
    assert "smoothed classifier at L2 radius 0.1: between" in out
    arrays = np.load(run / "certifications" / done["key"] / "certificates.npz")
    assert arrays["radius"].shape == (150,) and (arrays["radius"] <= done["max_radius"] + 1e-9).all()
    assert ((arrays["prediction"] == arrays["labels"]) & (arrays["radius"] >= 0.1)).mean() == pytest.approx(
        certified[1])
    report = (run / "report.html").read_text()
    assert '<h2 id="certified">Certified robustness</h2>' in report and "(certified) and" in report
    assert f"certified L2 accuracy at radius 0.3 (sigma 0.25)</div><div class=\"value\">{100 * certified[2]:.2f}%" \
        in report  # a headline card
    assert not list(run.glob("certifications/*/batches"))  # cleared once saved whole
    # The same settings again: reused, not run again; another sigma: added beside it.
    assert main(["certify", str(run), *CERTIFY]) == 0
    assert "reusing the certification" in capsys.readouterr().out and len(_certifications(run)) == 1
    assert main(["certify", str(run), *CERTIFY, "--sigma", "0.5", "--no-certify-attack"]) == 0
    assert "trained with Gaussian noise of sigma 0.25, and is certified at sigma 0.5" in capsys.readouterr().err
    first, second = _certifications(run)
    assert first == done and second["sigma"] == 0.5 and second["rows"][0]["smoothed_attack"] is None


def test_a_radius_beyond_what_n_and_alpha_allow_is_warned_about_before_the_work(noisy_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(noisy_run, run)
    # n 100, alpha 0.001, sigma 0.25: no radius above 0.25 * Phi^-1(0.001 ** (1 / 100)) = 0.25 * 1.5005 = 0.3751
    assert main(["certify", str(run), "--n", "100", "--n-examples", "20", "--radii", "0,0.5",
                 "--no-certify-attack"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("no radius above 0.3751 can be certified") == 1
    assert captured.out.index("randomized smoothing") < captured.out.index("at L2 radius 0.5")
    (done,) = _certifications(run)
    assert done["rows"][1]["certified"] == 0.0 and "no radius above" in done["warnings"][0]


def test_bad_certify_settings_get_one_line_naming_the_flag(noisy_run, capsys):
    for flags, expected in [(["--alpha", "0.5"], "--alpha must be a number in (0, 0.5)"),
                            (["--radii", "0,-0.1"], "--radii must be one or more L2 radii >= 0"),
                            (["--sigma", "0"], "--sigma must be a number > 0"),
                            (["--n", "0"], "--n must be an integer in [1,")]:
        assert main(["certify", str(noisy_run), *flags]) == 2
        error = capsys.readouterr().err
        assert expected in error and error.count("\n") == 1


def test_a_certification_killed_mid_way_continues_to_the_uninterrupted_numbers(noisy_run, tmp_path):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    shutil.copytree(noisy_run, reference)
    shutil.copytree(noisy_run, stopped)
    command = [sys.executable, "-m", "imgclf", "certify", *CERTIFY, "--quiet"]
    assert subprocess.run([*command, str(reference)], env=_env(), timeout=600).returncode == 0
    process = subprocess.Popen([*command, str(stopped)], env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if list(stopped.glob("certifications/*/batches/*.pt")):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = list(stopped.glob("certifications/*/batches/*.pt"))
    assert committed and not _certifications(stopped)
    done = subprocess.run([*command[:-1], str(stopped)], env=_env(), timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(committed)} unit(s) were committed before it stopped" in done.stdout
    assert _bracket(reference) == _bracket(stopped)


def _bracket(run):
    (done,) = _certifications(run)
    arrays = np.load(run / "certifications" / done["key"] / "certificates.npz")
    return (done["key"], done["rows"], done["violations"],
            {key: arrays[key].tolist() for key in ("prediction", "p_lower", "radius", "smoothed_correct")})


@needs_gloo
def test_two_gloo_processes_share_a_certification_and_merge_it_into_one_processs_numbers(noisy_run, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    shutil.copytree(noisy_run, single)
    shutil.copytree(noisy_run, double)
    command = ["-m", "imgclf", "certify", *CERTIFY, "--quiet"]
    assert subprocess.run([sys.executable, *command, str(single)], env=_env(), timeout=600).returncode == 0
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *command, str(double)], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _bracket(single) == _bracket(double)
    assert _certifications(double)[0]["processes"] == 2


def test_compare_shows_certified_accuracy_at_the_radii_the_runs_share(noisy_run, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for run, radii in ((first, "0,0.1,0.3"), (second, "0,0.3")):
        shutil.copytree(noisy_run, run)
        assert main(["certify", str(run), "--n", "200", "--certify-examples", "20", "--radii", radii,
                     "--no-certify-attack", "--quiet"]) == 0
    assert main(["compare", str(first), str(second), "--out", str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "certified acc. L2 0.3" in page and "certified acc. L2 0.1" not in page
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]
    assert set(summary[0]["certified_accuracy"]) == {"0.0", "0.1", "0.3"} and summary[1]["certified_sigma"] == 0.25


def test_a_damaged_certificates_file_is_one_clear_error_in_the_report(noisy_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(noisy_run, run)
    assert main(["certify", str(run), "--n", "200", "--certify-examples", "20", "--no-certify-attack", "--quiet"]) == 0
    (done,) = _certifications(run)
    file = run / "certifications" / done["key"] / "certificates.npz"
    np.savez(file, radius=np.zeros((3, 3)), prediction=np.zeros(5), labels=np.zeros(2))  # shapes that disagree
    assert main(["report", str(run)]) == 2
    error = capsys.readouterr().err
    assert "certificates.npz" in error and "Traceback" not in error


def test_the_python_api_brackets_a_model_without_a_run_folder():
    from imgclf.certification import CertificationResult, certify

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    torch.manual_seed(0)
    images, labels = torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,))
    result = certify(model, images, labels, sigma=0.25, radii=[0.2, 0], n=200, attack_n=100, seed=1)
    assert isinstance(result, CertificationResult) and [row.radius for row in result.rows] == [0.0, 0.2]
    assert result.forwards_per_example >= 300 and "<table>" in result._repr_html_()
    again = certify(model, images, labels, sigma=0.25, radii=[0, 0.2], n=200, attack_n=100, seed=1)
    assert np.array_equal(result.certificates.radius, again.certificates.radius)  # seeded
    with pytest.raises(ValueError, match="radii must be"):
        certify(model, images, labels, radii=[-1.0])
    with pytest.raises(ValueError, match="12 images but 3 labels"):
        certify(model, images, labels[:3])
    with pytest.raises(ValueError, match="no images to certify"):
        certify(model, images[:0], labels[:0])


def test_a_run_trained_with_gaussian_noise_names_the_command_that_certifies_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "--epochs", "1", "--augment", "gaussian-noise:sigma=0.5", "--attack", "fgsm", "--eps",
                 "0,0.1", "--n-examples", "20", "--corruption-stage", "off", "--out", str(run)]) == 0
    assert f"imgclf certify {run} --sigma 0.5 gives its certified L2 accuracy" in capsys.readouterr().out
