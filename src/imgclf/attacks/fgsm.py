"""Fast Gradient Sign Method.

Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015.
"""

from __future__ import annotations

import torch

from imgclf.attacks.projection import check_inputs, loss_gradient, warn_if_training


def fgsm(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float) -> torch.Tensor:
    """Untargeted L-inf FGSM: one step of size ``eps`` along the sign of the loss gradient.

    ``x_adv = clip_[0,1](x + eps * sign(grad_x CE(model(x), y)))``

    The model's mode and parameters are not touched; put it in eval mode first.

    Args:
        model: Maps ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``.
        images: Clean images, ``float32`` ``(N, C, H, W)``, range ``[0, 1]``.
        labels: True classes, ``int64`` ``(N,)``.
        eps: L-inf radius in pixel units, ``[0, 1]`` (``8/255`` = 8 grey levels).

    Returns:
        Adversarial images, same shape and dtype, in ``[0, 1]`` and within
        ``eps`` of ``images``; ``eps=0`` returns a copy of ``images``.

    Raises:
        ValueError: On images outside ``[0, 1]``, wrong shapes, or ``eps``
            outside ``[0, 1]``.
    """
    check_inputs(images, labels, eps)
    warn_if_training(model)
    if eps == 0:
        return images.detach().clone()
    grad = loss_gradient(model, images, labels)
    return (images.detach() + eps * grad.sign()).clamp_(0.0, 1.0)
