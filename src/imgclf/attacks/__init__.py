"""Adversarial attacks and robustness evaluation in pixel space (images in ``[0, 1]``, eps in pixel units).

One file per attack, each declared in :mod:`imgclf.attacks.registry`:
:func:`fgsm` (``fast_gradient``), :func:`pgd` (``projected_gradient``: L-inf and L2,
targeted, restarts), :func:`apgd` and :func:`apgd_targeted` (``auto_pgd``: APGD-CE,
APGD-DLR, APGD-T, APGD-CE-T), :func:`fab_targeted` (``fab``: FAB-T), :func:`fmn`
(``minimal_norm``: each example's smallest adversarial perturbation under L-inf, L2 or L1)
and :func:`square` (``square_search``). :func:`robustness` runs them over eps values with the
per-example worst case, and the converging plan (:data:`AUTO_PLAN`, stopped by :mod:`imgclf.attacks.plan`)
escalates until it has converged; :mod:`imgclf.attacks.checks` flags signs of false robustness.
:mod:`imgclf.attacks.core` holds what every attack shares.

An attack never changes the model's train/eval mode or its parameters; the
caller puts the model in eval mode. Outputs are clamped to ``[0, 1]`` and lie
within ``eps`` of the input.

The registry's names load at once and without torch; the attacks themselves load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.attacks.registry import (
    ATTACK_PRESETS,
    ATTACKS,
    AUTO_PLAN,
    MINIMAL_NORM_ATTACK,
    NORMS,
    PLAN,
    TARGET_MODES,
    AttackInfo,
    attack_info,
    default_alpha,
    expand_attacks,
    register_attack,
    targetable_attacks,
)
from imgclf.attacks.spec import AttackSpec, plan_specs
from imgclf.lazy import lazy_exports

if TYPE_CHECKING:
    from imgclf.attacks.auto_pgd import apgd, apgd_targeted
    from imgclf.attacks.checks import sanity_checks
    from imgclf.attacks.core import loss_gradient, project, project_linf
    from imgclf.attacks.fab import fab_targeted
    from imgclf.attacks.fast_gradient import fgsm
    from imgclf.attacks.losses import dlr, margin
    from imgclf.attacks.minimal_norm import fmn
    from imgclf.attacks.projected_gradient import pgd
    from imgclf.attacks.results import WORST_CASE, RobustnessEntry, RobustnessResult
    from imgclf.attacks.robust_accuracy import choose_targets, robustness
    from imgclf.attacks.square_search import square

__getattr__, __dir__ = lazy_exports(__name__, {
    "imgclf.attacks.auto_pgd": ("apgd", "apgd_targeted"),
    "imgclf.attacks.checks": ("sanity_checks",),
    "imgclf.attacks.core": ("loss_gradient", "project", "project_linf"),
    "imgclf.attacks.fab": ("fab_targeted",),
    "imgclf.attacks.fast_gradient": ("fgsm",),
    "imgclf.attacks.losses": ("dlr", "margin"),
    "imgclf.attacks.minimal_norm": ("fmn",),
    "imgclf.attacks.projected_gradient": ("pgd",),
    "imgclf.attacks.results": ("WORST_CASE", "RobustnessEntry", "RobustnessResult"),
    "imgclf.attacks.robust_accuracy": ("choose_targets", "robustness"),
    "imgclf.attacks.square_search": ("square",),
})

__all__ = [
    "ATTACKS",
    "ATTACK_PRESETS",
    "AUTO_PLAN",
    "MINIMAL_NORM_ATTACK",
    "NORMS",
    "PLAN",
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
    "fmn",
    "loss_gradient",
    "margin",
    "pgd",
    "plan_specs",
    "project",
    "project_linf",
    "register_attack",
    "robustness",
    "sanity_checks",
    "square",
    "targetable_attacks",
]
