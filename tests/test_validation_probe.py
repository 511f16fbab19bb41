"""bench/validation_probe.py: held-out validation images for comparing recipes and seeds."""

import importlib.util
import re

import numpy as np

from conftest import ROOT
from imgclf.cli import main
from imgclf.data.loading import stratified_subset


def _probe_module():
    spec = importlib.util.spec_from_file_location("validation_probe", ROOT / "bench" / "validation_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probe_leaves_out_the_robust_validation_subset_and_is_stratified():
    probe = _probe_module()
    labels = np.repeat(np.arange(10), 120)
    rows = probe.probe_rows(labels, excluded=300, seed=3, examples=500)
    assert len(rows) == len(set(rows)) == 500
    assert not set(rows) & set(stratified_subset(labels, 300, 3).tolist())
    assert np.bincount(labels[rows], minlength=10).tolist() == [50] * 10
    assert rows.tolist() == probe.probe_rows(labels, excluded=300, seed=3, examples=500).tolist()
    assert len(probe.probe_rows(labels, excluded=300, seed=3, examples=5000)) == 900  # all that are left


def test_the_probe_attacks_a_trained_run_and_refuses_a_folder_that_is_not_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--adversarial", "fgsm-rs", "--adv-eps", "0.1",
                 "--robust-val-examples", "100", "--out", str(run), "--quiet"]) == 0
    probe = _probe_module()
    assert probe.main([str(run), "--eps", "0.1", "--examples", "30"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]  # after the run folder that train printed
    found = re.fullmatch(r".*: 30 validation images, clean (\S+), APGD-CE (\S+), then Square: worst case (\S+) "
                         r"at eps 0.1 \(\d+ s\)", line)
    assert found, line
    clean, apgd, worst = map(float, found.groups())
    assert 0 <= worst <= apgd <= clean <= 1
    other = tmp_path / "other"  # another seed: the last line names the run with the higher worst case
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--adversarial", "fgsm-rs", "--adv-eps", "0.1",
                 "--robust-val-examples", "100", "--seed", "1", "--out", str(other), "--quiet"]) == 0
    capsys.readouterr()
    assert probe.main([str(run), str(other), "--eps", "0.1", "--examples", "30"]) == 0
    *lines, last = capsys.readouterr().out.strip().splitlines()
    worsts = {line.split(": ")[0]: float(re.search(r"worst case (\S+)", line).group(1)) for line in lines}
    best = max(worsts, key=worsts.__getitem__)
    assert last == f"highest worst case: {best} ({worsts[best]:.4f}, of 2 runs)"
    assert probe.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_the_probe_says_so_when_robust_validation_used_every_validation_image(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--adversarial", "fgsm-rs", "--adv-eps", "0.1",
                 "--out", str(run), "--quiet"]) == 0  # 1,000 robust validation examples: all of digits' val split
    assert _probe_module().main([str(run), "--eps", "0.1", "--examples", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert "none is left to probe" in err and "\n" not in err
