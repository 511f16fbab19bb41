"""Adversarial attacks and robustness evaluation in pixel space (images in ``[0, 1]``, eps in pixel units).

One file per attack, each registering itself (:mod:`imgclf.attacks.registry`):
:func:`fgsm`, :func:`pgd` (L-inf and L2, targeted, restarts), :func:`apgd` and
:func:`apgd_targeted` (APGD-CE, APGD-DLR, APGD-T, APGD-CE-T), :func:`fab_targeted`
(FAB-T) and :func:`square`. :func:`robustness` runs them over eps values with
the per-example worst case, and :mod:`imgclf.attacks.checks` flags signs of
false robustness. :mod:`imgclf.attacks.core` holds what every attack shares.

An attack never changes the model's train/eval mode or its parameters; the
caller puts the model in eval mode. Outputs are clamped to ``[0, 1]`` and lie
within ``eps`` of the input.
"""

import importlib

#: The modules that register the built-in attacks, in the order of tables and help.
ATTACK_MODULES = ("fgsm", "pgd", "apgd", "fab", "square")
for _module in ATTACK_MODULES:
    importlib.import_module(f"imgclf.attacks.{_module}")

from imgclf.attacks.apgd import apgd, apgd_targeted
from imgclf.attacks.checks import sanity_checks
from imgclf.attacks.core import NORMS, loss_gradient, project, project_linf
from imgclf.attacks.fab import fab_targeted
from imgclf.attacks.fgsm import fgsm
from imgclf.attacks.losses import dlr, margin
from imgclf.attacks.pgd import default_alpha, pgd
from imgclf.attacks.registry import (
    ATTACK_PRESETS,
    ATTACKS,
    AttackInfo,
    attack_info,
    expand_attacks,
    register_attack,
    targetable_attacks,
)
from imgclf.attacks.results import WORST_CASE, RobustnessEntry, RobustnessResult
from imgclf.attacks.robustness import TARGET_MODES, choose_targets, robustness
from imgclf.attacks.spec import AttackSpec
from imgclf.attacks.square import square

__all__ = [
    "ATTACKS",
    "ATTACK_MODULES",
    "ATTACK_PRESETS",
    "NORMS",
    "TARGET_MODES",
    "WORST_CASE",
    "AttackInfo",
    "AttackSpec",
    "RobustnessEntry",
    "RobustnessResult",
    "apgd",
    "apgd_targeted",
    "attack_info",
    "choose_targets",
    "default_alpha",
    "dlr",
    "expand_attacks",
    "fab_targeted",
    "fgsm",
    "loss_gradient",
    "margin",
    "pgd",
    "project",
    "project_linf",
    "register_attack",
    "robustness",
    "sanity_checks",
    "square",
    "targetable_attacks",
]
