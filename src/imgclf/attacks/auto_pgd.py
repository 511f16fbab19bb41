"""Auto-PGD (APGD): PGD with momentum and a step size that adapts itself.

Croce and Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020 (Algorithm 1), with the
checkpoint schedule of their reference implementation (AutoAttack).
"""

from __future__ import annotations

import torch

from imgclf.attacks.core import (
    attack_entry,
    fooled,
    logits_and_gradient,
    num_classes,
    per_example_norm,
    project,
    set_aside,
    steepest_step,
    top_classes,
)
from imgclf.attacks.losses import LOSSES, get_loss
from imgclf.attacks.registry import dlr_min_classes


def min_classes(loss: str, targeted: bool) -> int:
    """Classes a loss needs: DLR uses the third (targeted: fourth) largest logit."""
    return dlr_min_classes(targeted) if loss == "dlr" else 2


def _start(images: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """AutoAttack's start: a random point on the eps sphere, clamped to ``[0, 1]``."""
    draw_on = generator.device if generator is not None else images.device
    if norm == "linf":
        noise = 2 * torch.rand(images.shape, generator=generator, device=draw_on, dtype=images.dtype) - 1
    else:
        noise = torch.randn(images.shape, generator=generator, device=draw_on, dtype=images.dtype)
    noise = noise.to(images.device)
    return (images + eps * noise / per_example_norm(noise, norm).clamp_min(1e-12)).clamp_(0.0, 1.0)


@attack_entry
def apgd(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str = "ce",
    steps: int = 100,
    restarts: int = 1,
    target: torch.Tensor | None = None,
    rho: float = 0.75,
    momentum: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """APGD on the cross-entropy (APGD-CE) or the DLR loss (APGD-DLR), untargeted or towards ``target``.

    From a random point on the eps sphere, each step is
    ``z = P(x_k + eta * d(grad))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))``
    with momentum ``a`` (1 on the first step), ``d`` the sign (L-inf) or the
    normalized gradient (L2), and ``eta`` starting at ``2 * eps``. At
    checkpoints (after 22% of the steps, then at shrinking intervals of 3% down
    to 6%) ``eta`` halves and the iterate returns to the best point found when
    the loss rose on fewer than ``rho`` of the steps since the last checkpoint,
    or when neither ``eta`` nor the best loss changed.

    An example is set aside once an iterate fools the model (reaches the
    target, when targeted); each restart runs on the examples still unbroken.

    Args:
        model: Maps ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``.
        images: Clean images, ``float32`` ``(N, C, H, W)``, range ``[0, 1]``.
        labels: True classes, ``int64`` ``(N,)``.
        eps: Radius in pixel units (``[0, 1]`` under L-inf).
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` or ``"dlr"`` (DLR needs K >= 3, K >= 4 targeted).
        steps: Iterations per restart (AutoAttack: 100).
        restarts: Independent random starts.
        target: Optional target classes ``int64`` ``(N,)``, never the true label.
        rho: Fraction of loss increases below which the step size halves.
        momentum: The ``a`` above.
        generator: Seeds the random starts.

    Returns:
        Adversarial images in ``[0, 1]`` within ``eps`` of ``images``: the first
        fooling iterate, else the highest-loss point; ``eps=0`` returns a copy.

    Raises:
        ValueError: On invalid arguments, an unknown loss, or too few classes for DLR.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    x = images.detach()
    result = x.clone()
    classes = num_classes(model, x)
    if classes < min_classes(loss, target is not None):
        raise ValueError(f"the {'targeted ' if target is not None else ''}DLR loss needs at least "
                         f"{min_classes(loss, target is not None)} classes, the model has {classes}")
    todo = torch.arange(len(x), device=x.device)
    for _ in range(restarts):
        if not len(todo):
            break
        s, logits = _first_state(model, x, labels, target, todo, eps=eps, norm=norm, loss=loss, generator=generator)
        s = _set_aside(s, fooled(logits, s["y"], s.get("t")), result)
        s = _iterate(model, s, result, eps=eps, norm=norm, loss=loss, steps=steps, rho=rho, momentum=momentum)
        result[s["todo"]] = s["best"]  # unbroken: the highest-loss point of the latest restart
        todo = s["todo"]
    return result


def _iterate(model: torch.nn.Module, s: dict[str, torch.Tensor], result: torch.Tensor, *, eps: float, norm: str,
             loss: str, steps: int, rho: float, momentum: float) -> dict[str, torch.Tensor]:
    """One restart's ``steps`` momentum steps from the state ``s`` (see :func:`apgd`), the step size checked at
    the checkpoints; an example is written to ``result`` and dropped once it is fooled. Returns the state of
    the examples still unbroken."""
    period, since = max(int(0.22 * steps), 1), 0
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    for step in range(steps):
        if not len(s["todo"]):
            break
        a = momentum if step > 0 else 1.0
        adv, prev, clean = s["adv"], s["prev"], s["clean"]
        z = project(adv + s["eta"] * steepest_step(s["grad"], norm), clean, eps, norm)
        s["prev"] = adv
        s["adv"] = project(adv + a * (z - adv) + (1 - a) * (adv - prev), clean, eps, norm)
        objective = get_loss(loss, s["y"], s.get("t"))
        logits, s["grad"] = logits_and_gradient(model, s["adv"], objective)
        value = objective(logits)
        s["rises"] += (value > s["loss"]).float()
        s["loss"] = value
        better = value > s["best_loss"]
        s["best"][better], s["best_grad"][better], s["best_loss"][better] = (
            s["adv"][better], s["grad"][better], value[better])
        since += 1
        if since == period:
            _checkpoint(s, period, rho)
            period, since = max(period - shrink, shortest), 0
        s = _set_aside(s, fooled(logits, s["y"], s.get("t")), result)
    return s


def _first_state(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None,
                 todo: torch.Tensor, *, eps: float, norm: str, loss: str, generator: torch.Generator | None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A restart's state for the examples at positions ``todo`` (``int64`` ``(M,)``): a random start on the eps
    sphere, its loss and gradient as the best point so far, step size ``2 * eps``; and its logits ``(M, K)``."""
    s: dict[str, torch.Tensor] = {"todo": todo, "clean": x[todo], "y": labels[todo]}
    if target is not None:
        s["t"] = target[todo]
    s["adv"] = _start(s["clean"], eps, norm, generator)
    objective = get_loss(loss, s["y"], s.get("t"))
    logits, s["grad"] = logits_and_gradient(model, s["adv"], objective)
    s["loss"] = objective(logits)
    s["prev"] = s["adv"].clone()
    s["best"], s["best_grad"], s["best_loss"] = s["adv"].clone(), s["grad"].clone(), s["loss"].clone()
    s["eta"] = torch.full((len(todo), 1, 1, 1), 2.0 * eps, device=x.device)
    s["rises"] = torch.zeros(len(todo), device=x.device)
    s["checked_loss"] = s["best_loss"].clone()
    s["reduced"] = torch.zeros(len(todo), dtype=torch.bool, device=x.device)
    return s, logits


def _checkpoint(s: dict[str, torch.Tensor], period: int, rho: float) -> None:
    """At a checkpoint, halve ``eta`` and go back to the best point for the examples whose loss rose on at most
    ``rho`` of the ``period`` steps since the last one, or that stalled (in place)."""
    oscillating = s["rises"] <= period * rho
    stalled = ~s["reduced"] & (s["checked_loss"] >= s["best_loss"])
    reduce = oscillating | stalled
    s["eta"][reduce] /= 2.0
    s["adv"][reduce], s["grad"][reduce] = s["best"][reduce], s["best_grad"][reduce]
    s["reduced"], s["checked_loss"] = reduce, s["best_loss"].clone()
    s["rises"].zero_()


def _set_aside(state: dict[str, torch.Tensor], hit: torch.Tensor, result: torch.Tensor) -> dict[str, torch.Tensor]:
    """Write the fooled examples' current iterates to ``result`` and drop them from the state."""
    if not hit.any():
        return state
    keys = [key for key in state if key not in ("todo", "adv")]
    todo, adv, *rest = set_aside(result, state["todo"], hit, state["adv"], *(state[key] for key in keys))
    return {"todo": todo, "adv": adv, **dict(zip(keys, rest, strict=True))}


@attack_entry
def apgd_targeted(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str = "dlr",
    target_classes: int = 9,
    steps: int = 100,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """APGD-T: targeted APGD towards each of the ``target_classes`` highest-scoring
    wrong classes in turn (AutoAttack's APGD-T uses the targeted DLR loss).

    Each target runs on the examples no earlier target has fooled. The result
    counts as adversarial when it is misclassified.

    Args:
        target_classes: How many targets to try, capped at ``K - 1``.
        Others: as :func:`apgd`.

    Returns:
        Adversarial images in ``[0, 1]`` within ``eps`` of ``images``.

    Raises:
        ValueError: On invalid arguments or too few classes for the loss.
    """
    x = images.detach()
    result = x.clone()
    targets = top_classes(model, x, labels, target_classes)
    todo = torch.arange(len(x), device=x.device)
    for k in range(targets.shape[1]):
        if not len(todo):
            break
        adv = apgd(model, x[todo], labels[todo], eps=eps, norm=norm, loss=loss, steps=steps,
                   restarts=restarts, target=targets[todo, k], generator=generator)
        result[todo] = adv
        with torch.no_grad():
            todo = todo[model(adv).argmax(1) == labels[todo]]
    return result


def _run_apgd(loss: str):
    def run(spec, model, images, labels, eps, gen, target):
        return apgd(model, images, labels, eps=eps, norm=spec.norm, loss=loss, steps=spec.n_steps,
                    restarts=spec.restarts, target=target, generator=gen)
    return run


def _run_apgd_targeted(loss: str):
    def run(spec, model, images, labels, eps, gen, target):
        return apgd_targeted(model, images, labels, eps=eps, norm=spec.norm, loss=loss,
                             target_classes=spec.target_classes, steps=spec.n_steps, restarts=spec.restarts,
                             generator=gen)
    return run


#: The registry's runners of apgd-ce, apgd-dlr, apgd-t and apgd-ce-t (see :mod:`imgclf.attacks.registry`).
run_apgd_ce = _run_apgd("ce")
run_apgd_dlr = _run_apgd("dlr")
run_apgd_t = _run_apgd_targeted("dlr")
run_apgd_ce_t = _run_apgd_targeted("ce")
