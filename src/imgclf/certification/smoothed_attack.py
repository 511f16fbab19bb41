"""An L2 attack made for the smoothed classifier: PGD on the Monte Carlo average of its noisy softmax.

A plain attack on the base classifier says little about the smoothed one, which votes over Gaussian noise. This
attack follows Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers"
(NeurIPS 2019, SmoothAdv): it ascends the cross-entropy of the soft smoothed classifier,
``-log((1/m) sum_i softmax(f(x' + e_i))_y)`` with ``m`` fresh noise draws ``e_i ~ N(0, sigma^2 I)`` per step, by
normalized L2 steps projected onto the eps ball and ``[0, 1]``. Whatever it finds is an upper bound on the
smoothed classifier's robust accuracy, to set beside the certified lower bound.
"""

from __future__ import annotations

import torch

from imgclf.attacks.core import project, steepest_step


def smooth_adv(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
               eps: float | torch.Tensor, sigma: float, steps: int = 20, samples: int = 8,
               step_size: float | torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial images for the smoothed classifier of ``model`` within L2 radius ``eps``.

    Args:
        model: The base classifier, in eval mode: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, K)``.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``, on the model's device.
        labels: ``int64`` ``(N,)``.
        eps: The L2 radius in pixel units, one or one per example (``(N,)``), ``>= 0``.
        sigma: The smoothing noise's standard deviation in pixel units, ``> 0``.
        steps: PGD steps (Salman et al.: 1 to 10 in training; more to evaluate), ``>= 1``.
        samples: Noise draws averaged per step (their ``m``), ``>= 1``.
        step_size: The L2 length of each step in pixel units; None: ``2 * eps / steps``.
        generator: Draws the noise; None: torch's global generator.

    Returns:
        ``float32`` ``(N, C, H, W)`` in ``[0, 1]``, each within ``eps`` of its image in L2.

    Raises:
        ValueError: On ``sigma <= 0``, ``steps`` or ``samples`` below 1, a negative eps, or images and labels of
            different lengths.
    """
    radius = torch.as_tensor(eps, dtype=images.dtype, device=images.device).expand(len(images))  # (N,)
    if not sigma > 0 or steps < 1 or samples < 1 or bool((radius < 0).any()):
        raise ValueError(f"sigma must be > 0, steps and samples >= 1 and eps >= 0, got {sigma}, {steps}, {samples} "
                         f"and {eps}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    size = (2 * radius / steps if step_size is None
            else torch.as_tensor(step_size, dtype=images.dtype, device=images.device).expand(len(images)))
    adversarial = images.clone()
    for _ in range(steps):
        point = adversarial.detach().requires_grad_(True)
        copies = point.repeat_interleave(samples, 0)  # (N * m, C, H, W): m noisy copies of each, in a row
        noise = torch.randn(copies.shape, generator=generator, device=images.device, dtype=images.dtype)
        probabilities = torch.softmax(model(copies + sigma * noise).float(), 1)  # (N * m, K)
        soft = probabilities.view(len(images), samples, -1).mean(1)  # (N, K): the soft smoothed classifier
        loss = -torch.log(soft.gather(1, labels[:, None]).clamp_min(1e-12)).sum()
        (gradient,) = torch.autograd.grad(loss, point)
        step = steepest_step(gradient, "l2") * size.view(-1, 1, 1, 1)
        adversarial = project(adversarial + step, images, radius, "l2").detach()
    return adversarial
