"""Adversarial training: a registry of recipes (PGD, Madry et al. 2018; fast FGSM with a random
start, Wong et al. 2020; N-FGSM, de Jorge et al. 2022; FGSM with GradAlign, Andriushchenko and Flammarion
2020; TRADES, Zhang et al. 2019), each in its own module, with eps warm-up, robust checkpoint selection and
each recipe's guard (the single-step recipes: catastrophic overfitting, watched by :class:`OverfitMonitor`).

:class:`Adversary` makes each training batch's adversarial examples and loss with the
recipe; :func:`imgclf.training.fit` uses it when ``adversarial.recipe`` is not ``none``.
The registry's names load at once and without torch; the recipes on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.defenses.monitor import Collapsed, OverfitMonitor
from imgclf.defenses.recipes import (
    BUILTIN_RECIPES,
    DEFAULT_BETA,
    OVERFIT_ACTIONS,
    OVERFIT_DROP,
    OVERFIT_GAP,
    RECIPES,
    RESTART_STEP_FACTOR,
    TrainingRecipe,
    make_recipe,
    recipe_choices,
    recipe_class,
    register_recipe,
)
from imgclf.lazy import lazy_exports

if TYPE_CHECKING:
    from imgclf.defenses.adversary import Adversary, warmup_reached, warmup_steps
    from imgclf.defenses.fgsm_rs import catastrophic_overfitting
    from imgclf.defenses.trades import kl_divergence, trades_adversarial, trades_loss
    from imgclf.defenses.validation import RobustValidation

__getattr__, __dir__ = lazy_exports(__name__, {
    "imgclf.defenses.adversary": ("Adversary", "warmup_reached", "warmup_steps"),
    "imgclf.defenses.fgsm_rs": ("catastrophic_overfitting",),
    "imgclf.defenses.trades": ("kl_divergence", "trades_adversarial", "trades_loss"),
    "imgclf.defenses.validation": ("RobustValidation",),
})

__all__ = [
    "BUILTIN_RECIPES",
    "DEFAULT_BETA",
    "OVERFIT_ACTIONS",
    "OVERFIT_DROP",
    "OVERFIT_GAP",
    "RECIPES",
    "RESTART_STEP_FACTOR",
    "Adversary",
    "Collapsed",
    "OverfitMonitor",
    "RobustValidation",
    "TrainingRecipe",
    "catastrophic_overfitting",
    "kl_divergence",
    "make_recipe",
    "recipe_choices",
    "recipe_class",
    "register_recipe",
    "trades_adversarial",
    "trades_loss",
    "warmup_reached",
    "warmup_steps",
]
