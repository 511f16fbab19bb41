"""Adversarial training: PGD (Madry et al. 2018), fast FGSM with a random start
(Wong et al. 2020) and TRADES (Zhang et al. 2019), with eps warm-up, robust
checkpoint selection and a catastrophic-overfitting alarm.

:class:`Adversary` makes each training batch's adversarial examples and loss;
:func:`imgclf.training.fit` uses it when ``adversarial.recipe`` is not ``none``.
"""

from imgclf.defenses.adversary import DEFAULT_STEPS, RECIPES, Adversary, step_size, warmup_steps
from imgclf.defenses.trades import kl_divergence, trades_adversarial, trades_loss
from imgclf.defenses.validation import OVERFIT_DROP, RobustValidation, catastrophic_overfitting

__all__ = [
    "DEFAULT_STEPS",
    "OVERFIT_DROP",
    "RECIPES",
    "Adversary",
    "RobustValidation",
    "catastrophic_overfitting",
    "kl_divergence",
    "step_size",
    "trades_adversarial",
    "trades_loss",
    "warmup_steps",
]
