"""The learning-rate range test: a short training run whose learning rate grows exponentially, and the
rate it suggests.

Smith, "Cyclical Learning Rates for Training Neural Networks" (WACV 2017), section 3.3: train for a
hundred or so steps while the learning rate rises from a tiny to a large value, and read off where the
loss falls fastest. The test stops once an exponential moving average of the loss (bias-corrected,
weight 0.98 on the past, as fastai and PyTorch Lightning keep it) exceeds four times its lowest value
or is not finite. The suggestion is read from a centred running median of the losses (a window of 5%
of the steps): unlike the moving average it does not lag behind the rising rate, and the explosion at
the end does not leak back into it. The suggested rate is that of the median curve's steepest descent
against ``log10(lr)`` before its minimum, Lightning's rule on a curve without lag.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.data.batches import iterate_batches
from imgclf.data.containers import DataSplits
from imgclf.errors import UsageError
from imgclf.record import LRFinderRecord
from imgclf.runtime import generator
from imgclf.training import (
    autocast_dtype,
    build_mixing,
    build_optimizer,
    class_balance,
    initialize_from_data,
    train_one_epoch,
)

#: The range test's defaults: from ``START_LR`` to ``END_LR`` in ``STEPS`` optimizer steps.
START_LR, END_LR, STEPS = 1e-7, 10.0, 100
#: Weight of the past in the loss's exponential moving average (which decides when to stop).
SMOOTHING = 0.98
#: Window of the running median the suggestion is read from, as a share of the steps (at least 5 points).
MEDIAN_WINDOW = 0.05
#: The test stops when the smoothed loss exceeds this many times its lowest value.
DIVERGENCE = 4.0


@dataclass
class LRFinderResult:
    """The range test's curve and what it found.

    Attributes:
        lrs: The learning rate of each step, rising geometrically (float, > 0).
        losses: Each step's training loss (cross-entropy of its batch).
        smoothed: The centred running median of ``losses`` (:func:`running_median`).
        summary: The suggestion, the rate of the lowest smoothed loss, why the test ended, the sweep
            asked for and the seconds (what ``metrics.json`` keeps: :class:`imgclf.record.LRFinderRecord`).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    summary: LRFinderRecord

    @property
    def suggestion(self) -> float:
        """The suggested learning rate: steepest descent of ``smoothed`` against ``log10(lr)`` before its
        minimum."""
        return self.summary.suggestion

    @property
    def minimum_lr(self) -> float:
        """The learning rate at the lowest smoothed loss (a rate to stay well below)."""
        return self.summary.minimum_lr

    @property
    def stopped(self) -> str:
        """Why the test ended: ``"reached end_lr"`` or ``"loss diverged at lr X"``."""
        return self.summary.stopped

    def rows(self) -> list[dict[str, float]]:
        """The curve as table rows: ``lr``, ``loss``, ``smoothed`` per step (``lr_find.csv``)."""
        return [{"lr": lr, "loss": loss, "smoothed": smooth}
                for lr, loss, smooth in zip(self.lrs, self.losses, self.smoothed, strict=True)]

    def describe(self) -> str:
        """One line: the suggestion, the rate of the lowest loss, the steps, why it ended and the seconds."""
        return (f"lr {self.suggestion:.3g} (steepest descent of the loss's running median); lowest at lr "
                f"{self.minimum_lr:.3g}; {len(self.lrs)} steps, {self.stopped}, {self.summary.seconds:.1f} s")


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """The centred running median of ``values`` (``(S,)``) over ``window`` points (odd; the ends repeat
    the first and last value). Returns ``(S,)`` float64."""
    half = window // 2
    padded = np.pad(np.asarray(values, dtype=np.float64), half, mode="edge")  # (S + 2 * half,)
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)  # (S,)


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """The learning rate of steepest descent of ``smoothed`` against ``log10(lrs)`` before its minimum.

    The first tenth of the sweep is left out (where the rate is too small to move the loss, the
    noise decides the slope).

    Args:
        lrs: ``(S,)`` rising learning rates, > 0.
        smoothed: ``(S,)`` smoothed losses.

    Raises:
        UsageError: If the loss never fell (fewer than 3 points from the first tenth to the minimum,
            or no negative slope there): no rate can be read off.
    """
    skip = len(lrs) // 10
    lowest = int(np.argmin(smoothed[skip:])) + skip
    if lowest - skip < 2:
        raise UsageError(f"the loss did not fall during the range test (lowest at lr {lrs[lowest]:.2g}, step "
                         f"{lowest + 1} of {len(lrs)}): start it lower (--start-lr) or check the data and model")
    slope = np.gradient(smoothed[skip:lowest + 1], np.log10(lrs[skip:lowest + 1]))  # (lowest - skip + 1,)
    steepest = int(np.argmin(slope))
    if slope[steepest] >= 0:
        raise UsageError("the loss did not fall during the range test: no learning rate can be suggested")
    return float(lrs[skip + steepest])


def lr_range_test(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    augment: str,
    balance: str = "none",
    device: torch.device,
    seed: int,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    steps: int = STEPS,
) -> LRFinderResult:
    """Run the range test on ``model`` (trained in place: pass a copy to keep it) with the run's own
    optimizer, loss (class weights, label smoothing), augmentation, MixUp/CutMix, precision and gradient
    clipping; the schedule is the test's own.

    Data-dependent layers are initialized first, as :func:`imgclf.training.fit` does. Each step uses
    the next training batch (the split is shuffled again when it runs out). Step ``i``
    of ``steps`` trains at ``start_lr * (end_lr / start_lr) ** (i / (steps - 1))``; every parameter
    group's rate keeps its ratio to ``config.lr``.

    Args:
        model: In any mode; left in training mode with the weights the test reached.
        data: The splits; only ``train`` is read.
        config: The run's optimisation settings (``config.lr`` a number: the groups' reference rate).
        augment, balance: As for :func:`imgclf.training.fit`.
        device, seed: Where, and the seed of the batch order and augmentation.
        start_lr, end_lr: The sweep's ends, ``0 < start_lr < end_lr``.
        steps: Optimizer steps, at least 10.

    Returns:
        The curve and the suggestion.

    Raises:
        UsageError: If the sweep's settings are invalid, or the loss never fell.
    """
    if not 0 < start_lr < end_lr or steps < 10:
        raise UsageError(f"the range test needs 0 < start lr < end lr and at least 10 steps; got start {start_lr:g}, "
                         f"end {end_lr:g}, {steps} steps")
    began = time.perf_counter()
    initialize_from_data(model, data, device=device, seed=seed)  # as training does (fast-cnn's whitening)
    reference = 1.0 if isinstance(config.lr, str) else float(config.lr)  # "auto": every group at the test's rate
    optimizer = build_optimizer(model, dataclasses.replace(config, lr=reference))
    lrs = start_lr * (end_lr / start_lr) ** (np.arange(steps) / (steps - 1))  # (steps,) geometric
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lrs[min(i, steps - 1)] / reference)
    class_weights, sample_weights = class_balance(data, balance, device)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=config.label_smoothing)
    amp_dtype = autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format).train()
    order = generator(seed)
    sweep = _Sweep(lrs)

    def batches() -> Any:
        while True:
            for images, labels in iterate_batches(data.train, batch_size=config.batch_size, device=device,
                                                  shuffle=True, generator=order, augment=augment,
                                                  sample_weights=sample_weights):
                if len(sweep.losses) >= steps or sweep.stopped != "reached end_lr":
                    return
                yield images.contiguous(memory_format=memory_format), labels

    train_one_epoch(model, batches(), optimizer=optimizer, schedule=schedule, loss_fn=loss_fn,
                    mixing=build_mixing(config, data.spec.num_classes), amp_dtype=amp_dtype, scaler=scaler,
                    grad_clip=config.grad_clip, on_step=sweep.record)
    return sweep.result(start_lr=start_lr, end_lr=end_lr, steps=steps, seconds=time.perf_counter() - began)


class _Sweep:
    """The range test's losses as they come, the divergence stop, and the result.

    Args:
        lrs: The learning rate of each step, ``float64`` ``(steps,)``.
    """

    def __init__(self, lrs: np.ndarray):
        self.lrs = lrs
        self.losses: list[float] = []
        self.average, self.best, self.stopped = 0.0, float("inf"), "reached end_lr"

    def record(self, loss: torch.Tensor, _lr: float) -> None:
        """One step's loss; the test stops once the bias-corrected moving average exceeds
        :data:`DIVERGENCE` times its best value (or is not finite)."""
        value = float(loss)
        self.losses.append(value)
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * value
        corrected = self.average / (1 - SMOOTHING ** len(self.losses))  # bias correction of the zero start
        self.best = min(self.best, corrected)
        if not np.isfinite(corrected) or corrected > DIVERGENCE * self.best:
            self.stopped = f"loss diverged at lr {self.lrs[len(self.losses) - 1]:.3g}"

    def result(self, *, start_lr: float, end_lr: float, steps: int, seconds: float) -> LRFinderResult:
        """The curve (a running median of the finite losses) and the suggestion."""
        done, lrs = len(self.losses), self.lrs
        window = max(5, int(MEDIAN_WINDOW * steps) // 2 * 2 + 1)  # odd
        raw = np.asarray(self.losses)
        finite = np.isfinite(raw)
        curve_lrs = lrs[:done][finite]
        curve = running_median(raw[finite], window)
        smoothed = np.full(done, np.nan)
        smoothed[finite] = curve
        return LRFinderResult(
            lrs=[float(v) for v in lrs[:done]], losses=self.losses, smoothed=[float(v) for v in smoothed],
            summary=LRFinderRecord(suggestion=suggest(curve_lrs, curve),
                                   minimum_lr=float(curve_lrs[int(np.argmin(curve))]), stopped=self.stopped,
                                   start_lr=start_lr, end_lr=end_lr, steps=steps, seconds=seconds),
        )
