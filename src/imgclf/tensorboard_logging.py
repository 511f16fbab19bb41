"""TensorBoard logs of a run (``--tensorboard``), in ``RUN/tensorboard``.

* per step (every ``every`` steps, so the GPU is not synchronised each step):
  ``train/loss_step`` and ``train/lr``;
* per epoch: ``loss/train``, ``loss/val``, ``accuracy/train``, ``accuracy/val``;
* after evaluation and attacks: the confusion matrix, the test-prediction grid
  and the adversarial examples as images, and the hyperparameters with the final
  metrics (TensorBoard's HParams tab).

Needs the ``tensorboard`` package (``pip install "imgclf[tensorboard]"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imgclf.errors import UsageError

if TYPE_CHECKING:
    from imgclf.record import Metrics


def _writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError('--tensorboard needs the tensorboard package: pip install "imgclf[tensorboard]"') from None
    return SummaryWriter(log_dir=str(log_dir))


class TrainingLogger:
    """Scalars during training.

    Args:
        log_dir: The run's ``tensorboard`` folder.
        every: Log the step loss every this many steps.
        first_step: Global step to start counting at (for a resumed run).
    """

    def __init__(self, log_dir: Path, *, every: int = 20, first_step: int = 0):
        self.writer = _writer(log_dir)
        self.every, self.global_step = every, first_step

    def step(self, loss: torch.Tensor, lr: float) -> None:
        """Called after every optimizer step with the batch loss (a device tensor)."""
        self.global_step += 1
        if self.global_step % self.every == 0:
            self.writer.add_scalar("train/loss_step", float(loss), self.global_step)
            self.writer.add_scalar("train/lr", lr, self.global_step)

    def epoch(self, row: dict[str, float]) -> None:
        """Called after every epoch with its history row."""
        epoch = int(row["epoch"])
        for name in ("loss", "accuracy"):
            self.writer.add_scalar(f"{name}/train", row[f"train_{name}"], epoch)
            self.writer.add_scalar(f"{name}/val", row[f"val_{name}"], epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        elif value is None:
            flat[name] = "none"
        else:
            flat[name] = str(value)
    return flat


def log_results(log_dir: Path, config: dict[str, Any], metrics: Metrics, figures: dict[str, Any]) -> None:
    """Figures as images and the hyperparameters with the final metrics.

    Args:
        log_dir: The run's ``tensorboard`` folder.
        config: The resolved configuration as nested dicts.
        metrics: The run's ``metrics.json`` (:func:`imgclf.record.read_metrics`).
        figures: ``{name: matplotlib Figure}`` to log as images.
    """
    writer = _writer(log_dir)
    for name, figure in figures.items():
        writer.add_figure(f"figures/{name}", figure, close=False)
    final: dict[str, float] = {}
    if metrics.clean:
        final.update({"test/accuracy": metrics.clean.accuracy, "test/macro_f1": metrics.clean.macro_f1,
                      "test/balanced_accuracy": metrics.clean.balanced_accuracy})
    if metrics.training:
        final["val/best_accuracy"] = metrics.training.best_val_accuracy
    for row in metrics.robustness:
        final[f"robust/{row.attack}_eps{row.eps:.4g}"] = row.accuracy
    writer.add_hparams(_flat(config), final, run_name=".")
    writer.close()
