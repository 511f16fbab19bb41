"""The stages of a run (train, evaluate, attack, corrupt, explain, report) and :class:`Run`, which holds them
together.

:class:`Run` is the Python API and the one place that chains the stages:
``Run.train(config)`` makes a run folder and trains; ``Run.open(path)``
rebuilds a finished one from its folder (configuration, saved split indices,
model); ``.evaluate()``, ``.attack()``, ``.corrupt()``, ``.explain()`` and ``.report()`` each write their
part of the folder (see :mod:`imgclf.record`), and ``.finish()`` runs them in order. ``imgclf run``, the
stage commands, sweeps and feature extraction all go through it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from imgclf import record
from imgclf.attacks import RobustnessResult, robustness
from imgclf.calibration import EpsCalibration, calibrate, calibration_under_attack
from imgclf.checkpoint import check_outputs, external_model, load_model, model_info, save_external, save_model
from imgclf.config import (
    CorruptionConfig,
    RunConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    set_dotted,
)
from imgclf.corruptions.evaluation import (
    CorruptionEvaluation,
    against_baseline,
    corruption_robustness,
    corruption_samples,
)
from imgclf.corruptions.registry import auto_skips
from imgclf.data import DataSplits, load_data, stratified_subset
from imgclf.data.augment import per_image
from imgclf.data.loading import dataset_stem
from imgclf.defenses import warmup_reached
from imgclf.distributed import Distributed
from imgclf.errors import UsageError, first_line
from imgclf.evaluation import EvalResult, evaluate, logits_of, predict_logits
from imgclf.models import create_model
from imgclf.models.normalization import native_image_size, normalization
from imgclf.models.weights import file_digest, load_weights
from imgclf.record import SCHEMA_VERSION, AdversarialTraining, AttackRecord, DataCounts, Training, read_metrics, section
from imgclf.report import write_report
from imgclf.run_folder import RunFolder, atomic_write_bytes, atomic_write_text
from imgclf.runtime import environment, seed_everything, select_device
from imgclf.settings import Settings, norm_resets_eps, resolve
from imgclf.training import TrainResult, fit
from imgclf.trust import is_user_code, trust_code

if TYPE_CHECKING:
    from imgclf.lr_finder import LRFinderResult


class RunLog:
    """Prints progress lines (unless quiet) and keeps every line in ``log.txt``."""

    def __init__(self, folder: RunFolder | None = None, *, quiet: bool = False):
        self.folder, self.quiet = folder, quiet
        self._pending: list[str] = []

    def attach(self, folder: RunFolder) -> None:
        """Start writing to ``folder``'s log, including lines logged before it existed."""
        self.folder = folder
        for line in self._pending:
            folder.append_log(line)
        self._pending.clear()

    def __call__(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)
        self._keep(line)

    def warn(self, line: str) -> None:
        """A line that must reach the user whatever the verbosity (a failed sanity check): on stderr."""
        print(line, file=sys.stderr, flush=True)
        self._keep(line)

    def _keep(self, line: str) -> None:
        if self.folder is None:
            self._pending.append(line)
        else:
            self.folder.append_log(line)


class BatchFiles:
    """The units an evaluation has finished (:class:`imgclf.attacks.robust_accuracy.BatchStore`), one file
    each in ``RUN/evaluations/KEY/batches/``: written atomically, the SHA-256 of the ``torch.save`` payload
    (64 hex digits and a newline) before the payload, read with ``weights_only=True``. A unit file whose
    checksum fails (a damaged disk block, a file changed by hand) or that cannot be read is run again
    (its result is the same)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def load(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            digest, _, payload = path.read_bytes().partition(b"\n")
            if hashlib.sha256(payload).hexdigest().encode() != digest:
                return None
            loaded = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
            return None
        return loaded if isinstance(loaded, dict) else None

    def save(self, name: str, result: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(result, buffer)
        payload = buffer.getvalue()
        atomic_write_bytes(self.folder / f"{name}.pt", hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)

    def count(self) -> int:
        """Units committed so far."""
        return len(list(self.folder.glob("*.pt"))) if self.folder.is_dir() else 0

    def remove(self) -> None:
        """Delete the folder once the evaluation is saved whole."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


class Run:
    """One run folder with its configuration, typed settings, data splits and model: the Python API.

    Make one with :meth:`train` (a new folder), :meth:`resume` or :meth:`open`
    (an existing one), then call :meth:`evaluate`, :meth:`attack` and
    :meth:`report`; each writes its part of the folder and returns its result.

    Attributes:
        folder: The run folder (None in the processes other than rank 0 of a distributed run).
        config: The configuration, as ``config.yaml`` records it.
        settings: The typed settings (:func:`imgclf.settings.resolve`).
        data: The train/val/test splits the model was trained on.
        model: The model, ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``; in eval mode
            after training. It may be replaced (e.g. by a wrapped model) before :meth:`attack`.
        device: Where the stages compute.
        train_result: The training result, when this object trained or resumed the run; else None.
        log: Prints progress lines (unless quiet) and keeps them in ``log.txt``.
        dist: This process's place under ``torchrun`` (an evaluation is shared by the processes; only
            rank 0 writes).
    """

    def __init__(self, folder: RunFolder | None, settings: Settings, data: DataSplits, model: torch.nn.Module,
                 device: torch.device, *, log: RunLog, quiet: bool = False,
                 train_result: TrainResult | None = None, dist: Distributed | None = None):
        self.folder, self.settings, self.data, self.model, self.device = folder, settings, data, model, device
        self.log, self.quiet, self.train_result = log, quiet, train_result
        self.dist = dist or Distributed()

    @property
    def config(self) -> RunConfig:
        """The configuration with the data-dependent defaults filled in (what ``config.yaml`` holds)."""
        return self.settings.config

    @property
    def path(self) -> Path:
        """The run folder's path.

        Raises:
            UsageError: In a process other than rank 0 of a distributed run, which has no folder.
        """
        return self._folder().path

    @property
    def metrics(self) -> record.Metrics:
        """The run's ``metrics.json`` as it is now (every stage adds its sections), read and checked."""
        return read_metrics(self._folder().path)

    def _folder(self) -> RunFolder:
        if self.folder is None:
            raise UsageError("this process is not rank 0 of the distributed run: it writes no run folder")
        return self.folder

    # -- making a run --------------------------------------------------------
    @classmethod
    def train(cls, config: RunConfig, *, out: str | Path | None = None, quiet: bool = False,
              after_epoch: Callable[[TrainResult], None] | None = None) -> Run:
        """Load data, train, and save the model, config, splits, history and training state.

        Under ``torchrun`` every process trains and only rank 0 writes (the other
        ranks return a run whose ``folder`` is None).

        Args:
            config: The validated configuration.
            out: Run folder to create (must not exist or be empty); None for
                ``runs/<dataset>-<model>-<time>``.
            quiet: Print nothing but errors.
            after_epoch: Called with the result so far after every saved epoch (a
                sweep's pruner raises from it to stop the run).

        Raises:
            UsageError: Bad data set, model, options, or an existing output folder.
        """
        dist, log, device, data, settings = _prepare(config, out, quiet)
        config, spec = settings.config, data.spec
        learned = int(np.unique(data.train.labels.numpy()).size)
        if learned < spec.num_classes:
            raise UsageError(f"the training split has no image of {spec.num_classes - learned} of the "
                             f"{spec.num_classes} classes ({len(data.train)} images after holding out val and "
                             "test); lower --test-fraction or --val-fraction, or raise --train-examples")
        model = _model_for(config, data, device, log)
        env = environment(device)
        folder = None
        if dist.is_main:
            stem = dataset_stem(spec.name)
            folder = RunFolder.create(out, default_name=f"{stem}-{config.model.source.short_name}")
            log.attach(folder)
            _start_folder(folder, config, data, env)
        for note in data.notes:
            log(f"warning: {note}")
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"{spec.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
            f"{spec.num_classes} classes, input {spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}; "
            f"{config.model.name} with {n_params:,} parameters on {device}"
            + (f", {dist.world_size} processes" if dist.world_size > 1 else "")
        )
        log("splits: " + "; ".join(f"{split}: {origin}" for split, origin in data.origins.items()))
        slow = per_image(config.data.augment)
        if slow:
            log(f"note: --augment {', '.join(slow)} runs image by image (torchvision's policies draw for each image); "
                "the presets run on whole batches")
        if config.train.lr == "auto":
            if dist.world_size > 1:
                raise UsageError("--lr auto runs the range test in one process: run `imgclf lr-find` with the same "
                                 "flags and pass its suggestion as --lr")
            found = _range_test(config, data, model, device, log)
            settings = dataclasses.replace(settings, config=dataclasses.replace(
                config, train=dataclasses.replace(config.train, lr=found.suggestion)))
            if folder is not None:  # the learning rate used, where config.yaml said auto
                atomic_write_text(folder.config_path, dump_config(settings.config))
                _save_range_test(folder, found)
        run = cls(folder, settings, data, model, device, log=log, quiet=quiet)
        if settings.train_eps is not None:
            eps = settings.train_eps.value
            reached = warmup_reached(eps, config.adversarial.warmup_epochs, config.train.epochs, config.train.epochs)
            if reached < eps:
                log.warn(f"warning: the eps warm-up ({config.adversarial.warmup_epochs:g} epochs) outlasts the "
                         f"{config.train.epochs} epoch(s) of training: the training eps reaches {reached:.4g}, not "
                         f"{eps:.4g}; metrics.json records it as training.adversarial.kept_eps (give more --epochs "
                         "or a shorter --eps-warmup)")
        run.train_result = run._fit(dist, env=env, after_epoch=after_epoch)
        return run

    @classmethod
    def resume(cls, path: str | Path, *, epochs: int | str | None = None, quiet: bool = False,
               overrides: dict[str, Any] | None = None, trust_code: bool = False) -> Run:
        """Continue a run from its last training state (``train_state.pt``), e.g. after ``kill -9``, or
        extend a finished run to ``epochs`` epochs.

        On the CPU with the same settings a resumed run gives the same result, weight for weight, as
        a run that was never stopped. A finished run is left as it is unless ``epochs`` is more than
        it trained: then training goes on from its last epoch with a new schedule over the added
        epochs (see :func:`imgclf.training.fit`'s ``extend``), ``config.yaml`` records the new
        epoch count, and where the run has clean test metrics they are computed again for the kept
        model (its robustness evaluations stay, as those of the earlier model, until ``imgclf
        attack`` is run again).

        Args:
            epochs: The run's new number of epochs, a whole number or its text (None: its own).
            trust_code: As for :meth:`open`: import the code of a ``py:`` model that ``config.yaml`` names.

        Raises:
            UsageError: If ``path`` is not a run folder or holds no training state; if ``epochs`` is
                not more than the epochs trained, changes the length of an unfinished run, or would
                extend a run stopped by catastrophic overfitting.
        """
        folder = RunFolder.open(path)
        state_path = folder.file(record.TRAIN_STATE)
        if not state_path.is_file():
            raise UsageError(f"{str(path)!r} holds no {record.TRAIN_STATE}: it stopped before its first epoch ended; "
                             "start it again instead")
        planned = _run_config(folder, None, trust_code=trust_code).train.epochs
        overrides = dict(overrides or {})
        if epochs is not None:
            overrides["train.epochs"] = epochs
        settings, device, data = _reload(folder, overrides, trust_code=trust_code)
        log = RunLog(folder, quiet=quiet)
        model = _model_for(settings.config, data, device)
        state = _load_train_state(state_path, device)
        run = cls(folder, settings, data, model, device, log=log, quiet=quiet)
        # The training state is the record of what was trained: a config.yaml longer than its plan is an
        # extension stopped before its first epoch was saved, which goes on from the state as it is.
        saved_plan = state.get("epochs")  # (None in the states of earlier releases)
        planned = saved_plan if isinstance(saved_plan, int) and saved_plan >= 1 else planned
        done, finished = state["epoch"], state["epoch"] >= planned or state["stopped_early"]
        epochs = settings.config.train.epochs  # `epochs` checked as the setting it is
        extend = epochs != planned or ("train.epochs" in overrides and finished and epochs > done)
        if extend:
            _check_extension(folder, path, done=done, planned=planned, epochs=epochs, finished=finished)
        folder.remove_temporary_files()  # left by a write that a kill interrupted
        if not extend and finished:
            run.train_result = TrainResult(state["history"], state["best_epoch"], state["best_val_accuracy"],
                                           state["seconds"], state["stopped_early"],
                                           state.get("best_robust_val_accuracy"))
            _restore_weights(model, state["best_state"], state_path)
            model.eval()
            if folder.weights_path.is_file() and read_metrics(folder.path).training is not None:
                log(f"{folder.path} finished training already (epoch {state['epoch']}); nothing to resume "
                    "(--epochs N extends it to N epochs)")
            else:  # stopped between the last training state and the final model and metrics
                log(f"{folder.path} finished its last epoch; saving the model and the training metrics")
                run._save_trained(run.train_result, Distributed().world_size, environment(device))
            return run
        if not extend:
            log(f"resuming {folder.path} after epoch {done} of {epochs}")
            run.train_result = run._fit(Distributed(), resume=state)
            return run
        train = settings.config.train
        atomic_write_text(folder.config_path, dump_config(settings.config))  # the run's length is now `epochs`
        log(f"extending {folder.path} from {done} to {epochs} epochs: from epoch {done}'s weights and optimizer "
            f"state, " + ("the step schedule goes on" if train.schedule == "step" else
                          f"a new {train.schedule} schedule over the {epochs - done} added epochs (lr {train.lr:g})")
            + f"; the kept model is the best of all {epochs} epochs")
        earlier = read_metrics(folder.path)
        run.train_result = run._fit(Distributed(), resume=state, extend=True)
        if earlier.clean is not None:
            log("the clean test metrics were those of the model before the extension: evaluating again")
            run.evaluate()
        if earlier.evaluations:
            log(f"{len(earlier.evaluations)} robustness evaluation(s) of the model before the extension stay in "
                f"metrics.json and the report, marked as such; `imgclf attack {folder.path}` evaluates this one")
        if folder.file(record.REPORT).is_file():
            run.report()
        return run

    @classmethod
    def from_model(cls, config: RunConfig, *, out: str | Path | None = None, quiet: bool = False) -> Run:
        """A new evaluation-only run folder for a model imgclf did not train: ``config.model`` names it (an
        architecture with ``weights``, ``timm:``/``torchvision:``/``py:`` sources, or an exported file; see
        :func:`imgclf.checkpoint.external_model`) and ``config.data`` the data set whose test split it is
        evaluated on. Call :meth:`evaluate`, :meth:`attack` and :meth:`report` next; the folder then reopens
        with :meth:`open` like any other run.

        Raises:
            UsageError: Bad data set or model, weights that do not fit, or an existing output folder.
        """
        dist, log, device, data, settings = _prepare(config, out, quiet)
        config, spec = settings.config, data.spec
        env = environment(device)
        model, info, exported = external_model(config.model, spec, env)
        stem = dataset_stem(spec.name)
        folder = None
        if dist.is_main:
            folder = RunFolder.create(out, default_name=f"{stem}-{config.model.source.short_name}-eval")
            log.attach(folder)
            _start_folder(folder, config, data, env)
            save_external(folder.path, model, info, exported)
        log(f"{spec.name}: {len(data.test)} test images, {spec.num_classes} classes, input "
            f"{spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}; {config.model.name} "
            f"({info['source']['kind']}), normalization: {info['source']['normalization']}; on {device}")
        for note in data.notes:
            log(f"warning: {note}")
        return cls(folder, settings, data, model.to(device), device, log=log, quiet=quiet or not dist.is_main,
                   dist=dist)

    @classmethod
    def open(cls, path: str | Path, *, overrides: dict[str, Any] | None = None, quiet: bool = False,
             trust_code: bool = False, changed_data: bool = False) -> Run:
        """Rebuild a run from its folder: configuration (with ``overrides``, dotted keys such as
        ``attack.eps``), the same data splits, and the trained model in eval mode.

        A new ``attack.norm`` without new eps values takes that norm's default eps.

        Args:
            trust_code: Import the Python code of a ``py:`` model that the folder names (and load a ``.pt2``
                copy with pickled payloads): only for a folder from someone you trust (:mod:`imgclf.trust`).
            changed_data: Go on where the data set changed since the run began (images added, removed or
                replaced); ``metrics.json``'s ``data_notes`` and the report then say what changed.

        Raises:
            UsageError: If ``path`` is not a run folder, an override is invalid, the data cannot be loaded or
                changed (without ``changed_data``), or the folder names code that is not trusted.
        """
        dist = Distributed.from_env()
        folder = RunFolder.open(path)
        settings, device, data = _reload(folder, overrides, trust_code=trust_code, changed_data=changed_data,
                                         writes=dist.is_main)
        device = dist.device(device)
        model = load_model(folder.path, device=device, trust_code=trust_code)
        log = RunLog(folder if dist.is_main else None, quiet=quiet or not dist.is_main)
        return cls(folder, settings, data, model, device, log=log, quiet=quiet or not dist.is_main, dist=dist)

    # -- the stages ----------------------------------------------------------
    def _fit(self, dist: Distributed, *, resume: dict[str, Any] | None = None, extend: bool = False,
             env: dict[str, Any] | None = None, after_epoch: Callable[[TrainResult], None] | None = None
             ) -> TrainResult:
        """Fit, writing the history, the best model and the training state after every epoch (rank 0)."""
        config, folder, model, spec = self.config, self.folder, self.model, self.data.spec
        env = env if env is not None else environment(self.device)
        board = None
        if config.train.tensorboard and folder is not None:
            from imgclf.tensorboard_logging import TrainingLogger

            steps_done = resume.get("optimizer_steps", 0) if resume is not None else 0
            board = TrainingLogger(folder.path / "tensorboard", first_step=steps_done)

        initial = self._initial_weights

        def info() -> dict[str, Any]:
            return model_info(model, config.model.source, config.model.options, spec, env, initial_weights=initial)

        def save_epoch(result: TrainResult, state: dict[str, Any]) -> None:
            if folder is not None:
                if board is not None:
                    board.epoch(result.history[-1])
                    state["optimizer_steps"] = board.global_step
                folder.write_csv(record.HISTORY, result.history)
                if result.best_epoch == state["epoch"]:  # a new best: keep it as the run's model
                    save_model(state["best_state"], folder.weights_path, info())
                buffer = io.BytesIO()
                torch.save(state, buffer)
                atomic_write_bytes(folder.file(record.TRAIN_STATE), buffer.getvalue())
            if after_epoch is not None:
                after_epoch(result)

        train_eps = self.settings.train_eps
        try:
            result = fit(
                model, self.data, config.train, augment=config.data.augment, balance=config.data.balance,
                device=self.device, seed=config.seed, log=self.log, quiet=self.quiet, on_epoch=save_epoch,
                resume=resume, extend=extend, distributed=dist, on_step=board.step if board is not None else None,
                adversarial=config.adversarial if config.adversarial.enabled else None,
                adversarial_eps=train_eps.value if train_eps is not None else None, norm=config.attack.norm,
            )
        finally:
            if board is not None:
                board.close()
        if folder is not None:
            self._save_trained(result, dist.world_size, env)
        return result

    @functools.cached_property
    def _initial_weights(self) -> dict[str, Any]:
        """``model.json``'s ``initial_weights``: the file training started from and the fine-tuning settings
        (empty without ``model.weights``); the file is hashed once."""
        config = self.config
        if config.model.weights is None:
            return {}
        train = config.train
        return {"file": config.model.weights, "sha256": file_digest(config.model.weights),
                "freeze_epochs": train.freeze_epochs, "backbone_lr_scale": train.backbone_lr_scale,
                "freeze_bn": train.freeze_bn}

    def _save_trained(self, result: TrainResult, world_size: int, env: dict[str, Any]) -> None:
        """Save the kept model and the ``training`` and ``timing`` sections of ``metrics.json``."""
        folder = self._folder()
        config = self.config
        save_model(self.model, folder.weights_path,
                   model_info(self.model, config.model.source, config.model.options, self.data.spec, env,
                              initial_weights=self._initial_weights))
        folder.update_metrics(_training_metrics(config, self.settings, result, world_size,
                                                model_fingerprint(self.model)))
        robust = "" if result.best_robust_val_accuracy is None else \
            f", robust val accuracy {result.best_robust_val_accuracy:.4f}"
        self.log(f"kept epoch {result.best_epoch} (val accuracy {result.best_val_accuracy:.4f}{robust}); "
                 f"model saved to {folder.weights_path}")

    def evaluate(self) -> EvalResult:
        """Clean metrics on the test split; saves ``metrics.json`` (``clean``) and ``samples.npz``.

        With ``eval.tta`` each image's logits are averaged with its mirror's.
        """
        folder, data, config = self._folder(), self.data, self.config
        result = evaluate(self.model, data.test, list(data.spec.class_names), device=self.device,
                          tta=config.eval.tta)
        save_samples(folder, lambda rows: data.test.float_images(rows).numpy(), data.test.labels.numpy(),
                     result.predictions, config.seed)
        val_logits = predict_logits(self.model, data.val, device=self.device, tta=config.eval.tta)
        calibration = calibrate(result.logits, data.test.labels, val_logits, data.val.labels,
                                bins=config.eval.calibration_bins)
        folder.update_metrics({"clean": result.metrics.to_dict(), "calibration": section(calibration),
                               "timing": {"eval_seconds": result.seconds}})
        m, c = result.metrics, calibration
        top5 = f"  top-5 accuracy {m.top5_accuracy:.4f}" if m.top5_accuracy is not None else ""
        self.log(f"test: accuracy {m.accuracy:.4f}{top5}  macro F1 {m.macro_f1:.4f}  balanced accuracy "
                 f"{m.balanced_accuracy:.4f}  (n={m.n})")
        self.log(f"calibration: ECE {c.test.ece:.4f}  NLL {c.test.nll:.4f}  Brier {c.test.brier:.4f}; with "
                 f"temperature {c.temperature:.3f} (fitted on val): ECE {c.test_scaled.ece:.4f}  NLL "
                 f"{c.test_scaled.nll:.4f}  Brier {c.test_scaled.brier:.4f}")
        return result

    def attack(self, *, attacks: list[str] | None = None, eps: str | list[str] | None = None,
               examples: int | str | None = None, norm: str | None = None, steps: int | None = None,
               alpha: float | None = None, restarts: int | None = None, target: str | None = None,
               queries: int | None = None) -> RobustnessResult:
        """Robust accuracy under each configured attack and eps, and the worst case, on a seeded
        stratified test subset, with the sanity checks.

        Each argument given replaces the configured ``attack`` setting of that name for this call
        only (``config.yaml`` is left as it is); None keeps the configured one.

        Args:
            attacks: Attack names or presets, e.g. ``["pgd"]`` or ``["full"]``.
            eps: Radii in pixel units as the CLI takes them (``"0,8/255"``, ``"0:0.3:0.1"``);
                with a new ``norm`` and no ``eps``, that norm's default list.
            examples: Test images to attack, or ``"all"``.
            norm: ``"linf"`` or ``"l2"``. steps, alpha, restarts, target, queries: As the CLI's
                ``--steps``, ``--step-size``, ``--restarts``, ``--target``, ``--queries``.

        The evaluation is added to ``metrics.json``'s ``evaluations`` (:class:`imgclf.record.Evaluation`),
        keyed by its settings and the model: earlier evaluations are kept, and one with the same key is
        reused instead of run again. Its files go to ``evaluations/KEY/``: ``adversarial.pt``
        (worst-case adversarial images as float tensors with their test positions) and
        ``adversarial.npz`` (the examples shown in the report).

        Raises:
            UsageError: On an invalid change, or an eps the images do not allow (an L2 eps too large).
        """
        given = {"attacks": attacks, "eps": eps, "examples": examples, "norm": norm, "steps": steps,
                 "alpha": alpha, "restarts": restarts, "target": target, "queries": queries}
        changes = {key: value for key, value in given.items() if value is not None}
        settings = self._with_changes("attack", changes) if changes else self.settings
        data, config, dist = self.data, settings.config, self.dist
        folder = self._folder() if dist.is_main else self.folder  # (the other ranks read it, where they have it)
        labels = data.test.labels
        rows = stratified_subset(labels.numpy(), settings.examples, config.seed)
        self.model.eval()
        surrogate = load_model(config.attack.surrogate, device=self.device) \
            if config.attack.surrogate and dist.is_main else None
        asked = _evaluation_settings(settings, len(rows), self.model)
        if surrogate is not None:  # another surrogate is another transfer check: another evaluation
            asked["surrogate"] = model_fingerprint(surrogate)
        key = record.evaluation_key(asked)
        earlier = None
        if dist.is_main and folder is not None:
            earlier = next((e for e in read_metrics(folder.path).evaluations if e.key == key), None)
            if not (record.evaluation_folder(folder.path, key) / record.ADVERSARIAL_EXAMPLES).is_file():
                earlier = None
        if dist.gather(earlier is not None)[0]:  # rank 0 decides for every process
            if earlier is None:  # another process: rank 0 reports the reused evaluation
                return RobustnessResult([], float("nan"), 0, config.seed)
            self.log(f"reusing the evaluation {key} of {earlier.finished or 'an earlier run'}: the same model, "
                     "attacks, eps and examples (delete its entry in metrics.json to run it again)")
            result = RobustnessResult(earlier.robustness, earlier.attack.clean_accuracy, earlier.attack.n,
                                      earlier.attack.seed, skipped=earlier.attack.skipped, checks=earlier.attack.checks,
                                      seconds=earlier.seconds)
            self._log_attack(result)
            return result
        with tqdm(desc="attacks", unit="batch", leave=False, disable=True if self.quiet else None,
                  dynamic_ncols=True) as bar:

            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)
                if done == total:  # what comes next takes a while too
                    bar.set_description("attacks done; sanity checks")

            store = BatchFiles(record.evaluation_folder(folder.path, key) / record.BATCHES) \
                if dist.is_main and folder is not None else None
            committed = store.count() if store is not None else 0
            if committed:
                self.log(f"continuing evaluation {key}: {committed} batch(es) were committed before it stopped")
            try:
                result = robustness(
                    self.model, data.test.float_images(rows), labels[torch.as_tensor(rows)],
                    attacks=list(settings.attacks), eps_values=settings.eps_values, device=self.device,
                    batch_size=config.attack.batch_size, seed=config.seed, progress=advance, store=store,
                    distributed=dist, run_checks=dist.is_main,
                    surrogate=surrogate, cascade=config.attack.cascade,
                )
            except ValueError as error:  # e.g. an L2 eps larger than the images allow
                raise UsageError(str(error)) from None
        if dist.is_main and folder is not None and store is not None:
            calibration = calibration_under_attack(
                self.model, result.adversarial["images"], sorted({row.eps for row in result.entries}),
                labels[torch.as_tensor(rows)],
                bins=config.eval.calibration_bins, batch_size=config.attack.batch_size) \
                if result.adversarial else []
            _save_evaluation(folder, key, asked, result, settings, data, rows, calibration,
                             processes=dist.world_size)
            store.remove()
            self._log_attack(result)
        return result

    def corrupt(self, *, corruptions: list[str] | str | None = None, severities: list[int] | str | None = None,
                examples: int | str | None = None, baseline: str | Path | None = None) -> CorruptionEvaluation:
        """Accuracy and ECE under the common corruptions at each severity, on a seeded stratified test subset
        (:func:`imgclf.corruptions.corruption_robustness`), with the mCE and relative mCE against a baseline run.

        Each argument given replaces the configured ``corruption`` setting of that name for this call only;
        None keeps the configured one.

        Args:
            corruptions: ``"all"``, groups or names (``["noise", "fog"]``). severities: ``"1:5"``, ``[1, 3, 5]``.
            examples: Test images, or ``"all"``. baseline: A run folder already evaluated under these
                corruptions and severities on the same test images (``imgclf corrupt BASELINE`` first).

        Writes ``metrics.json`` ``corruptions`` (replacing an earlier one) and ``corruptions.npz`` (one test
        image under every corruption and severity, for the report).

        Raises:
            UsageError: On an unknown corruption or severity, images the corruptions cannot take, or a
                baseline that is not comparable.
        """
        folder, data, config = self._folder(), self.data, self.config
        given = {"corruptions": corruptions, "severities": severities, "examples": examples}
        changes = {key: value for key, value in given.items() if value is not None}
        settings = self._with_changes("corruption", changes) if changes else self.settings
        names, levels, chosen = settings.corruptions, settings.severities, settings.config.corruption
        count = chosen.examples
        labels = data.test.labels
        rows = stratified_subset(labels.numpy(), None if count == "all" else int(count), config.seed)
        baseline = chosen.baseline if baseline is None else baseline
        metrics = self.metrics
        earlier = _corruption_baseline(baseline, metrics.dataset) if baseline else None
        if earlier is not None and (earlier.n != len(rows) or (earlier.settings.get("seed") != config.seed
                                                               and len(rows) < len(labels))):
            raise UsageError(f"the baseline {str(baseline)!r} was evaluated on {earlier.n} test images with seed "
                             f"{earlier.settings.get('seed')}, this run on {len(rows)} with seed {config.seed}: not "
                             "the same images; evaluate both with the same seed, or both with --corruption-examples "
                             "all")
        self.model.eval()
        self.log(f"common corruptions: {len(names)} corruption(s) x severities {', '.join(map(str, levels))} on "
                 f"{len(rows)} test images")
        with tqdm(desc="corruptions", unit="corruption", leave=False, disable=True if self.quiet else None,
                  dynamic_ncols=True) as bar:

            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            images = data.test.float_images(rows)
            try:
                result = corruption_robustness(
                    self.model.to(self.device), images, labels[torch.as_tensor(rows)], corruptions=names,
                    severities=levels, seed=config.seed, indices=rows.tolist(), batch_size=config.eval.batch_size,
                    bins=config.eval.calibration_bins, progress=advance)
                if earlier is not None:
                    result = against_baseline(result, earlier, name=str(baseline))
            except ValueError as error:
                raise UsageError(str(error)) from None
        from datetime import UTC, datetime

        result.settings["model"] = model_fingerprint(self.model)
        result.finished = datetime.now(UTC).isoformat(timespec="seconds")
        grid = corruption_samples(images[0], corruptions=names, severities=levels, seed=config.seed,
                                  index=int(rows[0]))
        with torch.no_grad():
            predicted = self.model(grid.flatten(0, 1).to(self.device)).argmax(1).cpu()  # (K * (S + 1),)
        folder.write_arrays(record.CORRUPTION_SAMPLES, images=grid.numpy(), label=np.asarray(int(labels[rows[0]])),
                            predictions=predicted.view(grid.shape[:2]).numpy(), corruptions=np.array(names),
                            severities=np.array(levels))
        if metrics.corruptions is not None:
            self.log("replacing the earlier corruption evaluation in metrics.json")
        folder.update_metrics({"corruptions": section(result), "timing": {"corruption_seconds": result.seconds}})
        self._log_corruptions(result)
        return result

    def _log_corruptions(self, result: CorruptionEvaluation) -> None:
        for name in result.corruptions:
            accuracies = "  ".join(f"{result.accuracy(name, s):.3f}" for s in result.severities)
            self.log(f"{name:>15}: accuracy by severity {accuracies}  (mean error {result.errors[name]:.4f})")
        against = "" if result.mce is None or result.relative_mce is None else \
            f"; against {result.baseline}: mCE {100 * result.mce:.1f}%, relative mCE {100 * result.relative_mce:.1f}%"
        self.log(f"mean corruption error {result.mean_error:.4f} (clean error {1 - result.clean_accuracy:.4f}, "
                 f"n={result.n}, {result.seconds:.0f} s){against}")

    def explain(self, *, eps: float | None = None, method: str = "auto", layer: str | None = None,
                count: int = 8) -> Path:
        """What the model looks at (:func:`imgclf.explanations.explain`: Grad-CAM, or saliency where Grad-CAM
        does not apply) on ``count`` fixed test images, clean and adversarial, for the report.

        The images are ``count`` of the newest robustness evaluation's subset that the model classifies
        correctly, one per class in turn (the first of each class, then the second, ...), with their worst-case
        adversarial examples at ``eps`` (default: the eps of the report's headline numbers, the training eps
        where there is one); without an evaluation, test images chosen the same way, clean only. Each map
        explains the class the model predicts for that image.

        Writes ``explanations.npz``; returns its path.

        Raises:
            UsageError: On an eps the evaluation did not attack at, an unknown method or layer, or Captum
                missing.
        """
        from imgclf.explanations import explain
        from imgclf.report.html import telling_eps

        folder, data, metrics = self._folder(), self.data, self.metrics
        latest = metrics.latest
        stored_path = record.evaluation_folder(folder.path, latest.key) / record.ADVERSARIAL_IMAGES if latest else None
        arrays: dict[str, Any] = {}
        if stored_path is not None and stored_path.is_file():
            stored = torch.load(stored_path, map_location="cpu", weights_only=True)
            radii = [float(e) for e in stored["eps"]]
            chosen = telling_eps(metrics) if eps is None else float(eps)
            if chosen is None or not any(abs(r - chosen) < 1e-6 for r in radii):  # (stored as float32)
                shown = ", ".join(f"{r:g}" for r in radii)
                raise UsageError(f"the newest evaluation attacked at eps {shown}; choose one of them (or attack at "
                                 f"{eps} first)" if eps is not None else f"no eps above 0 in the newest evaluation "
                                 f"({shown}) to explain adversarial examples at; attack at one first")
            at = next(i for i, r in enumerate(radii) if abs(r - chosen) < 1e-6)
            positions = stored["test_positions"].numpy()
            clean = data.test.float_images(positions)
            right = (logits_of(self.model, clean).argmax(1) == stored["labels"]).numpy()
            rows = _one_per_class(np.flatnonzero(right) if right.any() else np.arange(len(positions)),
                                  stored["labels"].numpy(), count)
            clean, adversarial = clean[rows], stored["images"][at][rows].float()
            labels, positions = stored["labels"][rows], positions[rows]
            arrays["eps"] = np.float64(chosen)
        else:
            positions = _one_per_class(np.arange(len(data.test.labels)), data.test.labels.numpy(), count)
            clean, adversarial, labels = data.test.float_images(positions), None, data.test.labels[positions]
        self.model.eval()
        before = explain(self.model, clean.to(self.device), method=method, layer=layer)
        arrays.update(clean=clean.numpy(), labels=labels.numpy(), clean_pred=before.targets.numpy(),
                      clean_maps=before.maps.numpy(), test_positions=np.asarray(positions),
                      method=np.array(before.method), layer=np.array(before.layer or ""))
        if adversarial is not None:
            after = explain(self.model, adversarial.to(self.device), method=method, layer=layer)
            arrays.update(adversarial=adversarial.numpy(), adversarial_pred=after.targets.numpy(),
                          adversarial_maps=after.maps.numpy())
        folder.write_arrays(record.EXPLANATIONS, **arrays)
        where = f" ({before.layer})" if before.layer else ""
        self.log(f"explanations: {before.method}{where} on {len(clean)} test images"
                 + (f", clean and adversarial at eps {float(arrays['eps']):g}" if adversarial is not None else ""))
        return folder.file(record.EXPLANATIONS)

    def _with_changes(self, section: str, changes: dict[str, Any]) -> Settings:
        """The settings with ``changes`` to one section of the configuration, for one call (a new ``attack``
        norm without eps takes that norm's default eps), resolved like every setting.

        Raises:
            UsageError: On an invalid value."""
        values = config_to_dict(self.config)
        for key, value in norm_resets_eps({f"{section}.{key}": value for key, value in changes.items()}).items():
            set_dotted(values, key, value)
        spec = self.data.spec
        return resolve(config_from_dict(values), channels=spec.channels, class_names=list(spec.class_names))

    def _log_attack(self, result: RobustnessResult) -> None:
        for note in result.skipped:
            self.log(f"note: {note}")
        for entry in result.entries:
            rate = "" if entry.target_success_rate is None else f", reached target {entry.target_success_rate:.4f}"
            self.log(f"{entry.attack.upper():>12} eps {entry.eps:.4f}: robust accuracy {entry.accuracy:.4f}, "
                     f"success rate {entry.success_rate:.4f}{rate} (n={entry.n})")
        failed = [check for check in result.checks if check["status"] == "failed"]
        self.log(f"sanity checks: {sum(c['status'] == 'passed' for c in result.checks)} passed, {len(failed)} "
                 f"failed, {sum(c['status'] == 'not run' for c in result.checks)} not run")
        for check in failed:  # on stderr even with --quiet: the numbers above may not be what they seem
            self.log.warn(f"warning: check '{check['name']}' failed: {check['detail']}")

    def finish(self, *, attack: bool = True) -> EvalResult:
        """The stages after training, in order: :meth:`evaluate`, :meth:`attack` (unless ``attack`` is
        False), :meth:`corrupt` (as ``corruption.stage`` says: see :meth:`_corruption_wanted`), :meth:`explain`
        and :meth:`report`; returns the clean evaluation."""
        evaluation = self.evaluate()
        if attack:
            self.attack()
        if self._corruption_wanted(attack):
            self.corrupt()
        try:
            self.explain()
        except (UsageError, RuntimeError, ValueError) as error:  # a heat map is not worth the finished run's report
            self.log.warn(f"warning: no explanations in the report: {first_line(error)}")
        self.report()
        return evaluation

    def _corruption_wanted(self, attack: bool) -> bool:
        """Whether :meth:`finish` runs the corruption stage: always with ``corruption.stage`` ``on`` (where the
        images are at least 8x8), never with ``off``; with ``auto`` where any other ``corruption`` setting
        differs from its default (the stage was asked for), else where there is an attack stage and the work
        is within :func:`imgclf.corruptions.registry.auto_skips`'s rule. A skipped stage is logged with the
        reason and the command that runs it."""
        stage, size = self.config.corruption.stage, self.data.spec.image_size
        if stage == "off":
            return False
        if min(size) < 8:
            self.log(f"note: common corruptions skipped: they need images of at least 8x8 pixels, these are {size}")
            return False
        if stage == "on":
            return True
        chosen = self.config.corruption
        if chosen != dataclasses.replace(CorruptionConfig(), stage=stage):
            return True  # corruptions, severities, examples or a baseline set: asked for
        remedy = f"run them with imgclf corrupt {self._folder().path} or --corruption-stage on"
        if not attack:
            self.log(f"note: common corruptions skipped (no attack stage in this run); {remedy}")
            return False
        total = len(self.data.test) if chosen.examples == "all" else min(int(chosen.examples), len(self.data.test))
        why = auto_skips(images=total, shape=self.data.spec.input_shape, corruptions=len(self.settings.corruptions),
                         severities=len(self.settings.severities))
        if why is not None:
            self.log(f"note: common corruptions skipped: {why}; {remedy}")
            return False
        return True

    def report(self) -> Path:
        """Figures and ``report.html`` from what the folder holds (and, with ``train.tensorboard``,
        the figures and final metrics in ``RUN/tensorboard``); returns the report's path."""
        self.log("writing the report")
        path = write_report(self._folder())
        self.log(f"report: {path}")
        if self.config.train.tensorboard:
            tensorboard_results(self._folder(), self.config)
        return path


def run(config: RunConfig, *, out: str | Path | None = None, quiet: bool = False) -> RunFolder | None:
    """The whole pipeline: train, evaluate, attack, report. Returns the run folder
    (None in the processes other than rank 0 of a distributed run)."""
    trained = Run.train(config, out=out, quiet=quiet)
    if trained.folder is None:  # not rank 0 of a distributed run
        return None
    trained.finish()
    return trained.folder


def report_folder(path: str | Path) -> Path:
    """Figures and ``report.html`` of any run folder, image model or classifier on features
    (``imgclf report RUN``); nothing is recomputed or loaded but what the folder holds."""
    folder = RunFolder.open(path)
    report = write_report(folder)
    print(f"report: {report}")
    return report


def _run_config(folder: RunFolder, overrides: dict[str, Any] | None, *, trust_code: bool) -> RunConfig:
    """A run folder's ``config.yaml`` with ``overrides``.

    Raises:
        UsageError: If it is missing or empty (a run folder always writes it whole: an empty one is damaged,
            not the defaults), or invalid.
    """
    path = folder.config_path
    if not path.is_file() or path.stat().st_size == 0:
        raise UsageError(f"{str(path)!r} is missing or empty; restore it from a copy of the run (its settings "
                         "cannot be guessed)")
    return load_config(path, overrides, trust_code=trust_code)


def _reload(folder: RunFolder, overrides: dict[str, Any] | None, *, trust_code: bool = False,
            changed_data: bool = False, writes: bool = True) -> tuple[Settings, torch.device, DataSplits]:
    """A run folder's settings (with ``overrides``), device, and the very data splits it trained on.

    Args:
        writes: This process writes the folder (rank 0 under torchrun).

    Raises:
        UsageError: If the data set changed since the run began (:func:`_data_changes`), unless ``changed_data``
            accepts it; the change is then added to ``metrics.json``'s ``data_notes``, which the report shows.
    """
    config = _run_config(folder, norm_resets_eps(dict(overrides or {})), trust_code=trust_code)
    seed_everything(config.seed)
    device = select_device(config.device)
    saved = folder.read_arrays(record.SPLITS)  # (read once: the positions, then the fingerprints)
    data = load_data(config.data, seed=config.seed, indices=_load_splits(folder, saved))
    changes = _data_changes(saved or {}, data)
    if changes and not changed_data:
        raise UsageError(f"the data of {str(folder.path)!r} changed since the run began: {'; '.join(changes)}; "
                         "evaluate it on the data it was trained on, or pass --changed-data to go on (the report "
                         "then says so)")
    if changes and writes:
        notes = read_metrics(folder.path).data_notes
        added = [f"evaluated on changed data: {change}" for change in changes]
        folder.update_metrics({"data_notes": notes + [note for note in added if note not in notes]})
    spec = data.spec
    return resolve(config, channels=spec.channels, class_names=list(spec.class_names)), device, data


def _check_extension(folder: RunFolder, path: str | Path, *, done: int, planned: int, epochs: int,
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


def _load_train_state(path: Path, device: torch.device) -> dict[str, Any]:
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


def _restore_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor] | None, path: Path) -> None:
    """Load weights kept in a training state into ``model``.

    Raises:
        UsageError: If they do not fit the model (the state is another run's).
    """
    try:
        model.load_state_dict(weights or {})
    except (RuntimeError, TypeError, AttributeError) as error:
        raise UsageError(f"{str(path)!r} holds the training state of another model ({first_line(error)}); "
                         "start the run again instead of resuming it") from None


def _prepare(config: RunConfig, out: str | Path | None, quiet: bool
             ) -> tuple[Distributed, RunLog, torch.device, DataSplits, Settings]:
    """What a new run folder starts from: this process's place under torchrun, the log (quiet but on rank 0),
    the device, the data (at a library model's native size unless told) and the settings resolved on it.

    Raises:
        UsageError: If ``out`` exists and is not empty, or the data cannot be loaded.
    """
    dist = Distributed.from_env()
    if out is not None and dist.is_main:
        RunFolder.check_available(out)
    if is_user_code(config.model.name):  # named by the caller (a file naming it was checked when read)
        trust_code(config.model.name)
    log = RunLog(quiet=quiet or not dist.is_main)
    seed_everything(config.seed)
    device = dist.device(select_device(config.device))
    config = _with_native_size(config)
    data = load_data(config.data, seed=config.seed)
    spec = data.spec
    return dist, log, device, data, resolve(config, channels=spec.channels, class_names=list(spec.class_names))


def find_lr(config: RunConfig, *, start_lr: float, end_lr: float, steps: int, quiet: bool = False
            ) -> LRFinderResult:
    """``imgclf lr-find``: the learning-rate range test with the data, model and optimizer ``config`` names
    (see :func:`imgclf.lr_finder.lr_range_test`).

    Raises:
        UsageError: Bad data set, model or options; a sweep that is not a range; a loss that never fell.
    """
    from imgclf.lr_finder import lr_range_test

    _, log, device, data, settings = _prepare(config, None, quiet)
    config = settings.config
    model = _model_for(config, data, device)
    spec = data.spec
    log(f"{spec.name}: {len(data.train)} train images, {spec.num_classes} classes; {config.model.name} on {device}; "
        f"{config.train.optimizer}, batch {config.train.batch_size}, lr {start_lr:g} to {end_lr:g} in {steps} steps")
    return lr_range_test(model, data, config.train, augment=config.data.augment, balance=config.data.balance,
                         device=device, seed=config.seed, start_lr=start_lr, end_lr=end_lr, steps=steps)


def _range_test(config: RunConfig, data: DataSplits, model: torch.nn.Module, device: torch.device,
                log: Callable[[str], None]) -> LRFinderResult:
    """``--lr auto``: the range test on a copy of ``model`` (the run then trains ``model`` itself, from the
    same starting weights, as with ``--lr`` set to the suggestion)."""
    import copy

    from imgclf.lr_finder import lr_range_test

    log("--lr auto: learning-rate range test")
    found = lr_range_test(copy.deepcopy(model), data, config.train, augment=config.data.augment,
                          balance=config.data.balance, device=device, seed=config.seed)
    log(f"--lr auto: {found.describe()}")
    return found


def _save_range_test(folder: RunFolder, found: LRFinderResult) -> None:
    """``lr_find.csv`` and ``metrics.json``'s ``lr_finder``."""
    folder.write_csv(record.LR_FIND, found.rows())
    folder.update_metrics({"lr_finder": section(found.summary)})


def _model_for(config: RunConfig, data: DataSplits, device: torch.device,
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


def _with_native_size(config: RunConfig) -> RunConfig:
    """``config`` with ``data.image_size`` set to a library model's native input size where its weights
    have one and no ``--image-size`` was given (:func:`imgclf.models.normalization.native_image_size`)."""
    if config.data.image_size is not None:
        return config
    size = native_image_size(config.model)
    if size is None:
        return config
    values = config_to_dict(config)
    values["data"]["image_size"] = size
    return config_from_dict(values)


def _start_folder(folder: RunFolder, config: RunConfig, data: DataSplits, env: dict[str, Any]) -> None:
    """What a new run folder holds before training: config, splits, bad files, and the run's facts."""
    spec = data.spec
    atomic_write_text(folder.config_path, dump_config(config))
    _save_splits(folder, data)
    if data.bad_files:
        atomic_write_text(folder.file(record.BAD_FILES), "".join(f"{p}\t{r}\n" for p, r in data.bad_files))
    folder.update_metrics({
        "schema_version": SCHEMA_VERSION,
        "dataset": spec.name,
        "model": config.model.name,
        "num_classes": spec.num_classes,
        "class_names": list(spec.class_names),
        "seed": config.seed,
        "data": section(DataCounts(len(data.train), len(data.val), len(data.test), list(spec.input_shape),
                                   bad_files=len(data.bad_files), origins=data.origins)),
        "data_notes": data.notes,
        "environment": env,
    })


def _training_metrics(config: RunConfig, settings: Settings, result: TrainResult, processes: int,
                      fingerprint: str) -> dict[str, Any]:
    """``metrics.json``'s ``training`` and ``timing`` sections after training (``fingerprint``: the kept model's)."""
    adversarial = None
    if settings.train_eps is not None:
        eps = settings.train_eps.value
        kept_eps = warmup_reached(eps, config.adversarial.warmup_epochs, config.train.epochs, result.best_epoch)
        adversarial = AdversarialTraining(config.adversarial.recipe, eps, config.attack.norm,
                                          result.best_robust_val_accuracy, result.catastrophic_overfitting,
                                          kept_eps=kept_eps)
    training = Training(result.best_epoch, result.best_val_accuracy, epochs=config.train.epochs,
                        epochs_run=len(result.history), stopped_early=result.stopped_early, processes=processes,
                        adversarial=adversarial, model_fingerprint=fingerprint)
    return {"training": section(training), "timing": {"train_seconds": result.seconds}}


def _evaluation_settings(settings: Settings, examples: int, model: torch.nn.Module) -> dict[str, Any]:
    """What identifies a robustness evaluation (:func:`imgclf.record.evaluation_key`): every attack's settings,
    the eps values, the number of examples, the batch size, the seed and the model's fingerprint."""
    config = settings.config
    return {"attacks": [dataclasses.asdict(spec) for spec in settings.attacks], "norm": config.attack.norm,
            "eps": [float(e) for e in settings.eps_values], "examples": examples,
            "batch_size": config.attack.batch_size, "seed": config.seed, "cascade": config.attack.cascade,
            "model": model_fingerprint(model)}


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's structure (module names and types) and of every tensor of its state dict."""
    import hashlib

    digest = hashlib.sha256()
    for name, module in model.named_modules():
        digest.update(f"{name}:{type(module).__qualname__};".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _save_evaluation(folder: RunFolder, key: str, asked: dict[str, Any], result: RobustnessResult,
                     settings: Settings, data: DataSplits, rows: np.ndarray, calibration: list[EpsCalibration], *,
                     processes: int = 1) -> None:
    """``evaluations/KEY/adversarial.npz`` and ``adversarial.pt``, and the evaluation added to (or, run again,
    replacing its earlier self in) ``metrics.json``'s ``evaluations``."""
    from datetime import UTC, datetime

    where = RunFolder(record.evaluation_folder(folder.path, key))
    labels = data.test.labels[torch.as_tensor(rows)]
    where.write_arrays(record.ADVERSARIAL_EXAMPLES, **result.examples)
    buffer = io.BytesIO()
    torch.save({**result.adversarial, "test_positions": torch.as_tensor(rows),
                "indices": torch.as_tensor(data.test.indices[rows]), "labels": labels}, buffer)
    atomic_write_bytes(where.file(record.ADVERSARIAL_IMAGES), buffer.getvalue())
    attack = AttackRecord(result.n, result.clean_accuracy, result.seed, settings.config.attack.norm,
                          [spec.label for spec in settings.attacks],
                          "stratified subset of the test split, seeded (attack.examples)",
                          skipped=result.skipped, checks=result.checks, warnings=result.warnings,
                          cascade=settings.config.attack.cascade)
    evaluation = record.Evaluation(key, asked, attack, result.entries, result.seconds,
                                   datetime.now(UTC).isoformat(timespec="seconds"), processes, calibration)
    raw = record.with_evaluations(folder.read_json(record.METRICS, default={}))
    kept = [e for e in raw.get(record.EVALUATIONS, []) if isinstance(e, dict) and e.get("key") != key]
    raw[record.EVALUATIONS] = [*kept, section(evaluation)]
    raw.setdefault("timing", {})["attack_seconds"] = result.seconds
    folder.write_json(record.METRICS, raw)


def _one_per_class(rows: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``rows`` (positions into ``labels``), one per class in turn: each class's first row in class
    order, then each class's second, and so on."""
    classes = labels[rows]
    rank = np.zeros(len(rows), dtype=np.int64)  # (len(rows),): each row's place among the rows of its class
    for value in np.unique(classes):
        rank[classes == value] = np.arange(np.sum(classes == value))
    return rows[np.lexsort((classes, rank))][:count]


def _corruption_baseline(path: str | Path, dataset: str) -> CorruptionEvaluation:
    """The corruption evaluation of the baseline run ``path``, which must be of ``dataset``.

    Raises:
        UsageError: If ``path`` is not a run folder, is of another data set, or holds no corruption evaluation.
    """
    folder = Path(path)
    if not (folder / record.METRICS).is_file():
        raise UsageError(f"--baseline {str(path)!r} is not a run folder with a metrics.json; give a run folder "
                         "evaluated under the same corruptions")
    metrics = read_metrics(folder)
    if metrics.dataset != dataset:
        raise UsageError(f"the baseline {str(path)!r} is a run on {metrics.dataset!r}, this one on {dataset!r}: "
                         "corruption errors are only comparable on the same data")
    evaluation = metrics.corruptions
    if evaluation is None:
        raise UsageError(f"the baseline {str(path)!r} has no corruption evaluation; run imgclf corrupt {path} "
                         "first, with the same corruptions, severities and examples")
    return evaluation


def tensorboard_results(folder: RunFolder, config: RunConfig) -> None:
    """Add the run's figures and its hyperparameters with final metrics to ``RUN/tensorboard``."""
    from imgclf.report.html import build_figures
    from imgclf.tensorboard_logging import log_results

    shown = ("confusion_matrix", "predictions", "adversarial")
    figures = {name: figure for name, figure in build_figures(folder).items() if name in shown}
    log_results(folder.path / record.TENSORBOARD, config_to_dict(config), read_metrics(folder.path), figures)


def _save_splits(folder: RunFolder, data: DataSplits) -> None:
    """``splits.npz``: per split its pool and positions, its fingerprint (:meth:`ImageSplit.fingerprint`)
    and its images per class."""
    arrays = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        arrays[f"{name}_pool"] = np.array(split.source)
        arrays[f"{name}_indices"] = split.indices
        arrays[f"{name}_fingerprint"] = np.array(split.fingerprint())
        arrays[f"{name}_class_counts"] = np.bincount(split.labels.numpy(), minlength=data.spec.num_classes)
    folder.write_arrays(record.SPLITS, **arrays)


def _data_changes(arrays: dict[str, np.ndarray], data: DataSplits) -> list[str]:
    """How the splits loaded now differ from those ``splits.npz`` (its ``arrays``) recorded when the run began,
    one line each (empty where they are the same, or the folder is of a release that recorded no
    fingerprints)."""
    changes = []
    for name in ("train", "val", "test"):
        saved = arrays.get(f"{name}_fingerprint")
        split = getattr(data, name)
        if saved is None or str(saved) == split.fingerprint():
            continue
        counts = arrays.get(f"{name}_class_counts")
        now = np.bincount(split.labels.numpy(), minlength=data.spec.num_classes)
        if counts is not None and counts.shape == now.shape and not np.array_equal(counts, now):
            moved = [f"{data.spec.class_names[k]} {int(counts[k])} -> {int(now[k])}"
                     for k in np.flatnonzero(counts != now)[:3]]
            changes.append(f"the {name} split's labels changed ({', '.join(moved)} images)")
        else:
            changes.append(f"the {name} split's images changed (the same positions now hold other pixels)")
    return changes


def _load_splits(folder: RunFolder, arrays: dict[str, np.ndarray] | None
                 ) -> dict[str, tuple[str, np.ndarray]] | None:
    """``splits.npz`` (its ``arrays``, None where the folder has none): per split, the pool it draws from and
    its positions in that pool (checked against the data set by :func:`imgclf.data.load_data`).

    Raises:
        UsageError: If the file is unreadable, lacks a split, or a split's positions are not a
            1-D array of distinct non-negative integers (the train and test splits non-empty).
    """
    if arrays is None:
        return None
    path = str(folder.file(record.SPLITS))
    splits: dict[str, tuple[str, np.ndarray]] = {}
    for name in ("train", "val", "test"):
        pool, positions = arrays.get(f"{name}_pool"), arrays.get(f"{name}_indices")
        if pool is None or positions is None:
            raise UsageError(f"{path!r} lacks the {name} split ({name}_pool, {name}_indices); it is not imgclf's "
                             "or is damaged: restore it, or train the run again")
        problem = None
        if pool.ndim != 0 or pool.dtype.kind != "U":
            problem = f"{name}_pool must be one string"
        elif positions.ndim != 1 or positions.dtype.kind not in "iu":
            problem = f"{name}_indices must be a 1-D array of integers"
        elif len(positions) and positions.min() < 0:
            problem = f"{name}_indices holds negative positions"
        elif len(np.unique(positions)) != len(positions):
            problem = f"{name}_indices repeats positions"
        elif name != "val" and not len(positions):
            problem = f"the {name} split is empty"
        else:
            problem = next((f"the {name} split shares positions with the {other} split" for other, (o_pool, o_rows)
                            in splits.items() if o_pool == str(pool) and np.intersect1d(o_rows, positions).size),
                           None)
        if problem:
            raise UsageError(f"{path!r}: {problem}; restore it, or train the run again")
        splits[name] = (str(pool), positions.astype(np.int64))
    return splits


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
        record.SAMPLES,
        images=images(shown), labels=labels[shown], predictions=predictions[shown],
        error_images=images(wrong), error_labels=labels[wrong], error_predictions=predictions[wrong],
    )
