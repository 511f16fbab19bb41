"""Adversarial attacks in pixel space (images in ``[0, 1]``, eps in pixel units).

An attack never changes the model's train/eval mode or its parameters; the
caller puts the model in eval mode. Outputs are clamped to ``[0, 1]`` and lie
within ``eps`` of the input.
"""

from imgclf.attacks.fgsm import fgsm
from imgclf.attacks.pgd import default_alpha, pgd
from imgclf.attacks.projection import loss_gradient, project_linf
from imgclf.attacks.robustness import (
    ATTACK_NAMES,
    AttackSpec,
    RobustnessEntry,
    RobustnessResult,
    robustness,
    sanity_warnings,
)

__all__ = [
    "ATTACK_NAMES",
    "AttackSpec",
    "RobustnessEntry",
    "RobustnessResult",
    "default_alpha",
    "fgsm",
    "loss_gradient",
    "pgd",
    "project_linf",
    "robustness",
    "sanity_warnings",
]
