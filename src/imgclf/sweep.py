"""Hyperparameter search with Optuna: every trial is an ordinary run folder.

A sweep file names a base configuration (what ``--config`` takes) and a search
space over any of its settings by dotted key::

    study: fm-mlp            # Optuna study name (default: the file's stem)
    trials: 20               # trials in the study, over every process that works on it
    out: runs/sweep-fm-mlp   # trials go to OUT/trial-0000, ...; the report to OUT/sweep.html
    storage: null            # default sqlite:///OUT/study.db; PostgreSQL/MySQL URLs for many machines
    seed: 0                  # seeds the TPE sampler (give each parallel process its own)
    pruner: median           # median | none
    startup_trials: 5        # the pruner waits for this many finished trials
    warmup_epochs: 1         # and never stops a trial during its first epochs
    attack: false            # also run the attack stage in every finished trial
    base:                    # a mapping like config.yaml, or the path of such a file
      data: {dataset: fashion-mnist}
      model: {name: mlp}
      train: {epochs: 4}
    search:
      train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # float range (log scale)
      model.options.hidden: {low: 16, high: 512, log: true}  # int range: both bounds integers
      train.batch_size: {choices: [32, 64, 128]}         # categorical

The objective is the best validation accuracy of the trial's run (never the
test split); Optuna's TPE sampler proposes settings (Bergstra et al. 2011) and
its median pruner stops a trial whose validation accuracy after an epoch is
below the median of earlier trials at that epoch (once ``startup_trials`` trials
have finished, and never in a trial's first ``warmup_epochs`` epochs, whose
accuracy says little while the learning rate warms up). The test accuracy of every
finished trial is recorded beside it, for reading, not for choosing.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from imgclf.config import MAX_SEED, dotted, load_config, read_yaml_mapping
from imgclf.errors import UsageError
from imgclf.run_folder import RunFolder, atomic_write_text
from imgclf.trust import check_named_code

#: What a sweep file may hold, with defaults.
SWEEP_KEYS: dict[str, Any] = {"study": None, "trials": 20, "out": None, "storage": None, "seed": 0, "pruner": "median",
              "startup_trials": 5, "warmup_epochs": 1, "attack": False, "base": {}, "search": {}}
PRUNERS = ("median", "none")
#: A running trial records a heartbeat this often; one silent for GRACE_SECONDS is failed by the next
#: process that opens the study (its process was killed) and does not count toward ``trials``.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
#: The copy of the sweep file that marks a folder as a sweep's.
SWEEP_FILE = "sweep.yaml"


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a float or int range (``log`` for a log scale, ``step`` for
    a grid) or a list of ``choices``."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    @classmethod
    def parse(cls, key: str, spec: Any) -> Dimension:
        """Read ``{low, high[, log, step]}`` or ``{choices: [...]}`` (or a bare list of choices).

        Raises:
            UsageError: On any other shape, an empty choice list, or ``low >= high``.
        """
        if isinstance(spec, list):
            spec = {"choices": spec}
        if not isinstance(spec, dict):
            raise UsageError(f"search.{key} must be {{low, high[, log, step]}} or {{choices: [...]}}, got {spec!r}")
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise UsageError(f"search.{key} has unknown key(s) {', '.join(sorted(unknown))}; valid keys: "
                             "low, high, log, step, choices")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices or set(spec) != {"choices"}:
                raise UsageError(f"search.{key}.choices must be a non-empty list (and alone)")
            return cls(key, choices=tuple(choices))
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) \
                or not isinstance(low, int | float) or not isinstance(high, int | float) or low >= high:
            raise UsageError(f"search.{key} needs numbers low < high, got low={low!r} high={high!r}")
        if spec.get("log") and low <= 0:
            raise UsageError(f"search.{key} on a log scale needs low > 0, got {low}")
        if spec.get("log") and spec.get("step") is not None:
            raise UsageError(f"search.{key}: log and step do not combine")
        step = spec.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int | float) or not step > 0
                                 or (isinstance(low, int) and isinstance(high, int) and not isinstance(step, int))):
            raise UsageError(f"search.{key}.step must be a number > 0 (an integer for an integer range), "
                             f"got {step!r}")
        if not isinstance(spec.get("log", False), bool):
            raise UsageError(f"search.{key}.log must be true or false, got {spec['log']!r}")
        return cls(key, low, high, bool(spec.get("log", False)), step)

    @property
    def is_int(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def suggest(self, trial) -> Any:
        """The trial's value for this setting."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_float(self.key, float(self.low or 0), float(self.high or 0), log=self.log, step=self.step)

    def example(self) -> Any:
        """A value inside the space, used to validate the key before any trial runs."""
        if self.choices is not None:
            return self.choices[0]
        return self.low


@dataclass
class SweepSpec:
    """A validated sweep file (see the module docstring)."""

    study: str
    trials: int
    out: Path
    storage: str
    seed: int
    pruner: str
    startup_trials: int
    warmup_epochs: int
    attack: bool
    base: dict[str, Any]  # the base configuration as dotted keys (``{"train.lr": 0.01, ...}``)
    search: list[Dimension]
    text: str


def load_sweep(path: str | Path, *, trials: int | None = None, storage: str | None = None,
               out: str | Path | None = None, seed: int | None = None) -> SweepSpec:
    """Read and validate a sweep file; the keyword arguments override it.

    Every searched key is checked against the configuration (with a value from its
    range) before anything runs.

    Raises:
        UsageError: On a missing or malformed file, an unknown key, a bad range, or a
            searched setting the configuration does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"sweep file {str(path)!r} does not exist")
    values = read_yaml_mapping(path, "sweep file")
    text = path.read_text(encoding="utf-8")
    unknown = set(values) - set(SWEEP_KEYS)
    if unknown:
        raise UsageError(f"unknown sweep key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(SWEEP_KEYS)}")
    values = {**SWEEP_KEYS, **values}
    for key in ("study", "out", "storage"):
        if values[key] is not None and not isinstance(values[key], str):
            raise UsageError(f"sweep {key} must be a string, got {values[key]!r}")
    if not isinstance(values["attack"], bool):
        raise UsageError(f"sweep attack must be true or false, got {values['attack']!r}")
    seed = values["seed"] if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"sweep seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    base = values["base"]
    if isinstance(base, str):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise UsageError(f"sweep base config {str(base_path)!r} does not exist")
        base = read_yaml_mapping(base_path, "sweep base config")
    if not isinstance(base, dict) or not all(isinstance(key, str) for key in base):
        raise UsageError("sweep key 'base' must be a config mapping or the path of a config file")
    if not isinstance(values["search"], dict) or not values["search"]:
        raise UsageError("sweep key 'search' must map at least one setting (e.g. train.lr) to its range")
    search = [Dimension.parse(str(key), spec) for key, spec in values["search"].items()]
    base = dotted(base)
    named = [base.get("model.name"), *(c for d in search if d.key == "model.name" for c in d.choices or ())]
    for name in named:  # the sweep file's models are the file's word, not the caller's
        check_named_code(name, f"sweep file {str(path)!r}")
    load_config(None, {**base, **{d.key: d.example() for d in search}})  # raises on a bad key
    trials = values["trials"] if trials is None else trials
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UsageError(f"sweep trials must be a positive integer, got {trials!r}")
    if values["pruner"] not in PRUNERS:
        raise UsageError(f"unknown pruner {values['pruner']!r}; valid choices: {', '.join(PRUNERS)}")
    for key in ("startup_trials", "warmup_epochs"):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 0:
            raise UsageError(f"sweep {key} must be an integer >= 0, got {values[key]!r}")
    out_dir = Path(out or values["out"] or Path("runs") / f"sweep-{path.stem}")
    storage_url = storage or values["storage"] or f"sqlite:///{(out_dir / 'study.db').as_posix()}"
    return SweepSpec(study=str(values["study"] or path.stem), trials=trials, out=out_dir, storage=storage_url,
                     seed=seed, pruner=values["pruner"],
                     startup_trials=values["startup_trials"], warmup_epochs=values["warmup_epochs"],
                     attack=bool(values["attack"]), base=base, search=search, text=text)


def _prepare_out(spec: SweepSpec) -> None:
    """Create the sweep folder, or join the one that holds this same study (another
    process, or a sweep resumed later); refuse any other non-empty folder."""
    marker = spec.out / SWEEP_FILE
    # another process starting the same sweep may be writing the marker right now (its temporary file)
    if spec.out.is_dir() and any(not p.name.startswith(f".{SWEEP_FILE}.") for p in spec.out.iterdir()):
        if not marker.is_file():
            raise UsageError(f"output folder {str(spec.out)!r} exists and is not a sweep folder; choose another out "
                             "(imgclf never overwrites a run)")
        other = (yaml.safe_load(marker.read_text(encoding="utf-8")) or {}).get("study")
        if other != spec.study:
            raise UsageError(f"{str(spec.out)!r} holds sweep study {other!r}, not {spec.study!r}; choose another out")
        return
    spec.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, yaml.safe_dump({"study": spec.study}) + "# the sweep file:\n" +
                      "".join(f"# {line}\n" for line in spec.text.splitlines()))


def run_sweep(path: str | Path, *, trials: int | None = None, storage: str | None = None,
              out: str | Path | None = None, seed: int | None = None, quiet: bool = False) -> Path:
    """Run (or join, or resume) the sweep of ``path`` until its study holds ``trials``
    trials, then write ``OUT/sweep.html`` and ``OUT/sweep.json``.

    Several processes, on one machine or many, may run the same sweep file at once
    with one shared ``storage``: each asks the study for the next trial, and trial
    numbers (and so run folders) never collide.

    Returns:
        The path of ``sweep.html``.

    Raises:
        UsageError: On a bad sweep file or output folder, or an unreachable storage.
    """
    import optuna

    spec = load_sweep(path, trials=trials, storage=storage, out=out, seed=seed)
    _prepare_out(spec)
    with warnings.catch_warnings():
        # the heartbeat is marked experimental, and meant for Study.optimize; the loop uses it the same way
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return _run_trials(spec, quiet)


def _run_trials(spec: SweepSpec, quiet: bool) -> Path:
    """The trials of :func:`run_sweep`, then its report."""
    import optuna

    from imgclf.pipeline import Run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # steps are epochs counted from 1: a trial can be stopped from epoch warmup_epochs + 1 on
    pruner = optuna.pruners.NopPruner() if spec.pruner == "none" else \
        optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs + 1)
    study = _open_study(spec, pruner)
    from optuna.storages._heartbeat import get_heartbeat_thread

    while _counted(study) < spec.trials:
        trial = study.ask()
        if _counted(study, before=trial.number) >= spec.trials:  # another process took the last trial between
            # the count and the ask: the trial with the lower number runs (deciding by the count of all trials,
            # two processes asking at once would each see the other's trial and both give up)
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        params = {d.key: d.suggest(trial) for d in spec.search}
        run_dir = spec.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run", run_dir.name)
        began = time.perf_counter()

        def report_epoch(result, trial=trial):
            epoch = len(result.history)
            trial.report(result.history[-1]["val_accuracy"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {result.history[-1]['val_accuracy']:.4f} after "
                                         f"epoch {epoch} is below the median of earlier trials")

        try:
            # the storage's heartbeat marks the trial alive; one whose process is killed is failed by the
            # next process after the grace period and run again (Study.optimize does the same)
            with get_heartbeat_thread(trial._trial_id, study._storage):
                config = load_config(None, {**spec.base, **params})
                trained = Run.train(config, out=run_dir, quiet=True, after_epoch=report_epoch)
                evaluation = trained.finish(attack=spec.attack)
        except optuna.TrialPruned as pruned:
            trial.set_user_attr("seconds", time.perf_counter() - began)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            if not quiet:
                print(f"trial {trial.number:>4}: pruned ({pruned})  {_params_text(params)}")
            continue
        except UsageError as error:  # a sampled combination the configuration rejects
            trial.set_user_attr("error", str(error))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"trial {trial.number:>4}: failed: {error}")
            continue
        except BaseException:  # a crash or Ctrl-C: record the trial as failed, not running forever
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        value = trained.train_result.best_val_accuracy if trained.train_result else float("nan")
        trial.set_user_attr("test_accuracy", evaluation.metrics.accuracy)
        trial.set_user_attr("seconds", time.perf_counter() - began)
        study.tell(trial, value)
        if not quiet:
            print(f"trial {trial.number:>4}: val accuracy {value:.4f}  test {evaluation.metrics.accuracy:.4f}  "
                  f"{_params_text(params)}  ({time.perf_counter() - began:.0f} s)")
    return write_sweep_report(study, spec)


def _open_study(spec: SweepSpec, pruner):
    """Create or load the study. Processes that start together race to create the storage's
    tables (the loser gets an integrity error), so a failed first open is retried."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    # SQLite: wait for a writer's lock instead of failing at once
    engine = {"connect_args": {"timeout": 60}} if spec.storage.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            storage = optuna.storages.RDBStorage(spec.storage, engine_kwargs=engine,
                                                 heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
            study = optuna.create_study(study_name=spec.study, storage=storage, direction="maximize",
                                        sampler=optuna.samplers.TPESampler(seed=spec.seed), pruner=pruner,
                                        load_if_exists=True)
            optuna.storages.fail_stale_trials(study)  # trials of killed processes, silent for the grace period
            earlier = len(study.get_trials(deepcopy=False))
            if earlier:  # a resumed or joining process: its own random draws, not the first process's again
                study.sampler = optuna.samplers.TPESampler(seed=(spec.seed + earlier) % 2**32)
            return study
        except SQLAlchemyError as error:
            if attempt == 4:
                raise UsageError(f"cannot open Optuna storage {spec.storage!r}: {error}") from None
            time.sleep(0.5 * (attempt + 1))
        except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as error:
            raise UsageError(f"cannot open Optuna storage {spec.storage!r}: {error}") from None


def _counted(study, *, before: int | None = None) -> int:
    """Trials that count toward ``trials``: finished, pruned, running (in this or another live
    process), or failed on settings the configuration rejects. A trial that crashed, was
    interrupted or whose process was killed (failed by the heartbeat) is run again.

    Args:
        before: Count only the trials numbered below this one (the study numbers trials in the order they
            were asked for)."""
    import optuna

    state = optuna.trial.TrialState
    return sum(t.state in (state.COMPLETE, state.PRUNED, state.RUNNING)
               or (t.state == state.FAIL and "error" in t.user_attrs)
               for t in study.get_trials(deepcopy=False)
               if not t.user_attrs.get("surplus") and (before is None or t.number < before))


def _params_text(params: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def write_sweep_report(study, spec: SweepSpec) -> Path:
    """``OUT/sweep.json``, ``OUT/figures/*.png`` and ``OUT/sweep.html`` from the study's trials."""
    import optuna

    from imgclf.report.html import jinja_environment
    from imgclf.report.plots import embed_figures, importance_figure, optimization_history_figure

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    rows = [{"number": t.number, "state": t.state.name.lower(), "value": t.value,
             "last_val_accuracy": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None,
             "epochs": len(t.intermediate_values), "test_accuracy": t.user_attrs.get("test_accuracy"),
             "params": t.params, "run": t.user_attrs.get("run"), "seconds": t.user_attrs.get("seconds"),
             "error": t.user_attrs.get("error")} for t in trials]
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["value"]) if complete else None
    importances: dict[str, float] = {}
    importance_note = None
    if len(complete) >= 2 and len(spec.search) >= 2:
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=spec.seed))
        except (RuntimeError, ValueError) as error:  # e.g. every trial had the same value
            importance_note = f"parameter importances not computed: {error}"
    else:
        importance_note = "parameter importances need at least 2 finished trials and 2 searched settings"
    folder = RunFolder(spec.out)
    figures = {"history": optimization_history_figure(rows)}
    if importances:
        figures["importances"] = importance_figure(importances)
    encoded = embed_figures(figures, folder.figures)
    summary = {"study": spec.study, "storage": spec.storage, "trials": rows, "best": best,
               "importances": importances, "importance_note": importance_note,
               "search": [asdict(d) for d in spec.search]}
    folder.write_json("sweep.json", json.loads(json.dumps(summary, default=str)))
    html = jinja_environment().get_template("sweep.html.j2").render(
        study=spec.study, storage=spec.storage,
        rows=sorted(rows, key=lambda r: (r["value"] is None, -(r["value"] or 0))),
        best=best, keys=[d.key for d in spec.search], counts={s: sum(r["state"] == s for r in rows)
                                                             for s in ("complete", "pruned", "fail")},
        figures=encoded, importances=importances, importance_note=importance_note, sweep_text=spec.text,
    )
    path = folder.file("sweep.html")
    atomic_write_text(path, html)
    return path
