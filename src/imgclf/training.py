"""Training: optimizer and schedule from the config, one epoch, and ``fit``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from imgclf.config import TrainConfig
from imgclf.data.batches import iterate_batches, num_batches
from imgclf.data.containers import DataSplits
from imgclf.evaluation import loss_and_accuracy
from imgclf.runtime import generator

Log = Callable[[str], None]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam or AdamW with the configured weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def build_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule, stepped once per batch.

    * ``onecycle``: Smith & Topin (2019), warm-up over the first 25% of steps to
      ``lr`` then cosine annealing (torch's ``OneCycleLR``).
    * ``cosine``: cosine decay from ``lr`` to 0 over all steps.
    * ``step``: multiply by ``step_gamma`` every ``step_epochs`` epochs.
    * ``constant``: none.
    """
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=0.25
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_epochs * steps_per_epoch, gamma=config.step_gamma
        )
    return None


def train_one_epoch(
    model: nn.Module,
    batches,
    *,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: nn.Module,
    progress: tqdm | None = None,
) -> tuple[float, float]:
    """One pass over ``batches``; returns mean training loss and accuracy.

    Loss and correct counts are accumulated on the device, so the loop never
    waits for the GPU inside a step.

    Args:
        model: In training mode.
        batches: Iterable of ``(images (B, C, H, W) float32 [0, 1], labels (B,) int64)``.
        optimizer, schedule, loss_fn: From :func:`build_optimizer`,
            :func:`build_schedule` and ``nn.CrossEntropyLoss``.
        progress: Optional bar, advanced once per batch.
    """
    loss_sum = correct = None
    seen = 0
    for images, labels in batches:
        logits = model(images)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():
            batch_loss = loss.detach() * labels.shape[0]
            batch_correct = (logits.argmax(1) == labels).sum()
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = batch_correct if correct is None else correct + batch_correct
        seen += labels.shape[0]
        if progress is not None:
            progress.update(1)
    if not seen:
        return math.nan, math.nan
    return loss_sum.item() / seen, correct.item() / seen


@dataclass
class TrainResult:
    """The train stage's output.

    Attributes:
        history: One dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy``,
            ``val_loss``, ``val_accuracy``, ``lr`` (at the end of the epoch), ``seconds``
            (the whole epoch) and ``train_seconds`` (its training pass alone).
        best_epoch: Epoch (1-based) whose weights the model now holds.
        best_val_accuracy: Its validation accuracy.
        seconds: Total training wall time, validation included.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    seconds: float = 0.0


def fit(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    augment: str,
    balance: str = "none",
    device: torch.device,
    seed: int,
    log: Log = print,
    quiet: bool = False,
    on_epoch: Callable[[TrainResult], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train``, validate on ``data.val`` after every epoch.

    The weights with the best validation accuracy are kept and loaded back into
    ``model`` at the end (ties go to the later epoch).

    Args:
        model: A model from :func:`imgclf.models.create_model`, on ``device``.
        data: The splits.
        config: Optimisation settings.
        augment: Augmentation preset for the training batches.
        balance: ``none``; ``weighted-loss``, weighting each class's loss by
            ``N / (K * N_k)``; or ``sampler``, drawing each epoch's examples
            with replacement with probability proportional to ``1 / N_k``.
        device: Where to train.
        seed: Seeds the batch order and augmentation.
        log: Receives one line per epoch.
        quiet: Hide the progress bar.
        on_epoch: Called after every epoch with the result so far (for
            writing the history as it grows).

    Returns:
        History and best epoch; ``model`` holds the best weights, in eval mode.
    """
    optimizer = build_optimizer(model, config)
    steps = num_batches(len(data.train), config.batch_size)
    schedule = build_schedule(optimizer, config, steps)
    counts = torch.bincount(data.train.labels, minlength=data.spec.num_classes).double()
    class_weights = sample_weights = None
    if balance == "weighted-loss":
        class_weights = torch.where(counts > 0, len(data.train) / (len(counts) * counts.clamp_min(1)), 0.0)
        class_weights = class_weights.float().to(device)
    elif balance == "sampler":
        sample_weights = (1.0 / counts.clamp_min(1))[data.train.labels]
    loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=config.label_smoothing)
    order = generator(seed)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)  # only 4-D weights change layout
    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        batches = (
            (images.contiguous(memory_format=memory_format), labels)
            for images, labels in iterate_batches(
                data.train, batch_size=config.batch_size, device=device, shuffle=True,
                generator=order, augment=augment, sample_weights=sample_weights,
            )
        )
        with tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                  leave=False, disable=True if quiet else None, dynamic_ncols=True) as bar:
            train_loss, train_acc = train_one_epoch(
                model, batches, optimizer=optimizer, schedule=schedule, loss_fn=loss_fn, progress=bar
            )
        lr = optimizer.param_groups[0]["lr"]  # after the epoch's last step
        train_seconds = time.perf_counter() - epoch_start
        model.eval()
        val_loss, val_acc = loss_and_accuracy(model, data.val, batch_size=512, device=device)
        seconds = time.perf_counter() - epoch_start
        result.history.append({
            "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
            "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr, "seconds": seconds,
            "train_seconds": train_seconds,
        })
        if val_acc >= result.best_val_accuracy:
            result.best_epoch, result.best_val_accuracy = epoch, val_acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(
            f"epoch {epoch:>3}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {lr:.2e}  {seconds:.1f} s"
        )
        result.seconds = time.perf_counter() - started
        if on_epoch is not None:
            on_epoch(result)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result
