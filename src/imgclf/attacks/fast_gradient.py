"""Fast Gradient Sign Method (L-inf) and its L2 form, the Fast Gradient Method.

Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015; the L2 step as in Miyato et al. 2016 and Kurakin et al. 2017.
"""

from __future__ import annotations

import torch

from imgclf.attacks.core import attack_entry, logits_and_gradient, project, steepest_step
from imgclf.attacks.losses import cross_entropy


@attack_entry
def fgsm(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
         norm: str = "linf", target: torch.Tensor | None = None) -> torch.Tensor:
    """One step of length ``eps`` along the steepest ascent of the cross-entropy.

    L-inf: ``x_adv = clip_[0,1](x + eps * sign(grad))``; L2:
    ``x + eps * grad / ||grad||_2``. Untargeted it increases the loss of the true
    class; with ``target`` it decreases the loss of the target class.

    The model's mode and parameters are not touched; put it in eval mode first.

    Args:
        model: Maps ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``.
        images: Clean images, ``float32`` ``(N, C, H, W)``, range ``[0, 1]``.
        labels: True classes, ``int64`` ``(N,)``.
        eps: Radius in pixel units: ``[0, 1]`` under L-inf (``8/255`` = 8 grey
            levels), ``[0, sqrt(C*H*W)]`` under L2.
        norm: ``"linf"`` or ``"l2"``.
        target: Optional target classes ``int64`` ``(N,)``, never the true label.

    Returns:
        Adversarial images, same shape and dtype, in ``[0, 1]`` and within
        ``eps`` of ``images``; ``eps=0`` returns a copy of ``images``.

    Raises:
        ValueError: On images outside ``[0, 1]``, wrong shapes, an unknown norm,
            ``eps`` out of range, or a target equal to the true label.
    """
    x = images.detach()
    _, grad = logits_and_gradient(model, x, cross_entropy(labels, target))
    return project(x + eps * steepest_step(grad, norm), x, eps, norm)


def run_fgsm(spec, model, images, labels, eps, gen, target):
    """The registry's runner of ``fgsm`` (see :mod:`imgclf.attacks.registry`)."""
    return fgsm(model, images, labels, eps=eps, norm=spec.norm, target=target)
