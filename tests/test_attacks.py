"""Attacks: bounds and contracts for every attack, agreement with independent
implementations (textbook code, torchattacks, scipy's LP solver), targeted
attacks, the worst case over attacks, and the sanity checks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import Rounding, shared_data
from imgclf.attacks import (
    ATTACKS,
    AttackSpec,
    apgd,
    choose_targets,
    fgsm,
    pgd,
    robustness,
    square,
)
from imgclf.attacks.fab import project_onto_hyperplane
from imgclf.attacks.losses import dlr, margin
from imgclf.attacks.square_search import square_fraction
from imgclf.config import DataConfig, TrainConfig
from imgclf.data import load_data
from imgclf.models import create_model
from imgclf.training import fit

CPU = torch.device("cpu")


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = create_model("cnn", channels=3, image_size=(16, 16), num_classes=5, mean=[0.5] * 3, std=[0.3] * 3)
    for _ in range(2):  # a few steps so batch norm has running statistics
        net(torch.rand(32, 3, 16, 16)).sum().backward()
    return net.eval()


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(16, 3, 16, 16, generator=gen), torch.randint(0, 5, (16,), generator=gen)


@pytest.fixture(scope="module")
def mnist():
    """A simple-cnn trained for one epoch on 6,000 MNIST images, and 300 test images."""
    root = shared_data("MNIST").parent
    data = load_data(DataConfig(dataset="mnist", data_dir=str(root), train_examples=6000), seed=0)
    torch.manual_seed(0)
    s = data.spec
    net = create_model("simple-cnn", channels=1, image_size=s.image_size, num_classes=10, mean=s.mean, std=s.std)
    fit(net, data, TrainConfig(epochs=1, batch_size=64), augment="none", device=CPU, seed=0,
        log=lambda line: None, quiet=True)
    net.eval()
    x, y = data.test.float_images(np.arange(300)), data.test.labels[:300]
    with torch.no_grad():
        assert (net(x).argmax(1) == y).float().mean() > 0.9
    return net, x, y


def accuracy(model, images, labels):
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


SETTINGS = [(name, norm) for name, info in ATTACKS.items() for norm in info.norms]


@pytest.mark.parametrize("name, norm", SETTINGS)
def test_every_attack_stays_in_pixel_range_and_eps_ball_and_eps_zero_is_identity(model, batch, name, norm):
    x, _ = batch
    y = model(x).argmax(1).detach()  # all correct: the attack has something to do
    spec = AttackSpec(name, norm=norm, steps=5, options={"queries": 50}, target_classes=2)
    for eps in ((0.0, 2 / 255, 0.3, 1.0) if norm == "linf" else (0.0, 0.5, 3.0)):
        adv = spec.run(model, x, y, eps, torch.Generator().manual_seed(0))
        assert adv.shape == x.shape and adv.dtype == x.dtype
        assert adv.min() >= 0 and adv.max() <= 1
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert size.max() <= eps + 1e-5
        if eps == 0:
            assert torch.equal(adv, x)
        if eps >= 0.3:
            assert accuracy(model, adv, y) < 1


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_leave_the_model_untouched_and_work_under_inference_mode(model, batch, name):
    x, y = batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    spec = AttackSpec(name, steps=3, options={"queries": 20}, target_classes=2)
    with torch.inference_mode():
        inside = spec.run(model, x, y, 0.1, torch.Generator().manual_seed(0))
    outside = spec.run(model, x, y, 0.1, torch.Generator().manual_seed(0))
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.allclose(inside, outside) and not torch.equal(outside, x)


def reference_fgsm(model, x, y, eps):
    """Textbook FGSM, written independently: loss.backward() on a leaf copy."""
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    return torch.clamp(x + eps * x.grad.sign(), 0, 1).detach()


def reference_pgd(model, x, y, eps, alpha, steps, start):
    """Textbook PGD from a given start point, written independently."""
    adv = start.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        F.cross_entropy(model(adv), y).backward()
        with torch.no_grad():
            adv = adv + alpha * adv.grad.sign()
            adv = torch.max(torch.min(adv, x + eps), x - eps).clamp(0, 1)
    return adv.detach()


def test_fgsm_and_pgd_match_textbook_implementations_exactly(model, batch):
    x, y = batch
    assert torch.equal(fgsm(model, x, y, eps=8 / 255), reference_fgsm(model, x, y, 8 / 255))
    eps, alpha, steps = 8 / 255, 2 / 255, 7
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=False, early_stop=False)
    assert torch.allclose(ours, reference_pgd(model, x, y, eps, alpha, steps, x), atol=1e-6)
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, early_stop=False,
               generator=torch.Generator().manual_seed(5))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    start = (x + (2 * noise - 1) * eps).clamp(0, 1)
    assert torch.allclose(ours, reference_pgd(model, x, y, eps, alpha, steps, start), atol=1e-6)


def test_early_stopping_only_keeps_what_already_fools(model, batch):
    x, y = batch
    y = model(x).argmax(1).detach()
    full = pgd(model, x, y, eps=0.02, alpha=0.005, steps=10, random_start=False, early_stop=False)
    early = pgd(model, x, y, eps=0.02, alpha=0.005, steps=10, random_start=False)
    assert accuracy(model, early, y) <= accuracy(model, full, y)
    with torch.no_grad():
        unfooled = model(early).argmax(1) == y
    assert torch.allclose(early[unfooled], full[unfooled], atol=1e-6)  # never fooled: ran every step


@pytest.mark.slow
def test_fgsm_and_pgd_agree_with_torchattacks_on_a_trained_mnist_model(mnist):
    torchattacks = pytest.importorskip("torchattacks")
    net, x, y = mnist
    theirs = torchattacks.FGSM(net, eps=0.1)(x, y)
    assert abs(accuracy(net, fgsm(net, x, y, eps=0.1), y) - accuracy(net, theirs, y)) <= 0.01
    for random_start in (False, True):
        ours = pgd(net, x, y, eps=0.1, alpha=0.01, steps=20, random_start=random_start,
                   generator=torch.Generator().manual_seed(0))
        theirs = torchattacks.PGD(net, eps=0.1, alpha=0.01, steps=20, random_start=random_start)(x, y)
        assert abs(accuracy(net, ours, y) - accuracy(net, theirs, y)) <= 0.01
    ours = pgd(net, x, y, eps=2.0, norm="l2", alpha=0.2, steps=20, random_start=False)
    theirs = torchattacks.PGDL2(net, eps=2.0, alpha=0.2, steps=20, random_start=False)(x, y)
    assert abs(accuracy(net, ours, y) - accuracy(net, theirs, y)) <= 0.01


@pytest.mark.slow
def test_autoattack_components_agree_with_torchattacks(mnist):
    """APGD-CE, APGD-DLR, APGD-T, FAB-T and Square against torchattacks' ports of the
    reference code, on 100 MNIST images at eps 0.1: within 3 points (they draw
    different random starts)."""
    torchattacks = pytest.importorskip("torchattacks")
    net, x, y = mnist
    x, y = x[:100], y[:100]
    pairs = {
        "apgd-ce": torchattacks.APGD(net, eps=0.1, steps=25, loss="ce", seed=0),
        "apgd-dlr": torchattacks.APGD(net, eps=0.1, steps=25, loss="dlr", seed=0),
        "apgd-t": torchattacks.APGDT(net, eps=0.1, steps=25, n_classes=10, seed=0),
        "fab-t": torchattacks.FAB(net, eps=0.1, steps=25, multi_targeted=True, n_classes=10, seed=0),
        "square": torchattacks.Square(net, eps=0.1, n_queries=300, seed=0),
    }
    for name, reference in pairs.items():
        spec = AttackSpec(name, steps=25, options={"queries": 300})
        ours = spec.run(net, x, y, 0.1, torch.Generator().manual_seed(0))
        assert abs(accuracy(net, ours, y) - accuracy(net, reference(x, y), y)) <= 0.03, name


@pytest.mark.slow
def test_targeted_attacks_reach_their_target_at_eps_03_on_mnist(mnist):
    """PGD-20 towards random and fixed targets: >= 90% (the issue's bar). The hardest
    targets, least-likely, with APGD-CE: >= 85% on this weakly trained test model
    (6,000 images, one epoch); the documented fully trained model reaches 100%."""
    net, x, y = mnist
    for mode, name, bar in (("random", "pgd", 0.9), (3, "pgd", 0.9), ("least-likely", "apgd-ce", 0.85)):
        target = choose_targets(mode, net(x).detach(), y, torch.Generator().manual_seed(0))
        keep = target >= 0
        adv = AttackSpec(name, target=mode).run(net, x[keep], y[keep], 0.3, torch.Generator().manual_seed(0),
                                                target[keep])
        with torch.no_grad():
            reached = (net(adv).argmax(1) == target[keep]).float().mean().item()
        assert reached >= bar, (mode, reached)


def test_targets_are_never_the_true_label(model, batch):
    x, y = batch
    logits = model(x).detach()
    for mode in ("random", "least-likely"):
        target = choose_targets(mode, logits, y, torch.Generator().manual_seed(0))
        assert (target != y).all() and target.min() >= 0 and target.max() < 5
    fixed = choose_targets("2", logits, y, torch.Generator())
    assert ((fixed == -1) == (y == 2)).all() and (fixed[y != 2] == 2).all()
    with pytest.raises(ValueError, match="target must differ|must differ"):
        pgd(model, x, y, eps=0.1, target=y)
    with pytest.raises(ValueError, match="unknown target 'sideways'; valid choices: random, least-likely"):
        choose_targets("sideways", logits, y, torch.Generator())


def test_bad_inputs_raise_clear_errors(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel space"):
        fgsm(model, x * 2 - 1, y, eps=0.1)
    with pytest.raises(ValueError, match="eps is in pixel units"):
        pgd(model, x, y, eps=8)
    with pytest.raises(ValueError, match="labels must be"):
        fgsm(model, x, y.float(), eps=0.1)
    with pytest.raises(ValueError, match="unknown norm 'l1'; valid choices: linf, l2"):
        pgd(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        AttackSpec("cw")


def test_attacking_a_model_in_training_mode_warns(model, batch):
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        fgsm(model, *batch, eps=0.1)


def test_dlr_needs_three_classes_and_is_skipped_with_a_message_when_fewer():
    torch.manual_seed(0)
    two = create_model("mlp", channels=1, image_size=(4, 4), num_classes=2, mean=[0.5], std=[0.3]).eval()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match="DLR loss needs at least 3 classes, the model has 2"):
        apgd(two, x, y, eps=0.1, loss="dlr")
    result = robustness(two, x, y, attacks=[AttackSpec("pgd", steps=3), AttackSpec("apgd-dlr"), AttackSpec("apgd-t")],
                        eps_values=[0.1], device=CPU, run_checks=False)
    assert {e.attack for e in result.entries} == {"pgd", "worst-case"}
    assert result.skipped == ["apgd-dlr skipped: it needs at least 3 classes, the model has 2",
                              "apgd-t skipped: it needs at least 4 classes, the model has 2"]


def test_dlr_is_invariant_to_shifting_and_scaling_logits():
    logits, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    targets = (labels + 1) % 5
    for target in (None, targets):
        loss = dlr(labels, target)
        assert torch.allclose(loss(logits), loss(3 * logits + 7), atol=1e-5)
    assert ((margin(logits, labels) < 0) == (logits.argmax(1) != labels)).all()


def test_hyperplane_projection_is_the_minimum_norm_step_found_by_a_linear_program():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    gen = torch.Generator().manual_seed(0)
    point = torch.rand(5, 12, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    c = torch.randn(5, generator=gen, dtype=torch.float64)
    for norm in ("linf", "l2"):
        delta = project_onto_hyperplane(point, w, c, norm)
        assert torch.allclose((w * delta).sum(1), c, atol=1e-6)
        assert (point + delta).min() >= -1e-9 and (point + delta).max() <= 1 + 1e-9
    delta = project_onto_hyperplane(point, w, c, "linf")
    for i in range(5):  # minimize t subject to |d_j| <= t, <w, d> = c, 0 <= p + d <= 1
        d = 12
        cost = np.r_[np.zeros(d), 1.0]
        upper = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
        bounds = [(-point[i, j].item(), 1 - point[i, j].item()) for j in range(d)] + [(0, None)]
        lp = scipy_optimize.linprog(cost, A_ub=upper, b_ub=np.zeros(2 * d), A_eq=np.r_[w[i].numpy(), 0.0][None],
                                    b_eq=[c[i].item()], bounds=bounds)
        if lp.success:
            assert math.isclose(delta[i].abs().max().item(), lp.fun, rel_tol=1e-6, abs_tol=1e-9)


def test_square_schedule_halves_the_square_at_the_papers_points():
    assert square_fraction(0.8, 5, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 2500, 5000) == 0.8 / 2 ** 7  # 2,500 of 5,000 is 5,000 of 10,000
    assert square_fraction(0.8, 9000, 10000) == 0.8 / 2 ** 9


def test_a_focused_square_search_goes_on_with_the_examples_of_smallest_margin_only():
    class Brightness(torch.nn.Module):  # class 0 wins by 10 * brightness + 1: darker images are nearer to falling
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(x.mean(dim=(1, 2, 3)))
            return torch.stack([10 * x.mean(dim=(1, 2, 3)) + 1, torch.zeros(len(x))], dim=1)

    model = Brightness().eval()
    images = torch.linspace(0.1, 0.8, 8).view(8, 1, 1, 1).expand(8, 1, 6, 6).contiguous()
    labels = torch.zeros(8, dtype=torch.int64)
    adversarial = square(model, images, labels, eps=0.01, queries=50, focus=0.25,
                         generator=torch.Generator().manual_seed(0))
    assert (adversarial - images).abs().max() <= 0.01 + 1e-6
    assert [len(seen) for seen in model.seen] == [8] * 10 + [2] * 40  # a fifth on all, the rest on a quarter
    assert all(seen.max() < 0.3 for seen in model.seen[10:])  # the two darkest (0.1 and 0.2, within eps)
    with pytest.raises(ValueError, match="focus"):
        square(model, images, labels, eps=0.01, queries=50, focus=0.0)


def test_robust_accuracy_is_the_per_example_worst_case(model, batch):
    x, y = batch
    y = model(x).argmax(1).detach()
    y[:3] = (y[:3] + 1) % 5  # three examples wrong already
    attacks = [AttackSpec("fgsm"), AttackSpec("pgd", steps=10), AttackSpec("pgd", steps=10, target="random"),
               AttackSpec("square", options={"queries": 40})]
    result = robustness(model, x, y, attacks=attacks, eps_values=[0, 0.004, 0.1], device=CPU, batch_size=5, seed=0)
    rows = {(e.attack, e.eps): e for e in result.entries}
    assert result.clean_accuracy == 13 / 16
    for eps in (0.0, 0.004, 0.1):
        worst = rows[("worst-case", eps)]
        expected = ~np.logical_or.reduce([result.fooled[(a.label, eps)] for a in attacks])
        correct = np.arange(16) >= 3
        assert worst.accuracy == (expected & correct).mean()
        assert worst.accuracy <= min(rows[(a.label, eps)].accuracy for a in attacks)
        for a in attacks:
            row = rows[(a.label, eps)]
            assert row.accuracy == pytest.approx(row.clean_accuracy * (1 - row.success_rate))
            assert not result.fooled[(a.label, eps)][:3].any()  # wrong examples are not attacked
    assert rows[("worst-case", 0.0)].accuracy == result.clean_accuracy
    assert rows[("pgd (target random)", 0.1)].target_success_rate is not None
    assert len(rows[("pgd", 0.1)].per_class) == 5
    assert result.adversarial["images"].shape == (3, 16, 3, 16, 16)
    fooled = result.adversarial["fooled"][2]
    assert (result.adversarial["fooled_by"][2][fooled] >= 0).all()
    again = robustness(model, x, y, attacks=[AttackSpec("pgd", steps=10)], eps_values=[0.004], device=CPU,
                       batch_size=5, seed=0, run_checks=False)
    assert again.entries[0].accuracy == rows[("pgd", 0.004)].accuracy  # a point does not depend on the others


def test_evaluation_runs_channels_last_and_leaves_the_model_as_it_was(model, batch):
    from imgclf.runtime import channels_last

    x, y = batch
    grey = create_model("simple-cnn", channels=1, image_size=(16, 16), num_classes=5, mean=[0.5], std=[0.3]).eval()
    for net, images in ((model, x), (grey, x[:, :1])):
        weights = {name: (p.data_ptr(), p.stride()) for name, p in net.named_parameters()}
        with torch.no_grad():
            plain = net(images)
        with channels_last(net) as converted, torch.no_grad():
            assert converted
            convs = [p for p in net.parameters() if p.dim() == 4]
            # a 1-channel kernel is contiguous in both layouts; it must still be restrided, or the
            # convolution and the pooling after it run in the slow NCHW layout
            assert all(p.stride()[1] == 1 for p in convs)
            torch.testing.assert_close(net(images), plain, rtol=1e-4, atol=1e-5)
        assert {name: (p.data_ptr(), p.stride()) for name, p in net.named_parameters()} == weights
    before = {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
    robustness(model, x, y, attacks=[AttackSpec("fgsm")], eps_values=[0.1], device=CPU, run_checks=False)
    assert {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()} == before
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with channels_last(mlp) as converted:
        assert not converted


def test_chunked_model_gives_the_logits_and_gradients_of_one_call(model, batch):
    from imgclf.attacks.core import Chunked, logits_and_gradient

    x, y = batch  # 16 examples in chunks of 5: 5, 5, 5, 1
    loss = lambda logits: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
    whole, whole_grad = logits_and_gradient(model, x, loss)
    parts, parts_grad = logits_and_gradient(Chunked(model, 5), x, loss)
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts_grad, whole_grad, rtol=1e-4, atol=1e-6)
    assert not Chunked(model, 5).eval().model.training and Chunked(model, 5).train().model.training is False


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd", "square"])
def test_an_attack_given_more_than_its_batch_takes_the_batches_in_turn(model, batch, name):
    """A large input is attacked batch by batch: the result of one call is that of the batches, each attacked
    alone with the generator's draws taken in turn (and a target split with them)."""
    import imgclf.attacks as attacks

    x, y = batch  # 16 examples
    target = (y + 1) % 5 if name in ("fgsm", "pgd", "apgd") else None
    extra = {"target": target} if target is not None else {}
    if name != "fgsm":
        extra["generator"] = torch.Generator().manual_seed(3)
    attack = getattr(attacks, name)
    kwargs = {"steps": 5} if name in ("pgd", "apgd") else {"queries": 30} if name == "square" else {}
    whole = attack(model, x, y, eps=0.1, batch_size=6, **kwargs, **extra)
    gen = torch.Generator().manual_seed(3)
    parts = [attack(model, x[i:i + 6], y[i:i + 6], eps=0.1, **kwargs,
                    **({"target": target[i:i + 6]} if target is not None else {}),
                    **({"generator": gen} if name != "fgsm" else {})) for i in range(0, 16, 6)]
    torch.testing.assert_close(whole, torch.cat(parts))
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, got 0"):
        attack(model, x, y, eps=0.1, batch_size=0, **kwargs)
    assert "batch_size" in attack.__doc__


class Probabilities(torch.nn.Module):
    """The classic mistake: a softmax at the end, so attacks see probabilities."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(10 * self.inner(x), 1)


def _statuses(result):
    return {check["name"]: check["status"] for check in result.checks}


@pytest.mark.slow
def test_sanity_checks_pass_on_an_honest_model_and_fail_on_masked_gradients(mnist):
    net, x, y = mnist
    x, y = x[:150], y[:150]
    quick = [AttackSpec("fgsm"), AttackSpec("pgd"), AttackSpec("square", options={"queries": 200})]
    honest = robustness(net, x, y, attacks=quick, eps_values=[0, 0.1, 0.3], device=CPU, seed=0)
    statuses = _statuses(honest)
    assert statuses.pop("transfer beats the evaluation") == "not run"  # nothing to replace, no --surrogate
    assert set(statuses.values()) == {"passed"}, honest.checks
    assert honest.warnings == []

    masked = robustness(Rounding(net).eval(), x, y, attacks=quick, eps_values=[0, 0.1, 0.3], device=CPU, seed=0)
    statuses = _statuses(masked)
    assert statuses["gradients"] == "failed" and statuses["large eps breaks the model"] == "failed"
    assert statuses["white-box beats black-box"] == "failed"
    assert statuses["transfer beats the evaluation"] == "failed"  # made on the net without the rounding
    assert any("gradients" in warning for warning in masked.warnings)

    probabilities = robustness(Probabilities(net).eval(), x, y, attacks=quick[:2], eps_values=[0, 0.1], device=CPU)
    assert _statuses(probabilities)["logits"] == "failed"


@pytest.mark.slow
def test_convergence_check_tests_the_reported_worst_case(mnist):
    net, x, y = mnist
    x, y = x[:150], y[:150]
    weak = [AttackSpec("pgd", steps=2)]
    alone = robustness(net, x, y, attacks=weak, eps_values=[0, 0.1], device=CPU, seed=0)
    check = next(c for c in alone.checks if c["name"] == "attack converged")
    assert check["status"] == "failed", check  # PGD-2 alone is far from converged
    # the same PGD-2 first in an ensemble whose worst case APGD-CE has already driven down
    ensemble = robustness(net, x, y, attacks=weak + [AttackSpec("apgd-ce")], eps_values=[0, 0.1], device=CPU, seed=0)
    check = next(c for c in ensemble.checks if c["name"] == "attack converged")
    assert check["status"] == "passed", check
    assert "pgd with 6 steps and 2 restarts fools" in check["detail"]
