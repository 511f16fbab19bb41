"""The registry of adversarial training recipes, and what each recipe owns.

A recipe is a :class:`TrainingRecipe` subclass registered with
:func:`register_recipe` in its own module. It owns how a training batch's
adversarial examples are made (:meth:`~TrainingRecipe.perturb`), the loss
trained on (:meth:`~TrainingRecipe.loss`, with :meth:`~TrainingRecipe.regularizer` added),
the extra attacks of its robust validation (:attr:`~TrainingRecipe.validation_attacks`) and the guard that
may stop training (:meth:`~TrainingRecipe.guard`). Its own hyperparameters
are dataclass fields, filled from the ``adversarial`` settings of the same
name. The configuration's choices read :func:`recipe_choices` and
:class:`~imgclf.defenses.adversary.Adversary` :func:`make_recipe`; :func:`imgclf.training.fit`
knows no recipe by name.

The built-in recipes are declared in :data:`BUILTIN_RECIPES` and imported on first use, so
that the configuration checks a recipe's name without importing torch (this module
imports none; a test checks).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from imgclf.attacks.registry import default_alpha

if TYPE_CHECKING:
    import torch

#: ``loss_fn(logits (B, K) float32, targets (B,) int64) -> scalar loss``.
LossFunction = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]

#: The built-in recipes, in the order of tables and help: name -> ``"module:class"``.
BUILTIN_RECIPES = {"pgd": "imgclf.defenses.pgd_training:PGDTraining",
                   "fgsm-rs": "imgclf.defenses.fgsm_rs:FGSMRandomStart",
                   "n-fgsm": "imgclf.defenses.n_fgsm:NoiseFGSM",
                   "gradalign": "imgclf.defenses.gradalign:GradAlign",
                   "trades": "imgclf.defenses.trades:TRADES"}
#: TRADES's weight of the KL term, the paper's on CIFAR-10 (1/lambda; Zhang et al. 2019): the
#: ``adversarial.beta`` default.
DEFAULT_BETA = 6.0
#: The FGSM-RS guard: a fall in PGD validation accuracy larger than this (absolute) while FGSM accuracy
#: rises is catastrophic overfitting (``adversarial.overfit_drop``).
OVERFIT_DROP = 0.2
#: The guard's second signature: FGSM validation accuracy above PGD's by more than this (absolute), FGSM's
#: rising and PGD's not, once the eps warm-up is over (``adversarial.overfit_gap``). A single step that no
#: longer finds what a few PGD steps find means the model has learnt to defeat that step (the sign of
#: catastrophic overfitting that Wong et al. 2020 and Andriushchenko and Flammarion 2020 both describe: FGSM
#: accuracy up to the clean one, PGD's near 0). Off by default (1: no gap exceeds it): with the paper's
#: ``fgsm-rs-mnist`` recipe, seed 2 shows a gap of 0.62 in epoch 2 (FGSM 0.695, PGD 0.075) and then trains to
#: 0.811 PGD validation accuracy; 0.4 catches the collapses of FGSM-RS on 3,000 MNIST images at eps 0.3 that the
#: fall of PGD accuracy alone misses (``tests/test_defenses.py``), at the price of such false alarms.
OVERFIT_GAP = 1.0
#: What training does when the guard fires (``adversarial.on_overfit``): ``stop`` and keep the best epoch
#: (Wong et al.'s early stopping); ``rollback`` to the last good epoch's whole training state and train on with
#: the random streams drawn afresh; ``restart`` as rollback, with the attack's step size multiplied by
#: :data:`RESTART_STEP_FACTOR` (again at every further collapse).
OVERFIT_ACTIONS = ("stop", "rollback", "restart")
#: The factor ``restart`` multiplies the training attack's step size by, at each collapse.
RESTART_STEP_FACTOR = 0.5


@dataclass
class TrainingRecipe:
    """One adversarial training recipe; subclasses set the class attributes and override what differs.

    Class attributes:
        name: The name users give (``--adversarial NAME``).
        summary: One line: the method and its source.
        default_steps: Attack steps when none are given.
        fixed_steps: ``--adv-steps`` does not apply (FGSM-RS is one step).
        validation_attacks: Registered attacks measured on the robust validation
            subset besides PGD, each as ``<name>_val_accuracy`` in the history.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    default_steps: ClassVar[int] = 10
    fixed_steps: ClassVar[bool] = False
    validation_attacks: ClassVar[tuple[str, ...]] = ()

    def steps(self, given: int | None) -> int:
        """Attack steps used: ``given``, else :attr:`default_steps` (always, for fixed-step recipes)."""
        return self.default_steps if given is None or self.fixed_steps else given

    def step_size(self, eps: float, steps: int, alpha: float | None) -> float:
        """The step in pixel units: ``alpha`` if given, else ``2.5 * eps / steps`` (Madry et al.)."""
        return default_alpha(eps, steps) if alpha is None else alpha

    def perturb(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                norm: str, steps: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """Adversarial versions of one training batch.

        Args:
            model: The unwrapped model, in eval mode (the caller sets and restores it).
            images: ``float32`` ``(B, C, H, W)`` in ``[0, 1]``. labels: ``int64`` ``(B,)``.
            eps: The warmed-up radius in pixel units under ``norm``.
            steps, alpha: From :meth:`steps` and :meth:`step_size`.
            generator: Seeds the random starts.

        Returns:
            ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` within ``eps`` of ``images``.
        """
        raise NotImplementedError

    def loss(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, adversarial: torch.Tensor,
             targets: torch.Tensor, loss_fn: LossFunction) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's training loss, and the logits its training accuracy is measured on.

        Default: ``loss_fn`` on the adversarial logits. ``model`` is the (possibly
        wrapped) model in training mode; the caller's autocast applies.

        Returns:
            Logits of ``adversarial`` ``(B, K)`` and a scalar loss.
        """
        logits = model(adversarial)
        return logits, loss_fn(logits.float(), targets)

    def regularizer(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    targets: torch.Tensor, *, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor | None:
        """A term added to :meth:`loss` (a scalar that carries the parameters' gradient), or None (the default).

        Args:
            model: As for :meth:`loss`. images: The clean batch, ``float32`` ``(B, C, H, W)`` in ``[0, 1]``.
            targets: ``int64`` ``(B,)``. eps: The batch's warmed-up radius. norm: ``attack.norm``.
            generator: The adversary's random state (saved with the training state, so a resumed run repeats).
        """
        return None

    def guard(self, history: Sequence[Mapping[str, float]]) -> str | None:
        """Why training must stop (or go back, ``adversarial.on_overfit``) after the last probe of ``history``
        (one row per robust validation: :attr:`imgclf.defenses.OverfitMonitor.probes`), or None."""
        return None


#: Every recipe class loaded so far by name (built-ins are loaded by :func:`recipe_class`).
RECIPES: dict[str, type[TrainingRecipe]] = {}


def register_recipe(cls: type[TrainingRecipe]) -> type[TrainingRecipe]:
    """Class decorator: register ``cls`` under ``cls.name``.

    Raises:
        ValueError: If the name is taken or is ``none`` (standard training).
    """
    if cls.name in RECIPES or cls.name == "none":
        raise ValueError(f"adversarial training recipe {cls.name!r} is registered already")
    RECIPES[cls.name] = cls
    return cls


def unregister_recipe(name: str) -> None:
    """Remove recipe ``name`` (for tests that register a temporary recipe)."""
    RECIPES.pop(name, None)


def recipe_choices() -> tuple[str, ...]:
    """``none`` (standard training) and every recipe: the valid ``adversarial.recipe`` values."""
    return ("none", *dict.fromkeys([*BUILTIN_RECIPES, *RECIPES]))


def recipe_class(name: str) -> type[TrainingRecipe]:
    """The class of recipe ``name``, a built-in's module imported on first use.

    Raises:
        ValueError: On an unknown name, listing the valid ones.
    """
    if name not in RECIPES and name in BUILTIN_RECIPES:
        module, _, attribute = BUILTIN_RECIPES[name].partition(":")
        cls = getattr(importlib.import_module(module), attribute)  # its module registers it
        if RECIPES.get(name) is not cls:
            raise ValueError(f"{BUILTIN_RECIPES[name]} does not register recipe {name!r}")
    if name not in RECIPES:
        valid = [choice for choice in recipe_choices() if choice != "none"]
        raise ValueError(f"unknown adversarial training recipe {name!r}; valid choices: {', '.join(valid)}")
    return RECIPES[name]


def make_recipe(name: str, settings: Mapping[str, Any]) -> TrainingRecipe:
    """An instance of recipe ``name`` with its own fields taken from ``settings`` where given.

    Raises:
        ValueError: On an unknown name, listing the valid ones.
    """
    cls = recipe_class(name)
    own = {f.name: settings[f.name] for f in dataclasses.fields(cls) if f.name in settings}
    return cls(**own)
