"""Every setting of a run, read from YAML and flags and checked once.

A run's configuration is a :class:`RunConfig` with one section per pipeline
stage (``data``, ``model``, ``train``, ``eval``, ``attack``, ``adversarial``, ``corruption``, ``certify``) plus
``seed`` and ``device``, declared in :mod:`imgclf.sections` and imported from here.
It is built from three layers, later ones winning: the declared defaults, a YAML
file (``--config run.yaml``), and command-line flags (dotted keys such as
``train.epochs``). :func:`config_from_dict` validates every key and value and
raises :class:`~imgclf.errors.UsageError` naming the bad one; nothing inside
the pipeline re-checks user input.

The resolved configuration written to a run folder (``config.yaml``) can be fed
back with ``--config`` to repeat the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from imgclf.attacks.registry import (
    ATTACKS,
    DEFAULT_NORMS,
    PLAN,
    attack_options,
    expand_attacks,
    parse_options,
    targetable_attacks,
)
from imgclf.constraints import check_fields
from imgclf.errors import UsageError, unknown_choice
from imgclf.models.registry import resolve_options as model_options
from imgclf.sections import (
    MAX_SEED,
    SECTIONS,
    AdversarialConfig,
    AttackConfig,
    CertifyConfig,
    CorruptionConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    section_class,
)
from imgclf.settings import Settings, norm_resets_eps, resolve
from imgclf.trust import check_named_code

#: The sections' declarations live in :mod:`imgclf.sections`; this module is where they are imported from.
__all__ = [
    "MAX_SEED", "SETTING_PRESETS", "AdversarialConfig", "AttackConfig", "CertifyConfig", "CorruptionConfig",
    "DataConfig", "EvalConfig", "ModelConfig", "RunConfig", "TrainConfig", "config_from_dict", "config_to_dict",
    "dotted", "dump_config", "load_config", "read_yaml_mapping", "resolve_changes", "section_class", "set_dotted",
    "validate",
]

# The data, network, optimizer and schedule of Wong, Rice and Kolter 2020's MNIST code (MNIST/train_mnist.py), shared
# by the fgsm-rs-mnist and fast-pgd-mnist presets.
_FAST_MNIST: dict[str, Any] = {
    "data.dataset": "mnist",
    "model.name": "fast-mnist-cnn", "model.mean": [0.0], "model.std": [1.0],
    "train.epochs": 10, "train.batch_size": 100, "train.optimizer": "adam", "train.lr": 5e-3,
    "train.weight_decay": 0.0, "train.schedule": "cyclic", "attack.eps": ["0", "0.1", "0.2", "0.3"],
}

#: Named presets of settings, applied under the YAML file and the flags (``--recipe NAME``).
SETTING_PRESETS: dict[str, dict[str, Any]] = {
    # The published robust-training anchors, each as its paper's code trained (docs/results.md, "The published
    # anchors", gives the source of every value and where imgclf differs: the 80/20 train/val split, the checkpoint
    # picked by robust validation accuracy).
    "fgsm-rs-mnist": {  # Wong, Rice and Kolter 2020, MNIST/train_mnist.py
        **_FAST_MNIST,
        "adversarial.recipe": "fgsm-rs", "adversarial.eps": "0.3", "adversarial.alpha": 0.375,
        "adversarial.clip_start": False, "adversarial.warmup_epochs": 0.0,
    },
    # imgclf's own recipe for MNIST at eps 0.3, the same model and schedule as fgsm-rs-mnist, trained on PGD with 3
    # steps of 0.15 (Madry et al. 2018) from a random start, eps warmed up over 2 epochs (without it PGD training at
    # eps 0.3 stays at chance through the first epochs); chosen on the validation images among PGD-3 and PGD-5
    # (docs/results.md, "One recipe for every seed").
    "fast-pgd-mnist": {
        **_FAST_MNIST,
        "adversarial.recipe": "pgd", "adversarial.eps": "0.3", "adversarial.steps": 3, "adversarial.alpha": 0.15,
        "adversarial.warmup_epochs": 2.0,
    },
    "fgsm-rs-cifar10": {  # Wong, Rice and Kolter 2020, CIFAR10/train_fgsm.py
        "data.dataset": "cifar10", "data.augment": "flip-crop",
        "model.name": "preact-resnet18", "model.mean": [0.4914, 0.4822, 0.4465], "model.std": [0.2471, 0.2435, 0.2616],
        "train.epochs": 15, "train.batch_size": 128, "train.optimizer": "sgd", "train.lr": 0.2, "train.momentum": 0.9,
        "train.nesterov": False, "train.weight_decay": 5e-4, "train.schedule": "cyclic", "train.cyclic_peak": 0.5,
        "adversarial.recipe": "fgsm-rs", "adversarial.eps": "8/255", "adversarial.alpha": 10 / 255,
        "adversarial.warmup_epochs": 0.0, "attack.eps": ["0", "2/255", "4/255", "8/255"],
    },
    "pgd-mnist": {  # Madry et al. 2018, the MNIST challenge's config.json and train.py
        "data.dataset": "mnist",
        "model.name": "madry-cnn", "model.mean": [0.0], "model.std": [1.0],
        "train.epochs": 104, "train.batch_size": 50, "train.optimizer": "adam", "train.lr": 1e-4,
        "train.weight_decay": 0.0, "train.schedule": "constant",
        "adversarial.recipe": "pgd", "adversarial.eps": "0.3", "adversarial.steps": 40, "adversarial.alpha": 0.01,
        "adversarial.warmup_epochs": 0.0, "attack.eps": ["0", "0.1", "0.2", "0.3"],
    },
    "trades-mnist": {  # Zhang et al. 2019, train_trades_mnist.py
        "data.dataset": "mnist",
        "model.name": "trades-cnn", "model.mean": [0.0], "model.std": [1.0],
        "train.epochs": 100, "train.batch_size": 128, "train.optimizer": "sgd", "train.lr": 0.01,
        "train.momentum": 0.9, "train.nesterov": False, "train.weight_decay": 0.0, "train.schedule": "step",
        "train.milestones": [55, 75, 90], "train.step_gamma": 0.1,
        "adversarial.recipe": "trades", "adversarial.eps": "0.3", "adversarial.steps": 40, "adversarial.alpha": 0.01,
        "adversarial.beta": 1.0, "adversarial.warmup_epochs": 0.0, "attack.eps": ["0", "0.1", "0.2", "0.3"],
    },
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
        optional = type(None) in args
        if value is None and optional:
            return None
        members = [a for a in args if a is not type(None)]
        if optional and isinstance(value, str) and value.strip().lower() in ("none", "null"):
            return None  # ("" is not None: an empty --eps or --target is refused, not read as the default)
        for member in members[:-1]:  # the first type that takes the value (int before str)
            try:
                return _coerce(value, member, where)
            except UsageError:
                continue
        return _coerce(value, members[-1], where)
    if origin is list:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # one number in a YAML file (eps: 0.5) is a list of one
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
    top = {"seed", "device", *SECTIONS}  # ("recipe" is applied by load_config, below the file)
    for key in values:
        if key not in top:
            raise UsageError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(top))}")
    values["attack"] = _attack_options_inside(values.get("attack") or {})
    sections = {name: _section_from_dict(cls, values.get(name) or {}, name) for name, cls in SECTIONS.items()}
    config = RunConfig(
        **sections,
        seed=_coerce(values.get("seed", 0), int, "seed"),
        device=_coerce(values.get("device", "auto"), str, "device"),
    )
    validate(config)
    return config


def _attack_options_inside(attack: Any) -> Any:
    """The ``attack`` section with each attack's own options (:class:`imgclf.attacks.registry.AttackOption`)
    under ``options``, read as their declared types and checked: ``attack.queries`` in a YAML file, a flag or
    ``Run.attack(queries=...)`` is ``attack.options.queries``.

    Raises:
        UsageError: On an option no registered attack owns, or an invalid value.
    """
    if not isinstance(attack, dict):
        return attack  # (refused by the section's own check)
    fields = [f.name for f in dataclasses.fields(AttackConfig)]
    declared = attack_options()
    options = attack.get("options") or {}
    if not isinstance(options, dict):
        raise UsageError(f"attack.options must be a mapping of the attacks' own options, got {options!r}")
    stray = [key for key in attack if key not in fields and key not in declared]
    if stray:  # (a setting of the section or an attack's option: both are valid here)
        valid = [*fields, *declared]
        close = difflib.get_close_matches(str(stray[0]), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown setting attack.{stray[0]!r}{hint}; valid settings in 'attack': {', '.join(valid)}")
    moved = {key: value for key, value in attack.items() if key not in fields and key in declared}
    parsed = parse_options({**options, **moved})
    return {**{key: value for key, value in attack.items() if key not in moved}, "options": parsed}


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The configuration as plain nested dicts, lists and scalars (YAML-ready)."""
    return dataclasses.asdict(config)


def dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one mapping of dotted keys, the inverse of :func:`set_dotted`:
    ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (model options flatten too; an empty mapping stays a value)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set ``values["train"]["epochs"] = value`` for ``key="train.epochs"``.

    A section that is None (``data:`` left empty in a YAML file) becomes a mapping.

    Raises:
        UsageError: If a section on the way is a value other than a mapping (``data: 3``).
    """
    *parents, leaf = key.split(".")
    node = values
    for depth, part in enumerate(parents):
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            where = ".".join(parents[:depth + 1])
            raise UsageError(f"config section {where!r} must be a mapping of settings, got {node[part]!r}")
        node = node[part]
    node[leaf] = value


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None, *,
                trust_code: bool = False) -> RunConfig:
    """Read a YAML file (optional), apply dotted-key overrides, and validate.

    Args:
        path: A YAML file with the sections of :class:`RunConfig`, or None for
            the defaults.
        overrides: ``{"train.epochs": 3, ...}``, applied after the file.
        trust_code: Accept a ``py:`` model that the file names (see :mod:`imgclf.trust`); a ``py:`` model
            in ``overrides`` is the caller's own and needs no opt-in.

    Returns:
        The validated configuration.

    Raises:
        UsageError: If the file is missing or not valid YAML, any value is
            invalid, or the file names Python code that is not trusted.
    """
    values: dict[str, Any] = {}
    overrides = dict(overrides or {})
    recipe = overrides.pop("recipe", None)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file {str(path)!r} does not exist")
        values = read_yaml_mapping(path, "config file")
        model = values.get("model")
        if isinstance(model, dict) and "model.name" not in overrides:
            check_named_code(model.get("name"), f"config file {str(path)!r}", allowed=trust_code)
    recipe = recipe or values.pop("recipe", None)
    if recipe is not None:
        if not isinstance(recipe, str) or recipe not in SETTING_PRESETS:
            raise unknown_choice("recipe", recipe, SETTING_PRESETS)
        layered: dict[str, Any] = {}
        for key, value in SETTING_PRESETS[recipe].items():
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last silently,
    so ``epochs: 1`` then ``epochs: 2`` would train 2 epochs without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML's own text quotes the line over several)."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    return f"{problem}" + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping at the top of a UTF-8 YAML file (an empty file is an empty mapping).

    Only plain YAML is read (a ``yaml.SafeLoader``): tags that would build Python objects are refused, and
    so is a key given twice in one mapping.

    Raises:
        UsageError: If the file cannot be read, is not UTF-8, is not valid YAML, repeats a key, or holds
            something other than a mapping; the message names the file.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise UsageError(f"{what} {str(path)!r} cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {str(path)!r} is not UTF-8 text; save it as UTF-8 YAML") from None
    try:
        loaded = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader: plain YAML only)
    except yaml.YAMLError as error:
        raise UsageError(f"{what} {str(path)!r} is not valid YAML: {_yaml_problem(error)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise UsageError(f"{what} {str(path)!r} must hold a mapping of settings, got {type(loaded).__name__}")
    return loaded or {}


def dump_config(config: RunConfig) -> str:
    """The configuration as YAML text, readable by :func:`load_config`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _check_radii(radii: list[float]) -> None:
    """Raises UsageError unless ``radii`` (``certify.radii``) is one or more finite L2 radii >= 0."""
    if not radii or any(not (math.isfinite(r) and r >= 0) for r in radii):
        raise UsageError(f"certify.radii must be one or more L2 radii >= 0 in pixel units, e.g. 0,0.25,0.5, got "
                         f"{radii!r}")


def validate(config: RunConfig) -> None:
    """Check a configuration: every declared constraint, then what involves several settings.

    Raises:
        UsageError: Naming the first invalid setting and its valid values.
    """
    for name in SECTIONS:
        check_fields(getattr(config, name), name)
    check_fields(config, "")
    attack, adversarial, train = config.attack, config.adversarial, config.train
    _check_radii(config.certify.radii)
    for name in expand_attacks(attack.attacks, attack.norm):
        if name != PLAN and attack.norm not in ATTACKS[name].norms:
            raise UsageError(f"the {name} attack is implemented for --norm {', '.join(ATTACKS[name].norms)} only; "
                             f"drop it or use {ATTACKS[name].norms[0]}")
    if attack.target is not None:
        if PLAN in expand_attacks(attack.attacks) and str(attack.target).strip():  # (an empty one: resolve says)
            raise UsageError("--target applies to single attacks; the converging plan (preset auto, the default) "
                             f"is untargeted: name the attacks, e.g. --attack {','.join(targetable_attacks()[:2])} "
                             "--target random")
        untargetable = [n for n in expand_attacks(attack.attacks) if n != PLAN and not ATTACKS[n].targetable]
        if untargetable:
            raise UsageError(f"--target applies to {', '.join(targetable_attacks())}; {', '.join(untargetable)} "
                             "pick their own targets (drop --target or those attacks)")
    if adversarial.enabled and attack.norm not in DEFAULT_NORMS:
        raise UsageError(f"adversarial training trains under {' or '.join(DEFAULT_NORMS)}; attack.norm is "
                         f"{attack.norm}: train under one of them, then attack with --norm {attack.norm} "
                         "(imgclf attack RUN)")
    if attack.norm == "linf" and attack.alpha is not None and attack.alpha > 1:
        raise UsageError(f"attack.alpha is a step in pixel units and must be at most 1 under linf, got {attack.alpha}")
    if train.milestones is not None and (not train.milestones or not all(1 <= m <= train.epochs
                                                                          for m in train.milestones)):
        raise UsageError(f"train.milestones must be epochs from 1 to train.epochs ({train.epochs}), got "
                         f"{train.milestones}: give --milestones for the epochs you train (a recipe's, such as "
                         "trades-mnist's 55,75,90 of 100, hold for its own epochs only)")
    if train.optimizer != "sgd" and train.momentum != TrainConfig.momentum:
        raise UsageError(f"train.momentum applies to SGD only; {train.optimizer} keeps its own moment estimates: "
                         "drop --momentum or use --optimizer sgd")
    if train.freeze_epochs > train.epochs:
        raise UsageError(f"train.freeze_epochs ({train.freeze_epochs}) is more than train.epochs ({train.epochs}); "
                         "freeze at most every epoch (a linear probe) or train more epochs")
    if not config.data.dataset.strip():
        raise UsageError("data.dataset is empty; give a built-in data set (imgclf datasets), an image folder, or "
                         "a labels file")
    if adversarial.enabled and (train.mixup or train.cutmix):
        raise UsageError("adversarial training needs hard labels: drop --mixup/--cutmix or --adversarial")
    from imgclf.data.builtin import DATASETS

    data = config.data
    given = [flag for flag, value in (("--image-root", data.image_root), ("--path-column", data.path_column),
                                      ("--label-column", data.label_column), ("--image-column", data.image_column))
             if value is not None]
    from imgclf.data.builtin import resolve_data_dir
    from imgclf.data.names import dataset_location

    dataset_location(data.dataset, resolve_data_dir(data.data_dir), tuple(DATASETS))  # an unknown name, before torch
    if given and data.dataset in DATASETS:  # (for a path, the layout found on disk decides: data.scan_images)
        raise UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to a labels file (--labels "
                         f"FILE.csv or .tsv) or a Hugging Face data set; {data.dataset!r} is a built-in data set")
    model = config.model
    if (model.mean is None) != (model.std is None) or (model.mean is not None and model.std is not None and (
            len(model.mean) != len(model.std) or not model.mean or min(model.std) <= 0)):
        raise UsageError(f"model.mean and model.std go together, one value per channel, std > 0; got mean "
                         f"{model.mean} and std {model.std}")
    model_options(config.model.source, config.model.options)  # the source, the architecture and its options
    resolve(config)  # the eps values, the training eps and the target, as every stage will see them


def resolve_changes(config: RunConfig, section: str, changes: dict[str, Any], *, channels: int,
                    class_names: list[str]) -> Settings:
    """The settings of ``config`` with ``changes`` to one section (``{"eps": "0,8/255"}`` for ``section``
    ``"attack"``), resolved like every setting; a new ``attack`` norm without eps takes that norm's default eps.

    Raises:
        UsageError: On an invalid value."""
    values = config_to_dict(config)
    for key, value in norm_resets_eps({f"{section}.{key}": value for key, value in changes.items()}).items():
        set_dotted(values, key, value)
    return resolve(config_from_dict(values), channels=channels, class_names=class_names)
