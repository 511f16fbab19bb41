"""Results that show themselves in Jupyter: every result type renders as HTML with the numbers a reader looks
for (and a short text repr, not kilobytes of arrays), values are escaped, and long work shows a progress bar
in a notebook."""

from __future__ import annotations

import pytest
import torch

import imgclf
from conftest import Rounding
from imgclf.notebook import ResultHTML, Table


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A one-epoch digits run, evaluated, attacked (FGSM at eps 0.1) and corrupted (two kinds of noise)."""
    config = imgclf.load_config(None, {"train.epochs": 1, "seed": 0})
    run = imgclf.Run.train(config, out=tmp_path_factory.mktemp("runs") / "digits", quiet=True)
    evaluated = run.evaluate()
    attacked = run.attack(attacks=["fgsm"], eps="0,0.1", examples=60, minimal_norm=False)
    corrupted = run.corrupt(corruptions="gaussian-noise,shot-noise", severities="1,2", examples=40)
    return run, evaluated, attacked, corrupted


def test_every_result_of_a_run_renders_as_html_with_its_numbers(digits_run):
    run, evaluated, attacked, corrupted = digits_run
    metrics = run.metrics
    html = evaluated._repr_html_()
    assert f"top-1 accuracy {metrics.clean.accuracy:.4f}" in html and "<th>precision</th>" in html
    assert len(repr(evaluated)) < 200  # not the logits and probabilities of every test image
    html = attacked._repr_html_()
    worst = next(e for e in attacked.entries if e.attack == "worst-case" and e.eps == 0.1)
    assert f"{worst.accuracy:.4f} at eps 0.1" in html and "forward passes per example" in html
    assert "<td>0</td>" not in html.split("<tbody>")[1].split("</tbody>")[0]  # no eps-0 rows: clean is above
    assert len(repr(attacked)) < 300
    html = corrupted._repr_html_()
    assert "gaussian-noise" in html and "severity 2" in html and f"{corrupted.mean_error:.4f}" in html
    assert "CE against the baseline" not in html  # an empty column is left out
    html = metrics.calibration._repr_html_()
    assert f"{metrics.calibration.test.ece:.4f}" in html and "temperature-scaled" in html
    assert f"{metrics.calibration.test.ece:.4f}" in metrics.calibration.test._repr_html_()


def test_explanations_show_their_figure(digits_run):
    import os

    explained = digits_run[0].explain(eps=0.1, count=4)
    assert os.fspath(explained).endswith("explanations.npz") and os.path.isfile(explained)
    assert explained._repr_png_().startswith(b"\x89PNG") and len(explained.figure().axes) >= 8  # 4 images x 2+ rows


def test_a_run_opened_from_its_folder_shows_what_each_stage_found(digits_run):
    run = digits_run[0]
    again = imgclf.Run.open(run.path, quiet=True)
    html = again._repr_html_()
    metrics = again.metrics
    assert str(run.path) in html
    assert f"top-1 accuracy {metrics.clean.accuracy:.4f}" in html
    assert f"{metrics.worst_case()[-1].accuracy:.4f} at eps 0.1" in html
    assert f"mean error {metrics.corruptions.mean_error:.4f}" in html
    assert repr(again).startswith(f"Run({str(run.path)!r}, dataset='digits'")


def test_a_failed_check_is_an_alert_with_what_to_try(tmp_path):
    """A model whose gradients are masked (its input quantized, labels its own predictions) fails the checks;
    evaluate_robustness's HTML shows them as an alert, with what to try."""
    torch.manual_seed(0)
    model = Rounding(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))).eval()
    images = torch.rand(60, 1, 4, 4)
    report = imgclf.evaluate_robustness(model, images, model(images).argmax(1), attacks=["fgsm", "pgd"], eps=[0.1],
                                        minimal_norm=False, quiet=True)
    assert "gradients" in report.failed_checks
    html = report._repr_html_()
    assert "linf threat model" in html and "&#9888;" in html
    assert f"{len(report.failed_checks)} sanity check(s) failed" in html and "what to try" in html
    # in Python the advice is Python (no run folder to name in a command)
    assert any("imgclf.evaluate_robustness(model, images, labels, surrogate=stand_in)" in note
               for note in report.advice) and not any("imgclf attack" in note for note in report.advice)
    again = imgclf.evaluate_robustness(model, images, model(images).argmax(1), attacks=["fgsm"], eps=[0.1],
                                       minimal_norm=False, quiet=True, surrogate=model.inner)
    transfer = next(c for c in again.checks if c["name"] == "transfer beats the evaluation")
    assert transfer["status"] != "not run"
    assert len(repr(report)) < 400
    page = (report.save(tmp_path / "saved") / "report.html").read_text()
    top = page[:page.index('<nav class="toc"')]  # the report opens with the alert, before its contents
    assert '<div class="alert" role="alert"><strong>' in top and "gradients" in top
    # FGSM and PGD alone, no plan: the evaluation is said to be inconclusive, and the plan is what to try first
    assert "This evaluation is not conclusive.</strong> What to try:" in page and "--preset auto" in page


def test_values_are_escaped_and_empty_columns_left_out():
    shown = ResultHTML("<b>title</b>", ["<script>alert(1)</script>"],
                       [Table(["name", "empty", "value"], [["<i>a</i>", None, 0.5], ["b", "", 1.0]])]).render()
    assert "<script>" not in shown and "&lt;script&gt;" in shown and "&lt;b&gt;title" in shown
    assert "<th>empty</th>" not in shown and "<td>0.5000</td>" in shown


def test_long_work_shows_a_bar_in_a_notebook_and_nothing_in_a_log(monkeypatch):
    from tqdm import tqdm as terminal_bar

    from imgclf import runtime

    assert not runtime.in_notebook()  # pytest is not a kernel
    bar = runtime.progress(total=3)
    assert isinstance(bar, terminal_bar) and bar.disable  # the output is not a terminal: nothing is drawn
    bar.close()
    monkeypatch.setattr(runtime, "in_notebook", lambda: True)
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as notebook_bar

    bar = runtime.progress(total=3, desc="attacks")
    assert isinstance(bar, notebook_bar) and not bar.disable
    bar.close()
    assert runtime.progress(total=3, quiet=True).disable


def test_the_attack_progress_counts_each_batch_by_its_cost_and_ends_at_its_total():
    """The bar's time estimate holds: eps 0 (nothing to attack) counts nothing, a 20-step PGD batch counts 20 times
    a one-step FGSM batch, and the converging plan's growing work ends exactly at the bar's total."""
    from imgclf.attacks import AttackSpec, robustness
    from imgclf.attacks.spec import plan_specs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    images = torch.rand(48, 1, 4, 4)
    labels = model(images).argmax(1)
    ticks: list[tuple[int, int]] = []
    robustness(model, images, labels, attacks=[AttackSpec("fgsm"), AttackSpec("pgd", steps=20)],
               eps_values=[0.0, 0.05], device=torch.device("cpu"), batch_size=16, seed=0,
               progress=lambda done, total: ticks.append((done, total)))
    done = [d for d, _ in ticks]
    assert done == sorted(done) and ticks[-1][0] == ticks[-1][1]
    steps = [b - a for a, b in zip([0, *done], done, strict=False) if b > a]
    assert sorted(set(steps)) == [1, 20]  # an FGSM batch, a PGD batch (eps 0 counted nothing)
    ticks.clear()
    robustness(model, images, labels, attacks=[AttackSpec("fgsm")], eps_values=[0.0, 0.1],
               device=torch.device("cpu"), batch_size=16, seed=0, plan=plan_specs("linf"),
               progress=lambda done, total: ticks.append((done, total)))
    assert ticks[-1][0] == ticks[-1][1] > 0
