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
    result = fit(model, digits, config, augment="flip-jitter", device=torch.device("cpu"), seed=0,
                 log=lambda line: None, quiet=True)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_accuracy > 0.5


def _fit(data, config, name="simple-cnn", **kwargs):
    model = _model(data, name)
    result = fit(model, data, config, augment=kwargs.pop("augment", "none"), device=torch.device("cpu"), seed=0,
                 log=lambda line: None, quiet=True, **kwargs)
    return model, result


def test_ema_keeps_the_averaged_weights(digits):
    plain, _ = _fit(digits, TrainConfig(epochs=2, batch_size=64))
    averaged, result = _fit(digits, TrainConfig(epochs=2, batch_size=64, ema=0.95))
    pairs = zip(plain.state_dict().values(), averaged.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    _, val_acc = loss_and_accuracy(averaged, digits.val, batch_size=256, device=torch.device("cpu"))
    assert val_acc == pytest.approx(result.best_val_accuracy) and val_acc > 0.8


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_and_cutmix_train(digits, mixup, cutmix):
    _, result = _fit(digits, TrainConfig(epochs=3, batch_size=32, mixup=mixup, cutmix=cutmix, lr=3e-3), "cnn")
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_accuracy > 0.6


def test_early_stopping_stops_when_validation_stalls(digits):
    lines = []
    model = _model(digits)
    result = fit(model, digits, TrainConfig(epochs=20, lr=1e-12, schedule="constant", early_stopping=2),
                 augment="none", device=torch.device("cpu"), seed=0, log=lines.append, quiet=True)
    assert result.stopped_early and len(result.history) == 3
    assert "early stopping" in lines[-1]


def test_gradient_clipping_limits_the_step(digits):
    start = _model(digits).state_dict()
    clipped, _ = _fit(digits, TrainConfig(epochs=1, optimizer="sgd", lr=0.1, momentum=0.0, schedule="constant",
                                          weight_decay=0.0, grad_clip=1e-6))
    moved = max((clipped.state_dict()[k] - start[k]).abs().max().item() for k in start)
    assert moved <= 0.1 * 1e-6 * 18 + 1e-7  # at most lr * max-norm per step, 18 steps


def test_tta_averages_an_image_and_its_mirror(digits):
    from imgclf.evaluation import predict_logits

    model = _model(digits).eval()
    logits = predict_logits(model, digits.test, device=torch.device("cpu"), tta=True)
    images = digits.test.float_images()
    with torch.no_grad():
        expected = (model(images) + model(images.flip(3))) / 2
    assert torch.allclose(logits, expected, atol=1e-5)


def test_the_fast_recipe_is_a_preset_under_file_and_flags(tmp_path):
    from imgclf.config import load_config

    config = load_config(None, {"recipe": "fast"})
    assert (config.model.name, config.train.batch_size, config.eval.tta) == ("fast-cnn", 1024, True)
    path = tmp_path / "run.yaml"
    path.write_text("recipe: fast\ntrain:\n  epochs: 3\n")
    config = load_config(path, {"train.lr": 0.1})
    assert (config.train.epochs, config.train.lr, config.train.label_smoothing) == (3, 0.1, 0.2)


def _rates(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of every optimizer step of ``config``'s schedule."""
    from imgclf.training import build_schedule

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=config.lr)
    schedule = build_schedule(optimizer, config, steps_per_epoch)
    rates = []
    for _ in range(config.epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_the_cyclic_and_milestone_schedules_follow_their_definitions():
    import numpy as np

    rates = _rates(TrainConfig(epochs=10, lr=5e-3, schedule="cyclic"), steps_per_epoch=10)
    # Wong et al.'s MNIST code: lr(t) = interp(t, [0, epochs * 2 // 5, epochs], [0, lr, 0]) at t = epoch + (i + 1) / n
    expected = [float(np.interp((k + 1) / 10, [0, 4, 10], [0, 5e-3, 0])) for k in range(100)]
    assert rates == pytest.approx(expected, abs=1e-12)
    # Wong et al.'s CIFAR-10 code: torch's CyclicLR from 0 to 0.2 and back, half the steps each way; each step
    # takes the rate CyclicLR reaches after it, as the MNIST script's lr(epoch + (i + 1) / n) does
    rates = _rates(TrainConfig(epochs=3, lr=0.2, schedule="cyclic", cyclic_peak=0.5), steps_per_epoch=8)
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    cyclic = torch.optim.lr_scheduler.CyclicLR(reference, base_lr=0.0, max_lr=0.2, step_size_up=12, step_size_down=12)
    expected = []
    for _ in range(24):
        reference.step()
        cyclic.step()
        expected.append(cyclic.get_last_lr()[0])
    assert rates == pytest.approx(expected, abs=1e-9)
    rates = _rates(TrainConfig(epochs=100, lr=0.01, schedule="step", milestones=[55, 75, 90]), steps_per_epoch=2)
    assert [rates[2 * e] for e in (54, 55, 74, 75, 89, 90)] == pytest.approx([1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5])


@pytest.mark.parametrize(("recipe", "model", "adversarial", "parameters"), [
    ("fgsm-rs-mnist", "fast-mnist-cnn", "fgsm-rs", 166_406), ("pgd-mnist", "madry-cnn", "pgd", 3_274_634),
    ("trades-mnist", "trades-cnn", "trades", 312_202)])
def test_the_papers_mnist_recipes_build_their_papers_networks(recipe, model, adversarial, parameters):
    from imgclf.config import load_config
    from imgclf.models import create_model

    config = load_config(None, {"recipe": recipe})
    assert (config.data.dataset, config.model.name, config.adversarial.recipe, config.adversarial.eps) == \
        ("mnist", model, adversarial, "0.3")
    assert config.model.mean == [0.0] and config.model.std == [1.0]  # the papers feed raw [0, 1] pixels
    assert config.adversarial.clip_start is (recipe != "fgsm-rs-mnist")  # Wong et al.'s MNIST start is unclamped
    network = create_model(model, channels=1, image_size=(28, 28), num_classes=10, mean=[0.0], std=[1.0])
    assert sum(p.numel() for p in network.parameters() if p.requires_grad) == parameters
    assert network(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_the_fgsm_rs_cifar10_recipe_is_wong_et_als():
    from imgclf.config import load_config

    config = load_config(None, {"recipe": "fgsm-rs-cifar10", "data.dataset": "../shared/data/cifar10-jpg"})
    assert config.data.dataset.endswith("cifar10-jpg")  # flags and the config file override the recipe
    assert (config.model.name, config.train.epochs, config.train.batch_size, config.train.lr) == \
        ("preact-resnet18", 15, 128, 0.2)
    assert (config.train.schedule, config.train.cyclic_peak, config.data.augment) == ("cyclic", 0.5, "flip-crop")
    assert (config.adversarial.recipe, config.adversarial.eps, config.adversarial.clip_start) == \
        ("fgsm-rs", "8/255", True)
    assert config.adversarial.alpha == pytest.approx(10 / 255)


def test_the_fast_pgd_recipe_changes_only_the_training_attack_of_fgsm_rs_mnist():
    from imgclf.config import load_config

    fast, paper = load_config(None, {"recipe": "fast-pgd-mnist"}), load_config(None, {"recipe": "fgsm-rs-mnist"})
    assert (fast.data, fast.model, fast.train, fast.attack) == (paper.data, paper.model, paper.train, paper.attack)
    assert (fast.adversarial.recipe, fast.adversarial.eps, fast.adversarial.steps) == ("pgd", "0.3", 3)
    assert (fast.adversarial.alpha, fast.adversarial.warmup_epochs) == (0.15, 2.0)
    assert load_config(None, {"recipe": "fast-pgd-mnist", "seed": 3}).adversarial == fast.adversarial


def test_mixed_precision_resolves_per_device_and_trains_in_bf16(digits):
    from imgclf.training import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16 and autocast_dtype("fp16", cpu) == torch.float16
    _, result = _fit(digits, TrainConfig(epochs=2, batch_size=64, amp="bf16"), "mlp")
    assert result.best_val_accuracy > 0.8


@pytest.mark.parametrize("steps", [1, 3, 4, 7, 8])
def test_onecycle_with_very_few_steps_still_trains(steps):
    """torch's OneCycleLR divides by zero at exactly 4 steps; short runs decay by cosine instead."""
    from imgclf.training import build_schedule

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = build_schedule(optimizer, TrainConfig(epochs=1, schedule="onecycle"), steps_per_epoch=steps)
    for _ in range(steps):
        optimizer.step()
        schedule.step()
    assert 0 <= optimizer.param_groups[0]["lr"] < 0.1


def test_the_epoch_bar_shows_the_running_loss_and_the_log_the_time_left(digits):
    import io

    from tqdm import tqdm

    from imgclf.data import iterate_batches
    from imgclf.training import build_optimizer, train_one_epoch

    model = _model(digits)
    batches = list(iterate_batches(digits.train, batch_size=100, device=torch.device("cpu")))
    screen = io.StringIO()
    with tqdm(total=len(batches), file=screen, disable=False, mininterval=0) as bar:
        optimizer = build_optimizer(model, TrainConfig())
        loss_sum, correct, seen = train_one_epoch(model.train(), batches, optimizer=optimizer, schedule=None,
                                                  loss_fn=torch.nn.CrossEntropyLoss(), progress=bar)
        bar.refresh()
    assert f"loss {float(loss_sum) / seen:.4f}  acc {float(correct) / seen:.4f}" in screen.getvalue()
    lines: list[str] = []
    fit(_model(digits), digits, TrainConfig(epochs=3), augment="none", device=torch.device("cpu"), seed=0,
        log=lines.append, quiet=True)
    assert [line.endswith(" s left") for line in lines] == [True, True, False]
