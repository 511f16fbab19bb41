"""The certified-robustness evaluation: certified accuracy at each L2 radius beside the empirical upper bounds,
so that a smoothed classifier's true robust accuracy is bracketed.

At each radius ``r`` the smoothed classifier's true L2 robust accuracy lies between two measured numbers:

- below it, the **certified accuracy**: the share of examples whose CERTIFY prediction (Cohen, Rosenfeld and
  Kolter 2019; :func:`imgclf.certification.certificates`) is their label with a certified radius of at least
  ``r`` (each certificate holds with probability at least ``1 - alpha``);
- above it, the **smoothed classifier's accuracy under attack**: the share of examples it classifies correctly
  at the image and at every adversarial point that SmoothAdv (Salman et al. 2019;
  :func:`imgclf.certification.smoothed_attack`) found within radius ``r`` or less, each point's class the majority of
  ``attack_n`` noisy copies (a Monte Carlo estimate of the smoothed classifier's class).

The base model's own L2 robust accuracy under APGD-CE (Croce and Hein 2020) at the same radii is shown beside
them: what smoothing bought. The work goes unit by unit (:data:`UNIT` examples each, one seeded generator per
unit), so a stopped evaluation resumes from the units a store kept and the processes of ``torchrun`` share it.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclf.attacks.auto_pgd import apgd
from imgclf.attacks.robust_accuracy import PassCounter, unit_seed
from imgclf.certification.smoothed_attack import smooth_adv
from imgclf.certification.smoothing import ABSTAIN, Certificates, certificates, max_certifiable_radius, noise_counts
from imgclf.distributed import Distributed
from imgclf.runtime import generator

if TYPE_CHECKING:
    from imgclf.attacks.robust_accuracy import BatchStore

#: Examples per unit of work: what one committed file holds, and what one process of ``torchrun`` takes at a time.
UNIT = 50
#: APGD-CE's steps on the base model (its paper's default).
BASE_ATTACK_STEPS = 100


@dataclass
class CertifiedRow:
    """The bracket at one L2 radius (pixel units).

    Attributes:
        radius: The L2 radius, ``>= 0``.
        certified: Certified accuracy, in ``[0, 1]``: a lower bound on the smoothed classifier's robust accuracy.
        smoothed_attack: The smoothed classifier's accuracy under SmoothAdv, in ``[0, 1]``: an upper bound on
            its robust accuracy; None where the attacks did not run.
        base_attack: The base model's robust accuracy under APGD-CE (L2), in ``[0, 1]``; None where the attacks
            did not run.
    """

    radius: float
    certified: float
    smoothed_attack: float | None = None
    base_attack: float | None = None

    def bracket(self) -> str:
        """One sentence: between which two numbers the smoothed classifier's robust accuracy lies at the radius."""
        if self.smoothed_attack is None:
            return f"at L2 radius {self.radius:g}: at least {100 * self.certified:.1f}% (certified)"
        return (f"at L2 radius {self.radius:g}: between {100 * self.certified:.1f}% (certified) and "
                f"{100 * self.smoothed_attack:.1f}% (SmoothAdv)")


@dataclass
class CertificationResult:
    """What :func:`certify` found on ``N`` examples.

    Attributes:
        rows: One :class:`CertifiedRow` per radius asked for, ascending.
        certificates: CERTIFY's per-example answer (prediction or abstention, lower bound, radius).
        labels: ``int64`` ``(N,)``: the true classes.
        clean_accuracy: The base model's top-1 accuracy on the images, in ``[0, 1]``.
        smoothed_correct: ``bool`` ``(R, N)``: the smoothed classifier right at every attacked point up to each
            radius, and at the image itself where radius 0 is among the radii (the per-example upper bound); None
            without the attacks.
        base_correct: ``bool`` ``(R, N)``: the base model right under APGD-CE at each radius; None without.
        violations: Examples certified at a radius within which SmoothAdv found a point whose Monte Carlo class
            is not the certified one (a failed certificate, or the Monte Carlo estimate's error; see
            :func:`certify`).
        warnings: What the reader must know (a radius beyond what ``n`` and ``alpha`` can certify, violations).
        seconds: Wall time. forwards, backwards: Passes of the base model, counted in images.
        seed: Seeds every unit's generator.
        attack_steps, attack_samples, attack_n: SmoothAdv's steps and noise draws per step, and the noisy copies
            that predict at each attacked point (0 without the attacks).
    """

    rows: list[CertifiedRow]
    certificates: Certificates
    labels: np.ndarray
    clean_accuracy: float
    smoothed_correct: np.ndarray | None = None
    base_correct: np.ndarray | None = None
    violations: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0
    backwards: int = 0
    seed: int = 0
    attack_steps: int = 0
    attack_samples: int = 0
    attack_n: int = 0

    @property
    def n(self) -> int:
        """Examples evaluated."""
        return len(self.labels)

    @property
    def abstained(self) -> float:
        """The share of examples CERTIFY abstained on."""
        return self.certificates.abstained

    @property
    def max_radius(self) -> float:
        """The largest radius ``n`` and ``alpha`` allow (:func:`imgclf.certification.max_certifiable_radius`)."""
        c = self.certificates
        return max_certifiable_radius(c.sigma, c.n, c.alpha)

    @property
    def median_radius(self) -> float | None:
        """The median certified radius, abstentions and wrong predictions counted as 0; None without examples."""
        right = (self.certificates.prediction == self.labels)
        return float(np.median(np.where(right, self.certificates.radius, 0.0))) if self.n else None

    def certified_accuracy(self, radius: float) -> float:
        """Certified accuracy at any L2 ``radius`` (pixel units), from the per-example radii."""
        return self.certificates.certified_accuracy(self.labels, radius)

    @property
    def forwards_per_example(self) -> float:
        """Forward passes of the base model per example (CERTIFY's ``n0 + n``, plus the attacks')."""
        return self.forwards / max(self.n, 1)

    @property
    def backwards_per_example(self) -> float:
        """Backward passes of the base model per example (the attacks')."""
        return self.backwards / max(self.n, 1)

    def _repr_html_(self) -> str:
        """The bracket as an HTML table (Jupyter shows this)."""
        c = self.certificates
        return bracket_html(self.rows, sigma=c.sigma, n0=c.n0, n=c.n, alpha=c.alpha, examples=self.n,
                            clean_accuracy=self.clean_accuracy, abstained=self.abstained,
                            forwards_per_example=self.forwards_per_example, seconds=self.seconds,
                            warnings=self.warnings)


def bracket_html(rows: Sequence[CertifiedRow], *, sigma: float, n0: int, n: int, alpha: float, examples: int,
                 clean_accuracy: float, abstained: float, forwards_per_example: float, seconds: float,
                 warnings: Sequence[str]) -> str:
    """A certified-robustness evaluation as an HTML paragraph and table (for Jupyter)."""
    def percent(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.1f}%"

    body = "".join(f"<tr><td>{row.radius:g}</td><td>{percent(row.certified)}</td>"
                   f"<td>{percent(row.smoothed_attack)}</td><td>{percent(row.base_attack)}</td></tr>" for row in rows)
    notes = "".join(f"<p>note: {html.escape(note)}</p>" for note in warnings)
    return (f"<p>Randomized smoothing, sigma {sigma:g}, n0 {n0:,}, n {n:,}, alpha {alpha:g}, on {examples} images: "
            f"clean accuracy of the model {percent(clean_accuracy)}, abstained on {percent(abstained)}; "
            f"{forwards_per_example:,.0f} forward passes per example, {seconds:.0f} s.</p><table><tr><th>L2 radius"
            "</th><th>certified (lower bound)</th><th>smoothed, under SmoothAdv (upper bound)</th><th>model, under "
            f"APGD-CE</th></tr>{body}</table>{notes}")


def certify(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, sigma: float = 0.25,
            radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75), n0: int = 100, n: int = 10_000, alpha: float = 0.001,
            attack: bool = True, attack_steps: int = 20, attack_samples: int = 8, attack_n: int = 1000,
            batch_size: int = 1000, seed: int = 0, device: torch.device | str | None = None,
            store: BatchStore | None = None, distributed: Distributed | None = None,
            progress: Callable[[int, int], None] | None = None) -> CertificationResult:
    """Certified accuracy of the smoothed classifier of ``model`` at each L2 radius, with the empirical upper
    bounds beside it (see the module's docstring).

    Args:
        model: The base classifier, in eval mode: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, K)``.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` (moved to ``device`` unit by unit).
        labels: ``int64`` ``(N,)``.
        sigma: The smoothing noise's standard deviation in pixel units, ``> 0``: that the model was trained with.
        radii: L2 radii in pixel units, each ``>= 0``.
        n0, n, alpha: CERTIFY's selection and estimation samples per image and each certificate's failure
            probability (Cohen et al.: 100, 100,000 and 0.001; imgclf's ``n`` default 10,000).
        attack: Run SmoothAdv on the smoothed classifier and APGD-CE (L2) on the model at every radius above 0.
        attack_steps, attack_samples: SmoothAdv's PGD steps and noise draws per step.
        attack_n: Noisy copies whose majority is the smoothed classifier's class at each attacked point.
        batch_size: Noisy images per forward pass.
        seed: Seeds each unit's generator (the same seed, device and units: the same result).
        device: Where to compute; None: where the model's parameters are.
        store: Where finished units are committed and found again (:class:`imgclf.attacks.BatchStore`), or None.
        distributed: This process's place under ``torchrun``: the units are dealt out and gathered.
        progress: Called with ``(units done, units in all)``.

    Returns:
        :class:`CertificationResult`.

    Raises:
        ValueError: On ``sigma <= 0``, a negative or non-finite radius, a sample count below 1, ``alpha`` outside
            ``(0, 1/2)``, no images, or images and labels of different lengths.
    """
    radii = sorted(float(r) for r in radii)
    if not radii or any(not (math.isfinite(r) and r >= 0) for r in radii):
        raise ValueError(f"radii must be one or more L2 radii >= 0 in pixel units, got {radii}")
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels" if len(images) != len(labels) else
                         "no images to certify")
    if min(attack_steps, attack_samples, attack_n, batch_size) < 1:
        raise ValueError(f"attack_steps, attack_samples, attack_n and batch_size must be >= 1, got {attack_steps}, "
                         f"{attack_samples}, {attack_n} and {batch_size}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    distributed = distributed or Distributed()
    counter = PassCounter(model)
    with torch.no_grad():
        probe = model(images[:1].to(device))
    classes = int(probe.shape[1])
    work = _Work(counter, sigma=sigma, radii=radii, n0=n0, n=n, alpha=alpha, classes=classes,
                 attack=attack, attack_steps=attack_steps, attack_samples=attack_samples, attack_n=attack_n,
                 batch_size=batch_size, seed=seed, device=torch.device(device))
    units = [range(start, min(start + UNIT, len(images))) for start in range(0, len(images), UNIT)]
    began = time.perf_counter()
    results: list[dict[str, Any]] = []
    world, rank = distributed.world_size, distributed.rank
    for first in range(0, len(units), world):
        mine = first + rank
        result = None
        if mine < len(units):
            name = f"certify-{mine:05d}"
            result = store.load(name) if store is not None else None
            if result is None or not _fits(result, len(units[mine]), len(radii)):
                result = work.unit(images[units[mine].start:units[mine].stop],
                                   labels[units[mine].start:units[mine].stop], mine)
                if store is not None:
                    store.save(name, result)
        for offset, unit in enumerate(distributed.gather(result)):
            if unit is not None:
                if store is not None and first + offset != mine:  # another process's unit: rank 0 keeps it too
                    store.save(f"certify-{first + offset:05d}", unit)
                results.append(unit)
        if progress is not None:
            progress(min(first + world, len(units)), len(units))
    return _merged(results, labels, radii, work, time.perf_counter() - began)


@dataclass
class _Work:
    """One evaluation's settings, and the work on one unit of examples."""

    model: PassCounter
    sigma: float
    radii: list[float]
    n0: int
    n: int
    alpha: float
    classes: int
    attack: bool
    attack_steps: int
    attack_samples: int
    attack_n: int
    batch_size: int
    seed: int
    device: torch.device

    def unit(self, images: torch.Tensor, labels: torch.Tensor, index: int) -> dict[str, Any]:
        """CERTIFY on one unit's images, and the attacks at every radius: a dict of CPU tensors and counts."""
        model, device = self.model, self.device
        x, y = images.to(device), labels.to(device)
        forwards, backwards = model.forwards, model.backwards
        gen = generator(unit_seed(self.seed, index), device)
        found = certificates(model, x, sigma=self.sigma, num_classes=self.classes, n0=self.n0, n=self.n,
                             alpha=self.alpha, batch_size=self.batch_size, generator=gen)
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        rows, count = len(self.radii), len(x)
        smoothed = torch.zeros(rows, count, dtype=torch.int64)  # the smoothed class at the attacked point
        base = torch.zeros(rows, count, dtype=torch.bool)
        if self.attack:
            for i, radius in enumerate(self.radii):
                if radius > 0:
                    point = smooth_adv(model, x, y, eps=radius, sigma=self.sigma, steps=self.attack_steps,
                                       samples=self.attack_samples, generator=gen)
                    fooling = apgd(model, x, y, eps=radius, norm="l2", loss="ce", steps=BASE_ATTACK_STEPS,
                                   generator=gen)
                    with torch.no_grad():
                        base[i] = (model(fooling).argmax(1) == y).cpu()
                else:
                    point = x
                    base[i] = clean.cpu()
                votes = noise_counts(model, point, sigma=self.sigma, samples=self.attack_n, num_classes=self.classes,
                                     batch_size=self.batch_size, generator=gen)
                smoothed[i] = votes.argmax(1)
        return {"prediction": torch.as_tensor(found.prediction), "p_lower": torch.as_tensor(found.p_lower),
                "radius": torch.as_tensor(found.radius), "clean": clean.cpu(), "smoothed": smoothed, "base": base,
                "forwards": model.forwards - forwards, "backwards": model.backwards - backwards}


def radius_cap_warning(sigma: float, n: int, alpha: float, radii: Sequence[float]) -> str | None:
    """What to say where ``n`` and ``alpha`` cap the certifiable radius (:func:`max_certifiable_radius`) below
    some of ``radii``; None where they do not."""
    cap = max_certifiable_radius(sigma, n, alpha)
    beyond = [r for r in radii if r > cap]
    if not beyond:
        return None
    return (f"with n {n:,} and alpha {alpha:g} no radius above {cap:.4g} can be certified (sigma times the normal "
            f"quantile of alpha ** (1 / n)), so the certified accuracy is 0 by construction at radius "
            f"{', '.join(f'{r:g}' for r in beyond)}: raise n (or sigma, with a model trained at it)")


def _fits(unit: dict[str, Any], count: int, rows: int) -> bool:
    """Whether a stored unit is one of ``count`` examples at ``rows`` radii (else it is computed again)."""
    shapes = {"prediction": (count,), "p_lower": (count,), "radius": (count,), "clean": (count,),
              "smoothed": (rows, count), "base": (rows, count)}
    return (all(isinstance(unit.get(key), torch.Tensor) and tuple(unit[key].shape) == shape
                for key, shape in shapes.items())
            and all(isinstance(unit.get(key), int) and unit[key] >= 0 for key in ("forwards", "backwards")))


def _merged(units: list[dict[str, Any]], labels: torch.Tensor, radii: list[float], work: _Work,
            seconds: float) -> CertificationResult:
    """The units' results joined in order, with the bracket at every radius and the warnings."""
    def joined(key: str, axis: int = 0) -> np.ndarray:
        return np.concatenate([unit[key].numpy() for unit in units], axis) if units else np.zeros(0)

    truth = labels.cpu().numpy().astype(np.int64)
    found = Certificates(joined("prediction").astype(np.int64), joined("p_lower").astype(np.float64),
                         joined("radius").astype(np.float64), work.sigma, work.n0, work.n, work.alpha,
                         forwards=len(truth) * (work.n0 + work.n))
    clean = joined("clean").astype(bool)
    smoothed_correct = base_correct = None
    violations = 0
    if work.attack and units:
        classes = joined("smoothed", 1)  # (R, N)
        smoothed_correct = np.logical_and.accumulate(classes == truth[None], axis=0)  # right up to each radius
        base_correct = np.logical_and.accumulate(joined("base", 1).astype(bool), axis=0)
        inside = (found.prediction != ABSTAIN)[None] & (found.radius[None] >= np.asarray(radii)[:, None])
        violations = int((inside & (classes != found.prediction[None])).any(0).sum())
    rows = [CertifiedRow(radius, found.certified_accuracy(truth, radius),
                         None if smoothed_correct is None else float(smoothed_correct[i].mean()),
                         None if base_correct is None else float(base_correct[i].mean()))
            for i, radius in enumerate(radii)]
    cap = radius_cap_warning(work.sigma, work.n, work.alpha, radii)
    warnings = [] if cap is None else [cap]
    if violations:
        warnings.append(f"SmoothAdv found, for {violations} certified example(s), a point within the certified "
                        f"radius whose majority class over {work.attack_n:,} noisy copies is not the certified one: "
                        f"a certificate fails with probability at most alpha {work.alpha:g}, and the majority of "
                        f"{work.attack_n:,} copies errs near a tie; more than a few such examples in {len(truth)} "
                        "would mean a wrong model or noise (a sigma other than the model's)")
    return CertificationResult(rows, found, truth, float(clean.mean()) if len(clean) else math.nan,
                               smoothed_correct, base_correct, violations, warnings, seconds,
                               sum(unit["forwards"] for unit in units), sum(unit["backwards"] for unit in units),
                               work.seed, work.attack_steps if work.attack else 0,
                               work.attack_samples if work.attack else 0, work.attack_n if work.attack else 0)
