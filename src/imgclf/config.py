"""Every setting of a run, as dataclasses, read from YAML and flags and checked once.

A run's configuration is a :class:`RunConfig` with one section per pipeline
stage (``data``, ``model``, ``train``, ``eval``, ``attack``, ``adversarial``) plus
``seed`` and ``device``.
It is built from three layers, later ones winning: the defaults below, a YAML
file (``--config run.yaml``), and command-line flags (dotted keys such as
``train.epochs``). :func:`config_from_dict` validates every key and value and
raises :class:`~imgclf.errors.UsageError` naming the bad one; nothing inside
the pipeline re-checks user input.

The resolved configuration written to a run folder (``config.yaml``) can be fed
back with ``--config`` to repeat the run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from imgclf.attacks import ATTACK_PRESETS, ATTACKS, NORMS, TARGET_MODES, expand_attacks, targetable_attacks
from imgclf.data.augment import PRESETS
from imgclf.defenses import recipe_choices
from imgclf.errors import UsageError, unknown_choice

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
AUGMENTATIONS = tuple(PRESETS)
BALANCING = ("none", "weighted-loss", "sampler")
BAD_FILES = ("skip", "error")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "off", "bf16", "fp16")

#: Default eps lists (pixel units, images in [0, 1]) when the user gives none.
DEFAULT_EPS_COLOUR = ("0", "1/255", "2/255", "4/255", "8/255")
DEFAULT_EPS_GREY = ("0", "0.05", "0.1", "0.2", "0.3")
#: Under L2 (the perturbation's Euclidean length in pixel units).
DEFAULT_EPS_L2_COLOUR = ("0", "0.25", "0.5", "1")
DEFAULT_EPS_L2_GREY = ("0", "0.5", "1", "2", "3")


@dataclass
class DataConfig:
    """Where the images come from and how they are split and augmented."""

    dataset: str = "digits"  # a registered name (`imgclf datasets`) or an image-folder path
    data_dir: str | None = None  # None: $IMGCLF_DATA_DIR, else the per-user cache folder
    image_size: int | None = None  # resize to N x N; None: the data set's own size
    channels: int | None = None  # 1 or 3; None: from the data (grey folders stay 1 channel)
    val_fraction: float = 0.2  # held out of train when the data set has no val split
    test_fraction: float = 0.2  # held out when the data set has no test split
    train_examples: int | None = None  # seeded stratified subset of train; None: all
    augment: str = "none"  # one of AUGMENTATIONS
    balance: str = "none"  # none | weighted-loss | sampler: counter class imbalance in training
    bad_files: str = "skip"  # skip (and list) image files that fail to decode, or stop with an error
    cache: bool = True  # keep decoded image folders in the decoded-image cache
    memory_limit_mb: int = 8192  # larger decoded image folders are read from the disk cache per batch
    download: bool = True  # fetch missing files of built-in data sets


@dataclass
class ModelConfig:
    """Which architecture, and its keyword-only hyperparameters (`imgclf models`)."""

    name: str = "simple-cnn"
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {hidden: 256, depth: 2}


@dataclass
class TrainConfig:
    """Optimisation settings."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"  # one of OPTIMIZERS
    lr: float = 2e-3  # peak learning rate for onecycle, initial for the others
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # one of SCHEDULES; stepped once per batch
    step_epochs: int = 5  # `step` schedule: multiply lr by step_gamma every this many epochs
    step_gamma: float = 0.1
    label_smoothing: float = 0.0  # in [0, 1)
    channels_last: bool = True  # NHWC memory format for weights and batches (faster convolutions)
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999); 0: off
    mixup: float = 0.0  # MixUp alpha (Zhang et al. 2018); 0: off
    cutmix: float = 0.0  # CutMix alpha (Yun et al. 2019); 0: off; with mixup, one of the two per batch
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0: off
    early_stopping: int = 0  # stop after this many epochs without a better val accuracy; 0: off
    amp: str = "auto"  # mixed precision: auto (bf16 on CUDA where supported), off, bf16, fp16
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPU)
    tensorboard: bool = False  # also log to RUN/tensorboard (scalars, figures, hyperparameters)


@dataclass
class EvalConfig:
    """Clean evaluation settings."""

    tta: bool = False  # test-time augmentation: average the logits of each image and its mirror
    batch_size: int = 512


@dataclass
class AttackConfig:
    """Robustness evaluation: which attacks, at which eps, on how many test images."""

    attacks: list[str] = field(default_factory=lambda: ["quick"])  # names or presets (quick, full)
    norm: str = "linf"  # linf | l2: the norm that bounds the perturbation
    eps: list[str] | None = None  # pixel units, e.g. ["0", "8/255"]; None: by channels and norm
    examples: int | None = 1000  # seeded stratified subset of test; None: the whole split
    steps: int | None = None  # iterations; None: PGD-20, APGD and FAB 100
    alpha: float | None = None  # PGD step size (pixel units); None: 2.5 * eps / steps
    restarts: int = 1  # random restarts of PGD, APGD and FAB
    random_start: bool = True  # PGD starts at a random point of the eps ball
    target: str | None = None  # random | least-likely | a class name or index: targeted FGSM/PGD/APGD
    queries: int = 5000  # Square's query budget per example
    batch_size: int = 256


@dataclass
class AdversarialConfig:
    """Adversarial training (:mod:`imgclf.defenses`); its norm is ``attack.norm``."""

    recipe: str = "none"  # none | pgd | fgsm-rs | trades
    eps: str | None = None  # training radius in pixel units (0.3, 8/255); None: the largest attack eps
    steps: int | None = None  # attack steps; None: pgd and trades 10 (fgsm-rs is always 1)
    alpha: float | None = None  # step size (pixel units); None: fgsm-rs 1.25 * eps, else 2.5 * eps / steps
    beta: float = 6.0  # TRADES: weight of the KL term
    warmup_epochs: float | None = None  # eps rises linearly from 0 over these epochs; None: 20% of them
    val_examples: int = 1000  # fixed validation subset for the robust accuracy that picks the checkpoint
    val_steps: int = 10  # PGD steps of that robust validation
    overfit_drop: float = 0.2  # fgsm-rs: PGD val accuracy falling this much below its best stops training

    @property
    def enabled(self) -> bool:
        """True for every recipe but ``none``."""
        return self.recipe != "none"


@dataclass
class RunConfig:
    """The whole configuration of one run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    seed: int = 0
    device: str = "auto"  # one of DEVICES


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
             "attack": AttackConfig, "adversarial": AdversarialConfig}

#: Named presets, applied under the YAML file and the flags (``--recipe NAME``).
RECIPES: dict[str, dict[str, Any]] = {
    # In the spirit of airbench (Jordan 2024) for CIFAR-10-sized data: a residual-free net with a
    # whitening first layer, large batches, Nesterov SGD, label smoothing, flip-and-crop, flip TTA.
    "fast": {
        "model.name": "fast-cnn",
        "data.augment": "flip-crop",
        "train.epochs": 10,
        "train.batch_size": 1024,
        "train.optimizer": "sgd",
        "train.lr": 0.2,
        "train.momentum": 0.85,
        "train.nesterov": True,
        "train.weight_decay": 5e-4,
        "train.schedule": "onecycle",
        "train.label_smoothing": 0.2,
        "eval.tta": True,
    },
}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` to ``annotation`` (a field's type) or raise UsageError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
            return None
        return _coerce(value, inner, where)
    if origin is list:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where} must be a list, got {value!r}")
        return [_coerce(item, args[0], where) for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a mapping of names to values, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UsageError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{where} must be an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UsageError(f"{where} must be a number, got {value!r}")
        try:
            number = float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"{where} must be a number, got {value!r}") from None
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise UsageError(f"{where} must be a single value, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config annotation {annotation!r} for {where}")


def _section_from_dict(cls: type, values: dict[str, Any], section: str) -> Any:
    if not isinstance(values, dict):
        raise UsageError(f"config section {section!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise UsageError(
                f"unknown setting {section}.{key!r}; valid settings in {section!r}: "
                + ", ".join(names)
            )
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any] | None) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested mapping.

    Args:
        values: ``{"data": {...}, "model": {...}, "train": {...}, "eval": {...},
            "attack": {...}, "adversarial": {...}, "seed": int, "device": str}``;
            every key is optional.

    Returns:
        The validated configuration.

    Raises:
        UsageError: On an unknown key, a value of the wrong type, or a value
            outside its valid range or choices; the message names the key.
    """
    if values is not None and not isinstance(values, dict):
        raise UsageError(f"a config must be a mapping of sections, got {values!r}")
    values = dict(values or {})
    top = {"seed", "device", *_SECTIONS}  # ("recipe" is applied by load_config, below the file)
    for key in values:
        if key not in top:
            raise UsageError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(top))}")
    sections = {name: _section_from_dict(cls, values.get(name) or {}, name) for name, cls in _SECTIONS.items()}
    config = RunConfig(
        **sections,
        seed=_coerce(values.get("seed", 0), int, "seed"),
        device=_coerce(values.get("device", "auto"), str, "device"),
    )
    validate(config)
    return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The configuration as plain nested dicts, lists and scalars (YAML-ready)."""
    return dataclasses.asdict(config)


def resolve_options(kind: str, name: str, defaults: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword hyperparameters of a model or classifier: ``defaults`` updated with ``given``.

    A value must have its default's type; an int is accepted for a float, a list
    for a tuple (and one int for a tuple of ints); a default of None accepts anything.

    Args:
        kind: What the options belong to, for messages (``"model"``, ``"classifier"``).
        name: Its registered name.

    Raises:
        UsageError: On an unknown key (listing the valid ones) or a value of the wrong type.
    """
    resolved = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise UsageError(f"unknown option {key!r} for {kind} {name!r}; valid options: {valid}")
        default = defaults[key]
        if default is None or (isinstance(value, type(default)) and not isinstance(default, tuple)):
            resolved[key] = value
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            resolved[key] = float(value)
        elif isinstance(default, tuple) and isinstance(value, list | tuple):
            resolved[key] = tuple(value)
        elif isinstance(default, tuple) and isinstance(value, int) and not isinstance(value, bool):
            resolved[key] = (value,)
        else:
            raise UsageError(f"{kind} option {key}={value!r} for {name!r} must be of type {type(default).__name__} "
                             f"(default {default!r})")
    return resolved


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set ``values["train"]["epochs"] = value`` for ``key="train.epochs"``."""
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML file (optional), apply dotted-key overrides, and validate.

    Args:
        path: A YAML file with the sections of :class:`RunConfig`, or None for
            the defaults.
        overrides: ``{"train.epochs": 3, ...}``, applied after the file.

    Returns:
        The validated configuration.

    Raises:
        UsageError: If the file is missing or not valid YAML, or any value is
            invalid.
    """
    values: dict[str, Any] = {}
    overrides = dict(overrides or {})
    recipe = overrides.pop("recipe", None)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise UsageError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UsageError(f"config file {str(path)!r} must hold a mapping of sections")
        values = loaded or {}
    recipe = recipe or values.pop("recipe", None)
    if recipe is not None:
        if recipe not in RECIPES:
            raise unknown_choice("recipe", recipe, RECIPES)
        layered: dict[str, Any] = {}
        for key, value in RECIPES[recipe].items():
            set_dotted(layered, key, value)
        for section, settings in values.items():  # the file wins over the recipe
            if isinstance(settings, dict) and isinstance(layered.get(section), dict):
                layered[section].update(settings)
            else:
                layered[section] = settings
        values = layered
    for key, value in overrides.items():
        set_dotted(values, key, value)
    return config_from_dict(values)


def dump_config(config: RunConfig) -> str:
    """The configuration as YAML text, readable by :func:`load_config`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def parse_eps(values: str | float | list[str | float], norm: str = "linf") -> list[float]:
    """Parse eps values given in pixel units (L-inf: at most 1; L2: any length >= 0).

    Accepts numbers (``0.03``), fractions (``8/255``), comma-separated lists of
    them, and inclusive ranges ``start:stop:step`` (``0:8/255:2/255`` is
    0, 2/255, 4/255, 6/255, 8/255).

    Args:
        values: A string, a number, or a list of strings and numbers.
        norm: ``"linf"`` (values in ``[0, 1]``) or ``"l2"`` (values ``>= 0``).

    Returns:
        The eps values as floats, in the order given.

    Raises:
        UsageError: If a value is not a number, is negative or above 1, or a
            range is empty or has a non-positive step.
    """
    items = values if isinstance(values, (list, tuple)) else [values]
    result: list[float] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part:
                result.extend(_parse_eps_range(part, norm))
            else:
                result.append(_parse_eps_value(part, part, norm))
    if not result:
        raise UsageError("no eps given; expected values such as 0,2/255,8/255")
    return result


def _parse_eps_value(text: str, shown: str, norm: str = "linf") -> float:
    valid = "in [0, 1]" if norm == "linf" else ">= 0"
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(
            f"invalid eps {shown!r}: expected a number {valid} (pixel units) such as 0.03 or 8/255"
        ) from None
    if value < 0 or (norm == "linf" and value > 1):
        raise UsageError(f"invalid eps {shown!r}: eps is in pixel units and must be {valid} under {norm}")
    return float(value)


def _parse_eps_range(text: str, norm: str = "linf") -> list[float]:
    pieces = text.split(":")
    if len(pieces) != 3:
        raise UsageError(f"invalid eps range {text!r}: expected start:stop:step such as 0:8/255:1/255")
    for piece in pieces:
        _parse_eps_value(piece.strip(), text, norm)  # each bound must itself be a valid eps
    start, stop, step = (Fraction(piece.strip()) for piece in pieces)
    if step <= 0 or stop < start:
        raise UsageError(f"invalid eps range {text!r}: needs step > 0 and stop >= start")
    count = math.floor((stop - start) / step)
    return [float(start + i * step) for i in range(count + 1)]


def validate(config: RunConfig) -> None:
    """Check ranges and choices of a configuration.

    Raises:
        UsageError: Naming the first invalid setting and its valid values.
    """
    data, train, attack = config.data, config.train, config.attack
    if data.augment not in AUGMENTATIONS:
        raise unknown_choice("augmentation (data.augment)", data.augment, AUGMENTATIONS)
    if data.balance not in BALANCING:
        raise unknown_choice("class balancing (data.balance)", data.balance, BALANCING)
    if data.bad_files not in BAD_FILES:
        raise unknown_choice("bad-files policy (data.bad_files)", data.bad_files, BAD_FILES)
    if data.memory_limit_mb < 0:
        raise UsageError(f"data.memory_limit_mb must be >= 0, got {data.memory_limit_mb}")
    if data.image_size is not None and not 4 <= data.image_size <= 1024:
        raise UsageError(f"data.image_size must be between 4 and 1024 pixels, got {data.image_size}")
    if data.channels not in (None, 1, 3):
        raise UsageError(f"data.channels must be 1 or 3, got {data.channels}")
    for name in ("val_fraction", "test_fraction"):
        value = getattr(data, name)
        if not 0 < value < 1:
            raise UsageError(f"data.{name} must be between 0 and 1 (exclusive), got {value}")
    if data.train_examples is not None and data.train_examples < 1:
        raise UsageError(f"data.train_examples must be a positive integer, got {data.train_examples}")
    if train.optimizer not in OPTIMIZERS:
        raise unknown_choice("optimizer (train.optimizer)", train.optimizer, OPTIMIZERS)
    if train.schedule not in SCHEDULES:
        raise unknown_choice("schedule (train.schedule)", train.schedule, SCHEDULES)
    for name in ("epochs", "batch_size", "step_epochs"):
        if getattr(train, name) < 1:
            raise UsageError(f"train.{name} must be a positive integer, got {getattr(train, name)}")
    if not (train.lr > 0 and math.isfinite(train.lr)):
        raise UsageError(f"train.lr must be a positive number, got {train.lr}")
    if train.weight_decay < 0 or train.momentum < 0 or train.step_gamma <= 0:
        raise UsageError("train.weight_decay and train.momentum must be >= 0, train.step_gamma > 0")
    if train.amp not in AMP_MODES:
        raise unknown_choice("mixed precision (train.amp)", train.amp, AMP_MODES)
    if not 0 <= train.ema < 1:
        raise UsageError(f"train.ema is a decay in [0, 1), got {train.ema}")
    if train.mixup < 0 or train.cutmix < 0 or train.grad_clip < 0 or train.early_stopping < 0:
        raise UsageError("train.mixup, train.cutmix, train.grad_clip and train.early_stopping must be >= 0")
    if config.eval.batch_size < 1:
        raise UsageError(f"eval.batch_size must be a positive integer, got {config.eval.batch_size}")
    if not 0 <= train.label_smoothing < 1:
        raise UsageError(f"train.label_smoothing must be in [0, 1), got {train.label_smoothing}")
    choices = (*ATTACKS, *ATTACK_PRESETS)
    for name in attack.attacks:
        if name not in choices:
            raise unknown_choice("attack", name, choices)
    if not attack.attacks:
        raise UsageError(f"attack.attacks is empty; valid choices: {', '.join(choices)}")
    if attack.norm not in NORMS:
        raise unknown_choice("norm (attack.norm)", attack.norm, NORMS)
    for name in expand_attacks(attack.attacks):
        if attack.norm not in ATTACKS[name].norms:
            raise UsageError(f"the {name} attack is implemented for --norm {', '.join(ATTACKS[name].norms)} only; "
                             f"drop it or use {ATTACKS[name].norms[0]}")
    if attack.target is not None:
        untargetable = [n for n in expand_attacks(attack.attacks) if not ATTACKS[n].targetable]
        if untargetable:
            raise UsageError(f"--target applies to {', '.join(targetable_attacks())}; {', '.join(untargetable)} "
                             "pick their own targets (drop --target or those attacks)")
        if not str(attack.target).strip():
            raise UsageError(f"attack.target is empty; valid choices: {', '.join(TARGET_MODES)}, or a class")
    if attack.eps is not None:
        parse_eps(attack.eps, attack.norm)
    if attack.examples is not None and attack.examples < 1:
        raise UsageError(f"attack.examples must be a positive integer or 'all', got {attack.examples}")
    if (attack.steps is not None and attack.steps < 1) or attack.batch_size < 1 or attack.restarts < 1 \
            or attack.queries < 1:
        raise UsageError("attack.steps, attack.restarts, attack.queries and attack.batch_size must be positive integers")
    if attack.alpha is not None and not 0 < attack.alpha <= (1 if attack.norm == "linf" else math.inf):
        raise UsageError(f"attack.alpha is a step in pixel units and must be > 0 (at most 1 under linf), "
                         f"got {attack.alpha}")
    _validate_adversarial(config)
    if config.device not in DEVICES:
        raise unknown_choice("device", config.device, DEVICES)


def _validate_adversarial(config: RunConfig) -> None:
    adversarial, train = config.adversarial, config.train
    if adversarial.recipe not in recipe_choices():
        raise unknown_choice("adversarial training recipe (adversarial.recipe)", adversarial.recipe,
                             recipe_choices())
    if adversarial.eps is not None:
        values = parse_eps(adversarial.eps, config.attack.norm)
        if len(values) != 1:
            raise UsageError(f"adversarial.eps is one radius, got {adversarial.eps!r}")
    if (adversarial.steps is not None and adversarial.steps < 1) or adversarial.val_examples < 1 \
            or adversarial.val_steps < 1:
        raise UsageError("adversarial.steps, adversarial.val_examples and adversarial.val_steps must be "
                         "positive integers")
    if adversarial.alpha is not None and not adversarial.alpha > 0:
        raise UsageError(f"adversarial.alpha is a step in pixel units and must be > 0, got {adversarial.alpha}")
    if adversarial.beta < 0 or (adversarial.warmup_epochs is not None and adversarial.warmup_epochs < 0):
        raise UsageError("adversarial.beta and adversarial.warmup_epochs must be >= 0")
    if not 0 < adversarial.overfit_drop <= 1:
        raise UsageError(f"adversarial.overfit_drop is a fall in accuracy in (0, 1], got {adversarial.overfit_drop}")
    if adversarial.enabled and (train.mixup or train.cutmix):
        raise UsageError("adversarial training needs hard labels: drop --mixup/--cutmix or --adversarial")
