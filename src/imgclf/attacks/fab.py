"""FAB-T: the targeted Fast Adaptive Boundary attack.

Croce and Hein, "Minimally distorted Adversarial Examples with a Fast
Adaptive Boundary Attack", ICML 2020; targeted as in AutoAttack (Croce and
Hein, ICML 2020), which runs it towards the highest-scoring wrong classes.
"""

from __future__ import annotations

import functools

import torch

from imgclf.attacks.core import (
    attack_entry,
    logits_and_gradient,
    per_example_norm,
    project,
    random_point,
    top_classes,
)


def project_onto_hyperplane(point: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str) -> torch.Tensor:
    """The smallest step ``delta`` with ``<w, delta> = c`` that keeps ``point + delta`` in ``[0, 1]``.

    Solved exactly: along ``t * v`` (``v = sign(c) sign(w)`` for L-inf,
    ``sign(c) w`` for L2) each coordinate moves until it hits its box bound,
    so ``<w, delta(t)>`` is piecewise linear in ``t``; sorting the breakpoints
    finds the ``t`` that meets ``c``. When no point of the box meets it, the
    box corner that comes closest is returned.

    Args:
        point: ``(N, D)`` in ``[0, 1]``.
        w: Hyperplane normals ``(N, D)``.
        c: Required ``<w, delta>``, ``(N,)``.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        ``delta`` ``(N, D)``.
    """
    direction = torch.sign(c)[:, None]
    v = direction * (w.sign() if norm == "linf" else w)
    bound = torch.where(v > 0, 1 - point, -point)  # how far each coordinate can move along v
    moving = v != 0
    breaks = torch.where(moving, bound / torch.where(moving, v, 1.0), torch.full_like(v, 1e30))
    slope = direction * w * v  # >= 0: d<w, delta>/dt while the coordinate moves
    order = breaks.argsort(1)
    breaks, slope = breaks.gather(1, order), slope.gather(1, order)
    reached = slope * breaks  # what a saturated coordinate contributes
    slope_before = slope.cumsum(1) - slope
    reached_before = reached.cumsum(1) - reached
    total_slope = slope.sum(1, keepdim=True)
    value_at_breaks = breaks * (total_slope - slope.cumsum(1)) + reached.cumsum(1)
    need = c.abs()[:, None]
    enough = value_at_breaks >= need
    first = enough.float().argmax(1, keepdim=True)
    t = (need - reached_before.gather(1, first)) / (total_slope - slope_before.gather(1, first)).clamp_min(1e-30)
    largest_finite = torch.where(breaks < 1e30, breaks, torch.zeros_like(breaks)).amax(1, keepdim=True)
    t = torch.where(enough.any(1, keepdim=True), t, largest_finite)
    return torch.minimum(torch.maximum(t * v, -point), 1 - point)


@attack_entry
def fab_targeted(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    target_classes: int = 9,
    steps: int = 100,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FAB-T: the smallest perturbation that crosses the linearized boundary
    between the true class and each of the ``target_classes`` highest-scoring
    wrong classes in turn.

    Each step projects the current point ``x_i`` and the original ``x_0`` onto
    the linearized boundary ``f(x_i) + <grad f(x_i), z - x_i> = 0`` with
    ``f = z_target - z_true`` (inside ``[0, 1]``), and moves to
    ``(1 - a)(x_i + eta d_i) + a (x_0 + eta d_0)``, ``a = min(|d_i| / (|d_i| + |d_0|), alpha_max)``.
    When a step is misclassified it is kept if it is the closest so far, and
    the search goes back towards ``x_0`` by ``beta``. An example is done once
    an adversarial example within ``eps`` is found.

    Args:
        model: Maps ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``.
        images: Clean images, ``float32`` ``(N, C, H, W)``, range ``[0, 1]``.
        labels: True classes, ``int64`` ``(N,)``.
        eps: Radius in pixel units: the closest adversarial example counts
            only if it lies within it.
        norm: ``"linf"`` or ``"l2"``.
        target_classes: Targets to try, capped at ``K - 1`` (AutoAttack: 9).
        steps: Iterations per target and restart (AutoAttack: 100).
        restarts: Runs per target; the first starts at ``x_0``, later ones at a
            random point of half the smallest radius found so far (or of eps).
        alpha_max, eta, beta: The paper's step parameters.
        generator: Seeds the random restarts.

    Returns:
        Adversarial images in ``[0, 1]`` within ``eps`` of ``images``, or the
        clean image where none was found; ``eps=0`` returns a copy.

    Raises:
        ValueError: On invalid arguments.
    """
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    x = images.detach()
    result = x.clone()
    targets = top_classes(model, x, labels, target_classes)
    best_norm = torch.full((len(x),), float("inf"), device=x.device)
    for k in range(targets.shape[1]):
        for restart in range(restarts):
            todo = torch.nonzero(best_norm > eps).squeeze(1)
            if not len(todo):
                return result
            _fab_run(model, x, labels, targets[:, k], todo, result, best_norm, eps=eps, norm=norm, steps=steps,
                     alpha_max=alpha_max, eta=eta, beta=beta,
                     random_radius=None if restart == 0 else best_norm, generator=generator)
    return result


def _target_minus_true(logits: torch.Tensor, *, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_target - z_true`` per example, ``(N, K) -> (N,)``: negative until the boundary is crossed."""
    return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, labels[:, None]).squeeze(1)


def _fab_run(model, x, labels, targets, todo, result, best_norm, *, eps, norm, steps, alpha_max, eta, beta,
             random_radius, generator) -> None:
    """One FAB run towards ``targets`` on the examples ``todo``; updates ``result`` and ``best_norm`` in place."""
    x0, y, t = x[todo], labels[todo], targets[todo]
    shape = x0.shape
    if random_radius is None:
        current = x0.clone()
    else:
        radius = torch.minimum(random_radius[todo], torch.full_like(random_radius[todo], eps)) / 2
        unit = random_point(torch.full_like(x0, 0.5), 0.5, norm, generator) - 0.5  # inside the radius-0.5 ball
        current = (x0 + unit * 2 * radius.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
    flat0 = x0.flatten(1)
    for _ in range(steps):
        if not len(todo):
            return
        logits, grad = logits_and_gradient(model, current, functools.partial(_target_minus_true, target=t, labels=y))
        f = _target_minus_true(logits, target=t, labels=y)
        w, flat = grad.flatten(1), current.flatten(1)
        both = project_onto_hyperplane(torch.cat([flat, flat0]), torch.cat([w, w]),
                                       torch.cat([-f, -(f + (w * (flat0 - flat)).sum(1))]), norm)
        d_current, d_origin = both[:len(flat)], both[len(flat):]  # one call for x_i and x_0: half the kernels
        n_current = per_example_norm(d_current, norm).view(-1)
        n_origin = per_example_norm(d_origin, norm).view(-1)
        a = torch.clamp(n_current / (n_current + n_origin).clamp_min(1e-12), max=alpha_max)[:, None]
        step = ((1 - a) * (flat + eta * d_current) + a * (flat0 + eta * d_origin)).clamp(0.0, 1.0)
        current = step.view(shape)
        with torch.no_grad():
            adversarial = model(current).argmax(1) != y
        if adversarial.any():
            distance = per_example_norm(current - x0, norm).view(-1)
            closer = adversarial & (distance < best_norm[todo])
            best_norm[todo[closer]] = distance[closer]
            result[todo[closer]] = project(current[closer], x0[closer], eps, norm)
            current[adversarial] = x0[adversarial] + beta * (current[adversarial] - x0[adversarial])
        keep = best_norm[todo] > eps  # done once an adversarial example within eps is found
        todo, x0, flat0, y, t, current = todo[keep], x0[keep], flat0[keep], y[keep], t[keep], current[keep]
        shape = x0.shape


def run_fab(spec, model, images, labels, eps, gen, target):
    """The registry's runner of ``fab-t`` (see :mod:`imgclf.attacks.registry`)."""
    return fab_targeted(model, images, labels, eps=eps, norm=spec.norm, target_classes=spec.target_classes,
                        steps=spec.n_steps, restarts=spec.restarts, generator=gen)
