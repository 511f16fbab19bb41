"""The explain stage: what the model looks at on a few fixed test images, clean and adversarial, for the report
(``explanations.npz``)."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from imgclf import record
from imgclf.errors import UsageError, first_line
from imgclf.evaluation import logits_of
from imgclf.record import Metrics, read_metrics
from imgclf.report.plots import explanation_figure
from imgclf.stages.parts import RunParts


@dataclass
class Explained:
    """What :func:`explain_images` wrote: ``explanations.npz`` at :attr:`path`, and its maps drawn as the report
    draws them (Jupyter shows the figure; ``os.fspath`` and ``str`` give the path).

    Attributes:
        path: ``explanations.npz``. arrays: Its arrays (see :func:`imgclf.report.plots.explanation_figure`).
        class_names: The ``K`` class names, for the predictions.
    """

    path: Path
    arrays: dict[str, np.ndarray]
    class_names: list[str]

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def figure(self) -> Figure:
        """The images with their heat maps, clean and (where attacked) adversarial, with the predictions."""
        eps = f"{float(self.arrays['eps']):g}" if "eps" in self.arrays else ""
        return explanation_figure(self.arrays, self.class_names, eps_text=eps)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()


def explain_images(parts: RunParts, *, eps: float | None = None, method: str = "auto", layer: str | None = None,
                   count: int = 8) -> Explained:
    """Saliency maps (:func:`imgclf.explanations.explain`: Grad-CAM, or saliency where Grad-CAM does not apply)
    on ``count`` fixed test images, clean and adversarial (see :meth:`imgclf.pipeline.Run.explain`); writes
    ``explanations.npz`` and returns it as :class:`Explained` (its figure in Jupyter).

    Raises:
        UsageError: On an eps the evaluation did not attack at, an unknown method or layer, or Captum missing.
    """
    from imgclf.explanations import explain

    folder = parts.writes()
    clean, adversarial, labels, positions, arrays = _chosen(parts, read_metrics(folder.path), eps, count)
    parts.model.eval()
    before = explain(parts.model, clean.to(parts.device), method=method, layer=layer)
    arrays.update(clean=clean.numpy(), labels=labels.numpy(), clean_pred=before.targets.numpy(),
                  clean_maps=before.maps.numpy(), test_positions=np.asarray(positions),
                  method=np.array(before.method), layer=np.array(before.layer or ""))
    if adversarial is not None:
        after = explain(parts.model, adversarial.to(parts.device), method=method, layer=layer)
        arrays.update(adversarial=adversarial.numpy(), adversarial_pred=after.targets.numpy(),
                      adversarial_maps=after.maps.numpy())
    folder.write_arrays(record.EXPLANATIONS, **arrays)
    where = f" ({before.layer})" if before.layer else ""
    parts.log(f"explanations: {before.method}{where} on {len(clean)} test images"
              + (f", clean and adversarial at eps {float(arrays['eps']):g}" if adversarial is not None else ""))
    return Explained(folder.file(record.EXPLANATIONS), arrays, list(parts.data.spec.class_names))


def _chosen(parts: RunParts, metrics: Metrics, eps: float | None, count: int
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, np.ndarray, dict[str, Any]]:
    """The images to explain: ``count`` of the newest evaluation's subset that the model classifies correctly,
    one per class in turn, with their worst-case adversarial examples at ``eps`` (default: the report's
    headline eps); without an evaluation, test images chosen the same way, clean only.

    Returns:
        Clean images ``float32`` ``(n, C, H, W)`` in ``[0, 1]``, their adversarial examples (or None), labels
        ``int64`` ``(n,)``, test positions ``(n,)``, and the arrays to save so far (the eps).
    """
    from imgclf.report.html import telling_eps

    data, latest = parts.data, metrics.latest
    stored_path = record.evaluation_folder(parts.writes().path, latest.key) / record.ADVERSARIAL_IMAGES \
        if latest else None
    if stored_path is None or not stored_path.is_file():
        positions = one_per_class(np.arange(len(data.test.labels)), data.test.labels.numpy(), count)
        return data.test.float_images(positions), None, data.test.labels[positions], positions, {}
    stored = _stored_examples(stored_path, len(data.test.labels))
    radii = [float(e) for e in stored["eps"]]
    chosen = telling_eps(metrics) if eps is None else float(eps)
    if chosen is None or not any(abs(r - chosen) < 1e-6 for r in radii):  # (stored as float32)
        shown = ", ".join(f"{r:g}" for r in radii)
        raise UsageError(f"the newest evaluation attacked at eps {shown}; choose one of them (or attack at "
                         f"{eps} first)" if eps is not None else f"no eps above 0 in the newest evaluation "
                         f"({shown}) to explain adversarial examples at; attack at one first")
    at = next(i for i, r in enumerate(radii) if abs(r - chosen) < 1e-6)
    positions = stored["test_positions"].numpy()
    clean = data.test.float_images(positions)
    right = (logits_of(parts.model, clean).argmax(1) == stored["labels"]).numpy()
    rows = one_per_class(np.flatnonzero(right) if right.any() else np.arange(len(positions)),
                         stored["labels"].numpy(), count)
    return (clean[rows], stored["images"][at][rows].float(), stored["labels"][rows], positions[rows],
            {"eps": np.float64(chosen)})


def one_per_class(rows: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``rows`` (positions into ``labels``), one per class in turn: each class's first row in class
    order, then each class's second, and so on."""
    classes = labels[rows]
    rank = np.zeros(len(rows), dtype=np.int64)  # (len(rows),): each row's place among the rows of its class
    for value in np.unique(classes):
        rank[classes == value] = np.arange(np.sum(classes == value))
    return rows[np.lexsort((classes, rank))][:count]


def _stored_examples(path: Path, test_size: int) -> dict[str, Any]:
    """An evaluation's ``adversarial.pt`` (read with ``weights_only=True``: no code is unpickled), checked:
    ``eps`` ``(E,)``, ``test_positions`` and ``labels`` ``int64`` ``(N,)``, ``images`` ``(E, N, C, H, W)``.

    Raises:
        UsageError: If the file cannot be read or does not hold those tensors, with positions in the test split.
    """
    problem: str | None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        problem = "it is damaged, or holds pickled Python objects, which imgclf never loads"
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        problem = f"it cannot be read as saved tensors ({first_line(error, 120)})"
    else:
        problem = _examples_problem(stored, test_size)
    if problem:
        raise UsageError(f"{str(path)!r}: {problem}; restore it, or delete the evaluation's entry in metrics.json and "
                         "attack again")
    return stored


def _examples_problem(stored: object, test_size: int) -> str | None:
    """What is wrong with an ``adversarial.pt``'s content, or None."""
    keys = ("eps", "test_positions", "labels", "images")
    if not isinstance(stored, dict) or not all(isinstance(stored.get(key), torch.Tensor) for key in keys):
        return f"it does not hold the tensors {', '.join(keys)}"
    eps, positions, labels, images = (stored[key] for key in keys)
    n = len(positions)
    if eps.dim() != 1 or positions.dim() != 1 or labels.shape != (n,) or images.dim() != 5 \
            or images.shape[:2] != (len(eps), n):
        return (f"its shapes disagree (eps {tuple(eps.shape)}, test_positions {tuple(positions.shape)}, labels "
                f"{tuple(labels.shape)}, images {tuple(images.shape)}; images must be (eps, examples, C, H, W))")
    if n and (positions.min() < 0 or positions.max() >= test_size):
        return f"its test_positions run outside the test split's {test_size} images"
    return None
