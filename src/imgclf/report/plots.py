"""Figures of a run. Each function returns a :class:`matplotlib.figure.Figure`;
:func:`save_figure` writes it. Nothing is ever shown on screen, and pyplot's
global state is never used."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imgclf.attacks.registry import NORM_LABELS
from imgclf.attacks.results import WORST_CASE, RobustnessEntry
from imgclf.calibration import CalibrationMetrics
from imgclf.certification.evaluation import CertifiedRow
from imgclf.run_folder import atomic_write_bytes

WRONG = "#c0392b"
RIGHT = "#1e8449"


def save_figure(figure: Figure, path: Path, *, dpi: int = 110) -> bytes:
    """Write ``figure`` as PNG to ``path`` atomically; return the PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return data


def embed_figures(figures: dict[str, Figure], folder: Path) -> dict[str, str]:
    """Save each figure as ``folder/NAME.png`` and return its PNG as base64 text, by name,
    for embedding in a self-contained HTML page (a figure under two names is drawn once)."""
    drawn: dict[int, bytes] = {}
    encoded = {}
    for name, figure in figures.items():
        if id(figure) in drawn:
            atomic_write_bytes(folder / f"{name}.png", drawn[id(figure)])
        else:
            drawn[id(figure)] = save_figure(figure, folder / f"{name}.png")
        encoded[name] = base64.b64encode(drawn[id(figure)]).decode("ascii")
    return encoded


def _as_display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` in [0, 1] -> ``(H, W)`` with a grey colour map, or ``(H, W, 3)``."""
    image = np.clip(image, 0.0, 1.0)
    if image.shape[0] == 1:
        return image[0], "gray"
    return image.transpose(1, 2, 0), None  # (C, H, W) -> (H, W, C)


def training_curves(history: Sequence[dict[str, float]], probes: Sequence[dict[str, float]] = ()) -> Figure:
    """Loss and accuracy per epoch, training and validation, side by side; under
    adversarial training the accuracy panel adds the robust (PGD) and FGSM
    validation accuracy, and its training accuracy is on adversarial examples.

    ``probes`` (``probes.csv``: :attr:`imgclf.defenses.OverfitMonitor.probes`) adds the robust validations
    inside epochs at their fractional epoch, and marks those of epochs rolled back after catastrophic
    overfitting, which the per-epoch curves no longer hold."""
    with_lr = bool(history) and "lr" in history[0]
    figure = Figure(figsize=(13 if with_lr else 10, 3.8), layout="constrained")
    axes = figure.subplots(1, 3 if with_lr else 2)
    loss_ax, acc_ax = axes[0], axes[1]
    epochs = [row["epoch"] for row in history]
    adversarial = "robust_val_accuracy" in history[0] if history else False
    for ax, key, title in ((loss_ax, "loss", "Loss (cross-entropy)"), (acc_ax, "accuracy", "Top-1 accuracy")):
        train_label = "train (adversarial)" if adversarial else "train"
        ax.plot(epochs, [row[f"train_{key}"] for row in history], "o-", label=train_label)
        ax.plot(epochs, [row[f"val_{key}"] for row in history], "s-", label="validation (clean)" if adversarial
                else "validation")
        ax.set_title(title)
    for column, label, marker in (("robust_val_accuracy", "validation (PGD)", "^-"),
                                  ("fgsm_val_accuracy", "validation (FGSM)", "v--")):
        if history and column in history[0]:
            acc_ax.plot(epochs, [row[column] for row in history], marker, label=label)
    _probe_points(acc_ax, probes)
    if with_lr:
        lr_ax = axes[2]
        lr_ax.plot(epochs, [row["lr"] for row in history], "o-", color="C2")
        lr_ax.set_title("Learning rate (at the end of each epoch)")
        lr_ax.set_yscale("log" if min(row["lr"] for row in history) > 0 else "linear")
    for ax in axes:
        ax.set_xlabel("epoch")
        if 0 < len(epochs) <= 15:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        first = min([*epochs, *(row["progress"] + 0.4 for row in probes if "progress" in row)], default=1)
        ax.set_xlim(first - 0.5, max(epochs, default=1) + 0.5)  # one epoch: an axis around it; probes inside
        ax.grid(alpha=0.3)
    loss_ax.legend()
    acc_ax.legend()
    if len(epochs) == 1:
        figure.suptitle("One epoch: each curve is a single point", fontsize=10)
    return figure


def _probe_points(ax: Axes, probes: Sequence[dict[str, float]]) -> None:
    """The probes inside epochs (PGD, FGSM) as small points, and the rolled-back ones as crosses."""
    probes = [row for row in probes if {"progress", "kept"} <= row.keys()]  # a damaged file draws no points
    if not any(row["progress"] != round(row["progress"]) or not row["kept"] for row in probes):
        return  # one probe per epoch, all kept: the curves show them
    for kept, marker, what in ((1.0, ".", "probe"), (0.0, "x", "rolled back")):
        rows = [row for row in probes if row["kept"] == kept]
        for column, colour, attack in (("robust_val_accuracy", "C2", "PGD"), ("fgsm_val_accuracy", "C3", "FGSM")):
            if rows and column in rows[0]:
                ax.plot([row["progress"] for row in rows], [row[column] for row in rows], marker, color=colour,
                        alpha=0.6, linestyle="none", label=f"{what} ({attack})")


def lr_finder_figure(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], *,
                     suggestion: float, minimum_lr: float) -> Figure:
    """The learning-rate range test: training loss against learning rate (log scale), each batch's and
    the running median, with the suggested rate and the rate of the lowest median marked."""
    figure = Figure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    finite = [v for v in losses if np.isfinite(v)]
    ax.plot(lrs, losses, color="0.7", linewidth=0.8, label="loss of each batch")
    ax.plot(lrs, smoothed, color="C0", linewidth=2, label="running median")
    ax.axvline(suggestion, color=RIGHT, linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.axvline(minimum_lr, color=WRONG, linestyle=":", label=f"lowest loss at lr {minimum_lr:.2g}")
    if finite:  # the divergence at the end would squash the curve: up to the first tenth's highest loss
        low, high = min(finite), max(finite[: max(1, len(finite) // 10)])
        high = max(high, low * 1.5)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.15 * (high - low))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title("Learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return figure


def reliability_figure(panels: Sequence[tuple[str, CalibrationMetrics, CalibrationMetrics | None]]) -> Figure:
    """Reliability diagrams (Guo et al. 2017), one panel per ``(title, metrics, scaled)``: per confidence
    bin, the accuracy as a bar and the gap to the bin's mean confidence shaded, against the diagonal of
    perfect calibration; ``scaled`` (after temperature scaling, or None) as a line of points. The share of
    examples per bin is drawn along the bottom."""
    figure = Figure(figsize=(min(12.0, 4.2 * len(panels)), 4.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)[0])
    for ax, (title, metrics, scaled) in zip(axes, panels, strict=True):
        width = metrics.bins[0].upper - metrics.bins[0].lower
        filled = [b for b in metrics.bins if b.count and b.accuracy is not None and b.confidence is not None]
        centres = [(b.lower + b.upper) / 2 for b in filled]
        accuracy = [float(b.accuracy or 0.0) for b in filled]
        ax.bar(centres, accuracy, width=width * 0.95, color="C0", edgecolor="white", label="accuracy")
        confidence = [float(b.confidence or 0.0) for b in filled]
        ax.bar(centres, [abs(c - a) for c, a in zip(confidence, accuracy, strict=True)],
               bottom=[min(c, a) for c, a in zip(confidence, accuracy, strict=True)], width=width * 0.95,
               fill=False, hatch="///", edgecolor=WRONG, linewidth=0.8, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        share = [b.count / metrics.n for b in filled]
        ax.bar(centres, [0.12 * v / max(share) for v in share], width=width * 0.95, color="0.55",
               label="share of examples")
        if scaled is not None:
            points = [((b.lower + b.upper) / 2, b.accuracy) for b in scaled.bins if b.count]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=RIGHT, markersize=4,
                    label=f"after temperature {scaled.temperature:.2f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top softmax probability)")
        ax.set_ylabel("accuracy")
        ece = f"ECE {100 * metrics.ece:.2f}%" + (f" -> {100 * scaled.ece:.2f}%" if scaled is not None else "")
        ax.set_title(f"{title}\n{ece}, n = {metrics.n:,}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    return figure


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> Figure:
    """Confusion matrix: rows true class, columns predicted; colour = share of the row."""
    counts = np.asarray(matrix)
    k = len(class_names)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    size = min(12.0, 3.0 + 0.45 * k)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix (test split)")
    return figure


def eps_label(eps: float, colour: bool) -> str:
    """``8/255`` for colour data when eps is a whole number of grey levels, else ``0.1``."""
    if colour and eps > 0 and abs(eps * 255 - round(eps * 255)) < 1e-6:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


def robustness_curve(entries: Sequence[RobustnessEntry], clean_accuracy: float, *, colour: bool,
                     radii: np.ndarray | None = None, minimal_label: str = "minimal norm") -> Figure:
    """Accuracy against eps, one line per attack (each its own marker) over the worst case as a wide grey band,
    with the clean accuracy as reference; with ``radii`` (each example's smallest adversarial radius, ``(n,)`` in
    pixel units, 0 for a misclassified example, inf where none was found) also the continuous curve they imply,
    a step line: at each eps the share of radii larger than it."""
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    if radii is not None and len(radii) and entries:
        largest = max(e.eps for e in entries)
        grid = np.unique(np.concatenate([[0.0, largest], radii[np.isfinite(radii) & (radii <= largest)]]))
        ax.step(grid, [(radii > e).mean() for e in grid], where="post", color="black", linewidth=1.2,
                label=f"{minimal_label} (curve)", zorder=2)
    attacks = list(dict.fromkeys(entry.attack for entry in entries))
    markers = iter(["o", "s", "^", "v", "D", "P", "X", "*"] * 4)
    for name in attacks:
        if name == WORST_CASE and len(attacks) <= 2:
            continue  # one attack: its worst case is itself
        points = sorted((e.eps, e.accuracy) for e in entries if e.attack == name)
        steps = next(e.steps for e in entries if e.attack == name)
        label = name.upper() + (f"-{steps}" if name.startswith("pgd") else "")
        if name == WORST_CASE:  # a wide band underneath, so an attack that equals it stays visible on top
            ax.plot([p[0] for p in points], [p[1] for p in points], color="black", alpha=0.25, linewidth=7,
                    solid_capstyle="round", label=label, zorder=1)
        else:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=next(markers), linestyle="-",
                    label=label, zorder=3)
    ax.axhline(clean_accuracy, color="grey", linestyle="--", linewidth=1, label="clean")
    eps_values = sorted({e.eps for e in entries})
    ax.set_xticks(eps_values, labels=[eps_label(e, colour) for e in eps_values])
    ax.set_ylim(-0.02, 1.02)
    norm = NORM_LABELS.get(entries[0].norm if entries else "linf", "L-inf")
    ax.set_xlabel(f"eps ({norm}, pixel units)")
    ax.set_ylabel("accuracy under attack")
    ax.set_title(f"Robustness (n = {entries[0].n if entries else 0})")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def certified_figure(radius: np.ndarray, correct: np.ndarray, rows: Sequence[CertifiedRow], *, sigma: float,
                     max_radius: float) -> Figure:
    """Certified accuracy against L2 radius (Cohen et al.'s figure: at each radius the share of examples predicted
    right with at least that certified radius, a step line from the per-example radii), the bracket's upper bounds
    as markers on the same axes (the smoothed classifier under SmoothAdv, the model under APGD-CE), and the
    largest certifiable radius as a dotted line.

    Args:
        radius: ``float64`` ``(N,)``: certified radii in pixel units (0 where abstained).
        correct: ``bool`` ``(N,)``: the certified prediction is the label.
        rows: The bracket at the radii asked for.
        sigma: The noise's standard deviation (for the title). max_radius: What ``n`` and ``alpha`` allow.
    """
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    largest = max([*(row.radius for row in rows), max_radius]) * 1.05
    kept = np.where(correct, radius, -1.0)  # wrong or abstained: below every radius
    # (each value holds on the interval up to its grid point: no certified radius lies inside one)
    grid = np.unique(np.concatenate([[0.0, largest], kept[(kept >= 0) & (kept <= largest)]]))
    ax.step(grid, [(kept >= r).mean() if len(kept) else 0.0 for r in grid], where="pre", color="black",
            linewidth=1.4, label="certified (lower bound)")
    at = [row.radius for row in rows]
    smoothed = [np.nan if row.smoothed_attack is None else row.smoothed_attack for row in rows]
    base = [np.nan if row.base_attack is None else row.base_attack for row in rows]
    if not np.isnan(smoothed).all():
        ax.plot(at, smoothed, marker="o", linestyle="--", color="#2471a3",
                label="smoothed, under SmoothAdv (upper bound)")
    if not np.isnan(base).all():
        ax.plot(at, base, marker="s", linestyle=":", color="#b9770e", label="model alone, under APGD-CE")
    ax.axvline(max_radius, color="grey", linestyle=":", linewidth=1, label="largest certifiable radius")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("L2 radius (pixel units)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Randomized smoothing, sigma {sigma:g} (n = {len(radius)})")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def prediction_grid(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
    *, columns: int = 8, title: str = "Test predictions (wrong ones in red)",
) -> Figure:
    """Test images with true and predicted class; wrong predictions in red with a red frame.

    Args:
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``.
        labels, predictions: ``int`` ``(N,)``.
    """
    n = len(images)
    rows = max(1, -(-n // columns))
    figure = Figure(figsize=(1.6 * columns, 2.0 * rows + 0.3), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for i in range(n):
        ax = axes[i]
        picture, cmap = _as_display(images[i])
        ax.imshow(picture, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        wrong = labels[i] != predictions[i]
        ax.set_title(f"true {class_names[labels[i]]}\npred {class_names[predictions[i]]}",
                     fontsize=9, color=WRONG if wrong else RIGHT)
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(WRONG)
                spine.set_linewidth(2.5)
    figure.suptitle(title, fontsize=11)
    return figure


def adversarial_figure(examples: dict[str, np.ndarray], class_names: Sequence[str], *, colour: bool) -> Figure:
    """Clean images with their predictions, then for each attack the perturbation
    (amplified to full contrast, grey = 0, as the title says) and the adversarial image with its prediction.
    Only images classified correctly without attack are shown (all of them when none is).

    Args:
        examples: ``clean`` ``(M, C, H, W)`` in [0, 1], ``labels`` and
            ``clean_pred`` ``(M,)``, ``eps``, and per attack ``adv_<name>``
            ``(M, C, H, W)`` and ``pred_<name>`` ``(M,)``.
    """
    right = examples["clean_pred"] == examples["labels"]
    keep = right if right.any() else np.ones_like(right)  # (none right: show them all, wrong in red)
    shown = {key: value[keep] if np.ndim(value) and len(value) == len(right) else value
             for key, value in examples.items()}
    clean, labels, clean_pred = shown["clean"], shown["labels"], shown["clean_pred"]
    eps = float(examples["eps"])
    attacks = [key[4:] for key in examples if key.startswith("adv_")]
    n = len(clean)
    rows = 1 + 2 * len(attacks)
    figure = Figure(figsize=(1.6 * n, 1.75 * rows + 0.4), layout="constrained")
    axes = np.asarray(figure.subplots(rows, n, squeeze=False))

    def panel(ax, picture: np.ndarray, title: str, wrong: bool) -> None:
        shown, cmap = _as_display(picture)
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9, color=WRONG if wrong else "black")
        ax.axis("off")

    for i in range(n):
        panel(axes[0, i], clean[i], f"clean: {class_names[clean_pred[i]]}", clean_pred[i] != labels[i])
    for a, name in enumerate(attacks):
        adv, pred = shown[f"adv_{name}"], shown[f"pred_{name}"]
        delta = adv - clean
        scale = max(float(np.abs(delta).max()), 1e-12)
        for i in range(n):
            panel(axes[1 + 2 * a, i], 0.5 + 0.5 * delta[i] / scale, f"{name.upper()} perturbation", False)
            panel(axes[2 + 2 * a, i], adv[i], f"{name.upper()}: {class_names[pred[i]]}", pred[i] != labels[i])
    skipped = int((~right).sum()) if right.any() else 0
    figure.suptitle(
        f"Adversarial examples at eps = {eps_label(eps, colour)} (red = misclassified); perturbations amplified "
        "to full contrast, grey = 0" + (f"; {skipped} image(s) already wrong without attack left out" if skipped
                                        else ""), fontsize=10,
    )
    return figure


def optimization_history_figure(trials: Sequence[dict]) -> Figure:
    """A sweep's objective per trial: finished trials as dots, pruned ones at their last
    reported value as crosses, and the best value so far as a step line.

    Args:
        trials: Dicts with ``number``, ``state`` (``complete``, ``pruned``, ``fail``),
            ``value`` and ``last_val_accuracy``.
    """
    figure = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = figure.subplots()
    done = sorted((t["number"], t["value"]) for t in trials if t["state"] == "complete")
    pruned = [(t["number"], t["last_val_accuracy"]) for t in trials
              if t["state"] == "pruned" and t["last_val_accuracy"] is not None]
    if done:
        ax.plot([n for n, _ in done], [v for _, v in done], "o", label="finished trial")
        best, running = [], float("-inf")
        for _, value in done:
            running = max(running, value)
            best.append(running)
        last = max(t["number"] for t in trials)  # the line runs to the last trial, pruned or not
        ax.step([n for n, _ in done] + [last], best + best[-1:], where="post", color="black", linewidth=1.6,
                label="best so far")
    if pruned:
        ax.plot([n for n, _ in pruned], [v for _, v in pruned], "x", color=WRONG, label="pruned (last epoch)")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend()
    return figure


def importance_figure(importances: dict[str, float]) -> Figure:
    """Horizontal bars of each searched setting's importance (fANOVA; they sum to 1)."""
    figure = Figure(figsize=(6.5, 0.9 + 0.45 * len(importances)), layout="constrained")
    ax = figure.subplots()
    names = list(importances)[::-1]  # most important at the top
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance for validation accuracy (fANOVA)")
    ax.set_xlim(0, 1)
    ax.set_title("Parameter importances")
    ax.grid(alpha=0.3, axis="x")
    return figure


def corruption_figure(accuracy: np.ndarray, corruptions: Sequence[str], severities: Sequence[int],
                      clean_accuracy: float) -> Figure:
    """Accuracy under common corruptions: a heat map of corruption (rows) by severity (columns), each cell
    labelled in percent, beside the mean over the corruptions per severity with the clean accuracy.

    Args:
        accuracy: ``(K, S)`` fractions in ``[0, 1]`` (NaN where not evaluated).
        corruptions: The ``K`` row labels. severities: The ``S`` column labels.
        clean_accuracy: On the same images uncorrupted, in ``[0, 1]``.
    """
    k, s = accuracy.shape
    figure = Figure(figsize=(7.5, 1.2 + 0.32 * k), layout="constrained")
    heat_ax, mean_ax = figure.subplots(1, 2, width_ratios=[1.6, 1])
    shown = heat_ax.imshow(100 * accuracy, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for row in range(k):
        for column in range(s):
            value = accuracy[row, column]
            if np.isfinite(value):
                heat_ax.text(column, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=9)
    heat_ax.set_xticks(range(s), [str(v) for v in severities], fontsize=9)
    heat_ax.set_yticks(range(k), list(corruptions), fontsize=9)
    heat_ax.set_xlabel("severity", fontsize=9)
    heat_ax.set_title("Top-1 accuracy (%)", fontsize=10)
    figure.colorbar(shown, ax=heat_ax, shrink=0.6, pad=0.02).ax.tick_params(labelsize=8)
    means = np.nanmean(accuracy, axis=0)
    mean_ax.plot(list(severities), 100 * means, "o-", color="#2c3e50", label="mean over corruptions")
    mean_ax.fill_between(list(severities), 100 * np.nanmin(accuracy, axis=0), 100 * np.nanmax(accuracy, axis=0),
                         color="#95a5a6", alpha=0.3, linewidth=0, label="range over corruptions")
    mean_ax.axhline(100 * clean_accuracy, color=RIGHT, linestyle="--", linewidth=1.2, label="clean")
    mean_ax.set_xticks(list(severities))
    mean_ax.set_ylim(0, 100)
    mean_ax.set_xlabel("severity", fontsize=9)
    mean_ax.set_ylabel("top-1 accuracy (%)", fontsize=9)
    mean_ax.set_title("Mean over corruptions", fontsize=10)
    mean_ax.tick_params(labelsize=8)
    mean_ax.grid(alpha=0.3)
    mean_ax.legend(fontsize=8, loc="lower left")
    return figure


def corruption_samples_figure(images: np.ndarray, label: int, predictions: np.ndarray, corruptions: Sequence[str],
                              severities: Sequence[int], class_names: Sequence[str]) -> Figure:
    """One test image under every corruption: a row per corruption, the clean image then each severity, each
    tile captioned with the prediction (red where wrong). Drawn as one mosaic on one set of axes (90 small
    axes would take seconds to lay out).

    Args:
        images: ``float32`` ``(K, S + 1, C, H, W)`` in ``[0, 1]``. label: The true class.
        predictions: ``int`` ``(K, S + 1)``.
    """
    k, columns, channels, h, w = images.shape
    gap, caption = max(2, w // 8), max(8, h // 2)  # pixels between tiles, and above each for its caption
    tile_h, tile_w = h + caption, w + gap
    mosaic = np.ones((k * tile_h, columns * tile_w, 3))  # (rows of tiles, columns of tiles, RGB), white
    for row in range(k):
        for column in range(columns):
            picture = np.clip(images[row, column], 0, 1).transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
            top, left = row * tile_h + caption, column * tile_w
            mosaic[top:top + h, left:left + w] = picture if channels == 3 else picture.repeat(3, axis=2)
    width = 1.1 * columns  # inches of mosaic
    figure = Figure(figsize=(width + 1.3, width * mosaic.shape[0] / mosaic.shape[1] + 0.7), layout="constrained")
    ax = figure.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    for row in range(k):
        for column in range(columns):
            predicted = int(predictions[row, column])
            name = class_names[predicted] if predicted < len(class_names) else str(predicted)
            ax.text(column * tile_w + w / 2, row * tile_h + caption * 0.55, name, ha="center", va="center",
                    fontsize=8, color=RIGHT if predicted == label else WRONG)
    ax.set_xticks([c * tile_w + w / 2 for c in range(columns)],
                  ["clean"] + [f"severity {s}" for s in severities], fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks([r * tile_h + caption + h / 2 for r in range(k)], list(corruptions), fontsize=9)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    true = class_names[label] if label < len(class_names) else str(label)
    figure.suptitle(f"One test image (true class: {true}) under each corruption, with the predictions", fontsize=10)
    return figure


def explanation_figure(arrays: dict[str, np.ndarray], class_names: Sequence[str], *, eps_text: str = "",
                       titles: Sequence[str] | None = None) -> Figure:
    """Test images and where the model looks: per column one image; rows the clean image with its prediction,
    its heat map over it, then (where given) the adversarial image and its heat map. Predictions in red where
    wrong.

    Args:
        arrays: ``clean`` ``(N, C, H, W)`` in ``[0, 1]``, ``labels``, ``clean_pred`` ``(N,)``, ``clean_maps``
            ``(N, H, W)`` in ``[0, 1]``, ``method`` and ``layer`` (strings); optionally ``adversarial``,
            ``adversarial_pred`` and ``adversarial_maps``.
        eps_text: The adversarial examples' eps as the report writes it.
        titles: A title per column (file names) above the predictions, or None.
    """
    clean, labels = arrays["clean"], arrays["labels"]
    stages = [("clean", clean, arrays["clean_pred"], arrays["clean_maps"])]
    if "adversarial" in arrays:
        stages.append((f"adversarial{' eps ' + eps_text if eps_text else ''}", arrays["adversarial"],
                       arrays["adversarial_pred"], arrays["adversarial_maps"]))
    n = len(clean)
    figure = Figure(figsize=(max(4.0, 1.3 * n), 1.45 * 2 * len(stages) + 0.5), layout="constrained")
    axes = np.asarray(figure.subplots(2 * len(stages), n, squeeze=False))
    for s, (what, images, predictions, maps) in enumerate(stages):
        for i in range(n):
            picture, cmap = _as_display(images[i])
            name = class_names[predictions[i]] if predictions[i] < len(class_names) else str(predictions[i])
            top, bottom = axes[2 * s, i], axes[2 * s + 1, i]
            top.imshow(picture, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            title = f"{what}:\n{name}" if i == 0 and len(stages) > 1 else name
            if titles is not None:
                title = f"{titles[i][:18]}\n{name}"
            top.set_title(title, fontsize=9, color=WRONG if predictions[i] != labels[i] else "black")
            bottom.imshow(picture, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            bottom.imshow(maps[i], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            for ax in (top, bottom):
                ax.axis("off")
    how = f"Grad-CAM at {arrays.get('layer', '')}" if str(arrays["method"]) == "grad-cam" else \
        "input-gradient saliency"
    figure.suptitle(f"Where the model looks ({how}; red = most), for the class it predicts", fontsize=10)
    return figure
