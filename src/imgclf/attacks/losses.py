"""Per-example losses that attacks increase, computed from logits.

Every function maps logits ``(N, K)`` (float32) and labels ``(N,)`` (int64) to
a loss ``(N,)`` that is larger when the example is closer to being fooled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: Losses an attack can be asked to increase.
LOSSES = ("ce", "dlr")

Loss = Callable[[torch.Tensor], torch.Tensor]


def _true_and_other_best(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true, others.amax(1)


def margin(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """How far the attack is from success: ``z_y - max_{i != y} z_i``
    (untargeted) or ``max_{i != t} z_i - z_t`` (targeted). Negative exactly
    when the attack has succeeded (ties aside). Square decreases it."""
    if target is None:
        true, best_other = _true_and_other_best(logits, labels)
        return true - best_other
    wanted, best_other = _true_and_other_best(logits, target)
    return best_other - wanted


def cross_entropy(labels: torch.Tensor, target: torch.Tensor | None = None) -> Loss:
    """Cross-entropy of the true class (untargeted), or minus that of the target class (targeted)."""
    if target is None:
        return lambda logits: F.cross_entropy(logits, labels, reduction="none")
    return lambda logits: -F.cross_entropy(logits, target, reduction="none")


def dlr(labels: torch.Tensor, target: torch.Tensor | None = None) -> Loss:
    """Difference of Logits Ratio (Croce and Hein, "Reliable evaluation of
    adversarial robustness with an ensemble of diverse parameter-free attacks",
    ICML 2020), invariant to shifting and scaling the logits.

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``z_pi1 >= z_pi2 >= ...``
    the sorted logits. Needs at least 3 classes (4 when targeted).
    """
    def untargeted(logits: torch.Tensor) -> torch.Tensor:
        ordered = logits.sort(1, descending=True).values
        true, best_other = _true_and_other_best(logits, labels)
        return -(true - best_other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)

    def targeted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ordered = logits.sort(1, descending=True).values
        true = logits.gather(1, labels[:, None]).squeeze(1)
        wanted = logits.gather(1, target[:, None]).squeeze(1)
        return -(true - wanted) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)

    if target is None:
        return untargeted
    chosen = target
    return lambda logits: targeted(logits, chosen)


def get_loss(name: str, labels: torch.Tensor, target: torch.Tensor | None = None) -> Loss:
    """The loss called ``name`` (one of :data:`LOSSES`) for these labels and targets.

    Raises:
        ValueError: On an unknown name.
    """
    if name == "ce":
        return cross_entropy(labels, target)
    if name == "dlr":
        return dlr(labels, target)
    raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(LOSSES)}")
