"""The report stage: figures and ``report.html`` rendered from the run folder's record (nothing recomputed), and
with ``train.tensorboard`` the figures and final metrics in ``RUN/tensorboard``."""

from __future__ import annotations

from pathlib import Path

from imgclf import record
from imgclf.config import RunConfig, config_to_dict
from imgclf.record import read_metrics
from imgclf.report import write_report
from imgclf.run_folder import RunFolder
from imgclf.stages.parts import RunParts


def report(parts: RunParts) -> Path:
    """Write the run's report (and its TensorBoard results, where asked); returns the report's path.

    Raises:
        UsageError: In a process that writes no run folder, or where the record cannot be read.
    """
    folder = parts.writes()
    parts.log("writing the report")
    path = write_report(folder)
    parts.log(f"report: {path}")
    if parts.config.train.tensorboard:
        tensorboard_results(folder, parts.config)
    return path


def report_folder(path: str | Path) -> Path:
    """Figures and ``report.html`` of any run folder, image model or classifier on features
    (``imgclf report RUN``); nothing is recomputed or loaded but what the folder holds."""
    folder = RunFolder.open(path)
    written = write_report(folder)
    print(f"report: {written}")
    return written


def tensorboard_results(folder: RunFolder, config: RunConfig) -> None:
    """Add the run's figures and its hyperparameters with final metrics to ``RUN/tensorboard``."""
    from imgclf.report.html import build_figures
    from imgclf.tensorboard_logging import log_results

    shown = ("confusion_matrix", "predictions", "adversarial")
    figures = {name: figure for name, figure in build_figures(folder).items() if name in shown}
    log_results(folder.path / record.TENSORBOARD, config_to_dict(config), read_metrics(folder.path), figures)
