"""Square Attack: a score-based black-box attack by random square updates (L-inf).

Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020. It uses only the
model's logits, never its gradients, so it is blind to gradient masking.
"""

from __future__ import annotations

import math

import torch

from imgclf.attacks.core import attack_entry, project, set_aside
from imgclf.attacks.losses import margin


def square_fraction(p_init: float, query: int, queries: int) -> float:
    """The paper's schedule for the fraction of pixels a square covers: ``p_init``
    halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000
    queries (rescaled to ``queries``)."""
    scaled = int(query / queries * 10000)
    halvings = sum(scaled > edge for edge in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2 ** halvings


@attack_entry
def square(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    focus: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted L-inf Square Attack on the margin loss ``z_y - max_{i != y} z_i``.

    Starts from vertical stripes of ``+-eps``; each query redraws one random
    square window (side ``sqrt(p * H * W)``, ``p`` from
    :func:`square_fraction`) to ``x +- eps`` per channel, and keeps the change
    when the margin drops. An example is done when its margin turns negative.

    With ``focus`` below 1, the search spends its last four fifths of queries
    on the examples most likely to fall: after a fifth of ``queries``, only
    the ``focus`` fraction (rounded up) of the examples still standing with
    the smallest margin go on; the rest keep the best point found. The margin
    after the first fifth ranks the examples that fall later well (on a
    robust MNIST model every example that fell between query 1,000 and 5,000
    was among the 8% of those standing with the smallest margin at 1,000), so
    ``focus=0.125`` finds nearly what the full search finds at 0.3 of its
    queries; the examples set aside are counted robust by a search that gave
    up on them, so a focused search is an escalation, not the evaluation. The
    fraction is taken in each batch the attack runs (``batch_size``).

    Args:
        model: Maps ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``;
            only forward passes are made.
        images: Clean images, ``float32`` ``(N, C, H, W)``, range ``[0, 1]``.
        labels: True classes, ``int64`` ``(N,)``.
        eps: L-inf radius in pixel units, ``[0, 1]``.
        norm: Only ``"linf"`` is implemented.
        queries: Model evaluations per example at most (AutoAttack: 5000).
        p_init: Initial fraction of pixels per square (AutoAttack: 0.8).
        focus: The fraction ``(0, 1]`` of the examples still standing after
            ``queries // 5`` queries that the search goes on with (1: all).
        generator: Seeds the random squares; draws happen on its device.

    Returns:
        Adversarial images in ``[0, 1]`` within ``eps`` of ``images``; ``eps=0``
        returns a copy.

    Raises:
        ValueError: On invalid arguments, or ``norm="l2"``.
    """
    if norm != "linf":
        raise ValueError("the Square attack is implemented for norm 'linf' only")
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    if not 0 < focus <= 1:
        raise ValueError(f"focus must be in (0, 1], got {focus}")
    x = images.detach()
    result = x.clone()
    n, channels, height, width = x.shape
    draw_on = generator.device if generator is not None else x.device

    def signs(*shape: int) -> torch.Tensor:
        return (torch.randint(0, 2, shape, generator=generator, device=draw_on).to(x.device) * 2 - 1).to(x.dtype)

    adv = (x + eps * signs(n, channels, 1, width)).clamp_(0.0, 1.0)
    todo, clean, y = torch.arange(n, device=x.device), x, labels
    with torch.no_grad():
        loss = margin(model(adv).float(), y)
    rows = torch.arange(height, device=x.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, 1, width)
    for query in range(1, queries):
        todo, adv, clean, y, loss = set_aside(result, todo, loss < 0, adv, clean, y, loss)
        if query == queries // 5 and focus < 1 and len(todo):
            todo, adv, clean, y, loss = set_aside(result, todo, _farthest(loss, focus), adv, clean, y, loss)
        if not len(todo):
            return result
        side = min(max(int(round(math.sqrt(square_fraction(p_init, query, queries) * height * width))), 1),
                   height, width)
        m = len(todo)
        top = torch.randint(0, height - side + 1, (m, 1, 1, 1), generator=generator, device=draw_on).to(x.device)
        left = torch.randint(0, width - side + 1, (m, 1, 1, 1), generator=generator, device=draw_on).to(x.device)
        window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        candidate = torch.where(window, (clean + eps * signs(m, channels, 1, 1)).clamp(0.0, 1.0), adv)
        with torch.no_grad():
            new_loss = margin(model(candidate).float(), y)
        better = new_loss < loss
        adv = torch.where(better.view(-1, 1, 1, 1), candidate, adv)
        loss = torch.where(better, new_loss, loss)
    result[todo] = adv
    return project(result, x, eps, "linf")


def _farthest(loss: torch.Tensor, focus: float) -> torch.Tensor:
    """The examples a focused search gives up on: all but the ``focus`` fraction (rounded up) with the smallest
    margin ``loss`` (``(m,)``); ties go to the earlier example."""
    keep = math.ceil(focus * len(loss))
    given_up = torch.ones_like(loss, dtype=torch.bool)
    given_up[torch.argsort(loss, stable=True)[:keep]] = False
    return given_up


def run_square(spec, model, images, labels, eps, gen, target):
    """The registry's runner of ``square`` (see :mod:`imgclf.attacks.registry`)."""
    return square(model, images, labels, eps=eps, norm=spec.norm, queries=spec.options["queries"],
                  focus=spec.options["focus"], generator=gen)
