"""Predict on files, export to ONNX and TorchScript with parity checks, TensorBoard logs."""

import csv
import io
import json

import pytest
import torch

from imgclf.cli import main
from imgclf.errors import UsageError
from imgclf.prediction import Classifier, predict


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """A cnn trained on a small colour image folder, with TensorBoard on."""
    from conftest import make_tiny_folder

    root = make_tiny_folder(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("runs") / "shapes"
    assert main(["run", "--dataset", str(root), "--image-size", "16", "--model", "cnn", "--epochs", "4",
                 "--batch-size", "4", "--attack-examples", "6", "--tensorboard", "--out", str(out), "--quiet"]) == 0
    return root, out


def test_predict_walks_folders_reports_bad_files_and_keeps_going(shapes_run, capsys):
    root, run = shapes_run
    # every good file is predicted; the exit status says that one was not
    assert main(["predict", str(run), str(root), "--top-k", "2", "--format", "json"]) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert len(results) == 37  # 36 images and one broken file, hidden files and notes.txt skipped
    broken = [r for r in results if r["error"]]
    assert [r["file"].endswith("broken.png") for r in broken] == [True]
    good = [r for r in results if not r["error"]]
    assert all(len(r["classes"]) == 2 and r["probabilities"][0] >= r["probabilities"][1] for r in good)
    right = sum(r["classes"][0] == r["file"].split("/")[-2] for r in good)
    assert right / len(good) > 0.8  # the class is the dominant colour: an easy task
    assert "1 of 37 file(s) could not be predicted" in captured.err


def test_predict_table_and_csv_formats(shapes_run, capsys):
    root, run = shapes_run
    assert main(["predict", str(run), str(root / "circle" / "1.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(root / "circle" / "1.png")) and "(" in line
    assert main(["predict", str(run), str(root / "square"), "--format", "csv", "--top-k", "3"]) == 1  # broken.png
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0].keys() == {"file", "rank", "class", "probability", "error"}
    assert len([r for r in rows if r["rank"] == "1"]) == 12


def test_predict_api_matches_the_model_on_tensors(shapes_run):
    _, run = shapes_run
    classifier = Classifier.load(run)
    images = torch.rand(5, 3, 16, 16)
    results = predict(classifier, images, top_k=3)
    probabilities = classifier.logits(images).softmax(1)
    for result, row in zip(results, probabilities, strict=True):
        assert result.classes[0] == classifier.class_names[int(row.argmax())]
        assert result.probabilities[0] == pytest.approx(float(row.max()), abs=1e-6)
    with pytest.raises(UsageError, match="expects images of shape"):
        classifier.logits(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".torchscript.pt")])
def test_export_passes_parity_and_predicts_like_the_run(shapes_run, fmt, suffix, capsys):
    root, run = shapes_run
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "torch")
    assert main(["export", str(run), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "largest logit difference" in out and "100.0% have the same top-1 class" in out
    exported = run / f"model{suffix}"
    assert exported.is_file() and (run / f"model{suffix}.json").is_file()
    info = json.loads((run / f"model{suffix}.json").read_text())
    assert info["export_format"] == fmt and info["class_names"] == ["circle", "square", "stripe"]
    from_run = predict(run, [root], top_k=1)
    from_export = predict(exported, [root], top_k=1)
    assert [r.classes for r in from_run] == [r.classes for r in from_export]
    # dynamic batch: any batch size runs
    assert Classifier.load(exported).logits(torch.rand(7, 3, 16, 16)).shape == (7, 3)
    assert main(["export", str(run), "--format", fmt]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_export_refuses_a_model_that_does_not_match(shapes_run, tmp_path):
    from imgclf.checkpoint import load_model, read_model_info
    from imgclf.errors import ExportMismatchError
    from imgclf.export import export_model

    _, run = shapes_run
    model = load_model(run)
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        export_model(model, read_model_info(run), torch.rand(8, 3, 16, 16), tmp_path / "m.onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_tensorboard_logs_scalars_figures_and_hyperparameters(shapes_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = shapes_run
    tags = {"scalars": set(), "images": set()}
    for events in (run / "tensorboard").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for kind in tags:
            tags[kind] |= set(accumulator.Tags()[kind])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "train/loss_step"} <= tags["scalars"]
    assert {"figures/confusion_matrix", "figures/predictions"} <= tags["images"]
    assert any(tag.startswith("test/accuracy") for tag in tags["scalars"])  # the HParams summary
