"""Adversarial attacks and robustness evaluation in pixel space (images in ``[0, 1]``, eps in pixel units).

One file per attack: :func:`fgsm`, :func:`pgd` (L-inf and L2, targeted,
restarts), :func:`apgd` and :func:`apgd_targeted` (APGD-CE, APGD-DLR, APGD-T),
:func:`fab_targeted` (FAB-T) and :func:`square`; :func:`robustness` runs them
over eps values with the per-example worst case, and :mod:`checks` flags
signs of false robustness.

An attack never changes the model's train/eval mode or its parameters; the
caller puts the model in eval mode. Outputs are clamped to ``[0, 1]`` and lie
within ``eps`` of the input.
"""

from imgclf.attacks.apgd import apgd, apgd_targeted
from imgclf.attacks.checks import sanity_checks
from imgclf.attacks.fab import fab_targeted
from imgclf.attacks.fgsm import fgsm
from imgclf.attacks.losses import dlr, margin
from imgclf.attacks.pgd import default_alpha, pgd
from imgclf.attacks.projection import NORMS, loss_gradient, project, project_linf
from imgclf.attacks.robustness import (
    ATTACK_NAMES,
    PRESETS,
    TARGET_MODES,
    AttackSpec,
    RobustnessEntry,
    RobustnessResult,
    choose_targets,
    robustness,
)
from imgclf.attacks.square import square

__all__ = [
    "ATTACK_NAMES",
    "NORMS",
    "PRESETS",
    "TARGET_MODES",
    "AttackSpec",
    "RobustnessEntry",
    "RobustnessResult",
    "apgd",
    "apgd_targeted",
    "choose_targets",
    "default_alpha",
    "dlr",
    "fab_targeted",
    "fgsm",
    "loss_gradient",
    "margin",
    "pgd",
    "project",
    "project_linf",
    "robustness",
    "sanity_checks",
    "square",
]
