"""Robust accuracy: every attack at every eps, and the per-example worst case over attacks.

An example counts as robust at an eps only if every attack run failed on it
(the AutoAttack convention, Croce and Hein 2020). Attacks run only on the
examples the model classifies correctly without attack; the rest are wrong
already.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from imgclf.attacks.checks import sanity_checks
from imgclf.attacks.core import CPU_CHUNK, Chunked, largest_eps, per_example_norm
from imgclf.attacks.plan import Decision, decide, with_checks
from imgclf.attacks.registry import AUTOATTACK_PASSES, PLAN_TOLERANCE, TARGET_MODES, attack_info
from imgclf.attacks.results import (
    WORST_CASE,
    MinimalNorm,
    PlanOutcome,
    PlanStepOutcome,
    RobustnessEntry,
    RobustnessResult,
    agreement,
    batched_logits,
)
from imgclf.attacks.spec import AttackSpec
from imgclf.distributed import Distributed
from imgclf.models.classifier import ModeNeutral, differentiable
from imgclf.runtime import channels_last, generator

#: How ``--target`` picks each example's target class (or a class name or index).


def choose_targets(mode: str | int, logits: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each example's target class, never its true label.

    Args:
        mode: ``"random"`` (uniform over the other classes), ``"least-likely"``
            (lowest clean logit), or a class index (examples of that class get -1:
            they cannot be targeted).
        logits: Clean logits ``(N, K)``. labels: ``(N,)``. gen: CPU generator.

    Returns:
        ``int64`` ``(N,)`` target classes, -1 where none applies.

    Raises:
        ValueError: On an unknown mode or a class index out of range.
    """
    classes = logits.shape[1]
    if mode == "random":
        shift = torch.randint(1, classes, labels.shape, generator=gen).to(labels.device)
        return (labels + shift) % classes
    if mode == "least-likely":
        masked = logits.clone()
        masked[torch.arange(len(labels)), labels] = float("inf")
        return masked.argmin(1)
    if isinstance(mode, str) and not mode.isdigit():
        raise ValueError(f"unknown target {mode!r}; valid choices: {', '.join(TARGET_MODES)}, or a class")
    index = int(mode)
    if not 0 <= index < classes:
        raise ValueError(f"target class {index} out of range: the model has {classes} classes")
    return torch.where(labels == index, -1, torch.full_like(labels, index))


def robustness(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attacks: list[AttackSpec],
    eps_values: list[float],
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
    show: int = 8,
    run_checks: bool = True,
    progress: Callable[[int, int], None] | None = None,
    store: BatchStore | None = None,
    distributed: Distributed | None = None,
    surrogate: torch.nn.Module | None = None,
    cascade: bool = False,
    plan: Sequence[AttackSpec] = (),
    tolerance: float = PLAN_TOLERANCE,
    minimal_norm: AttackSpec | None = None,
) -> RobustnessResult:
    """Robust accuracy of ``model`` under each attack at each eps, and the worst case.

    The work is cut into *units*: one batch of one attack at one eps. Each unit draws its random
    numbers from its own generator (seeded by ``seed`` and the batch's position), so its result does
    not depend on which other units ran, where, or in what order. That makes the evaluation:

    - resumable: with a ``store``, every finished unit is committed (atomically, by the store) and a
      later call with the same arguments loads it instead of running it again, ending with exactly
      the numbers of an uninterrupted call;
    - shardable: under ``torchrun`` (``distributed``) the units of each attack and eps are dealt out to
      the processes in turn, gathered after every round, and merged in order, so the result is that of
      one process with the same seed.

    Attacks that need more classes than the model has, and white-box attacks of a model without
    gradients (ONNX), are skipped with a message. A randomized model (two passes over the same images
    give different logits) is evaluated through :class:`ExpectationOverTransformation`: every attack's
    gradient and every prediction average :data:`EOT_SAMPLES` passes (Athalye et al. 2018). During the
    call the model's 4-D weights are held in the channels-last layout (:func:`imgclf.runtime.channels_last`),
    and restored when it returns or raises.

    Args:
        model: In eval mode; maps ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` (CPU or device).
        labels: ``int64`` ``(N,)``.
        attacks: What to run, in order.
        eps_values: Radii in pixel units under each attack's norm.
        device: Where to compute.
        batch_size: Examples per attack batch.
        seed: Seeds the random starts, squares and targets.
        show: How many examples to keep for the report's figure.
        run_checks: Run the sanity checks of :mod:`imgclf.attacks.checks`.
        progress: Optional callable ``progress(done, total)`` after each unit.
        store: Where finished units are committed and found again (:class:`BatchStore`); None: nowhere.
        distributed: This process's place among several (:class:`imgclf.distributed.Distributed`);
            None: alone.
        surrogate: The model the sanity checks' transfer probe makes its examples on; None: the model with
            its unknown parameter-free modules replaced by the identity (:mod:`imgclf.attacks.checks`).
        cascade: Each attack runs only on the examples every earlier attack at that eps failed on, as
            AutoAttack does: the same worst case for less work, and each attack's row is then the robust
            accuracy after it and the attacks before it. False: every attack runs on every correctly
            classified example and its row is its own.
        plan: The steps of the converging plan (:data:`imgclf.attacks.registry.AUTO_PLAN` as
            :func:`imgclf.attacks.spec.plan_specs` makes them), run after ``attacks`` at each eps above 0 on the
            examples every attack before failed on, until :func:`imgclf.attacks.plan.decide` says stop; each
            step's row is the robust accuracy after it and everything before it, and ``result.plan`` says per eps
            whether it converged (a failed gradient check voids it: :func:`imgclf.attacks.plan.with_checks`).
            A step with ``near`` attacks only the examples whose minimal-norm radius is within ``near * eps``,
            and is skipped, with why, without ``minimal_norm``. Empty: no plan.
        tolerance: The plan's tolerance: the fraction of the examples still standing an escalation may fool
            and count as finding nothing more, in ``[0, 1)``.
        minimal_norm: A minimal-norm attack (``fmn``) run once, unbounded, on every correctly classified example
            before the fixed-eps attacks (units like theirs, so it resumes and shards alike): each example's
            smallest adversarial radius (``result.examples["minimal_radii"]``), the continuous robustness curve
            they imply, and its agreement with the fixed-eps worst case (``result.minimal_norm``). Its finds within
            an eps count in that eps's worst case, after every fixed-eps attack and the plan (attributed to it in
            ``adversarial.pt`` only where they failed). None: not run.

    Returns:
        A :class:`~imgclf.attacks.results.RobustnessResult`.

    Raises:
        ValueError: From an attack, e.g. an L2 eps larger than the images allow.
    """
    start = time.perf_counter()
    with channels_last(model):  # faster convolutions; the caller's model is restored on the way out
        eps_values = sorted({float(e) for e in eps_values})
        images, labels = images.to(device), labels.to(device)  # once, not once per attack and eps
        model, randomized = _with_eot_if_randomized(model, images[:batch_size])
        logits = batched_logits(model, images, batch_size)
        evaluation = _Evaluation(model, images, labels, logits, eps_values, batch_size, seed, show, progress,
                                 store, distributed or Distributed(), cascade)
        runnable, skipped = evaluation.runnable(attacks)
        minimal, skipped_minimal = evaluation.runnable([minimal_norm] if minimal_norm is not None else [], deal=False)
        steps, skipped_steps = evaluation.runnable([spec for spec in plan if minimal or spec.near is None],
                                                   deal=False)
        skipped_steps += [f"{spec.label} skipped: it attacks the examples the minimal-norm search found close to "
                          "the boundary, and that search did not run" for spec in plan
                          if spec.near is not None and not minimal]
        evaluation.plan = _Plan(steps, tolerance, len(runnable), first_units=max(len(evaluation.chunks_of(
            evaluation.correct)), 1)) if plan else None
        if evaluation.plan is not None and steps:  # (the bar grows as the plan escalates)
            first = evaluation.plan.first_units
            evaluation.total += sum(evaluation.weight(steps[0], eps) * first for eps in eps_values)
        if minimal:  # (a model without gradients has no minimal-norm search: skipped, with why)
            evaluation.total += max(len(evaluation.chunks_of(evaluation.correct)), 1) * evaluation.weight(minimal[0])
            cost = evaluation.search_minimal(minimal[0])  # first: the plan's near-boundary step needs its radii
        entries: list[RobustnessEntry] = []
        for eps_index, eps in enumerate(eps_values):
            entries += evaluation.at_eps(runnable, eps, eps_index)
        summary = evaluation.minimal_norm(minimal[0], cost) if minimal else None
        result = RobustnessResult(entries, evaluation.clean_accuracy, evaluation.n, seed,
                                  skipped=skipped + skipped_steps + skipped_minimal, fooled=evaluation.fooled,
                                  adversarial=evaluation.adversarial_record(runnable + steps + minimal),
                                  examples=evaluation.examples,
                                  plan=evaluation.plan.outcomes if evaluation.plan else [], minimal_norm=summary)
        if run_checks:
            result.checks = sanity_checks(model, images, labels, logits, result, runnable + steps,
                                          batch_size=batch_size, seed=seed, surrogate=surrogate,
                                          randomized=randomized, cascade=cascade or bool(steps))
            result.plan = with_checks(result.plan, result.checks)
    result.seconds = time.perf_counter() - start
    return result


#: Passes averaged per forward of a randomized model (expectation over transformation).
EOT_SAMPLES = 8


class ExpectationOverTransformation(ModeNeutral):
    """The mean logits of ``samples`` passes of a randomized ``model`` (Athalye, Carlini and Wagner 2018): its
    gradient is the expected gradient. Mode changes stay with the wrapper, never the model.

    Shape:
        As ``model``: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, K)``.
    """

    def __init__(self, model: torch.nn.Module, samples: int = EOT_SAMPLES):
        super().__init__()
        self.model, self.samples = model, samples
        self.training = model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(0)


def _with_eot_if_randomized(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.nn.Module, str | None]:
    """``model``, or its :class:`ExpectationOverTransformation` with a sentence saying why, when two passes over
    the same ``images`` differ."""
    if not len(images):
        return model, None
    first, second = batched_logits(model, images, len(images)), batched_logits(model, images, len(images))
    gap = float((first - second).abs().max())
    if gap <= 1e-5 * max(1.0, float(first.abs().max())):
        return model, None
    return ExpectationOverTransformation(model), (
        f"two passes over the same images differ by up to {gap:.3g} in the logits: the model is randomized, and "
        f"every attack and prediction averaged {EOT_SAMPLES} passes (EOT)")


class BatchStore(Protocol):
    """Where an evaluation commits its finished units and finds them again (see :func:`robustness`).

    A unit's result is a dict of CPU tensors and numbers; ``save`` must be atomic (a reader never sees
    half a unit) and ``load`` returns None for a unit that was never saved."""

    def load(self, name: str) -> dict[str, Any] | None: ...

    def save(self, name: str, result: dict[str, Any]) -> None: ...


def _unit_fits(unit: dict[str, Any], rows: int, image_shape: tuple[int, ...]) -> bool:
    """Whether a stored unit is one of ``rows`` examples of images ``image_shape``: bool masks ``hit``,
    ``reached``, ``keep`` and integer ``pred`` of ``(rows,)``, ``adv`` of ``(keep.sum(), *image_shape)``, and
    whole pass counts (a unit that is not is run again)."""
    masks = [unit.get(key) for key in ("hit", "reached", "keep")]
    pred, adv = unit.get("pred"), unit.get("adv")
    if not all(isinstance(m, torch.Tensor) and m.dtype == torch.bool and tuple(m.shape) == (rows,) for m in masks):
        return False
    if not (isinstance(pred, torch.Tensor) and tuple(pred.shape) == (rows,) and not pred.is_floating_point()):
        return False
    kept = int(masks[2].sum())  # type: ignore[union-attr]
    return (isinstance(adv, torch.Tensor) and tuple(adv.shape) == (kept, *image_shape) and adv.is_floating_point()
            and all(isinstance(unit.get(key), int) and unit[key] >= 0 for key in ("forwards", "backwards")))


def unit_seed(seed: int, batch: int, draw: int = 0) -> int:
    """The seed of one unit's generator: ``seed`` for the first batch of draw 0, a well-mixed derivative for the
    other batches and draws (:attr:`imgclf.attacks.AttackSpec.draw`)."""
    if batch == 0 and draw == 0:
        return seed
    entropy = [seed, batch] if draw == 0 else [seed, batch, draw]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] % (2**63))


class PassCounter(ModeNeutral):
    """``model`` with its forward and backward passes counted, in examples (a batch of 256 counts 256).

    A backward pass is counted when a gradient reaches the logits. The wrapper never changes the model's
    mode: ``train()`` and ``eval()`` set its own flag only.

    Shape:
        As ``model``: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, K)``.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.training = model.training  # what the attacks' mode check reads
        self.forwards = self.backwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        batch = int(x.shape[0])
        self.forwards += batch
        if logits.requires_grad:
            logits.register_hook(lambda grad: self._count_backward(batch, grad))
        return logits

    def _count_backward(self, batch: int, grad: torch.Tensor) -> None:
        self.backwards += batch


@dataclass
class _Plan:
    """The converging plan of one evaluation: its runnable steps, where their units are numbered from
    (``first``: after the other attacks), and its outcome per eps."""

    steps: list[AttackSpec]
    tolerance: float
    first: int
    outcomes: list[PlanOutcome] = field(default_factory=list)
    first_units: int = 1  # the first step's batches at most, counted up front at each eps for the progress bar

    @property
    def kinds(self) -> frozenset[bool]:
        """The kinds of evidence its steps can give: white box (True), black box (False)."""
        return frozenset(attack_info(spec.name).white_box for spec in self.steps)


class _Evaluation:
    """The state of one :func:`robustness` call: clean predictions, targets, batches, and what each attack fooled."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                 eps_values: list[float], batch_size: int, seed: int, show: int,
                 progress: Callable[[int, int], None] | None, store: BatchStore | None, distributed: Distributed,
                 cascade: bool):
        self.store, self.distributed, self.cascade = store, distributed, cascade
        self.model, self.images, self.labels, self.logits = model, images, labels, logits
        self.counter = PassCounter(Chunked(model, CPU_CHUNK) if images.device.type == "cpu" else model)
        self.eps_values, self.batch_size, self.seed, self.progress = eps_values, batch_size, seed, progress
        self.n = int(labels.shape[0])
        self.classes = logits.shape[1]
        self.clean_pred = logits.argmax(1)
        self.correct = self.clean_pred == labels
        self.clean_accuracy = int(self.correct.sum()) / self.n if self.n else float("nan")
        self.shown = min(show, self.n)
        self.examples: dict[str, np.ndarray] = {
            "clean": images[:self.shown].cpu().numpy(), "labels": labels[:self.shown].cpu().numpy(),
            "clean_pred": self.clean_pred[:self.shown].cpu().numpy(),
            "eps": np.asarray(eps_values[-1], dtype=np.float32),
        }
        self.fooled: dict[tuple[str, float], np.ndarray] = {}
        self.worst: dict[str, list[torch.Tensor]] = {"images": [], "fooled": [], "fooled_by": []}
        self.targets: dict[AttackSpec, torch.Tensor] = {}
        self.rows: dict[AttackSpec, torch.Tensor] = {}
        self.chunks: dict[AttackSpec, list[torch.Tensor]] = {}
        self.done = self.total = 0
        self.plan: _Plan | None = None
        self.radii: torch.Tensor | None = None  # each example's smallest adversarial radius found, once searched
        self.closest: torch.Tensor | None = None  # the adversarial images at those radii (clean where none found)
        self.fixed_fooled: dict[float, np.ndarray] = {}  # per eps, the worst case before the minimal-norm finds

    @staticmethod
    def weight(spec: AttackSpec, eps: float = 1.0) -> int:
        """One batch's share of the progress bar, so that its time estimate holds: the attack's iterations (Square's
        queries) times its restarts; 0 at eps 0, where an attack returns the images as they are."""
        if eps == 0:
            return 0
        return max(1, int(spec.options.get("queries", spec.n_steps))) * max(spec.restarts, 1)

    def runnable(self, attacks: list[AttackSpec], *, deal: bool = True) -> tuple[list[AttackSpec], list[str]]:
        """The attacks the model has enough classes for, with their targets and (``deal``) batches; and why the
        rest are skipped. Each attack runs on the examples classified correctly (and, targeted, that have a
        target); the plan's steps are dealt their examples as they run."""
        runnable, skipped = [], []
        gradients = differentiable(self.model)
        for spec in attacks:
            if not gradients and attack_info(spec.name).white_box:
                skipped.append(f"{spec.label} skipped: a white-box attack needs the model's gradients, and this "
                               "model gives none (an ONNX model runs outside PyTorch); only black-box attacks "
                               "(square) apply")
            elif self.classes < spec.min_classes():
                skipped.append(f"{spec.label} skipped: it needs at least {spec.min_classes()} classes, "
                               f"the model has {self.classes}")
            else:
                runnable.append(spec)
        device = self.images.device
        self.targets.update({spec: choose_targets(spec.target, self.logits.cpu(), self.labels.cpu(),
                                                  generator(self.seed)).to(device)
                             for spec in runnable if spec.target is not None})
        if deal:
            for spec in runnable:
                self._deal(spec, self.correct)
            self.total = sum(self.weight(spec, eps) * max(len(chunks), 1) for eps in self.eps_values
                             for spec, chunks in self.chunks.items())
        return runnable, skipped

    def chunks_of(self, candidates: torch.Tensor) -> list[torch.Tensor]:
        """``candidates``' rows in batches."""
        rows = torch.nonzero(candidates).squeeze(1)
        return [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def _deal(self, spec: AttackSpec, candidates: torch.Tensor) -> None:
        """The rows ``spec`` attacks (the ``candidates`` that have a target, when it is targeted) and its batches."""
        eligible = candidates & (self.targets[spec] >= 0) if spec in self.targets else candidates
        self.rows[spec] = torch.nonzero(eligible).squeeze(1)
        self.chunks[spec] = self.chunks_of(eligible)

    def at_eps(self, runnable: list[AttackSpec], eps: float, eps_index: int) -> list[RobustnessEntry]:
        """Every attack at ``eps``, then the per-example worst case over them."""
        n, device = self.n, self.images.device
        worst_fooled = torch.zeros(n, dtype=torch.bool, device=device)
        worst_images = self.images.clone()
        fooled_by = torch.full((n,), -1, dtype=torch.int64, device=device)
        entries = []
        for index, spec in enumerate(runnable):
            if self.cascade:  # only what every earlier attack at this eps failed on
                self._deal(spec, self.correct & ~worst_fooled)
            merged = self._attack(spec, eps, f"{eps_index:03d}-{index:02d}", worst_fooled, worst_images, fooled_by,
                                  index)
            hit, reached = merged["hit"], merged["reached"]
            self.fooled[(spec.label, eps)] = hit.cpu().numpy()
            attacked = len(self.rows[spec])
            target_rate = (int(reached.sum()) / attacked if attacked else float("nan")) \
                if spec in self.targets else None
            robust = self.correct & ~(worst_fooled if self.cascade else hit)
            entries.append(self._entry(spec.label, eps, robust, settings={"norm": spec.norm,
                                                                                         **spec.settings(eps)},
                                       target_success_rate=target_rate, seconds=merged["seconds"],
                                       attacked=attacked, forwards=merged["forwards"],
                                       backwards=merged["backwards"]))
        ran = runnable + (self.plan.steps if self.plan is not None else [])
        if self.plan is not None and self.plan.steps and eps > 0:
            entries += self._escalate(eps, eps_index, worst_fooled, worst_images, fooled_by)
        self.fixed_fooled[eps] = worst_fooled.cpu().numpy().copy()  # (a view on the CPU, and the fold changes it)
        self._fold_minimal(eps, len(ran), worst_fooled, worst_images, fooled_by)
        self.fooled[(WORST_CASE, eps)] = worst_fooled.cpu().numpy()
        entries.append(self._entry(WORST_CASE, eps, self.correct & ~worst_fooled,
                                   settings={"norm": ",".join(dict.fromkeys(s.norm for s in ran)),
                                             "steps": None, "alpha": None, "restarts": None, "random_start": None,
                                             "target": None},
                                   target_success_rate=None, seconds=sum(e.seconds for e in entries),
                                   attacked=int(self.correct.sum()), forwards=sum(e.forwards for e in entries),
                                   backwards=sum(e.backwards for e in entries)))
        self.worst["images"].append(worst_images.cpu())
        self.worst["fooled"].append(worst_fooled.cpu())
        self.worst["fooled_by"].append(fooled_by.cpu())
        return entries

    def _fold_minimal(self, eps: float, index: int, worst_fooled: torch.Tensor, worst_images: torch.Tensor,
                      fooled_by: torch.Tensor) -> None:
        """Count in the worst case at ``eps`` the examples the minimal-norm search fooled within ``eps`` that every
        fixed-eps attack failed on, with its adversarial images (``index``: its place in ``adversarial.pt``'s
        ``attacks``); nothing without a search or at eps 0."""
        if self.radii is None or self.closest is None or eps <= 0:
            return
        new = self.correct & (self.radii <= eps) & ~worst_fooled
        worst_images[new] = self.closest[new]
        fooled_by[new] = index
        worst_fooled |= new

    def _escalate(self, eps: float, eps_index: int, worst_fooled: torch.Tensor, worst_images: torch.Tensor,
                  fooled_by: torch.Tensor) -> list[RobustnessEntry]:
        """The plan's steps at ``eps``, each on the examples still standing, until :func:`decide` stops it; one
        cumulative row per step run, and the plan's outcome at ``eps``."""
        plan = self.plan
        assert plan is not None
        outcomes: list[PlanStepOutcome] = []
        entries: list[RobustnessEntry] = []
        correct = max(int(self.correct.sum()), 1)
        decision = Decision(True, True, "no example was left standing for the plan: the attacks before it fooled "
                                        "every one")
        if not bool((self.correct & ~worst_fooled).any()):
            self.total -= plan.first_units * self.weight(plan.steps[0], eps)  # counted up front
        for number, spec in enumerate(plan.steps if (self.correct & ~worst_fooled).any() else []):
            index = plan.first + number
            standing = self.correct & ~worst_fooled
            if spec.near is not None and self.radii is not None:
                standing &= self.radii <= spec.near * eps
                if not bool(standing.any()):  # no example standing is close to the boundary: nothing to retry
                    continue
            self._deal(spec, standing)
            self.total += (max(len(self.chunks[spec]), 1) - (plan.first_units if not number else 0)) * \
                self.weight(spec, eps)
            merged = self._attack(spec, eps, f"{eps_index:03d}-{index:02d}", worst_fooled, worst_images, fooled_by,
                                  index)
            self.fooled[(spec.label, eps)] = merged["hit"].cpu().numpy()
            attacked = len(self.rows[spec])
            outcomes.append(PlanStepOutcome(spec.label, attack_info(spec.name).white_box, attacked,
                                            int((merged["hit"] & standing).sum()), merged["forwards"],
                                            merged["backwards"], merged["seconds"]))
            entries.append(self._entry(spec.label, eps, self.correct & ~worst_fooled,
                                       settings={"norm": spec.norm, **spec.settings(eps)}, target_success_rate=None,
                                       seconds=merged["seconds"], attacked=attacked, forwards=merged["forwards"],
                                       backwards=merged["backwards"]))
            spent = sum(o.forwards + o.backwards for o in outcomes) / correct
            decision = decide(outcomes, kinds=plan.kinds, tolerance=plan.tolerance, spent=spent,
                              budget=AUTOATTACK_PASSES, remaining=len(plan.steps) - number - 1)
            if decision.stop:
                break
        plan.outcomes.append(PlanOutcome(eps, decision.converged, decision.reason, plan.tolerance,
                                         sum(o.forwards + o.backwards for o in outcomes) / correct,
                                         AUTOATTACK_PASSES, outcomes))
        return entries

    def search_minimal(self, spec: AttackSpec) -> dict[str, Any]:
        """``spec`` (a minimal-norm attack) without a bound on every correctly classified example: each example's
        smallest adversarial radius found, kept in ``examples["minimal_radii"]`` (``float32`` ``(n,)``: 0 where
        the clean image is misclassified, inf where none was found) and in ``radii`` (on the device, for the
        plan's near-boundary step); returns the search's seconds and passes (``seconds``, ``forwards``,
        ``backwards``)."""
        self._deal(spec, self.correct)
        found = torch.zeros(self.n, dtype=torch.bool, device=self.images.device)
        closest = self.images.clone()
        cost = self._attack(spec, largest_eps(self.images, spec.norm), "minimal", found, closest,
                            torch.full((self.n,), -1, dtype=torch.int64, device=self.images.device), -1)
        sizes = per_example_norm(closest - self.images, spec.norm).flatten().cpu().numpy().astype(np.float64)
        correct = self.correct.cpu().numpy()
        hit = found.cpu().numpy() & correct
        radii = np.where(correct, np.where(hit, sizes, np.inf), 0.0).astype(np.float32)  # (as the record keeps them)
        self.examples["minimal_radii"] = radii
        self.radii = torch.from_numpy(radii).to(self.images.device)
        self.closest = closest
        return cost

    def minimal_norm(self, spec: AttackSpec, cost: dict[str, Any]) -> MinimalNorm:
        """The summary of :meth:`search_minimal`'s radii and ``cost``, with their agreement with the fixed-eps
        worst case."""
        radii, correct = self.examples["minimal_radii"], self.correct.cpu().numpy()
        attacked = int(correct.sum())
        middle = float(np.median(radii[correct])) if attacked else math.inf
        median = middle if math.isfinite(middle) else None
        fooled = {eps: self.fixed_fooled[eps] for eps in self.eps_values}
        return MinimalNorm(spec.label, spec.norm, spec.n_steps, attacked, int(np.isfinite(radii[correct]).sum()),
                           median, cost["seconds"], cost["forwards"], cost["backwards"],
                           agreement(radii, fooled, correct))

    def _attack(self, spec: AttackSpec, eps: float, point: str, worst_fooled: torch.Tensor,
                worst_images: torch.Tensor, fooled_by: torch.Tensor, index: int) -> dict[str, Any]:
        """One attack at one eps, unit by unit (each process its share, merged in order): which examples it
        fooled and which reached their target (bool ``(n,)`` each), its seconds and passes; updates the
        worst case in place."""
        n, device = self.n, self.images.device
        merged: dict[str, Any] = {"hit": torch.zeros(n, dtype=torch.bool, device=device),
                                  "reached": torch.zeros(n, dtype=torch.bool, device=device),
                                  "seconds": 0.0, "forwards": 0, "backwards": 0}
        chunks = self.chunks[spec]
        world, rank = self.distributed.world_size, self.distributed.rank
        began = time.perf_counter()
        for first in range(0, max(len(chunks), 1), world):  # an attack without examples still ticks the bar
            mine = first + rank
            result = self._unit(spec, eps, f"{point}-{mine:05d}", mine, chunks[mine]) if mine < len(chunks) else None
            for offset, unit in enumerate(self.distributed.gather(result)):
                batch = first + offset
                if unit is None:
                    continue
                if self.store is not None and not unit.pop("stored", False):
                    self.store.save(f"{point}-{batch:05d}", unit)
                self._merge(spec, eps, chunks[batch], unit, merged, worst_fooled, worst_images, fooled_by, index)
            self.done += min(world, max(len(chunks), 1) - first) * self.weight(spec, eps)
            if self.progress is not None:
                self.progress(self.done, self.total)
        merged["seconds"] += time.perf_counter() - began
        return merged

    def _unit(self, spec: AttackSpec, eps: float, name: str, batch: int, rows: torch.Tensor) -> dict[str, Any]:
        """One batch of one attack at one eps: loaded from the store where it was committed, else run."""
        if self.store is not None:
            stored = self.store.load(name)
            if stored is not None and _unit_fits(stored, len(rows), tuple(self.images.shape[1:])):
                return {**stored, "stored": True}
        forwards, backwards = self.counter.forwards, self.counter.backwards
        gen = generator(unit_seed(self.seed, batch, spec.draw), self.images.device)
        target = self.targets[spec][rows] if spec in self.targets else None
        adv = spec.run(self.counter, self.images[rows], self.labels[rows], eps, gen, target)
        pred = batched_logits(self.counter, adv, self.batch_size).argmax(1)
        hit = pred != self.labels[rows]
        keep = hit | (rows < self.shown)  # the worst case needs the fooling images, the report the shown ones
        reached = pred == target if target is not None else torch.zeros_like(hit)
        return {"hit": hit.cpu(), "reached": reached.cpu(), "keep": keep.cpu(), "adv": adv[keep].detach().cpu(),
                "pred": pred.cpu(), "forwards": self.counter.forwards - forwards,
                "backwards": self.counter.backwards - backwards}

    def _merge(self, spec: AttackSpec, eps: float, rows: torch.Tensor, unit: dict[str, Any], merged: dict[str, Any],
               worst_fooled: torch.Tensor, worst_images: torch.Tensor, fooled_by: torch.Tensor, index: int) -> None:
        """Add one unit's result to the attack's and the worst case's."""
        device = self.images.device
        hit, keep = unit["hit"].to(device), unit["keep"].to(device)
        merged["hit"][rows] = hit
        merged["reached"][rows] = unit["reached"].to(device)
        merged["forwards"] += int(unit["forwards"])
        merged["backwards"] += int(unit["backwards"])
        adv = self.images[rows].clone()
        adv[keep] = unit["adv"].to(device)
        new = hit & ~worst_fooled[rows]
        worst_images[rows[new]] = adv[new]
        fooled_by[rows[new]] = index
        worst_fooled[rows] |= hit
        if eps == self.eps_values[-1] and index >= 0:
            self._keep_examples(spec, rows, adv, unit["pred"].to(device))

    def _keep_examples(self, spec: AttackSpec, rows: torch.Tensor, adv: torch.Tensor, pred: torch.Tensor) -> None:
        """Keep the shown examples' adversarial images and predictions at the largest eps, for the report."""
        shown = rows < self.shown
        self.examples.setdefault(f"adv_{spec.name}", self.examples["clean"].copy())
        self.examples.setdefault(f"pred_{spec.name}", self.examples["clean_pred"].copy())
        self.examples[f"adv_{spec.name}"][rows[shown].cpu().numpy()] = adv[shown].cpu().numpy()
        self.examples[f"pred_{spec.name}"][rows[shown].cpu().numpy()] = pred[shown].cpu().numpy()

    def adversarial_record(self, runnable: list[AttackSpec]) -> dict[str, Any]:
        """The worst-case adversarial images per eps, for ``adversarial.pt``."""
        record: dict[str, Any] = {"eps": torch.tensor(self.eps_values), "attacks": [spec.label for spec in runnable]}
        for key, values in self.worst.items():
            record[key] = torch.stack(values)
        return record

    def _entry(self, attack: str, eps: float, robust: torch.Tensor, *, settings: dict[str, Any],
               target_success_rate: float | None, seconds: float, attacked: int = 0, forwards: int = 0,
               backwards: int = 0) -> RobustnessEntry:
        labels, n = self.labels, self.n
        per_class: list[float | None] = []
        for k in range(self.classes):
            members = labels == k
            count = int(members.sum())
            per_class.append(int(robust[members].sum()) / count if count else None)
        initially = int(self.correct.sum())
        return RobustnessEntry(
            attack=attack, eps=eps, **settings,
            accuracy=int(robust.sum()) / n if n else float("nan"), clean_accuracy=self.clean_accuracy,
            success_rate=(initially - int(robust.sum())) / initially if initially else float("nan"),
            target_success_rate=target_success_rate, per_class=per_class, n=n, seconds=seconds,
            attacked=attacked, forwards=forwards, backwards=backwards,
        )
