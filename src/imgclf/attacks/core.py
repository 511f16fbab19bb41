"""The shared core of every attack: input checks, the common opening, gradients, steps, projection
and clamping, and the set-aside of fooled examples.

All attacks work in pixel space: images are ``float32`` ``(N, C, H, W)`` in
``[0, 1]`` and eps is in the same units (``8/255`` is 8 grey levels under
L-inf; an L2 eps is the Euclidean length of the perturbation in pixel units).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from imgclf.attacks.registry import DEFAULT_NORMS
from imgclf.models.classifier import ModeNeutral


def check_inputs(images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "linf",
                 target: torch.Tensor | None = None, norms: tuple[str, ...] = DEFAULT_NORMS) -> None:
    """Validate an attack's arguments.

    Raises:
        ValueError: If ``images`` is not 4-D floating point in ``[0, 1]``,
            ``labels`` (or ``target``) is not ``(N,)`` integer, ``target`` equals
            the true label somewhere, ``norm`` is not one of ``norms`` (the attack's), or
            ``eps`` is outside ``[0, 1]`` (L-inf), ``[0, sqrt(C*H*W)]`` (L2) or ``[0, C*H*W]`` (L1).
    """
    if norm not in norms:
        raise ValueError(f"unknown norm {norm!r}; valid choices: {', '.join(norms)}")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError("images must be a float tensor of shape (N, C, H, W), "
                         f"got {tuple(images.shape)} {images.dtype}")
    for name, tensor in (("labels", labels), ("target", target)):
        if tensor is not None and (tensor.shape != images.shape[:1] or tensor.is_floating_point()):
            raise ValueError(f"{name} must be an integer tensor of shape ({images.shape[0]},), "
                             f"got {tuple(tensor.shape)}")
    if target is not None and bool((target == labels).any()):
        raise ValueError("a target class must differ from the true label of its example")
    largest = largest_eps(images, norm)
    if not 0.0 <= eps <= largest:
        raise ValueError(f"eps is in pixel units and must lie in [0, {largest:.4g}] under {norm}, got {eps}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            "images must be in [0, 1] pixel space (normalization belongs inside the model); "
            f"got values in [{images.min().item():.3f}, {images.max().item():.3f}]"
        )


def largest_eps(images: torch.Tensor, norm: str) -> float:
    """The largest perturbation ``images`` ``(N, C, H, W)`` in ``[0, 1]`` can take under ``norm``, in pixel units:
    1 (L-inf), ``sqrt(C*H*W)`` (L2), ``C*H*W`` (L1); infinite when there are no images."""
    if not images.shape[0]:
        return math.inf
    size = images[0].numel()
    return {"linf": 1.0, "l2": math.sqrt(size), "l1": float(size)}[norm]


#: Examples an attack works on at once when given more (see :func:`attack_entry`), by device type; other devices
#: take :data:`DEVICE_BATCH`. Measured by ``bench/attack_speed.py``: PGD-20 on 2,000 MNIST images in one call on
#: two CPU cores takes about twice as long as in batches of 256 (the activations of thousands of images leave
#: the caches, and the memory-bound layers slow down per example).
ATTACK_BATCH = {"cpu": 256}
#: Examples at once on a GPU or another accelerator (large batches keep it busy; memory bounds them).
DEVICE_BATCH = 4096
#: Examples per model call when attacking on the CPU (see :class:`Chunked`).
CPU_CHUNK = 128


class Chunked(ModeNeutral):
    """``model`` called on at most ``size`` examples at a time, the outputs concatenated.

    The results are those of one call (each example's logits depend on it alone in eval mode), and gradients
    flow through every chunk. On the CPU a batch of a few hundred images spills the activations out of the
    caches, and the memory-bound layers (ReLU, pooling and their backward passes) slow down per example;
    attacks call the model hundreds of times per batch, so they call it through chunks of :data:`CPU_CHUNK`
    there (:func:`attack_entry`). GPUs want large batches and get the model as it is.

    Shape:
        As ``model``: ``(B, C, H, W)`` to logits ``(B, K)``.
    """

    def __init__(self, model: torch.nn.Module, size: int):
        super().__init__()
        self.model, self.size = model, size
        self.training = model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) <= self.size:
            return self.model(x)
        return torch.cat([self.model(part) for part in x.split(self.size)])


def attack_batch(device: torch.device) -> int:
    """Examples an attack works on at once on ``device`` (:data:`ATTACK_BATCH`, else :data:`DEVICE_BATCH`)."""
    return ATTACK_BATCH.get(device.type, DEVICE_BATCH)


_BATCH_DOC = """
    Every attack also takes ``batch_size`` (a keyword, ``>= 1``; default :func:`imgclf.attacks.core.attack_batch`:
    256 on the CPU, 4,096 elsewhere): a larger input is attacked in consecutive batches of that size (``target``
    split with it, the generator's draws taken in turn), and on the CPU the model is called on at most 128
    examples at a time. The result is that of the batches, each attacked alone. A model in training mode
    (adversarial training: batch statistics) gets the whole input in one call.
"""


def attack_entry(function: Callable[..., torch.Tensor] | None = None, *,
                 norms: tuple[str, ...] = DEFAULT_NORMS) -> Any:
    """The shared opening of every public attack ``f(model, images, labels, *, eps, norm="linf", target=None, ...)``,
    as ``@attack_entry`` (an attack of :data:`~imgclf.attacks.registry.DEFAULT_NORMS`) or
    ``@attack_entry(norms=...)``.

    Before the attack's own code runs, the wrapper checks ``images``,
    ``labels``, ``eps``, ``norm`` and ``target`` (:func:`check_inputs`), warns
    when the model is in training mode (:func:`warn_if_training`), and returns
    a copy of ``images`` when ``eps`` is 0 or there are no images. The attack
    then runs outside ``torch.inference_mode``, under ``torch.no_grad``
    (gradients are taken only where :func:`logits_and_gradient` asks), with
    autocast off (attacks compute in float32), on copies of any inference
    tensors it was given, in batches of ``batch_size`` examples (a keyword the
    wrapper adds; see :data:`ATTACK_BATCH`).

    Raises:
        ValueError: As :func:`check_inputs` (``norm`` one of ``norms``), on a ``batch_size`` below 1, and whatever
            the attack raises.
    """
    if function is None:
        return functools.partial(attack_entry, norms=norms)
    signature = inspect.signature(function)

    def usable(tensor: Any) -> Any:
        return tensor.clone() if isinstance(tensor, torch.Tensor) and tensor.is_inference() else tensor

    @functools.wraps(function)
    def wrapper(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *args: Any,
                batch_size: int | None = None, **kwargs: Any) -> torch.Tensor:
        bound = signature.bind(model, images, labels, *args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        check_inputs(images, labels, given["eps"], given.get("norm", "linf"), given.get("target"), norms)
        warn_if_training(model)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if given["eps"] == 0 or not len(images):
            return images.detach().clone()
        size = batch_size or attack_batch(images.device)
        if model.training:  # batch statistics: the batch is the caller's, kept whole
            size = max(size, len(images))
        elif images.device.type == "cpu" and not isinstance(model, Chunked):
            model = Chunked(model, CPU_CHUNK)
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            kwargs = {key: usable(value) for key, value in kwargs.items()}
            target = kwargs.get("target")
            parts = [function(model, usable(images[i:i + size]), usable(labels[i:i + size]), *args,
                              **({**kwargs, "target": target[i:i + size]} if target is not None else kwargs))
                     for i in range(0, len(images), size)]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

    wrapper.__doc__ = (function.__doc__ or "") + _BATCH_DOC
    return wrapper


def set_aside(result: torch.Tensor, todo: torch.Tensor, hit: torch.Tensor, adversarial: torch.Tensor,
              *others: torch.Tensor | None) -> tuple[Any, ...]:
    """Set the fooled examples aside: write their current iterates to ``result`` and drop them.

    Every iterative attack works on the examples it has not fooled yet; once an
    iterate fools the model, that iterate is the example's result.

    Args:
        result: The attack's output ``(N, C, H, W)``, written in place at ``todo[hit]``.
        todo: Positions in ``result`` of the examples still attacked, ``int64`` ``(M,)``.
        hit: Which of them the current iterate fools, bool ``(M,)``.
        adversarial: The current iterates ``(M, C, H, W)``.
        others: Per-example tensors ``(M, ...)`` that travel with ``todo`` (None passes through).

    Returns:
        ``todo``, ``adversarial`` and each of ``others`` without the fooled rows.
    """
    if not hit.any():
        return (todo, adversarial, *others)
    result[todo[hit]] = adversarial[hit]
    keep = ~hit
    return tuple(None if tensor is None else tensor[keep] for tensor in (todo, adversarial, *others))


def warn_if_training(model: torch.nn.Module) -> None:
    """Warn when a model is attacked in training mode (BatchNorm and dropout then misbehave)."""
    if model.training:
        warnings.warn(
            "attacking a model in training mode: batch norm uses batch statistics and dropout is "
            "active, so the attack and its accuracy are not those of the deployed model; call model.eval()",
            stacklevel=3,
        )


def logits_and_gradient(model: torch.nn.Module, images: torch.Tensor,
                        loss: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``images`` and the gradient of ``loss(logits).sum()`` w.r.t. ``images``.

    Only the input gradient is computed: parameters' ``.grad`` are left as
    they were and no weight gradients are formed. Works inside the caller's
    ``torch.no_grad()`` and ``torch.inference_mode()`` blocks. Logits are cast
    to float32 before the loss.

    Args:
        model: Maps ``(N, C, H, W)`` to logits ``(N, K)``.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``.
        loss: Per-example loss ``(N, K) -> (N,)`` to increase.

    Returns:
        Detached ``float32`` logits ``(N, K)`` and a gradient shaped like ``images``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        logits = model(x).float()
        (grad,) = torch.autograd.grad(loss(logits).sum(), x)
    return logits.detach(), grad


def loss_gradient(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy of ``model(images)`` w.r.t. ``images``
    (see :func:`logits_and_gradient`); ``float32``, shaped like ``images``."""
    labels = labels.clone()
    return logits_and_gradient(model, images, lambda z: F.cross_entropy(z, labels, reduction="none"))[1]


def per_example_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """The L-inf, L2 or L1 norm of each example of ``delta`` ``(N, ...)``, shaped ``(N, 1, 1, 1)``."""
    flat = delta.flatten(1)
    values = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1) if norm == "l2" else flat.abs().sum(1)
    return values.view(-1, *([1] * (delta.ndim - 1)))


def steepest_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm steepest-ascent direction: ``sign(grad)`` (L-inf) or ``grad / ||grad||_2`` (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / per_example_norm(grad, "l2").clamp_min(1e-12)


def project(adversarial: torch.Tensor, images: torch.Tensor, eps: float | torch.Tensor,
            norm: str = "linf") -> torch.Tensor:
    """Project onto the eps ball around ``images`` under ``norm``, then onto ``[0, 1]``.

    Clamping to ``[0, 1]`` after the ball never moves a point out of the ball,
    as ``images`` lies in ``[0, 1]`` and clamping only shrinks each coordinate's change. The result satisfies
    ``||result - images|| <= eps`` (up to float32 rounding) and ``0 <= result <= 1``. Under L1 the ball's
    projection is the Euclidean one (:func:`project_l1_ball`).

    Args:
        adversarial, images: ``float32`` ``(N, C, H, W)``.
        eps: One radius, or one per example (``(N,)``), in pixel units.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
    """
    radius = eps.view(-1, *([1] * (images.ndim - 1))) if isinstance(eps, torch.Tensor) else eps
    if norm == "linf":
        return torch.minimum(torch.maximum(adversarial, images - radius), images + radius).clamp_(0.0, 1.0)
    delta = adversarial - images
    if norm == "l2":
        delta = delta * (radius / per_example_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    else:
        delta = project_l1_ball(delta, radius)
    return (images + delta).clamp_(0.0, 1.0)


def project_l1_ball(delta: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of each example of ``delta`` ``(N, ...)`` onto the L1 ball of ``radius`` (a number
    or ``(N, 1, ..., 1)``): soft thresholding at the level found by sorting (Duchi, Shalev-Shwartz, Singer and
    Chandra, "Efficient projections onto the l1-ball for learning in high dimensions", ICML 2008). Rows inside
    the ball are returned unchanged."""
    flat = delta.flatten(1)
    size = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).reshape(-1, 1).expand(len(flat), 1)
    magnitude = flat.abs()
    ordered = magnitude.sort(1, descending=True).values
    excess = ordered.cumsum(1) - size
    rank = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    last = ((ordered - excess / rank) > 0).sum(1, keepdim=True).clamp_min(1)  # how many coordinates stay nonzero
    level = (excess.gather(1, last - 1) / last.to(flat.dtype)).clamp_min(0)
    shrunk = flat.sign() * (magnitude - level).clamp_min(0)
    inside = magnitude.sum(1, keepdim=True) <= size
    return torch.where(inside, flat, shrunk).view_as(delta)


def project_linf(adversarial: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`project` under L-inf."""
    return project(adversarial, images, eps, "linf")


def random_point(images: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None, *,
                 clip: bool = True) -> torch.Tensor:
    """A random point of the eps ball around ``images``, clamped to ``[0, 1]`` unless ``clip`` is False.

    L-inf: ``x + U(-eps, eps)`` per pixel. L2: a uniformly random direction
    scaled to ``eps * U(0, 1)``. Drawn on ``generator``'s device, then moved.
    The same draws are made whether or not the point is clipped.
    """
    draw_on = generator.device if generator is not None else images.device
    if norm == "linf":
        noise = torch.rand(images.shape, generator=generator, device=draw_on, dtype=images.dtype).to(images.device)
        point = images + (2 * noise - 1) * eps
    else:
        direction = torch.randn(images.shape, generator=generator, device=draw_on, dtype=images.dtype)
        radius = torch.rand((images.shape[0], 1, 1, 1), generator=generator, device=draw_on, dtype=images.dtype)
        point = images + (direction / per_example_norm(direction, "l2").clamp_min(1e-12) * radius * eps).to(
            images.device)
    return point.clamp_(0.0, 1.0) if clip else point


def fooled(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Which examples the attack has succeeded on: predicted class ``!= labels``
    (untargeted) or ``== target`` (targeted). Bool ``(N,)``."""
    predicted = logits.argmax(1)
    return predicted != labels if target is None else predicted == target


def top_classes(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` (at most ``K - 1``) highest-scoring classes other than the true
    one, per example, best first: AutoAttack's target classes. ``int64`` ``(N, min(count, K - 1))``."""
    with torch.no_grad():
        logits = model(images).float()
    logits[torch.arange(len(labels), device=labels.device), labels] = -math.inf
    return logits.topk(min(count, logits.shape[1] - 1), dim=1).indices


def num_classes(model: torch.nn.Module, images: torch.Tensor) -> int:
    """How many logits ``model`` gives (one forward pass on one image)."""
    with torch.no_grad():
        return model(images[:1]).shape[1]
