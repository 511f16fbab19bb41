"""FMN: the Fast Minimum-Norm attack, each example's smallest adversarial perturbation under L-inf, L2 or L1.

Pintor, Roli, Brendel and Biggio, "Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints",
NeurIPS 2021 (Algorithm 1). The attack takes normalized gradient steps on the logit margin inside a ball whose
radius it adapts: it grows the radius until the example is fooled, then shrinks it while the example stays
fooled, and keeps the smallest fooling perturbation it met. Run with the largest eps the images allow, it is
the minimal-norm attack behind the robustness curve (:func:`minimal_radii`); with a smaller eps it is a
fixed-eps attack that never leaves that ball (the L1 threat model's attack).
"""

from __future__ import annotations

import math

import torch

from imgclf.attacks.core import (
    attack_entry,
    fooled,
    largest_eps,
    logits_and_gradient,
    per_example_norm,
    project,
)
from imgclf.attacks.losses import margin
from imgclf.attacks.registry import NORMS

#: The default initial step length per norm, in L2 pixel units. Under L-inf the L2-normalized step spreads over
#: every pixel, so it starts longer (``bench/minimal_norm.py`` measures the curve against APGD-CE).
ALPHA_INIT = {"linf": 10.0, "l2": 1.0, "l1": 1.0}
#: The dual norm of each norm: the distance to the linearized boundary is the margin over the gradient's dual norm.
DUAL_NORMS = {"linf": "l1", "l2": "l2", "l1": "linf"}


@attack_entry(norms=NORMS)
def fmn(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    alpha_init: float | None = None,
    alpha_final: float | None = None,
    gamma_init: float = 0.05,
    gamma_final: float = 0.001,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FMN: per example, the smallest perturbation within ``eps`` that it finds to fool ``model`` (untargeted).

    Each step (Pintor et al. 2021, Algorithm 1) computes the margin ``z_y - max_{i != y} z_i`` and its gradient,
    adapts the radius ``epsilon`` (``epsilon * (1 - gamma)`` while fooled, never above the smallest fooling norm
    found; ``epsilon * (1 + gamma)`` while not fooled after having been; before the first success, the current
    norm plus the distance to the linearized boundary, the margin over the gradient's dual norm, and at least
    ``epsilon * (1 + gamma)``: without that floor, clamping to ``[0, 1]`` can shrink each step's norm by as much
    as the extrapolation adds, and the search stalls short of the boundary), takes a step of
    length ``alpha`` along the L2-normalized gradient, projects onto the ``min(epsilon, eps)`` ball and clamps to
    ``[0, 1]``. ``alpha`` and ``gamma`` fall from their initial to their final values on a cosine schedule. The
    attack is deterministic.

    Shape:
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``. labels: ``int64`` ``(N,)``. Returns
        ``float32`` ``(N, C, H, W)`` in ``[0, 1]``.

    Args:
        model: In eval mode; maps images to logits ``(N, K)``.
        images: Clean images. labels: Their true classes.
        eps: The largest perturbation returned, in pixel units under ``norm``; an example whose smallest fooling
            perturbation found is larger comes back unchanged. The largest the images allow
            (:func:`imgclf.attacks.core.largest_eps`) leaves the search unbounded.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        steps: Iterations, each one forward and one backward pass (and one forward pass at the end).
        alpha_init, alpha_final: The step length's schedule, in L2 pixel units (defaults: :data:`ALPHA_INIT` by
            norm, and ``alpha_init / 100``).
        gamma_init, gamma_final: The radius's relative change per step, its schedule.
        generator: Unused (the attack draws nothing); accepted like every attack's.

    Returns:
        Per example, the smallest fooling point found within ``eps``, else the clean image. Misclassified
        examples come back unchanged (their smallest perturbation is 0).

    Raises:
        ValueError: On invalid inputs (:func:`imgclf.attacks.core.check_inputs`) or ``steps < 1``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    first = ALPHA_INIT[norm] if alpha_init is None else alpha_init
    final = first / 100 if alpha_final is None else alpha_final
    bound = min(eps, largest_eps(images, norm))
    n = len(images)
    delta = torch.zeros_like(images)
    radius = torch.full((n,), math.inf, device=images.device)
    best_norm = torch.full((n,), math.inf, device=images.device)
    best = images.clone()
    found = torch.zeros(n, dtype=torch.bool, device=images.device)
    for step in range(steps + 1):
        point = images + delta
        if step == steps:  # the last point only needs its logits
            logits = model(point).float()
        else:
            logits, grad = logits_and_gradient(model, point, lambda z: -margin(z, labels))
        hit = fooled(logits, labels)
        size = per_example_norm(delta, norm).flatten()
        better = hit & (size < best_norm)
        best_norm = torch.where(better, size, best_norm)
        best[better] = point[better]
        found |= hit
        if step == steps:
            break
        schedule = (1 + math.cos(math.pi * step / steps)) / 2
        alpha = final + (first - final) * schedule
        gamma = gamma_final + (gamma_init - gamma_final) * schedule
        to_boundary = margin(logits, labels).abs() / per_example_norm(grad, DUAL_NORMS[norm]).flatten().clamp_min(1e-12)
        grown = radius * (1 + gamma)
        reach = torch.where(radius.isinf(), size + to_boundary, torch.maximum(size + to_boundary, grown))
        radius = torch.where(hit, torch.minimum(radius * (1 - gamma), best_norm),
                             torch.where(found, grown, reach)).clamp(max=bound)
        delta = delta + alpha * grad / per_example_norm(grad, "l2").clamp_min(1e-12)
        delta = project(images + delta, images, radius, norm) - images
    return project(best, images, bound, norm)  # (rounding aside, it is inside already)


def minimal_radii(model: torch.nn.Module, adversarial: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                  norm: str) -> torch.Tensor:
    """Each example's smallest adversarial radius as an attack's output shows it: the norm of
    ``adversarial - images`` where ``model`` misclassifies ``adversarial``, infinite where it does not, 0 where
    ``model`` misclassifies the clean image.

    Shape:
        adversarial, images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``. labels: ``(N,)``. Returns ``float32``
        ``(N,)``, in pixel units under ``norm``.
    """
    with torch.no_grad():
        hit = fooled(model(adversarial).float(), labels)
        wrong = fooled(model(images).float(), labels)
    size = per_example_norm(adversarial - images, norm).flatten().float()
    return torch.where(wrong, torch.zeros_like(size), torch.where(hit, size, torch.full_like(size, math.inf)))


def run_fmn(spec, model, images, labels, eps, gen, target):
    """The registry's runner of ``fmn`` (see :mod:`imgclf.attacks.registry`)."""
    return fmn(model, images, labels, eps=eps, norm=spec.norm, steps=spec.n_steps, generator=gen)
