"""The command line end to end on digits, and its errors."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import Rounding, newest_evaluation
from imgclf.checkpoint import load_model
from imgclf.cli import main

FIGURES = {"training_curves", "confusion_matrix", "predictions", "robustness", "adversarial", "reliability"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["run", "--out", str(out), "--quiet"]) == 0  # the main job of the README's set-up, defaults only
    return out


def test_run_writes_every_promised_file(run_dir):
    for name in ("config.yaml", "model.safetensors", "model.json", "history.csv", "metrics.json",
                 "splits.npz", "samples.npz", "explanations.npz", "report.html", "log.txt"):
        assert (run_dir / name).is_file(), name
    (evaluation,) = (run_dir / "evaluations").iterdir()
    assert {p.name for p in evaluation.iterdir()} == {"adversarial.npz", "adversarial.pt"}
    assert {p.stem for p in (run_dir / "figures").glob("*.png")} >= FIGURES
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,train_accuracy,val_loss,val_accuracy")
    assert len(history) == 11
    assert "epoch  10/10" in (run_dir / "log.txt").read_text()


def test_run_metrics_are_complete_and_honest(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("dataset", "model", "num_classes", "class_names", "seed", "clean", "evaluations", "timing",
                "environment"):
        assert key in metrics, key
    clean = metrics["clean"]
    assert clean["accuracy"] >= 0.95
    assert clean["accuracy"] <= clean["top5_accuracy"] <= 1  # 10 classes: top-5 reported
    assert f"top-5 accuracy {clean['top5_accuracy']:.4f}" in (run_dir / "report.html").read_text()
    assert set(clean) >= {"accuracy", "macro_f1", "balanced_accuracy", "per_class", "confusion_matrix"}
    assert np.array(clean["confusion_matrix"]).shape == (10, 10)
    assert set(clean["per_class"]["3"]) == {"precision", "recall", "f1", "support"}
    ran = {"corruption_seconds"} if "corruptions" in metrics else set()  # (auto: where it costs under a fifth)
    assert set(metrics["timing"]) == {"train_seconds", "eval_seconds", "attack_seconds"} | ran
    assert {"imgclf", "torch", "torchvision", "device", "num_threads"} <= set(metrics["environment"])
    (evaluation,) = metrics["evaluations"]
    rows = evaluation["robustness"]
    plan = evaluation["attack"]["plan"]  # the default: FGSM and PGD-20 beside the converging plan
    steps = {step["attack"] for outcome in plan for step in outcome["steps"]}
    assert {"apgd-ce", "apgd-dlr", "square (1000 queries)"} <= steps
    assert {r["attack"] for r in rows} == {"fgsm", "pgd", "worst-case"} | steps
    assert sorted({r["eps"] for r in rows}) == [0, 0.05, 0.1, 0.2, 0.3]  # grey-data defaults
    acc = {(r["attack"], r["eps"]): r for r in rows}
    for r in rows:
        assert set(r) >= {"attack", "norm", "eps", "steps", "restarts", "accuracy", "success_rate", "per_class", "n"}
        assert r["n"] == evaluation["attack"]["n"] == 359  # the whole digits test split (< 1000)
        # the work done: PGD-20's 20 gradients per example at most (fooled examples are set aside)
        assert r["attack"] != "pgd" or r["eps"] == 0 or 0 < r["backwards"] <= 20 * r["attacked"] <= 20 * 359
        assert r["forwards"] >= r["backwards"]
        if r["eps"] == 0:
            assert r["accuracy"] == r["clean_accuracy"] == clean["accuracy"]
        assert acc[("pgd", r["eps"])]["accuracy"] <= acc[("fgsm", r["eps"])]["accuracy"]
        assert acc[("worst-case", r["eps"])]["accuracy"] <= acc[("pgd", r["eps"])]["accuracy"]
    assert acc[("pgd", 0.3)]["accuracy"] < clean["accuracy"] and acc[("pgd", 0.3)]["steps"] == 20
    # the plan ran at every eps above 0, converged, and its last step's row is the worst case
    assert [o["eps"] for o in plan] == [0.05, 0.1, 0.2, 0.3] and all(o["converged"] for o in plan), plan
    for outcome in plan:
        if outcome["steps"]:
            last = outcome["steps"][-1]["attack"]
            assert acc[(last, outcome["eps"])]["accuracy"] == acc[("worst-case", outcome["eps"])]["accuracy"]
    assert acc[("worst-case", 0.1)]["accuracy"] < acc[("pgd", 0.1)]["accuracy"]  # PGD-20 overstates it
    calibration = metrics["calibration"]
    assert calibration["bins"] == 15 and calibration["test"]["n"] == clean["n"]
    assert calibration["test"]["accuracy"] == pytest.approx(clean["accuracy"])
    assert calibration["val_nll_scaled"] <= calibration["val_nll"]
    assert 0 <= calibration["test"]["ece"] <= calibration["test"]["mce"] <= 1
    # under attack: the worst-case images of each eps, right exactly where the worst case counts them robust
    assert [c["eps"] for c in evaluation["calibration"]] == [0, 0.05, 0.1, 0.2, 0.3]
    for entry in evaluation["calibration"]:
        assert entry["metrics"]["accuracy"] == pytest.approx(acc[("worst-case", entry["eps"])]["accuracy"])
    info = evaluation["attack"]
    assert info["norm"] == "linf" and info["attacks"][:3] == ["fgsm", "pgd", "apgd-ce"] and info["seed"] == 0
    assert "failed" not in {c["status"] for c in info["checks"]}, info["checks"]  # the main job proves its number
    log = (run_dir / "log.txt").read_text()
    assert "sanity checks: 8 passed, 0 failed, 1 not run" in log and "plan at eps 0.1000: converged:" in log
    assert info["warnings"] == [f"{c['name']}: {c['detail']}" for c in info["checks"] if c["status"] == "failed"]
    # every correctly classified example's smallest perturbation (FMN), its curve against the fixed-eps worst case
    minimal = info["minimal_norm"]
    correct = round(359 * acc[("worst-case", 0)]["accuracy"])
    assert minimal["attack"] == "fmn" and minimal["norm"] == "linf" and minimal["attacked"] == correct
    radii = np.load(run_dir / "evaluations" / evaluation["key"] / "adversarial.npz")["minimal_radii"]
    assert radii.shape == (359,) and int((radii > 0).sum()) == correct
    assert minimal["median"] == pytest.approx(float(np.median(radii[radii > 0])))
    for row in minimal["agreement"]:
        assert row["curve_accuracy"] == pytest.approx(float((radii > row["eps"]).mean()))
        # what FMN found within eps counts in the worst case; the fixed-eps attacks' own figure is beside it
        assert row["combined_accuracy"] == pytest.approx(acc[("worst-case", row["eps"])]["accuracy"])
        assert row["fixed_accuracy"] == pytest.approx(row["combined_accuracy"] + row["only_minimal"] / 359)
        assert row["missed"] == (row["p_value"] < 0.05)
    assert "fmn (minimal norm, linf): found" in log
    saved = torch.load(run_dir / "evaluations" / evaluation["key"] / "adversarial.pt", weights_only=True)
    assert saved["images"].shape == (5, 359, 1, 8, 8) and saved["images"].dtype == torch.float32
    assert saved["indices"].shape == saved["labels"].shape == (359,)
    assert ((saved["images"] - saved["images"][0]).abs().amax(dim=(2, 3, 4)) <= saved["eps"][:, None] + 1e-6).all()


def test_report_is_one_self_contained_page(run_dir):
    html = (run_dir / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]{0,30})', html)
    assert len(sources) >= len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "simple-cnn on digits" in html and "PGD" in html and "converging plan" in html
    assert "Smallest adversarial perturbations" in html and "The median smallest perturbation is" in html
    assert '<h2 id="calibration">Calibration</h2>' in html and "worst-case adversarial, eps 0.05" in html
    # a reader finds their way: contents linking every section, what is not in the report and why, no eps-0 rows
    # (the clean accuracy is stated above the table), no raw keys
    contents = re.search(r'<nav class="toc" aria-label="Contents"><ul>(.*?)</ul></nav>', html).group(1)
    anchors = re.findall(r'href="#([\w-]+)"', contents)
    assert {"training", "clean", "robustness", "calibration", "timing"} <= set(anchors)
    assert all(f'<h2 id="{anchor}">' in html for anchor in anchors)
    assert "Not in this report: common corruptions (the images are 8x8, under the 16x16 auto runs it on; " \
           "imgclf corrupt" in html
    assert "<td>FGSM</td><td>0</td>" not in html and "<td>FGSM</td><td>0.05</td>" in html
    assert "train_seconds" not in html and "scikit_learn" not in html and "<td>training</td>" in html
    # the headline cards are percentages at the telling eps (worst case nearest half the clean accuracy), not 0%
    # at the largest eps; the configuration is the settings that differ from the defaults, the file folded
    metrics = json.loads((run_dir / "metrics.json").read_text())
    worst = {r["eps"]: r["accuracy"] for r in metrics["evaluations"][-1]["robustness"] if r["attack"] == "worst-case"}
    telling = min((e for e in worst if e > 0), key=lambda e: (abs(worst[e] - metrics["clean"]["accuracy"] / 2), e))
    assert f'worst-case robust accuracy at eps {telling:g}</div><div class="value">{100 * worst[telling]:.2f}%' in html
    reason = next(o["reason"] for o in metrics["evaluations"][-1]["attack"]["plan"] if o["eps"] == telling)
    assert f'<div class="note">{reason}</div>' in html
    assert 'APGD-DLR accuracy at eps' not in html  # the plan's rows are cumulative: no headline of their own
    assert f'macro F1</div><div class="value">{100 * metrics["clean"]["macro_f1"]:.2f}%' in html
    assert "<tr><td><code>attack.eps</code></td><td><code>0, 0.05, 0.1, 0.2, 0.3</code>" in html
    assert "<details><summary>The whole configuration file" in html


def test_stages_alone_reuse_the_saved_run(run_dir, capsys):
    before = json.loads((run_dir / "metrics.json").read_text())
    assert main(["evaluate", str(run_dir)]) == 0
    assert f"accuracy {before['clean']['accuracy']:.4f}" in capsys.readouterr().out
    assert main(["attack", str(run_dir), "--attack", "pgd", "--eps", "0,0.1", "--steps", "3",
                 "--n-examples", "100"]) == 0
    after = newest_evaluation(run_dir)
    assert [(r["attack"], r["eps"], r["steps"], r["n"]) for r in after["robustness"]] == [
        ("pgd", 0.0, 3, 100), ("worst-case", 0.0, None, 100), ("pgd", 0.1, 3, 100), ("worst-case", 0.1, None, 100)]
    assert main(["attack", str(run_dir), "--attack", "pgd", "--target", "least-likely", "--norm", "l2",
                 "--n-examples", "50", "--quiet"]) == 0
    after = newest_evaluation(run_dir)
    assert {r["eps"] for r in after["robustness"]} == {0, 0.5, 1, 2, 3}  # the L2 defaults for grey data
    assert all(r["target_success_rate"] is not None for r in after["robustness"] if r["attack"] != "worst-case")
    # the evaluations accumulate: the run's own, then the two above, each in metrics.json and the report
    evaluations = json.loads((run_dir / "metrics.json").read_text())["evaluations"]
    assert [e["attack"]["attacks"] for e in evaluations][1:] == [["pgd"], ["pgd (target least-likely)"]]
    html = (run_dir / "report.html").read_text()
    assert all(f'id="evaluation-{e["key"]}"' in html for e in evaluations)
    # the same settings again: reused, not run again
    capsys.readouterr()
    assert main(["attack", str(run_dir), "--attack", "pgd", "--eps", "0,0.1", "--steps", "3",
                 "--n-examples", "100"]) == 0
    assert f"reusing the evaluation {evaluations[1]['key']}" in capsys.readouterr().out
    assert len(json.loads((run_dir / "metrics.json").read_text())["evaluations"]) == 3
    assert main(["report", str(run_dir)]) == 0
    model = load_model(run_dir)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_the_saved_config_repeats_the_run(run_dir, tmp_path):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["attack"]["eps"] == ["0", "0.05", "0.1", "0.2", "0.3"]
    again = tmp_path / "again"
    assert main(["train", "--config", str(run_dir / "config.yaml"), "--out", str(again), "--quiet"]) == 0
    first, second = load_model(run_dir).state_dict(), load_model(again).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_an_existing_run_folder_is_never_overwritten(run_dir, capsys):
    stamp = (run_dir / "model.safetensors").stat().st_mtime_ns
    assert main(["run", "--out", str(run_dir), "--epochs", "1"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("argv, message", [
    (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'; valid choices:"),
    (["run", "--model", "vgg"],
     "unknown model 'vgg'; valid choices: cnn, fast-cnn, fast-mnist-cnn, keras-cnn, madry-cnn, mlp, preact-resnet18"),
    (["run", "--attack", "cw"],
     "unknown attack (--attack) 'cw'; valid choices: apgd-ce, apgd-ce-t, apgd-dlr, apgd-t, auto, fab-t, fgsm, "
     "fmn, full, pgd, plan, quick, square"),
    (["run", "--preset", "huge"], "unknown preset (--preset) 'huge'; valid choices: quick, full, auto"),
    (["run", "--preset", "fgsm"], "unknown preset (--preset) 'fgsm'; valid choices: quick, full, auto (single "
                                  "attacks go to --attack)"),
    (["run", "--norm", "l0"], "unknown norm (--norm) 'l0'; valid choices: l1, l2, linf"),
    (["run", "--norm", "l1", "--preset", "quick"], "no attack of quick implements norm l1; name one that does: fmn"),
    (["run", "--norm", "l1", "--attack", "pgd"], "the pgd attack is implemented for --norm linf, l2 only"),
    (["run", "--attack", "apgd-ce,square", "--norm", "l2"], "the square attack is implemented for --norm linf only"),
    (["run", "--preset", "full", "--target", "random"], "--target applies to fgsm, pgd, apgd-ce, apgd-dlr"),
    (["run", "--target", "random"], "the converging plan (preset auto, the default) is untargeted: name the attacks"),
    (["run", "--eps", "abc"], "invalid eps 'abc'"),
    (["run", "--eps", "-1"], "invalid eps '-1': eps is in pixel units and must be in [0, 1] under linf"),
    (["run", "--eps", "2"], "invalid eps '2': eps is in pixel units and must be in [0, 1] under linf"),
    (["run", "--optimizer", "lion"], "valid choices: adam, adamw, sgd"),
    (["evaluate", "/no/such/run"], "run folder '/no/such/run' does not exist"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x")] if argv[0] == "run" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing is created for a run that cannot start


def test_missing_data_offline_is_a_user_error_with_instructions(tmp_path, capsys):
    code = main(["run", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "FashionMNIST" in err and "by hand" in err


def test_the_installed_command_exits_2_without_traceback():
    done = subprocess.run([sys.executable, "-m", "imgclf", "attack", "nowhere"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "does not exist" in done.stderr
    version = subprocess.run([sys.executable, "-m", "imgclf", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("imgclf ")


@pytest.mark.parametrize("command", ["run", "train", "evaluate", "attack", "report", "datasets", "models", "attacks"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "examples:" in capsys.readouterr().out


def test_files_are_written_atomically_with_normal_permissions(tmp_path):
    import os

    from imgclf.run_folder import RunFolder, atomic_write_text

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind
    folder = RunFolder(tmp_path)
    folder.update_metrics({"timing": {"train_seconds": 1.0}})
    folder.update_metrics({"timing": {"eval_seconds": 2.0}, "seed": 3})
    assert folder.read_json("metrics.json") == {"timing": {"train_seconds": 1.0, "eval_seconds": 2.0}, "seed": 3}


def test_the_report_says_when_a_model_masks_its_gradients(run_dir, tmp_path):
    import shutil

    from imgclf import pipeline

    copy = tmp_path / "masked"
    shutil.copytree(run_dir, copy)
    opened = pipeline.Run.open(copy, quiet=True)
    opened.model = Rounding(opened.model).eval()  # the Python API attacks whatever model it is given
    result = opened.attack(attacks=["quick", "square"], queries=100, examples=150, eps=["0", "0.1", "0.3"])
    statuses = {c["name"]: c["status"] for c in result.checks}
    assert statuses["gradients"] == "failed"
    html = opened.report().read_text()
    assert "check(s) failed:</strong> treat the robust accuracy above as unproven" in html
    assert '<div class="alert" role="alert"><strong>3 check(s) failed:</strong>' in html  # an alert, not a note
    assert '<td class="bad">failed</td>' in html and "all-zero or NaN input gradient" in html


def test_a_one_epoch_run_gets_its_numbers_not_empty_charts(tmp_path):
    out = tmp_path / "one"
    assert main(["train", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "One epoch: training loss" in html and "Curves are drawn from two epochs on" in html
    assert not (out / "figures" / "training_curves.png").exists()
    assert "Not in this report: robustness under attack (imgclf attack" not in html  # not evaluated: no claims
    assert main(["evaluate", str(out)]) == 0 and main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert f"Not in this report: robustness under attack (imgclf attack {out})" in html


def test_a_target_class_can_be_named(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "named"
    shutil.copytree(run_dir, copy)
    assert main(["attack", str(copy), "--attack", "pgd", "--target", "7", "--eps", "0.3", "--n-examples", "60"]) == 0
    rows = newest_evaluation(copy)["robustness"]
    assert rows[0]["target"] == "7" and rows[0]["target_success_rate"] >= 0.9
    assert main(["attack", str(copy), "--attack", "pgd", "--target", "seven", "--eps", "0.3"]) == 2
    assert "unknown target 'seven'; valid choices: random, least-likely, or a class: 0, 1, 2" in capsys.readouterr().err


def test_every_attack_setting_has_a_flag_on_the_commands_that_attack():
    import dataclasses

    from imgclf.cli import _flag_names, build_parser
    from imgclf.config import AttackConfig

    parser = build_parser()
    for command in ("run", "attack"):
        flags = _flag_names(parser, command)
        # (the attacks' own options have one flag each, read from the registry: --queries)
        missing = [f.name for f in dataclasses.fields(AttackConfig) if f.name != "options" and
                   f"attack.{f.name}" not in flags]
        assert not missing, f"imgclf {command} has no flag for attack.{', attack.'.join(missing)}"
    args = vars(parser.parse_args(["attack", "runs/x", "--no-minimal-norm"]))
    assert args["attack.minimal_norm"] is False
