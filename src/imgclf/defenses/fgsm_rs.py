"""Fast adversarial training with FGSM from a random start (Wong, Rice and Kolter, "Fast is better
than free: revisiting adversarial training", ICLR 2020), and its guard against catastrophic overfitting.

FGSM-RS training can overfit catastrophically: within an epoch its PGD
accuracy collapses while its FGSM accuracy rises, because the model has learnt
to defeat the single step only. The recipe measures FGSM beside PGD on the
robust validation subset; its guard (:func:`catastrophic_overfitting`) says when that happens, and
:mod:`imgclf.defenses.monitor` stops training, rolls it back or restarts it with a smaller step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from imgclf.attacks.core import logits_and_gradient, project, random_point, steepest_step
from imgclf.attacks.losses import cross_entropy
from imgclf.defenses.recipes import OVERFIT_DROP, OVERFIT_GAP, TrainingRecipe, register_recipe

#: Wong et al.'s step size, as a multiple of eps.
FGSM_RS_STEP = 1.25


@dataclass
class SingleStep(TrainingRecipe):
    """What every single-step recipe shares: one attack step (``--adv-steps`` does not apply) of eps unless told
    otherwise, FGSM measured beside PGD on the robust validation subset, and the catastrophic-overfitting guard
    (:func:`catastrophic_overfitting`).

    Attributes:
        overfit_drop: The guard's absolute fall in PGD validation accuracy, in (0, 1].
        overfit_gap: The guard's gap of FGSM validation accuracy above PGD's, in (0, 1].
    """

    default_steps = 1
    fixed_steps = True
    validation_attacks = ("fgsm",)

    overfit_drop: float = OVERFIT_DROP
    overfit_gap: float = OVERFIT_GAP

    def step_size(self, eps: float, steps: int, alpha: float | None) -> float:
        """``alpha`` if given, else ``eps``."""
        return eps if alpha is None else alpha

    def guard(self, history: Sequence[Mapping[str, float]]) -> str | None:
        """:func:`catastrophic_overfitting` with this recipe's ``overfit_drop`` and ``overfit_gap``."""
        return catastrophic_overfitting(history, drop=self.overfit_drop, gap=self.overfit_gap)


@register_recipe
@dataclass
class FGSMRandomStart(SingleStep):
    """One FGSM step of ``1.25 * eps`` from a uniformly random start, projected (Wong et al.'s Algorithm 1).

    Attributes:
        overfit_drop: As :class:`SingleStep`'s.
        clip_start: Clamp the random start to ``[0, 1]`` before the gradient is taken (True), or take it
            at the unclamped ``x + U(-eps, eps)`` (False), as Wong et al.'s MNIST code does
            (``MNIST/train_mnist.py``; their CIFAR-10 code clamps). The result is projected onto the eps
            ball and ``[0, 1]`` either way. With the ``fgsm-rs-mnist`` recipe at eps 0.3 this decided
            the outcome: the clamped start's PGD validation accuracy stayed below 0.13 and then fell to 0
            (catastrophic overfitting), the unclamped start's reached 0.89 (docs/results.md, "The published
            anchors").
    """

    name = "fgsm-rs"
    summary = "fast FGSM with a random start (Wong et al. 2020), with the catastrophic-overfitting guard"

    clip_start: bool = True

    def step_size(self, eps: float, steps: int, alpha: float | None) -> float:
        """``alpha`` if given, else ``1.25 * eps``."""
        return FGSM_RS_STEP * eps if alpha is None else alpha

    def perturb(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                norm: str, steps: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """One step from a random start: ``Proj(start + alpha * sign(grad))`` (L2: the normalized gradient)."""
        start = random_point(images, eps, norm, generator, clip=self.clip_start)
        _, grad = logits_and_gradient(model, start, cross_entropy(labels))
        return project(start + alpha * steepest_step(grad, norm), images, eps, norm)


def catastrophic_overfitting(history: Sequence[Mapping[str, float]], *, drop: float = OVERFIT_DROP,
                             gap: float = OVERFIT_GAP) -> str | None:
    """Whether the last probe of ``history`` shows catastrophic overfitting, and why.

    It does when its FGSM validation accuracy rose over the previous probe's and either its PGD validation
    accuracy lies more than ``drop`` below the best of the earlier probes (Wong et al. 2020's early stopping),
    or FGSM's lies more than ``gap`` above PGD's, PGD's did not rise, and the training eps stays where it was
    at the previous probe (the warm-up is over: while eps still rises, validation at the full eps finds a gap
    in any model; and just after it, a model still learning the full eps shows a gap that closes as PGD's
    accuracy climbs).

    Args:
        history: Probes in order, each with ``epoch``, ``robust_val_accuracy`` and ``fgsm_val_accuracy``
            (fractions in [0, 1]); ``train_eps`` (pixel units) where the gap is to be checked; ``progress``
            (epochs, fractional for a probe inside an epoch) where the sentence is to name the step.
        drop: Absolute fall in PGD accuracy, in [0, 1].
        gap: Absolute gap of FGSM above PGD accuracy, in [0, 1].

    Returns:
        A sentence describing the collapse, or None.
    """
    if len(history) < 2:
        return None
    last, previous = history[-1], history[-2]
    pgd, fgsm = last["robust_val_accuracy"], last["fgsm_val_accuracy"]
    if fgsm <= previous["fgsm_val_accuracy"]:
        return None
    best = max(row["robust_val_accuracy"] for row in history[:-1])
    where = f"epoch {int(last['epoch'])}"
    if "progress" in last and last["progress"] != int(last["epoch"]):
        where += f" ({last['progress']:.2f} epochs in)"
    rose = f"FGSM validation accuracy rose to {fgsm:.4f} (from {previous['fgsm_val_accuracy']:.4f})"
    if best - pgd > drop:
        return (f"catastrophic overfitting in {where}: PGD validation accuracy fell to {pgd:.4f} "
                f"(best before {best:.4f}) while {rose}")
    warm = "train_eps" in last and last["train_eps"] == previous.get("train_eps")
    if warm and fgsm - pgd > gap and pgd <= previous["robust_val_accuracy"]:
        return (f"catastrophic overfitting in {where}: {rose}, {fgsm - pgd:.4f} above PGD's {pgd:.4f}: the "
                "model defeats the single step it trains on, not the attack")
    return None
