"""Catastrophic overfitting caught while it happens: the probes of adversarial training and what follows a collapse.

Every robust validation of an adversarial training run is a probe: PGD (and, for the single-step recipes,
FGSM) accuracy on the same fixed validation subset, after every epoch and, with ``adversarial.probe_every``,
every N optimizer steps inside it. After each probe the recipe's guard
(:meth:`~imgclf.defenses.recipes.TrainingRecipe.guard`) reads the probes so far; when it fires, training
does what ``adversarial.on_overfit`` says (:data:`~imgclf.defenses.recipes.OVERFIT_ACTIONS`): stops, rolls
back to the last good epoch's training state, or restarts from there with a smaller attack step. This module
holds the probes and the bookkeeping; :func:`imgclf.training.fit` acts on it. It imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgclf.defenses.recipes import RESTART_STEP_FACTOR
from imgclf.errors import UsageError, first_line

#: ``guard(probes) -> sentence or None``: a recipe's :meth:`~imgclf.defenses.recipes.TrainingRecipe.guard`.
Guard = Callable[[Sequence[Mapping[str, float]]], "str | None"]


class Collapsed(Exception):
    """Raised inside an epoch when a probe there finds catastrophic overfitting; ``reason`` is the guard's
    sentence."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class OverfitMonitor:
    """The probes of one adversarial training run and what happened at each collapse.

    Attributes:
        guard: The recipe's guard.
        action: ``"stop"``, ``"rollback"`` or ``"restart"``.
        retries: Rollbacks or restarts allowed before a collapse stops training.
        every: Probe every this many optimizer steps inside an epoch too (0: after each epoch alone).
        probes: One row per probe, in order: ``epoch`` (1-based), ``progress`` (epochs trained at the probe,
            fractional inside an epoch), ``step`` (optimizer steps into the epoch), ``train_eps`` (pixel units),
            ``robust_val_accuracy``, ``<attack>_val_accuracy`` (fractions in [0, 1]) and ``kept`` (1.0; 0.0 for
            the probes of an epoch that was rolled back).
        events: One sentence per collapse: what the guard saw and what training did.
        retries_used: Rollbacks and restarts so far.
        good: The training state (:meth:`imgclf.training._Loop.state`) to go back to: the last epoch that
            ended without a collapse, or the start; None under ``stop``.
        pending: A collapse seen inside the first epoch under ``stop``, told when that epoch ends.
    """

    guard: Guard
    action: str = "stop"
    retries: int = 2
    every: int = 0
    probes: list[dict[str, float]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    retries_used: int = 0
    good: dict[str, Any] | None = None
    pending: str | None = None

    def record(self, row: Mapping[str, float], *, epoch: int, progress: float, step: int,
               train_eps: float) -> str | None:
        """Add one probe's accuracies (``row``: ``robust_val_accuracy`` and the extra attacks'); returns the
        guard's sentence when it sees catastrophic overfitting in the probes kept so far."""
        self.probes.append({"epoch": float(epoch), "progress": progress, "step": float(step),
                            "train_eps": train_eps, **row, "kept": 1.0})
        return self.guard([probe for probe in self.probes if probe["kept"]])

    @property
    def recovers(self) -> bool:
        """Whether the next collapse is met by a rollback or restart (not by stopping)."""
        return self.action != "stop" and self.good is not None and self.retries_used < self.retries

    def recovered(self, reason: str, *, back_to: int, step_scale: float) -> str:
        """Book one rollback or restart to the end of epoch ``back_to`` (0: the start): the probes after it
        stop counting, and the sentence for the log and the record is returned."""
        self.retries_used += 1
        for probe in self.probes:
            if probe["progress"] > back_to:
                probe["kept"] = 0.0
        where = f"the end of epoch {back_to}" if back_to else "the start"
        then = (f"restarted from {where} with the attack's step size x{step_scale:g}" if self.action == "restart"
                else f"rolled back to {where}, with fresh random draws")
        event = f"{reason}; {then} ({self.retries_used} of {self.retries})"
        self.events.append(event)
        return event

    def state_dict(self) -> dict[str, Any]:
        """The probes, events and retries, for the training state (:class:`imgclf.record.TrainState`)."""
        return {"probes": self.probes, "events": self.events, "retries_used": self.retries_used}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (None: a state of an earlier release, with no probes).

        Raises:
            UsageError: If ``state`` is not what :meth:`state_dict` writes (a damaged training state).
        """
        if state is None:
            return
        try:
            probes = [{str(key): float(value) for key, value in probe.items()} for probe in state["probes"]]
            events, retries_used = [str(event) for event in state["events"]], int(state["retries_used"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UsageError(f"the training state's overfitting monitor is damaged ({first_line(error)}); start the "
                             "run again instead of resuming it") from None
        self.probes, self.events, self.retries_used = probes, events, retries_used


def next_step_scale(scale: float, action: str) -> float:
    """The attack's step-size factor after a collapse met by ``action``: ``restart`` multiplies it by
    :data:`~imgclf.defenses.recipes.RESTART_STEP_FACTOR`; the others keep it."""
    return scale * RESTART_STEP_FACTOR if action == "restart" else scale
