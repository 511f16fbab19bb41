"""N-FGSM adversarial training (de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez and Dokania, "Make Some Noise: Reliable
and Efficient Single-Step Adversarial Training", NeurIPS 2022): one FGSM step from a strong noise start, not
projected back onto the eps ball.

FGSM-RS's projection is what lets a single step overfit catastrophically (the model learns to defeat the one
projected step); N-FGSM draws the start from ``U(-k eps, k eps)`` with ``k = 2``, steps ``alpha = eps`` along the
gradient's sign and keeps the whole perturbation (up to ``(k + 1) eps`` per pixel), clamped to ``[0, 1]`` only: the
cost of FGSM, and the robustness of GradAlign at a third of its cost in the paper's CIFAR-10 experiments. The
catastrophic-overfitting guard of FGSM-RS watches it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imgclf.attacks.core import logits_and_gradient, random_point, steepest_step
from imgclf.attacks.losses import cross_entropy
from imgclf.defenses.fgsm_rs import SingleStep
from imgclf.defenses.recipes import register_recipe

#: The noise's half-width as a multiple of eps (the paper's ``k``, its code's ``--unif 2``).
NOISE = 2.0


@register_recipe
@dataclass
class NoiseFGSM(SingleStep):
    """One unprojected FGSM step of ``alpha`` (default ``eps``) from ``x + U(-noise * eps, noise * eps)``.

    The perturbation is deliberately larger than eps (the method's point): up to ``(noise + 1) * eps`` per pixel
    under L-inf; under L2 the start is a uniformly random point of the ``noise * eps`` ball and the step the
    normalized gradient. Training images stay in ``[0, 1]``.

    Attributes:
        noise: The start's radius as a multiple of eps, ``>= 0`` (de Jorge et al.: 2; 0 is FGSM from the image).
        overfit_drop: As :class:`~imgclf.defenses.fgsm_rs.SingleStep`'s (the catastrophic-overfitting guard).
    """

    name = "n-fgsm"
    summary = "N-FGSM: one unprojected FGSM step from strong noise (de Jorge et al. 2022), with the overfitting guard"

    noise: float = NOISE

    def perturb(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                norm: str, steps: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """``clamp(x + eta + alpha * sign(grad L(x + eta)), 0, 1)`` with ``x + eta`` clamped to ``[0, 1]`` first:
        ``float32`` ``(B, C, H, W)`` in ``[0, 1]``, within ``(noise + 1) * eps`` of ``images`` (not eps)."""
        start = random_point(images, self.noise * eps, norm, generator) if self.noise > 0 else images.clone()
        _, grad = logits_and_gradient(model, start, cross_entropy(labels))
        return (start + alpha * steepest_step(grad, norm)).clamp_(0.0, 1.0)
