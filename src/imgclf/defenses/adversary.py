"""Adversarial training recipes: what each training step trains on, and with which loss.

* ``pgd``: PGD adversarial training (Madry, Makelov, Schmidt, Tsipras and
  Vladu, "Towards Deep Learning Models Resistant to Adversarial Attacks",
  ICLR 2018): train on PGD examples from a random start.
* ``fgsm-rs``: "fast" adversarial training (Wong, Rice and Kolter, "Fast is
  better than free: revisiting adversarial training", ICLR 2020): one FGSM
  step of ``1.25 * eps`` from a uniformly random start, projected.
* ``trades``: TRADES (Zhang et al. 2019, :mod:`imgclf.defenses.trades`).

Every recipe ramps eps up linearly from 0 over the first epochs, and makes its
adversarial examples with the model in eval mode, in float32, from input
gradients only (the training step zeroes the parameters' gradients before its
own backward pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from imgclf.attacks.pgd import default_alpha, pgd
from imgclf.defenses.trades import trades_adversarial, trades_loss
from imgclf.runtime import generator

#: ``none`` (standard training) and the adversarial training recipes.
RECIPES = ("none", "pgd", "fgsm-rs", "trades")
#: PGD steps when none are given: Madry et al. use 7 on CIFAR-10 and 40 on MNIST; 10 is the common middle.
DEFAULT_STEPS = {"pgd": 10, "fgsm-rs": 1, "trades": 10}
#: Wong et al.'s FGSM-RS step size, as a multiple of eps.
FGSM_RS_STEP = 1.25
#: Share of the epochs over which eps warms up when no count is given.
DEFAULT_WARMUP_SHARE = 0.2


def step_size(recipe: str, eps: float, steps: int, alpha: float | None = None) -> float:
    """The step in pixel units: ``alpha`` if given, else ``1.25 * eps`` for
    ``fgsm-rs`` and ``2.5 * eps / steps`` for ``pgd`` and ``trades``."""
    if alpha is not None:
        return alpha
    return FGSM_RS_STEP * eps if recipe == "fgsm-rs" else default_alpha(eps, steps)


class Adversary:
    """Makes each training batch's adversarial examples and its loss, for one recipe.

    Args:
        model: The unwrapped model being trained (not its DDP or compiled wrapper),
            mapping ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, K)``.
        recipe: ``"pgd"``, ``"fgsm-rs"`` or ``"trades"``.
        eps: Training radius in pixel units under ``norm`` (e.g. 0.3 on MNIST, 8/255 on CIFAR-10).
        norm: ``"linf"`` or ``"l2"``.
        steps: Attack steps (``fgsm-rs``: always 1); None for :data:`DEFAULT_STEPS`.
        alpha: Step size in pixel units; None for :func:`step_size`'s default.
        beta: TRADES's weight on the KL term.
        warmup_steps: Optimizer steps over which eps rises linearly from ``eps / warmup_steps`` to ``eps``.
        seed: Seeds the random starts (on ``device``).
        device: Where the random starts are drawn.

    Raises:
        ValueError: On an unknown recipe or a negative eps.
    """

    def __init__(self, model: torch.nn.Module, *, recipe: str, eps: float, norm: str = "linf",
                 steps: int | None = None, alpha: float | None = None, beta: float = 6.0,
                 warmup_steps: int = 0, seed: int = 0, device: torch.device | str = "cpu"):
        if recipe not in DEFAULT_STEPS:
            raise ValueError(f"unknown adversarial training recipe {recipe!r}; valid choices: "
                             f"{', '.join(DEFAULT_STEPS)}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model, self.recipe, self.eps, self.norm, self.beta = model, recipe, eps, norm, beta
        self.steps = 1 if recipe == "fgsm-rs" else steps or DEFAULT_STEPS[recipe]
        self.alpha = alpha  # None: scaled with the warmed-up eps at every step
        self.warmup_steps, self.step = warmup_steps, 0
        self.last_eps = 0.0  # the eps of the last batch perturbed
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
        alpha = step_size(self.recipe, eps, self.steps, self.alpha)
        was_training = self.model.training
        self.model.eval()
        try:
            if self.recipe == "trades":
                return trades_adversarial(self.model, images, eps=eps, norm=self.norm, steps=self.steps,
                                          alpha=alpha, generator=self.generator)
            return pgd(self.model, images, labels, eps=eps, norm=self.norm, alpha=alpha, steps=self.steps,
                       random_start=True, early_stop=False, generator=self.generator)
        finally:
            self.model.train(was_training)

    def loss(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, adversarial: torch.Tensor,
             targets: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's training loss, and the logits its training accuracy is measured on.

        ``pgd`` and ``fgsm-rs``: ``loss_fn`` on the adversarial logits. ``trades``:
        :func:`~imgclf.defenses.trades.trades_loss`. ``model`` is the (possibly
        wrapped) model in training mode; the caller's autocast applies.

        Returns:
            Logits of ``adversarial`` ``(B, K)`` and a scalar loss.
        """
        if self.recipe == "trades":
            return trades_loss(model, images, adversarial, targets, loss_fn, beta=self.beta)
        logits = model(adversarial)
        return logits, loss_fn(logits.float(), targets)

    def state_dict(self) -> dict[str, Any]:
        """Step count and random state, for resuming."""
        return {"step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.step = int(state["step"])
        self.last_eps = self.eps * min(1.0, self.step / self.warmup_steps) if self.warmup_steps > 0 else self.eps
        self.generator.set_state(state["generator"].cpu())


def warmup_steps(warmup_epochs: float | None, epochs: int, steps_per_epoch: int) -> int:
    """Optimizer steps of the eps warm-up: ``warmup_epochs`` (None: 20% of the
    epochs) times the steps per epoch, rounded up."""
    share = DEFAULT_WARMUP_SHARE * epochs if warmup_epochs is None else warmup_epochs
    return math.ceil(share * steps_per_epoch)
