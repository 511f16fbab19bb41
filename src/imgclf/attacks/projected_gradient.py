"""Projected Gradient Descent under the L-inf and L2 norms.

Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018.
"""

from __future__ import annotations

import torch

from imgclf.attacks.core import (
    attack_entry,
    fooled,
    logits_and_gradient,
    project,
    random_point,
    set_aside,
    steepest_step,
)
from imgclf.attacks.losses import cross_entropy
from imgclf.attacks.registry import default_alpha


@attack_entry
def pgd(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    alpha: float | None = None,
    steps: int = 20,
    restarts: int = 1,
    random_start: bool = True,
    target: torch.Tensor | None = None,
    early_stop: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD on the cross-entropy: repeated steepest-ascent steps, each projected
    back onto the eps ball and ``[0, 1]``.

    Starting from ``x`` (or a random point of the eps ball when
    ``random_start``), repeat ``steps`` times
    ``x_adv = Proj(x_adv + alpha * d)``, with ``d = sign(grad)`` under L-inf and
    ``grad / ||grad||_2`` under L2. Untargeted it increases the cross-entropy of
    the true class; with ``target`` it decreases that of the target class.

    Speed: only input gradients are formed, and with ``early_stop`` an example
    is set aside as soon as an iterate fools the model (that iterate is its
    result), so later steps and restarts cost only what is still unbroken. Each
    restart runs on the examples no earlier restart has fooled.

    The model's mode and parameters are not touched; put it in eval mode first.

    Args:
        model: Maps ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``.
        images: Clean images, ``float32`` ``(N, C, H, W)``, range ``[0, 1]``.
        labels: True classes, ``int64`` ``(N,)``.
        eps: Radius in pixel units: ``[0, 1]`` under L-inf, ``[0, sqrt(C*H*W)]`` under L2.
        norm: ``"linf"`` or ``"l2"``.
        alpha: Step length in pixel units, ``> 0``; default
            :func:`default_alpha` ``= 2.5 * eps / steps``.
        steps: Gradient steps per restart, ``>= 1``.
        restarts: Independent runs, ``>= 1`` (more than one needs ``random_start``
            to differ).
        random_start: Start from a random point of the eps ball.
        target: Optional target classes ``int64`` ``(N,)``, never the true label.
        early_stop: Keep the first fooling iterate of each example (True), or
            always run every step and return the last iterate (False: what
            adversarial training wants).
        generator: Seeds the random starts; its device is used to draw them.

    Returns:
        Adversarial images, same shape and dtype, in ``[0, 1]`` and within
        ``eps`` of ``images``; ``eps=0`` returns a copy of ``images``.

    Raises:
        ValueError: On invalid images, labels, target, norm, ``eps``, ``alpha``,
            ``steps`` or ``restarts``.
    """
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    alpha = default_alpha(eps, steps) if alpha is None else alpha
    if not alpha > 0 and eps > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    x = images.detach()
    result = x.clone()
    todo = torch.arange(len(x), device=x.device)  # examples no iterate has fooled yet
    for restart in range(restarts):
        if not len(todo):
            break
        clean, y = x[todo], labels[todo]
        t = None if target is None else target[todo]
        adv = random_point(clean, eps, norm, generator) if random_start else clean.clone()
        for step in range(steps + 1):
            last = step == steps
            if last and restart == restarts - 1 and not early_stop:  # no later restart needs to know
                result[todo] = adv  # which iterates fool: each keeps its final one, with no extra forward
                break
            if last:
                with torch.no_grad():
                    logits = model(adv).float()
            else:
                logits, grad = logits_and_gradient(model, adv, cross_entropy(y, t))
            if early_stop or last:
                hit = fooled(logits, y, t)
                if last:  # the unfooled keep the last restart's final iterate
                    result[todo[~hit]] = adv[~hit]
                # the fooled are set aside for the rest of this and later restarts
                todo, adv, clean, y, grad, t = set_aside(result, todo, hit, adv, clean, y, grad, t)
                if last or not len(todo):
                    break
            adv = project(adv + alpha * steepest_step(grad, norm), clean, eps, norm)
    return result


def run_pgd(spec, model, images, labels, eps, gen, target):
    """The registry's runner of ``pgd`` (see :mod:`imgclf.attacks.registry`)."""
    return pgd(model, images, labels, eps=eps, norm=spec.norm, alpha=spec.alpha, steps=spec.n_steps,
               restarts=spec.restarts, random_start=spec.random_start, target=target, generator=gen)
