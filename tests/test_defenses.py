"""Adversarial training: each recipe's examples and loss, eps warm-up, robust checkpoint
selection, the catastrophic-overfitting alarm, resume, and robustness gained on real data."""

import io

import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED_DATA, shared_data
from imgclf.attacks import pgd
from imgclf.cli import main
from imgclf.config import AdversarialConfig, DataConfig, TrainConfig, load_config
from imgclf.data import load_data
from imgclf.defenses import Adversary, catastrophic_overfitting, kl_divergence, trades_adversarial
from imgclf.errors import UsageError
from imgclf.models import create_model
from imgclf.runtime import generator
from imgclf.training import fit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


def _model(data, name="simple-cnn", seed=0):
    torch.manual_seed(seed)
    s = data.spec
    return create_model(name, channels=s.channels, image_size=s.image_size, num_classes=s.num_classes,
                        mean=s.mean, std=s.std)


def _batch(data, n=64):
    return data.train.float_images(torch.arange(n)), data.train.labels[:n]


def test_kl_divergence_matches_torch(digits):
    clean, adversarial = torch.randn(16, 10), torch.randn(16, 10)
    expected = F.kl_div(F.log_softmax(adversarial, 1), F.log_softmax(clean, 1), log_target=True,
                        reduction="none").sum(1)
    assert torch.allclose(kl_divergence(clean, adversarial), expected, atol=1e-6)
    assert torch.allclose(kl_divergence(clean, clean), torch.zeros(16), atol=1e-6)


@pytest.mark.parametrize("clip_start", [True, False])
def test_fgsm_rs_is_one_step_of_1_25_eps_from_a_uniform_start(digits, clip_start):
    """Against a direct transcription of Wong et al.'s Algorithm 1 with the same random start (their
    MNIST code takes the gradient at the unclamped start, ``clip_start=False``)."""
    model = _model(digits).eval()
    images, labels = _batch(digits)
    eps = 0.3
    adversary = Adversary(model, recipe="fgsm-rs", eps=eps, seed=5, options={"clip_start": clip_start})
    ours = adversary.perturb(images, labels)
    noise = torch.rand(images.shape, generator=generator(5))
    start = images + (2 * noise - 1) * eps
    start = (start.clamp(0, 1) if clip_start else start).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(start), labels), start)
    delta = (start + 1.25 * eps * grad.sign() - images).clamp(-eps, eps)
    reference = (images + delta).clamp(0, 1)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert (ours - images).abs().max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1
    if clip_start:  # the same as one PGD step of 1.25 eps from a random start
        same = pgd(model, images, labels, eps=eps, alpha=1.25 * eps, steps=1, early_stop=False,
                   generator=generator(5))
        assert torch.allclose(ours, same, atol=1e-6)


@pytest.mark.parametrize("noise", [2.0, 0.0])
def test_n_fgsm_is_one_unprojected_step_of_eps_from_a_noise_start_twice_as_wide(digits, noise):
    """Against a direct transcription of de Jorge et al.'s training step (their code: ``--unif 2 --alpha eps``,
    no clipping to the eps ball) with the same random start."""
    model = _model(digits).eval()
    images, labels = _batch(digits)
    eps = 0.1
    adversary = Adversary(model, recipe="n-fgsm", eps=eps, seed=7, options={"noise": noise})
    ours = adversary.perturb(images, labels)
    uniform = torch.rand(images.shape, generator=generator(7))
    start = (images + (2 * uniform - 1) * noise * eps).clamp(0, 1) if noise else images.clone()
    start.requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(start), labels), start)
    reference = (start + eps * grad.sign()).clamp(0, 1)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert ours.min() >= 0 and ours.max() <= 1
    assert (ours - images).abs().max() <= (noise + 1) * eps + 1e-6
    if noise:  # the point of the method: the perturbation is not projected back to eps
        assert (ours - images).abs().max() > 1.5 * eps


def test_gradalign_adds_one_minus_the_gradient_cosine_and_trains_through_it(digits):
    """Against a transcription of the paper's regularizer with the same random point; zero for a linear model
    (its input gradient is the same everywhere); FGSM from the image, projected onto the ball."""
    model = _model(digits).train()
    images, labels = _batch(digits)
    eps = 0.1
    adversary = Adversary(model, recipe="gradalign", eps=eps, seed=3, options={"grad_align": 0.5})
    adversarial = adversary.perturb(images, labels)
    assert ((adversarial - images).abs().max() - eps).abs() < 1e-6 and adversarial.min() >= 0
    loss_fn = torch.nn.CrossEntropyLoss()
    _, loss = adversary.loss(model, images, adversarial, labels, loss_fn)
    x = images.clone().requires_grad_(True)
    (first,) = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
    point = (images + (2 * torch.rand(images.shape, generator=generator(3)) - 1) * eps).clamp(0, 1)
    point.requires_grad_(True)
    (second,) = torch.autograd.grad(F.cross_entropy(model(point), labels), point)
    cos = F.cosine_similarity(first.flatten(1), second.flatten(1), dim=1).mean()
    expected = loss_fn(model(adversarial), labels) + 0.5 * (1 - cos)
    assert torch.allclose(loss, expected, atol=1e-5) and 0 < 1 - cos < 1
    plain = Adversary(model, recipe="gradalign", eps=eps, seed=3, options={"grad_align": 0.0})
    assert plain.loss(model, images, adversarial, labels, loss_fn)[1] < loss
    loss.backward()  # through the second gradient (double backpropagation)
    assert all(p.grad is not None for p in model.parameters())
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    linear_adversary = Adversary(linear, recipe="gradalign", eps=eps, seed=3)
    linear_adversarial = linear_adversary.perturb(images, labels)  # (sets the batch's eps)
    _, linear_loss = linear_adversary.loss(linear, images, linear_adversarial, labels, loss_fn)
    assert linear_adversary.last_eps == eps
    assert torch.allclose(linear_loss, loss_fn(linear(linear_adversarial), labels), atol=1e-5)


@pytest.mark.parametrize("recipe", ["pgd", "fgsm-rs", "trades"])
def test_recipes_attack_in_eval_mode_and_leave_mode_and_gradients(digits, recipe):
    model = _model(digits, "cnn").train()  # batch norm and dropout: eval mode matters
    images, labels = _batch(digits)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    adversary = Adversary(model, recipe=recipe, eps=0.2, steps=3, seed=0)
    adversarial = adversary.perturb(images, labels)
    assert seen and not any(seen)  # every forward of the attack ran in eval mode
    assert model.training  # and the mode is restored
    assert all(p.grad is None for p in model.parameters())
    assert (adversarial - images).abs().max() <= 0.2 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial != images).any()
    logits, loss = adversary.loss(model, images, adversarial, labels, torch.nn.CrossEntropyLoss())
    assert logits.shape == (64, 10) and loss.ndim == 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pgd_training_examples_are_pgd_without_early_stopping(digits):
    model = _model(digits).eval()
    images, labels = _batch(digits)
    adversary = Adversary(model, recipe="pgd", eps=0.1, steps=5, seed=2)
    expected = pgd(model, images, labels, eps=0.1, steps=5, alpha=0.05, early_stop=False, generator=generator(2))
    assert torch.equal(adversary.perturb(images, labels), expected)


def test_trades_inner_maximisation_raises_the_kl(digits):
    model = _model(digits).eval()
    images, _ = _batch(digits)
    adversarial = trades_adversarial(model, images, eps=0.2, steps=10, alpha=0.05, generator=generator(0))
    with torch.no_grad():
        clean = model(images)
        start = kl_divergence(clean, model((images + 0.001 * torch.randn_like(images)).clamp(0, 1))).mean()
        reached = kl_divergence(clean, model(adversarial)).mean()
    assert reached > 100 * start
    assert (adversarial - images).abs().max() <= 0.2 + 1e-6 and 0 <= adversarial.min() <= adversarial.max() <= 1


def test_eps_warms_up_linearly_then_holds(digits):
    model = _model(digits).eval()
    images, labels = _batch(digits, 8)
    adversary = Adversary(model, recipe="fgsm-rs", eps=0.3, warmup_steps=3)
    seen = []
    for _ in range(5):
        adversarial = adversary.perturb(images, labels)
        seen.append(adversary.last_eps)
        assert (adversarial - images).abs().max() <= adversary.last_eps + 1e-6
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


def test_catastrophic_overfitting_needs_pgd_to_collapse_while_fgsm_rises():
    rows = [{"epoch": 1, "robust_val_accuracy": 0.6, "fgsm_val_accuracy": 0.7},
            {"epoch": 2, "robust_val_accuracy": 0.7, "fgsm_val_accuracy": 0.75}]
    assert catastrophic_overfitting(rows) is None
    collapsed = rows + [{"epoch": 3, "robust_val_accuracy": 0.05, "fgsm_val_accuracy": 0.9}]
    assert "epoch 3" in catastrophic_overfitting(collapsed)
    both_fell = rows + [{"epoch": 3, "robust_val_accuracy": 0.05, "fgsm_val_accuracy": 0.1}]
    assert catastrophic_overfitting(both_fell) is None  # a failing run, not overfitting to FGSM
    assert catastrophic_overfitting(rows + [{"epoch": 3, "robust_val_accuracy": 0.55, "fgsm_val_accuracy": 0.9}]) \
        is None  # 0.15 below the best is within the default drop of 0.2


def _adversarial(recipe="pgd", **settings):
    return AdversarialConfig(recipe=recipe, eps=settings.pop("eps", "0.1"), steps=settings.pop("steps", 3),
                             val_examples=settings.pop("val_examples", 128), val_steps=5, **settings)


class _Scripted:
    """Stands in for RobustValidation with fixed per-epoch accuracies."""

    def __init__(self, rows):
        self.rows = iter(rows)

    def __call__(self, model, *, extra=()):
        row = next(self.rows)
        return row if "fgsm" in extra else {"robust_val_accuracy": row["robust_val_accuracy"]}


def test_the_checkpoint_is_the_best_robust_epoch_not_the_best_clean_one(digits, monkeypatch):
    scripted = [{"robust_val_accuracy": a, "fgsm_val_accuracy": 0.5} for a in (0.3, 0.6, 0.4)]
    monkeypatch.setattr("imgclf.training.RobustValidation", lambda *args, **kwargs: _Scripted(scripted))
    states = []
    model = _model(digits)
    result = fit(model, digits, TrainConfig(epochs=3, batch_size=64), augment="none", device=CPU, seed=0,
                 log=lambda line: None, quiet=True, adversarial=_adversarial(), adversarial_eps=0.1,
                 on_epoch=lambda result, state: states.append(state["model"]))
    assert result.best_epoch == 2 and result.best_robust_val_accuracy == 0.6
    assert result.best_val_accuracy == result.history[1]["val_accuracy"]
    assert all(torch.equal(model.state_dict()[k], states[1][k]) for k in states[1])
    assert [row["train_eps"] for row in result.history] == pytest.approx([0.1, 0.1, 0.1])


def test_catastrophic_overfitting_stops_fgsm_rs_and_keeps_the_epoch_before(digits, monkeypatch):
    scripted = [{"robust_val_accuracy": 0.5, "fgsm_val_accuracy": 0.6},
                {"robust_val_accuracy": 0.6, "fgsm_val_accuracy": 0.65},
                {"robust_val_accuracy": 0.02, "fgsm_val_accuracy": 0.9}]
    monkeypatch.setattr("imgclf.training.RobustValidation", lambda *args, **kwargs: _Scripted(scripted))
    lines = []
    result = fit(_model(digits), digits, TrainConfig(epochs=6, batch_size=64), augment="none", device=CPU, seed=0,
                 log=lines.append, quiet=True, adversarial=_adversarial("fgsm-rs"), adversarial_eps=0.1)
    assert len(result.history) == 3 and result.stopped_early and result.best_epoch == 2
    assert "catastrophic overfitting in epoch 3" in result.catastrophic_overfitting
    assert any("catastrophic overfitting" in line and "keeps epoch 2" in line for line in lines)


def test_the_guard_also_fires_on_fgsm_far_above_pgd_once_the_warm_up_is_over():
    """The second signature: FGSM accuracy rising far above PGD's, counted only once eps stops rising."""
    warming = [{"epoch": 1, "train_eps": 0.15, "robust_val_accuracy": 0.1, "fgsm_val_accuracy": 0.3},
               {"epoch": 2, "train_eps": 0.3, "robust_val_accuracy": 0.12, "fgsm_val_accuracy": 0.6}]
    assert catastrophic_overfitting(warming, gap=0.4) is None  # the warm-up's gap: the anchor model's epoch 2 looks so
    gap = warming + [{"epoch": 3, "progress": 2.5, "train_eps": 0.3, "robust_val_accuracy": 0.1,
                      "fgsm_val_accuracy": 0.7}]
    assert catastrophic_overfitting(gap) is None  # off by default
    reason = catastrophic_overfitting(gap, gap=0.4)
    assert "epoch 3 (2.50 epochs in)" in reason and "0.6000 above PGD's 0.1000" in reason
    healthy = warming + [{"epoch": 3, "train_eps": 0.3, "robust_val_accuracy": 0.5, "fgsm_val_accuracy": 0.7}]
    assert catastrophic_overfitting(healthy, gap=0.4) is None
    learning = warming + [{"epoch": 3, "train_eps": 0.3, "robust_val_accuracy": 0.25, "fgsm_val_accuracy": 0.7}]
    assert catastrophic_overfitting(learning, gap=0.4) is None  # a gap of 0.45, but PGD climbs: still learning
    assert catastrophic_overfitting(gap, gap=0.6) is None
    fell = warming + [{"epoch": 3, "train_eps": 0.3, "robust_val_accuracy": 0.1, "fgsm_val_accuracy": 0.55}]
    assert catastrophic_overfitting(fell, gap=0.4) is None  # FGSM did not rise


_HEALTHY = [{"robust_val_accuracy": 0.5, "fgsm_val_accuracy": 0.6},
            {"robust_val_accuracy": 0.6, "fgsm_val_accuracy": 0.65}]
_COLLAPSE = {"robust_val_accuracy": 0.02, "fgsm_val_accuracy": 0.9}


def test_rollback_goes_back_to_the_last_good_epoch_and_trains_on(digits, monkeypatch):
    scripted = [*_HEALTHY, _COLLAPSE, {"robust_val_accuracy": 0.62, "fgsm_val_accuracy": 0.66},
                {"robust_val_accuracy": 0.63, "fgsm_val_accuracy": 0.67}]
    monkeypatch.setattr("imgclf.training.RobustValidation", lambda *args, **kwargs: _Scripted(scripted))
    lines, states = [], []
    result = fit(_model(digits), digits, TrainConfig(epochs=4, batch_size=64), augment="none", device=CPU, seed=0,
                 log=lines.append, quiet=True, adversarial=_adversarial("fgsm-rs", on_overfit="rollback"),
                 adversarial_eps=0.1, on_epoch=lambda result, state: states.append(state))
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4] and not result.stopped_early
    assert [row["robust_val_accuracy"] for row in result.history] == [0.5, 0.6, 0.62, 0.63]
    assert result.catastrophic_overfitting is None and result.best_epoch == 4
    assert len(result.overfit_events) == 1 and "rolled back to the end of epoch 2" in result.overfit_events[0]
    assert [probe["kept"] for probe in result.probes] == [1, 1, 0, 1, 1]  # the collapsed epoch's probe is kept aside
    assert any(line.startswith("warning: catastrophic overfitting in epoch 3") for line in lines)
    # the retrained epoch 3 started from epoch 2's weights but drew other batches than the collapsed one
    assert [state["epoch"] for state in states] == [1, 2, 3, 4]
    assert states[-1]["overfit"]["retries_used"] == 1


def test_restart_halves_the_step_and_stops_when_the_retries_are_spent(digits, monkeypatch):
    scripted = [*_HEALTHY, _COLLAPSE, _COLLAPSE]
    monkeypatch.setattr("imgclf.training.RobustValidation", lambda *args, **kwargs: _Scripted(scripted))
    steps = []
    monkeypatch.setattr(Adversary, "perturb", lambda self, images, labels: steps.append(self.step_scale) or images)
    lines = []
    result = fit(_model(digits), digits, TrainConfig(epochs=5, batch_size=64), augment="none", device=CPU, seed=0,
                 log=lines.append, quiet=True, adversarial=_adversarial("fgsm-rs", on_overfit="restart",
                                                                        overfit_retries=1), adversarial_eps=0.1)
    per_epoch = len(steps) // 4  # epochs 1, 2, 3 (collapsed), 3 again
    assert set(steps[:3 * per_epoch]) == {1.0} and set(steps[3 * per_epoch:]) == {0.5}
    assert result.stopped_early and result.best_epoch == 2 and len(result.history) == 3
    assert "step size x0.5 (1 of 1)" in result.overfit_events[0]
    assert "catastrophic overfitting in epoch 3" in result.catastrophic_overfitting
    assert any("training stops after 1 restart and keeps epoch 2" in line for line in lines)


def test_a_probe_inside_an_epoch_stops_training_where_the_collapse_happens(digits, monkeypatch):
    """Digits: 18 batches of 64 an epoch; a probe every 6 steps gives 3 probes an epoch (the last the epoch's)."""
    scripted = [*_HEALTHY, {"robust_val_accuracy": 0.62, "fgsm_val_accuracy": 0.66}, _COLLAPSE]
    monkeypatch.setattr("imgclf.training.RobustValidation", lambda *args, **kwargs: _Scripted(scripted))
    result = fit(_model(digits), digits, TrainConfig(epochs=3, batch_size=64), augment="none", device=CPU, seed=0,
                 log=lambda line: None, quiet=True, adversarial=_adversarial("fgsm-rs", probe_every=6),
                 adversarial_eps=0.1)
    assert len(result.history) == 1 and result.best_epoch == 1 and result.stopped_early
    assert "catastrophic overfitting in epoch 2 (1.33 epochs in)" in result.catastrophic_overfitting
    assert [round(probe["progress"], 2) for probe in result.probes] == [0.33, 0.67, 1.0, 1.33]


@pytest.mark.parametrize("recipe", ["pgd", "fgsm-rs", "n-fgsm", "gradalign"])
def test_resume_gives_the_uninterrupted_adversarial_weights(digits, recipe):
    config, adversarial = TrainConfig(epochs=2, batch_size=64), _adversarial(recipe, warmup_epochs=1.5)
    saved = []

    def save(result, state):  # serialised at once, as the pipeline does (the optimizer's state lives on)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved.append(buffer.getvalue())

    reference = _model(digits)
    fit(reference, digits, config, augment="none", device=CPU, seed=0, log=lambda line: None, quiet=True,
        adversarial=adversarial, adversarial_eps=0.1, on_epoch=save)
    resumed = _model(digits)
    fit(resumed, digits, config, augment="none", device=CPU, seed=0, log=lambda line: None, quiet=True,
        adversarial=adversarial, adversarial_eps=0.1, resume=torch.load(io.BytesIO(saved[0]), weights_only=True))
    assert all(torch.equal(reference.state_dict()[k], resumed.state_dict()[k]) for k in reference.state_dict())


def _robust_accuracy(model, data, eps):
    images, labels = data.test.float_images(), data.test.labels
    adversarial = pgd(model.eval(), images, labels, eps=eps, steps=20, generator=generator(0))
    with torch.no_grad():
        return (model(adversarial).argmax(1) == labels).float().mean().item()


GAIN_CONFIG = TrainConfig(epochs=4, batch_size=32, lr=3e-3)


@pytest.fixture(scope="module")
def standard_robust_accuracy(digits):
    standard = _model(digits)
    fit(standard, digits, GAIN_CONFIG, augment="none", device=CPU, seed=0, log=lambda line: None, quiet=True)
    return _robust_accuracy(standard, digits, 0.1)


@pytest.mark.parametrize("recipe", ["pgd", "fgsm-rs", "n-fgsm", "gradalign", "trades"])
def test_adversarial_training_buys_robustness_on_real_digits(digits, standard_robust_accuracy, recipe):
    robust = _model(digits)
    result = fit(robust, digits, GAIN_CONFIG, augment="none", device=CPU, seed=0, log=lambda line: None,
                 quiet=True, adversarial=_adversarial(recipe, eps="0.1", steps=3, beta=3.0), adversarial_eps=0.1)
    assert {"robust_val_accuracy", "train_eps"} <= set(result.history[0])
    gained = _robust_accuracy(robust, digits, 0.1) - standard_robust_accuracy
    assert gained > 0.15, f"{recipe} gained only {gained:.3f} PGD-20 accuracy at eps 0.1"


def test_bad_adversarial_settings_get_one_clear_error(tmp_path, capsys):
    with pytest.raises(UsageError, match="valid choices: fgsm-rs, gradalign, n-fgsm, none, pgd, trades"):
        load_config(None, {"adversarial.recipe": "free"})
    with pytest.raises(UsageError, match="hard labels"):
        load_config(None, {"adversarial.recipe": "pgd", "train.mixup": 0.2})
    with pytest.raises(UsageError, match="one radius"):
        load_config(None, {"adversarial.recipe": "pgd", "adversarial.eps": "0.1,0.2"})
    assert main(["train", "--dataset", "digits", "--adversarial", "pgd", "--adv-eps", "0",
                 "--out", str(tmp_path / "zero")]) == 2
    assert "eps 0 is standard training" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists()


def _mnist_training(tmp_path, recipe, *flags):
    """3,000 MNIST training images at eps 0.3, probed every 20 of the 47 steps an epoch: a small data set on
    which FGSM-RS (the clamped start) overfits catastrophically within two epochs and N-FGSM does not."""
    from imgclf.record import PROBES, read_metrics

    shared_data("MNIST")
    out = tmp_path / recipe
    assert main(["train", "--dataset", "mnist", "--data-dir", str(SHARED_DATA), "--train-examples", "3000",
                 "--model", "simple-cnn", "--epochs", "4", "--adversarial", recipe, "--adv-eps", "0.3",
                 "--robust-val-examples", "200", "--overfit-probe-every", "20", *flags, "--out", str(out),
                 "--quiet"]) == 0
    adversarial = read_metrics(out).training.adversarial
    return adversarial, (out / PROBES).read_text().splitlines()


def test_the_monitor_catches_a_real_collapse_and_restarts_with_a_smaller_step(tmp_path):
    adversarial, probes = _mnist_training(tmp_path, "fgsm-rs", "--on-overfit", "restart", "--overfit-gap", "0.4")
    assert adversarial.recoveries and "restarted from the end of epoch" in adversarial.recoveries[0]
    assert any(line.endswith(",0.0") for line in probes[1:])  # the probes of the epoch given up, kept aside


def test_the_monitor_stays_quiet_on_a_healthy_run(tmp_path):
    adversarial, probes = _mnist_training(tmp_path, "n-fgsm", "--on-overfit", "restart", "--overfit-gap", "0.4")
    assert adversarial.recoveries == [] and adversarial.catastrophic_overfitting is None
    assert len(probes) == 1 + 4 * 3  # the header, and 3 probes an epoch (steps 20, 40 and the epoch's end)


def test_the_training_curves_draw_the_probes_inside_epochs_and_the_ones_given_up():
    from imgclf.report import training_curves

    history = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": 0.9,
                "robust_val_accuracy": 0.5, "fgsm_val_accuracy": 0.6} for e in (1, 2)]
    probes = [{"epoch": 1.0, "progress": p, "robust_val_accuracy": 0.5, "fgsm_val_accuracy": 0.6, "kept": k}
              for p, k in ((0.5, 1.0), (1.0, 1.0), (1.5, 0.0), (2.0, 1.0))]
    labels = [line.get_label() for line in training_curves(history, probes).axes[1].get_lines()]
    assert {"probe (PGD)", "probe (FGSM)", "rolled back (PGD)", "rolled back (FGSM)"} <= set(labels)
    per_epoch = [row for row in probes if row["progress"] in (1.0, 2.0)]
    assert not any("probe" in line.get_label() for line in training_curves(history, per_epoch).axes[1].get_lines())
    damaged = [{"epoch": 1.0}]  # a probes.csv without its columns draws no points, and no traceback
    assert len(training_curves(history, damaged).axes[1].get_lines()) == 4


@pytest.mark.parametrize("damaged", ["x", {"probes": [{"progress": "a"}], "events": [], "retries_used": 0},
                                     {"probes": []}])
def test_a_damaged_monitor_state_is_one_clear_error(damaged):
    from imgclf.defenses import OverfitMonitor

    with pytest.raises(UsageError, match="overfitting monitor is damaged"):
        OverfitMonitor(lambda probes: None).load_state_dict(damaged)
