"""FGSM and PGD: bounds, contracts, and agreement with an independent implementation."""

import pytest
import torch
import torch.nn.functional as F

from imgclf.attacks import AttackSpec, fgsm, pgd, robustness, sanity_warnings
from imgclf.attacks.robustness import RobustnessEntry, RobustnessResult
from imgclf.models import create_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = create_model("cnn", channels=3, image_size=(16, 16), num_classes=4, mean=[0.5] * 3, std=[0.3] * 3)
    for _ in range(2):  # a few steps so batch norm has running statistics
        net(torch.rand(32, 3, 16, 16)).sum().backward()
    return net.eval()


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(16, 3, 16, 16, generator=gen), torch.randint(0, 4, (16,), generator=gen)


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


@pytest.mark.parametrize("eps", [0.0, 1 / 255, 8 / 255, 0.3, 1.0])
def test_adversarial_images_stay_in_pixel_range_and_eps_ball(model, batch, eps):
    x, y = batch
    for adv in (fgsm(model, x, y, eps=eps), pgd(model, x, y, eps=eps, steps=5,
                                                    generator=torch.Generator().manual_seed(0))):
        assert adv.shape == x.shape and adv.dtype == x.dtype
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() <= eps + 1e-6
        if eps == 0:
            assert torch.equal(adv, x)


def test_fgsm_matches_an_independent_implementation(model, batch):
    x, y = batch
    assert torch.equal(fgsm(model, x, y, eps=8 / 255), reference_fgsm(model, x, y, 8 / 255))


def test_pgd_matches_an_independent_implementation(model, batch):
    x, y = batch
    eps, alpha, steps = 8 / 255, 2 / 255, 7
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=False)
    theirs = reference_pgd(model, x, y, eps, alpha, steps, x)
    assert torch.allclose(ours, theirs, atol=1e-6)
    gen = torch.Generator().manual_seed(5)
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, generator=gen)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    start = (x + (2 * noise - 1) * eps).clamp(0, 1)
    assert torch.allclose(ours, reference_pgd(model, x, y, eps, alpha, steps, start), atol=1e-6)


def test_attacks_leave_the_model_untouched_and_work_under_no_grad(model, batch):
    x, y = batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    with torch.inference_mode():
        adv_inference = pgd(model, x, y, eps=0.1, steps=3, random_start=False)
    with torch.no_grad():
        adv_nograd = fgsm(model, x, y, eps=0.1)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.allclose(adv_inference, pgd(model, x, y, eps=0.1, steps=3, random_start=False))
    assert not torch.equal(adv_nograd, x)


def test_bad_inputs_raise_clear_errors(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel space"):
        fgsm(model, x * 2 - 1, y, eps=0.1)
    with pytest.raises(ValueError, match="eps is in pixel units"):
        pgd(model, x, y, eps=8)
    with pytest.raises(ValueError, match="labels must be"):
        fgsm(model, x, y.float(), eps=0.1)


def test_attacking_a_model_in_training_mode_warns(model, batch):
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        fgsm(model, *batch, eps=0.1)


def test_pgd_is_stronger_than_fgsm_and_eps_zero_is_clean_accuracy(model, batch):
    x, y = batch
    y = model(x).argmax(1).detach()  # start from correctly classified examples
    result = robustness(model, x, y, attacks=[AttackSpec("fgsm"), AttackSpec("pgd", steps=10)],
                        eps_values=[0, 0.02, 0.1], device=torch.device("cpu"), batch_size=5, seed=0)
    acc = {(e.attack, e.eps): e.accuracy for e in result.entries}
    assert result.clean_accuracy == 1.0
    assert acc[("fgsm", 0.0)] == acc[("pgd", 0.0)] == 1.0
    for eps in (0.02, 0.1):
        assert acc[("pgd", eps)] <= acc[("fgsm", eps)]
    assert acc[("pgd", 0.1)] < 1.0
    assert result.examples["adv_pgd"].shape == (8, 3, 16, 16)
    again = robustness(model, x, y, attacks=[AttackSpec("pgd", steps=10)], eps_values=[0.02],
                       device=torch.device("cpu"), batch_size=5, seed=0)
    assert again.entries[0].accuracy == acc[("pgd", 0.02)]


def _entry(attack, eps, accuracy):
    return RobustnessEntry(attack, "linf", eps, 10, eps / 4, True, accuracy, 0.9, 100)


def test_sanity_warnings_flag_masked_gradients():
    honest = RobustnessResult([_entry("fgsm", 0, .9), _entry("fgsm", .3, .2), _entry("pgd", 0, .9),
                               _entry("pgd", .3, .0)], clean_accuracy=.9, n=100, seed=0)
    assert sanity_warnings(honest) == []
    masked = RobustnessResult([_entry("fgsm", 0, .9), _entry("fgsm", .1, .5), _entry("fgsm", .3, .9),
                               _entry("pgd", 0, .9), _entry("pgd", .1, .6), _entry("pgd", .3, .95)],
                              clean_accuracy=.9, n=100, seed=0)
    found = " | ".join(sanity_warnings(masked))
    assert "PGD is weaker than FGSM at eps=0.1" in found
    assert "FGSM accuracy rises" in found
    assert "does not lower accuracy below the clean" in found
