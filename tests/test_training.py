import pytest
import torch

from imgclf.config import DataConfig, TrainConfig
from imgclf.data import load_data
from imgclf.evaluation import loss_and_accuracy
from imgclf.models import create_model
from imgclf.training import fit


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


def _model(data, name="simple-cnn", seed=0):
    torch.manual_seed(seed)
    s = data.spec
    return create_model(name, channels=s.channels, image_size=s.image_size, num_classes=s.num_classes,
                        mean=s.mean, std=s.std)


def test_fit_learns_and_keeps_the_best_validation_epoch(digits):
    model = _model(digits)
    result = fit(model, digits, TrainConfig(epochs=4, batch_size=32, lr=3e-3), augment="none",
                 device=torch.device("cpu"), seed=0, log=lambda line: None, quiet=True)
    assert len(result.history) == 4 and not model.training
    accs = [row["val_accuracy"] for row in result.history]
    assert result.best_val_accuracy == max(accs) > 0.85
    assert result.best_epoch == max(i for i, a in enumerate(accs, 1) if a == max(accs))
    _, val_acc = loss_and_accuracy(model, digits.val, batch_size=128, device=torch.device("cpu"))
    assert val_acc == pytest.approx(result.best_val_accuracy)  # the model holds the best epoch's weights


def test_same_seed_same_weights(digits):
    states = []
    for _ in range(2):
        model = _model(digits, "cnn")
        fit(model, digits, TrainConfig(epochs=1, batch_size=64), augment="flip-crop",
            device=torch.device("cpu"), seed=7, log=lambda line: None, quiet=True)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("optimizer, schedule", [("sgd", "step"), ("adam", "cosine"), ("adamw", "constant")])
def test_every_optimizer_and_schedule_trains(digits, optimizer, schedule):
    model = _model(digits, "mlp")
    config = TrainConfig(epochs=2, batch_size=64, optimizer=optimizer, schedule=schedule, step_epochs=1,
                         lr=0.05 if optimizer == "sgd" else 3e-3, label_smoothing=0.1)
    result = fit(model, digits, config, augment="seed000", device=torch.device("cpu"), seed=0,
                 log=lambda line: None, quiet=True)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_accuracy > 0.5
