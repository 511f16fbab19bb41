"""The run folder as a versioned record: the name of every file, and the sections of ``metrics.json``,
``model.json`` and ``train_state.pt`` as dataclasses.

Writers (the pipeline, feature runs, checkpoints, training) build the dataclasses
below and readers (the report, ``compare``, TensorBoard logging, model loading,
resume) read them back through :func:`read_metrics`, :func:`read_model_record`
and :meth:`TrainState.from_dict`, which check what they read and fail with one
line naming the file. Each carries a ``schema_version``; a folder written before
versions existed (version 1, no key) still reads.

Layout (every file optional until its stage has run)::

    RUN/
      config.yaml          the configuration as written (feed back with --config)
      model.safetensors    weights (normalization buffers included)
      model.pt2|.onnx|...  an exported model that was evaluated (a copy; model.json names it)
      model.json           architecture, class names, input shape, normalization, versions
      splits.npz           indices of the train/val/test examples used
      history.csv          one row per epoch
      lr_find.csv          with --lr auto: the range test's curve (lr, loss, smoothed)
      metrics.json         the sections of :class:`Metrics`
      train_state.pt       the training state after the last finished epoch (resume)
      samples.npz          test images with true and predicted labels (for the report)
      evaluations/KEY/     one robustness evaluation (its key in metrics.json's evaluations):
        adversarial.npz    clean and adversarial images with predictions (for the report)
        adversarial.pt     the worst-case adversarial images with their test positions
        batches/           per-batch results committed while it runs (resume after a kill); removed at the end
      certifications/KEY/  one certified-robustness evaluation (its key in metrics.json's certifications):
        certificates.npz   per example: test position, label, prediction or abstention, bound, certified radius
        batches/           per-unit results committed while it runs (resume after a kill); removed at the end
      corruptions.npz      one test image under every corruption and severity, with predictions (for the report)
      explanations.npz     Grad-CAM or saliency maps of fixed test images, clean and adversarial (for the report)
      bad_files.txt        image files skipped, with the reason
      log.txt              everything printed during the run
      figures/*.png        written by the report stage
      report.html          one self-contained page
      tensorboard/         with --tensorboard
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.attacks.results import WORST_CASE, MinimalNorm, PlanOutcome, RobustnessEntry
from imgclf.calibration import Calibration, EpsCalibration
from imgclf.certification.evaluation import CertifiedRow, bracket_html
from imgclf.corruptions.evaluation import CorruptionEvaluation
from imgclf.errors import UsageError
from imgclf.metrics import ClassificationMetrics
from imgclf.notebook import ResultHTML, Table

#: The version of ``metrics.json``, ``model.json`` and ``train_state.pt`` this release writes (1: written
#: before versions existed).
SCHEMA_VERSION = 3
#: ``model.json``'s ``format`` and the weights file's metadata: what marks a file as an imgclf model.
MODEL_FORMAT = "imgclf-model/1"

CONFIG = "config.yaml"
CLASSIFIER_CONFIG = "classifier.yaml"  # a classifier trained on features (fit-features, mlp-numpy)
WEIGHTS = "model.safetensors"
MODEL_INFO = "model.json"
SPLITS = "splits.npz"
HISTORY = "history.csv"
PROBES = "probes.csv"  # adversarial training: every robust validation, inside epochs too (adversarial.probe_every)
LR_FIND = "lr_find.csv"
METRICS = "metrics.json"
TRAIN_STATE = "train_state.pt"
SAMPLES = "samples.npz"
ADVERSARIAL_EXAMPLES = "adversarial.npz"
ADVERSARIAL_IMAGES = "adversarial.pt"
CERTIFICATES = "certificates.npz"
CORRUPTION_SAMPLES = "corruptions.npz"
EXPLANATIONS = "explanations.npz"
BAD_FILES = "bad_files.txt"
LOG = "log.txt"
FIGURES = "figures"
REPORT = "report.html"
TENSORBOARD = "tensorboard"

__all__ = ["WORST_CASE", "SCHEMA_VERSION", "Metrics", "DataCounts", "Training", "AdversarialTraining",
           "AttackRecord", "Evaluation", "ModelInfo", "Normalization", "TrainState", "read_metrics",
           "read_model_record"]


@dataclass
class DataCounts:
    """``metrics.json`` ``data``: split sizes, the input shape ``[C, H, W]`` (features: its width), and
    ``origins``: where each split's examples come from, in words (``{"test": "20% of the data set's
    train split (stratified, seeded)", ...}``)."""

    train: int
    val: int
    test: int
    input_shape: list[int] | None = None
    bad_files: int = 0
    features: int | None = None
    origins: dict[str, str] = field(default_factory=dict)


@dataclass
class AdversarialTraining:
    """``training.adversarial``: the recipe, its radius in pixel units, and what the robust validation found;
    ``kept_eps`` is the largest eps the kept model was trained at (less than ``eps`` where the eps warm-up
    had not ended by the kept epoch; None in runs of earlier releases); ``recoveries`` says, for each catastrophic
    overfitting that training rolled back or restarted from (``adversarial.on_overfit``), what was seen and done."""

    recipe: str
    eps: float
    norm: str
    best_robust_val_accuracy: float | None
    catastrophic_overfitting: str | None = None
    kept_eps: float | None = None
    recoveries: list[str] = field(default_factory=list)


@dataclass
class LRFinderRecord:
    """``metrics.json`` ``lr_finder``: the range test behind ``--lr auto`` (its curve is ``lr_find.csv``);
    learning rates are optimizer rates, ``seconds`` wall time."""

    suggestion: float
    minimum_lr: float
    stopped: str
    start_lr: float
    end_lr: float
    steps: int
    seconds: float


@dataclass
class Training:
    """``metrics.json`` ``training``: how training went (accuracies are fractions in [0, 1]; a classifier
    fitted in one go, such as an SVM, has no ``best_epoch``). ``model_fingerprint`` identifies the kept
    model (:func:`imgclf.checkpoint.model_fingerprint`): an evaluation whose settings name another one was
    made before training was extended."""

    best_epoch: int | None
    best_val_accuracy: float
    epochs: int | None = None
    epochs_run: int | None = None
    stopped_early: bool = False
    processes: int = 1
    adversarial: AdversarialTraining | None = None
    model_fingerprint: str | None = None


@dataclass
class AttackRecord:
    """``metrics.json`` ``attack``: the attacked subset and the sanity checks (see :mod:`imgclf.attacks.checks`)."""

    n: int
    clean_accuracy: float
    seed: int
    norm: str
    attacks: list[str]
    test_positions: str = ""
    skipped: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cascade: bool = False  # each attack ran on what the earlier ones failed on: its row is cumulative
    plan: list[PlanOutcome] = field(default_factory=list)  # the converging plan per eps, where it ran
    minimal_norm: MinimalNorm | None = None  # the minimal-norm attack's summary (its radii: adversarial.npz)


@dataclass
class Evaluation:
    """One robustness evaluation of ``metrics.json``'s ``evaluations``: its settings, results and checks.

    Evaluations accumulate: each ``imgclf attack`` adds one, and one whose settings (and model) are those of
    an earlier one replaces it only when it is run again (it is reused otherwise).

    Attributes:
        key: Identifies the settings and the model (:func:`evaluation_key`); names ``evaluations/KEY/``,
            which holds ``adversarial.npz`` and ``adversarial.pt`` of this evaluation.
        settings: What was asked for: attacks, norm, eps values, examples, steps, step size, restarts,
            random start, target, queries, batch size, seed and the model's fingerprint.
        attack: The attacked subset and the checks.
        robustness: One entry per attack and eps, then the worst case (:data:`WORST_CASE`).
        seconds: Wall time. finished: ISO time it ended. processes: Processes that shared the work.
        calibration: Per eps, the calibration on the worst-case adversarial images.
    """

    key: str
    settings: dict[str, Any]
    attack: AttackRecord
    robustness: list[RobustnessEntry] = field(default_factory=list)
    seconds: float = 0.0
    finished: str = ""
    processes: int = 1
    calibration: list[EpsCalibration] = field(default_factory=list)

    def worst_case(self) -> list[RobustnessEntry]:
        """The worst-case rows, by eps ascending."""
        return sorted((row for row in self.robustness if row.attack == WORST_CASE), key=lambda row: row.eps)

    def attacks(self) -> list[str]:
        """The attack labels, in order, without the worst case."""
        return list(dict.fromkeys(row.attack for row in self.robustness if row.attack != WORST_CASE))


#: The key of an evaluation written before evaluations accumulated (its files are ``RUN/adversarial.*``).
LEGACY_EVALUATION = "legacy"
EVALUATIONS = "evaluations"
BATCHES = "batches"


def evaluation_folder(run: Path, key: str) -> Path:
    """``RUN/evaluations/KEY`` (``RUN`` itself for an evaluation of an earlier release)."""
    return run if key == LEGACY_EVALUATION else run / EVALUATIONS / key


def evaluation_key(settings: dict[str, Any]) -> str:
    """A short stable key of an evaluation's settings (12 hex digits of their SHA-256 as sorted JSON)."""
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


CERTIFICATIONS = "certifications"


def certification_folder(run: Path, key: str) -> Path:
    """``RUN/certifications/KEY``."""
    return run / CERTIFICATIONS / key


@dataclass
class Certification:
    """One certified-robustness evaluation of ``metrics.json``'s ``certifications`` (randomized smoothing,
    :func:`imgclf.certification.certify`). They accumulate like robustness evaluations: one with the settings
    (and model) of an earlier one is reused.

    Attributes:
        key: Identifies the settings and the model (:func:`evaluation_key`); names ``certifications/KEY/``, which
            holds ``certificates.npz``.
        settings: What was asked for: sigma, n0, n, alpha, radii, examples, the attacks' settings, batch size,
            seed and the model's fingerprint.
        n: Examples. sigma: The noise's standard deviation (pixel units). n0, samples, alpha: CERTIFY's selection
            and estimation samples per example and each certificate's failure probability.
        rows: Per radius the certified accuracy and the empirical upper bounds.
        abstained: The share of examples abstained on. clean_accuracy: The model's top-1 accuracy on them.
        max_radius: The largest radius ``samples`` and ``alpha`` allow. median_radius: Of the certified radii,
            wrong predictions and abstentions as 0.
        violations: Certified examples SmoothAdv fooled within their radius (Monte Carlo; see the warnings).
        warnings: What the reader must know.
        seconds: Wall time. forwards_per_example, backwards_per_example: Passes of the model per example.
        finished: ISO time it ended. processes: Processes that shared the work.
    """

    key: str
    settings: dict[str, Any]
    n: int
    sigma: float
    n0: int
    samples: int
    alpha: float
    rows: list[CertifiedRow] = field(default_factory=list)
    abstained: float = 0.0
    clean_accuracy: float = 0.0
    max_radius: float = 0.0
    median_radius: float | None = None
    violations: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    forwards_per_example: float = 0.0
    backwards_per_example: float = 0.0
    finished: str = ""
    processes: int = 1

    def _repr_html_(self) -> str:
        """The bracket as an HTML table (Jupyter shows this)."""
        return bracket_html(self.rows, sigma=self.sigma, n0=self.n0, n=self.samples, alpha=self.alpha,
                            examples=self.n, clean_accuracy=self.clean_accuracy, abstained=self.abstained,
                            forwards_per_example=self.forwards_per_example, seconds=self.seconds,
                            warnings=self.warnings)


@dataclass
class Metrics:
    """The sections of ``metrics.json``; each stage adds its own, so all but the facts are optional.

    Attributes:
        schema_version: :data:`SCHEMA_VERSION` when written by this release.
        dataset, model, num_classes, class_names, seed: The run's facts.
        data: Split sizes and input shape. data_notes: Warnings about the data.
        inputs: What a classifier on features was trained on (feature runs).
        environment: Versions and device.
        training: From the train stage (None for a model imgclf evaluated but did not train).
        lr_finder: The learning-rate range test of ``--lr auto``, or None.
        clean: The clean test metrics.
        calibration: The test split's calibration before and after temperature scaling.
        evaluations: The robustness evaluations, oldest first (:class:`Evaluation`); :attr:`robustness`
            and :attr:`attack` are the newest one's of the kept model (:meth:`current`). timing: Seconds
            per stage.
        corruptions: Accuracy and calibration under the common corruptions, or None.
        certifications: The certified-robustness evaluations, oldest first (:class:`Certification`).
        skipped: Stages ``imgclf run`` left out, with why (``{"corruptions": "the images are 8x8, ..."}``).
    """

    schema_version: int = 1
    dataset: str = "?"
    model: str = "?"
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    seed: int | None = None
    data: DataCounts | None = None
    data_notes: list[str] = field(default_factory=list)
    inputs: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    training: Training | None = None
    lr_finder: LRFinderRecord | None = None
    clean: ClassificationMetrics | None = None
    calibration: Calibration | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    corruptions: CorruptionEvaluation | None = None
    certifications: list[Certification] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Raises ValueError for a record this release cannot trust: a newer schema, or class names that
        disagree with the number of classes or with the confusion matrix."""
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is newer than this imgclf reads "
                             f"({SCHEMA_VERSION}): upgrade imgclf to read this run folder")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes {self.num_classes}")
        matrix = self.clean.confusion_matrix if self.clean is not None else []
        if matrix and (len(matrix) != self.num_classes or any(len(row) != self.num_classes for row in matrix)):
            raise ValueError(f"the clean confusion matrix is not {self.num_classes} x {self.num_classes}")

    def current(self, evaluation: Evaluation) -> bool:
        """Whether ``evaluation`` is of the run's kept model: False for one made before training was
        extended (its settings name another model fingerprint than ``training``'s)."""
        kept = self.training.model_fingerprint if self.training else None
        return kept is None or evaluation.settings.get("model", kept) == kept

    @property
    def latest_certification(self) -> Certification | None:
        """The newest certified-robustness evaluation of the kept model, or None."""
        kept = self.training.model_fingerprint if self.training else None
        return next((c for c in reversed(self.certifications)
                     if kept is None or c.settings.get("model", kept) == kept), None)

    @property
    def latest(self) -> Evaluation | None:
        """The newest robustness evaluation of the kept model, or None."""
        return next((e for e in reversed(self.evaluations) if self.current(e)), None)

    @property
    def robustness(self) -> list[RobustnessEntry]:
        """The newest evaluation's entries ([] without one)."""
        return self.latest.robustness if self.latest else []

    @property
    def attack(self) -> AttackRecord | None:
        """The newest evaluation's attacked subset and checks, or None."""
        return self.latest.attack if self.latest else None

    def worst_case(self) -> list[RobustnessEntry]:
        """The newest evaluation's worst-case rows, by eps ascending."""
        return self.latest.worst_case() if self.latest else []

    def attacks(self) -> list[str]:
        """The attack labels of the newest evaluation, in order, without the worst case."""
        return self.latest.attacks() if self.latest else []

    def html(self, title: str) -> ResultHTML:
        """What the run folder holds, one line per stage, as Jupyter shows it."""
        rows: list[list[Any]] = [["data set", f"{self.dataset} ({self.num_classes} classes)"], ["model", self.model]]
        if self.training is not None:
            rows.append(["training", f"{self.training.epochs_run or '?'} epoch(s); best validation accuracy "
                                     f"{self.training.best_val_accuracy:.4f} (epoch {self.training.best_epoch})"])
        if self.clean is not None:
            rows.append(["test", f"top-1 accuracy {self.clean.accuracy:.4f}, macro F1 {self.clean.macro_f1:.4f} "
                                 f"({self.clean.n:,} images)"])
        if self.calibration is not None:
            rows.append(["calibration", f"ECE {self.calibration.test.ece:.4f}; {self.calibration.test_scaled.ece:.4f} "
                                        f"after temperature scaling"])
        worst = self.worst_case()
        if worst:
            rows.append(["worst-case robust accuracy", ", ".join(f"{row.accuracy:.4f} at eps {row.eps:.4g}"
                                                                 for row in worst if row.eps > 0) or "eps 0 only"])
        if self.corruptions is not None:
            rows.append(["common corruptions", f"mean error {self.corruptions.mean_error:.4f}"])
        certification = self.latest_certification
        if certification is not None:
            rows.append([f"certified (L2, sigma {certification.sigma:.4g})",
                         ", ".join(f"{row.certified:.4f} at radius {row.radius:.4g}" for row in certification.rows)])
        return ResultHTML(title, tables=[Table(["", ""], rows)], warnings=self.attack.warnings if self.attack else [])

    def _repr_html_(self) -> str:
        return self.html("metrics.json").render()


@dataclass
class Normalization:
    """``model.json`` ``normalization``: per-channel mean and std, ``[0, 1]`` pixel units, applied in the model."""

    mean: list[float]
    std: list[float]


@dataclass
class ModelInfo:
    """``model.json``: what rebuilds the model and what its inputs and outputs are.

    Attributes:
        format: :data:`MODEL_FORMAT`. model, options: The registered architecture and its hyperparameters.
        dataset, num_classes, class_names: What it was trained on.
        input_shape: ``[C, H, W]``; input ``float32`` in ``input_range``. output: ``logits``.
        normalization: Applied inside the model. versions: The environment it was saved in.
        saved: ISO time of the save. schema_version: :data:`SCHEMA_VERSION` (1: before versions).
        source: Where a model imgclf did not train came from (empty for imgclf's own): ``kind`` (timm,
            torchvision, py, pt2, torchscript, onnx), ``given`` (the ``--model`` value), ``weights`` (the
            weights file read), ``normalization`` (where mean and std came from); an exported model adds
            ``file`` (its copy in the run folder), ``sha256`` and ``normalize`` (imgclf applies the
            normalization in front of the file).
        initial_weights: What a model imgclf trained started from when ``--weights`` gave it weights
            (fine-tuning): ``file``, ``sha256``, and the settings ``freeze_epochs``, ``backbone_lr_scale``
            and ``freeze_bn``; empty for a model trained from scratch.
    """

    format: str
    model: str
    options: dict[str, Any]
    dataset: str
    num_classes: int
    class_names: list[str]
    input_shape: list[int]
    normalization: Normalization
    input_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    output: str = "logits"
    versions: dict[str, Any] = field(default_factory=dict)
    saved: str = ""
    schema_version: int = 1
    source: dict[str, Any] = field(default_factory=dict)
    initial_weights: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainState:
    """``train_state.pt``: everything :func:`imgclf.training.fit` needs to continue after an epoch, weight for
    weight (saved with ``torch.save``, loaded with ``weights_only=True``).

    Attributes:
        epoch: The last finished epoch (1-based). stale: Epochs without progress. stopped_early: Training ended.
        model, optimizer, schedule, ema, scaler: State dicts (None where unused).
        order_rng, torch_rng: The batch-order and global random states (``uint8`` tensors).
        best_state: The kept weights. history, best_epoch, best_val_accuracy, best_robust_val_accuracy,
            seconds: The result so far. adversary: The adversary's step and random state.
        optimizer_steps: Steps logged to TensorBoard so far. schema_version: :data:`SCHEMA_VERSION`.
        epochs: The run's length when the state was saved (None in states of earlier releases): a
            ``config.yaml`` that asks for more records an extension that has not yet saved an epoch.
        overfit: The catastrophic-overfitting monitor's probes, events and retries
            (:meth:`imgclf.defenses.OverfitMonitor.state_dict`); None without adversarial training.
    """

    epoch: int
    stale: int
    stopped_early: bool
    model: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any] | None
    ema: dict[str, Any] | None
    scaler: dict[str, Any] | None
    order_rng: Any
    torch_rng: Any
    best_state: dict[str, Any] | None
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    seconds: float
    best_robust_val_accuracy: float | None = None
    adversary: dict[str, Any] | None = None
    optimizer_steps: int = 0
    schema_version: int = SCHEMA_VERSION
    epochs: int | None = None
    overfit: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The state as the plain dict ``torch.save`` writes (tensors are not copied)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: Any, file: str) -> TrainState:
        """Check a loaded ``train_state.pt``.

        Raises:
            UsageError: If it is not a mapping or lacks a field, naming ``file``.
        """
        if not isinstance(raw, dict):
            raise UsageError(f"{file!r} is not an imgclf training state (it holds a {type(raw).__name__})")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in raw]
        if missing:
            raise UsageError(f"{file!r} is not a complete imgclf training state: it lacks {', '.join(missing)}; "
                             "start the run again instead of resuming it")
        return cls(**{key: value for key, value in raw.items() if key in names})


def load_json(file: Path, remedy: str) -> Any:
    """The JSON value in ``file``, read as UTF-8.

    Args:
        file: A file of the run folder (or an export's metadata), which must exist.
        remedy: What the user can do about a bad file, appended to the message.

    Raises:
        UsageError: If the path is not a regular file, cannot be read, is not UTF-8 JSON, or nests too deep
            for Python to read (a file made to crash its reader); the message names the file.
    """
    if not file.is_file():
        raise UsageError(f"{str(file)!r} is not a regular file; {remedy}")
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{str(file)!r} is not valid JSON ({error}); {remedy}") from None
    except RecursionError:
        raise UsageError(f"{str(file)!r} nests its values too deep to be imgclf's; {remedy}") from None
    except OSError as error:
        raise UsageError(f"{str(file)!r} cannot be read ({error.strerror or error}); {remedy}") from None


def read_model_record(file: str | Path) -> ModelInfo:
    """``model.json`` as :class:`ModelInfo`.

    Raises:
        UsageError: If the file is not JSON, not an imgclf model file (its ``format``), or a field is
            missing or of the wrong type.
    """
    file = Path(file)
    raw = load_json(file, "restore it from the run that saved the model")
    if not isinstance(raw, dict) or raw.get("format") != MODEL_FORMAT:
        shown = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise UsageError(f"{str(file)!r} is not an imgclf model file (format {shown!r})")
    info = _build(ModelInfo, raw, str(file), "")
    problem = _model_problem(info)
    if problem:
        raise UsageError(f"{str(file)!r}: {problem}; restore it from the run that saved the model")
    return info


#: The largest image side and channel count a model file may declare (a larger one is a damaged file,
#: and would ask for more memory than a machine has).
MAX_IMAGE_SIDE = 8192
MAX_CHANNELS = 64


def _model_problem(info: ModelInfo) -> str | None:
    """What is inconsistent in a ``model.json`` whose fields have the right types, or None."""
    shape = info.input_shape
    if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
        return f"input_shape must be [C, H, W] of positive integers, got {shape}"
    channels, height, width = shape
    if channels > MAX_CHANNELS or max(height, width) > MAX_IMAGE_SIDE:
        return f"input_shape {shape} is beyond {MAX_CHANNELS} channels or {MAX_IMAGE_SIDE} pixels a side"
    if info.num_classes < 1 or len(info.class_names) != info.num_classes:
        return f"num_classes is {info.num_classes} but class_names has {len(info.class_names)} names"
    norm = info.normalization
    if len(norm.mean) != channels or len(norm.std) != channels:
        return f"normalization needs {channels} means and stds, got {len(norm.mean)} and {len(norm.std)}"
    values = [*norm.mean, *norm.std]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values) or min(norm.std) <= 0:
        return f"normalization must be finite numbers with std > 0, got mean {norm.mean} std {norm.std}"
    return None


def section(value: Any) -> dict[str, Any]:
    """A section dataclass as the dict ``metrics.json`` stores (for writers)."""
    return dataclasses.asdict(value)


def read_metrics(path: str | Path) -> Metrics:
    """``RUN/metrics.json`` as :class:`Metrics` (an empty record where the file is absent).

    Unknown keys are kept out; a section of the wrong shape is refused.

    Raises:
        UsageError: If the file is not JSON, is not a mapping, or a section has the
            wrong type, naming the file and the section.
    """
    path = Path(path)
    file = path / METRICS if path.is_dir() else path
    if not file.exists() and not file.is_symlink():
        return Metrics(schema_version=SCHEMA_VERSION)
    raw = load_json(file, "restore it or run the stage that wrote it again")
    if not isinstance(raw, dict):
        raise UsageError(f"{str(file)!r} must hold a JSON object of sections, got {type(raw).__name__}")
    return _build(Metrics, with_evaluations(raw), str(file), "")


def with_evaluations(raw: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` with an earlier release's single ``robustness`` and ``attack`` sections turned into
    one evaluation (key :data:`LEGACY_EVALUATION`); a current file is returned as it is."""
    if EVALUATIONS in raw or "robustness" not in raw:
        return raw
    raw = dict(raw)
    robustness, attack = raw.pop("robustness"), raw.pop("attack", None)
    if attack is not None:
        raw[EVALUATIONS] = [{"key": LEGACY_EVALUATION, "settings": {}, "attack": attack, "robustness": robustness}]
    return raw


def _build(cls: type, raw: dict[str, Any], file: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _value(raw[f.name], hints[f.name], file, f"{where}{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise UsageError(f"{file!r}: section {where.rstrip('.') or 'top level'!r} is incomplete ({error})") from None
    except ValueError as error:  # a dataclass's own check of what its fields hold
        raise UsageError(f"{file!r}: section {where.rstrip('.') or 'top level'!r}: {error}") from None


def _value(value: Any, annotation: Any, file: str, where: str) -> Any:
    """``value`` checked against ``annotation`` (dataclasses built, lists and optionals followed)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if value is None:
        if annotation is type(None) or type(None) in args or annotation is Any:
            return None
        raise UsageError(f"{file!r}: {where} is null, expected {getattr(annotation, '__name__', annotation)}")
    if args and type(None) in args:  # X | None
        (inner,) = [a for a in args if a is not type(None)] or [Any]
        return _value(value, inner, file, where)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise UsageError(f"{file!r}: {where} must be an object, got {value!r:.60}")
        return _build(annotation, value, file, f"{where}.")
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"{file!r}: {where} must be a list, got {value!r:.60}")
        return [_value(item, args[0], file, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{file!r}: {where} must be an object, got {value!r:.60}")
        if len(args) == 2 and args[1] is not Any:  # each value checked: timing seconds, per-class rows
            checked = {key: _value(item, args[1], file, f"{where}[{key!r}]") for key, item in value.items()}
            return {key: item if isinstance(item, int) and not isinstance(item, bool) else checked[key]
                    for key, item in value.items()}  # an int stays an int (support counts)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{file!r}: {where} must be a number, got {value!r:.60}")
        return _in_range(float(value), file, where)
    if annotation in (int, str, bool) and not isinstance(value, annotation) or \
            (annotation is int and isinstance(value, bool)):
        raise UsageError(f"{file!r}: {where} must be {annotation.__name__}, got {value!r:.60}")
    if annotation is int and value < 0:  # every integer of the record is a count, an index or a seed
        raise UsageError(f"{file!r}: {where} must be a count >= 0, got {value}")
    return value


#: Numbers of the record that are fractions in [0, 1] (accuracies, rates, calibration errors, bin edges).
_FRACTIONS = frozenset({"accuracy", "best_val_accuracy", "best_robust_val_accuracy", "macro_f1", "balanced_accuracy",
                        "top5_accuracy", "clean_accuracy", "success_rate", "target_success_rate", "ece", "mce",
                        "confidence", "lower", "upper", "per_class", "precision", "recall", "f1",
                        "fixed_accuracy", "curve_accuracy", "p_value", "combined_accuracy", "certified",
                        "smoothed_attack", "base_attack", "abstained"})
#: Fractions that are NaN where nothing was there to count (no correct example to fool, no validation split).
_MAY_BE_NAN = frozenset({"success_rate", "target_success_rate", "best_val_accuracy", "accuracy", "clean_accuracy",
                         "fixed_accuracy", "curve_accuracy", "combined_accuracy"})
#: Numbers that may be below 0 (a relative corruption error can be).
_SIGNED = frozenset({"relative_mce", "corruption_errors"})


def _in_range(number: float, file: str, where: str) -> float:
    """``number`` checked for the range its field allows: finite, a fraction where :data:`_FRACTIONS` says,
    never below 0 but where :data:`_SIGNED` says; NaN only in :data:`_MAY_BE_NAN`, and only inside an
    evaluation (a run's own clean accuracy is never NaN)."""
    name = (re.findall(r"[\w-]+", where) or [where])[-1]
    if name.isdigit():  # a list's item: its list's name (per_class[3])
        name = re.sub(r"\[\d+\]$", "", where).rsplit(".", 1)[-1]
    if math.isnan(number):
        if name in _MAY_BE_NAN and not where.startswith("clean."):
            return number
        raise UsageError(f"{file!r}: {where} is NaN; restore the file or run the stage that wrote it again")
    if math.isinf(number):
        raise UsageError(f"{file!r}: {where} is infinite; restore the file or run the stage that wrote it again")
    if name in _FRACTIONS and not 0.0 <= number <= 1.0:
        raise UsageError(f"{file!r}: {where} must be a fraction in [0, 1], got {number:g}; restore the file or run "
                         "the stage that wrote it again")
    if number < 0 and not any(signed in where for signed in _SIGNED):
        raise UsageError(f"{file!r}: {where} must be >= 0, got {number:g}")
    return number


def export_info_path(path: Path) -> Path:
    """The metadata file written beside an exported model: ``FILE.json``."""
    return path.with_name(path.name + ".json")
