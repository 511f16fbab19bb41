"""The registry of adversarial training recipes, and what each recipe owns.

A recipe is a :class:`TrainingRecipe` subclass registered with
:func:`register_recipe` in its own module. It owns how a training batch's
adversarial examples are made (:meth:`~TrainingRecipe.perturb`), the loss
trained on (:meth:`~TrainingRecipe.loss`), the extra attacks of its robust
validation (:attr:`~TrainingRecipe.validation_attacks`) and the guard that
may stop training (:meth:`~TrainingRecipe.guard`). Its own hyperparameters
are dataclass fields, filled from the ``adversarial`` settings of the same
name. The configuration's choices and :class:`~imgclf.defenses.adversary.Adversary`
read :data:`RECIPES`; :func:`imgclf.training.fit` knows no recipe by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from imgclf.attacks.pgd import default_alpha

#: ``loss_fn(logits (B, K) float32, targets (B,) int64) -> scalar loss``.
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainingRecipe:
    """One adversarial training recipe; subclasses set the class attributes and override what differs.

    Class attributes:
        name: The name users give (``--adversarial NAME``).
        summary: One line: the method and its source.
        default_steps: Attack steps when none are given.
        fixed_steps: ``--adv-steps`` does not apply (FGSM-RS is one step).
        validation_attacks: Registered attacks measured on the robust validation
            subset besides PGD, each as ``<name>_val_accuracy`` in the history.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    default_steps: ClassVar[int] = 10
    fixed_steps: ClassVar[bool] = False
    validation_attacks: ClassVar[tuple[str, ...]] = ()

    def steps(self, given: int | None) -> int:
        """Attack steps used: ``given``, else :attr:`default_steps` (always, for fixed-step recipes)."""
        return self.default_steps if given is None or self.fixed_steps else given

    def step_size(self, eps: float, steps: int, alpha: float | None) -> float:
        """The step in pixel units: ``alpha`` if given, else ``2.5 * eps / steps`` (Madry et al.)."""
        return default_alpha(eps, steps) if alpha is None else alpha

    def perturb(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                norm: str, steps: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """Adversarial versions of one training batch.

        Args:
            model: The unwrapped model, in eval mode (the caller sets and restores it).
            images: ``float32`` ``(B, C, H, W)`` in ``[0, 1]``. labels: ``int64`` ``(B,)``.
            eps: The warmed-up radius in pixel units under ``norm``.
            steps, alpha: From :meth:`steps` and :meth:`step_size`.
            generator: Seeds the random starts.

        Returns:
            ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` within ``eps`` of ``images``.
        """
        raise NotImplementedError

    def loss(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, adversarial: torch.Tensor,
             targets: torch.Tensor, loss_fn: LossFunction) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's training loss, and the logits its training accuracy is measured on.

        Default: ``loss_fn`` on the adversarial logits. ``model`` is the (possibly
        wrapped) model in training mode; the caller's autocast applies.

        Returns:
            Logits of ``adversarial`` ``(B, K)`` and a scalar loss.
        """
        logits = model(adversarial)
        return logits, loss_fn(logits.float(), targets)

    def guard(self, history: Sequence[Mapping[str, float]]) -> str | None:
        """Why training must stop after the last epoch of ``history`` (one row per epoch), or None."""
        return None


#: Every registered recipe class by name, in registration order.
RECIPES: dict[str, type[TrainingRecipe]] = {}


def register_recipe(cls: type[TrainingRecipe]) -> type[TrainingRecipe]:
    """Class decorator: register ``cls`` under ``cls.name``.

    Raises:
        ValueError: If the name is taken or is ``none`` (standard training).
    """
    if cls.name in RECIPES or cls.name == "none":
        raise ValueError(f"adversarial training recipe {cls.name!r} is registered already")
    RECIPES[cls.name] = cls
    return cls


def unregister_recipe(name: str) -> None:
    """Remove recipe ``name`` (for tests that register a temporary recipe)."""
    RECIPES.pop(name, None)


def recipe_choices() -> tuple[str, ...]:
    """``none`` (standard training) and every registered recipe: the valid ``adversarial.recipe`` values."""
    return ("none", *RECIPES)


def make_recipe(name: str, settings: Mapping[str, Any]) -> TrainingRecipe:
    """An instance of recipe ``name`` with its own fields taken from ``settings`` where given.

    Raises:
        ValueError: On an unknown name, listing the valid ones.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown adversarial training recipe {name!r}; valid choices: {', '.join(RECIPES)}")
    cls = RECIPES[name]
    own = {f.name: settings[f.name] for f in dataclasses.fields(cls) if f.name in settings}
    return cls(**own)
