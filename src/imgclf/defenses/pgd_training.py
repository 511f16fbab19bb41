"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning
Models Resistant to Adversarial Attacks", ICLR 2018): train on PGD examples from a random start."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imgclf.attacks.projected_gradient import pgd
from imgclf.defenses.recipes import TrainingRecipe, register_recipe


@register_recipe
@dataclass
class PGDTraining(TrainingRecipe):
    """Train on the last PGD iterate (no early stop) from a uniformly random start.

    Madry et al. use 7 steps on CIFAR-10 and 40 on MNIST; 10 is the common middle.
    """

    name = "pgd"
    summary = "PGD adversarial training (Madry et al. 2018)"
    default_steps = 10

    def perturb(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                norm: str, steps: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
        return pgd(model, images, labels, eps=eps, norm=norm, alpha=alpha, steps=steps, random_start=True,
                   early_stop=False, generator=generator)
