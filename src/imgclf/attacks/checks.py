"""Automatic checks for false robustness, run with every robustness evaluation.

After Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry
and Kurakin, "On Evaluating Adversarial Robustness" (2019), and the checks
AutoAttack runs (Croce and Hein 2020). Each check is a dict with ``name``,
``status`` (``"passed"``, ``"failed"`` or ``"not run"``), ``detail`` (what was
measured) and ``meaning`` (why it matters).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclf.attacks.core import largest_eps, logits_and_gradient
from imgclf.attacks.losses import cross_entropy
from imgclf.attacks.registry import ATTACK_PRESETS, MINIMAL_NORM_ATTACK, attack_info
from imgclf.attacks.results import WORST_CASE, RobustnessResult, batched_logits
from imgclf.models.classifier import differentiable
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
    "transfer beats the evaluation": "Adversarial examples made on a surrogate (the model with its "
                                     "non-differentiable or random parts replaced by the identity, or --surrogate "
                                     "RUN) must not fool examples the evaluation's own attacks failed on; if they "
                                     "do, the model's gradients are obfuscated (Athalye et al. 2018).",
    "randomness": "A model whose outputs change between two passes over the same images defeats one-sample "
                  "gradients; its attacks then average the logits of several passes (expectation over "
                  "transformation, Athalye et al. 2018).",
}
#: Square's query budget in the black-box probe (a cheap look, not the evaluation's budget).
PROBE_QUERIES = 500
#: Steps of the PGD probes (FGSM against PGD, and the transfer probe).
PROBE_STEPS = 20


def _check(name: str, status: str, detail: str) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, "meaning": MEANINGS[name]}


def sanity_checks(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                  result: RobustnessResult, attacks: list[AttackSpec], *, batch_size: int = 256,
                  seed: int = 0, surrogate: torch.nn.Module | None = None,
                  randomized: str | None = None, cascade: bool = False) -> list[dict[str, Any]]:
    """The checks above on a finished evaluation; extra attacks run on up to
    :data:`CHECK_EXAMPLES` correctly classified examples.

    Whatever attacks the evaluation ran, its own cheap probes run at the most telling eps (where the
    worst-case accuracy is closest to half the clean accuracy): FGSM against PGD-20, Square with
    :data:`PROBE_QUERIES` queries, and PGD-20 made on a surrogate and transferred (Carlini et al. 2019;
    Athalye, Carlini and Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018).
    Each fails when it fools more than :data:`TOLERANCE` of the examples that the evaluation's worst
    case failed on (FGSM against PGD: when PGD is the weaker).

    Args:
        model: The evaluated model, in eval mode.
        images, labels: The evaluated examples (``float32`` ``(N, C, H, W)`` in
            ``[0, 1]`` and ``int64`` ``(N,)``), on the model's device.
        logits: The model's clean logits ``float32`` ``(N, K)`` for ``images``.
        result: The evaluation.
        attacks: The attacks that ran.
        surrogate: A model to make transferred examples on; None: the model with its parameter-free
            modules of unknown kind replaced by the identity (:func:`identity_surrogate`), where it has any.
        randomized: How the model was found randomized and attacked (see :func:`imgclf.attacks.robustness`);
            None: deterministic.
        cascade: The evaluation ran some attacks on what the earlier ones failed on (the converging plan, or
            ``--cascade``: their rows are cumulative), so FGSM against PGD and the black-box check are probed.

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
    probe = _Probe(model, x, y, correct.cpu().numpy(), result, attacks, batch_size, seed)
    checks.append(_pgd_beats_fgsm(attacks, accuracy, probe, cascade=cascade))
    checks.append(_falls_with_eps(attacks, accuracy))

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
    if black and white and cascade:  # (a cascaded black-box row holds only what it added)
        checks.append(_cascaded_black_box(model, images, labels, result, black, white, probe, batch_size, seed))
    elif white and probe.ready and not black:
        checks.append(probe.square())
    elif black and white:
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
    checks.append(probe.transfer(surrogate) if probe.ready else
                  _check("transfer beats the evaluation", "not run", "no eps with a worst-case accuracy above 0"))
    checks.append(_check("randomness", "passed", randomized or "two passes over the same images give the same "
                                                               "logits: the model is deterministic"))
    return checks



def _cascaded_black_box(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, result: RobustnessResult,
                        black: list[AttackSpec], white: list[AttackSpec], probe: _Probe, batch_size: int,
                        seed: int) -> dict[str, Any]:
    """``white-box beats black-box`` where the attacks ran on what the earlier ones failed on (the plan,
    ``--cascade``): what a black-box row fooled, at each eps, is attacked again by every white-box attack of the
    evaluation (those after the search never saw it); an example they all fail on is one the search beat the
    gradients on, as an ensemble's rows would show. Square's probe then looks past the worst case."""
    beaten, found_in_all = [], 0
    gen = generator(seed + 3, images.device)  # not the evaluation's own random draws
    for eps in sorted({eps for (_, eps) in result.fooled if eps > 0}):
        rows = [result.fooled[(spec.label, eps)] for spec in black if (spec.label, eps) in result.fooled]
        missed = [result.fooled[(spec.label, eps)] for spec in white if (spec.label, eps) in result.fooled]
        if not rows or not missed:
            continue
        found = np.stack(rows).any(0) & ~np.stack(missed).any(0)
        if not found.any():
            continue
        index = torch.as_tensor(np.flatnonzero(found), device=images.device)
        found_in_all += len(index)
        standing = index
        for spec in white:
            if len(standing):
                standing = standing[~_fooled_by(spec, model, images[standing], labels[standing], eps, gen, batch_size)]
        if len(standing):
            beaten.append(f"eps={eps:.4g}: {len(standing)} of the {len(index)} it fooled")
    probed = probe.square() if probe.ready else None
    failed = bool(beaten) or (probed is not None and probed["status"] == "failed")
    detail = ("the black-box search fooled examples that every white-box attack, run again on them, failed on: "
              + "; ".join(beaten) if beaten else f"the {found_in_all} example(s) the black-box search fooled all fall "
              "to a white-box attack run again on them" if found_in_all else
              "the black-box search fooled no example the white-box attacks had missed")
    return _check("white-box beats black-box", "failed" if failed else "passed",
                  detail + (f"; {probed['detail']}" if probed is not None else ""))


def _pgd_beats_fgsm(attacks: list[AttackSpec], accuracy: dict[tuple[str, float], float], probe: _Probe, *,
                    cascade: bool) -> dict[str, Any]:
    """PGD is at least as strong as FGSM: from the evaluation's own rows where it ran both (not cascaded),
    else from the probe's."""
    fgsm_specs = [s for s in attacks if s.name == "fgsm"]
    pgd_specs = [s for s in attacks if s.name == "pgd"]
    if (cascade or not (fgsm_specs and pgd_specs)) and probe.ready:
        return probe.fgsm_against_pgd()
    if not (fgsm_specs and pgd_specs):
        return _check("pgd beats fgsm", "not run", "needs both fgsm and pgd in the attacks")
    weaker = [f"eps={eps:.4g}: PGD {accuracy[(pgd_specs[0].label, eps)]:.3f} > FGSM "
              f"{accuracy[(fgsm_specs[0].label, eps)]:.3f}"
              for (name, eps) in accuracy if name == fgsm_specs[0].label
              and accuracy[(pgd_specs[0].label, eps)] > accuracy[(name, eps)]]
    return _check("pgd beats fgsm", "failed" if weaker else "passed",
                  "; ".join(weaker) or "PGD accuracy <= FGSM accuracy at every eps")


def _falls_with_eps(attacks: list[AttackSpec], accuracy: dict[tuple[str, float], float]) -> dict[str, Any]:
    """No attack's robust accuracy rises by more than :data:`TOLERANCE` from one eps to a larger one."""
    rises = []
    for spec in attacks:
        curve = sorted((eps, acc) for (name, eps), acc in accuracy.items() if name == spec.label)
        rises += [f"{spec.label} {a:.3f} at eps={e0:.4g} -> {b:.3f} at eps={e1:.4g}"
                  for (e0, a), (e1, b) in itertools.pairwise(curve) if b > a + TOLERANCE]
    return _check("accuracy falls with eps", "failed" if rises else "passed",
                  "; ".join(rises) or "no attack's accuracy rises with eps")

def _spec(name: str, norm: str, **settings: Any) -> AttackSpec:
    """An attack of the probes (imported here: the spec module imports the registry this module reads)."""
    from imgclf.attacks.spec import AttackSpec

    return AttackSpec(name, norm, **settings)


def _gradient_probe(norm: str) -> AttackSpec:
    """The probes' gradient attack under ``norm``: PGD-:data:`PROBE_STEPS`, or FMN where PGD has no version (L1)."""
    if norm in attack_info("pgd").norms:
        return _spec("pgd", norm, steps=PROBE_STEPS)
    return _spec(MINIMAL_NORM_ATTACK, norm)


class _Probe:
    """The evaluation's own probes at its most telling eps, on the check subset ``x``, ``y`` (positions ``rows``
    among the evaluated examples)."""

    def __init__(self, model, x, y, rows, result, attacks, batch_size, seed):
        self.model, self.x, self.y, self.batch_size, self.seed = model, x, y, batch_size, seed
        self.norm = attacks[0].norm if attacks else "linf"
        curve = [(e.eps, e.accuracy) for e in result.entries if e.attack == WORST_CASE and e.eps > 0]
        self.ready = bool(curve) and len(x) > 0  # there is an eps to probe at, and examples
        self.eps: float = min(curve, key=lambda point: abs(point[1] - result.clean_accuracy / 2))[0] \
            if self.ready else 0.0
        self.reported = torch.as_tensor(result.fooled[(WORST_CASE, self.eps)][rows], device=x.device) \
            if self.ready else torch.zeros(len(x), dtype=torch.bool)

    def _fooled(self, spec: AttackSpec, on: torch.nn.Module | None = None) -> torch.Tensor:
        """Which of ``x`` the attack (made on ``on``, default the model) fools the model on."""
        gen = generator(self.seed + 2, self.x.device)  # not the evaluation's own random draws
        return _fooled_by(spec, self.model, self.x, self.y, self.eps, gen, self.batch_size, on=on)

    def _beyond(self, fooled: torch.Tensor) -> int:
        return int((fooled & ~self.reported).sum())

    def fgsm_against_pgd(self) -> dict[str, Any]:
        if self.norm not in attack_info("fgsm").norms:
            return _check("pgd beats fgsm", "not run", f"FGSM and PGD have no {self.norm} version")
        fgsm = 1 - float(self._fooled(_spec("fgsm", self.norm)).float().mean())
        pgd = 1 - float(self._fooled(_spec("pgd", self.norm, steps=PROBE_STEPS)).float().mean())
        failed = pgd > fgsm + TOLERANCE
        return _check("pgd beats fgsm", "failed" if failed else "passed",
                      f"probe at eps={self.eps:.4g} on {len(self.x)} correct examples: PGD-{PROBE_STEPS} accuracy "
                      f"{pgd:.3f} {'>' if failed else '<='} FGSM accuracy {fgsm:.3f}")

    def square(self) -> dict[str, Any]:
        if self.norm not in attack_info("square").norms:
            return _check("white-box beats black-box", "not run", f"the square probe has no {self.norm} version")
        new = self._beyond(self._fooled(_spec("square", self.norm, options={"queries": PROBE_QUERIES})))
        failed = new / len(self.x) > TOLERANCE
        return _check("white-box beats black-box", "failed" if failed else "passed",
                      f"square probe ({PROBE_QUERIES} queries) at eps={self.eps:.4g} fools {new} of {len(self.x)} "
                      "correct examples that every attack of the evaluation failed on"
                      + ("; the reported robust accuracy is unproven" if failed else ""))

    def transfer(self, surrogate: torch.nn.Module | None) -> dict[str, Any]:
        name = "transfer beats the evaluation"
        what = "the given surrogate"
        if surrogate is None:
            surrogate, replaced = identity_surrogate(self.model)
            if surrogate is None:
                return _check(name, "not run", "the model has no parameter-free module of unknown kind to replace "
                                               "(or cannot be copied); give --surrogate RUN")
            what = f"the model with {', '.join(replaced)} bypassed (as the identity)"
        probe = _gradient_probe(self.norm)
        try:
            fooled = self._fooled(probe, on=surrogate)
        except (RuntimeError, ValueError) as error:
            return _check(name, "not run", f"the surrogate ({what}) failed: {str(error)[:120]}")
        new = self._beyond(fooled)
        failed = new / len(self.x) > TOLERANCE
        return _check(name, "failed" if failed else "passed",
                      f"{probe.label.upper()}-{probe.n_steps} made on {what} at eps={self.eps:.4g} fools {new} of "
                      f"{len(self.x)} correct examples that every attack of the evaluation failed on"
                      + ("; the reported robust accuracy is unproven" if failed else ""))


#: Where the modules whose gradients imgclf trusts come from; a parameter-free module from elsewhere may be a
#: non-differentiable or random input transformation, and the surrogate replaces it by the identity.
KNOWN_MODULES = ("torch.", "torchvision.", "timm.", "imgclf.")


def identity_surrogate(model: torch.nn.Module) -> tuple[torch.nn.Module | None, list[str]]:
    """A copy of ``model`` with its modules of unknown origin (not from torch, torchvision, timm or imgclf) that
    have no parameters of their own bypassed: a leaf becomes ``nn.Identity`` and a wrapper of one module becomes
    that module (the BPDA identity approximation of Athalye et al. 2018: input transformations such as
    quantization, JPEG or noise are assumed to be the identity).

    Returns:
        The surrogate and the names of the bypassed modules (``"model"`` for the model itself); ``(None, [])``
        when there is nothing to bypass or the model cannot be copied (TorchScript, ONNX, an exported program).
    """
    import copy

    from torch import nn

    def unknown(module: torch.nn.Module) -> bool:
        return not type(module).__module__.startswith(KNOWN_MODULES) and not list(module.parameters(recurse=False))

    bypassed: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") or outer == "" for outer in bypassed):
            continue  # inside a wrapper that is bypassed already
        children = list(module.children())
        if unknown(module) and len(children) <= 1:
            bypassed.append(name)
    if not bypassed:
        return None, []
    try:
        surrogate = copy.deepcopy(model)
    except (RuntimeError, TypeError, copy.Error):
        return None, []
    for name in bypassed:
        module = surrogate.get_submodule(name)
        children = list(module.children())
        replacement = children[0] if children else nn.Identity()
        if not name:
            surrogate = replacement
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(surrogate.get_submodule(parent_name) if parent_name else surrogate, child, replacement)
    return surrogate, [name or "model" for name in bypassed]


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
    large = largest_eps(x, spec.norm)
    probe = replace(spec, target=None, steps=None, alpha=None, tag="", options={},
                    name="fgsm" if spec.name == "fgsm" else _gradient_probe(spec.norm).name)
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


def _fooled_by(spec: AttackSpec, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               gen: torch.Generator, batch_size: int, on: torch.nn.Module | None = None) -> torch.Tensor:
    """Which of ``x`` (``(N, C, H, W)``, labels ``y``) the attack at ``eps``, made on ``on`` (default ``model``)
    batch by batch, fools ``model`` on: bool ``(N,)``."""
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = spec.run(on if on is not None else model, xb, yb, eps, gen)
        fooled[i:i + batch_size] = _classes(model, adv, batch_size) != yb
    return fooled


def _classes(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return batched_logits(model, images, batch_size).argmax(1)


#: The checks a probe of imgclf's own makes, which fail where it finds what the evaluation's attacks missed.
PROBED = ("white-box beats black-box", "transfer beats the evaluation", "attack converged")


def advice(checks: list[dict[str, Any]], plan: list[Any], run: str = "RUN", *, python: bool = False,
           attacks: Sequence[str] = ()) -> list[str]:
    """What to try when the evaluation is not conclusive: a check failed, or the converging plan stopped
    without converging. One sentence each with the command (``run`` stands for the run folder), fitted to the
    failure: a black-box or transferred attack that beats the gradients points to masked gradients (attack a
    surrogate, search longer without gradients); a longer gradient attack that still finds more points to an
    unconverged search (more restarts, the whole ensemble); a randomized model is attacked through EOT already.
    An evaluation that ran neither the plan nor the whole AutoAttack ensemble (``--attack fgsm,pgd``) is told to
    run the plan first where a probe beat its attacks: weak attacks, not masked gradients, are then the likelier
    reason, and the plan escalates until it converges.

    Args:
        checks: The sanity checks (:func:`sanity_checks`' dicts).
        plan: The plan's outcomes per eps (:class:`imgclf.attacks.results.PlanOutcome`), possibly empty.
        run: How the run folder is named in the commands.
        python: Say what to try as arguments of :func:`imgclf.evaluate_robustness` rather than as commands (for a
            model evaluated from Python, without a run folder).
        attacks: The labels of the attacks the evaluation ran (``apgd-t (3 targets)``; the worst case may be
            among them); with an empty ``plan``, whether they hold the whole ensemble decides the advice above.

    Returns:
        Sentences, most telling first; empty when every check passed and the plan converged.
    """
    failed = {check["name"] for check in checks if check["status"] == "failed"}
    def still_finding(white_box: bool) -> bool:
        """Whether, where the plan did not converge, its latest escalation of this kind fooled above the
        tolerance."""
        for outcome in plan:
            latest = next((step for step in reversed(outcome.steps[1:]) if step.white_box == white_box), None)
            if not outcome.converged and latest is not None and latest.fooled > outcome.tolerance * latest.attacked:
                return True
        return False

    black_still, white_still = still_finding(False), still_finding(True)

    def call(flags: str, arguments: str) -> str:
        return f"imgclf.evaluate_robustness(model, images, labels, {arguments})" if python else \
            f"imgclf attack {run} {flags}"

    notes = []
    ran = {label.split(" ")[0] for label in attacks}
    if not plan and not set(ATTACK_PRESETS["full"]) <= ran and failed & set(PROBED):
        notes.append(f"The attacks run ({', '.join(sorted(ran - {WORST_CASE})) or 'none'}) stop before they have "
                     "converged, so a check that finds what they missed says first that they stopped short, not "
                     "that the gradients are masked: run the converging plan, which escalates until it converges "
                     "and says why (" + call("--preset auto", 'attacks=["auto"]') + "); where a check fails there "
                     "too, its advice names what to try next.")
        failed -= set(PROBED)
    if failed & {"white-box beats black-box", "transfer beats the evaluation", "gradients",
                 "large eps breaks the model"} or black_still:
        notes.append("The model resists gradient attacks: searches without its gradients find what they miss "
                     "(masked or obfuscated gradients), so its robust accuracy is lower than the gradient rows say. "
                     "Attack through a differentiable stand-in and transfer ("
                     + call("--surrogate OTHER_RUN", "surrogate=stand_in")
                     + ", the same network without the non-differentiable part), and let the black-box search run "
                     "longer (" + call("--attack square --queries 20000 --cascade",
                                       'attacks=["square"], queries=20000') + ").")
    if "attack converged" in failed or white_still:
        notes.append("The gradient search has not converged: a longer one still finds examples. Run the whole "
                     "ensemble with restarts (" + call("--preset full --restarts 5 --cascade",
                                                        'attacks=["full"], restarts=5') + ").")
    if "pgd beats fgsm" in failed or "accuracy falls with eps" in failed:
        notes.append("The attacks behave inconsistently (PGD weaker than FGSM, or accuracy rising with eps), a sign "
                     "of a loss surface the steps cannot climb: try the DLR loss ("
                     + call("--attack apgd-dlr,apgd-t", 'attacks=["apgd-dlr", "apgd-t"]') + ") and a surrogate as "
                     "above.")
    if any("EOT" in check["detail"] for check in checks if check["name"] == "randomness") and notes:
        notes.append("The model is randomized: every attack already averaged several passes (EOT); a randomized "
                     "defense needs the attacks above on that average, which imgclf does for you.")
    return notes
