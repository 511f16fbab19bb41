"""The trust boundary of run folders and model files, and the edges a hostile colleague or an unlucky user
meets: code runs only where the user names it, a file read back is checked before it is believed, no read
hangs or leaves the data, and every failure is one line (2: the input; 1: the machine or the model's code)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from imgclf import record
from imgclf.cli import main
from imgclf.errors import UsageError
from test_edges import one_line_error

MODELS = '''
import torch


class Net(torch.nn.Module):
    def __init__(self, channels=1, image_size=(8, 8), num_classes=10):
        super().__init__()
        self.linear = torch.nn.Linear(channels * image_size[0] * image_size[1], num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


class NoGrad(Net):
    def forward(self, x):
        with torch.no_grad():
            return self.linear(x.flatten(1))


class NaNLogits(Net):
    def forward(self, x):
        return self.linear(x.flatten(1)) * float("nan")


class Exits(Net):
    def forward(self, x):
        import sys
        sys.exit(0)


class FailsLater(Net):
    calls = 0

    def forward(self, x):
        FailsLater.calls += 1
        if FailsLater.calls > 3:
            raise KeyError("late failure")
        return self.linear(x.flatten(1))
'''


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.py").write_text(MODELS)
    return tmp_path / "models.py"


def _planted(copy: Path, tmp_path: Path) -> Path:
    """``copy``'s model.json and config.yaml rewritten to name ``py:timeit:timeit`` with a statement that leaves
    a marker file: a run folder shared by someone hostile."""
    marker = tmp_path / "PWNED"
    info = json.loads((copy / record.MODEL_INFO).read_text())
    info.update(model="py:timeit:timeit", options={"stmt": f"open({str(marker)!r}, 'w').write('x')", "number": 1})
    (copy / record.MODEL_INFO).write_text(json.dumps(info))
    config = yaml.safe_load((copy / record.CONFIG).read_text())
    config["model"] = {"name": "py:timeit:timeit", "options": info["options"]}
    (copy / record.CONFIG).write_text(yaml.safe_dump(config))
    return marker


# -- 1. code named by files a user only meant to read ------------------------------------------------------

@pytest.mark.parametrize("command", [["predict", "{run}", "{image}"], ["evaluate", "{run}"], ["attack", "{run}"],
                                     ["export", "{run}"], ["explain", "{run}"], ["train", "--resume", "{run}"]])
def test_a_run_folder_naming_python_code_is_refused_without_trust_code(copy, tmp_path, capsys, command):
    marker = _planted(copy, tmp_path)
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8)).save(image)
    argv = [part.format(run=copy, image=image) for part in command]
    err = one_line_error(capsys, argv)
    assert "py:timeit:timeit" in err and "--trust-code" in err
    assert not marker.exists()


def test_trust_code_is_the_opt_in_and_then_the_code_runs(copy, tmp_path, capsys):
    marker = _planted(copy, tmp_path)
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8)).save(image)
    main(["predict", str(copy), str(image), "--trust-code"])  # (timeit builds no model: it fails after running)
    capsys.readouterr()
    assert marker.exists()  # the flag is what stood between the file and the code


def test_a_config_or_sweep_file_naming_python_code_is_refused(tmp_path, capsys, models):
    config = tmp_path / "shared.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": f"py:{models}:Net"}, "train": {"epochs": 1}}))
    err = one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o")])
    assert f"py:{models}:Net" in err and "--trust-code" in err
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": {"model": {"name": f"py:{models}:Net"}},
                                     "search": {"train.lr": {"low": 1e-3, "high": 1e-2}}}))
    assert "--trust-code" in one_line_error(capsys, ["sweep", "--config", str(sweep)])


def test_a_model_named_on_the_command_line_needs_no_flag_and_its_folder_then_does(tmp_path, capsys, models):
    out = tmp_path / "mine"
    assert main(["train", "--model", f"py:{models}:Net", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert "--trust-code" in one_line_error(capsys, ["evaluate", str(out)])
    assert main(["evaluate", str(out), "--trust-code", "--quiet"]) == 0


def test_python_callers_opt_in_with_trust_code(copy, tmp_path):
    from imgclf import load_model
    from imgclf.pipeline import Run

    _planted(copy, tmp_path)
    with pytest.raises(UsageError, match="trust_code=True"):
        load_model(copy)
    with pytest.raises(UsageError, match="trust_code=True"):
        Run.open(copy)


# -- 2. .pt2 files with pickled payloads ------------------------------------------------------------------

def _pt2(tmp_path: Path, variant: str) -> Path:
    """A torch.export program of a digits-shaped linear model; ``variant`` plants a pickle where
    ``torch.export.load`` would unpickle it (a payload marked ``use_pickle``, or the sample inputs)."""

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'PWNED')!r}, 'w').write('x')",))

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    clean = tmp_path / "clean.pt2"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},)), clean)
    if variant == "clean":
        return clean
    out = tmp_path / f"{variant}.pt2"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if variant == "use-pickle" and name.endswith("_weights_config.json"):
                config = json.loads(data)
                for entry in config["config"].values():
                    entry["use_pickle"] = True
                data = json.dumps(config).encode()
            if variant == "use-pickle" and "/data/weights/weight_" in name:
                data = pickle.dumps(Evil())
            if variant == "sample-inputs" and "/sample_inputs/" in name:
                data = pickle.dumps(Evil())
            target.writestr(name, data)
    return out


@pytest.mark.parametrize("variant", ["use-pickle", "sample-inputs"])
def test_a_pt2_file_with_pickled_payloads_is_refused_before_torch_reads_it(tmp_path, capsys, variant):
    crafted = _pt2(tmp_path, variant)
    err = one_line_error(capsys, ["evaluate", "--model", str(crafted), "--dataset", "digits",
                                  "--out", str(tmp_path / "o")])
    assert "pickled Python objects" in err and "--trust-code" in err
    assert not (tmp_path / "PWNED").exists()


def test_a_clean_pt2_file_loads_and_a_garbage_one_is_one_line(tmp_path, capsys):
    clean = _pt2(tmp_path, "clean")
    assert main(["evaluate", "--model", str(clean), "--dataset", "digits", "--out", str(tmp_path / "ok"),
                 "--quiet"]) == 0
    capsys.readouterr()
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip archive")
    assert "not a zip archive" in one_line_error(capsys, ["evaluate", "--model", str(garbage), "--dataset", "digits",
                                                          "--out", str(tmp_path / "bad")])


# -- 5. the data changed under a run -------------------------------------------------------------------------

@pytest.mark.parametrize("memory_limit", ["8192", "0"])  # in memory, and read from the disk cache per batch
def test_evaluating_on_changed_data_is_refused_or_noted(tiny_folder, tmp_path, capsys, memory_limit):
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(tiny_folder), "--model", "mlp", "--image-size", "8", "--epochs", "1",
                 "--memory-limit", memory_limit, "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    for i in range(4):  # images added to one class: the positions of the saved splits now name other images
        Image.new("RGB", (24, 20), (10, 200, 30)).save(tiny_folder / "circle" / f"added-{i}.png")
    err = one_line_error(capsys, ["evaluate", str(run)])
    assert "changed since the run began" in err and "--changed-data" in err
    assert main(["evaluate", str(run), "--changed-data", "--quiet"]) == 0
    notes = json.loads((run / record.METRICS).read_text())["data_notes"]
    assert any(note.startswith("evaluated on changed data") for note in notes)


# -- 7. an eps warm-up longer than training -----------------------------------------------------------------

def test_an_eps_warmup_longer_than_training_is_said_and_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--adversarial", "fgsm-rs", "--adv-eps", "0.3", "--eps-warmup", "5", "--epochs", "1",
                 "--model", "mlp", "--out", str(run), "--quiet"]) == 0
    assert "the training eps reaches 0.06, not 0.3" in capsys.readouterr().err
    adversarial = json.loads((run / record.METRICS).read_text())["training"]["adversarial"]
    assert adversarial["eps"] == 0.3 and adversarial["kept_eps"] == pytest.approx(0.06)


# -- 8. numbers read back ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["clean"].update(accuracy=7.5), "clean.accuracy must be a fraction in [0, 1], got 7.5"),
    (lambda m: m["clean"].update(accuracy=float("nan")), "clean.accuracy is NaN"),
    (lambda m: m.update(num_classes=-3), "num_classes must be a count >= 0"),
    (lambda m: m.update(schema_version=999), "schema_version 999 is newer"),
    (lambda m: m.update(class_names=m["class_names"][:3]), "3 class_names for num_classes 10"),
    (lambda m: m["evaluations"][0]["robustness"][0].update(accuracy=-0.5), "must be a fraction in [0, 1]"),
    (lambda m: m["timing"].update(train_seconds=float("inf")), "is infinite"),
])
def test_metrics_json_values_out_of_range(copy, capsys, change, message):
    metrics = json.loads((copy / record.METRICS).read_text())
    change(metrics)
    (copy / record.METRICS).write_text(json.dumps(metrics))
    assert message in one_line_error(capsys, ["report", str(copy)])


def test_metrics_json_nested_too_deep_or_replaced_by_a_folder(copy, capsys):
    (copy / record.METRICS).write_text("[" * 100_000 + "]" * 100_000)
    assert "nests its values too deep" in one_line_error(capsys, ["report", str(copy)])
    (copy / record.METRICS).unlink()
    (copy / record.METRICS).mkdir()
    assert "is not a regular file" in one_line_error(capsys, ["report", str(copy)])


def test_overlapping_splits_and_an_empty_config_are_refused(copy, capsys):
    splits = dict(np.load(copy / record.SPLITS))
    splits["test_pool"] = splits["train_pool"]
    splits["test_indices"] = splits["train_indices"][:5]
    np.savez(copy / record.SPLITS, **splits)
    assert "the test split shares positions with the train split" in one_line_error(capsys, ["evaluate", str(copy)])
    (copy / record.CONFIG).write_text("")
    assert "is missing or empty" in one_line_error(capsys, ["evaluate", str(copy)])


def test_arrays_of_the_wrong_shape_or_range_are_one_line(copy, capsys):
    samples = dict(np.load(copy / record.SAMPLES))
    np.savez(copy / record.SAMPLES, **{**samples, "labels": samples["labels"] + 100})
    assert "samples.npz' holds arrays of the wrong shape or values" in one_line_error(capsys, ["report", str(copy)])
    np.savez(copy / record.SAMPLES, **samples)
    (adversarial,) = copy.glob("evaluations/*/adversarial.npz")
    arrays = {key: value[:1, :1] if key.startswith("adv_") else value for key, value in np.load(adversarial).items()}
    np.savez(adversarial, **arrays)
    assert "adversarial.npz' holds arrays of the wrong shape" in one_line_error(capsys, ["report", str(copy)])


# -- 9. a surrogate is part of the evaluation ------------------------------------------------------------------

def test_another_surrogate_is_another_evaluation_and_a_missing_one_is_refused(copy, run_dir, tmp_path, capsys):
    argv = ["attack", str(copy), "--attack", "fgsm", "--eps", "0.1", "--n-examples", "20", "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()
    assert "is neither a run folder" in one_line_error(capsys, [*argv, "--surrogate", str(tmp_path / "nowhere")])
    assert main([*argv, "--surrogate", str(run_dir)]) == 0
    keys = [e["key"] for e in json.loads((copy / record.METRICS).read_text())["evaluations"]]
    assert len(keys) == len(set(keys)) == 3  # the run's own, without a surrogate, with one


# -- 10, 12. no hang, no read outside the data -----------------------------------------------------------------

def test_a_fifo_in_an_image_folder_is_a_bad_file_not_a_hang(tiny_folder, tmp_path):
    os.mkfifo(tiny_folder / "circle" / "pipe.png")
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "imgclf", "train", "--dataset", str(tiny_folder), "--model", "mlp",
                           "--image-size", "8", "--epochs", "1", "--out", str(run), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "pipe.png\tOSError: [Errno 22] not a regular file (a FIFO)" in (run / record.BAD_FILES).read_text()
    checked = subprocess.run([sys.executable, "-m", "imgclf", "data", "check", str(tiny_folder)],
                             capture_output=True, text=True, timeout=300)
    assert "not a regular file (a FIFO)" in checked.stdout
    predicted = subprocess.run([sys.executable, "-m", "imgclf", "predict", str(run), "/dev/zero",
                                str(tiny_folder / "circle" / "pipe.png")], capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 1
    assert "not a regular file (a device)" in predicted.stdout and "not a regular file (a FIFO)" in predicted.stdout


def test_labels_file_paths_stay_inside_the_image_root(tiny_folder, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(tiny_folder.glob("*/*.png"))]
    labels.write_text("path,label\n../../../../etc/passwd,circle\n" + "\n".join(rows) + "\n")
    err = one_line_error(capsys, ["train", "--labels", str(labels), "--out", str(tmp_path / "o")])
    assert "leaves the image root" in err and "--paths-outside-root" in err


def test_a_class_folder_linking_outside_the_data_set_is_not_followed(tiny_folder, tmp_path, capsys):
    (tiny_folder / "everything").symlink_to("/")
    from imgclf.data.folder import scan_folder

    listing = scan_folder(tiny_folder)
    assert "everything" not in listing.class_names
    assert any("link outside" in note for note in listing.notes)


# -- 11. ceilings ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "value"), [("--steps", "99999999999999999999"), ("--restarts", "5000"),
                                             ("--queries", "99999999999"), ("--n-examples", "999999999999")])
def test_every_limit_has_a_ceiling(copy, capsys, flag, value):
    assert "must be" in one_line_error(capsys, ["attack", str(copy), flag, value])


# -- tracebacks that are one line now --------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "message", "status"), [
    ("NoGrad", "do not depend on any parameter autograd can follow", 2),
    ("NaNLogits", "gives NaN or infinite logits", 2),
    ("Exits", "called sys.exit(0)", 1),
    ("FailsLater", "the model's code raised KeyError (models.py, line", 1),
])
def test_a_broken_user_model_is_one_line(tmp_path, capsys, models, model, message, status):
    err = one_line_error(capsys, ["train", "--model", f"py:{models}:{model}", "--epochs", "1",
                                  "--out", str(tmp_path / "o")], status=status)
    assert message in err


def test_a_model_file_that_fails_on_import_and_an_option_that_builds_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom')\n")
    assert "RuntimeError: boom" in one_line_error(capsys, ["train", "--model", "py:boom.py:Net", "--out", "o"])
    assert "must be a positive integer" in one_line_error(capsys, ["train", "--model-option", "filters=0",
                                                                   "--out", "o"])


# -- silently accepted, now refused or said -------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--dataset", ""], "--dataset is empty"),
    (["train", "--train-examples", "99999"], "is more than the 1150 training images left"),
    (["train", "--freeze-epochs", "3", "--epochs", "2"], "--freeze-epochs (3) is more than --epochs (2)"),
    (["train", "--momentum", "2"], "--momentum must be a number in [0, 1)"),
    (["train", "--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to SGD only"),
    (["train", "--test-fraction", "0.999"], "the training split has no image of"),
])
def test_values_that_were_silently_accepted(tmp_path, capsys, argv, message):
    assert message in one_line_error(capsys, [*argv, "--out", str(tmp_path / "o")])


def test_a_yaml_key_given_twice_is_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 1\n  epochs: 2\n")
    assert "the key 'epochs' is given twice (line 3" in one_line_error(
        capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o")])


def test_an_empty_class_folder_is_left_out_with_a_note(tiny_folder):
    from imgclf.data.folder import scan_folder

    (tiny_folder / "empty").mkdir()
    listing = scan_folder(tiny_folder)
    assert listing.class_names == ["circle", "square", "stripe"]
    assert any("hold no image and are left out: empty" in note for note in listing.notes)
