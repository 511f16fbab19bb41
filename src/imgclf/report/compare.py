"""``imgclf compare``: several run folders in one report (metrics, robustness and curves side by side).

Like the run report it renders what the run folders saved and computes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imgclf import record
from imgclf.notebook import ResultHTML, Table
from imgclf.record import Metrics, read_metrics, read_model_record
from imgclf.report.html import config_settings, jinja_environment, percent
from imgclf.report.plots import embed_figures, eps_label
from imgclf.run_folder import RunFolder, atomic_write_text


@dataclass
class ComparedRun:
    """What one run folder contributes to a comparison."""

    name: str
    path: Path
    metrics: Metrics
    history: list[dict[str, float]]
    colour: bool
    config_text: str

    @property
    def training(self) -> str:
        """``standard``, or the adversarial recipe and its eps."""
        adversarial = self.metrics.training.adversarial if self.metrics.training else None
        if adversarial is None:
            return "standard"
        return f"{adversarial.recipe} at eps {eps_label(adversarial.eps, self.colour)}"

    def certified(self) -> dict[float, float]:
        """Certified accuracy by L2 radius of the newest certified-robustness evaluation ({} without one)."""
        done = self.metrics.latest_certification
        return {} if done is None else {row.radius: row.certified for row in done.rows}

    def worst_case(self) -> dict[float, float]:
        """Worst-case robust accuracy by eps (the only attack's rows when there is one)."""
        return {row.eps: row.accuracy for row in self.metrics.worst_case()}


def _load(path: str | Path) -> ComparedRun:
    folder = RunFolder.open(path)
    info = folder.file(record.MODEL_INFO)
    colour = info.is_file() and read_model_record(info).input_shape[0] == 3
    config_text = folder.config_path.read_bytes().decode("utf-8", errors="replace") \
        if folder.config_path.is_file() else ""
    return ComparedRun(folder.path.name, folder.path, read_metrics(folder.path), folder.read_csv(record.HISTORY),
                       colour, config_text)


def robustness_comparison(runs: list[ComparedRun]) -> Figure:
    """Worst-case accuracy against eps, one line per run."""
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for run in runs:
        points = sorted(run.worst_case().items())
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    label=f"{run.name} ({run.training})")
    eps_values = sorted({eps for run in runs for eps in run.worst_case()})
    colour = all(run.colour for run in runs)  # 8/255 only where every run is of colour images
    ax.set_xticks(eps_values, labels=[eps_label(e, colour) for e in eps_values])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("eps (pixel units)")
    ax.set_ylabel("worst-case accuracy under attack")
    ax.set_title("Robustness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


#: The smallest range of accuracy the validation figure's axis spans (10 points), so that small gaps look small.
MIN_ACCURACY_SPAN = 0.1


def validation_comparison(runs: list[ComparedRun]) -> Figure:
    """Clean (solid) and PGD (dashed) validation accuracy per epoch, one colour per run."""
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for index, run in enumerate(runs):
        if not run.history:
            continue
        colour = f"C{index % 10}"
        epochs = [row["epoch"] for row in run.history]
        ax.plot(epochs, [row["val_accuracy"] for row in run.history], "o-", color=colour, label=f"{run.name} clean")
        if "robust_val_accuracy" in run.history[0]:
            ax.plot(epochs, [row["robust_val_accuracy"] for row in run.history], "^--", color=colour,
                    label=f"{run.name} PGD")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    low, high = ax.get_ylim()
    if high - low < MIN_ACCURACY_SPAN:  # a gap of a fraction of a point must not fill the axes
        low = max(0.0, min((low + high - MIN_ACCURACY_SPAN) / 2, 1.0 - MIN_ACCURACY_SPAN))
        ax.set_ylim(low, low + MIN_ACCURACY_SPAN)
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def differing_settings(runs: list[ComparedRun]) -> list[dict[str, Any]]:
    """The settings whose values differ between the runs' ``config.yaml`` files: ``{"setting": name,
    "values": [value or "–" per run]}``, in the first file's order (a missing or damaged file counts as
    having none)."""
    settings = [config_settings(run.config_text) or {} for run in runs]
    names = list(dict.fromkeys(name for found in settings for name in found))
    return [{"setting": name, "values": [found.get(name, "–") for found in settings]}
            for name in names if len({found.get(name) for found in settings}) > 1]


@dataclass
class Comparison:
    """What :func:`compare_runs` wrote: the page, and each run's numbers as in ``comparison.json``.

    Attributes:
        path: ``compare.html``. runs: One dict per run (``test_accuracy``, ``worst_case_robust_accuracy`` by eps,
            ``ece``, ``mean_corruption_error``, ``certified_accuracy``..., fractions in ``[0, 1]`` or None).
    """

    path: Path
    runs: list[dict[str, Any]]

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def _repr_html_(self) -> str:
        """The runs side by side (Jupyter shows this)."""
        eps_values = sorted({eps for run in self.runs for eps in run["worst_case_robust_accuracy"]})
        rows = [[Path(run["run"]).name, run["model"], run["training"], run["test_accuracy"], run["macro_f1"],
                 *(run["worst_case_robust_accuracy"].get(eps) for eps in eps_values), run["ece"],
                 run["mean_corruption_error"]] for run in self.runs]
        columns = ["run", "model", "training", "test accuracy", "macro F1",
                   *(f"worst case at eps {eps:.4g}" for eps in eps_values), "ECE", "mean corruption error"]
        return ResultHTML(f"{len(self.runs)} runs compared", [f"page: {self.path}"], [Table(columns, rows)]).render()


def compare_runs(paths: list[str | Path], out: str | Path, *, allow_different_data: bool = False) -> Comparison:
    """Write ``compare.html``, ``comparison.json`` and ``figures/*.png`` for ``paths`` into ``out``.

    Args:
        paths: Two or more run folders (trained; evaluated and attacked for the full table).
        out: A new folder (absent or empty).
        allow_different_data: Compare runs of different data sets (their numbers are not comparable;
            the page says so).

    Returns:
        The :class:`Comparison` (``.path`` is ``compare.html``; it renders as a table in Jupyter).

    Raises:
        UsageError: If fewer than two runs are given, one is not a run folder, the runs come from
            different data sets without ``allow_different_data``, or ``out`` exists and is not empty.
    """
    from imgclf import __version__
    from imgclf.errors import UsageError

    if len(paths) < 2:
        raise UsageError("imgclf compare needs at least two run folders")
    runs = [_load(path) for path in paths]
    datasets = {run.metrics.dataset for run in runs}
    if len(datasets) > 1 and not allow_different_data:
        raise UsageError(f"the runs come from different data sets ({', '.join(sorted(datasets))}), whose accuracies "
                         "and robustness are not comparable; add --allow-different-data to compare them anyway")
    folder = RunFolder.create(out, default_name="compare")
    names = [run.name for run in runs]
    for index, run in enumerate(runs):  # two folders with the same name get their position as well
        if names.count(run.name) > 1:
            run.name = f"{run.name} [{index + 1}]"
    eps_values = sorted({eps for run in runs for eps in run.worst_case()})
    radii = shared_radii(runs)
    figures = {"validation": validation_comparison(runs)}
    if eps_values:  # (no run attacked: no figure of robustness, rather than empty axes)
        figures = {"robustness": robustness_comparison(runs), **figures}
    encoded = embed_figures(figures, folder.figures)

    rows = [{**_table_row(run, eps_values), **_certified_cells(run, radii)} for run in runs]
    summary = [_summary(run) for run in runs]
    colour = all(run.colour for run in runs)  # 8/255 only where every run is of colour images
    html = jinja_environment().get_template("compare.html.j2").render(
        rows=rows, figures=encoded, version=__version__,
        datasets=sorted(datasets), differing=differing_settings(runs),
        eps_columns=[{"label": eps_label(eps, colour)} for eps in eps_values], radii=[f"{r:g}" for r in radii],
    )
    atomic_write_text(folder.file("comparison.json"),
                      json.dumps({"runs": [{**row, "worst_case_robust_accuracy": {str(k): v for k, v in
                                                                               row["worst_case_robust_accuracy"].items()}}
                                           for row in summary]}, indent=2))
    path = folder.file("compare.html")
    atomic_write_text(path, html)
    return Comparison(path, summary)


def _table_row(run: ComparedRun, eps_values: list[float]) -> dict[str, Any]:
    """One run's row of the page's table, its numbers as text (``–`` where the run has none)."""
    clean, worst = run.metrics.clean, run.worst_case()
    seconds = run.metrics.timing.get("train_seconds")
    calibration, corrupted = run.metrics.calibration, run.metrics.corruptions
    return {
        "name": run.name, "path": str(run.path), "model": run.metrics.model, "training": run.training,
        "accuracy": percent(clean.accuracy if clean else None),
        "macro_f1": f"{clean.macro_f1:.4f}" if clean else "–",
        "ece": percent(calibration.test.ece if calibration else None),
        "ece_scaled": percent(calibration.test_scaled.ece if calibration else None),
        "corruption_error": percent(corrupted.mean_error if corrupted else None),
        "mce": "–" if corrupted is None or corrupted.mce is None else
               f"{percent(corrupted.mce)} ({Path(corrupted.baseline or '').name})",
        "robust": [percent(worst.get(eps)) for eps in eps_values],
        "train_time": "–" if seconds is None else f"{seconds:.0f} s",
        "warnings": run.metrics.attack.warnings if run.metrics.attack else [],
    }


def _summary(run: ComparedRun) -> dict[str, Any]:
    """One run's entry of ``comparison.json``: the numbers themselves (None where the run has none)."""
    clean, calibration, corrupted = run.metrics.clean, run.metrics.calibration, run.metrics.corruptions
    return {"run": str(run.path), "model": run.metrics.model, "dataset": run.metrics.dataset,
            "training": run.training, "test_accuracy": clean.accuracy if clean else None,
            "macro_f1": clean.macro_f1 if clean else None,
            "ece": calibration.test.ece if calibration else None,
            "ece_temperature_scaled": calibration.test_scaled.ece if calibration else None,
            "mean_corruption_error": corrupted.mean_error if corrupted else None,
            "mce": corrupted.mce if corrupted else None,
            "relative_mce": corrupted.relative_mce if corrupted else None,
            "worst_case_robust_accuracy": run.worst_case(),
            "certified_accuracy": {str(radius): value for radius, value in run.certified().items()},
            "certified_sigma": _sigma(run),
            "train_seconds": run.metrics.timing.get("train_seconds")}


def shared_radii(runs: list[ComparedRun]) -> list[float]:
    """The L2 radii at which every run with a certified-robustness evaluation was certified, ascending ([] where
    no run has one)."""
    sets = [set(run.certified()) for run in runs if run.metrics.latest_certification is not None]
    return sorted(set.intersection(*sets)) if sets else []


def _sigma(run: ComparedRun) -> float | None:
    """The smoothing sigma of the run's newest certification, or None."""
    done = run.metrics.latest_certification
    return None if done is None else done.sigma


def _certified_cells(run: ComparedRun, radii: list[float]) -> dict[str, Any]:
    """One run's certified columns of the page's table: the sigma and the certified accuracy at ``radii``."""
    certified, sigma = run.certified(), _sigma(run)
    return {"certified": [percent(certified.get(r)) for r in radii], "sigma": "–" if sigma is None else f"{sigma:g}"}
