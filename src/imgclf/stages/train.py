"""The train stage: a new run trained from its configuration, an interrupted run resumed, a finished run
extended, and the learning-rate range test (``--lr auto``, ``imgclf lr-find``).

After every epoch rank 0 writes the history, the best model so far and the training state, atomically: a run
killed at any point resumes from its last saved epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclf import record
from imgclf.checkpoint import check_outputs, model_fingerprint, model_info, save_model
from imgclf.config import RunConfig, dump_config
from imgclf.data import DataSplits
from imgclf.data.augment import per_image
from imgclf.defenses import warmup_reached
from imgclf.distributed import Distributed
from imgclf.errors import UsageError, first_line
from imgclf.models import create_model
from imgclf.models.normalization import normalization
from imgclf.models.weights import file_digest, load_weights
from imgclf.record import AdversarialTraining, Metrics, Training, read_metrics, section
from imgclf.run_folder import RunFolder, RunLog, atomic_write_bytes, atomic_write_text
from imgclf.runtime import environment
from imgclf.settings import Settings
from imgclf.stages.parts import RunParts
from imgclf.stages.store import create_folder, prepare, reload, run_config
from imgclf.training import TrainResult, fit

if TYPE_CHECKING:
    from imgclf.lr_finder import LRFinderResult


def train_new(config: RunConfig, *, out: str | Path | None = None, quiet: bool = False,
              after_epoch: Callable[[TrainResult], None] | None = None) -> RunParts:
    """Load data, train, and save the model, config, splits, history and training state (see
    :meth:`imgclf.pipeline.Run.train`); under ``torchrun`` only rank 0 writes (the others' ``folder`` is None).

    Raises:
        UsageError: Bad data set, model, options, or an existing output folder; a training split that misses
            a class.
    """
    dist, log, device, data, settings = prepare(config, out, quiet)
    config, spec = settings.config, data.spec
    learned = int(np.unique(data.train.labels.numpy()).size)
    if learned < spec.num_classes:
        raise UsageError(f"the training split has no image of {spec.num_classes - learned} of the "
                         f"{spec.num_classes} classes ({len(data.train)} images after holding out val and "
                         "test); lower --test-fraction or --val-fraction, or raise --train-examples")
    model = model_for(config, data, device, log)
    env = environment(device)
    folder = create_folder(out, settings, data, env, log) if dist.is_main else None
    _describe(config, data, model, device, dist, log)
    if config.train.lr == "auto":
        settings = _auto_lr(settings, data, model, device, dist, log, folder)
    parts = RunParts(folder, settings, data, model, device, log, quiet=quiet)
    _warn_short_warmup(settings, log)
    parts.train_result = fit_and_save(parts, dist, env=env, after_epoch=after_epoch)
    return parts


def _describe(config: RunConfig, data: DataSplits, model: torch.nn.Module, device: torch.device,
              dist: Distributed, log: RunLog) -> None:
    """The first lines of a new run's log: the data, the splits, the model and where it trains."""
    spec = data.spec
    for note in data.notes:
        log(f"warning: {note}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{spec.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
        f"{spec.num_classes} classes, input {spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}; "
        f"{config.model.name} with {n_params:,} parameters on {device}"
        + (f", {dist.world_size} processes" if dist.world_size > 1 else ""))
    log("splits: " + "; ".join(f"{split}: {origin}" for split, origin in data.origins.items()))
    slow = per_image(config.data.augment)
    if slow:
        log(f"note: --augment {', '.join(slow)} runs image by image (torchvision's policies draw for each image); "
            "the presets run on whole batches")


def _auto_lr(settings: Settings, data: DataSplits, model: torch.nn.Module, device: torch.device,
             dist: Distributed, log: RunLog, folder: RunFolder | None) -> Settings:
    """``--lr auto``: the range test's suggestion as the settings' learning rate, recorded in ``config.yaml``,
    ``lr_find.csv`` and ``metrics.json``.

    Raises:
        UsageError: Under torchrun (the range test runs in one process).
    """
    if dist.world_size > 1:
        raise UsageError("--lr auto runs the range test in one process: run `imgclf lr-find` with the same "
                         "flags and pass its suggestion as --lr")
    config = settings.config
    found = range_test(config, data, model, device, log)
    settings = dataclasses.replace(settings, config=dataclasses.replace(
        config, train=dataclasses.replace(config.train, lr=found.suggestion)))
    if folder is not None:  # the learning rate used, where config.yaml said auto
        atomic_write_text(folder.config_path, dump_config(settings.config))
        folder.write_csv(record.LR_FIND, found.rows())
        folder.update_metrics({"lr_finder": section(found.summary)})
    return settings


def _warn_short_warmup(settings: Settings, log: RunLog) -> None:
    """Warn at once where the eps warm-up outlasts training (the kept model never meets the asked eps)."""
    if settings.train_eps is None:
        return
    config, eps = settings.config, settings.train_eps.value
    reached = warmup_reached(eps, config.adversarial.warmup_epochs, config.train.epochs, config.train.epochs)
    if reached < eps:
        log.warn(f"warning: the eps warm-up ({config.adversarial.warmup_epochs:g} epochs) outlasts the "
                 f"{config.train.epochs} epoch(s) of training: the training eps reaches {reached:.4g}, not "
                 f"{eps:.4g}; metrics.json records it as training.adversarial.kept_eps (give more --epochs "
                 "or a shorter --eps-warmup)")


def resume(path: str | Path, *, epochs: int | str | None = None, quiet: bool = False,
           overrides: dict[str, Any] | None = None, trust_code: bool = False) -> tuple[RunParts, Metrics | None]:
    """Continue a run from its last training state, or extend a finished run to ``epochs`` epochs (see
    :meth:`imgclf.pipeline.Run.resume`).

    Returns:
        The run, and for an extension the run's ``metrics.json`` as it was before it (None otherwise): the
        caller evaluates the extended model again where the earlier one was evaluated.

    Raises:
        UsageError: As :meth:`imgclf.pipeline.Run.resume` says.
    """
    folder = RunFolder.open(path)
    state_path = folder.file(record.TRAIN_STATE)
    if not state_path.is_file():
        raise UsageError(f"{str(path)!r} holds no {record.TRAIN_STATE}: it stopped before its first epoch ended; "
                         "start it again instead")
    planned = run_config(folder, None, trust_code=trust_code).train.epochs
    overrides = dict(overrides or {})
    if epochs is not None:
        overrides["train.epochs"] = epochs
    settings, device, data = reload(folder, overrides, trust_code=trust_code)
    log = RunLog(folder, quiet=quiet)
    parts = RunParts(folder, settings, data, model_for(settings.config, data, device), device, log, quiet=quiet)
    state = load_train_state(state_path, device)
    # The training state is the record of what was trained: a config.yaml longer than its plan is an
    # extension stopped before its first epoch was saved, which goes on from the state as it is.
    saved_plan = state.get("epochs")  # (None in the states of earlier releases)
    planned = saved_plan if isinstance(saved_plan, int) and saved_plan >= 1 else planned
    done, finished = state["epoch"], state["epoch"] >= planned or state["stopped_early"]
    epochs = settings.config.train.epochs  # `epochs` checked as the setting it is
    extend = epochs != planned or ("train.epochs" in overrides and finished and epochs > done)
    if extend:
        check_extension(folder, path, done=done, planned=planned, epochs=epochs, finished=finished)
    folder.remove_temporary_files()  # left by a write that a kill interrupted
    if not extend and finished:
        _finished(parts, state, state_path)
        return parts, None
    if not extend:
        log(f"resuming {folder.path} after epoch {done} of {epochs}")
        parts.train_result = fit_and_save(parts, Distributed(), resume=state)
        return parts, None
    train = settings.config.train
    atomic_write_text(folder.config_path, dump_config(settings.config))  # the run's length is now `epochs`
    log(f"extending {folder.path} from {done} to {epochs} epochs: from epoch {done}'s weights and optimizer "
        f"state, " + ("the step schedule goes on" if train.schedule == "step" else
                      f"a new {train.schedule} schedule over the {epochs - done} added epochs (lr {train.lr:g})")
        + f"; the kept model is the best of all {epochs} epochs")
    earlier = read_metrics(folder.path)
    parts.train_result = fit_and_save(parts, Distributed(), resume=state, extend=True)
    return parts, earlier


def _finished(parts: RunParts, state: dict[str, Any], state_path: Path) -> None:
    """A run whose training ended: its kept model from the state, and the model and training metrics saved
    where a kill came between the last training state and them."""
    folder = parts.writes()
    overfit = state.get("overfit") or {}
    parts.train_result = TrainResult(state["history"], state["best_epoch"], state["best_val_accuracy"],
                                     state["seconds"], state["stopped_early"], state.get("best_robust_val_accuracy"),
                                     probes=list(overfit.get("probes", [])),
                                     overfit_events=list(overfit.get("events", [])))
    restore_weights(parts.model, state["best_state"], state_path)
    parts.model.eval()
    if folder.weights_path.is_file() and read_metrics(folder.path).training is not None:
        parts.log(f"{folder.path} finished training already (epoch {state['epoch']}); nothing to resume "
                  "(--epochs N extends it to N epochs)")
    else:  # stopped between the last training state and the final model and metrics
        parts.log(f"{folder.path} finished its last epoch; saving the model and the training metrics")
        save_trained(parts, parts.train_result, Distributed().world_size, environment(parts.device))


def fit_and_save(parts: RunParts, dist: Distributed, *, resume: dict[str, Any] | None = None, extend: bool = False,
                 env: dict[str, Any] | None = None, after_epoch: Callable[[TrainResult], None] | None = None
                 ) -> TrainResult:
    """Fit, writing the history, the best model and the training state after every epoch (rank 0)."""
    config, folder, model, spec = parts.config, parts.folder, parts.model, parts.data.spec
    env = env if env is not None else environment(parts.device)
    board = None
    if config.train.tensorboard and folder is not None:
        from imgclf.tensorboard_logging import TrainingLogger

        steps_done = resume.get("optimizer_steps", 0) if resume is not None else 0
        board = TrainingLogger(folder.path / "tensorboard", first_step=steps_done)
    initial = initial_weights(config)

    def save_epoch(result: TrainResult, state: dict[str, Any]) -> None:
        if folder is not None:
            if board is not None:
                board.epoch(result.history[-1])
                state["optimizer_steps"] = board.global_step
            folder.write_csv(record.HISTORY, result.history)
            if result.probes:
                folder.write_csv(record.PROBES, result.probes)
            if result.best_epoch == state["epoch"]:  # a new best: keep it as the run's model
                save_model(state["best_state"], folder.weights_path,
                           model_info(model, config.model.source, config.model.options, spec, env,
                                      initial_weights=initial))
            buffer = io.BytesIO()
            torch.save(state, buffer)
            atomic_write_bytes(folder.file(record.TRAIN_STATE), buffer.getvalue())
        if after_epoch is not None:
            after_epoch(result)

    train_eps = parts.settings.train_eps
    try:
        result = fit(
            model, parts.data, config.train, augment=config.data.augment, balance=config.data.balance,
            device=parts.device, seed=config.seed, log=parts.log, quiet=parts.quiet, on_epoch=save_epoch,
            resume=resume, extend=extend, distributed=dist, on_step=board.step if board is not None else None,
            adversarial=config.adversarial if config.adversarial.enabled else None,
            adversarial_eps=train_eps.value if train_eps is not None else None, norm=config.attack.norm,
        )
    finally:
        if board is not None:
            board.close()
    if folder is not None:
        save_trained(parts, result, dist.world_size, env, initial=initial)
    return result


def initial_weights(config: RunConfig) -> dict[str, Any]:
    """``model.json``'s ``initial_weights``: the file training started from and the fine-tuning settings
    (empty without ``model.weights``)."""
    if config.model.weights is None:
        return {}
    train = config.train
    return {"file": config.model.weights, "sha256": file_digest(config.model.weights),
            "freeze_epochs": train.freeze_epochs, "backbone_lr_scale": train.backbone_lr_scale,
            "freeze_bn": train.freeze_bn}


def save_trained(parts: RunParts, result: TrainResult, world_size: int, env: dict[str, Any], *,
                 initial: dict[str, Any] | None = None) -> None:
    """Save the kept model and the ``training`` and ``timing`` sections of ``metrics.json``."""
    folder, config = parts.writes(), parts.config
    initial = initial_weights(config) if initial is None else initial
    save_model(parts.model, folder.weights_path,
               model_info(parts.model, config.model.source, config.model.options, parts.data.spec, env,
                          initial_weights=initial))
    folder.update_metrics(training_metrics(config, parts.settings, result, world_size,
                                           model_fingerprint(parts.model)))
    robust = "" if result.best_robust_val_accuracy is None else \
        f", robust val accuracy {result.best_robust_val_accuracy:.4f}"
    parts.log(f"kept epoch {result.best_epoch} (val accuracy {result.best_val_accuracy:.4f}{robust}); "
              f"model saved to {folder.weights_path}")


def model_for(config: RunConfig, data: DataSplits, device: torch.device,
               log: Callable[[str], None] | None = None) -> torch.nn.Module:
    """The model to train: the architecture with its starting weights (``model.weights``; a classifier head of
    another class count, or none, is left fresh: fine-tuning, said in ``log``) and normalization
    (:func:`imgclf.models.normalization.normalization`)."""
    spec = data.spec
    mean, std, _ = normalization(config.model, channels=spec.channels, data_mean=spec.mean, data_std=spec.std)
    model = create_model(
        config.model.source, channels=spec.channels, image_size=spec.image_size,
        num_classes=spec.num_classes, mean=mean, std=std, options=config.model.options,
    )
    if config.model.weights is not None:
        fresh = load_weights(model.body, config.model.weights, new_head=True)
        if fresh and log is not None:
            log(f"--weights {config.model.weights}: every layer but the classifier head ({', '.join(fresh)}), "
                f"which starts fresh for {spec.num_classes} classes")
    check_outputs(model, spec, name=config.model.name, gradients=True)
    return model.to(device)


def training_metrics(config: RunConfig, settings: Settings, result: TrainResult, processes: int,
                      fingerprint: str) -> dict[str, Any]:
    """``metrics.json``'s ``training`` and ``timing`` sections after training (``fingerprint``: the kept model's)."""
    adversarial = None
    if settings.train_eps is not None:
        eps = settings.train_eps.value
        kept_eps = warmup_reached(eps, config.adversarial.warmup_epochs, config.train.epochs, result.best_epoch)
        adversarial = AdversarialTraining(config.adversarial.recipe, eps, config.attack.norm,
                                          result.best_robust_val_accuracy, result.catastrophic_overfitting,
                                          kept_eps=kept_eps, recoveries=list(result.overfit_events))
    training = Training(result.best_epoch, result.best_val_accuracy, epochs=config.train.epochs,
                        epochs_run=len(result.history), stopped_early=result.stopped_early, processes=processes,
                        adversarial=adversarial, model_fingerprint=fingerprint)
    return {"training": section(training), "timing": {"train_seconds": result.seconds}}


def check_extension(folder: RunFolder, path: str | Path, *, done: int, planned: int, epochs: int,
                     finished: bool) -> None:
    """Raise UsageError where a run cannot be extended to ``epochs``: not more than it trained, an unfinished
    run asked for another length, or a run whose training stopped on catastrophic overfitting."""
    if not finished:
        raise UsageError(f"{str(path)!r} stopped after epoch {done} of its {planned}; resume it to {planned} first "
                         f"(imgclf train --resume {path}), then extend it with --epochs")
    if epochs <= done:
        raise UsageError(f"{str(path)!r} has trained {done} epochs; --epochs extends it and must be more than {done}")
    training = read_metrics(folder.path).training
    collapsed = training.adversarial.catastrophic_overfitting if training and training.adversarial else None
    if collapsed:
        raise UsageError(f"{str(path)!r} stopped on catastrophic overfitting ({collapsed}); more epochs would train "
                         "the collapsed model further: start a new run with a smaller eps or step instead")


def load_train_state(path: Path, device: torch.device) -> dict[str, Any]:
    """``train_state.pt``, loaded without unpickling code and checked (:class:`imgclf.record.TrainState`).

    Raises:
        UsageError: If the file is truncated, not a PyTorch file, holds objects other than tensors and
            plain values, or is not a complete training state.
    """
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests loading the file unsafely; imgclf never does
        raise UsageError(f"{str(path)!r} cannot be read as a training state: it is not a PyTorch file of tensors "
                         "and plain values (imgclf never loads pickled Python objects, which could run code); "
                         "start the run again instead of resuming it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise UsageError(f"{str(path)!r} cannot be read as a training state ({first_line(error)}); "
                         "start the run again instead of resuming it") from None
    return record.TrainState.from_dict(raw, str(path)).to_dict()


def restore_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor] | None, path: Path) -> None:
    """Load weights kept in a training state into ``model``.

    Raises:
        UsageError: If they do not fit the model (the state is another run's).
    """
    try:
        model.load_state_dict(weights or {})
    except (RuntimeError, TypeError, AttributeError) as error:
        raise UsageError(f"{str(path)!r} holds the training state of another model ({first_line(error)}); "
                         "start the run again instead of resuming it") from None


def find_lr(config: RunConfig, *, start_lr: float, end_lr: float, steps: int, quiet: bool = False
            ) -> LRFinderResult:
    """``imgclf lr-find``: the learning-rate range test with the data, model and optimizer ``config`` names
    (see :func:`imgclf.lr_finder.lr_range_test`).

    Raises:
        UsageError: Bad data set, model or options; a sweep that is not a range; a loss that never fell.
    """
    from imgclf.lr_finder import lr_range_test

    _, log, device, data, settings = prepare(config, None, quiet)
    config = settings.config
    model = model_for(config, data, device)
    spec = data.spec
    log(f"{spec.name}: {len(data.train)} train images, {spec.num_classes} classes; {config.model.name} on {device}; "
        f"{config.train.optimizer}, batch {config.train.batch_size}, lr {start_lr:g} to {end_lr:g} in {steps} steps")
    return lr_range_test(model, data, config.train, augment=config.data.augment, balance=config.data.balance,
                         device=device, seed=config.seed, start_lr=start_lr, end_lr=end_lr, steps=steps)


def range_test(config: RunConfig, data: DataSplits, model: torch.nn.Module, device: torch.device,
                log: Callable[[str], None]) -> LRFinderResult:
    """``--lr auto``: the range test on a copy of ``model`` (the run then trains ``model`` itself, from the
    same starting weights, as with ``--lr`` set to the suggestion)."""
    from imgclf.lr_finder import lr_range_test

    log("--lr auto: learning-rate range test")
    found = lr_range_test(copy.deepcopy(model), data, config.train, augment=config.data.augment,
                          balance=config.data.balance, device=device, seed=config.seed)
    log(f"--lr auto: {found.describe()}")
    return found
