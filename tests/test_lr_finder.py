"""The learning-rate range test: its curve, its suggestion, `imgclf lr-find` and `--lr auto`."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from imgclf.checkpoint import load_model
from imgclf.cli import main
from imgclf.config import DataConfig, TrainConfig
from imgclf.data import load_data
from imgclf.errors import UsageError
from imgclf.lr_finder import lr_range_test, running_median, suggest
from imgclf.models import create_model


def test_running_median_matches_a_direct_median_of_each_window():
    values = np.random.default_rng(0).normal(size=41)
    values[[5, 30]] = [40.0, -40.0]  # spikes the median ignores
    window = 7
    padded = [values[0]] * 3 + list(values) + [values[-1]] * 3
    expected = [statistics.median(padded[i:i + window]) for i in range(len(values))]
    assert np.allclose(running_median(values, window), expected)


def test_the_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = 1e-7 * (1e8) ** (np.arange(100) / 99)  # 1e-7 .. 10
    x = np.log10(lrs)
    falling = 2.3 - 1.8 / (1 + np.exp(-(x + 3) * 4))  # steepest at lr 1e-3
    curve = falling + np.where(x > -1, (x + 1) * 30, 0)  # then it explodes above lr 0.1
    assert suggest(lrs, curve) == pytest.approx(1e-3, rel=0.25)
    with pytest.raises(UsageError, match="the loss did not fall"):
        suggest(lrs, np.linspace(2.0, 3.0, 100))  # only rising


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


def test_the_range_test_trains_at_each_rate_of_the_sweep_until_the_loss_diverges(digits):
    torch.manual_seed(0)
    model = create_model("simple-cnn", channels=1, image_size=(8, 8), num_classes=10, mean=digits.spec.mean,
                         std=digits.spec.std)
    used: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: used.append(optimizer.param_groups[0]["lr"]))
    try:
        found = lr_range_test(model, digits, TrainConfig(), augment="none", device=torch.device("cpu"), seed=0,
                              start_lr=1e-6, end_lr=100.0, steps=60)
    finally:
        hook.remove()
    assert used == pytest.approx(found.lrs)  # the optimizer stepped at exactly the recorded rates
    assert np.allclose(np.diff(np.log(found.lrs)), np.log(1e8) / 59)  # geometric, 1e-6 to 100 in 60 steps
    assert found.stopped == "reached end_lr" and len(found.lrs) == 60  # AdamW's steps are bounded: no explosion
    assert found.lrs[0] < found.suggestion < found.minimum_lr
    assert np.allclose(found.smoothed, running_median(np.asarray(found.losses), 5), equal_nan=True)
    sgd = lr_range_test(model, digits, TrainConfig(optimizer="sgd"), augment="none", device=torch.device("cpu"),
                        seed=0, start_lr=1e-3, end_lr=1e4, steps=40)
    assert sgd.stopped.startswith("loss diverged at lr") and len(sgd.lrs) < 40  # SGD's steps are not
    with pytest.raises(UsageError, match="0 < start lr < end lr"):
        lr_range_test(model, digits, TrainConfig(), augment="none", device=torch.device("cpu"), seed=0,
                      start_lr=1.0, end_lr=0.1)


def test_lr_auto_trains_as_the_suggested_lr_would_and_records_it(tmp_path, capsys):
    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    assert main(["train", "--lr", "auto", "--epochs", "2", "--out", str(auto)]) == 0
    out = capsys.readouterr().out
    record = json.loads((auto / "metrics.json").read_text())["lr_finder"]
    assert f"--lr auto: lr {record['suggestion']:.3g}" in out
    assert f"  lr: {record['suggestion']!r}" in (auto / "config.yaml").read_text()  # the rate used, not "auto"
    assert (auto / "lr_find.csv").read_text().startswith("lr,loss,smoothed\n")
    assert main(["train", "--lr", repr(record["suggestion"]), "--epochs", "2", "--out", str(fixed), "--quiet"]) == 0
    first, second = load_model(auto).state_dict(), load_model(fixed).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)  # the test ran on a copy: same start, same run
    assert main(["report", str(auto)]) == 0
    html = (auto / "report.html").read_text()
    assert f"suggested lr {record['suggestion']:.3g}" in html and (auto / "figures" / "lr_find.png").is_file()


def test_lr_find_writes_its_figure_and_curve_and_never_replaces_a_file(tmp_path, capsys):
    figure = tmp_path / "lr.png"
    assert main(["lr-find", "--steps", "40", "--out", str(figure)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits: 1150 train images") and "suggested lr" in out
    assert figure.read_bytes().startswith(b"\x89PNG") and len((tmp_path / "lr.csv").read_text().splitlines()) > 10
    assert main(["lr-find", "--steps", "40", "--out", str(figure)]) == 2
    assert "lr.png and " in capsys.readouterr().err
    assert main(["lr-find", "--out", str(tmp_path / "lr.pdf")]) == 2
    assert "--out names the figure, a .png file" in capsys.readouterr().err
    assert main(["train", "--lr", "sometimes"]) == 2
    assert "must be a number > 0, or 'auto', got 'sometimes'" in capsys.readouterr().err
