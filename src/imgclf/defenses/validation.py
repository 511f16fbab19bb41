"""Robust validation during adversarial training.

Checkpoints are chosen on PGD accuracy over a fixed validation subset (Rice,
Wong and Kolter, "Overfitting in adversarially robust deep learning", ICML
2020: the best robust checkpoint is often not the last). A recipe may ask for
more attacks on the same subset (FGSM-RS's guard compares FGSM with PGD).
"""

from __future__ import annotations

import numpy as np
import torch

from imgclf.attacks.projected_gradient import pgd
from imgclf.attacks.spec import AttackSpec
from imgclf.data.containers import ImageSplit
from imgclf.data.loading import stratified_subset
from imgclf.runtime import generator


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
        rows = self.rows(split.labels.numpy(), examples=examples, seed=seed)
        self.images = split.float_images(rows).to(device)
        self.labels = split.labels[torch.as_tensor(rows)].to(device)
        self.eps, self.norm, self.steps, self.seed, self.batch_size = eps, norm, steps, seed, batch_size

    @staticmethod
    def rows(labels: np.ndarray, *, examples: int, seed: int) -> np.ndarray:
        """Sorted ``int64`` positions in the validation split (labels ``(N,)``) of the subset that robust
        validation attacks: stratified, ``examples`` of them (all if fewer), drawn with ``seed``."""
        return stratified_subset(labels, examples, seed)

    def __call__(self, model: torch.nn.Module, *, extra: tuple[str, ...] = ()) -> dict[str, float]:
        """``{"robust_val_accuracy": ...}`` (PGD) and ``"<attack>_val_accuracy"`` for each registered
        attack in ``extra`` (at its default settings); fractions in [0, 1].

        ``model`` must be in eval mode; it is left as it is.
        """
        gen = generator(self.seed, self.images.device)
        specs = {f"{name.replace('-', '_')}_val_accuracy": AttackSpec(name, norm=self.norm) for name in extra}
        correct = dict.fromkeys(("robust_val_accuracy", *specs), 0)
        for start in range(0, len(self.labels), self.batch_size):
            x, y = self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]
            adversarial = {"robust_val_accuracy": pgd(model, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
                                                      generator=gen)}
            for key, spec in specs.items():
                adversarial[key] = spec.run(model, x, y, self.eps, gen)
            with torch.no_grad():
                for key, images in adversarial.items():
                    correct[key] += int((model(images).argmax(1) == y).sum())
        n = max(len(self.labels), 1)
        return {key: count / n for key, count in correct.items()}
