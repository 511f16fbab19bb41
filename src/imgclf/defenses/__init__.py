"""Adversarial training: a registry of recipes (PGD, Madry et al. 2018; fast FGSM with a random
start, Wong et al. 2020; TRADES, Zhang et al. 2019), each in its own module, with eps warm-up,
robust checkpoint selection and each recipe's guard (FGSM-RS: catastrophic overfitting).

:class:`Adversary` makes each training batch's adversarial examples and loss with the
recipe; :func:`imgclf.training.fit` uses it when ``adversarial.recipe`` is not ``none``.
"""

import importlib

#: The modules that register the built-in recipes, in the order of tables and help.
RECIPE_MODULES = ("pgd_training", "fgsm_rs", "trades")
for _module in RECIPE_MODULES:
    importlib.import_module(f"imgclf.defenses.{_module}")

from imgclf.defenses.adversary import Adversary, warmup_steps
from imgclf.defenses.fgsm_rs import OVERFIT_DROP, catastrophic_overfitting
from imgclf.defenses.recipes import (
    RECIPES,
    TrainingRecipe,
    make_recipe,
    recipe_choices,
    register_recipe,
)
from imgclf.defenses.trades import DEFAULT_BETA, kl_divergence, trades_adversarial, trades_loss
from imgclf.defenses.validation import RobustValidation

__all__ = [
    "DEFAULT_BETA",
    "OVERFIT_DROP",
    "RECIPES",
    "RECIPE_MODULES",
    "Adversary",
    "RobustValidation",
    "TrainingRecipe",
    "catastrophic_overfitting",
    "kl_divergence",
    "make_recipe",
    "recipe_choices",
    "register_recipe",
    "trades_adversarial",
    "trades_loss",
    "warmup_steps",
]
