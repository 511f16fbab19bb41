"""The ``imgclf`` command line.

User errors (bad flags, files, data) print one line and exit with status 2;
other failures exit with status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from imgclf import __version__
from imgclf.config import MAX_SEED, SETTING_PRESETS
from imgclf.errors import ExportMismatchError, UsageError, first_line

S = argparse.SUPPRESS


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _integer(low: int, high: int | None, expected: str) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive = _integer(1, None, "a positive integer")
_seed = _integer(0, MAX_SEED, f"a seed, an integer in [0, {MAX_SEED}]")


_positive_or_all = _integer(1, None, "a positive integer or 'all'")


def _count_or_all(text: str) -> int | str:
    return "all" if text.strip().lower() == "all" else _positive_or_all(text)


def _finite(text: str) -> float:
    """A finite number (``nan`` and ``inf`` are refused: they would draw or train nonsense)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _flag(group: Any, *names: str, dest: str, help: str = "", metavar: str | None = None,
          parse: Callable[[str], Any] | None = None) -> None:
    """A flag that sets the setting ``dest`` (``section.field`` or a top-level field); its help ends with
    the field's declared range and default, and booleans get ``--x/--no-x``. Values are checked by
    the configuration, with the same message as in a YAML file."""
    from imgclf.config import RunConfig, section_class
    from imgclf.constraints import describe_field

    section, _, name = dest.rpartition(".")
    cls = section_class(section) if section else RunConfig
    described = describe_field(cls, name)
    text = f"{help} ({described})" if help and described else help or described
    if {f.name: f.type for f in dataclasses.fields(cls)}[name] in ("bool", bool):
        group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=S,
                           help=text.replace("%", "%%"))
        return
    group.add_argument(*names, dest=dest, default=S, metavar=metavar or name.upper(), type=parse,
                       help=text.replace("%", "%%"))


def _add_data_flags(parser: argparse.ArgumentParser, *, full: bool) -> None:
    group = parser.add_argument_group("data")
    if full:
        source = group.add_mutually_exclusive_group()
        _flag(source, "--dataset", dest="data.dataset", metavar="NAME|PATH",
              help="built-in data set (see `imgclf datasets`), an image folder, a labels .csv/.tsv file, or a "
                   "Hugging Face data set on disk (save_to_disk folder, .parquet file or folder)")
        _flag(source, "--labels", dest="data.dataset", metavar="FILE",
              help="a CSV or TSV of image paths and labels (header first; an optional split column), as "
                   "the data set")
    _flag(group, "--data-dir", dest="data.data_dir", metavar="DIR",
          help="folder holding the data sets (default: $IMGCLF_DATA_DIR, else ~/.cache/imgclf/data)")
    if not full:
        return
    _flag(group, "--image-root", dest="data.image_root", metavar="DIR",
          help="labels file: the folder its relative paths start from (default: the file's folder)")
    _flag(group, "--path-column", dest="data.path_column", metavar="NAME", help="labels file: the column of paths")
    _flag(group, "--paths-outside-root", dest="data.paths_outside_root",
          help="labels file: read paths that leave the image root (absolute ones, or through ..)")
    _flag(group, "--label-column", dest="data.label_column", metavar="NAME",
          help="labels file or Hugging Face data set: the column of labels")
    _flag(group, "--image-column", dest="data.image_column", metavar="NAME",
          help="Hugging Face data set: the column of images (default: the one of type Image)")
    _flag(group, "--image-size", dest="data.image_size", metavar="N", help="resize images to N x N pixels")
    _flag(group, "--channels", dest="data.channels", metavar="C",
          help="convert images to 1 (grey) or 3 (RGB) channels (default: from the data)")
    _flag(group, "--val-fraction", dest="data.val_fraction", metavar="F",
          help="share of train held out for validation when there is no val split")
    _flag(group, "--test-fraction", dest="data.test_fraction", metavar="F",
          help="share held out for testing when there is no test split")
    _flag(group, "--test-from", dest="data.test_from", metavar="SPLIT",
          help="the split the test split is drawn from when there is none: train, or val (a val split of the data)")
    _flag(group, "--train-examples", dest="data.train_examples", metavar="N",
          help="train on a seeded stratified subset of N images")
    _flag(group, "--augment", dest="data.augment", metavar="SPEC",
          help="training augmentation, e.g. flip-crop+randaugment:n=2,m=9")
    _flag(group, "--balance", dest="data.balance", metavar="HOW", help="counter class imbalance")
    _flag(group, "--bad-files", dest="data.bad_files", metavar="POLICY",
          help="image files that fail to decode: skip (listed in bad_files.txt) or stop with an error")
    _flag(group, "--cache", dest="data.cache", help="keep decoded image folders in the decoded-image cache")
    _flag(group, "--memory-limit", dest="data.memory_limit_mb", metavar="MB",
          help="decoded image folders larger than this are read from disk per batch")


def _add_model_flags(group: Any) -> None:
    _flag(group, "--model", dest="model.name", metavar="NAME",
          help="architecture (see `imgclf models`), timm:NAME, torchvision:NAME, py:module:factory "
               "(or py:file.py:factory), or an exported .pt2, TorchScript .pt or .onnx file")
    group.add_argument("--model-option", dest="model_options", type=_key_value, action="append", default=[],
                       metavar="KEY=VALUE", help="architecture hyperparameter, e.g. hidden=256 (repeatable)")
    _flag(group, "--weights", dest="model.weights", metavar="FILE",
          help="weights of the architecture: .safetensors, or a state dict saved with torch.save")
    _flag(group, "--mean", dest="model.mean", metavar="LIST",
          help="per-channel mean the model expects, pixel units, e.g. 0.485,0.456,0.406 (default: the library's "
               "for weights from timm or torchvision, none for other weights, the data's when training)")
    _flag(group, "--std", dest="model.std", metavar="LIST", help="per-channel std, with --mean")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and training")
    _add_model_flags(group)
    _flag(group, "--epochs", dest="train.epochs", metavar="N", help="training epochs")
    _flag(group, "--batch-size", dest="train.batch_size", metavar="N", help="training batch size")
    _flag(group, "--optimizer", dest="train.optimizer", metavar="NAME")
    _flag(group, "--lr", dest="train.lr", metavar="LR", help="(peak) learning rate")
    _flag(group, "--momentum", dest="train.momentum", metavar="M", help="SGD momentum")
    _flag(group, "--nesterov", dest="train.nesterov", help="Nesterov momentum for SGD")
    _flag(group, "--weight-decay", dest="train.weight_decay", metavar="WD")
    _flag(group, "--schedule", dest="train.schedule", metavar="NAME", help="learning-rate schedule, per batch")
    _flag(group, "--milestones", dest="train.milestones", metavar="EPOCHS",
          help="with --schedule step: multiply the learning rate by --step-gamma at these epochs, e.g. 55,75,90")
    _flag(group, "--step-gamma", dest="train.step_gamma", metavar="FACTOR",
          help="with --schedule step: the factor at each step")
    _flag(group, "--cyclic-peak", dest="train.cyclic_peak", metavar="SHARE",
          help="with --schedule cyclic: the share of training steps after which the learning rate peaks")
    _flag(group, "--label-smoothing", dest="train.label_smoothing", metavar="S")
    _flag(group, "--ema", dest="train.ema", metavar="DECAY",
          help="validate and keep an exponential moving average of the weights, e.g. 0.999; 0 is off")
    _flag(group, "--mixup", dest="train.mixup", metavar="ALPHA", help="MixUp alpha; 0 is off")
    _flag(group, "--cutmix", dest="train.cutmix", metavar="ALPHA", help="CutMix alpha; 0 is off")
    _flag(group, "--grad-clip", dest="train.grad_clip", metavar="NORM", help="clip the global gradient norm; 0 is off")
    _flag(group, "--freeze-epochs", dest="train.freeze_epochs", metavar="K",
          help="fine-tuning: train only the classifier head for the first K epochs, then everything")
    _flag(group, "--backbone-lr-scale", dest="train.backbone_lr_scale", metavar="F",
          help="fine-tuning: the backbone's learning rate is F times the head's")
    _flag(group, "--freeze-bn", dest="train.freeze_bn",
          help="fine-tuning: while the backbone is frozen its BatchNorm layers keep their running statistics "
               "(eval mode); by default they keep updating them")
    _flag(group, "--early-stopping", dest="train.early_stopping", metavar="EPOCHS",
          help="stop after this many epochs without a better validation accuracy; 0 is off")
    _flag(group, "--amp", dest="train.amp", metavar="MODE", help="mixed precision: auto is bf16 on CUDA")
    _flag(group, "--compile", dest="train.compile", help="torch.compile the model")
    _flag(group, "--channels-last", dest="train.channels_last", help="channels-last memory format")
    _flag(group, "--tensorboard", dest="train.tensorboard",
          help="also log to RUN/tensorboard: scalars, figures, hyperparameters")
    _flag(group, "--tta", dest="eval.tta", help="test-time augmentation: average each test image's logits with "
                                                "its mirror's")
    _flag(group, "--calibration-bins", dest="eval.calibration_bins", metavar="B",
          help="confidence bins of the expected calibration error and the reliability diagrams (default 15)")
    group.add_argument("--recipe", dest="recipe", default=S, metavar="NAME",
                       help="a preset of settings under the config file and flags: "
                            + ", ".join(SETTING_PRESETS) + " (the documentation gives each one's values)")
    _flag(group, "--seed", dest="seed", metavar="N", help="seeds everything")


def _add_adversarial_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("adversarial training")
    _flag(group, "--adversarial", dest="adversarial.recipe", metavar="RECIPE",
          help="adversarial training recipe (`imgclf attacks` lists the attacks, the documentation the recipes)")
    _flag(group, "--adv-eps", dest="adversarial.eps", metavar="EPS",
          help="training radius in pixel units, e.g. 0.3 or 8/255 (default: the largest --eps)")
    _flag(group, "--adv-steps", dest="adversarial.steps", metavar="N",
          help="attack steps of pgd and trades (default: the recipe's, 10)")
    _flag(group, "--adv-step-size", dest="adversarial.alpha", metavar="STEP",
          help="step size in pixel units (default: fgsm-rs 1.25 * eps, n-fgsm and gradalign eps, else 2.5 * eps / "
               "steps)")
    _flag(group, "--nfgsm-noise", dest="adversarial.noise", metavar="K",
          help="n-fgsm: the uniform noise start's radius as a multiple of eps (de Jorge et al. 2022: 2)")
    _flag(group, "--grad-align", dest="adversarial.grad_align", metavar="LAMBDA",
          help="gradalign: the weight of 1 - cos(input gradients at x and at a random point of the eps ball) "
               "(Andriushchenko and Flammarion 2020: 0.2 at CIFAR-10's 8/255, larger for larger eps)")
    _flag(group, "--trades-beta", dest="adversarial.beta", metavar="BETA", help="TRADES weight of the KL term")
    _flag(group, "--eps-warmup", dest="adversarial.warmup_epochs", metavar="EPOCHS",
          help="eps rises linearly from 0 over these epochs (default: 20% of the epochs)")
    _flag(group, "--robust-val-examples", dest="adversarial.val_examples", metavar="N",
          help="validation images whose PGD accuracy picks the checkpoint")
    _flag(group, "--robust-val-steps", dest="adversarial.val_steps", metavar="N",
          help="PGD steps of that robust validation")
    _flag(group, "--on-overfit", dest="adversarial.on_overfit", metavar="ACTION",
          help="when the single-step recipes' guard sees catastrophic overfitting: stop and keep the best epoch, "
               "rollback to the last good epoch and train on with fresh random draws, or restart the epoch from "
               "there with half the attack's step size")
    _flag(group, "--overfit-retries", dest="adversarial.overfit_retries", metavar="N",
          help="rollbacks or restarts before training stops")
    _flag(group, "--overfit-probe-every", dest="adversarial.probe_every", metavar="STEPS",
          help="also run the robust validation every STEPS optimizer steps, so a collapse inside an epoch is "
               "caught where it happens (0: after every epoch alone)")
    _flag(group, "--overfit-drop", dest="adversarial.overfit_drop", metavar="FALL",
          help="the guard fires when PGD validation accuracy falls more than FALL below its best while FGSM's "
               "rises")
    _flag(group, "--overfit-gap", dest="adversarial.overfit_gap", metavar="GAP",
          help="the guard also fires when FGSM validation accuracy rises to more than GAP above PGD's, PGD's not "
               "rising, once the eps warm-up is over (1: off; 0.4 catches collapses the fall alone misses, with "
               "some false alarms)")


def _add_attack_flags(parser: argparse.ArgumentParser) -> None:
    from imgclf.attacks import ATTACK_PRESETS, ATTACKS, PLAN, targetable_attacks
    from imgclf.attacks.registry import attack_options

    group = parser.add_argument_group("attacks")
    presets = ", ".join(f"{name} = {','.join(members)}" for name, members in ATTACK_PRESETS.items())
    group.add_argument("--attack", dest="attack.attacks", default=S, metavar="NAMES",
                       help=f"comma-separated attacks or presets: {', '.join(ATTACKS)}, {PLAN} (the converging "
                            f"plan); presets: {presets} (default auto; full is the standard AutoAttack ensemble)")
    group.add_argument("--preset", dest="attack.attacks", type=_preset, default=S, metavar="NAME",
                       help=f"{' | '.join(ATTACK_PRESETS)}: auto (the default) is FGSM + PGD-20 beside the plan "
                            "that escalates until it has converged, quick FGSM + PGD-20 alone, full the standard "
                            "AutoAttack ensemble")
    _flag(group, "--plan-tolerance", dest="attack.plan_tolerance", metavar="FRACTION",
          help="the plan stops when its latest white-box and black-box escalations each fool at most this "
               "fraction of the examples still standing")
    _flag(group, "--minimal-norm", dest="attack.minimal_norm",
          help="run FMN once per example, first, unbounded: each example's smallest adversarial radius, the "
               "continuous robustness curve, and the radii the plan's restarts near the boundary need")
    _flag(group, "--norm", dest="attack.norm", metavar="NORM", help="the norm that bounds the perturbation")
    _flag(group, "--eps", dest="attack.eps", metavar="LIST",
          help="radii in pixel units, e.g. 0,1/255,2/255 or 0:8/255:2/255 (default under linf "
               "0,1/255,2/255,4/255,8/255 for colour, 0,0.05,0.1,0.2,0.3 for grey)")
    _flag(group, "--n-examples", "--attack-examples", dest="attack.examples", metavar="N|all", parse=_count_or_all,
          help="attack a seeded stratified subset of N test images")
    _flag(group, "--steps", "--pgd-steps", dest="attack.steps", metavar="N",
          help="iterations (default: each attack's, PGD 20, APGD and FAB 100)")
    _flag(group, "--step-size", "--pgd-alpha", dest="attack.alpha", metavar="STEP",
          help="PGD step size in pixel units (default 2.5 * eps / steps)")
    _flag(group, "--restarts", dest="attack.restarts", metavar="N", help="random restarts of PGD, APGD and FAB")
    _flag(group, "--random-start", dest="attack.random_start", help="PGD random start")
    _flag(group, "--target", dest="attack.target", metavar="MODE",
          help=f"targeted {'/'.join(targetable_attacks())}: random | least-likely | a class name or index")
    for option in attack_options().values():  # each attack's own options, from its registry row
        owners = ", ".join(name for name, info in ATTACKS.items() if option in info.options)
        group.add_argument(option.flag, dest=f"attack.{option.name}", default=S, metavar=option.metavar,
                           help=f"{owners}: {option.help} ({option.describe()})".replace("%", "%%"))
    _flag(group, "--attack-batch-size", dest="attack.batch_size", metavar="N")
    _flag(group, "--cascade", dest="attack.cascade",
          help="run each attack only on the examples every earlier attack at that eps failed on, as AutoAttack "
               "does: the same worst case for less work; each attack's row is then cumulative")
    _flag(group, "--surrogate", dest="attack.surrogate", metavar="RUN",
          help="a run folder whose model the transfer check makes adversarial examples on (default: the model "
               "with its non-differentiable or random parts replaced by the identity, where they can be found)")


def _add_corruption_flags(parser: argparse.ArgumentParser, *, stage: bool) -> None:
    from imgclf.corruptions.registry import CORRUPTIONS, GROUPS

    group = parser.add_argument_group("common corruptions")
    if stage:
        _flag(group, "--corruption-stage", dest="corruption.stage", metavar="WHEN",
              help="evaluate under the common corruptions after the attacks: auto runs the stage on images of at "
                   "least 16x16 and at most 100 million corrupted values, and says why where it does not")
    _flag(group, "--corruptions", dest="corruption.corruptions", metavar="NAMES",
          help=f"all, groups ({', '.join(GROUPS)}) or comma-separated names: {', '.join(CORRUPTIONS)}")
    _flag(group, "--severities", dest="corruption.severities", metavar="LIST",
          help="severities from 1 to 5, as 1:5, 3 or 1,3,5")
    _flag(group, "--corruption-examples", dest="corruption.examples", metavar="N|all", parse=_count_or_all,
          help="evaluate a seeded stratified subset of N test images")
    _flag(group, "--baseline", dest="corruption.baseline", metavar="RUN",
          help="a run folder evaluated under the same corruptions: adds the mCE and relative mCE against it")


def _add_certify_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("randomized smoothing")
    _flag(group, "--sigma", dest="certify.sigma", metavar="S",
          help="the Gaussian noise's standard deviation in pixel units: the one the model was trained with")
    _flag(group, "--radii", dest="certify.radii", metavar="LIST", help="L2 radii in pixel units, e.g. 0,0.25,0.5")
    _flag(group, "--n0", dest="certify.n0", metavar="N", help="noisy copies per image that select the top class")
    _flag(group, "--n", "--n-samples", dest="certify.n", metavar="N",
          help="noisy copies per image that bound the top class's probability (more: larger certifiable radii; "
               "under torchrun write --n-samples: torchrun reads --n as an abbreviation of its own options)")
    _flag(group, "--alpha", dest="certify.alpha", metavar="P", help="each certificate's failure probability")
    _flag(group, "--n-examples", "--certify-examples", dest="certify.examples", metavar="N|all", parse=_count_or_all,
          help="certify a seeded stratified subset of N test images")
    _flag(group, "--certify-batch-size", dest="certify.batch_size", metavar="N", help="noisy images per forward pass")
    _flag(group, "--certify-attack", dest="certify.attack",
          help="the empirical upper bounds: SmoothAdv on the smoothed classifier, APGD-CE (L2) on the model")
    _flag(group, "--smooth-adv-steps", dest="certify.attack_steps", metavar="N", help="SmoothAdv's PGD steps")
    _flag(group, "--smooth-adv-samples", dest="certify.attack_samples", metavar="N",
          help="noise draws SmoothAdv averages per step")
    _flag(group, "--smooth-adv-n", dest="certify.attack_n", metavar="N",
          help="noisy copies whose majority is the smoothed classifier's class at each attacked point")


class _Preset(str):
    """A ``--preset`` value: one of the presets, not any attack name (:func:`_overrides` checks it)."""


def _preset(text: str) -> list[str]:
    return [_Preset(text)]  # (an error here would print the usage block: checked with the other settings instead)


def _add_common(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--device", dest="device")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors and the run folder")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="imgclf",
        description="Train image classifiers, measure them honestly, and stress-test them with adversarial attacks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples("""
            imgclf run                                   # digits: train, evaluate, attack, report
            imgclf run --dataset mnist --model simple-cnn --epochs 1 --out runs/mnist
            imgclf attack runs/mnist --attack pgd --eps 0,0.1,0.2
            imgclf datasets
        """),
    )
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text, epilog=_examples(examples),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        if name in _OPENS_RUNS:
            parser.add_argument("--changed-data", action="store_true",
                                help="go on where the run's data set changed since it began (images added, removed "
                                     "or replaced); the report says what changed")
        if name in _READS_MODELS:
            parser.add_argument("--trust-code", action="store_true",
                                help="import the Python code (py:FILE:CLASS) that a run folder or config file "
                                     "names, and load .pt2 files that hold pickled objects: only for files from "
                                     "someone you trust (a model you name with --model needs no flag)")
        return parser

    for add_commands in (_pipeline_commands, _stage_commands, _model_file_commands, _foundation_commands,
                         _listing_commands):
        add_commands(command)
    return parser


#: The commands that read a model or a configuration from a file, and so take ``--trust-code``.
_READS_MODELS = frozenset({"run", "train", "lr-find", "evaluate", "attack", "corrupt", "certify", "explain", "predict",
                           "export", "features", "sweep"})

#: The commands that open a run folder with its data, and so take ``--changed-data``.
_OPENS_RUNS = frozenset({"evaluate", "attack", "corrupt", "certify", "explain", "export", "features"})

#: ``command(name, help, examples)`` adds a subcommand with its help and examples and returns its parser.
Command = Callable[[str, str, str], argparse.ArgumentParser]


def _pipeline_commands(command: Command) -> None:
    """run, train and lr-find."""
    run = command("run", "train, evaluate, attack and write the report, in one run folder", """
        imgclf run
        imgclf run --dataset mnist --model simple-cnn --epochs 1 --out runs/mnist
        imgclf run --dataset path/to/photos --image-size 32 --model cnn --augment flip-crop
        imgclf run --config runs/mnist/config.yaml --seed 1 --out runs/mnist-seed1
        imgclf run --dataset fashion-mnist --adversarial pgd --adv-eps 0.1 --eps 0:0.2:0.05
    """)
    train = command("train", "train a model and save it in a new run folder", """
        imgclf train --dataset fashion-mnist --model mlp --model-option hidden=256 --epochs 5 --out runs/fm
        imgclf train --resume runs/fm                 # after an interruption, even kill -9
        torchrun --nproc_per_node 2 -m imgclf train --dataset mnist --out runs/ddp
        imgclf train --recipe fast --dataset cifar10 --device cuda --out runs/fast
        imgclf train --dataset mnist --adversarial fgsm-rs --eps 0.3 --out runs/mnist-robust
    """)
    train.add_argument("--resume", metavar="RUN",
                       help="continue a stopped run from its last finished epoch (its own config.yaml applies); "
                            "with --epochs N, extend a finished run to N epochs")
    for p in (run, train):
        p.add_argument("--config", metavar="YAML", help="settings file; flags override it")
        p.add_argument("--out", metavar="DIR", help="new run folder (default runs/<dataset>-<model>-<time>)")
        _add_data_flags(p, full=True)
        _add_train_flags(p)
        _add_adversarial_flags(p)
        _add_common(p)
    _add_attack_flags(run)
    _add_attack_flags(train)  # recorded in config.yaml for later `imgclf attack`
    _add_corruption_flags(run, stage=True)
    _add_corruption_flags(train, stage=True)
    lr_find = command("lr-find", "the learning-rate range test: the training loss as the learning rate rises, "
                                 "a figure, and a suggested learning rate", """
        imgclf lr-find --dataset mnist --model simple-cnn
        imgclf lr-find --dataset cifar10 --model resnet18 --optimizer sgd --batch-size 128 --out lr.png
        imgclf run --dataset mnist --lr auto                 # the same test, its suggestion used and recorded
    """)
    lr_find.add_argument("--config", metavar="YAML", help="settings file; flags override it")
    lr_find.add_argument("--start-lr", type=_finite, default=1e-7, metavar="LR", help="first rate (default 1e-7)")
    lr_find.add_argument("--end-lr", type=_finite, default=10.0, metavar="LR", help="last rate (default 10)")
    lr_find.add_argument("--steps", type=_integer(10, None, "an integer >= 10"), default=100, metavar="N",
                         help="optimizer steps of the sweep (default 100)")
    lr_find.add_argument("--out", metavar="FILE.png",
                         help="the figure; its curve goes beside it as .csv (default runs/lr-find-<dataset>-<model>-"
                              "<time>.png); an existing file is not replaced")
    _add_data_flags(lr_find, full=True)
    _add_train_flags(lr_find)
    _add_common(lr_find)


def _stage_commands(command: Command) -> None:
    """evaluate, attack and corrupt (of a run or of any model), report and compare."""
    evaluate = command("evaluate", "clean test metrics of a trained run, or of any model on a data set", """
        imgclf evaluate runs/mnist
        imgclf evaluate --model py:my_models.py:Net --weights net.safetensors --dataset mnist --out runs/net
        imgclf evaluate --model torchvision:resnet18 --weights r18.pth --dataset cifar10 --image-size 32
    """)
    attack = command("attack", "robust accuracy of a trained run, or of any model, under FGSM, PGD, APGD, FAB-T, "
                               "Square, AutoAttack", """
        imgclf attack runs/mnist --attack pgd --eps 0,0.1,0.2,0.3 --steps 40 --restarts 2
        imgclf attack runs/mnist --preset full --eps 0.1 --n-examples 1000
        imgclf attack runs/mnist --attack pgd --target least-likely --eps 0.3
        imgclf attack runs/cifar --norm l2 --eps 0,0.25,0.5 --attack pgd,apgd-ce
        imgclf attack --model py:my_models.py:Net --weights net.safetensors --dataset mnist --preset full --eps 0.3
        imgclf attack --model exported/model.pt2 --dataset mnist --eps 0.1 --out runs/exported
        torchrun --nproc_per_node 2 -m imgclf attack runs/mnist --preset full --eps 0.3
    """)
    corrupt = command("corrupt", "accuracy and calibration under the 15 common corruptions (noise, blur, weather, "
                                 "digital) at severities 1 to 5, with the mean corruption error and mCE", """
        imgclf corrupt runs/cifar
        imgclf corrupt runs/cifar --corruptions noise,fog --severities 3:5 --corruption-examples all
        imgclf corrupt runs/cifar-flip-crop --baseline runs/cifar          # mCE and relative mCE against it
        imgclf corrupt --model torchvision:resnet18 --weights r18.pth --dataset cifar10 --image-size 32
    """)
    certify = command("certify", "certified L2 robustness by randomized smoothing, bracketed by the smoothed "
                                 "classifier under SmoothAdv: provable beside empirical", """
        imgclf train --dataset mnist --model simple-cnn --epochs 5 --augment gaussian-noise:sigma=0.25 --out runs/rs
        imgclf certify runs/rs --sigma 0.25 --radii 0,0.25,0.5,0.75 --n-examples 500
        imgclf certify runs/rs --n 100000 --alpha 0.001 --no-certify-attack
        imgclf certify --model py:my_models.py:Net --weights net.safetensors --dataset mnist --sigma 0.5
        torchrun --nproc_per_node 2 -m imgclf certify runs/rs --n-samples 100000
    """)
    for p in (evaluate, attack, corrupt, certify):
        p.add_argument("run_dir", metavar="RUN", nargs="?",
                       help="a run folder; or none, with --model and --dataset: a new evaluation-only run folder")
        p.add_argument("--out", metavar="DIR", help="with --model: the new run folder (default "
                                                    "runs/<dataset>-<model>-eval-<time>)")
        p.add_argument("--config", metavar="YAML", help="with --model: a settings file; flags override it")
        _add_data_flags(p, full=True)
        _add_model_flags(p.add_argument_group("model from anywhere (without RUN)"))
        _flag(p, "--seed", dest="seed", metavar="N", help="seeds everything")
        _add_common(p)
    _add_attack_flags(attack)
    _add_corruption_flags(corrupt, stage=False)
    _add_certify_flags(certify)
    report = command("report", "write figures and report.html from a run folder", "imgclf report runs/mnist")
    report.add_argument("run_dir", metavar="RUN", help="a run folder")
    compare = command("compare", "several runs in one report: metrics, robustness against eps, training curves", """
        imgclf compare runs/fm-standard runs/fm-robust --out runs/fm-compare
    """)
    compare.add_argument("run_dirs", metavar="RUN", nargs="+", help="two or more run folders")
    compare.add_argument("--out", metavar="DIR", help="new folder for compare.html (default runs/compare-<time>)")
    compare.add_argument("--allow-different-data", action="store_true",
                         help="compare runs of different data sets (refused otherwise: their numbers are not "
                              "comparable)")


def _model_file_commands(command: Command) -> None:
    """predict and export: using a trained model outside its run folder."""
    predict = command("predict", "top-k classes of image files with a trained model", """
        imgclf predict runs/linnaeus photos/ --top-k 3
        imgclf predict runs/mnist/model.onnx digit.png --format json
    """)
    predict.add_argument("model_path", metavar="RUN",
                         help="a run folder, model.safetensors, or an exported .onnx, TorchScript or .pt2 file")
    predict.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files and folders")
    predict.add_argument("--top-k", type=_positive, default=1, metavar="K", help="classes per image (default 1)")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    predict.add_argument("--batch-size", type=_positive, default=256, help=argparse.SUPPRESS)

    explain = command("explain", "where the model looks: Grad-CAM heat maps (saliency for models without a suitable "
                                 "convolution), on fixed test images for the report, or on image files", """
        imgclf explain runs/cifar                          # clean and adversarial test images, into the report
        imgclf explain runs/cifar --eps 8/255 --layer body.layer3.1.conv2
        imgclf explain runs/linnaeus photos/ --out photos-gradcam.png
    """)
    explain.add_argument("run_dir", metavar="RUN", help="a run folder")
    explain.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="*",
                         help="image files and folders of your own (default: the run's fixed test images)")
    explain.add_argument("--eps", metavar="EPS", help="the adversarial examples' eps, one the newest evaluation "
                                                      "attacked at (default: the report's headline eps)")
    explain.add_argument("--method", choices=("auto", "grad-cam", "saliency"), default="auto",
                         help="auto: Grad-CAM where the model has a convolutional feature map of at least 4x4, "
                              "saliency otherwise (MLPs, transformers)")
    explain.add_argument("--layer", metavar="NAME", help="Grad-CAM's layer, a module name of the model with a 4-D "
                                                         "output (default: the last convolutional block's output "
                                                         "of at least 4x4)")
    explain.add_argument("--out", metavar="FILE.png", help="with IMAGES: the figure (default "
                                                           "explain-<time>.png in the current folder)")
    _add_common(explain)

    export = command("export", "export a trained model to ONNX, TorchScript or torch.export (.pt2), checked on "
                               "real test images", """
        imgclf export runs/cifar --format onnx
        imgclf export runs/cifar --format torchscript --out deploy/cifar.pt
        imgclf export runs/mnist --format pt2          # torch.export: attackable with gradients
    """)
    export.add_argument("run_dir", metavar="RUN", help="a run folder")
    export.add_argument("--format", dest="export_format", choices=("onnx", "torchscript", "pt2"),
                        default="onnx")
    export.add_argument("--out", metavar="FILE",
                        help="default RUN/model.onnx, RUN/model.torchscript.pt or RUN/model.pt2")
    export.add_argument("--examples", type=_positive, default=256, metavar="N",
                        help="test images for the parity check (default 256)")
    _add_data_flags(export, full=False)


def _foundation_commands(command: Command) -> None:
    """activations, mlp-numpy, features, fit-features and sweep."""
    _activations_command(command)
    mlp = _mlp_numpy_command(command)
    fit_features = _feature_commands(command)
    for p in (mlp, fit_features):
        p.add_argument("--seed", type=_seed, default=0, help="seeds everything (default 0)")
        p.add_argument("--out", metavar="DIR", help="new run folder")
        p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors and the run folder")
    _sweep_command(command)


def _activations_command(command: Command) -> None:
    activations = command("activations", "plot activation functions and their derivatives; print their properties", """
        imgclf activations
        imgclf activations elu selu gelu --alpha 0.5 --range -4 4 --out runs/act
    """)
    activations.add_argument("names", metavar="NAME", nargs="*",
                             help="activations (default all): relu, leaky-relu, elu, selu, gelu, silu (swish), mish, "
                                  "softplus, sigmoid, tanh")
    activations.add_argument("--alpha", type=_finite, default=1.0, help="ELU's alpha (default 1)")
    activations.add_argument("--negative-slope", type=_finite, default=0.01, help="leaky ReLU's slope (default 0.01)")
    activations.add_argument("--range", dest="x_range", type=_finite, nargs=2, default=(-5.0, 5.0),
                             metavar=("LOW", "HIGH"), help="x range of the figure (default -5 5)")
    activations.add_argument("--out", metavar="DIR", help="new folder for the figure and table "
                                                          "(default runs/activations-<time>)")


def _mlp_numpy_command(command: Command) -> argparse.ArgumentParser:
    mlp = command("mlp-numpy", "train the from-scratch NumPy MLP on pixels or features, with the run report", """
        imgclf mlp-numpy --dataset fashion-mnist --out runs/fm-numpy
        imgclf mlp-numpy --features runs/fm-cnn/features.npz --epochs 20 --out runs/fm-numpy-features
        imgclf mlp-numpy --dataset mnist --hidden 256 128 --activation elu --dropout 0.2
    """)
    inputs = mlp.add_mutually_exclusive_group()
    inputs.add_argument("--dataset", default="digits", metavar="NAME|PATH",
                        help="train on this data set's flattened pixels (default digits)")
    inputs.add_argument("--features", metavar="FILE", help="train on a feature file from `imgclf features`")
    mlp.add_argument("--data-dir", metavar="DIR", help="folder holding the data sets (default $IMGCLF_DATA_DIR)")
    mlp.add_argument("--image-size", type=_positive, metavar="N", help="resize images to N x N")
    mlp.add_argument("--train-examples", type=_positive, metavar="N", help="train on a seeded stratified subset")
    mlp.add_argument("--hidden", type=_positive, nargs="*", metavar="UNITS", help="hidden layer sizes (default 128)")
    mlp.add_argument("--activation", help="relu (default), leaky-relu, elu, selu, gelu, silu, mish, softplus, "
                                          "sigmoid, tanh")
    mlp.add_argument("--init", help="he (default) | xavier")
    mlp.add_argument("--dropout", type=_finite, help="after each hidden layer (default 0)")
    mlp.add_argument("--epochs", type=_positive, help="default 30")
    mlp.add_argument("--batch-size", type=_positive, help="default 128")
    mlp.add_argument("--lr", type=_finite, help="SGD learning rate (peak; default 0.05)")
    mlp.add_argument("--schedule", help="cosine (default) | constant")
    mlp.add_argument("--momentum", type=_finite, help="default 0.9")
    mlp.add_argument("--weight-decay", type=_finite, help="L2 coefficient on the weights (default 1e-4)")
    mlp.add_argument("--early-stopping", type=_positive, metavar="EPOCHS", help="stop after this many epochs without a "
                                                                         "better validation accuracy")
    mlp.add_argument("--dtype", help="float32 (default) | float64")
    return mlp


def _feature_commands(command: Command) -> argparse.ArgumentParser:
    """features, and fit-features (returned: it shares flags with mlp-numpy)."""
    features = command("features", "save a layer's activations of a trained run for every split (.npz)", """
        imgclf features runs/fm-cnn --out runs/fm-cnn/features.npz
        imgclf features runs/fm-cnn --layer body.12 --out body12.npz
        imgclf features runs/fm-cnn --list-layers
    """)
    features.add_argument("run_dir", metavar="RUN", help="a run folder")
    features.add_argument("--layer", default="penultimate",
                          help="module name, or penultimate (default: the input of the last linear layer)")
    features.add_argument("--list-layers", action="store_true", help="print the layer names and stop")
    features.add_argument("--out", metavar="FILE", help="the .npz to write (required unless --list-layers)")
    features.add_argument("--batch-size", type=_positive, default=512, help=argparse.SUPPRESS)
    _add_data_flags(features, full=False)
    _add_common(features)

    fit_features = command("fit-features", "train a classifier on a feature file, with the run report", """
        imgclf fit-features runs/fm-cnn/features.npz --classifier numpy-mlp --out runs/fm-numpy
        imgclf fit-features runs/fm-cnn/features.npz --classifier logistic --option C=0.5
        imgclf fit-features runs/fm-cnn/features.npz --classifier knn --option n_neighbors=10
    """)
    fit_features.add_argument("features_file", metavar="FILE", help="a feature file from `imgclf features`")
    fit_features.add_argument("--classifier", default="numpy-mlp",
                              help="numpy-mlp (default) | torch-mlp | logistic | svm | knn")
    fit_features.add_argument("--option", dest="options", type=_key_value, action="append", default=[],
                              metavar="KEY=VALUE", help="classifier hyperparameter (repeatable)")
    return fit_features


def _sweep_command(command: Command) -> None:
    sweep = command("sweep", "hyperparameter search with Optuna; every trial is a run folder", """
        imgclf sweep --config sweep.yaml
        imgclf sweep --config sweep.yaml --storage sqlite:///runs/sweep.db   # run it on several machines
    """)
    sweep.add_argument("--config", required=True, metavar="YAML", help="the sweep: base settings and search space")
    sweep.add_argument("--trials", type=_positive, metavar="N", help="override the file's trials")
    sweep.add_argument("--storage", metavar="URL", help="Optuna storage shared by several sweep processes "
                                                        "(sqlite:///FILE, postgresql://..., mysql://...)")
    sweep.add_argument("--out", metavar="DIR", help="override the file's out folder")
    sweep.add_argument("--seed", type=_seed, metavar="N", help="override the file's sampler seed (give each parallel "
                                                             "process its own)")
    sweep.add_argument("--quiet", "-q", action="store_true", help="print only failed trials and the report")


def _listing_commands(command: Command) -> None:
    """data check, datasets, models and attacks."""
    data = command("data", "inspect data", "imgclf data check path/to/photos")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    check = data_sub.add_parser(
        "check", help="scan an image folder, a labels file or a Hugging Face data set for bad files, duplicates "
                      "and imbalance",
        description="Scan an image folder, the files a labels file lists, or the images of a Hugging Face data "
                    "set on disk: classes with counts per split, image sizes and modes, files that are missing or "
                    "fail to decode (with reasons), exact duplicates within and across splits, and class "
                    "imbalance. Exit status 0 when clean, 1 when problems were found.",
        epilog=_examples("imgclf data check ../shared/data/linnaeus5-4class-96\n"
                         "imgclf data check labels.csv --image-root images\n"
                         "imgclf data check saved_dataset/ --label-column fine_label"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("path", metavar="PATH", help="an image folder, a labels .csv/.tsv file, or a Hugging Face "
                                                    "data set (save_to_disk folder, .parquet file or folder)")
    check.add_argument("--image-root", metavar="DIR", help="labels file: the folder its paths start from")
    check.add_argument("--path-column", metavar="NAME", help="labels file: the column of paths")
    check.add_argument("--label-column", metavar="NAME",
                       help="labels file or Hugging Face data set: the column of labels")
    check.add_argument("--image-column", metavar="NAME", help="Hugging Face data set: the column of images")
    command("datasets", "list the built-in data sets and whether their files are present", "imgclf datasets")
    command("models", "list the architectures and their options", "imgclf models")
    command("attacks", "list the attacks, their norms and what they need", "imgclf attacks")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {key: value for key, value in vars(args).items()
                 if "." in key or key in ("seed", "device", "recipe")}
    for key, value in getattr(args, "model_options", []):
        overrides[f"model.options.{key}"] = value
    chosen = overrides.get("attack.attacks")
    if isinstance(chosen, list) and chosen and isinstance(chosen[0], _Preset):  # (--preset gives a list of one)
        from imgclf.attacks import ATTACK_PRESETS

        preset = str(chosen[0])
        if preset not in ATTACK_PRESETS:
            raise UsageError(f"unknown preset (--preset) {preset!r}; valid choices: {', '.join(ATTACK_PRESETS)} "
                             "(single attacks go to --attack)")
        overrides["attack.attacks"] = [preset]
    return overrides


def _list_datasets() -> None:
    from imgclf.data import DATASETS, missing_files, resolve_data_dir

    root = resolve_data_dir(None)
    print(f"data folder: {root}")
    for entry in DATASETS.values():
        present = "present" if not missing_files(entry, root) else "not downloaded"
        shape = f"{entry.channels}x{entry.image_size}x{entry.image_size}"
        print(f"  {entry.name:<14} {entry.num_classes:>3} classes  {shape:<8}  {entry.splits:<28} "
              f"{present:<15} {entry.summary}")
    print("  PATH           an image folder: PATH/train/<class>/*, PATH/test/<class>/* or PATH/<class>/*")
    builtin_folders = {path.relative_to(root).parts[0] for entry in DATASETS.values() for path in entry.files(root)
                       if path.is_relative_to(root) and len(path.relative_to(root).parts) > 1}
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and p.name not in builtin_folders) if root.is_dir() else []
    for name in folders:  # `--dataset NAME` finds these in the data folder
        print(f"  {name:<14} an image folder in the data folder (--dataset {name})")


def _list_models() -> None:
    from imgclf.models import MODELS

    for entry in MODELS.values():
        options = ", ".join(f"{k}={v!r}" for k, v in entry.defaults().items()) or "no options"
        print(f"  {entry.name:<16} {entry.summary}\n  {'':<16} options: {options}")
    print(f"  {'timm:<name>':<16} any timm model, e.g. timm:resnet50 (pip install \"imgclf[timm]\")\n"
          f"  {'':<16} options: pretrained=False (True fetches the published weights)\n"
          f"  {'torchvision:<name>':<16} any torchvision classification model, e.g. torchvision:resnet18\n"
          f"  {'':<16} options: pretrained=False (True fetches the DEFAULT weights)\n"
          f"  {'py:<module>:<factory>':<16} a class or function of your own code (or py:path/file.py:factory)\n"
          f"  {'':<16} options: its keyword arguments with defaults; weights: --weights FILE\n"
          f"  {'FILE.pt2|.pt|.onnx':<16} an exported model, to evaluate, attack and predict with")


def _list_attacks() -> None:
    from imgclf.attacks import ATTACK_PRESETS, ATTACKS, AUTO_PLAN, PLAN
    from imgclf.attacks.registry import AUTOATTACK_PASSES, PLAN_TOLERANCE

    for info in ATTACKS.values():
        kind = "white box" if info.white_box else "black box"
        target = ", --target" if info.targetable else ""
        print(f"  {info.name:<10} {info.summary}\n  {'':<10} norms {', '.join(info.norms)}; {kind}{target}; "
              f"at least {info.min_classes(False)} classes")
        for option in info.options:
            print(f"  {'':<10} {option.flag} {option.metavar}: {option.help} ({option.describe()})")
    for name, members in ATTACK_PRESETS.items():
        print(f"  preset {name}: {', '.join(members)}")
    steps = ", ".join(step.label for step in AUTO_PLAN)
    print(f"  {PLAN}: the converging plan: {steps}, each on the examples still standing, until the latest white-box "
          f"and black-box escalations each fool at most --plan-tolerance of them (default {PLAN_TOLERANCE}) or "
          f"AutoAttack's budget ({AUTOATTACK_PASSES:,} passes per example) is spent")


def _predict(args: argparse.Namespace) -> int:
    import csv
    import json

    from imgclf.prediction import Classifier, predict

    classifier = Classifier.load(args.model_path)
    results = predict(classifier, args.images, top_k=args.top_k, batch_size=args.batch_size)
    if not results:
        raise UsageError("no image files found in " + ", ".join(args.images))
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in results], indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["file", "rank", "class", "probability", "error"])
        for r in results:
            rows = [(k + 1, c, f"{p:.6f}", "") for k, (c, p) in enumerate(zip(r.classes, r.probabilities, strict=True))]
            writer.writerows([(r.file, *row) for row in rows] or [(r.file, "", "", "", r.error)])
    else:
        width = max(len(str(r.file)) for r in results)
        for r in results:
            shown = "  ".join(f"{c} ({p:.3f})" for c, p in zip(r.classes, r.probabilities, strict=True))
            print(f"{r.file:<{width}}  {shown or 'error: ' + str(r.error)}")
    failed = [r for r in results if r.error]
    if failed:
        print(f"imgclf: {len(failed)} of {len(results)} file(s) could not be predicted", file=sys.stderr)
        return 1
    return 0


def _explain(args: argparse.Namespace) -> int:
    if args.images:
        import time

        from imgclf.explanations import explain_files

        if args.eps is not None:
            raise UsageError("--eps applies to the run's test images; drop it with IMAGES (your files are "
                             "explained as they are)")
        out = args.out or f"explain-{time.strftime('%Y%m%d-%H%M%S')}.png"
        path, failed = explain_files(args.run_dir, args.images, out=out, method=args.method, layer=args.layer)
        for file, problem in failed:
            print(f"imgclf: {file}: {problem} (left out)", file=sys.stderr)
        print(f"figure: {path}")
        return 1 if failed else 0
    if args.out:
        raise UsageError("--out applies with IMAGES; the run's explanations go into its report")
    eps = None
    if args.eps is not None:
        from imgclf.settings import parse_eps

        try:
            (eps,) = [value.value for value in parse_eps(args.eps)]
        except (UsageError, ValueError):
            raise UsageError(f"--eps must be one radius in pixel units such as 8/255 or 0.1, got {args.eps!r}"
                             ) from None
    from imgclf.pipeline import Run

    run = Run.open(args.run_dir, overrides=_overrides(args), quiet=args.quiet, changed_data=args.changed_data)
    run.explain(eps=eps, method=args.method, layer=args.layer)
    run.report()
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from imgclf.checkpoint import read_model_info
    from imgclf.data import stratified_subset
    from imgclf.export import FORMATS, export_model
    from imgclf.pipeline import Run

    loaded = Run.open(args.run_dir, overrides=_overrides(args), changed_data=args.changed_data)
    out = Path(args.out) if args.out else loaded.path / f"model{FORMATS[args.export_format]}"
    test = loaded.data.test
    rows = stratified_subset(test.labels.numpy(), max(2, args.examples), loaded.config.seed)
    result = export_model(loaded.model, read_model_info(loaded.path), test.float_images(rows), out,
                          format=args.export_format)
    print(f"wrote {result.path} ({result.format}) and {result.path.name}.json; on {result.n_images} test images "
          f"the largest logit difference from PyTorch is {result.max_abs_diff:.2e} "
          f"(tolerance {result.tolerance:.0e}) and "
          f"{result.same_top1:.1%} have the same top-1 class")
    return 0


def _activations(args: argparse.Namespace) -> int:
    from imgclf.numpy_nn.activations import (
        ACTIVATIONS,
        activation_figure,
        get_activation,
        properties,
        properties_table,
    )
    from imgclf.report.plots import save_figure
    from imgclf.run_folder import RunFolder, atomic_write_text

    low, high = args.x_range
    if not low < high:
        raise UsageError(f"--range needs LOW < HIGH, got {low} {high}")
    functions = [get_activation(name, alpha=args.alpha, negative_slope=args.negative_slope)
                 for name in (args.names or ACTIVATIONS)]
    folder = RunFolder.create(args.out, default_name="activations")
    rows = [properties(f) for f in functions]
    table = properties_table(rows)
    save_figure(activation_figure(functions, low=low, high=high), folder.file("activations.png"))
    atomic_write_text(folder.file("activations.md"), table + "\n")
    folder.write_json("activations.json",
                      [{**row.row(), "source": f.source} for row, f in zip(rows, functions, strict=True)])
    print(table)
    print(f"\nwrote {folder.file('activations.png')}, activations.md and activations.json")
    return 0


def _mlp_numpy(args: argparse.Namespace) -> int:
    from imgclf.features.classifiers import resolve_options
    from imgclf.features.extract import features_from_pixels, load_features
    from imgclf.features.runs import fit_classifier_run

    settings = {"hidden": args.hidden, "activation": args.activation, "init": args.init, "dropout": args.dropout,
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "schedule": args.schedule,
                "momentum": args.momentum, "weight_decay": args.weight_decay, "early_stopping": args.early_stopping,
                "dtype": args.dtype}
    options = resolve_options("numpy-mlp", {key: value for key, value in settings.items() if value is not None})
    if args.out is not None:
        from imgclf.run_folder import RunFolder

        RunFolder.check_available(args.out)  # before loading anything
    if args.features:
        data = load_features(args.features)
    else:
        from imgclf.config import load_config
        from imgclf.data import load_data

        overrides = {"data.dataset": args.dataset, "data.data_dir": args.data_dir,
                     "data.image_size": args.image_size, "data.train_examples": args.train_examples}
        config = load_config(None, {k: v for k, v in overrides.items() if v is not None})
        data = features_from_pixels(load_data(config.data, seed=args.seed))
    folder = fit_classifier_run(data, "numpy-mlp", options=options, seed=args.seed, out=args.out, quiet=args.quiet)
    if args.quiet:
        print(folder.path)
    return 0


def _features(args: argparse.Namespace) -> int:
    from imgclf.features.extract import feature_path, features_from_run, layer_names, save_features
    from imgclf.pipeline import Run

    if args.list_layers:
        opened = Run.open(args.run_dir, overrides=_overrides(args), changed_data=args.changed_data)
        for name in layer_names(opened.model):
            print(name)
        return 0
    if not args.out:
        raise UsageError("give --out FILE for the features (or --list-layers to see the layers)")
    out = feature_path(args.out)  # refuses an existing file before any work
    data = features_from_run(args.run_dir, layer=args.layer, batch_size=args.batch_size, overrides=_overrides(args),
                             changed_data=args.changed_data)
    path = save_features(data, out)
    print(f"wrote {path}: {data.width} features per image from layer {args.layer} "
          f"({len(data.train_y)} train, {len(data.val_y)} val, {len(data.test_y)} test)")
    return 0


def _fit_features(args: argparse.Namespace) -> int:
    from imgclf.features.classifiers import resolve_options
    from imgclf.features.extract import load_features
    from imgclf.features.runs import fit_classifier_run

    resolve_options(args.classifier, dict(args.options))  # before reading anything
    if args.out is not None:
        from imgclf.run_folder import RunFolder

        RunFolder.check_available(args.out)
    folder = fit_classifier_run(load_features(args.features_file), args.classifier, options=dict(args.options),
                                seed=args.seed, out=args.out, quiet=args.quiet)
    if args.quiet:
        print(folder.path)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from imgclf.sweep import run_sweep

    path = run_sweep(args.config, trials=args.trials, storage=args.storage, out=args.out, seed=args.seed,
                     quiet=args.quiet)
    print(f"report: {path}")
    return 0


def _listing(show: Callable[[], None]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        show()
        return 0
    return handler


def _data_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from imgclf.data.check import check_images
    from imgclf.data.loading import scan_images

    report = check_images(scan_images(Path(args.path).expanduser(),
                                      image_root=Path(args.image_root) if args.image_root else None,
                                      path_column=args.path_column, label_column=args.label_column,
                                      image_column=args.image_column))
    print(report.render())
    return 1 if report.problems() else 0


def _run_or_train(args: argparse.Namespace) -> int:
    from imgclf.config import load_config

    if args.command == "train" and args.resume:
        # (main names each setting by the flag that set it: train.epochs -> --epochs)
        overrides = _overrides(args)
        extra = sorted(set(overrides) - {"device", "train.epochs"}) + (["--config"] if args.config else []) + \
            (["--out"] if args.out else [])
        if extra:
            raise UsageError(f"--resume continues a run with its own config.yaml; drop {', '.join(extra)} "
                             "(only --epochs, to extend a finished run, --device and --quiet apply)")
        device = {"device": overrides["device"]} if "device" in overrides else {}
        from imgclf import pipeline

        resumed = pipeline.Run.resume(args.resume, epochs=overrides.get("train.epochs"), quiet=args.quiet,
                                      overrides=device)
        if args.quiet:
            print(resumed.path)
        return 0
    _check_hub_first(_overrides(args))
    config = load_config(args.config, _overrides(args))  # every setting checked before torch is imported
    from imgclf import pipeline

    if args.command == "run":
        folder = pipeline.run(config, out=args.out, quiet=args.quiet)
    else:
        folder = pipeline.Run.train(config, out=args.out, quiet=args.quiet).folder
    if args.quiet and folder is not None:
        print(folder.path)
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    """``imgclf lr-find``: the range test, its figure and curve, and the suggestion printed."""
    from datetime import datetime
    from pathlib import Path

    from imgclf.config import load_config

    overrides = _overrides(args)
    _check_hub_first(overrides)
    config = load_config(args.config, overrides)
    if args.out is not None:
        figure_path = Path(args.out)
        if figure_path.suffix.lower() != ".png":
            raise UsageError(f"--out names the figure, a .png file; got {args.out!r}")
    else:
        from imgclf.data.loading import dataset_stem

        stem = dataset_stem(config.data.dataset)
        model = config.model.name.replace(":", "-").replace("/", "-")
        figure_path = Path("runs") / f"lr-find-{stem}-{model}-{datetime.now():%Y%m%d-%H%M%S}.png"
    curve_path = figure_path.with_suffix(".csv")
    taken = [str(path) for path in (figure_path, curve_path) if path.exists()]
    if taken:
        raise UsageError(f"{' and '.join(taken)} exist{'s' if len(taken) == 1 else ''}; choose another --out")
    from imgclf.report.plots import lr_finder_figure, save_figure
    from imgclf.run_folder import RunFolder
    from imgclf.stages.train import find_lr

    found = find_lr(config, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, quiet=args.quiet)
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(lr_finder_figure(found.lrs, found.losses, found.smoothed, suggestion=found.suggestion,
                                 minimum_lr=found.minimum_lr), figure_path)
    RunFolder(curve_path.parent).write_csv(curve_path.name, found.rows())
    print(f"suggested {found.describe()}")
    print(f"figure: {figure_path}\ncurve: {curve_path}")
    return 0


def _check_hub_first(overrides: dict[str, Any]) -> None:
    """``--model timm:NAME|torchvision:NAME --model-option pretrained=true`` without a network and without the
    weights in the cache: one line before anything is imported (the library itself imports torch)."""
    from imgclf.config import ModelConfig
    from imgclf.models.hub import check_pretrained

    name = overrides.get("model.name")
    if isinstance(name, str) and overrides.get("model.options.pretrained") is True:
        check_pretrained(ModelConfig(name=name).source)


def _flag_names(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """``{"train.epochs": "--epochs", ...}``: the flag that sets each setting of ``command``."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names: dict[str, str] = {}
    for action in subparsers.choices[command]._actions:
        if action.option_strings:
            names.setdefault(action.dest, action.option_strings[0])
    return names


#: Settings that only a new evaluation-only run takes: a run folder has its own data and model.
_SOURCE_ONLY = ("model.", "data.", "seed")


def _stage(args: argparse.Namespace) -> int:
    """``evaluate``, ``attack``, ``corrupt`` and ``certify`` on a finished run, or on any model (``--model``) in a
    new evaluation-only run folder."""
    from pathlib import Path

    from imgclf.config import load_config

    overrides = _overrides(args)
    if args.run_dir is None:
        return _evaluate_model(args, overrides)
    fixed = sorted(key for key in overrides if key.startswith(_SOURCE_ONLY) and key != "data.data_dir")
    extra = fixed + [flag for flag, given in (("--out", args.out), ("--config", args.config)) if given]
    if extra:
        raise UsageError(f"{args.run_dir!r} is a run folder with its own model, data and seed; drop "
                         f"{', '.join(extra)} (or drop RUN and give --model and --dataset for a new one)")
    config_file = Path(args.run_dir) / "config.yaml"  # record.CONFIG (imgclf.record imports torch)
    if config_file.is_file():  # the flags checked against the run's settings before torch is imported
        load_config(config_file, _overrides(args))
    from imgclf.pipeline import Run

    opened = Run.open(args.run_dir, overrides=_overrides(args), quiet=args.quiet, changed_data=args.changed_data)
    _evaluate_and_report(opened, args.command)
    return 0


def _evaluate_and_report(run: Any, command: str, *, clean: bool = False) -> None:
    """The clean evaluation (``evaluate``, or ``clean``), the robustness evaluation (``attack``), then the report,
    which shows every evaluation the folder holds. Under ``torchrun`` the processes share the attack and rank 0
    does the rest."""
    main_process = run.dist.is_main
    if main_process and (command == "evaluate" or clean):
        run.evaluate()
    if command == "attack":
        run.attack()  # added to the run's evaluations; the earlier ones stay
    if command == "corrupt" and main_process:
        run.corrupt()
    if command == "certify":
        run.certify()  # added to the run's certifications; the earlier ones stay
    if main_process:
        run.report()


def _evaluate_model(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """``imgclf evaluate|attack|corrupt|certify --model M --dataset D``: a new evaluation-only run folder with the
    clean metrics (and the stage's own evaluation) and the report."""
    from imgclf.config import load_config

    if "model.name" not in overrides and args.config is None:
        raise UsageError(f"give a run folder (imgclf {args.command} RUN) or a model and a data set "
                         f"(imgclf {args.command} --model M --weights FILE --dataset D)")
    _check_hub_first(overrides)
    config = load_config(args.config, overrides)
    from imgclf.pipeline import Run

    run = Run.from_model(config, out=args.out, quiet=args.quiet)
    _evaluate_and_report(run, args.command, clean=True)
    if args.quiet and run.dist.is_main:
        print(run.path)
    return 0


def _report(args: argparse.Namespace) -> int:
    from imgclf.stages.report import report_folder

    report_folder(args.run_dir)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from imgclf.report import compare_runs

    print(f"report: {compare_runs(args.run_dirs, args.out, allow_different_data=args.allow_different_data)}")
    return 0


#: The handler of every subcommand.
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run_or_train, "train": _run_or_train, "lr-find": _lr_find, "evaluate": _stage, "attack": _stage,
    "corrupt": _stage, "certify": _stage, "report": _report, "compare": _compare, "predict": _predict,
    "explain": _explain, "export": _export, "activations": _activations,
    "mlp-numpy": _mlp_numpy, "features": _features, "fit-features": _fit_features, "sweep": _sweep,
    "data": _data_check, "datasets": _listing(_list_datasets), "models": _listing(_list_models),
    "attacks": _listing(_list_attacks),
}


def _in_flag_terms(message: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """``message`` with each setting the user gave by a flag named by that flag (``train.epochs`` ->
    ``--epochs``); settings from a YAML file keep their key, which is what the file holds."""
    if args.command not in ("run", "train", "lr-find", "evaluate", "attack", "corrupt", "certify", "export",
                            "features"):
        return message
    flags = _flag_names(parser, args.command)
    for key in sorted((k for k in vars(args) if "." in k or k in ("seed", "device")), key=len, reverse=True):
        if key in flags:
            message = re.sub(rf"(?<![\w.-]){re.escape(key)}(?![\w])", flags[key], message)
    return message


def _grant_trust(args: argparse.Namespace) -> None:
    """What this call trusts (:mod:`imgclf.trust`): the ``py:`` model given with ``--model``, and with
    ``--trust-code`` whatever the files it reads name."""
    from imgclf.trust import forget_trust, is_user_code, trust_code

    forget_trust()  # one call, one grant (main may run several commands in one process)
    if getattr(args, "trust_code", False):
        trust_code()
    named = getattr(args, "model.name", None)
    if is_user_code(named):
        trust_code(named)


def dispatch(args: argparse.Namespace) -> int:
    """Run the chosen subcommand; returns the exit status."""
    return HANDLERS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imgclf`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _grant_trust(args)
        return dispatch(args)
    except UsageError as error:
        print(f"imgclf: error: {_in_flag_terms(str(error), args, parser)}", file=sys.stderr)
        return 2
    except ExportMismatchError as error:
        print(f"imgclf: export check failed: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the machine's refusal: a full disk, a read-only folder, a path through a file
        where = f" ({error.filename})" if error.filename else ""
        print(f"imgclf: error: {error.strerror or error}{where}; each file is written whole or not at all, so the "
              "run folder keeps its last complete state: make room and run the command again (a training run "
              "goes on with imgclf train --resume RUN)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imgclf: interrupted", file=sys.stderr)
        return 130
    except SystemExit as error:  # imgclf never exits from inside a command: the user's model code did
        print(f"imgclf: error: the model's code called sys.exit({error.code!r}) during `imgclf {args.command}`; "
              "the command stopped there (what was saved before is kept)", file=sys.stderr)
        return 1
    except Exception as error:
        from imgclf.models.user_code import user_code_frame

        frame = user_code_frame(error)
        if frame is None:  # imgclf's own failure: its traceback is what a bug report needs
            raise
        print(f"imgclf: error: the model's code raised {type(error).__name__} ({frame}): "
              f"{first_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
