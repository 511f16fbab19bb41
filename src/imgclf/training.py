"""Training: optimizer and schedule from the config, one epoch, and ``fit``.

``fit`` trains with the configured optimizer, schedule, augmentation, class
balancing, MixUp/CutMix, gradient clipping, mixed precision and an optional
exponential moving average of the weights; validates after every epoch; keeps
the best weights; stops early when asked; and after every epoch hands a
complete training state to a callback, from which :func:`fit` can resume and
reach, on the CPU with the same seed, exactly the weights of an uninterrupted run.
Under ``torchrun`` it trains with distributed data parallel (see
:mod:`imgclf.distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from imgclf.config import AdversarialConfig, TrainConfig
from imgclf.data.batches import iterate_batches, num_batches
from imgclf.data.containers import DataSplits
from imgclf.defenses import Adversary, RobustValidation, warmup_steps
from imgclf.defenses.monitor import Collapsed, OverfitMonitor, next_step_scale
from imgclf.distributed import Distributed
from imgclf.errors import TrainingDivergedError, UsageError, first_line
from imgclf.evaluation import loss_and_accuracy
from imgclf.record import TrainState
from imgclf.runtime import generator, progress

Log = Callable[[str], None]


def learning_rate(config: TrainConfig) -> float:
    """``config.lr`` as a number.

    Raises:
        ValueError: For ``"auto"``, which the range test (:mod:`imgclf.lr_finder`) turns into a number
            before training.
    """
    if isinstance(config.lr, str):
        raise ValueError(f"train.lr is {config.lr!r}: run the range test (imgclf.lr_finder.lr_range_test) and "
                         "set its suggestion before training")
    return float(config.lr)


def head_parameter_names(model: nn.Module) -> set[str]:
    """The names of the parameters of ``model``'s classifier head (:func:`imgclf.models.classifier_head`)."""
    from imgclf.models.classifier import classifier_head

    head = classifier_head(model)
    return {name for name, _ in model.named_parameters() if name.startswith(head + ".")}


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one, or under fine-tuning (``freeze_epochs`` or a
    ``backbone_lr_scale`` below 1) the backbone at ``backbone_lr_scale * lr`` and the classifier head at
    ``lr`` (discriminative learning rates, Howard and Ruder 2018). Parameters that do not require
    gradients when it is called are left out.

    Raises:
        ValueError: If ``config.lr`` is ``"auto"`` (see :func:`learning_rate`).
        UsageError: Fine-tuning a model without a linear classifier head.
    """
    lr = learning_rate(config)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not config.freeze_epochs and config.backbone_lr_scale == 1:
        return [{"params": [p for _, p in trainable], "lr": lr}]
    head = head_parameter_names(model)
    return [{"params": [p for name, p in trainable if name not in head], "lr": lr * config.backbone_lr_scale,
             "name": "backbone"},
            {"params": [p for name, p in trainable if name in head], "lr": lr, "name": "head"}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam or AdamW with the configured weight decay, over
    :func:`parameter_groups`.

    Raises:
        ValueError: If ``config.lr`` is ``"auto"`` (see :func:`learning_rate`).
    """
    params = parameter_groups(model, config)
    lr = learning_rate(config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


#: Fewest optimizer steps for which ``onecycle`` warms up; shorter runs decay by cosine.
MIN_ONECYCLE_STEPS = 8


def build_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule, stepped once per batch.

    * ``onecycle``: Smith & Topin (2019), warm-up over the first 25% of steps to
      each parameter group's ``lr`` then cosine annealing (torch's ``OneCycleLR``). A run of fewer than
      :data:`MIN_ONECYCLE_STEPS` steps has no room for a warm-up (and torch's
      schedule divides by zero at exactly 4): it gets the cosine decay.
    * ``cosine``: cosine decay from ``lr`` to 0 over all steps.
    * ``cyclic``: linearly from 0 up to ``lr`` after ``cyclic_peak`` of all steps, then down to 0 at the end
      (the triangle of Wong et al. 2020's code, Smith 2017: its MNIST script peaks at 2/5, its CIFAR-10 one at
      1/2).
    * ``step``: multiply by ``step_gamma`` every ``step_epochs`` epochs, or at each of ``milestones``.
    * ``constant``: none.
    """
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle" and total >= MIN_ONECYCLE_STEPS:
        peaks = [group["lr"] for group in optimizer.param_groups]  # each group's own (fine-tuning: two)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=0.25)
    if config.schedule in ("cosine", "onecycle"):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "cyclic":
        peak = max(1, round(config.cyclic_peak * total))  # in optimizer steps

        def triangle(step: int) -> float:  # the factor after ``step`` steps, for the next one
            done = step + 1
            return done / peak if done <= peak else max(0.0, (total - done) / max(1, total - peak))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, triangle)
    if config.schedule == "step" and config.milestones:
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[m * steps_per_epoch for m in sorted(config.milestones)], gamma=config.step_gamma)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_epochs * steps_per_epoch, gamma=config.step_gamma
        )
    return None


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``train.amp`` on ``device`` (None: full fp32).

    ``auto`` is bf16 on a CUDA GPU that supports it, fp16 on an older GPU, and
    off on the CPU.
    """
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def build_mixing(config: TrainConfig, num_classes: int) -> Callable | None:
    """MixUp / CutMix from torchvision's v2 transforms (soft labels out), or None."""
    if not (config.mixup or config.cutmix):
        return None
    from torchvision.transforms import v2

    options = []
    if config.mixup:
        options.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
    if config.cutmix:
        options.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    return options[0] if len(options) == 1 else v2.RandomChoice(options)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: nn.Module,
    progress: tqdm | None = None,
    mixing: Callable | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    on_step: Callable[[torch.Tensor, float], None] | None = None,
    adversary: Adversary | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over ``batches``.

    Loss and correct counts are accumulated on the device, so the loop never
    waits for the GPU inside a step.

    Args:
        model: In training mode.
        batches: ``(images (B, C, H, W) float32 [0, 1], labels (B,) int64)``.
        optimizer, schedule, loss_fn: From :func:`build_optimizer`,
            :func:`build_schedule` and ``nn.CrossEntropyLoss``.
        progress: Optional bar, advanced once per batch; it shows the running loss and accuracy.
        mixing: MixUp/CutMix (:func:`build_mixing`); accuracy is then against
            each mixed example's dominant class.
        amp_dtype: Autocast dtype (None for fp32); ``scaler`` for fp16.
        grad_clip: Max global gradient norm (0: no clipping).
        ema: Averaged model updated after every step.
        on_step: Called after every step with the batch loss (a detached device
            tensor) and the learning rate.
        adversary: Adversarial training (:class:`imgclf.defenses.Adversary`):
            each batch is attacked (eval mode, fp32) and trained on with the
            recipe's loss; accuracy is then on the adversarial examples.

    Returns:
        ``(summed loss, correct count)`` as device tensors, and the example count.
    """
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels in batches:
        targets = labels
        if mixing is not None:
            images, targets = mixing(images, labels)
            labels = targets.argmax(1)
        adversarial = adversary.perturb(images, labels) if adversary is not None else None
        precision = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with precision:
            if adversary is not None and adversarial is not None:
                logits, loss = adversary.loss(model, images, adversarial, targets, loss_fn)
            else:
                logits = model(images)
                loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if schedule is not None:
            schedule.step()
        if ema is not None:
            ema.update_parameters(model)
        if on_step is not None:
            on_step(loss.detach(), optimizer.param_groups[0]["lr"])
        with torch.no_grad():
            loss_sum += loss.detach() * labels.shape[0]
            correct += (logits.argmax(1) == labels).sum()
        seen += labels.shape[0]
        if progress is not None:
            progress.update(1)
            if not progress.disable and (progress.n % 10 == 0 or progress.n == progress.total):  # (syncs the GPU)
                progress.set_postfix_str(f"loss {float(loss_sum) / seen:.4f}  acc {float(correct) / seen:.4f}",
                                         refresh=False)
    return loss_sum, correct, seen


@dataclass
class TrainResult:
    """The train stage's output.

    Attributes:
        history: One dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy``,
            ``val_loss``, ``val_accuracy``, ``lr`` (at the end of the epoch; fine-tuning: the head's), ``seconds``
            (the whole epoch) and ``train_seconds`` (its training pass alone).
            Adversarial training adds ``robust_val_accuracy`` (PGD on a fixed
            validation subset at the full eps), ``train_eps`` (the warmed-up eps
            of the epoch's last batch) and, for the single-step recipes, ``fgsm_val_accuracy``;
            its ``train_accuracy`` is on the adversarial training examples.
        best_epoch: Epoch (1-based) whose weights the model now holds: the best
            validation accuracy, or under adversarial training the best robust
            validation accuracy.
        best_val_accuracy: Its validation accuracy.
        best_robust_val_accuracy: Its robust validation accuracy (None without
            adversarial training).
        catastrophic_overfitting: Why the recipe's guard stopped training (the single-step recipes:
            catastrophic overfitting), or None.
        probes: Adversarial training: every robust validation, after each epoch and inside epochs
            (:attr:`imgclf.defenses.OverfitMonitor.probes`).
        overfit_events: Each rollback or restart after catastrophic overfitting, in a sentence.
        seconds: Total training wall time, validation included (over all
            sessions of a resumed run).
        stopped_early: True when early stopping ended the run.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    seconds: float = 0.0
    stopped_early: bool = False
    best_robust_val_accuracy: float | None = None
    catastrophic_overfitting: str | None = None
    probes: list[dict[str, float]] = field(default_factory=list)
    overfit_events: list[str] = field(default_factory=list)


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def initialize_from_data(model: nn.Module, data: DataSplits, *, device: torch.device, seed: int) -> None:
    """Let data-dependent layers (fast-cnn's whitening) see up to 5,000 seeded, normalized training images."""
    initialize = getattr(getattr(model, "body", None), "initialize_from_data", None)
    normalize = getattr(model, "normalize", None)
    if initialize is not None and callable(normalize):
        rows = torch.randperm(len(data.train), generator=generator(seed))[:5000].numpy()
        with torch.no_grad():
            initialize(normalize(data.train.float_images(rows).to(device)))


def class_balance(data: DataSplits, balance: str, device: torch.device) -> tuple[torch.Tensor | None,
                                                                                   torch.Tensor | None]:
    """``(class weights (K,) float32 on device, sample weights (N_train,) float64)`` for ``balance``
    (``weighted-loss``: ``N / (K * N_k)``; ``sampler``: ``1 / N_k`` per example); None where unused."""
    counts = torch.bincount(data.train.labels, minlength=data.spec.num_classes).double()
    if balance == "weighted-loss":
        weights = torch.where(counts > 0, len(data.train) / (len(counts) * counts.clamp_min(1)), 0.0)
        return weights.float().to(device), None
    if balance == "sampler":
        return None, (1.0 / counts.clamp_min(1))[data.train.labels]
    return None, None


@dataclass
class _Loop:
    """What one call of :func:`fit` steps through, built once by :func:`_build_loop`."""

    model: nn.Module
    train_model: nn.Module  # the model compiled and wrapped for DDP, as the training step calls it
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None
    loss_fn: nn.Module
    steps: int  # batches per epoch (of this process's share)
    memory_format: torch.memory_format
    sample_weights: torch.Tensor | None
    ema: torch.optim.swa_utils.AveragedModel | None
    mixing: Callable | None
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    adversary: Adversary | None
    robust_val: RobustValidation | None
    order: torch.Generator  # the batch order
    backbone: list[nn.Parameter] = field(default_factory=list)  # fine-tuning: what freezing stops
    backbone_bn: list[nn.Module] = field(default_factory=list)  # fine-tuning: the backbone's BatchNorm layers
    frozen_bn: list[nn.Module] = field(default_factory=list)  # kept in eval mode this epoch
    monitor: OverfitMonitor | None = None  # adversarial training: the probes and the catastrophic-overfitting guard

    @property
    def evaluated(self) -> nn.Module:
        """The weights validated and kept: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state(self, result: TrainResult, *, epoch: int, epochs: int, stale: int, stop: bool,
              best_state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        """The whole training state after ``epoch`` of ``epochs`` (:class:`imgclf.record.TrainState` as a dict of
        tensors and plain values; :meth:`restore` reads it)."""
        return TrainState(
            epoch=epoch, epochs=epochs, stale=stale, stopped_early=stop,
            model=_clone_state(self.model), optimizer=self.optimizer.state_dict(),
            schedule=self.schedule.state_dict() if self.schedule is not None else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            order_rng=self.order.get_state(), torch_rng=torch.get_rng_state(),
            best_state=best_state, history=result.history, best_epoch=result.best_epoch,
            best_val_accuracy=result.best_val_accuracy, seconds=result.seconds,
            best_robust_val_accuracy=result.best_robust_val_accuracy,
            adversary=self.adversary.state_dict() if self.adversary is not None else None,
            overfit=self.monitor.state_dict() if self.monitor is not None else None,
        ).to_dict()

    def restore(self, state: dict[str, Any], *, schedule: bool = True, streams: bool = True
                ) -> tuple[TrainResult, dict[str, torch.Tensor], int, int]:
        """Load a :meth:`state`; returns the result so far, the best weights, the next epoch and the stale count.

        Args:
            schedule: Load the learning-rate schedule's position too (False: the caller builds a new one).
            streams: Load the random streams (batch order, global, the adversary's) too (False: they go on
                from where they are, as after a rollback, which must not replay the collapse).

        Raises:
            UsageError: If the state is not this model's and these settings' (other shapes, another
                optimizer or schedule, random states that are not generator states).
        """
        kept = None if streams else (self.order.get_state(), torch.get_rng_state(),
                                     self.adversary.generator.get_state() if self.adversary is not None else None)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.schedule is not None and schedule:
                self.schedule.load_state_dict(state["schedule"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.order.set_state(state["order_rng"])
            torch.set_rng_state(state["torch_rng"])
            if self.adversary is not None:
                self.adversary.load_state_dict(state["adversary"])
            if kept is not None:
                self.order.set_state(kept[0])
                torch.set_rng_state(kept[1])
                if self.adversary is not None and kept[2] is not None:
                    self.adversary.generator.set_state(kept[2])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise UsageError(f"the training state does not belong to this run's model and settings "
                             f"({first_line(error)}); start the run again instead of resuming it") from None
        result = TrainResult(list(state["history"]), state["best_epoch"], state["best_val_accuracy"],
                             state["seconds"], best_robust_val_accuracy=state.get("best_robust_val_accuracy"))
        return result, state["best_state"], state["epoch"] + 1, state["stale"]

    def set_frozen(self, frozen: bool, *, freeze_bn: bool) -> None:
        """Fine-tuning: stop (or restart) the backbone's training, leaving the classifier head trained;
        with ``freeze_bn`` the backbone's BatchNorm layers also keep their running statistics while frozen."""
        for parameter in self.backbone:
            parameter.requires_grad_(not frozen)
        self.frozen_bn = self.backbone_bn if frozen and freeze_bn else []

    def restart_schedule(self, model: nn.Module, config: TrainConfig, epochs: int) -> None:
        """A new learning-rate schedule of ``config.schedule``'s kind over ``epochs`` more epochs, from each
        parameter group's configured learning rate (the restored optimizer holds the last one of the
        earlier schedule, and a chained schedule such as cosine would start from it)."""
        for group, fresh in zip(self.optimizer.param_groups, build_optimizer(model, config).param_groups,
                                strict=True):
            group["lr"] = fresh["lr"]
            for key in ("initial_lr", "max_lr", "min_lr"):  # set again by the new schedule
                group.pop(key, None)
        self.schedule = build_schedule(self.optimizer, dataclasses.replace(config, epochs=epochs), self.steps)

    def epoch(self, epoch: int, data: DataSplits, config: TrainConfig, *, augment: str, device: torch.device,
              dist: Distributed, quiet: bool, on_step: Callable[[torch.Tensor, float], None] | None
              ) -> tuple[dict[str, float], float, str | None]:
        """Train one epoch and validate: the history row without ``lr`` and ``seconds``, the seconds of
        the training pass alone, and the guard's sentence where the epoch's last probe sees catastrophic
        overfitting.

        Raises:
            Collapsed: Where a probe inside the epoch (``adversarial.probe_every``) sees it.
        """
        began = time.perf_counter()
        self.model.train()
        for module in self.frozen_bn:
            module.eval()
        batches = (
            (images.contiguous(memory_format=self.memory_format), labels)
            for images, labels in iterate_batches(
                data.train, batch_size=config.batch_size, device=device, shuffle=True, generator=self.order,
                augment=augment, sample_weights=self.sample_weights, shard=dist.shard,
            )
        )
        with progress(total=self.steps, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                      quiet=quiet or not dist.is_main) as bar:
            loss_sum, correct, seen = train_one_epoch(
                self.train_model, batches, optimizer=self.optimizer, schedule=self.schedule, loss_fn=self.loss_fn,
                progress=bar, mixing=self.mixing, amp_dtype=self.amp_dtype, scaler=self.scaler,
                grad_clip=config.grad_clip, ema=self.ema, on_step=self.probing(epoch, on_step),
                adversary=self.adversary,
            )
        total_loss, total_correct, seen = dist.sum(loss_sum, correct, seen)  # over all processes
        train_loss, train_acc = (total_loss / seen, total_correct / seen) if seen else (math.nan, math.nan)
        train_seconds = time.perf_counter() - began
        self.evaluated.eval()
        val_loss, val_acc = loss_and_accuracy(self.evaluated, data.val, batch_size=512, device=device)
        row: dict[str, float] = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                                 "val_loss": val_loss, "val_accuracy": val_acc}
        collapse = None
        if self.robust_val is not None and self.adversary is not None:
            found, collapse = self.probe(epoch, self.steps)
            row.update(found)
        if self.monitor is not None and self.monitor.pending is not None:
            collapse, self.monitor.pending = self.monitor.pending, None
        return row, train_seconds, collapse

    def probe(self, epoch: int, step: int) -> tuple[dict[str, float], str | None]:
        """The robust validation ``step`` optimizer steps into ``epoch``: ``robust_val_accuracy``, the recipe's
        extra attacks' accuracies and ``train_eps``, and the guard's sentence where the probes so far show
        catastrophic overfitting. The model is validated in eval mode and left in the mode it was in."""
        if self.robust_val is None or self.adversary is None:
            raise ValueError("probes are taken under adversarial training only")
        training = self.model.training
        self.evaluated.eval()
        found = self.robust_val(self.evaluated, extra=self.adversary.recipe.validation_attacks)
        if training:
            self.model.train()
            for module in self.frozen_bn:
                module.eval()
        eps = self.adversary.last_eps
        collapse = None if self.monitor is None else \
            self.monitor.record(found, epoch=epoch, progress=epoch - 1 + step / self.steps, step=step, train_eps=eps)
        return {**found, "train_eps": eps}, collapse

    def probing(self, epoch: int, on_step: Callable[[torch.Tensor, float], None] | None
                ) -> Callable[[torch.Tensor, float], None] | None:
        """``on_step`` with a probe every ``adversarial.probe_every`` optimizer steps inside ``epoch`` (not at its
        last step, which the epoch's own validation probes) that raises :class:`Collapsed` when the guard fires
        (in the first epoch under ``stop``, with no epoch to keep yet, the epoch ends first)."""
        monitor = self.monitor
        every = monitor.every if monitor is not None else 0
        if not every:
            return on_step
        done = 0

        def step(loss: torch.Tensor, lr: float) -> None:
            nonlocal done
            if on_step is not None:
                on_step(loss, lr)
            done += 1
            if done % every == 0 and done < self.steps:
                collapse = self.probe(epoch, done)[1]
                if collapse is None or monitor is None:
                    return
                if epoch > 1 or monitor.recovers:
                    raise Collapsed(collapse)
                monitor.pending = monitor.pending or collapse

        return step


def _build_loop(model: nn.Module, data: DataSplits, config: TrainConfig, *, balance: str, device: torch.device,
                seed: int, dist: Distributed, adversarial: AdversarialConfig | None, adversarial_eps: float | None,
                norm: str) -> _Loop:
    """Optimizer, schedule, loss, moving average, mixing, precision and the adversary, in the order that
    keeps the random streams of earlier releases (same seed, same weights)."""
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)  # only 4-D weights change layout
    class_weights, sample_weights = class_balance(data, balance, device)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=config.label_smoothing)
    train_model = dist.wrap(typing.cast(nn.Module, torch.compile(model)) if config.compile else model)
    optimizer = build_optimizer(model, config)
    steps = num_batches(dist.share(len(data.train)), config.batch_size)
    frozen = min(config.freeze_epochs, config.epochs)  # fine-tuning: the first schedule covers the frozen epochs
    schedule = build_schedule(optimizer, dataclasses.replace(config, epochs=frozen) if frozen else config, steps)
    ema = None
    if config.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
    mixing = build_mixing(config, data.spec.num_classes)
    amp_dtype = autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    adversary = robust_val = monitor = None
    if adversarial is not None and adversarial.enabled:
        if adversarial_eps is None:
            raise ValueError("adversarial training needs adversarial_eps, the radius in pixel units "
                             "(imgclf.settings.resolve gives it as Settings.train_eps)")
        adversary = Adversary(model, recipe=adversarial.recipe, eps=adversarial_eps, norm=norm,
                              steps=adversarial.steps, alpha=adversarial.alpha, options=dataclasses.asdict(adversarial),
                              warmup_steps=warmup_steps(adversarial.warmup_epochs, config.epochs, steps),
                              seed=seed + 1 + dist.rank, device=device)
        robust_val = RobustValidation(data.val, examples=adversarial.val_examples, eps=adversarial_eps, norm=norm,
                                      steps=adversarial.val_steps, seed=seed, device=device)
        monitor = OverfitMonitor(adversary.recipe.guard, adversarial.on_overfit, adversarial.overfit_retries,
                                 adversarial.probe_every)
    order = generator(seed)
    torch.manual_seed(seed)  # dropout and MixUp/CutMix draw from the global generator
    loop = _Loop(model, train_model, optimizer, schedule, loss_fn, steps, memory_format, sample_weights, ema, mixing,
                 amp_dtype, scaler, adversary, robust_val, order, monitor=monitor)
    if config.freeze_epochs:
        head = head_parameter_names(model)
        head_modules = {name.rsplit(".", 1)[0] for name in head}
        loop.backbone = [p for name, p in model.named_parameters() if name not in head and p.requires_grad]
        loop.backbone_bn = [module for name, module in model.named_modules()
                            if isinstance(module, nn.modules.batchnorm._BatchNorm) and name not in head_modules]
    return loop


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
    on_epoch: Callable[[TrainResult, dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    extend: bool = False,
    distributed: Distributed | None = None,
    on_step: Callable[[torch.Tensor, float], None] | None = None,
    adversarial: AdversarialConfig | None = None,
    adversarial_eps: float | None = None,
    norm: str = "linf",
) -> TrainResult:
    """Train ``model`` on ``data.train``, validate on ``data.val`` after every epoch.

    The weights with the best validation accuracy (of the moving average, when
    ``config.ema`` is on) are kept and loaded into ``model`` at the end; ties go
    to the later epoch.

    Args:
        model: A model from :func:`imgclf.models.create_model`, on ``device``.
        data: The splits.
        config: Optimisation settings.
        augment: Augmentation preset for the training batches.
        balance: ``none``; ``weighted-loss``, weighting each class's loss by
            ``N / (K * N_k)``; or ``sampler``, drawing each epoch's examples
            with replacement with probability proportional to ``1 / N_k``.
        device: Where to train.
        seed: Seeds the batch order, augmentation and mixing.
        log: Receives one line per epoch.
        quiet: Hide the progress bar.
        on_epoch: Called after every epoch with the result so far and the full
            training state (tensors and plain values only; save it with
            ``torch.save`` and pass it back as ``resume``).
        resume: A state from ``on_epoch``: training continues after its epoch.
        extend: ``resume`` is the state of a finished run, which goes on to ``config.epochs``: from its
            last epoch's weights, optimizer moments, moving average and random streams, with a new
            schedule of ``config.schedule``'s kind over the added epochs (a second cycle from
            ``config.lr``; ``step`` keeps counting its steps) and the early-stopping count reset.
            The history and the best epoch carry on, so the kept model is the best of all epochs.
        distributed: Rank and world size under ``torchrun``; each process
            trains on its share of every epoch and gradients are averaged.
        on_step: Called after every optimizer step (see :func:`train_one_epoch`).
        adversarial: Adversarial training settings (see :mod:`imgclf.defenses`);
            None or recipe ``none`` trains on clean images. Its ``eps`` text is not
            read: the radius is ``adversarial_eps``.
        adversarial_eps: The training radius in pixel units under ``norm``
            (:attr:`imgclf.settings.Settings.train_eps`), required with a recipe.
        norm: The norm of the adversarial training eps: ``"linf"`` or ``"l2"``.

    Returns:
        History and best epoch; ``model`` holds the best weights, in eval mode.

    Raises:
        ValueError: If adversarial training is asked for without ``adversarial_eps``, or ``extend``
            without ``resume``.
    """
    if extend and resume is None:
        raise ValueError("extend=True continues a finished run: pass its training state as resume")
    dist = distributed or Distributed()
    if resume is None:
        initialize_from_data(model, data, device=device, seed=seed)
    loop = _build_loop(model, data, config, balance=balance, device=device, seed=seed, dist=dist,
                       adversarial=adversarial, adversarial_eps=adversarial_eps, norm=norm)
    freeze = config.freeze_epochs
    if freeze and dist.world_size > 1:
        raise UsageError("--freeze-epochs trains in one process: its frozen parameters change what "
                         "DistributedDataParallel synchronizes; drop torchrun or --freeze-epochs")
    two_phases = 0 < freeze < config.epochs
    if resume is not None and not extend and two_phases and resume["epoch"] > freeze:
        loop.restart_schedule(model, config, config.epochs - freeze)  # the state holds the second phase's schedule
    restart = extend and config.schedule != "step"
    result, best_state, start_epoch, stale = (TrainResult(), None, 1, 0) if resume is None else \
        loop.restore(resume, schedule=not restart)
    if resume is not None and loop.monitor is not None:
        loop.monitor.load_state_dict(resume.get("overfit"))
    if extend:
        stale = 0
        if restart:
            loop.restart_schedule(model, config, config.epochs - start_epoch + 1)
    try:
        return _train_epochs(loop, model, data, config, result, best_state, start_epoch, stale, augment=augment,
                             device=device, dist=dist, log=log, quiet=quiet, on_epoch=on_epoch, on_step=on_step,
                             second_phase=freeze + 1 if two_phases and not extend else None)
    finally:
        loop.set_frozen(False, freeze_bn=False)  # every parameter trainable again, as it came


def _train_epochs(loop: _Loop, model: nn.Module, data: DataSplits, config: TrainConfig, result: TrainResult,
                  best_state: dict[str, torch.Tensor] | None, start_epoch: int, stale: int, *, augment: str,
                  device: torch.device, dist: Distributed, log: Log, quiet: bool,
                  on_epoch: Callable[[TrainResult, dict[str, Any]], None] | None,
                  on_step: Callable[[torch.Tensor, float], None] | None, second_phase: int | None) -> TrainResult:
    """:func:`fit`'s epochs from ``start_epoch``: the backbone frozen through ``config.freeze_epochs``, and at
    ``second_phase`` (the first unfrozen epoch of a fresh two-phase run) a new schedule over the rest. A
    catastrophic overfitting the guard sees stops training, or sends it back to the last good epoch
    (:func:`_recover`)."""
    started = time.perf_counter() - result.seconds
    session = time.perf_counter()  # for the estimate of the time left
    monitor, epoch = loop.monitor, start_epoch
    _remember(loop, result, epoch - 1, config, stale, best_state)
    while epoch <= config.epochs:
        if config.freeze_epochs:
            loop.set_frozen(epoch <= config.freeze_epochs, freeze_bn=config.freeze_bn)
            if epoch == second_phase:
                loop.restart_schedule(model, config, config.epochs - epoch + 1)
                log(f"epoch {epoch}: the backbone trains too from here, with a new {config.schedule} schedule over "
                    f"the last {config.epochs - epoch + 1} epochs")
        epoch_start = time.perf_counter()
        try:
            row, train_seconds, collapse = loop.epoch(epoch, data, config, augment=augment, device=device, dist=dist,
                                                      quiet=quiet, on_step=on_step)
        except Collapsed as inside:  # a probe inside the epoch: what it trained so far is not kept
            row, collapse = None, inside.reason
        if row is not None:
            best_state, stale = _finish_epoch(loop, result, row, epoch, config, time.perf_counter() - epoch_start,
                                              train_seconds, best_state, stale, log=log,
                                              left=(time.perf_counter() - session) / (epoch - start_epoch + 1))
        result.seconds = time.perf_counter() - started
        if collapse is not None and monitor is not None and monitor.recovers:
            result, best_state, epoch, stale = _recover(loop, result, collapse, log)
            continue
        stop = bool(config.early_stopping) and stale >= config.early_stopping and epoch < config.epochs
        if collapse is not None:
            result.catastrophic_overfitting = collapse
            kept = (f"keeps epoch {result.best_epoch} (robust val accuracy {result.best_robust_val_accuracy:.4f})"
                    if result.best_robust_val_accuracy is not None else "keeps the model as it is")
            used = monitor.retries_used if monitor is not None else 0
            tried = f" after {used} {monitor.action}{'s' if used > 1 else ''}" if monitor is not None and used else ""
            log(f"warning: {collapse}; training stops{tried} and {kept}")
            stop = True
        done = epoch if row is not None else epoch - 1
        if on_epoch is not None:
            on_epoch(result, loop.state(result, epoch=done, epochs=config.epochs, stale=stale, stop=stop,
                                         best_state=best_state))
        if stop:
            result.stopped_early = True
            if not result.catastrophic_overfitting:
                log(f"early stopping: no better validation accuracy for {stale} epochs")
            break
        _remember(loop, result, epoch, config, stale, best_state)
        epoch += 1
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


def _finish_epoch(loop: _Loop, result: TrainResult, row: dict[str, float], epoch: int, config: TrainConfig,
                  seconds: float, train_seconds: float, best_state: dict[str, torch.Tensor] | None, stale: int, *,
                  log: Log, left: float) -> tuple[dict[str, torch.Tensor] | None, int]:
    """An epoch that trained to its end: the divergence guard, its history row, the kept weights and its log line
    (``left``: seconds per epoch so far, for the estimate of the time left). Returns the kept weights and the
    epochs without progress."""
    lr = loop.optimizer.param_groups[-1]["lr"]  # after the epoch's last step (fine-tuning: the head's)
    _check_finite(row, loop.evaluated, epoch, config, result)
    result.history.append({**row, "lr": lr, "seconds": seconds, "train_seconds": train_seconds})
    best_state, stale = _keep_if_best(result, row, epoch, loop.evaluated, best_state, stale)
    robust = f" robust {row['robust_val_accuracy']:.4f}" if "robust_val_accuracy" in row else ""
    eta = f"  {_duration(left * (config.epochs - epoch))} left" if epoch < config.epochs else ""
    log(
        f"epoch {epoch:>3}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}{robust}  lr {lr:.2e}  {seconds:.1f} s{eta}"
    )
    return best_state, stale


def _remember(loop: _Loop, result: TrainResult, epoch: int, config: TrainConfig, stale: int,
              best_state: dict[str, torch.Tensor] | None) -> None:
    """Adversarial training: the probes and collapses in ``result``, and, where a collapse is met by a rollback
    or restart, the whole training state after ``epoch`` (0: before the first) as the one to go back to."""
    monitor = loop.monitor
    if monitor is None:
        return
    result.probes, result.overfit_events = monitor.probes, monitor.events
    if monitor.action != "stop":
        monitor.good = copy.deepcopy(loop.state(result, epoch=epoch, epochs=config.epochs, stale=stale, stop=False,
                                                best_state=best_state))


def _recover(loop: _Loop, result: TrainResult, collapse: str, log: Log
             ) -> tuple[TrainResult, dict[str, torch.Tensor] | None, int, int]:
    """Go back to the last good training state after catastrophic overfitting (``adversarial.on_overfit``
    ``rollback`` or ``restart``): its weights, optimizer, schedule, moving average, history and warm-up, the
    random streams going on (a replay would collapse again), and under ``restart`` a smaller attack step.
    Returns the result, the kept weights, the epoch to train next and the epochs without progress."""
    monitor, adversary = loop.monitor, loop.adversary
    if monitor is None or monitor.good is None or adversary is None:
        raise ValueError("a rollback needs the adversarial training's monitor and a good state")
    scale = next_step_scale(adversary.step_scale, monitor.action)
    restored, best_state, epoch, stale = loop.restore(copy.deepcopy(monitor.good), streams=False)
    adversary.step_scale = scale
    log(f"warning: {monitor.recovered(collapse, back_to=epoch - 1, step_scale=scale)}")
    restored.seconds = result.seconds
    restored.probes, restored.overfit_events = monitor.probes, monitor.events
    return restored, best_state, epoch, stale


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _check_finite(row: dict[str, float], model: nn.Module, epoch: int, config: TrainConfig,
                  result: TrainResult) -> None:
    """The divergence guard: stop when an epoch's training loss or the weights are NaN or infinite.

    Raises:
        TrainingDivergedError: Saying which epoch diverged, what to change, and what the run keeps
            (the training state and model of the last clean epoch are left as they were).
    """
    finite_loss = math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])
    if finite_loss and all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
        return
    kept = (f"the run keeps epoch {result.best_epoch}'s model and the training state of epoch {epoch - 1}"
            if result.best_epoch else "no epoch trained cleanly, so no model was saved")
    raise TrainingDivergedError(
        f"training diverged in epoch {epoch}: the training loss is {row['train_loss']} and the validation loss "
        f"{row['val_loss']}; lower --lr (now {learning_rate(config):g}) or clip gradients (--grad-clip 1); {kept}")


def _keep_if_best(result: TrainResult, row: dict[str, float], epoch: int, evaluated: nn.Module,
                  best_state: dict[str, torch.Tensor] | None, stale: int
                  ) -> tuple[dict[str, torch.Tensor] | None, int]:
    """Keep ``evaluated``'s weights when ``row`` is the best epoch so far: the best validation accuracy, or under
    adversarial training the best robust validation accuracy; a tie is no progress, but the later epoch is kept.
    Returns the kept weights and the epochs without progress."""
    robust = "robust_val_accuracy" in row
    best_score = result.best_robust_val_accuracy if robust else result.best_val_accuracy
    score = row["robust_val_accuracy"] if robust else row["val_accuracy"]
    stale = 0 if best_score is None or score > best_score else stale + 1
    if best_score is None or score >= best_score:
        result.best_epoch, result.best_val_accuracy = epoch, row["val_accuracy"]
        result.best_robust_val_accuracy = row.get("robust_val_accuracy")
        best_state = _clone_state(evaluated)
    return best_state, stale
