"""The report stage: figures and one self-contained ``report.html`` from a run folder.

It renders what the earlier stages saved (``metrics.json``, ``history.csv``,
``samples.npz``, ``adversarial.npz``, ``config.yaml``) and computes nothing.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure

from imgclf.report.plots import (
    adversarial_figure,
    confusion_matrix_figure,
    embed_figures,
    eps_label,
    prediction_grid,
    robustness_curve,
    training_curves,
)
from imgclf.run_folder import CLASSIFIER_CONFIG, RunFolder, atomic_write_text


def percent(value: float | None) -> str:
    """A fraction as ``"12.34%"``, or ``"–"`` for None."""
    return "–" if value is None else f"{100 * value:.2f}%"


def _input_shape(metrics: dict, info: dict) -> list[int]:
    """``(C, H, W)`` from ``model.json``, else from ``metrics.json`` (runs on features), else zeros."""
    return info.get("input_shape") or (metrics.get("data") or {}).get("input_shape") or [0, 0, 0]


def build_figures(folder: RunFolder) -> dict[str, Figure]:
    """Every figure the run folder has the data for, by name (in report order)."""
    metrics = folder.read_json("metrics.json", default={})
    info = folder.read_json("model.json", default={})
    history = folder.read_csv("history.csv")
    class_names = metrics.get("class_names") or info.get("class_names") or []
    colour = _input_shape(metrics, info)[0] == 3
    figures: dict[str, Figure] = {}
    if history:
        figures["training_curves"] = (training_curves(history))
    clean = metrics.get("clean")
    if clean:
        figures["confusion_matrix"] = (confusion_matrix_figure(clean["confusion_matrix"], class_names))
    samples = folder.read_arrays("samples.npz")
    if samples is not None and len(samples["labels"]):
        figures["predictions"] = (prediction_grid(samples["images"], samples["labels"], samples["predictions"],
                                           class_names, title="Random test images (wrong predictions in red)"))
    if samples is not None and len(samples["error_labels"]):
        figures["mistakes"] = (prediction_grid(samples["error_images"], samples["error_labels"],
                                        samples["error_predictions"], class_names,
                                        title="Misclassified test images"))
    robustness = metrics.get("robustness") or []
    attack_info = metrics.get("attack", {})
    if robustness:
        figures["robustness"] = (robustness_curve(robustness, attack_info.get("clean_accuracy", float("nan")), colour=colour))
    adversarial = folder.read_arrays("adversarial.npz")
    if adversarial is not None and any(key.startswith("adv_") for key in adversarial):
        figures["adversarial"] = (adversarial_figure(adversarial, class_names, colour=colour))
    return figures


def write_report(folder: RunFolder) -> Path:
    """Write ``figures/*.png`` and ``report.html`` for the run in ``folder``.

    Sections whose inputs are missing (for example no attack stage yet) are
    left out.

    Returns:
        The path of ``report.html``.
    """
    metrics = folder.read_json("metrics.json", default={})
    info = folder.read_json("model.json", default={})
    class_names = metrics.get("class_names") or info.get("class_names") or []
    input_shape = _input_shape(metrics, info)
    colour = input_shape[0] == 3
    figures = embed_figures(build_figures(folder), folder.figures)
    clean = metrics.get("clean")
    robustness = metrics.get("robustness") or []
    attack_info = metrics.get("attack", {})

    training = metrics.get("training", {})
    cards = [{"label": "test accuracy", "value": percent(clean["accuracy"]) if clean else "–"}]
    if training.get("adversarial"):
        trained = training["adversarial"]
        cards.append({"label": f"trained with {trained['recipe']} at eps {eps_label(trained['eps'], colour)}",
                      "value": percent(trained["best_robust_val_accuracy"]) + " robust val"})
    if clean:
        cards.append({"label": "macro F1", "value": f"{clean['macro_f1']:.4f}"})
        cards.append({"label": "balanced accuracy", "value": percent(clean["balanced_accuracy"])})
    worst_rows = [row for row in robustness if row["attack"] == "worst-case"]
    for attack in dict.fromkeys(row["attack"] for row in robustness if row["attack"] != "worst-case"):
        largest = max((row for row in robustness if row["attack"] == attack), key=lambda row: row["eps"])
        cards.append({
            "label": f"{attack.upper()} accuracy at eps {eps_label(largest['eps'], colour)}",
            "value": percent(largest["accuracy"]),
        })
    if worst_rows and len({row["attack"] for row in robustness}) > 2:
        largest = max(worst_rows, key=lambda row: row["eps"])
        cards.append({"label": f"worst-case robust accuracy at eps {eps_label(largest['eps'], colour)}",
                      "value": percent(largest["accuracy"])})
    checks = attack_info.get("checks", [])
    if checks:
        failed = sum(check["status"] == "failed" for check in checks)
        cards.append({"label": "sanity checks failed", "value": f"{failed} of {len(checks)}"})
    timing = {key: f"{value:.1f} s" for key, value in metrics.get("timing", {}).items()}
    environment = jinja_environment().get_template("report.html.j2")
    from imgclf import __version__

    html = environment.render(
        model=metrics.get("model", info.get("model", "?")),
        dataset=metrics.get("dataset", info.get("dataset", "?")),
        num_classes=len(class_names),
        input_shape="×".join(str(v) for v in input_shape),
        seed=metrics.get("seed", "?"),
        run_name=folder.path.name,
        inputs=metrics.get("inputs"),
        cards=cards,
        notes=metrics.get("data_notes", []),
        figures=figures,
        best_val=percent(training.get("best_val_accuracy")),
        adversarial=training.get("adversarial"),
        best_epoch=training.get("best_epoch", "?"),
        clean=clean,
        clean_n=clean["n"] if clean else None,
        robustness=[{**row, "eps_label": eps_label(row["eps"], colour)} for row in robustness],
        robustness_warnings=attack_info.get("warnings", []),
        checks=checks,
        attack_skipped=attack_info.get("skipped", []),
        attack_norm={"linf": "L-inf", "l2": "L2"}.get(attack_info.get("norm", "linf"), "L-inf"),
        attack_n=attack_info.get("n"),
        attack_clean=attack_info.get("clean_accuracy", float("nan")),
        timing=timing,
        environment=metrics.get("environment", {}),
        config_text=next((path.read_text(encoding="utf-8") for path in (folder.config_path,
                                                                         folder.file(CLASSIFIER_CONFIG))
                          if path.is_file()), ""),
        version=__version__,
    )
    path = folder.file("report.html")
    atomic_write_text(path, html)
    return path


def jinja_environment() -> Environment:
    """The Jinja2 environment over imgclf's packaged templates (HTML autoescaped)."""
    return Environment(loader=PackageLoader("imgclf", "report/templates"), autoescape=select_autoescape(["html", "j2"]))
