"""GradAlign (Andriushchenko and Flammarion, "Understanding and Improving Fast Adversarial Training", NeurIPS
2020): FGSM training with a regularizer that keeps the input gradient aligned across the eps ball.

Catastrophic overfitting comes with the loss turning locally non-linear: the gradient at the image stops pointing
where the gradient a little further out points, and one FGSM step no longer finds the worst case. GradAlign adds
``lambda * (1 - cos(grad L(x), grad L(x + eta)))``, ``eta`` uniform in the eps ball, to the loss of the FGSM
examples, and trains through the second gradient (double backpropagation: about three times FGSM's cost).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from imgclf.attacks.core import logits_and_gradient, project, random_point, steepest_step
from imgclf.attacks.losses import cross_entropy
from imgclf.defenses.fgsm_rs import SingleStep
from imgclf.defenses.recipes import register_recipe

#: The regularizer's weight at CIFAR-10's eps 8/255 (the paper's code, ``--grad_align_cos_lambda 0.2``; it scales
#: with eps there, as ``0.02 * 10 ** (eps * 255 / 8)``).
GRAD_ALIGN = 0.2


def gradient_alignment(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                       *, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """The mean cosine between the cross-entropy's input gradient at each image and at a uniformly random point of
    its eps ball, differentiable in the model's parameters through the second gradient.

    Args:
        model: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, K)``. images: ``(B, C, H, W)`` in
            ``[0, 1]``. labels: ``int64`` ``(B,)``. eps, norm: The ball. generator: Draws the random point.

    Returns:
        A scalar in ``[-1, 1]`` over the examples whose two gradients are not zero (1 where none is left).
    """
    clean = images.detach().requires_grad_(True)
    (first,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(clean).float(), labels), clean)
    point = random_point(images, eps, norm, generator).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(point).float(), labels)
    (second,) = torch.autograd.grad(loss, point, create_graph=True)  # (the term trains through this one)
    first, second = first.flatten(1), second.flatten(1)
    kept = (first.norm(dim=1) > 0) & (second.norm(dim=1) > 0)
    if not bool(kept.any()):
        return loss.new_ones(())
    return torch.nn.functional.cosine_similarity(first[kept], second[kept], dim=1).mean()


@register_recipe
@dataclass
class GradAlign(SingleStep):
    """FGSM from the image with step ``alpha`` (default eps, projected onto the ball: the paper's 1.25 eps step
    clipped to eps), trained with ``grad_align * (1 - cos)`` added (:func:`gradient_alignment`).

    Attributes:
        grad_align: The regularizer's weight lambda, ``>= 0`` (the paper: 0.2 at CIFAR-10's 8/255; larger for
            larger eps).
        overfit_drop: As :class:`~imgclf.defenses.fgsm_rs.SingleStep`'s (the catastrophic-overfitting guard).
    """

    name = "gradalign"
    summary = "FGSM with the GradAlign regularizer (Andriushchenko and Flammarion 2020), with the overfitting guard"

    grad_align: float = GRAD_ALIGN

    def perturb(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                norm: str, steps: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """FGSM from the image: ``Proj(x + alpha * sign(grad L(x)))`` (L2: the normalized gradient)."""
        _, grad = logits_and_gradient(model, images, cross_entropy(labels))
        return project(images + alpha * steepest_step(grad, norm), images, eps, norm)

    def regularizer(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    targets: torch.Tensor, *, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor | None:
        """``grad_align * (1 - gradient_alignment(...))``; None where ``grad_align`` or eps is 0."""
        if self.grad_align == 0 or eps == 0:
            return None
        alignment = gradient_alignment(model, images, targets, eps=eps, norm=norm, generator=generator)
        return self.grad_align * (1 - alignment)
