"""What every stage works on: the parts of one run (:class:`RunParts`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imgclf.distributed import Distributed
from imgclf.errors import UsageError
from imgclf.runtime import progress_callback

if TYPE_CHECKING:
    import torch

    from imgclf.config import RunConfig
    from imgclf.data import DataSplits
    from imgclf.run_folder import RunFolder, RunLog
    from imgclf.settings import Settings
    from imgclf.training import TrainResult


@dataclass(eq=False, repr=False)  # (identity equality and a short repr: a run holds a model and data)
class RunParts:
    """One run's folder, settings, data and model, as the stages take them.

    Attributes:
        folder: The run folder (None in the processes other than rank 0 of a distributed run).
        settings: The typed settings (:func:`imgclf.settings.resolve`).
        data: The train/val/test splits the model was trained on.
        model: The model, ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``; in eval mode
            after training. It may be replaced (e.g. by a wrapped model) before the attack stage.
        device: Where the stages compute.
        log: Prints progress lines (unless quiet) and keeps them in ``log.txt``.
        quiet: No progress bars.
        dist: This process's place under ``torchrun`` (an evaluation is shared by the processes; only
            rank 0 writes).
        train_result: The training result, when this process trained or resumed the run; else None.
    """

    folder: RunFolder | None
    settings: Settings
    data: DataSplits
    model: torch.nn.Module
    device: torch.device
    log: RunLog
    quiet: bool = False
    dist: Distributed = field(default_factory=Distributed)
    train_result: TrainResult | None = None

    @property
    def config(self) -> RunConfig:
        """The configuration with the data-dependent defaults filled in (what ``config.yaml`` holds)."""
        return self.settings.config

    def writes(self) -> RunFolder:
        """The run folder, which this process writes.

        Raises:
            UsageError: In a process other than rank 0 of a distributed run, which has no folder.
        """
        if self.folder is None:
            raise UsageError("this process is not rank 0 of the distributed run: it writes no run folder")
        return self.folder


def progress_bar(parts: RunParts, description: str, unit: str) -> AbstractContextManager[Callable[[int, int], None]]:
    """A progress bar for one stage's work (:func:`imgclf.runtime.progress_callback`; none with ``quiet``)."""
    return progress_callback(desc=description, unit=unit, leave=False, quiet=parts.quiet)
