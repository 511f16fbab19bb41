"""Robust accuracy against a list of attacks over a list of eps values."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from imgclf.attacks.fgsm import fgsm
from imgclf.attacks.pgd import default_alpha, pgd
from imgclf.runtime import generator

ATTACK_NAMES = ("fgsm", "pgd")


@dataclass(frozen=True)
class AttackSpec:
    """One attack and its settings (eps is given separately, per sweep point).

    Attributes:
        name: ``"fgsm"`` or ``"pgd"``.
        steps: PGD iterations (FGSM is always 1).
        alpha: PGD step size in pixel units; None for ``2.5 * eps / steps``.
        random_start: PGD starts at a uniform random point of the eps ball.
    """

    name: str
    steps: int = 10
    alpha: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.name not in ATTACK_NAMES:
            raise ValueError(f"unknown attack {self.name!r}; valid choices: {', '.join(ATTACK_NAMES)}")

    def run(
        self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """Adversarial versions of ``images`` (see :func:`fgsm`, :func:`pgd`)."""
        if self.name == "fgsm":
            return fgsm(model, images, labels, eps=eps)
        return pgd(model, images, labels, eps=eps, alpha=self.alpha, steps=self.steps,
                   random_start=self.random_start, generator=gen)

    def settings(self, eps: float) -> dict[str, Any]:
        """Steps and step size as used at ``eps`` (for the results table)."""
        if self.name == "fgsm":
            return {"steps": 1, "alpha": eps, "random_start": False}
        alpha = default_alpha(eps, self.steps) if self.alpha is None else self.alpha
        return {"steps": self.steps, "alpha": alpha, "random_start": self.random_start}


@dataclass
class RobustnessEntry:
    """Accuracy under one attack at one eps, over ``n`` examples, in ``[0, 1]``.

    ``clean_accuracy`` is the accuracy on the same ``n`` examples without
    attack, which ``accuracy`` equals at ``eps = 0``.
    """

    attack: str
    norm: str
    eps: float
    steps: int
    alpha: float
    random_start: bool
    accuracy: float
    clean_accuracy: float
    n: int


@dataclass
class RobustnessResult:
    """The attack stage's output.

    Attributes:
        entries: One per (attack, eps), attacks in the order given, eps ascending.
        clean_accuracy: Accuracy on the same ``n`` examples without attack.
        n: Number of attacked examples.
        seed: Seed of the random starts.
        warnings: Signs that the evaluation may be unreliable.
        examples: For the report: ``clean`` ``float32`` ``(M, C, H, W)``,
            ``labels`` and ``clean_pred`` ``(M,)``, and per attack at the
            largest eps ``adv_<attack>`` and ``pred_<attack>``, plus ``eps``.
        seconds: Wall time.
    """

    entries: list[RobustnessEntry]
    clean_accuracy: float
    n: int
    seed: int
    warnings: list[str] = field(default_factory=list)
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dicts(self) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in self.entries]


def _predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(1)


def robustness(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attacks: list[AttackSpec],
    eps_values: list[float],
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
    show: int = 8,
    progress=None,
) -> RobustnessResult:
    """Accuracy of ``model`` under each attack at each eps.

    Each (attack, eps) point uses a fresh generator seeded with ``seed``, so a
    point's result does not depend on which other points were run.

    Args:
        model: In eval mode; maps ``(N, C, H, W)`` in ``[0, 1]`` to logits.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` (CPU or device).
        labels: ``int64`` ``(N,)``.
        attacks: What to run.
        eps_values: L-inf radii in pixel units.
        device: Where to compute.
        batch_size: Examples per attack batch.
        seed: Seeds PGD's random starts.
        show: How many examples to keep for the report's figure.
        progress: Optional callable ``progress(done, total)`` after each batch,
            with the batches done and the total over all attacks and eps.

    Returns:
        The entries, clean accuracy on the same examples, and warnings.
    """
    start = time.perf_counter()
    eps_values = sorted(set(float(e) for e in eps_values))
    n = int(labels.shape[0])
    images, labels = images.to(device), labels.to(device)  # once, not once per attack and eps
    chunks = [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, n, batch_size)]
    clean_pred = torch.cat([_predict(model, x).cpu() for x, _ in chunks])
    clean_accuracy = int((clean_pred == labels.cpu()).sum()) / n if n else float("nan")
    m = min(show, n)
    examples: dict[str, np.ndarray] = {
        "clean": images[:m].cpu().numpy(), "labels": labels[:m].cpu().numpy(),
        "clean_pred": clean_pred[:m].numpy(), "eps": np.float32(eps_values[-1]),
    }
    entries: list[RobustnessEntry] = []
    total, done = len(attacks) * len(eps_values) * len(chunks), 0
    for spec in attacks:
        for eps in eps_values:
            gen = generator(seed)
            correct = 0
            kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # the first m results, for the report
            for x, y in chunks:
                adv = spec.run(model, x, y, eps, gen)
                pred = _predict(model, adv)
                correct += int((pred == y).sum())
                if eps == eps_values[-1] and sum(len(p) for _, p in kept) < m:
                    kept.append((adv.cpu(), pred.cpu()))
                done += 1
                if progress is not None:
                    progress(done, total)
            if kept:
                examples[f"adv_{spec.name}"] = torch.cat([a for a, _ in kept])[:m].numpy()
                examples[f"pred_{spec.name}"] = torch.cat([p for _, p in kept])[:m].numpy()
            entries.append(RobustnessEntry(
                attack=spec.name, norm="linf", eps=eps, **spec.settings(eps),
                accuracy=correct / n if n else float("nan"), clean_accuracy=clean_accuracy, n=n,
            ))
    result = RobustnessResult(entries, clean_accuracy, n, seed, examples=examples)
    result.warnings = sanity_warnings(result)
    result.seconds = time.perf_counter() - start
    return result


def sanity_warnings(result: RobustnessResult) -> list[str]:
    """Signs of an unreliable evaluation (Carlini et al. 2019, "On Evaluating
    Adversarial Robustness"): a multi-step attack weaker than FGSM, accuracy
    that rises with eps, accuracy that does not fall below clean accuracy.
    """
    found: list[str] = []
    by_attack: dict[str, list[RobustnessEntry]] = {}
    for entry in result.entries:
        by_attack.setdefault(entry.attack, []).append(entry)
    fgsm_acc = {e.eps: e.accuracy for e in by_attack.get("fgsm", [])}
    for entry in by_attack.get("pgd", []):
        if entry.eps in fgsm_acc and entry.accuracy > fgsm_acc[entry.eps]:
            found.append(
                f"PGD is weaker than FGSM at eps={entry.eps:.4g} ({entry.accuracy:.3f} > "
                f"{fgsm_acc[entry.eps]:.3f}): the attack may not have converged or gradients are masked"
            )
    for name, entries in by_attack.items():
        for before, after in zip(entries, entries[1:]):
            if after.accuracy > before.accuracy + 0.01:
                found.append(
                    f"{name.upper()} accuracy rises from {before.accuracy:.3f} at eps={before.eps:.4g} "
                    f"to {after.accuracy:.3f} at eps={after.eps:.4g}: a sign of gradient masking"
                )
        largest = entries[-1]
        if largest.eps > 0 and largest.accuracy >= result.clean_accuracy:
            found.append(
                f"{name.upper()} at the largest eps ({largest.eps:.4g}) does not lower accuracy below "
                f"the clean {result.clean_accuracy:.3f}: check the eps units and the model's gradients"
            )
    return found
