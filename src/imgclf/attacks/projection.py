"""What every attack shares: input checks, the loss gradient, projection and clamping.

All attacks work in pixel space: images are ``float32`` ``(N, C, H, W)`` in
``[0, 1]`` and eps is in the same units (``8/255`` is 8 grey levels).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def check_inputs(images: torch.Tensor, labels: torch.Tensor, eps: float) -> None:
    """Validate an attack's arguments.

    Raises:
        ValueError: If ``images`` is not 4-D floating point in ``[0, 1]``,
            ``labels`` is not ``(N,)`` integer, or ``eps`` is outside ``[0, 1]``.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor of shape (N, C, H, W), got {tuple(images.shape)} {images.dtype}")
    if labels.shape != images.shape[:1] or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps is in pixel units and must lie in [0, 1], got {eps}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            "images must be in [0, 1] pixel space (normalization belongs inside the model); "
            f"got values in [{images.min().item():.3f}, {images.max().item():.3f}]"
        )


def warn_if_training(model: torch.nn.Module) -> None:
    """Warn when a model is attacked in training mode (BatchNorm and dropout then misbehave)."""
    if model.training:
        warnings.warn(
            "attacking a model in training mode: batch norm uses batch statistics and dropout is "
            "active, so the attack and its accuracy are not those of the deployed model; call model.eval()",
            stacklevel=3,
        )


def loss_gradient(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy of ``model(images)`` w.r.t. ``images``.

    Only the input gradient is computed: parameters' ``.grad`` are left as they
    were and no weight gradients are formed. Works inside ``torch.no_grad()``
    and ``torch.inference_mode()`` blocks of the caller. The loss is computed
    in float32 from the logits.

    Args:
        model: Maps ``(N, C, H, W)`` to logits ``(N, K)``.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``.
        labels: ``int64`` ``(N,)``.

    Returns:
        ``float32`` tensor shaped like ``images``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), labels.clone(), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def project_linf(adversarial: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf ball of radius ``eps`` around ``images``, then onto ``[0, 1]``.

    The result satisfies ``|result - images| <= eps`` (up to float32 rounding
    of ``images +- eps``) and ``0 <= result <= 1``.
    """
    return torch.minimum(torch.maximum(adversarial, images - eps), images + eps).clamp_(0.0, 1.0)
