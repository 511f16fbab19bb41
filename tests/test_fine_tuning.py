"""Fine-tuning: weights of another task with a new classifier head, a frozen backbone for the first epochs,
a smaller learning rate for the backbone, BatchNorm statistics held or not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_folder
from imgclf.checkpoint import load_model
from imgclf.cli import main
from imgclf.config import config_from_dict
from imgclf.errors import UsageError
from imgclf.models.classifier import classifier_head
from imgclf.pipeline import Run

MODEL = ["--model", "cnn", "--model-option", "widths=[8,8,16]", "--image-size", "16", "--batch-size", "8",
         "--seed", "1"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-class run (the "pretraining") and a 2-class folder (the new task)."""
    root = tmp_path_factory.mktemp("fine-tuning")
    three = make_tiny_folder(root)
    (three / "square" / "broken.png").unlink()
    two = root / "two"
    for name in ("circle", "stripe"):
        shutil.copytree(three / name, two / name)
    run = root / "pretrained"
    assert main(["train", "--dataset", str(three), *MODEL, "--epochs", "2", "--out", str(run), "--quiet"]) == 0
    return run, two


def _body(run: Path) -> dict[str, torch.Tensor]:
    return {k.removeprefix("body."): v for k, v in load_model(run).state_dict().items() if k.startswith("body.")}


def _config(two: Path, run: Path, **train: object) -> object:
    return config_from_dict({"data": {"dataset": str(two), "image_size": 16},
                             "model": {"name": "cnn", "options": {"widths": [8, 8, 16]},
                                       "weights": str(run / "model.safetensors")},
                             "train": {"batch_size": 8, **train}, "seed": 1})


def test_a_frozen_backbone_keeps_its_weights_while_the_new_head_learns(pretrained, tmp_path, capsys):
    run, two = pretrained
    before = _body(run)
    head = classifier_head(load_model(run).body)
    out = tmp_path / "frozen"
    assert main(["train", "--dataset", str(two), *MODEL, "--weights", str(run / "model.safetensors"),
                 "--epochs", "1", "--freeze-epochs", "1", "--freeze-bn", "--out", str(out)]) == 0
    assert f"every layer but the classifier head ({head}.weight, {head}.bias)" in capsys.readouterr().out
    after = _body(out)
    assert after[f"{head}.weight"].shape[0] == 2 and before[f"{head}.weight"].shape[0] == 3
    for key, tensor in before.items():
        if not key.startswith(head + ".") and key in after:
            assert torch.equal(after[key], tensor), key  # weights and, with --freeze-bn, BatchNorm statistics
    assert all(p.requires_grad for p in Run.open(out).model.parameters())  # trainable again after training
    tuned, source = load_model(out), load_model(run)
    assert torch.equal(tuned.normalize.mean, source.normalize.mean)  # the weights' own normalization, not the data's
    info = json.loads((out / "model.json").read_text())["initial_weights"]
    assert info["file"] == str(run / "model.safetensors") and len(info["sha256"]) == 64
    assert (info["freeze_epochs"], info["freeze_bn"], info["backbone_lr_scale"]) == (1, True, 1.0)

    thawed = tmp_path / "bn-updating"
    assert main(["train", "--dataset", str(two), *MODEL, "--weights", str(run / "model.safetensors"),
                 "--epochs", "1", "--freeze-epochs", "1", "--out", str(thawed), "--quiet"]) == 0
    changed = [key for key, tensor in _body(thawed).items() if key in before and not key.startswith(head + ".")
               and not torch.equal(tensor, before[key])]
    assert changed and all("running_" in key or "num_batches" in key for key in changed)  # only the statistics


def test_two_phases_unfreeze_with_a_new_schedule_and_resume_to_the_same_weights(pretrained, tmp_path, capsys):
    run, two = pretrained
    config = _config(two, run, epochs=3, freeze_epochs=1, backbone_lr_scale=0.1, lr=0.01)
    whole = Run.train(config, out=tmp_path / "whole")
    out = capsys.readouterr().out
    assert "epoch 2: the backbone trains too from here, with a new onecycle schedule over the last 2 epochs" in out
    state = torch.load(tmp_path / "whole" / "train_state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["initial_lr"] == pytest.approx(0.1 * groups[1]["initial_lr"])  # discriminative rates
    assert groups[1]["initial_lr"] == 0.01  # (so few steps get the cosine decay from lr, see MIN_ONECYCLE_STEPS)
    lrs = [row["lr"] for row in whole.train_result.history]
    assert lrs[1] > 10 * lrs[0]  # the second phase warms up again from the end of the first

    class Stop(Exception):
        pass

    for stop in (1, 2):  # in the frozen phase's last epoch, and in the second phase

        def stop_after(result, stop=stop):
            if len(result.history) == stop:
                raise Stop

        stopped = tmp_path / f"stopped-{stop}"
        with pytest.raises(Stop):
            Run.train(config, out=stopped, after_epoch=stop_after)
        Run.resume(stopped, quiet=True)
        first, second = load_model(tmp_path / "whole").state_dict(), load_model(stopped).state_dict()
        assert all(torch.equal(first[k], second[k]) for k in first), stop


def test_weights_that_do_not_fit_beyond_the_head_are_refused(pretrained, tmp_path):
    run, two = pretrained
    config = config_from_dict({"data": {"dataset": str(two), "image_size": 16},
                               "model": {"name": "cnn", "options": {"widths": [8, 16, 16]},  # other widths
                                         "weights": str(run / "model.safetensors")},
                               "train": {"epochs": 1}})
    with pytest.raises(UsageError, match="do not fit the model: other shape: "):
        Run.train(config, out=tmp_path / "wrong", quiet=True)
