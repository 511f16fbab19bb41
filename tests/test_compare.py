"""`imgclf run --adversarial` end to end, and `imgclf compare` of a standard and a robust run."""

import json

import pytest

from imgclf.cli import main

COMMON = ["--dataset", "digits", "--epochs", "4", "--batch-size", "32", "--eps", "0,0.1,0.2", "--n-examples", "120",
          "--attack", "pgd", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    assert main(["run", *COMMON, "--out", str(root / "standard")]) == 0
    assert main(["run", *COMMON, "--adversarial", "pgd", "--adv-eps", "0.1", "--adv-steps", "3",
                 "--out", str(root / "robust")]) == 0
    corruptions = ["--corruptions", "noise,fog", "--severities", "2,4", "--corruption-examples", "80", "--quiet"]
    assert main(["corrupt", str(root / "standard"), *corruptions]) == 0
    assert main(["corrupt", str(root / "robust"), *corruptions, "--baseline", str(root / "standard")]) == 0
    return root


def test_adversarial_run_records_its_training_and_robust_history(runs):
    metrics = json.loads((runs / "robust" / "metrics.json").read_text())
    adversarial = metrics["training"]["adversarial"]
    assert adversarial["recipe"] == "pgd" and adversarial["eps"] == 0.1 and adversarial["norm"] == "linf"
    assert 0 < adversarial["best_robust_val_accuracy"] <= 1 and adversarial["catastrophic_overfitting"] is None
    header = (runs / "robust" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"robust_val_accuracy", "train_eps"} <= set(header) and "fgsm_val_accuracy" not in header
    html = (runs / "robust" / "report.html").read_text()
    assert "Adversarial training (pgd, L-inf eps 0.1" in html
    standard = json.loads((runs / "standard" / "metrics.json").read_text())
    assert standard["training"]["adversarial"] is None


def test_compare_puts_both_runs_in_one_report(runs, capsys):
    out = runs / "both"
    assert main(["compare", str(runs / "standard"), str(runs / "robust"), "--out", str(out)]) == 0
    assert str(out / "compare.html") in capsys.readouterr().out
    summary = json.loads((out / "comparison.json").read_text())["runs"]
    assert [row["training"] for row in summary] == ["standard", "pgd at eps 0.1"]
    for row, name in zip(summary, ("standard", "robust"), strict=True):
        saved = json.loads((runs / name / "metrics.json").read_text())
        rows = saved["evaluations"][-1]["robustness"]
        worst = {str(r["eps"]): r["accuracy"] for r in rows if r["attack"] == "worst-case"}
        assert row["worst_case_robust_accuracy"] == worst and row["test_accuracy"] == saved["clean"]["accuracy"]
        assert row["ece"] == saved["calibration"]["test"]["ece"]
        assert row["ece_temperature_scaled"] == saved["calibration"]["test_scaled"]["ece"]
        assert row["mean_corruption_error"] == saved["corruptions"]["mean_error"]
        assert row["mce"] == saved["corruptions"]["mce"]  # None for the standard run, its own baseline-less one
    robust_gain = summary[1]["worst_case_robust_accuracy"]["0.1"] - summary[0]["worst_case_robust_accuracy"]["0.1"]
    assert robust_gain > 0.1  # the robust run is more robust, as the report shows
    html = (out / "compare.html").read_text()
    table = html[html.index("<h2>Metrics</h2>"):]
    assert table[:table.index("</table>")].count("<tr><td><code>") == 2  # one row per run
    assert "robust acc. eps 0.2" in html and "ECE (after temperature" in html and "mean corruption error" in html
    assert summary[1]["mce"] > 0 and f"{100 * summary[1]['mce']:.2f}% (standard)" in html
    assert (out / "figures" / "robustness.png").stat().st_size > 0 and (out / "figures" / "validation.png").is_file()
    # the settings that differ, one column per run; the shared ones are left out
    differing = html[html.index("<h2>Settings that differ</h2>"):html.index("<h2>Accuracy against eps</h2>")]
    assert "<code>adversarial.recipe</code></td><td><code>none</code></td><td><code>pgd</code>" in differing
    assert differing.count("<tr><td>") == 3 and "train.epochs" not in differing  # recipe, eps, steps
    assert "Different data sets" not in html


def test_compare_refuses_runs_of_different_data_sets_unless_allowed(runs, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(runs / "standard", other)
    metrics = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps({**metrics, "dataset": "mnist"}))
    assert main(["compare", str(runs / "standard"), str(other), "--out", str(tmp_path / "no")]) == 2
    assert "different data sets (digits, mnist)" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert main(["compare", str(runs / "standard"), str(other), "--out", str(tmp_path / "yes"),
                 "--allow-different-data"]) == 0
    assert "<strong>Different data sets:</strong>" in (tmp_path / "yes" / "compare.html").read_text()


def test_compare_refuses_bad_input_without_writing(runs, capsys):
    assert main(["compare", str(runs / "standard"), "--out", str(runs / "one")]) == 2
    assert "at least two run folders" in capsys.readouterr().err
    assert main(["compare", str(runs / "standard"), str(runs / "missing"), "--out", str(runs / "bad")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (runs / "one").exists() and not (runs / "bad").exists()
    assert main(["compare", str(runs / "standard"), str(runs / "robust"), "--out", str(runs / "robust")]) == 2
    assert "never overwrites" in capsys.readouterr().err


def test_compare_from_python_is_a_table_in_jupyter(runs):
    import imgclf

    compared = imgclf.compare_runs([runs / "standard", runs / "robust"], runs / "python")
    assert compared.path == runs / "python" / "compare.html" and str(compared) == str(compared.path)
    html = compared._repr_html_()
    accuracy = compared.runs[1]["worst_case_robust_accuracy"][0.1]
    assert "2 runs compared" in html and "worst case at eps 0.1" in html and f"{accuracy:.4f}" in html


def test_a_small_gap_between_one_epoch_runs_does_not_fill_the_axes():
    """Two one-epoch runs 0.14 points apart: the validation figure spans at least 10 points of accuracy."""
    from pathlib import Path

    from imgclf.record import Metrics
    from imgclf.report.compare import MIN_ACCURACY_SPAN, ComparedRun, validation_comparison

    runs = [ComparedRun(name, Path(name), Metrics(), [{"epoch": 1, "val_accuracy": accuracy}], False, "")
            for name, accuracy in (("a", 0.9812), ("b", 0.9826))]
    low, high = validation_comparison(runs).axes[0].get_ylim()
    assert high - low >= MIN_ACCURACY_SPAN - 1e-9 and low <= 0.9812 and high >= 0.9826 and high <= 1.0
