"""Automatic checks for false robustness, run with every robustness evaluation.

After Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry
and Kurakin, "On Evaluating Adversarial Robustness" (2019), and the checks
AutoAttack runs (Croce and Hein 2020). Each check is a dict with ``name``,
``status`` (``"passed"``, ``"failed"`` or ``"not run"``), ``detail`` (what was
measured) and ``meaning`` (why it matters).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from imgclf.attacks.core import logits_and_gradient
from imgclf.attacks.losses import cross_entropy
from imgclf.attacks.registry import attack_info
from imgclf.attacks.results import WORST_CASE, RobustnessResult, batched_logits
from imgclf.models.sources import differentiable
from imgclf.runtime import generator

if TYPE_CHECKING:
    from imgclf.attacks.spec import AttackSpec

#: Examples used by the checks that run extra attacks or gradients.
CHECK_EXAMPLES = 200
#: A drop in accuracy larger than this (a fraction) counts as a change.
TOLERANCE = 0.01

MEANINGS = {
    "logits": "Attacks need logits. Attacking probabilities (a softmax before the loss) flattens the "
              "gradients and makes the model look robust when it is not.",
    "gradients": "Zero or NaN input gradients (rounding, saturated softmax, non-differentiable layers) "
                 "stop gradient attacks without making the model robust.",
    "pgd beats fgsm": "A multi-step attack must be at least as strong as its own first step; if PGD is "
                      "weaker than FGSM the attack is failing, not the model succeeding.",
    "accuracy falls with eps": "A real attack gets stronger as eps grows; accuracy that rises with eps "
                               "is a sign of gradient masking.",
    "large eps breaks the model": "At an eps that allows any image, accuracy must reach about 0; if it does "
                                  "not, the attack cannot find the way, whatever the smaller eps say.",
    "attack converged": "A stronger attack (three times the steps and one more restart) should not fool more "
                        "than a point of examples that every attack of the evaluation failed on; if it does, the "
                        "reported (worst-case) robust accuracy overstates robustness.",
    "white-box beats black-box": "A black-box attack (Square) does not use gradients; when it fools an example "
                                 "every white-box attack failed on, the gradients are misleading.",
}


def _check(name: str, status: str, detail: str) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, "meaning": MEANINGS[name]}


def sanity_checks(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                  result: RobustnessResult, attacks: list[AttackSpec], *, batch_size: int = 256,
                  seed: int = 0) -> list[dict[str, Any]]:
    """The checks above on a finished evaluation; extra attacks run on up to
    :data:`CHECK_EXAMPLES` correctly classified examples.

    Args:
        model: The evaluated model, in eval mode.
        images, labels: The evaluated examples (``float32`` ``(N, C, H, W)`` in
            ``[0, 1]`` and ``int64`` ``(N,)``), on the model's device.
        logits: The model's clean logits ``float32`` ``(N, K)`` for ``images``.
        result: The evaluation.
        attacks: The attacks that ran.

    Returns:
        One dict per check, in the order of :data:`MEANINGS`.
    """
    correct = torch.nonzero(logits.argmax(1) == labels).squeeze(1)[:CHECK_EXAMPLES]
    x, y = images[correct], labels[correct]
    if not differentiable(model):
        return [_logits_check(logits[:batch_size])] + [
            _check(name, "not run", "the model gives no gradients (an ONNX model): white-box attacks and "
                                    "gradient checks were not possible")
            for name in MEANINGS if name != "logits"]
    checks = [_logits_check(logits[:batch_size]), _gradient_check(model, x, y, batch_size)]

    accuracy = {(e.attack, e.eps): e.accuracy for e in result.entries}
    fgsm_specs = [s for s in attacks if s.name == "fgsm"]
    pgd_specs = [s for s in attacks if s.name == "pgd"]
    if fgsm_specs and pgd_specs:
        weaker = [f"eps={eps:.4g}: PGD {accuracy[(pgd_specs[0].label, eps)]:.3f} > FGSM "
                  f"{accuracy[(fgsm_specs[0].label, eps)]:.3f}"
                  for (name, eps) in accuracy if name == fgsm_specs[0].label
                  and accuracy[(pgd_specs[0].label, eps)] > accuracy[(name, eps)]]
        checks.append(_check("pgd beats fgsm", "failed" if weaker else "passed",
                             "; ".join(weaker) or "PGD accuracy <= FGSM accuracy at every eps"))
    else:
        checks.append(_check("pgd beats fgsm", "not run", "needs both fgsm and pgd in the attacks"))

    rises = []
    for spec in attacks:
        curve = sorted((eps, acc) for (name, eps), acc in accuracy.items() if name == spec.label)
        rises += [f"{spec.label} {a:.3f} at eps={e0:.4g} -> {b:.3f} at eps={e1:.4g}"
                  for (e0, a), (e1, b) in itertools.pairwise(curve) if b > a + TOLERANCE]
    checks.append(_check("accuracy falls with eps", "failed" if rises else "passed",
                         "; ".join(rises) or "no attack's accuracy rises with eps"))

    iterative = [s for s in attacks if attack_info(s.name).iterative]
    strongest = iterative[0] if iterative else (fgsm_specs[0] if fgsm_specs else None)
    if strongest is None or not len(x):
        checks.append(_check("large eps breaks the model", "not run", "needs a white-box attack and correct examples"))
        checks.append(_check("attack converged", "not run", "needs an iterative white-box attack"))
    else:
        checks.append(_large_eps_check(model, x, y, strongest, batch_size, seed))
        checks.append(_convergence_check(model, x, y, correct.cpu().numpy(), strongest, result, batch_size, seed)
                      if iterative else _check("attack converged", "not run", "needs an iterative white-box attack"))

    black = [s for s in attacks if not attack_info(s.name).white_box]
    white = [s for s in attacks if attack_info(s.name).white_box]
    if black and white:
        beaten = []
        for eps in sorted({eps for (_, eps) in result.fooled}):
            by_black = result.fooled[(black[0].label, eps)]
            by_white = sum(result.fooled[(s.label, eps)].astype(int) for s in white) > 0
            count = int((by_black & ~by_white).sum())
            if count:
                beaten.append(f"eps={eps:.4g}: {count} example(s)")
        checks.append(_check("white-box beats black-box", "failed" if beaten else "passed",
                             f"{black[0].label} fooled examples every white-box attack failed on: " + "; ".join(beaten)
                             if beaten else f"{black[0].label} fooled no example the white-box attacks missed"))
    else:
        checks.append(_check("white-box beats black-box", "not run",
                             "needs a black-box attack (square) and a white-box attack"))
    return checks


def _logits_check(logits: torch.Tensor) -> dict[str, Any]:
    looks_like_probabilities = bool((logits >= -1e-6).all() and torch.allclose(
        logits.sum(1), torch.ones(len(logits), device=logits.device), atol=1e-3))
    if looks_like_probabilities:
        return _check("logits", "failed",
                      "the outputs are non-negative and each row sums to 1: probabilities, not logits")
    return _check("logits", "passed", "the outputs are not probabilities")


def _gradient_check(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, Any]:
    if not len(x):
        return _check("gradients", "not run", "no correctly classified examples")
    bad = 0
    for i in range(0, len(x), batch_size):
        _, grad = logits_and_gradient(model, x[i:i + batch_size], cross_entropy(y[i:i + batch_size]))
        flat = grad.flatten(1)
        bad += int(((flat == 0).all(1) | ~torch.isfinite(flat).all(1)).sum())
    fraction = bad / len(x)
    return _check("gradients", "failed" if fraction > TOLERANCE else "passed",
                  f"{fraction:.1%} of {len(x)} correctly classified examples have an all-zero or NaN input gradient")


def _large_eps_check(model, x, y, spec, batch_size, seed) -> dict[str, Any]:
    large = 1.0 if spec.norm == "linf" else math.sqrt(x[0].numel())
    probe = replace(spec, target=None, name="fgsm" if spec.name == "fgsm" else "pgd", steps=None, alpha=None)
    gen = generator(seed, x.device)
    wrong = 0
    for i in range(0, len(x), batch_size):
        adv = probe.run(model, x[i:i + batch_size], y[i:i + batch_size], large, gen)
        wrong += int((_classes(model, adv, batch_size) != y[i:i + batch_size]).sum())
    accuracy = 1 - wrong / len(x)
    return _check("large eps breaks the model", "failed" if accuracy > TOLERANCE else "passed",
                  f"{probe.label} at eps={large:.4g} ({spec.norm}): accuracy {accuracy:.3f} on {len(x)} examples")


def _convergence_check(model, x, y, rows, spec, result, batch_size, seed) -> dict[str, Any]:
    """Does a stronger run of ``spec`` lower the *reported* robust accuracy, the worst case over every
    attack of the evaluation, by more than :data:`TOLERANCE`? ``rows`` are the positions of ``x`` among
    the evaluated examples. Testing the worst case, not ``spec`` against a rerun of itself, asks what
    matters to the reader: an ensemble (AutoAttack) has converged when a longer attack finds no examples
    that the whole ensemble missed, even if one member alone would still improve (Croce and Hein 2020)."""
    clean = result.clean_accuracy
    curve = [(e.eps, e.accuracy) for e in result.entries if e.attack == WORST_CASE and e.eps > 0 and e.accuracy > 0]
    if not curve:
        return _check("attack converged", "passed", "worst-case accuracy is 0 at every eps > 0: nothing left to find")
    eps = min(curve, key=lambda point: abs(point[1] - clean / 2))[0]
    stronger = replace(spec, target=None, steps=3 * spec.n_steps, restarts=spec.restarts + 1, random_start=True)
    reported = torch.as_tensor(result.fooled[(WORST_CASE, eps)][rows], device=x.device)
    gen = generator(seed + 1, x.device)  # not the evaluation's own random starts
    found = torch.zeros_like(reported)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        found[i:i + batch_size] = _classes(model, stronger.run(model, xb, yb, eps, gen), batch_size) != yb
    new = int((found & ~reported).sum())
    drop = new / len(x)
    before = 1 - int(reported.sum()) / len(x)
    detail = (f"at eps={eps:.4g}, {stronger.label} with {stronger.n_steps} steps and {stronger.restarts} restarts "
              f"fools {new} of {len(x)} correct examples that every attack of the evaluation failed on: "
              f"worst-case accuracy on them {before:.3f} -> {before - drop:.3f}")
    if drop > TOLERANCE:
        detail += (f"; the reported robust accuracy is an upper bound not yet reached: attack again with "
                   f"--attack {spec.name} --steps {stronger.n_steps} --restarts {stronger.restarts}, or with "
                   "the AutoAttack ensemble (--preset full)")
    return _check("attack converged", "failed" if drop > TOLERANCE else "passed", detail)


def _classes(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return batched_logits(model, images, batch_size).argmax(1)
