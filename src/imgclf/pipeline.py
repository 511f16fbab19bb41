"""The stages of a run (train, evaluate, attack, report) and ``run``, which chains them.

Each stage takes plain objects, returns plain objects, and writes its own part
of the run folder (see :mod:`imgclf.run_folder`). ``imgclf run`` passes the
objects along in memory; ``imgclf evaluate|attack|report RUN`` rebuild them from
the folder (configuration, saved split indices, model) and call the same
functions.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imgclf.attacks import TARGET_MODES, AttackSpec, RobustnessResult, expand_attacks, robustness
from imgclf.checkpoint import load_model, model_info, save_model
from imgclf.config import (
    DEFAULT_EPS_COLOUR,
    DEFAULT_EPS_GREY,
    DEFAULT_EPS_L2_COLOUR,
    DEFAULT_EPS_L2_GREY,
    RunConfig,
    config_to_dict,
    dump_config,
    load_config,
    parse_eps,
)
from imgclf.data import DataSplits, load_data, stratified_subset
from imgclf.distributed import Distributed
from imgclf.errors import UsageError
from imgclf.evaluation import EvalResult, evaluate
from imgclf.models import create_model
from imgclf.report import write_report
from imgclf.run_folder import RunFolder, atomic_write_bytes, atomic_write_text
from imgclf.runtime import environment, seed_everything, select_device
from imgclf.training import TrainResult, fit


#: The training state after the last finished epoch, for ``imgclf train --resume``.
TRAIN_STATE = "train_state.pt"


class RunLog:
    """Prints progress lines (unless quiet) and keeps every line in ``log.txt``."""

    def __init__(self, folder: RunFolder | None = None, *, quiet: bool = False):
        self.folder, self.quiet, self._pending = folder, quiet, []

    def attach(self, folder: RunFolder) -> None:
        """Start writing to ``folder``'s log, including lines logged before it existed."""
        self.folder = folder
        for line in self._pending:
            folder.append_log(line)
        self._pending.clear()

    def __call__(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)
        if self.folder is None:
            self._pending.append(line)
        else:
            self.folder.append_log(line)


@dataclass
class TrainedRun:
    """What the train stage hands on."""

    folder: RunFolder | None  # None in the processes other than rank 0 of a distributed run
    config: RunConfig
    data: DataSplits
    model: torch.nn.Module
    device: torch.device
    result: TrainResult


def resolve_eps(config: RunConfig, channels: int) -> RunConfig:
    """Fill in the default eps list for the data's channels (grey or colour) and the norm,
    and under adversarial training without its own eps, the largest of that list.

    Raises:
        UsageError: If adversarial training would train at eps 0.
    """
    if config.attack.eps is None:
        if config.attack.norm == "l2":
            eps = list(DEFAULT_EPS_L2_COLOUR if channels == 3 else DEFAULT_EPS_L2_GREY)
        else:
            eps = list(DEFAULT_EPS_COLOUR if channels == 3 else DEFAULT_EPS_GREY)
        config = replace(config, attack=replace(config.attack, eps=eps))
    adversarial = config.adversarial
    if adversarial.enabled and adversarial.eps is None:
        values = parse_eps(config.attack.eps, config.attack.norm)
        largest = config.attack.eps[-1] if len(config.attack.eps) == 1 else max(values)
        config = replace(config, adversarial=replace(adversarial, eps=str(largest)))
    if adversarial.enabled and parse_eps(config.adversarial.eps, config.attack.norm) == [0.0]:
        raise UsageError("adversarial training at eps 0 is standard training; give --adv-eps or --eps above 0")
    return config


def _save_splits(folder: RunFolder, data: DataSplits) -> None:
    arrays = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        arrays[f"{name}_pool"] = np.array(split.source)
        arrays[f"{name}_indices"] = split.indices
    folder.write_arrays("splits.npz", **arrays)


def _load_splits(folder: RunFolder) -> dict[str, tuple[str, np.ndarray]] | None:
    arrays = folder.read_arrays("splits.npz")
    if arrays is None:
        return None
    return {name: (str(arrays[f"{name}_pool"]), arrays[f"{name}_indices"]) for name in ("train", "val", "test")}


def _reload(folder: RunFolder, overrides: dict | None) -> tuple[RunConfig, torch.device, DataSplits]:
    """A run folder's configuration (with ``overrides``), device, and the very data splits it trained on.

    A new ``attack.norm`` without new eps values takes that norm's default eps.
    """
    overrides = dict(overrides or {})
    if "attack.norm" in overrides and "attack.eps" not in overrides:
        overrides["attack.eps"] = None
    config = load_config(folder.config_path, overrides)
    seed_everything(config.seed)
    device = select_device(config.device)
    data = load_data(config.data, seed=config.seed, indices=_load_splits(folder))
    return resolve_eps(config, data.spec.channels), device, data


def _model_for(config: RunConfig, data: DataSplits, device: torch.device) -> torch.nn.Module:
    spec = data.spec
    return create_model(
        config.model.name, channels=spec.channels, image_size=spec.image_size,
        num_classes=spec.num_classes, mean=spec.mean, std=spec.std, options=config.model.options,
    ).to(device)


def _train(folder: RunFolder | None, config: RunConfig, data: DataSplits, model: torch.nn.Module,
           device: torch.device, dist: Distributed, log: RunLog, quiet: bool,
           resume: dict | None = None, env: dict | None = None,
           after_epoch: Callable[[TrainResult], None] | None = None) -> TrainResult:
    """Fit, writing the history, the best model and the training state after every epoch (rank 0).

    ``env`` is :func:`imgclf.runtime.environment` when the caller has it already.
    ``after_epoch`` is called with the result so far once an epoch is saved (a sweep's
    pruner raises from it to stop the run).
    """
    spec = data.spec
    env = env if env is not None else environment(device)
    board = None
    if config.train.tensorboard and folder is not None:
        from imgclf.tensorboard_logging import TrainingLogger

        steps_done = resume.get("optimizer_steps", 0) if resume is not None else 0
        board = TrainingLogger(folder.path / "tensorboard", first_step=steps_done)

    def save_epoch(result: TrainResult, state: dict) -> None:
        if folder is not None:
            _save_epoch(result, state)
        if after_epoch is not None:
            after_epoch(result)

    def _save_epoch(result: TrainResult, state: dict) -> None:
        if board is not None:
            board.epoch(result.history[-1])
            state["optimizer_steps"] = board.global_step
        folder.write_csv("history.csv", result.history)
        if result.best_epoch == state["epoch"]:  # a new best: keep it as the run's model
            save_model(state["best_state"], folder.weights_path,
                       model_info(model, config.model.name, config.model.options, spec, env))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(folder.file(TRAIN_STATE), buffer.getvalue())

    try:
        result = fit(
            model, data, config.train, augment=config.data.augment, balance=config.data.balance,
            device=device, seed=config.seed, log=log, quiet=quiet, on_epoch=save_epoch, resume=resume,
            distributed=dist, on_step=board.step if board is not None else None,
            adversarial=config.adversarial, norm=config.attack.norm,
        )
    finally:
        if board is not None:
            board.close()
    if folder is not None:
        save_model(model, folder.weights_path, model_info(model, config.model.name, config.model.options, spec, env))
        adversarial = config.adversarial
        folder.update_metrics({
            "training": {"epochs": config.train.epochs, "epochs_run": len(result.history),
                         "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
                         "stopped_early": result.stopped_early, "processes": dist.world_size,
                         "adversarial": {"recipe": adversarial.recipe, "eps": parse_eps(adversarial.eps, config.attack.norm)[0],
                                         "norm": config.attack.norm,
                                         "best_robust_val_accuracy": result.best_robust_val_accuracy,
                                         "catastrophic_overfitting": result.catastrophic_overfitting}
                         if adversarial.enabled else None},
            "timing": {"train_seconds": result.seconds},
        })
        robust = "" if result.best_robust_val_accuracy is None else \
            f", robust val accuracy {result.best_robust_val_accuracy:.4f}"
        log(f"kept epoch {result.best_epoch} (val accuracy {result.best_val_accuracy:.4f}{robust}); "
            f"model saved to {folder.weights_path}")
    return result


def train_stage(config: RunConfig, *, out: str | Path | None, quiet: bool = False,
                after_epoch: Callable[[TrainResult], None] | None = None) -> TrainedRun:
    """Load data, train, and save the model, config, splits, history and training state.

    Under ``torchrun`` every process trains and only rank 0 writes (the other
    ranks return a :class:`TrainedRun` whose ``folder`` is None).

    Args:
        config: The validated configuration.
        out: Run folder to create (must not exist or be empty); None for
            ``runs/<dataset>-<model>-<time>``.
        quiet: Print nothing but errors.
        after_epoch: Called with the result so far after every saved epoch.

    Raises:
        UsageError: Bad data set, model, options, or an existing output folder.
    """
    dist = Distributed.from_env()
    if out is not None and dist.is_main:
        RunFolder.check_available(out)
    log = RunLog(quiet=quiet or not dist.is_main)
    seed_everything(config.seed)
    device = dist.device(select_device(config.device))
    data = load_data(config.data, seed=config.seed)
    spec = data.spec
    config = resolve_eps(config, spec.channels)
    model = _model_for(config, data, device)
    env = environment(device)
    folder = None
    if dist.is_main:
        stem = Path(spec.name).name if "/" in spec.name else spec.name
        folder = RunFolder.create(out, default_name=f"{stem}-{config.model.name}")
        log.attach(folder)
        atomic_write_text(folder.config_path, dump_config(config))
        _save_splits(folder, data)
        if data.bad_files:
            atomic_write_text(folder.file("bad_files.txt"), "".join(f"{p}\t{r}\n" for p, r in data.bad_files))
        folder.update_metrics({
            "dataset": spec.name,
            "model": config.model.name,
            "num_classes": spec.num_classes,
            "class_names": list(spec.class_names),
            "seed": config.seed,
            "data": {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                     "input_shape": list(spec.input_shape), "bad_files": len(data.bad_files)},
            "data_notes": data.notes,
            "environment": env,
        })
    for note in data.notes:
        log(f"warning: {note}")
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"{spec.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
        f"{spec.num_classes} classes, input {spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}; "
        f"{config.model.name} with {n_params:,} parameters on {device}"
        + (f", {dist.world_size} processes" if dist.world_size > 1 else "")
    )
    result = _train(folder, config, data, model, device, dist, log, quiet, env=env, after_epoch=after_epoch)
    return TrainedRun(folder, config, data, model, device, result)


def resume_stage(path: str | Path, *, quiet: bool = False, overrides: dict | None = None) -> TrainedRun:
    """Continue a run from its last training state (``train_state.pt``), e.g. after ``kill -9``.

    On the CPU with the same settings the result is the same, weight for weight,
    as a run that was never stopped. A finished run is left as it is.

    Raises:
        UsageError: If ``path`` is not a run folder or holds no training state.
    """
    folder = RunFolder.open(path)
    state_path = folder.file(TRAIN_STATE)
    if not state_path.is_file():
        raise UsageError(f"{str(path)!r} holds no {TRAIN_STATE}: it stopped before its first epoch ended; "
                         "start it again instead")
    config, device, data = _reload(folder, overrides)
    log = RunLog(folder, quiet=quiet)
    model = _model_for(config, data, device)
    state = torch.load(state_path, map_location=device, weights_only=True)
    if state["epoch"] >= config.train.epochs or state["stopped_early"]:
        log(f"{folder.path} finished training already (epoch {state['epoch']}); nothing to resume")
        model.load_state_dict(state["best_state"])
        result = TrainResult(state["history"], state["best_epoch"], state["best_val_accuracy"], state["seconds"],
                             state["stopped_early"], state.get("best_robust_val_accuracy"))
        return TrainedRun(folder, config, data, model.eval(), device, result)
    log(f"resuming {folder.path} after epoch {state['epoch']} of {config.train.epochs}")
    result = _train(folder, config, data, model, device, Distributed(), log, quiet, resume=state)
    return TrainedRun(folder, config, data, model, device, result)


def evaluate_stage(folder: RunFolder, model: torch.nn.Module, data: DataSplits, *, device: torch.device,
                   seed: int, tta: bool = False, log=print) -> EvalResult:
    """Clean metrics on the test split; saves ``metrics.json`` (``clean``) and ``samples.npz``.

    ``tta`` averages each image's logits with its mirror's (``eval.tta``).
    """
    result = evaluate(model, data.test, list(data.spec.class_names), device=device, tta=tta)
    save_samples(folder, lambda rows: data.test.float_images(rows).numpy(), data.test.labels.numpy(),
                 result.predictions, seed)
    folder.update_metrics({"clean": result.metrics.to_dict(), "timing": {"eval_seconds": result.seconds}})
    m = result.metrics
    log(f"test: accuracy {m.accuracy:.4f}  macro F1 {m.macro_f1:.4f}  balanced accuracy {m.balanced_accuracy:.4f}  (n={m.n})")
    return result


def save_samples(folder: RunFolder, images: Callable[[np.ndarray], np.ndarray], labels: np.ndarray,
                 predictions: np.ndarray, seed: int) -> None:
    """Write ``samples.npz`` for the report: 16 seeded random test examples and 8 misclassified ones.

    Args:
        images: ``images(rows)`` gives ``float32`` ``(len(rows), C, H, W)`` in ``[0, 1]`` for test positions ``rows``.
        labels, predictions: ``int`` ``(N_test,)``.
    """
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(len(labels), size=min(16, len(labels)), replace=False))
    wrong = np.flatnonzero(predictions != labels)
    wrong = np.sort(rng.choice(wrong, size=min(8, len(wrong)), replace=False))
    folder.write_arrays(
        "samples.npz",
        images=images(shown), labels=labels[shown], predictions=predictions[shown],
        error_images=images(wrong), error_labels=labels[wrong], error_predictions=predictions[wrong],
    )


def attack_specs(config: RunConfig, class_names: list[str]) -> list[AttackSpec]:
    """The configured attacks (presets expanded), with a target class name turned into its index.

    Raises:
        UsageError: On a target that is neither a mode nor a class of the data.
    """
    attack = config.attack
    target = attack.target
    if target is not None and target not in TARGET_MODES:
        if str(target) in class_names:
            target = class_names.index(str(target))
        elif str(target).isdigit() and int(target) < len(class_names):
            target = int(target)
        else:
            raise UsageError(f"unknown target {target!r}; valid choices: {', '.join(TARGET_MODES)}, "
                             f"or a class: {', '.join(class_names)}")
    return [AttackSpec(name, norm=attack.norm, steps=attack.steps, alpha=attack.alpha, restarts=attack.restarts,
                       random_start=attack.random_start, target=target, queries=attack.queries)
            for name in expand_attacks(attack.attacks)]


def attack_stage(folder: RunFolder, model: torch.nn.Module, data: DataSplits, config: RunConfig, *,
                 device: torch.device, log=print, quiet: bool = False) -> RobustnessResult:
    """Robust accuracy under each configured attack and eps, and the worst case, on a
    seeded stratified test subset, with the sanity checks.

    Saves ``metrics.json`` (``robustness``, ``attack``), ``adversarial.pt``
    (worst-case adversarial images as float tensors with their test positions)
    and ``adversarial.npz`` (the examples shown in the report).
    """
    attack = config.attack
    eps_values = parse_eps(attack.eps, attack.norm)
    labels = data.test.labels
    rows = stratified_subset(labels.numpy(), attack.examples, config.seed)
    images = data.test.float_images(rows)
    specs = attack_specs(config, list(data.spec.class_names))
    model.eval()
    with tqdm(desc="attacks", unit="batch", leave=False, disable=True if quiet else None,
              dynamic_ncols=True) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            result = robustness(
                model, images, labels[torch.as_tensor(rows)], attacks=specs, eps_values=eps_values,
                device=device, batch_size=attack.batch_size, seed=config.seed, progress=advance,
            )
        except ValueError as error:  # e.g. an L2 eps larger than the images allow
            raise UsageError(str(error)) from None
    folder.write_arrays("adversarial.npz", **result.examples)
    buffer = io.BytesIO()
    torch.save({**result.adversarial, "test_positions": torch.as_tensor(rows),
                "indices": torch.as_tensor(data.test.indices[rows]), "labels": labels[torch.as_tensor(rows)]}, buffer)
    atomic_write_bytes(folder.file("adversarial.pt"), buffer.getvalue())
    folder.update_metrics({
        "robustness": result.to_dicts(),
        "attack": {"n": result.n, "clean_accuracy": result.clean_accuracy, "seed": result.seed,
                   "norm": attack.norm, "attacks": [spec.label for spec in specs],
                   "test_positions": "stratified subset of the test split, seeded (attack.examples)",
                   "skipped": result.skipped, "checks": result.checks, "warnings": result.warnings},
        "timing": {"attack_seconds": result.seconds},
    })
    for note in result.skipped:
        log(f"note: {note}")
    for entry in result.entries:
        rate = "" if entry.target_success_rate is None else f", reached target {entry.target_success_rate:.4f}"
        log(f"{entry.attack.upper():>12} eps {entry.eps:.4f}: robust accuracy {entry.accuracy:.4f}, "
            f"success rate {entry.success_rate:.4f}{rate} (n={entry.n})")
    failed = [check for check in result.checks if check["status"] == "failed"]
    log(f"sanity checks: {sum(c['status'] == 'passed' for c in result.checks)} passed, {len(failed)} failed, "
        f"{sum(c['status'] == 'not run' for c in result.checks)} not run")
    for check in failed:
        log(f"warning: check '{check['name']}' failed: {check['detail']}")
    return result


def report_stage(folder: RunFolder, *, log=print) -> Path:
    """Figures and ``report.html`` from what the folder holds."""
    path = write_report(folder)
    log(f"report: {path}")
    return path


def run(config: RunConfig, *, out: str | Path | None = None, quiet: bool = False) -> RunFolder | None:
    """The whole pipeline: train, evaluate, attack, report. Returns the run folder
    (None in the processes other than rank 0 of a distributed run)."""
    trained = train_stage(config, out=out, quiet=quiet)
    if trained.folder is None:  # not rank 0 of a distributed run
        return None
    log = RunLog(trained.folder, quiet=quiet)
    evaluate_stage(trained.folder, trained.model, trained.data, device=trained.device, seed=trained.config.seed,
                   tta=trained.config.eval.tta, log=log)
    attack_stage(trained.folder, trained.model, trained.data, trained.config, device=trained.device, log=log, quiet=quiet)
    report_stage(trained.folder, log=log)
    if trained.config.train.tensorboard:
        tensorboard_results(trained.folder, trained.config)
    return trained.folder


def tensorboard_results(folder: RunFolder, config: RunConfig) -> None:
    """Add the run's figures and its hyperparameters with final metrics to ``RUN/tensorboard``."""
    from imgclf.report.html import build_figures
    from imgclf.tensorboard_logging import log_results

    figures = {k: v for k, v in build_figures(folder).items() if k in ("confusion_matrix", "predictions", "adversarial")}
    log_results(folder.path / "tensorboard", config_to_dict(config), folder.read_json("metrics.json", {}), figures)


@dataclass
class LoadedRun:
    """A finished train stage, rebuilt from its folder."""

    folder: RunFolder
    config: RunConfig
    data: DataSplits
    model: torch.nn.Module
    device: torch.device


def open_run(path: str | Path, *, overrides: dict | None = None) -> LoadedRun:
    """Rebuild a run from its folder: configuration (with ``overrides``), the
    same data splits, and the trained model in eval mode.

    Raises:
        UsageError: If ``path`` is not a run folder or the data cannot be loaded.
    """
    folder = RunFolder.open(path)
    config, device, data = _reload(folder, overrides)
    model = load_model(folder.path, device=device)
    return LoadedRun(folder, config, data, model, device)
