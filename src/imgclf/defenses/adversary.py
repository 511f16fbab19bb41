"""The adversary of adversarial training: one registered recipe, the eps warm-up, and the random state.

Every recipe ramps eps up linearly from 0 over the first epochs, and makes its
adversarial examples with the model in eval mode, in float32, from input
gradients only (the training step zeroes the parameters' gradients before its
own backward pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from imgclf.defenses.recipes import LossFunction, make_recipe
from imgclf.runtime import generator

#: Share of the epochs over which eps warms up when no count is given.
DEFAULT_WARMUP_SHARE = 0.2


class Adversary:
    """Makes each training batch's adversarial examples and its loss, for one recipe.

    Args:
        model: The unwrapped model being trained (not its DDP or compiled wrapper),
            mapping ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, K)``.
        recipe: A registered recipe (:data:`~imgclf.defenses.recipes.RECIPES`): ``"pgd"``,
            ``"fgsm-rs"``, ``"trades"``, ...
        eps: Training radius in pixel units under ``norm`` (e.g. 0.3 on MNIST, 8/255 on CIFAR-10).
        norm: ``"linf"`` or ``"l2"``.
        steps: Attack steps; None for the recipe's default (FGSM-RS: always 1).
        alpha: Step size in pixel units; None for the recipe's default, scaled with the warmed-up eps.
        options: The recipe's own hyperparameters by name (``beta`` for TRADES,
            ``overfit_drop`` and ``clip_start`` for FGSM-RS); others are ignored.
        warmup_steps: Optimizer steps over which eps rises linearly from ``eps / warmup_steps`` to ``eps``.
        seed: Seeds the random starts (on ``device``).
        device: Where the random starts are drawn.

    Raises:
        ValueError: On an unknown recipe or a negative eps.
    """

    def __init__(self, model: torch.nn.Module, *, recipe: str, eps: float, norm: str = "linf",
                 steps: int | None = None, alpha: float | None = None, options: Mapping[str, Any] | None = None,
                 warmup_steps: int = 0, seed: int = 0, device: torch.device | str = "cpu"):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.recipe = make_recipe(recipe, options or {})
        self.model, self.eps, self.norm = model, eps, norm
        self.steps = self.recipe.steps(steps)
        self.alpha = alpha  # None: scaled with the warmed-up eps at every step
        self.warmup_steps, self.step = warmup_steps, 0
        self.last_eps = 0.0  # the eps of the last batch perturbed
        self.step_scale = 1.0  # the step size's factor: halved at each restart after catastrophic overfitting
        self.generator = generator(seed, device)

    def current_eps(self) -> float:
        """The eps of the next batch: ``eps * min(1, (step + 1) / warmup_steps)``."""
        if self.warmup_steps <= 0:
            return self.eps
        return self.eps * min(1.0, (self.step + 1) / self.warmup_steps)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial versions of one training batch at :meth:`current_eps`.

        The model is put in eval mode for the attack and back in its previous
        mode after; parameters' gradients are not formed.

        Args:
            images: ``float32`` ``(B, C, H, W)`` in ``[0, 1]``.
            labels: ``int64`` ``(B,)`` (hard labels: MixUp and CutMix do not combine with this).

        Returns:
            ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` within the current eps of ``images``.
        """
        eps = self.last_eps = self.current_eps()
        self.step += 1
        alpha = self.recipe.step_size(eps, self.steps, self.alpha) * self.step_scale
        was_training = self.model.training
        self.model.eval()
        try:
            return self.recipe.perturb(self.model, images, labels, eps=eps, norm=self.norm, steps=self.steps,
                                       alpha=alpha, generator=self.generator)
        finally:
            self.model.train(was_training)

    def loss(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, adversarial: torch.Tensor,
             targets: torch.Tensor, loss_fn: LossFunction) -> tuple[torch.Tensor, torch.Tensor]:
        """The recipe's training loss of the batch (with its regularizer, where it has one) and the logits its
        accuracy is measured on (see :meth:`~imgclf.defenses.recipes.TrainingRecipe.loss` and
        :meth:`~imgclf.defenses.recipes.TrainingRecipe.regularizer`)."""
        logits, loss = self.recipe.loss(model, images, adversarial, targets, loss_fn)
        extra = self.recipe.regularizer(model, images, targets, eps=self.last_eps, norm=self.norm,
                                        generator=self.generator)
        return logits, loss if extra is None else loss + extra

    def state_dict(self) -> dict[str, Any]:
        """Step count, step-size factor and random state, for resuming."""
        return {"step": self.step, "generator": self.generator.get_state(), "step_scale": self.step_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.step = int(state["step"])
        self.step_scale = float(state.get("step_scale", 1.0))  # states of earlier releases: 1
        self.last_eps = self.eps * min(1.0, self.step / self.warmup_steps) if self.warmup_steps > 0 else self.eps
        self.generator.set_state(state["generator"].cpu())


def warmup_reached(eps: float, warmup_epochs: float | None, epochs: int, epochs_trained: int) -> float:
    """The largest training eps after ``epochs_trained`` of ``epochs`` epochs under the eps warm-up (``eps`` once
    the warm-up is over; less where it lasts longer than the epochs trained), in the units of ``eps``."""
    share = DEFAULT_WARMUP_SHARE * epochs if warmup_epochs is None else warmup_epochs
    return eps if share <= 0 else eps * min(1.0, epochs_trained / share)


def warmup_steps(warmup_epochs: float | None, epochs: int, steps_per_epoch: int) -> int:
    """Optimizer steps of the eps warm-up: ``warmup_epochs`` (None: 20% of the
    epochs) times the steps per epoch, rounded up."""
    share = DEFAULT_WARMUP_SHARE * epochs if warmup_epochs is None else warmup_epochs
    return math.ceil(share * steps_per_epoch)
