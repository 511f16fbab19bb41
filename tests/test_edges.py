"""The reproductions of the edges a new user and a hostile input meet: each ends in one clear line
with the right exit status (2: the user's input or file; 1: imgclf or the machine), or works."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from imgclf import record
from imgclf.cli import main
from imgclf.config import DataConfig
from imgclf.errors import UsageError
from imgclf.run_folder import RunLog
from imgclf.sweep import load_sweep


def one_line_error(capsys, argv: list[str], status: int = 2) -> str:
    """The error line of ``imgclf argv``; argparse's own errors come after its usage lines."""
    try:
        assert main(argv) == status, argv
        parsed_by_argparse = False
    except SystemExit as exit_:
        assert exit_.code == status == 2, argv
        parsed_by_argparse = True
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    if parsed_by_argparse:
        assert err.startswith("usage:") and ": error: argument " in err.splitlines()[-1], err
        return err.splitlines()[-1]
    assert len(err.splitlines()) == 1, err
    return err


# -- configuration files and flags ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("data: null\n", None),  # an empty section: the flag's value fills it
    ("data: 3\n", "config section 'data' must be a mapping of settings, got 3"),
    ("train: [1, 2]\n", "config section 'train' must be a mapping"),
    ("recipe: [fast]\n", "unknown recipe ['fast']"),
    ("recipe: {a: 1}\n", "unknown recipe {'a': 1}"),
])
def test_config_sections_of_the_wrong_kind(tmp_path, capsys, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    argv = ["run", "--config", str(path), "--dataset", "nosuch", "--out", str(tmp_path / "o")]
    err = one_line_error(capsys, argv)
    assert (message or "unknown dataset 'nosuch'") in err


def test_a_config_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    assert "is not UTF-8 text" in one_line_error(capsys, ["run", "--config", str(path)])


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--seed", "100000000000000000000"], "--seed must be an integer in [0, 4294967295]"),
    (["run", "--seed", "-1"], "--seed must be an integer in [0, 4294967295], got -1"),
    (["mlp-numpy", "--seed", "-1"], "expected a seed, an integer in [0, 4294967295], got '-1'"),
    (["run", "--eps", ""], "--eps is empty"),
    (["run", "--eps", " , "], "--eps is empty"),
    (["run", "--target", ""], "--target is empty"),
    (["run", "--adversarial", "pgd", "--adv-eps", ""], "--adv-eps is empty"),
    (["run", "--eps", "0:1:1/1000000000"], "1,000"),
    (["activations", "elu", "--alpha", "nan"], "expected a finite number, got 'nan'"),
    (["activations", "leaky-relu", "--negative-slope", "inf"], "expected a finite number, got 'inf'"),
    (["run", "--dataset", "mnits"], "did you mean 'mnist'?"),
    (["run", "--optimizer", "adamm"], "unknown optimizer (--optimizer) 'adamm' (did you mean 'adam'?)"),
    (["train", "--resume", "x", "--lr", "0.1"], "drop --lr"),
])
def test_bad_flags(capsys, tmp_path, argv, message):
    out = ["--out", str(tmp_path / "o")] if argv[0] in ("run", "activations") else []
    err = one_line_error(capsys, [*argv, *out])
    assert message in err
    assert not (tmp_path / "o").exists()


def test_usage_lines_show_a_metavar_not_the_internal_key(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    usage = capsys.readouterr().out
    assert "--device DEVICE" in usage and "TRAIN." not in usage and "ATTACK." not in usage


@pytest.mark.parametrize(("option", "message"), [
    ("n_neighbors=-3", "n_neighbors"), ("weights=sideways", "weights"),
])
def test_classifier_options_are_checked_by_the_estimator_before_any_file_is_read(capsys, option, message):
    err = one_line_error(capsys, ["fit-features", "/no/such/features.npz", "--classifier", "knn", "--option", option])
    assert "classifier knn" in err and message in err and "does not exist" not in err


def test_svm_and_torch_mlp_options_out_of_range(capsys):
    assert "C" in one_line_error(capsys, ["fit-features", "x.npz", "--classifier", "svm", "--option", "C=-1"])
    assert "dropout must be [0, 1)" in one_line_error(
        capsys, ["fit-features", "x.npz", "--classifier", "torch-mlp", "--option", "dropout=1.5"])


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": "zero"}, "sweep seed must be an integer"),
    ({"seed": [1]}, "sweep seed must be an integer"),
    ({"seed": -1}, "sweep seed must be an integer in [0, 4294967295]"),
    ({"out": 3}, "sweep out must be a string"),
    ({"storage": ["a"]}, "sweep storage must be a string"),
    ({"attack": "false"}, "sweep attack must be true or false, got 'false'"),
    ({"search": {"train.lr": {"low": 0.001, "high": 0.1, "step": -1}}}, "step must be a number > 0"),
    ({"search": {"train.epochs": {"low": 1, "high": 4, "step": "2"}}}, "step must be a number > 0"),
    ({"base": "missing.yaml"}, "does not exist"),
    ({"base": [1, 2]}, "must be a config mapping"),
])
def test_malformed_sweep_files(tmp_path, change, message):
    document = {"base": {"model": {"name": "mlp"}}, "search": {"train.lr": {"low": 1e-3, "high": 1e-1}}, **change}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(UsageError, match=None) as error:
        load_sweep(path)
    assert message in str(error.value)


def test_a_sweep_base_file_that_is_not_utf8(tmp_path):
    (tmp_path / "base.yaml").write_bytes(b"\xff\xfe")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "search": {"train.lr": {"low": 1e-3, "high": 1e-1}}}))
    with pytest.raises(UsageError, match="not UTF-8"):
        load_sweep(path)


def test_an_image_folder_inside_the_data_folder_is_found_by_name(tiny_folder):
    from imgclf.data import load_data

    data = load_data(DataConfig(dataset=tiny_folder.name, data_dir=str(tiny_folder.parent), image_size=8), seed=0)
    assert data.spec.class_names == ("circle", "square", "stripe")


# -- files of a run folder ------------------------------------------------------------------------

def _rewrite_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    path.write_text(json.dumps(change(value)))


MODEL_JSON_DAMAGE = {
    "not JSON": lambda p: p.write_text("{not json"),
    "a list": lambda p: p.write_text("[1, 2]"),
    "no input_shape": lambda p: _rewrite_json(p, lambda v: {k: x for k, x in v.items() if k != "input_shape"}),
    "no class_names": lambda p: _rewrite_json(p, lambda v: {k: x for k, x in v.items() if k != "class_names"}),
    "fewer class names": lambda p: _rewrite_json(p, lambda v: {**v, "class_names": v["class_names"][:3]}),
    "2-element shape": lambda p: _rewrite_json(p, lambda v: {**v, "input_shape": [1, 8]}),
    "128 GB shape": lambda p: _rewrite_json(p, lambda v: {**v, "input_shape": [3, 200000, 200000]}),
    "string option": lambda p: _rewrite_json(p, lambda v: {**v, "options": {**v["options"], "hidden": "many"}}),
    "negative option": lambda p: _rewrite_json(p, lambda v: {**v, "options": {**v["options"], "hidden": [-3]}}),
}


@pytest.mark.parametrize("damage", sorted(MODEL_JSON_DAMAGE))
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_damaged_model_json(copy, capsys, damage, command):
    MODEL_JSON_DAMAGE[damage](copy / record.MODEL_INFO)
    image = copy.parent / "digit.png"
    from PIL import Image

    Image.new("L", (8, 8), 100).save(image)
    argv = ["evaluate", str(copy)] if command == "evaluate" else ["predict", str(copy), str(image)]
    assert "model.json" in one_line_error(capsys, argv)


@pytest.mark.parametrize("damage", ["nan", "int"])
@pytest.mark.parametrize("command", ["evaluate", "attack", "predict"])
def test_weights_with_nan_or_integer_tensors_are_refused(copy, capsys, damage, command):
    weights = load_file(str(copy / record.WEIGHTS))
    key = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() == 2)
    weights[key] = weights[key].clone().fill_(float("nan")) if damage == "nan" else weights[key].to(torch.int32)
    save_file(weights, str(copy / record.WEIGHTS), metadata={"format": record.MODEL_FORMAT})
    argv = {"evaluate": ["evaluate", str(copy)], "attack": ["attack", str(copy), "--n-examples", "5"],
            "predict": ["predict", str(copy), str(copy / "config.yaml")]}[command]
    err = one_line_error(capsys, argv)
    assert ("NaN or infinite" if damage == "nan" else "int32, the model needs float32") in err


def _pickle_state(path: Path) -> None:
    path.write_bytes(pickle.dumps({"epoch": 1, "evil": Path("x")}))


TRAIN_STATE_DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]),
    "empty": lambda p: p.write_bytes(b""),
    "a pickle": _pickle_state,
    "another model": lambda p: torch.save({**torch.load(p, weights_only=True),
                                           "model": {"w": torch.zeros(3)}, "best_state": {"w": torch.zeros(3)}}, p),
}


@pytest.mark.parametrize("damage", sorted(TRAIN_STATE_DAMAGE))
def test_damaged_training_state(copy, capsys, damage):
    TRAIN_STATE_DAMAGE[damage](copy / record.TRAIN_STATE)
    err = one_line_error(capsys, ["train", "--resume", str(copy)])
    assert "train_state.pt" in err and "start the run again" in err
    if damage == "a pickle":
        assert "never loads pickled Python objects" in err and "weights_only" not in err


def _npz(path: Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def _splits(copy: Path) -> dict[str, np.ndarray]:
    with np.load(copy / record.SPLITS) as archive:
        return {k: archive[k] for k in archive.files}


SPLITS_DAMAGE = {
    "not a zip": (lambda c: (c / record.SPLITS).write_bytes(b"PK not a zip"), "cannot be read as NumPy arrays"),
    "objects": (lambda c: (c / record.SPLITS).write_bytes(_object_npz()), "holds pickled Python objects, which "
                "imgclf never loads"),
    "missing key": (lambda c: _npz(c / record.SPLITS, **{k: v for k, v in _splits(c).items() if "test" not in k}),
                    "lacks the test split"),
    "negative": (lambda c: _npz(c / record.SPLITS, **{**_splits(c), "test_indices": np.array([-1, 3, 4])}),
                 "negative positions"),
    "empty test": (lambda c: _npz(c / record.SPLITS, **{**_splits(c), "test_indices": np.zeros(0, np.int64)}),
                   "the test split is empty"),
}


def _object_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, train_pool=np.array([{"a": 1}], dtype=object))
    return buffer.getvalue()


@pytest.mark.parametrize("damage", sorted(SPLITS_DAMAGE))
def test_damaged_splits(copy, capsys, damage):
    change, message = SPLITS_DAMAGE[damage]
    change(copy)
    err = one_line_error(capsys, ["evaluate", str(copy)])
    assert "splits.npz" in err and message in err


@pytest.mark.parametrize(("name", "garbage"), [
    (record.METRICS, b"{\x00garbage"), (record.METRICS, b"[1, 2]"), (record.HISTORY, b"epoch,val\n1,abc\n"),
    (record.HISTORY, b"epoch,val\n1\n"), (record.HISTORY, b"\xff\xfe"),
])
def test_garbage_results_files(copy, capsys, name, garbage):
    (copy / name).write_bytes(garbage)
    assert name in one_line_error(capsys, ["report", str(copy)])


@pytest.mark.parametrize("change", [
    lambda m: {**m, "clean": {**m["clean"], "per_class": {**m["clean"]["per_class"], "0": None}}},
    lambda m: {**m, "clean": {**m["clean"], "per_class": {**m["clean"]["per_class"], "0": {"precision": 1}}}},
    lambda m: {**m, "timing": {"train_seconds": "fast"}},
])
def test_metrics_json_values_of_the_wrong_shape(copy, capsys, change):
    _rewrite_json(copy / record.METRICS, change)
    assert "metrics.json" in one_line_error(capsys, ["report", str(copy)])


def test_corrupt_exported_files_given_to_predict(copy, capsys):
    assert main(["export", str(copy), "--format", "torchscript", "--examples", "8"]) == 0
    exported = copy / "model.torchscript.pt"
    exported.write_bytes(exported.read_bytes()[:100])
    assert "cannot be read as TorchScript" in one_line_error(capsys, ["predict", str(exported), str(copy)])
    onnx = copy / "fake.onnx"
    onnx.write_bytes(b"not a protobuf")
    shutil.copy(copy / "model.torchscript.pt.json", copy / "fake.onnx.json")
    (copy / "fake.onnx.json").write_text((copy / "fake.onnx.json").read_text().replace("torchscript", "onnx"))
    assert "cannot be read as an ONNX model" in one_line_error(capsys, ["predict", str(onnx), str(copy)])


# -- image folders --------------------------------------------------------------------------------

def test_link_loops_and_dangling_links_are_bad_files(tiny_folder, capsys, tmp_path):
    (tiny_folder / "circle" / "loop.png").symlink_to("loop.png")
    (tiny_folder / "circle" / "gone.png").symlink_to("nowhere.png")
    (tiny_folder / "square" / "up").symlink_to("..")  # a folder link is not followed
    assert main(["data", "check", str(tiny_folder)]) == 1
    out = capsys.readouterr().out
    assert "loop.png: cannot be read: Too many levels of symbolic links" in out
    assert "gone.png: cannot be read: No such file or directory" in out
    run = tmp_path / "r"
    assert main(["train", "--dataset", str(tiny_folder), "--image-size", "8", "--model", "mlp", "--epochs", "1",
                 "--out", str(run), "--quiet"]) == 0
    listed = (run / record.BAD_FILES).read_text()
    assert "loop.png" in listed and "gone.png" in listed


# -- results and training -------------------------------------------------------------------------

def test_diverging_training_stops_with_a_clear_error_and_saves_no_nan_weights(tmp_path, capsys):
    out = tmp_path / "diverged"
    err = one_line_error(capsys, ["run", "--optimizer", "sgd", "--lr", "1e6", "--schedule", "constant", "--epochs",
                                  "3", "--out", str(out), "--quiet"])
    assert "training diverged in epoch" in err and "lower --lr" in err
    if (out / record.WEIGHTS).is_file():  # an epoch before the divergence may have been kept
        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(out / record.WEIGHTS)).values())


def test_resume_after_a_kill_between_the_last_state_and_the_final_save(copy, capsys):
    (copy / record.WEIGHTS).unlink()
    _rewrite_json(copy / record.METRICS, lambda v: {k: x for k, x in v.items() if k not in ("training", "timing")})
    (copy / ".model.safetensors.x1.tmp").write_bytes(b"half")
    assert main(["train", "--resume", str(copy), "--quiet"]) == 0
    assert (copy / record.WEIGHTS).is_file() and not list(copy.glob(".*.tmp"))
    metrics = json.loads((copy / record.METRICS).read_text())
    assert metrics["training"]["best_epoch"] == 2 and "train_seconds" in metrics["timing"]
    assert main(["evaluate", str(copy), "--quiet"]) == 0


def test_attack_adds_an_evaluation_and_brings_the_report_up_to_date(copy, capsys):
    before = json.loads((copy / record.METRICS).read_text())["evaluations"]
    assert main(["attack", str(copy), "--attack", "pgd", "--eps", "0.05", "--n-examples", "10"]) == 0
    assert f"report: {copy / record.REPORT}" in capsys.readouterr().out
    after = json.loads((copy / record.METRICS).read_text())["evaluations"]
    assert after[:-1] == before and after[-1]["attack"]["attacks"] == ["pgd"]  # the earlier one is kept
    html = (copy / record.REPORT).read_text()
    assert all(f'id="evaluation-{e["key"]}"' in html for e in after)


def test_failed_checks_reach_stderr_even_when_quiet(capsys):
    log = RunLog(quiet=True)
    log("progress")
    log.warn("warning: check 'x' failed")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "warning: check 'x' failed\n"


def test_os_errors_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = one_line_error(capsys, ["run", "--model", "mlp", "--epochs", "1", "--out", str(blocker / "run")], status=1)
    assert "Not a directory" in err or "already exists" in err


def test_a_zip_is_not_taken_for_a_run_archive(copy, capsys):
    with zipfile.ZipFile(copy / record.SPLITS, "w") as archive:
        archive.writestr("train_pool.npy", b"garbage")
    assert "splits.npz" in one_line_error(capsys, ["evaluate", str(copy)])


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of ``size`` mounted at ``folder`` for the block (the test is skipped without root)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)  # busy: detach it now, free it when idle


def test_a_full_disk_under_the_image_cache_is_one_clear_error(tiny_folder, tmp_path, monkeypatch):
    from imgclf.data import load_data

    with small_disk(tmp_path / "small-disk", "1m") as small:
        monkeypatch.setenv("IMGCLF_CACHE_DIR", str(small))
        with pytest.raises(UsageError, match="has no room for"):  # 36 images at 256 px: 7 MB on a 1 MB disk
            load_data(DataConfig(dataset=str(tiny_folder), image_size=256), seed=0)
        assert not [p for p in small.rglob("*") if p.is_file()]  # nothing half-written is left


def test_resume_on_the_disk_path_with_dropout_is_bit_identical(tiny_folder, tmp_path):
    """Batches read from disk by loader workers (``--memory-limit 0``) and a model with dropout: a run
    stopped after epoch 1 and resumed ends with the very weights of one never stopped."""
    from imgclf.config import load_config
    from imgclf.pipeline import Run

    config = load_config(None, {"data.dataset": str(tiny_folder), "data.memory_limit_mb": 0, "model.name": "cnn",
                                "data.augment": "flip-crop", "train.epochs": 2, "seed": 1, "data.image_size": 16,
                                "train.batch_size": 4})
    Run.train(config, out=tmp_path / "whole", quiet=True)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(result):
        if len(result.history) == 1:
            raise Killed

    with pytest.raises(Killed):
        Run.train(config, out=tmp_path / "stopped", quiet=True, after_epoch=kill_after_first_epoch)
    Run.resume(tmp_path / "stopped", quiet=True)
    whole = load_file(str(tmp_path / "whole" / record.WEIGHTS))
    resumed = load_file(str(tmp_path / "stopped" / record.WEIGHTS))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_a_truncated_builtin_data_file_is_one_clear_error(tmp_path, capsys):
    from conftest import shared_data

    raw = shared_data("MNIST", "raw")
    copy_dir = tmp_path / "MNIST" / "raw"
    copy_dir.mkdir(parents=True)
    for path in raw.iterdir():
        shutil.copy(path, copy_dir / path.name)
    images = copy_dir / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:100_000])
    err = one_line_error(capsys, ["run", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out",
                                  str(tmp_path / "run")])
    assert "present but cannot be read" in err and "delete them to download them again" in err


def test_a_run_folder_on_a_disk_that_fills_up_is_one_clear_error(tmp_path, capsys):
    with small_disk(tmp_path / "small-disk", "200k") as small:
        err = one_line_error(capsys, ["run", "--model", "mlp", "--epochs", "2", "--n-examples", "20",
                                      "--out", str(small / "run"), "--quiet"], status=1)
        assert "No space left on device" in err
        assert not list((small / "run").glob(".*.tmp"))  # no half-written file left behind
        for name in (record.METRICS, record.MODEL_INFO):  # what was written is whole
            if (small / "run" / name).is_file():
                json.loads((small / "run" / name).read_text())


def test_a_folder_of_the_earlier_layout_reads_and_keeps_its_evaluation(copy, capsys):
    """Before evaluations accumulated, metrics.json held one robustness and attack section and the files were at
    the top of the folder: it reads as the first evaluation, and a new attack is added after it."""
    metrics = json.loads((copy / record.METRICS).read_text())
    (evaluation,) = metrics.pop("evaluations")
    metrics.update(robustness=evaluation["robustness"], attack=evaluation["attack"])
    (copy / record.METRICS).write_text(json.dumps(metrics))
    for name in (record.ADVERSARIAL_EXAMPLES, record.ADVERSARIAL_IMAGES):
        (copy / "evaluations" / evaluation["key"] / name).rename(copy / name)
    assert record.read_metrics(copy).latest.robustness[0].accuracy == evaluation["robustness"][0]["accuracy"]
    assert main(["report", str(copy)]) == 0 and 'id="evaluation-legacy"' in (copy / record.REPORT).read_text()
    assert main(["attack", str(copy), "--attack", "pgd", "--eps", "0.05", "--n-examples", "10", "--quiet"]) == 0
    stored = json.loads((copy / record.METRICS).read_text())
    assert "robustness" not in stored and [e["key"] for e in stored["evaluations"]][0] == "legacy"
    assert len(stored["evaluations"]) == 2
