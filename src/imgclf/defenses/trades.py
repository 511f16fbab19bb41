"""TRADES: a clean cross-entropy plus a KL term that pulls the adversarial prediction to the clean one.

Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan, "Theoretically Principled
Trade-off between Robustness and Accuracy", ICML 2019. The training loss is

    CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x'))

where ``x'`` maximises the KL term within the eps ball, found by PGD from
``x + 0.001 * N(0, 1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imgclf.attacks.core import logits_and_gradient, project, steepest_step
from imgclf.defenses.recipes import DEFAULT_BETA, LossFunction, TrainingRecipe, register_recipe


def kl_divergence(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """Per-example ``KL(softmax(clean) || softmax(adversarial))`` in nats, ``(N, K), (N, K) -> (N,)``."""
    clean_log_p = F.log_softmax(clean_logits.float(), dim=1)
    adv_log_p = F.log_softmax(adversarial_logits.float(), dim=1)
    return (clean_log_p.exp() * (clean_log_p - adv_log_p)).sum(1)


def trades_adversarial(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    alpha: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TRADES's inner maximisation: PGD on ``KL(f(x) || f(x'))`` from ``x + 0.001 * N(0, 1)``.

    Only input gradients are formed; the model's mode is left as it is (the
    caller puts it in eval mode).

    Args:
        model: Maps ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``.
        images: Clean images, ``float32`` ``(N, C, H, W)`` in ``[0, 1]``.
        eps: Radius in pixel units under ``norm``.
        norm: ``"linf"`` (the paper's) or ``"l2"`` (normalised-gradient steps).
        steps: PGD steps (the paper: 10 on CIFAR-10, 40 on MNIST).
        alpha: Step size in pixel units (the paper: 0.007 for eps 0.031).
        generator: Seeds the starting noise; its device is used to draw it.

    Returns:
        ``x'``: same shape and dtype, in ``[0, 1]`` and within ``eps`` of ``images``.
    """
    x = images.detach()
    if eps == 0:
        return x.clone()
    draw_on = generator.device if generator is not None else x.device
    with torch.no_grad():
        clean_logits = model(x).float()
        noise = torch.randn(x.shape, generator=generator, device=draw_on, dtype=x.dtype).to(x.device)
        adv = project(x + 0.001 * noise, x, eps, norm)
        for _ in range(steps):
            _, grad = logits_and_gradient(model, adv, lambda z: kl_divergence(clean_logits, z))
            adv = project(adv + alpha * steepest_step(grad, norm), x, eps, norm)
    return adv


def trades_loss(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    adversarial: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The TRADES training loss of one batch (gradients flow to the parameters).

    Args:
        model: The model being trained, in training mode.
        images, adversarial: Clean and :func:`trades_adversarial` images,
            ``float32`` ``(B, C, H, W)`` in ``[0, 1]``.
        targets: Classes ``int64`` ``(B,)`` for ``loss_fn``.
        loss_fn: The natural loss on the clean logits (cross-entropy, with the
            run's label smoothing and class weights).
        beta: Weight of the robustness term (the paper: 6 on CIFAR-10, 1/lambda).

    Returns:
        The adversarial logits ``(B, K)`` (for the training accuracy) and the
        scalar loss ``loss_fn(f(x), y) + beta * mean KL(f(x) || f(x'))``.
    """
    clean_logits = model(images)
    adversarial_logits = model(adversarial)
    loss = loss_fn(clean_logits.float(), targets) + beta * kl_divergence(clean_logits, adversarial_logits).mean()
    return adversarial_logits, loss



@register_recipe
@dataclass
class TRADES(TrainingRecipe):
    """TRADES: examples from :func:`trades_adversarial`, loss :func:`trades_loss`.

    Attributes:
        beta: Weight of the KL term (the paper: 6 on CIFAR-10, 1/lambda), ``>= 0``.
    """

    name = "trades"
    summary = "TRADES (Zhang et al. 2019): clean cross-entropy plus beta times the KL to the adversarial prediction"
    default_steps = 10

    beta: float = DEFAULT_BETA

    def perturb(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                norm: str, steps: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
        return trades_adversarial(model, images, eps=eps, norm=norm, steps=steps, alpha=alpha, generator=generator)

    def loss(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, adversarial: torch.Tensor,
             targets: torch.Tensor, loss_fn: LossFunction) -> tuple[torch.Tensor, torch.Tensor]:
        return trades_loss(model, images, adversarial, targets, loss_fn, beta=self.beta)
