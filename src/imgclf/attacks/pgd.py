"""Projected Gradient Descent under the L-inf norm.

Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018.
"""

from __future__ import annotations

import torch

from imgclf.attacks.projection import check_inputs, loss_gradient, project_linf, warn_if_training


def default_alpha(eps: float, steps: int) -> float:
    """Madry et al.'s step size convention, ``2.5 * eps / steps`` (pixel units)."""
    return 2.5 * eps / steps


def pgd(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted L-inf PGD on the cross-entropy loss.

    Starting from ``x`` (or a uniform random point of the eps ball when
    ``random_start``), repeat ``steps`` times:
    ``x_adv = Proj_{B_inf(x, eps) ∩ [0,1]}(x_adv + alpha * sign(grad CE))``.

    The model's mode and parameters are not touched; put it in eval mode first.

    Args:
        model: Maps ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``.
        images: Clean images, ``float32`` ``(N, C, H, W)``, range ``[0, 1]``.
        labels: True classes, ``int64`` ``(N,)``.
        eps: L-inf radius in pixel units, ``[0, 1]``.
        alpha: Step size in pixel units, ``> 0``; default
            :func:`default_alpha` ``= 2.5 * eps / steps``.
        steps: Number of gradient steps, ``>= 1``.
        random_start: Start from ``x + U(-eps, eps)`` (clamped to ``[0, 1]``).
        generator: Seeds the random start; its device is used to draw it.

    Returns:
        Adversarial images, same shape and dtype, in ``[0, 1]`` and within
        ``eps`` of ``images``; ``eps=0`` returns a copy of ``images``.

    Raises:
        ValueError: On invalid images, labels, ``eps``, ``alpha`` or ``steps``.
    """
    check_inputs(images, labels, eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    alpha = default_alpha(eps, steps) if alpha is None else alpha
    if not alpha > 0 and eps > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    warn_if_training(model)
    x = images.detach()
    if eps == 0:
        return x.clone()
    if random_start:
        draw_on = generator.device if generator is not None else x.device
        noise = torch.rand(x.shape, generator=generator, device=draw_on, dtype=x.dtype).to(x.device)
        adversarial = (x + (2 * noise - 1) * eps).clamp_(0.0, 1.0)
    else:
        adversarial = x.clone()
    for _ in range(steps):
        grad = loss_gradient(model, adversarial, labels)
        adversarial = project_linf(adversarial + alpha * grad.sign(), x, eps)
    return adversarial
