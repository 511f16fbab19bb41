"""Robustness of any ``nn.Module`` from Python: :func:`evaluate_robustness`, for notebooks and scripts.

It runs the same evaluation as ``imgclf attack`` (every attack at every eps, the per-example worst case,
the sanity checks and probes, the cost in passes of the model) on images and labels the caller gives,
and returns a :class:`RobustnessReport`: plain tables (lists of dicts, no pandas) that render as HTML in
Jupyter and can be written as a run folder with its ``report.html``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from imgclf.attacks import RobustnessResult, robustness
from imgclf.attacks.registry import PLAN_TOLERANCE
from imgclf.attacks.results import MinimalNorm
from imgclf.config import config_from_dict
from imgclf.errors import UsageError
from imgclf.runtime import progress_callback
from imgclf.settings import resolve


@dataclasses.dataclass
class RobustnessReport:
    """What :func:`evaluate_robustness` found, as plain data.

    Attributes:
        rows: One dict per attack and eps, then the worst case: ``attack``, ``eps``, ``accuracy``
            (robust accuracy, a fraction), ``success_rate``, ``forwards_per_example``,
            ``backwards_per_example``, ``seconds``.
        checks: The sanity checks: ``name``, ``status`` (passed, failed, not run), ``detail``, ``meaning``.
        clean_accuracy: Top-1 accuracy of the evaluated images without attack, in ``[0, 1]``.
        n: Images evaluated. skipped: Attacks not run, with why.
        result: The full result (per-example outcomes, adversarial images) for further work.
        class_names: Names of the classes, for the run folder.
    """

    rows: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    clean_accuracy: float
    n: int
    skipped: list[str]
    result: RobustnessResult
    class_names: list[str]
    norm: str

    @property
    def worst_case(self) -> dict[float, float]:
        """Worst-case robust accuracy by eps."""
        return {row["eps"]: row["accuracy"] for row in self.rows if row["attack"] == "worst-case"}

    @property
    def converged(self) -> bool:
        """Whether the converging plan converged at every eps it ran at (False where it did not run)."""
        return bool(self.result.plan) and all(outcome.converged for outcome in self.result.plan)

    @property
    def advice(self) -> list[str]:
        """What to try where a check failed or the plan did not converge (:func:`imgclf.attacks.checks.advice`)."""
        from imgclf.attacks.checks import advice

        return advice(self.checks, self.result.plan, python=True,
                      attacks=[entry.attack for entry in self.result.entries])

    @property
    def minimal_norm(self) -> MinimalNorm | None:
        """The minimal-norm attack's summary (median smallest radius, agreement with the fixed-eps worst case),
        where it ran."""
        return self.result.minimal_norm

    @property
    def failed_checks(self) -> list[str]:
        """The names of the failed checks (empty: nothing suggests false robustness)."""
        return [check["name"] for check in self.checks if check["status"] == "failed"]

    def __repr__(self) -> str:
        return (f"RobustnessReport(n={self.n}, norm={self.norm!r}, worst_case={self.worst_case}, "
                f"failed_checks={self.failed_checks})")

    def _repr_html_(self) -> str:
        """The evaluation as HTML (Jupyter shows this): :meth:`RobustnessResult.html` with what to try."""
        shown = self.result.html(f"Robustness evaluation ({self.norm} threat model)")
        shown.notes += [f"what to try: {note}" for note in self.advice]
        return shown.render()

    def save(self, out: str | Path) -> Path:
        """Write a run folder (``metrics.json`` with this evaluation, its files under ``evaluations/KEY/``, a
        ``config.yaml`` of the attack settings) and its ``report.html``; returns the folder.

        Raises:
            UsageError: If ``out`` exists and is not empty.
        """
        from imgclf.record import SCHEMA_VERSION, AttackRecord, Evaluation, evaluation_folder, evaluation_key, section
        from imgclf.report import write_report
        from imgclf.run_folder import RunFolder, atomic_write_text

        folder = RunFolder.create(out, default_name="robustness")
        result = self.result
        asked = {"attacks": sorted({row["attack"] for row in self.rows}), "n": self.n, "seed": result.seed}
        key = evaluation_key(asked)
        RunFolder(evaluation_folder(folder.path, key)).write_arrays("adversarial.npz", **result.examples)
        attack = AttackRecord(result.n, result.clean_accuracy, result.seed, self.norm,
                              [a for a in dict.fromkeys(row["attack"] for row in self.rows) if a != "worst-case"],
                              "the images given to imgclf.evaluate_robustness", skipped=result.skipped,
                              checks=result.checks, warnings=result.warnings, plan=result.plan,
                              minimal_norm=result.minimal_norm)
        shape = list(result.examples["clean"].shape[1:]) if "clean" in result.examples else []
        folder.write_json("metrics.json", {
            "schema_version": SCHEMA_VERSION, "dataset": "images given in Python", "model": "a torch.nn.Module",
            "num_classes": len(self.class_names), "class_names": self.class_names, "seed": result.seed,
            "data": {"train": 0, "val": 0, "test": self.n, "input_shape": shape},
            "evaluations": [section(Evaluation(key, asked, attack, result.entries, result.seconds))],
            "timing": {"attack_seconds": result.seconds},
        })
        atomic_write_text(folder.config_path, f"# made by imgclf.evaluate_robustness\nattack: {asked}\n")
        write_report(folder)
        return folder.path


def evaluate_robustness(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attacks: Sequence[str] = ("auto",),
    eps: str | float | Sequence[str | float] | None = None,
    norm: str = "linf",
    steps: int | None = None,
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    class_names: Sequence[str] | None = None,
    plan_tolerance: float = PLAN_TOLERANCE,
    minimal_norm: bool = True,
    surrogate: torch.nn.Module | None = None,
    quiet: bool = False,
    **options: Any,
) -> RobustnessReport:
    """Robust accuracy of ``model`` on ``images`` under ``attacks`` at each ``eps``, with the sanity checks.

    Args:
        model: Maps ``float32`` ``(N, C, H, W)`` images in ``[0, 1]`` to logits ``(N, K)``; put in eval mode
            (and never changed otherwise). Normalization belongs inside it, so eps stays in pixel units.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``.
        labels: ``int64`` ``(N,)`` in ``[0, K)``.
        attacks: Attack names or presets (``imgclf attacks``): ``("auto",)`` is FGSM and PGD-20 beside the
            converging plan (``"plan"``: APGD-CE, then escalations until they find nothing more), ``("quick",)``
            FGSM and PGD-20 alone, ``("full",)`` the AutoAttack ensemble.
        eps: Radii in pixel units: ``"0,8/255"``, ``0.3``, ``[0, 0.1]`` or a range ``"0:0.3:0.1"``; None: the
            defaults for the images' channels and the norm.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        steps, restarts: As ``imgclf attack``'s flags (None: each attack's own steps).
        options: The attacks' own options by name, e.g. ``queries=5000`` for Square (``imgclf attacks``).
        batch_size: Images per attack batch. seed: Seeds every random draw.
        plan_tolerance: The converging plan stops when an escalation fools at most this fraction of the examples
            still standing, in ``[0, 1)`` (see :mod:`imgclf.attacks.plan`).
        minimal_norm: Also run FMN once without a bound: each example's smallest adversarial radius
            (``report.result.examples["minimal_radii"]``), the continuous robustness curve and its median
            (``report.minimal_norm``).
        device: Where to compute; None: the model's device.
        class_names: Names of the ``K`` classes (for the run folder); None: ``"0"``, ``"1"``, ...
        surrogate: A differentiable stand-in for ``model`` (the same network without a non-differentiable part)
            on which the transfer check makes its adversarial examples; None: ``model`` with its unknown
            parameter-free modules replaced by the identity.
        quiet: No progress bar (it shows in a notebook, and on a terminal).

    Returns:
        A :class:`RobustnessReport`.

    Raises:
        UsageError: On an unknown attack, a bad eps or norm, no images, or images and labels that do not match.
    """
    if images.ndim != 4 or images.dtype != torch.float32 or labels.shape != images.shape[:1]:
        raise UsageError(f"images must be float32 (N, C, H, W) and labels (N,), got {images.dtype} "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if not len(images):
        raise UsageError("no images to evaluate: images and labels are empty")
    if float(images.min()) < 0 or float(images.max()) > 1:
        raise UsageError("images must be in [0, 1] (pixel space; normalization belongs inside the model)")
    eps_values = None if eps is None else [eps] if isinstance(eps, int | float | str) else list(eps)
    values = {"attack": {"attacks": list(attacks), "norm": norm, "steps": steps, "restarts": restarts,
                         **options, "batch_size": batch_size, "plan_tolerance": plan_tolerance,
                         "minimal_norm": minimal_norm,
                         "eps": None if eps_values is None else [str(e) for e in eps_values]}, "seed": seed}
    settings = resolve(config_from_dict(values), channels=images.shape[1], class_names=None)
    parameter = next(iter(model.parameters()), None)
    target = torch.device(device) if device is not None else parameter.device if parameter is not None else \
        torch.device("cpu")
    model.eval()
    with progress_callback(desc="attacks", unit="batch", leave=False, quiet=quiet) as advance:
        result = robustness(model, images, labels.long(), attacks=list(settings.attacks),
                            eps_values=settings.eps_values, device=target, batch_size=batch_size, seed=seed,
                            plan=list(settings.plan), tolerance=settings.config.attack.plan_tolerance,
                            minimal_norm=settings.minimal_norm, surrogate=surrogate, progress=advance)
    rows = [{"attack": e.attack, "eps": e.eps, "accuracy": e.accuracy, "success_rate": e.success_rate,
             "forwards_per_example": e.forwards_per_example, "backwards_per_example": e.backwards_per_example,
             "seconds": e.seconds}
            for e in result.entries]
    classes = int(labels.max()) + 1
    names = list(class_names) if class_names is not None else [str(k) for k in range(classes)]
    return RobustnessReport(rows, result.checks, result.clean_accuracy, result.n, result.skipped, result, names,
                            norm)
