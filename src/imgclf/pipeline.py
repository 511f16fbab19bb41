""":class:`Run`, the Python API of a run folder: it opens or creates the folder and calls the stages
(:mod:`imgclf.stages`) in order.

``Run.train(config)`` makes a run folder and trains; ``Run.open(path)`` rebuilds a finished one from its
folder (configuration, saved split indices, model); ``.evaluate()``, ``.attack()``, ``.certify()``,
``.corrupt()``, ``.explain()`` and ``.report()`` each write their part of the folder (see :mod:`imgclf.record`), and
``.finish()`` runs them in order. ``imgclf run``, the stage commands, sweeps and feature extraction all go
through it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgclf import record
from imgclf.attacks import RobustnessResult
from imgclf.checkpoint import external_model, save_external
from imgclf.config import RunConfig, resolve_changes
from imgclf.corruptions.evaluation import CorruptionEvaluation
from imgclf.errors import UsageError, first_line
from imgclf.evaluation import EvalResult
from imgclf.record import read_metrics
from imgclf.run_folder import RunFolder
from imgclf.runtime import environment
from imgclf.settings import Settings
from imgclf.stages import attack, certify, corrupt, evaluate, explain, report, store, train
from imgclf.stages.parts import RunParts
from imgclf.training import TrainResult


class Run(RunParts):
    """One run folder with its configuration, typed settings, data splits and model: the Python API.

    Make one with :meth:`train` (a new folder), :meth:`resume` or :meth:`open` (an existing one), or
    :meth:`from_model` (a model imgclf did not train), then call :meth:`evaluate`, :meth:`attack`,
    :meth:`certify`, :meth:`corrupt`, :meth:`explain` and :meth:`report`; each writes its part of the folder and
    returns its result. The attributes are those of :class:`~imgclf.stages.parts.RunParts` (``folder``, ``config``,
    ``settings``, ``data``, ``model``, ``device``, ``log``, ``dist``, ``train_result``); ``model`` may be
    replaced (e.g. by a wrapped model) before :meth:`attack`.
    """

    @classmethod
    def _of(cls, parts: RunParts) -> Run:
        return cls(parts.folder, parts.settings, parts.data, parts.model, parts.device, parts.log,
                   quiet=parts.quiet, dist=parts.dist, train_result=parts.train_result)

    @property
    def path(self) -> Path:
        """The run folder's path.

        Raises:
            UsageError: In a process other than rank 0 of a distributed run, which has no folder.
        """
        return self.writes().path

    def _repr_html_(self) -> str:
        """The run as Jupyter shows it: its folder and what each stage found so far."""
        if self.folder is None:
            return f"<p>imgclf run (rank {self.dist.rank}: no run folder)</p>"
        return self.metrics.html(f"imgclf run {self.path}").render()

    def __repr__(self) -> str:
        where = str(self.folder.path) if self.folder is not None else f"rank {self.dist.rank}"
        config = self.settings.config
        return f"Run({where!r}, dataset={config.data.dataset!r}, model={config.model.name!r})"

    @property
    def metrics(self) -> record.Metrics:
        """The run's ``metrics.json`` as it is now (every stage adds its sections), read and checked."""
        return read_metrics(self.writes().path)

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
        return cls._of(train.train_new(config, out=out, quiet=quiet, after_epoch=after_epoch))

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
        parts, earlier = train.resume(path, epochs=epochs, quiet=quiet, overrides=overrides, trust_code=trust_code)
        run = cls._of(parts)
        if earlier is None:
            return run
        if earlier.clean is not None:
            run.log("the clean test metrics were those of the model before the extension: evaluating again")
            run.evaluate()
        if earlier.evaluations:
            run.log(f"{len(earlier.evaluations)} robustness evaluation(s) of the model before the extension stay "
                    f"in metrics.json and the report, marked as such; `imgclf attack {run.path}` evaluates this one")
        if run.writes().file(record.REPORT).is_file():
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
        dist, log, device, data, settings = store.prepare(config, out, quiet)
        config, spec = settings.config, data.spec
        env = environment(device)
        model, info, exported = external_model(config.model, spec, env)
        folder = None
        if dist.is_main:
            folder = store.create_folder(out, settings, data, env, log, suffix="-eval")
            save_external(folder.path, model, info, exported)
        log(f"{spec.name}: {len(data.test)} test images, {spec.num_classes} classes, input "
            f"{spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}; {config.model.name} "
            f"({info['source']['kind']}), normalization: {info['source']['normalization']}; on {device}")
        for note in data.notes:
            log(f"warning: {note}")
        return cls(folder, settings, data, model.to(device), device, log, quiet=quiet or not dist.is_main, dist=dist)

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
        return cls._of(store.open_parts(path, overrides=overrides, quiet=quiet, trust_code=trust_code,
                                        changed_data=changed_data))

    # -- the stages ----------------------------------------------------------
    def evaluate(self) -> EvalResult:
        """Clean metrics on the test split; saves ``metrics.json`` (``clean``) and ``samples.npz``
        (:func:`imgclf.stages.evaluate.evaluate_clean`). With ``eval.tta`` each image's logits are averaged
        with its mirror's."""
        return evaluate.evaluate_clean(self)

    def attack(self, *, attacks: list[str] | None = None, eps: str | list[str] | None = None,
               examples: int | str | None = None, norm: str | None = None, steps: int | None = None,
               alpha: float | None = None, restarts: int | None = None, target: str | None = None,
               **options: Any) -> RobustnessResult:
        """Robust accuracy under each configured attack and eps, and the worst case, on a seeded
        stratified test subset, with the sanity checks.

        Each argument given replaces the configured ``attack`` setting of that name for this call
        only (``config.yaml`` is left as it is); None keeps the configured one.

        Args:
            attacks: Attack names or presets, e.g. ``["pgd"]`` or ``["full"]``.
            eps: Radii in pixel units as the CLI takes them (``"0,8/255"``, ``"0:0.3:0.1"``);
                with a new ``norm`` and no ``eps``, that norm's default list.
            examples: Test images to attack, or ``"all"``.
            norm: ``"linf"`` or ``"l2"``. steps, alpha, restarts, target: As the CLI's ``--steps``,
                ``--step-size``, ``--restarts``, ``--target``.
            options: The attacks' own options by name (``queries=5000`` for Square; ``imgclf attacks``
                lists them).

        The evaluation is added to ``metrics.json``'s ``evaluations`` (:class:`imgclf.record.Evaluation`),
        keyed by its settings and the model: earlier evaluations are kept, and one with the same key is
        reused instead of run again. Its files go to ``evaluations/KEY/``: ``adversarial.pt``
        (worst-case adversarial images as float tensors with their test positions) and
        ``adversarial.npz`` (the examples shown in the report).

        Raises:
            UsageError: On an invalid change, or an eps the images do not allow (an L2 eps too large).
        """
        given = {"attacks": attacks, "eps": eps, "examples": examples, "norm": norm, "steps": steps,
                 "alpha": alpha, "restarts": restarts, "target": target, **options}
        return attack.attack(self, self._with_changes("attack", given))

    def certify(self, *, sigma: float | None = None, radii: list[float] | str | None = None, n0: int | None = None,
                n: int | None = None, alpha: float | None = None, examples: int | str | None = None,
                attack: bool | None = None, **options: Any) -> record.Certification:
        """Certified L2 robustness by randomized smoothing (:func:`imgclf.certification.certify`: Cohen et al.'s
        CERTIFY) on a seeded stratified test subset, with the smoothed classifier under SmoothAdv and the model
        under APGD-CE (L2) beside it: at each radius the smoothed classifier's true robust accuracy lies between
        the certified accuracy and its accuracy under SmoothAdv.

        Each argument given replaces the configured ``certify`` setting of that name for this call only
        (``config.yaml`` is left as it is); None keeps the configured one.

        Args:
            sigma: The noise's standard deviation in pixel units: that the model was trained with
                (``--augment gaussian-noise:sigma=S``). radii: L2 radii in pixel units (``"0,0.25,0.5"``).
            n0, n, alpha: CERTIFY's selection and estimation samples per image, and each certificate's failure
                probability. examples: Test images, or ``"all"``. attack: Run the empirical upper bounds.
            options: The other ``certify`` settings by name (``attack_steps``, ``attack_samples``, ``attack_n``,
                ``batch_size``).

        The evaluation is added to ``metrics.json``'s ``certifications`` (:class:`imgclf.record.Certification`),
        keyed by its settings and the model: one with the same key is reused. Per example results go to
        ``certifications/KEY/certificates.npz``.

        Raises:
            UsageError: On an invalid setting.
        """
        given = {"sigma": sigma, "radii": radii, "n0": n0, "n": n, "alpha": alpha, "examples": examples,
                 "attack": attack, **options}
        return certify.certify_run(self, self._with_changes("certify", given))

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
        given = {"corruptions": corruptions, "severities": severities, "examples": examples}
        return corrupt.corrupt(self, self._with_changes("corruption", given), baseline=baseline)

    def explain(self, *, eps: float | None = None, method: str = "auto", layer: str | None = None,
                count: int = 8) -> explain.Explained:
        """What the model looks at (:func:`imgclf.explanations.explain`: Grad-CAM, or saliency where Grad-CAM
        does not apply) on ``count`` fixed test images, clean and adversarial, for the report.

        The images are ``count`` of the newest robustness evaluation's subset that the model classifies
        correctly, one per class in turn (the first of each class, then the second, ...), with their worst-case
        adversarial examples at ``eps`` (default: the eps of the report's headline numbers, the training eps
        where there is one); without an evaluation, test images chosen the same way, clean only. Each map
        explains the class the model predicts for that image.

        Writes ``explanations.npz``; returns it with its figure (:class:`imgclf.stages.explain.Explained`: ``.path``,
        ``.figure()``; in Jupyter, the images and their heat maps).

        Raises:
            UsageError: On an eps the evaluation did not attack at, an unknown method or layer, or Captum
                missing.
        """
        return explain.explain_images(self, eps=eps, method=method, layer=layer, count=count)

    def report(self) -> Path:
        """Figures and ``report.html`` from what the folder holds (and, with ``train.tensorboard``,
        the figures and final metrics in ``RUN/tensorboard``); returns the report's path."""
        return report.report(self)

    def finish(self, *, attack: bool = True) -> EvalResult:
        """The stages after training, in order: :meth:`evaluate`, :meth:`attack` (unless ``attack`` is
        False), :meth:`corrupt` (as ``corruption.stage`` says: see
        :func:`imgclf.stages.corrupt.corruption_wanted`), :meth:`explain` and :meth:`report` (and, for a model
        trained with Gaussian noise, the ``imgclf certify`` command that certifies it); returns the clean
        evaluation."""
        evaluation = self.evaluate()
        if attack:
            self.attack()
        if corrupt.corruption_wanted(self, attack=attack):
            self.corrupt()
        try:
            self.explain()
        except (UsageError, RuntimeError, ValueError) as error:  # a heat map is not worth the finished run's report
            self.log.warn(f"warning: no explanations in the report: {first_line(error)}")
        self.report()
        certify.suggest_certification(self)
        return evaluation

    def _with_changes(self, section: str, given: dict[str, Any]) -> Settings:
        """The settings with the arguments given (not None) replacing one section's settings for one call."""
        changes = {key: value for key, value in given.items() if value is not None}
        if not changes:
            return self.settings
        spec = self.data.spec
        return resolve_changes(self.config, section, changes, channels=spec.channels,
                               class_names=list(spec.class_names))


def run(config: RunConfig, *, out: str | Path | None = None, quiet: bool = False) -> RunFolder | None:
    """The whole pipeline: train, evaluate, attack, report. Returns the run folder
    (None in the processes other than rank 0 of a distributed run)."""
    trained = Run.train(config, out=out, quiet=quiet)
    if trained.folder is None:  # not rank 0 of a distributed run
        return None
    trained.finish()
    return trained.folder
