"""Robust validation during adversarial training, and the catastrophic-overfitting alarm.

Checkpoints are chosen on PGD accuracy over a fixed validation subset (Rice,
Wong and Kolter, "Overfitting in adversarially robust deep learning", ICML
2020: the best robust checkpoint is often not the last). FGSM-RS training can
overfit catastrophically (Wong, Rice and Kolter 2020): within an epoch its
PGD accuracy collapses while its FGSM accuracy rises, because the model has
learnt to defeat the single step only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from imgclf.attacks.fgsm import fgsm
from imgclf.attacks.pgd import pgd
from imgclf.data.containers import ImageSplit
from imgclf.data.loading import stratified_subset
from imgclf.runtime import generator

#: A fall in PGD validation accuracy larger than this (absolute) with FGSM accuracy rising is catastrophic overfitting.
OVERFIT_DROP = 0.2


class RobustValidation:
    """PGD (and FGSM) accuracy on a fixed, seeded, stratified validation subset.

    Args:
        split: The validation split.
        examples: Size of the subset (all of ``split`` if larger).
        eps: Radius in pixel units under ``norm``: the full training eps, not the warmed-up one.
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps, step size ``2.5 * eps / steps``, random start.
        seed: Picks the subset and seeds the random starts (the same every epoch).
        device: Where to attack.
        batch_size: Examples per attack batch.
    """

    def __init__(self, split: ImageSplit, *, examples: int, eps: float, norm: str, steps: int, seed: int,
                 device: torch.device, batch_size: int = 512):
        rows = stratified_subset(split.labels.numpy(), examples, seed)
        self.images = split.float_images(rows).to(device)
        self.labels = split.labels[torch.as_tensor(rows)].to(device)
        self.eps, self.norm, self.steps, self.seed, self.batch_size = eps, norm, steps, seed, batch_size

    def __call__(self, model: torch.nn.Module, *, with_fgsm: bool = False) -> dict[str, float]:
        """``{"robust_val_accuracy": ...}`` (PGD) and, if asked, ``"fgsm_val_accuracy"``; fractions in [0, 1].

        ``model`` must be in eval mode; it is left as it is.
        """
        gen = generator(self.seed, self.images.device)
        correct = {"robust_val_accuracy": 0, "fgsm_val_accuracy": 0}
        for start in range(0, len(self.labels), self.batch_size):
            x, y = self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]
            adversarial = {"robust_val_accuracy": pgd(model, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
                                                      generator=gen)}
            if with_fgsm:
                adversarial["fgsm_val_accuracy"] = fgsm(model, x, y, eps=self.eps, norm=self.norm)
            with torch.no_grad():
                for key, images in adversarial.items():
                    correct[key] += int((model(images).argmax(1) == y).sum())
        n = max(len(self.labels), 1)
        keys = ("robust_val_accuracy", "fgsm_val_accuracy") if with_fgsm else ("robust_val_accuracy",)
        return {key: correct[key] / n for key in keys}


def catastrophic_overfitting(history: Sequence[dict[str, float]], *, drop: float = OVERFIT_DROP) -> str | None:
    """Whether the last epoch of ``history`` shows catastrophic overfitting, and why.

    It does when its PGD validation accuracy lies more than ``drop`` below the
    best of the earlier epochs while its FGSM validation accuracy rose over the
    previous epoch's.

    Args:
        history: Rows with ``robust_val_accuracy`` and ``fgsm_val_accuracy``, one per epoch.
        drop: Absolute fall in PGD accuracy, in [0, 1].

    Returns:
        A sentence describing the collapse, or None.
    """
    if len(history) < 2:
        return None
    last, previous = history[-1], history[-2]
    best = max(row["robust_val_accuracy"] for row in history[:-1])
    fell = best - last["robust_val_accuracy"]
    if fell > drop and last["fgsm_val_accuracy"] > previous["fgsm_val_accuracy"]:
        return (f"catastrophic overfitting in epoch {int(last['epoch'])}: PGD validation accuracy fell to "
                f"{last['robust_val_accuracy']:.4f} (best before {best:.4f}) while FGSM validation accuracy "
                f"rose to {last['fgsm_val_accuracy']:.4f} (from {previous['fgsm_val_accuracy']:.4f})")
    return None
