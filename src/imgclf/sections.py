"""The configuration's sections: one dataclass per pipeline stage, each field declaring its default and its
constraint (:func:`~imgclf.constraints.setting`), and :class:`RunConfig`, which holds them all.

The declarations only: :mod:`imgclf.config` reads them from YAML and flags and checks them, and
:mod:`imgclf.settings` resolves a checked :class:`RunConfig` into the values every stage uses. Import them from
:mod:`imgclf.config`, which re-exports them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from imgclf.attacks.registry import ATTACK_PRESETS, ATTACKS, NORMS, PLAN, PLAN_TOLERANCE
from imgclf.constraints import CountOrAll, Interval, Options, OrWord, setting
from imgclf.corruptions.registry import SeveritySetting, corruption_choices
from imgclf.data.augment import AugmentSetting
from imgclf.defenses.recipes import DEFAULT_BETA, OVERFIT_ACTIONS, OVERFIT_DROP, OVERFIT_GAP, recipe_choices
from imgclf.models.source import ModelSource, parse_source

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "cyclic", "step", "constant")
BALANCING = ("none", "weighted-loss", "sampler")
BAD_FILES = ("skip", "error")
TEST_FROM = ("train", "val")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "off", "bf16", "fp16")
#: When ``imgclf run`` evaluates under the common corruptions: auto (where the stage is estimated to cost under a
#: fifth of the attack stage), on, off. ``imgclf corrupt RUN`` runs it on any run.
CORRUPTION_STAGE = ("auto", "on", "off")

#: The largest seed: NumPy, scikit-learn and torch all take seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1

_POSITIVE = Interval(int, 1, None)
# Ceilings: a value past them is a typo, not a plan (--steps 99999999999999999999 would run for ever in silence).
_EPOCHS = Interval(int, 1, 100_000)
_STEPS = Interval(int, 1, 100_000)  # attack and training-attack iterations
_MAX_COUNT = 100_000_000
_COUNT = Interval(int, 1, _MAX_COUNT)  # examples
_BATCH = Interval(int, 1, 1_000_000)
_NON_NEGATIVE = Interval(float, 0, None)
_FRACTION = Interval(float, 0, 1, "neither")


@dataclass
class DataConfig:
    """Where the images come from and how they are split and augmented."""

    dataset: str = "digits"  # a registered name (`imgclf datasets`), an image folder, a labels .csv/.tsv, or a
    # Hugging Face data set on disk (a save_to_disk folder, a .parquet file or a folder of them)
    image_root: str | None = None  # labels file: the folder its relative paths start from; None: the file's folder
    path_column: str | None = None  # labels file: the column of image paths; None: path, file, image, id, ...
    paths_outside_root: bool = False  # labels file: allow paths that leave the image root (absolute, or via ..)
    image_column: str | None = None  # Hugging Face data set: the column of images; None: the Image feature's
    label_column: str | None = None  # labels file, HF data set: the column of labels; None: ClassLabel, label, ...
    data_dir: str | None = None  # None: $IMGCLF_DATA_DIR, else the per-user cache folder
    image_size: int | None = setting(None, Interval(int, 4, 1024))  # resize to N x N; None: the data's own size
    channels: int | None = setting(None, Options("channel count", (1, 3)))  # None: from the data (grey stays 1)
    val_fraction: float = setting(0.2, _FRACTION)  # held out of train when the data set has no val split
    test_fraction: float = setting(0.2, _FRACTION)  # held out when the data set has no test split
    test_from: str = setting("train", Options("test-split source", TEST_FROM))  # the split that gives it up
    train_examples: int | None = setting(None, _COUNT)  # seeded stratified subset of train; None: all
    augment: str = setting("none", AugmentSetting())  # presets and torchvision policies joined by +
    balance: str = setting("none", Options("class balancing", BALANCING))  # counter class imbalance in training
    bad_files: str = setting("skip", Options("bad-files policy", BAD_FILES))  # skip (and list) or stop at bad files
    cache: bool = True  # keep decoded image folders in the decoded-image cache
    memory_limit_mb: int = setting(8192, Interval(int, 0, None))  # larger image folders are read from disk per batch
    download: bool = True  # fetch missing files of built-in data sets


@dataclass
class ModelConfig:
    """Which architecture, and its keyword-only hyperparameters (`imgclf models`)."""

    name: str = "simple-cnn"  # a registered name, timm:NAME, torchvision:NAME, py:module:factory, or an exported file
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {hidden: 256, depth: 2}
    weights: str | None = None  # the architecture's weights: .safetensors, or a state dict read with weights_only
    mean: list[float] | None = None  # per-channel normalization the model expects, pixel units (None: own-model.md)
    std: list[float] | None = None  # with mean; every value > 0

    @functools.cached_property
    def source(self) -> ModelSource:
        """What ``name`` names, parsed once (the configuration's check parses it first, so a bad name fails
        there); every later step reads this typed value.

        Raises:
            UsageError: On a malformed source (``timm:`` with no name, ``py:`` without ``:factory``).
        """
        return parse_source(self.name)


@dataclass
class TrainConfig:
    """Optimisation settings."""

    epochs: int = setting(10, _EPOCHS)
    batch_size: int = setting(64, _BATCH)
    optimizer: str = setting("adamw", Options("optimizer", OPTIMIZERS))
    # peak for onecycle, initial for the others; "auto": the learning-rate range test's suggestion (`lr-find`)
    lr: float | str = setting(2e-3, OrWord(Interval(float, 0, None, "neither"), "auto"))
    momentum: float = setting(0.9, Interval(float, 0, 1, "left"))  # SGD only
    nesterov: bool = True  # SGD only
    weight_decay: float = setting(5e-4, _NON_NEGATIVE)
    schedule: str = setting("onecycle", Options("schedule", SCHEDULES))  # stepped once per batch
    step_epochs: int = setting(5, _EPOCHS)  # `step` schedule: multiply lr by step_gamma every this many epochs
    milestones: list[int] | None = None  # `step` schedule: at these epochs (each in [1, epochs]) instead
    step_gamma: float = setting(0.1, Interval(float, 0, None, "neither"))
    cyclic_peak: float = setting(0.4, Interval(float, 0, 1, "neither"))  # `cyclic`: the peak's share of all steps
    label_smoothing: float = setting(0.0, Interval(float, 0, 1, "left"))
    channels_last: bool = True  # NHWC memory format for weights and batches (faster convolutions)
    ema: float = setting(0.0, Interval(float, 0, 1, "left"))  # decay of a moving average of the weights; 0: off
    mixup: float = setting(0.0, _NON_NEGATIVE)  # MixUp alpha (Zhang et al. 2018); 0: off
    cutmix: float = setting(0.0, _NON_NEGATIVE)  # CutMix alpha (Yun et al. 2019); 0: off; with mixup, one per batch
    grad_clip: float = setting(0.0, _NON_NEGATIVE)  # clip the global gradient norm to this; 0: off
    freeze_epochs: int = setting(0, Interval(int, 0, 100_000))  # train only the classifier head for this many epochs
    backbone_lr_scale: float = setting(1.0, Interval(float, 0, 1, "right"))  # backbone lr = this x the head's
    freeze_bn: bool = False  # while frozen, the backbone's BatchNorm layers keep their running statistics
    early_stopping: int = setting(0, Interval(int, 0, 100_000))  # stop after this many epochs without progress; 0: off
    amp: str = setting("auto", Options("mixed precision", AMP_MODES))  # auto: bf16 on CUDA where supported
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPU)
    tensorboard: bool = False  # also log to RUN/tensorboard (scalars, figures, hyperparameters)


@dataclass
class EvalConfig:
    """Clean evaluation settings."""

    tta: bool = False  # test-time augmentation: average the logits of each image and its mirror
    batch_size: int = setting(512, _BATCH)
    calibration_bins: int = setting(15, Interval(int, 2, 100))  # confidence bins of ECE, MCE, reliability diagrams


@dataclass
class AttackConfig:
    """Robustness evaluation: which attacks, at which eps, on how many test images.

    ``eps`` keeps what the user wrote (``8/255`` stays ``8/255``); the typed
    values are :class:`imgclf.settings.Settings`'s.
    """

    attacks: list[str] = setting(default_factory=lambda: ["auto"],
                                 constraint=Options("attack", lambda: (*ATTACKS, *ATTACK_PRESETS, PLAN), each=True))
    norm: str = setting("linf", Options("norm", NORMS))  # the norm that bounds the perturbation
    eps: list[str] | None = None  # pixel units, e.g. ["0", "8/255"], "0:8/255:2/255"; None: by channels and norm
    examples: int | str | None = setting(1000, CountOrAll(_MAX_COUNT))  # seeded stratified test subset, or "all"
    steps: int | None = setting(None, _STEPS)  # iterations; None: each attack's default (PGD 20, APGD 100)
    alpha: float | None = setting(None, Interval(float, 0, None, "neither"))  # PGD step (pixel units)
    restarts: int = setting(1, Interval(int, 1, 1_000))  # random restarts of PGD, APGD and FAB
    random_start: bool = True  # PGD starts at a random point of the eps ball
    target: str | None = None  # random | least-likely | a class name or index: targeted attacks
    options: dict[str, Any] = field(default_factory=dict)  # the attacks' own options (`imgclf attacks`), e.g. queries
    batch_size: int = setting(256, _BATCH)
    surrogate: str | None = None  # a run folder whose model the transfer check attacks; None: found in the model
    cascade: bool = False  # each attack only on what the earlier ones failed on (AutoAttack's way; cumulative rows)
    plan_tolerance: float = setting(PLAN_TOLERANCE, Interval(float, 0, 1, "left"))  # plan stops: fooled share
    minimal_norm: bool = True  # FMN once, unbounded: each example's smallest adversarial radius, the continuous curve


@dataclass
class CorruptionConfig:
    """Common corruptions (:mod:`imgclf.corruptions`): which, at which severities, on how many test images."""

    stage: str = setting("auto", Options("corruption stage", CORRUPTION_STAGE))  # in `imgclf run`: auto, on, off
    corruptions: list[str] = setting(default_factory=lambda: ["all"],
                                     constraint=Options("corruption", corruption_choices, each=True))
    severities: str | list[int] = setting("1:5", SeveritySetting())  # as written: 1:5, 3, 1,3,5, or a list
    examples: int | str = setting(100, CountOrAll(_MAX_COUNT))  # seeded stratified subset or "all" (cost: docs)
    baseline: str | None = None  # a run folder evaluated under the same corruptions: mCE and relative mCE


@dataclass
class CertifyConfig:
    """Randomized smoothing (:mod:`imgclf.certification`): certified L2 radii and the empirical bracket beside them."""

    sigma: float = setting(0.25, Interval(float, 0, None, "neither"))  # the noise's standard deviation, pixel units
    n0: int = setting(100, Interval(int, 1, _MAX_COUNT))  # noisy copies per image that select the top class
    n: int = setting(10_000, Interval(int, 1, _MAX_COUNT))  # noisy copies per image that bound its probability
    alpha: float = setting(0.001, Interval(float, 0, 0.5, "neither"))  # each certificate's failure probability
    examples: int | str = setting(500, CountOrAll(_MAX_COUNT))  # seeded stratified test subset, or "all"
    radii: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75])  # L2, pixel units, each >= 0
    batch_size: int = setting(1000, _BATCH)  # noisy images per forward pass
    attack: bool = True  # the empirical upper bounds: SmoothAdv on the smoothed classifier, APGD-CE L2 on the model
    attack_steps: int = setting(20, _STEPS)  # SmoothAdv's PGD steps (APGD-CE on the model: 100)
    attack_samples: int = setting(8, Interval(int, 1, 10_000))  # noise draws SmoothAdv averages per step
    attack_n: int = setting(1000, Interval(int, 1, _MAX_COUNT))  # noisy copies that predict at each attacked point


@dataclass
class AdversarialConfig:
    """Adversarial training (:mod:`imgclf.defenses`); its norm is ``attack.norm``."""

    recipe: str = setting("none", Options("adversarial training recipe", recipe_choices))
    eps: str | None = None  # training radius in pixel units (0.3, 8/255); None: the largest attack eps
    steps: int | None = setting(None, _STEPS)  # attack steps; None: the recipe's default (fgsm-rs always 1)
    alpha: float | None = setting(None, Interval(float, 0, None, "neither"))  # step size; None: the recipe's
    beta: float = setting(DEFAULT_BETA, _NON_NEGATIVE)  # TRADES: weight of the KL term
    warmup_epochs: float | None = setting(None, _NON_NEGATIVE)  # eps rises from 0 over these; None: 20% of them
    val_examples: int = setting(1000, _COUNT)  # fixed validation subset whose robust accuracy picks the checkpoint
    val_steps: int = setting(10, _STEPS)  # PGD steps of that robust validation
    overfit_drop: float = setting(OVERFIT_DROP, Interval(float, 0, 1, "right"))  # single-step guard: PGD val fall
    overfit_gap: float = setting(OVERFIT_GAP, Interval(float, 0, 1, "right"))  # single-step guard: FGSM above PGD
    on_overfit: str = setting("stop", Options("catastrophic-overfitting action", OVERFIT_ACTIONS))
    overfit_retries: int = setting(2, Interval(int, 1, 100))  # rollbacks or restarts before training stops
    probe_every: int = setting(0, Interval(int, 0, None))  # also probe every N optimizer steps; 0: after epochs
    noise: float = setting(2.0, Interval(float, 0, 100))  # n-fgsm: the start's radius, a multiple of eps
    grad_align: float = setting(0.2, _NON_NEGATIVE)  # gradalign: the weight of the gradient-alignment term
    clip_start: bool = True  # fgsm-rs: clamp the random start to [0, 1] before its gradient (False: Wong's MNIST code)

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
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    seed: int = setting(0, Interval(int, 0, MAX_SEED))  # NumPy, scikit-learn and torch all take it
    device: str = setting("auto", Options("device", DEVICES))


#: Every section of a :class:`RunConfig` by its name, in the order of its fields.
SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
            "attack": AttackConfig, "adversarial": AdversarialConfig, "corruption": CorruptionConfig,
            "certify": CertifyConfig}


def section_class(name: str) -> type:
    """The dataclass of configuration section ``name`` (``"train"`` -> :class:`TrainConfig`).

    Raises:
        KeyError: On an unknown section.
    """
    return SECTIONS[name]
