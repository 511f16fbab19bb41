"""The report stage: figures and one self-contained ``report.html`` from a run folder.

It renders what the earlier stages saved (``metrics.json`` read through
:func:`imgclf.record.read_metrics`, ``history.csv``, ``samples.npz``,
``adversarial.npz``, ``config.yaml``) and computes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure

from imgclf import record
from imgclf.attacks.checks import advice
from imgclf.attacks.registry import NORM_LABELS
from imgclf.calibration import CalibrationMetrics, EpsCalibration
from imgclf.errors import UsageError, first_line
from imgclf.record import WORST_CASE, Evaluation, Metrics, ModelInfo, read_metrics, read_model_record
from imgclf.report.plots import (
    adversarial_figure,
    certified_figure,
    confusion_matrix_figure,
    corruption_figure,
    corruption_samples_figure,
    embed_figures,
    eps_label,
    explanation_figure,
    lr_finder_figure,
    prediction_grid,
    reliability_figure,
    robustness_curve,
    training_curves,
)
from imgclf.run_folder import RunFolder, atomic_write_text


def percent(value: float | None) -> str:
    """A fraction as ``"12.34%"``, or ``"–"`` for None."""
    return "–" if value is None else f"{100 * value:.2f}%"


def _input_shape(metrics: Metrics, info: ModelInfo | None) -> list[int]:
    """``(C, H, W)`` from ``model.json``, else from ``metrics.json`` (runs on features), else zeros."""
    if info is not None:
        return info.input_shape
    return (metrics.data.input_shape if metrics.data else None) or [0, 0, 0]


def _model_info(folder: RunFolder) -> ModelInfo | None:
    """``model.json``, checked (None for a classifier on features, which has none)."""
    path = folder.file(record.MODEL_INFO)
    return read_model_record(path) if path.is_file() else None


def _class_names(metrics: Metrics, info: ModelInfo | None) -> list[str]:
    return metrics.class_names or (info.class_names if info is not None else [])


def build_figures(folder: RunFolder) -> dict[str, Figure]:
    """Every figure the run folder has the data for, by name (in report order)."""
    return _figures(folder, read_metrics(folder.path), _model_info(folder))


def _figures(folder: RunFolder, metrics: Metrics, info: ModelInfo | None) -> dict[str, Figure]:
    """Every figure the folder's record allows, by name, in the report's order."""
    class_names = _class_names(metrics, info)
    colour = _input_shape(metrics, info)[0] == 3
    figures = _training_figures(folder, metrics)
    if metrics.clean:
        figures["confusion_matrix"] = confusion_matrix_figure(metrics.clean.confusion_matrix, class_names)
    figures.update(_sample_figures(folder, class_names))
    if metrics.calibration is not None:
        c = metrics.calibration
        panels: list[tuple[str, CalibrationMetrics, CalibrationMetrics | None]] = [
            ("Clean test images", c.test, c.test_scaled)]
        telling = _telling_calibration(metrics)
        if telling is not None:
            panels.append((f"Worst-case adversarial images, eps {eps_label(telling.eps, colour)}", telling.metrics,
                           None))
        figures["reliability"] = reliability_figure(panels)
    figures.update(_corruption_figures(folder, metrics, class_names))
    figures.update(_certification_figures(folder, metrics))
    explained = folder.read_arrays(record.EXPLANATIONS)
    if explained is not None and {"clean", "labels", "clean_pred", "clean_maps", "method"} <= set(explained):
        eps = float(explained["eps"]) if "eps" in explained else None
        figures["explanations"] = _drawn(folder.file(record.EXPLANATIONS), lambda: explanation_figure(
            {**explained, "labels": _labels(explained["labels"], class_names),
             "clean_pred": _labels(explained["clean_pred"], class_names)}, class_names,
            eps_text=eps_label(eps, colour) if eps is not None else ""))
    figures.update(_evaluation_figures(folder, metrics, class_names, colour))
    return figures


def _training_figures(folder: RunFolder, metrics: Metrics) -> dict[str, Figure]:
    """The training curves and the learning-rate range test, where the folder has them."""
    figures: dict[str, Figure] = {}
    history = folder.read_csv(record.HISTORY)
    if len(history) > 1:  # one epoch's curves are single points: the report gives its numbers instead
        figures["training_curves"] = training_curves(history, folder.read_csv(record.PROBES))
    curve = folder.read_csv(record.LR_FIND)
    if curve and metrics.lr_finder is not None:
        figures["lr_find"] = lr_finder_figure([row["lr"] for row in curve], [row["loss"] for row in curve],
                                              [row["smoothed"] for row in curve],
                                              suggestion=metrics.lr_finder.suggestion,
                                              minimum_lr=metrics.lr_finder.minimum_lr)
    return figures


def _sample_figures(folder: RunFolder, class_names: list[str]) -> dict[str, Figure]:
    """Random and misclassified test images with their predictions (``samples.npz``)."""
    figures: dict[str, Figure] = {}
    samples = folder.read_arrays(record.SAMPLES)
    samples_file = folder.file(record.SAMPLES)
    if samples is not None and len(_array(samples, "labels", samples_file)):
        figures["predictions"] = _drawn(samples_file, lambda: prediction_grid(
            samples["images"], _labels(samples["labels"], class_names), _labels(samples["predictions"], class_names),
            class_names, title="Random test images (wrong predictions in red)"))
    if samples is not None and len(_array(samples, "error_labels", samples_file)):
        figures["mistakes"] = _drawn(samples_file, lambda: prediction_grid(
            samples["error_images"], _labels(samples["error_labels"], class_names),
            _labels(samples["error_predictions"], class_names), class_names, title="Misclassified test images"))
    return figures


def _corruption_figures(folder: RunFolder, metrics: Metrics, class_names: list[str]) -> dict[str, Figure]:
    """Accuracy under each corruption and severity, and one image under all of them (``corruptions.npz``)."""
    figures: dict[str, Figure] = {}
    corrupted = metrics.corruptions
    if corrupted is None or not corrupted.entries:
        return figures
    names, levels = corrupted.corruptions, corrupted.severities
    table = np.array([[np.nan if (a := corrupted.accuracy(n, s)) is None else a for s in levels] for n in names])
    figures["corruptions"] = corruption_figure(table, [_corruption_title(n) for n in names], levels,
                                               corrupted.clean_accuracy)
    grid = folder.read_arrays(record.CORRUPTION_SAMPLES)
    if grid is not None and {"images", "label", "predictions", "corruptions", "severities"} <= set(grid):
        figures["corruption_samples"] = _drawn(folder.file(record.CORRUPTION_SAMPLES), lambda: (
            corruption_samples_figure(grid["images"], int(grid["label"]), _labels(grid["predictions"], class_names),
                                      [_corruption_title(str(n)) for n in grid["corruptions"]],
                                      [int(v) for v in grid["severities"]], class_names)))
    return figures


def _certification_figures(folder: RunFolder, metrics: Metrics) -> dict[str, Figure]:
    """Certified accuracy against L2 radius with the empirical bracket, for the newest certification
    (``certifications/KEY/certificates.npz``; from its rows alone where the file is gone)."""
    done = metrics.latest_certification
    if done is None:
        return {}
    file = record.certification_folder(folder.path, done.key) / record.CERTIFICATES
    arrays = RunFolder(file.parent).read_arrays(record.CERTIFICATES)
    if arrays is None:
        return {}
    return {"certified": _drawn(file, lambda: certified_figure(
        _array(arrays, "radius", file).astype(np.float64),
        _array(arrays, "prediction", file) == _array(arrays, "labels", file), done.rows, sigma=done.sigma,
        max_radius=done.max_radius))}


def _certification_view(metrics: Metrics) -> dict[str, object] | None:
    """What the report shows of the newest certification: its settings, the bracket per radius, the cost."""
    done = metrics.latest_certification
    if done is None:
        return None
    return {"c": done, "rows": [{"radius": f"{row.radius:g}", "certified": percent(row.certified),
                                 "smoothed": percent(row.smoothed_attack), "base": percent(row.base_attack),
                                 "bracket": row.bracket()} for row in done.rows],
            "attacked": any(row.smoothed_attack is not None for row in done.rows),
            "clean": percent(done.clean_accuracy), "abstained": percent(done.abstained),
            "steps": done.settings.get("attack_steps"), "samples": done.settings.get("attack_samples"),
            "attack_n": done.settings.get("attack_n"), "others": len(metrics.certifications) - 1}


def _evaluation_figures(folder: RunFolder, metrics: Metrics, class_names: list[str], colour: bool
                        ) -> dict[str, Figure]:
    """Each robustness evaluation's curve and adversarial examples, oldest first; the newest's also under the
    plain names ``robustness`` and ``adversarial``."""
    figures: dict[str, Figure] = {}
    for evaluation in metrics.evaluations:
        newest = evaluation is metrics.latest
        where = RunFolder(record.evaluation_folder(folder.path, evaluation.key))
        adversarial = where.read_arrays(record.ADVERSARIAL_EXAMPLES)
        if evaluation.robustness:
            found = evaluation.attack.minimal_norm
            radii = adversarial.get("minimal_radii") if adversarial is not None and found is not None else None
            if radii is not None and (radii.shape != (evaluation.attack.n,) or np.isnan(radii).any()
                                      or (radii < 0).any()):
                raise UsageError(f"{str(where.file(record.ADVERSARIAL_EXAMPLES))!r}: minimal_radii must be "
                                 f"{evaluation.attack.n} radii >= 0; restore the file or run the evaluation again")
            figure = robustness_curve(evaluation.robustness, evaluation.attack.clean_accuracy, colour=colour,
                                      radii=radii, minimal_label=found.attack.upper() if found else "")
            figures[f"robustness-{evaluation.key}"] = figure
            if newest:
                figures["robustness"] = figure
        if adversarial is not None and any(key.startswith("adv_") for key in adversarial):
            figure = _drawn(where.file(record.ADVERSARIAL_EXAMPLES),
                            functools.partial(adversarial_figure, adversarial, class_names, colour=colour))
            figures[f"adversarial-{evaluation.key}"] = figure
            if newest:
                figures["adversarial"] = figure
    return figures


def _drawn(file: Path, draw: Callable[[], Figure]) -> Figure:
    """The figure ``draw`` makes from ``file``'s arrays.

    Raises:
        UsageError: If the arrays have the wrong shapes or values for it (a damaged or foreign file), naming
            the file.
    """
    try:
        return draw()
    except (ValueError, IndexError, KeyError, TypeError) as error:
        raise UsageError(f"{str(file)!r} holds arrays of the wrong shape or values ({type(error).__name__}: "
                         f"{first_line(error)}); delete it and run the stage that wrote it again") from None


def _array(arrays: dict[str, np.ndarray], key: str, file: Path) -> np.ndarray:
    """``arrays[key]``, one dimension or more.

    Raises:
        UsageError: If the file lacks it or holds a scalar there."""
    value = arrays.get(key)
    if value is None or value.ndim == 0:
        raise UsageError(f"{str(file)!r} lacks the array {key!r}; delete it and run the stage that wrote it again")
    return value


def _labels(values: np.ndarray, class_names: list[str]) -> np.ndarray:
    """Class indices read from a file, checked to be integers in ``[0, K)``.

    Raises:
        ValueError: Otherwise (:func:`_drawn` names the file).
    """
    if values.dtype.kind not in "iu" or (values.size and (values.min() < 0 or values.max() >= len(class_names))):
        raise ValueError(f"class indices must be integers in [0, {len(class_names)})")
    return values


def _corruption_title(name: str) -> str:
    """A corruption's title (``Gaussian noise``), or its name where it is not registered here."""
    from imgclf.corruptions.registry import CORRUPTIONS

    return CORRUPTIONS[name].title if name in CORRUPTIONS else name


def _corruption_view(metrics: Metrics) -> dict[str, object] | None:
    """What the report shows of the corruption evaluation: per corruption its accuracy by severity, mean
    error, mean ECE and (with a baseline) corruption error; or None without one."""
    c = metrics.corruptions
    if c is None or not c.entries:
        return None
    rows = []
    for name in c.corruptions:
        entries = [e for e in c.entries if e.corruption == name]
        rows.append({"title": _corruption_title(name), "accuracy": {e.severity: percent(e.accuracy) for e in entries},
                     "error": percent(c.errors.get(name)), "ece": percent(sum(e.ece for e in entries) / len(entries)),
                     "ce": percent(c.corruption_errors[name]) if name in c.corruption_errors else None})
    return {"rows": rows, "severities": c.severities, "n": c.n, "clean": percent(c.clean_accuracy),
            "mean_error": percent(c.mean_error), "clean_error": percent(1 - c.clean_accuracy),
            "baseline": c.baseline, "mce": percent(c.mce), "relative_mce": percent(c.relative_mce),
            "seconds": c.seconds, "whole_split": metrics.clean is not None and c.n == metrics.clean.n,
            "seed": c.settings.get("seed")}


def _explanation_view(folder: RunFolder, colour: bool) -> dict[str, object] | None:
    """What the report says of the heat maps: the method, its layer and the eps, or None without them."""
    arrays = folder.read_arrays(record.EXPLANATIONS)
    if arrays is None or not {"method", "labels"} <= set(arrays):
        return None
    eps = float(arrays["eps"]) if "eps" in arrays else None
    return {"method": str(arrays["method"]), "layer": str(arrays.get("layer", "")), "n": len(arrays["labels"]),
            "eps": eps_label(eps, colour) if eps is not None else None}


def _telling_calibration(metrics: Metrics) -> EpsCalibration | None:
    """The newest evaluation's calibration at the eps of the headline numbers (:func:`telling_eps`), or None."""
    eps, latest = telling_eps(metrics), metrics.latest
    if eps is None or latest is None:
        return None
    return next((c for c in latest.calibration if abs(c.eps - eps) < 1e-9), None)


def _calibration_rows(metrics: Metrics, colour: bool) -> list[dict[str, object]]:
    """The calibration table: the clean test split before and after temperature scaling, then the newest
    evaluation's worst-case adversarial images at each eps above 0."""
    c = metrics.calibration
    if c is None:
        return []
    rows: list[dict[str, object]] = [
        {"what": "clean test images", "m": c.test},
        {"what": f"clean, temperature {c.temperature:.3f} (fitted on val)", "m": c.test_scaled}]
    latest = metrics.latest
    for entry in (latest.calibration if latest else []):
        if entry.eps > 0:
            rows.append({"what": f"worst-case adversarial, eps {eps_label(entry.eps, colour)}", "m": entry.metrics})
    return rows


#: The columns of an evaluation's table that only some attacks have: shown where a row has a value.
OPTIONAL_COLUMNS = ("steps", "alpha", "restarts", "target_success_rate")


def _evaluation_view(evaluation: Evaluation, colour: bool, clean_n: int | None, *, current: bool,
                     run_name: str = "RUN") -> dict[str, object]:
    """What the report shows of one robustness evaluation (``current``: of the kept model)."""
    attack = evaluation.attack
    eps = sorted({row.eps for row in evaluation.robustness})
    attacked = [row for row in evaluation.robustness if row.eps > 0] or evaluation.robustness  # eps 0: clean, above
    rows = [{**dataclasses.asdict(row), "eps_label": eps_label(row.eps, colour),
             "forwards_per_example": row.forwards_per_example, "backwards_per_example": row.backwards_per_example}
            for row in attacked]
    return {
        "key": evaluation.key,
        "current": current,
        "title": f"{', '.join(a.upper() for a in evaluation.attacks()) or 'no attack'} at eps "
                 f"{', '.join(eps_label(e, colour) for e in eps)}",
        "finished": evaluation.finished,
        "rows": rows,
        "columns": {column for column in OPTIONAL_COLUMNS if any(row[column] is not None for row in rows)},
        "warnings": attack.warnings, "checks": attack.checks, "skipped": attack.skipped,
        "norm": NORM_LABELS.get(attack.norm, attack.norm), "n": attack.n,
        "whole_split": attack.n == clean_n, "clean": attack.clean_accuracy, "seconds": evaluation.seconds,
        "processes": evaluation.processes, "cascade": attack.cascade,
        "plan": [{"eps_label": eps_label(o.eps, colour), "converged": o.converged, "reason": o.reason,
                  "passes": o.passes_per_example, "budget": o.budget} for o in attack.plan],
        "plan_tolerance": attack.plan[0].tolerance if attack.plan else 0.0,
        "plan_steps": list(dict.fromkeys(step.attack for o in attack.plan for step in o.steps)),
        "advice": advice(attack.checks, attack.plan, run=run_name, attacks=evaluation.attacks()),
        "minimal_norm": _minimal_norm_view(attack, colour),
    }


def _minimal_norm_view(attack: record.AttackRecord, colour: bool) -> dict[str, object] | None:
    """The minimal-norm attack's summary and its agreement with the fixed-eps worst case, for the report."""
    found = attack.minimal_norm
    if found is None:
        return None
    return {"attack": found.attack.upper(), "norm": NORM_LABELS.get(found.norm, found.norm), "steps": found.steps,
            "found": found.found, "attacked": found.attacked, "median": found.median, "seconds": found.seconds,
            "passes": (found.forwards + found.backwards) / found.attacked if found.attacked else None,
            "rows": [{**dataclasses.asdict(row), "eps_label": eps_label(row.eps, colour)} for row in found.agreement],
            "notes": found.warnings}


def telling_eps(metrics: Metrics) -> float | None:
    """The eps the headline numbers show: the adversarial training eps where the newest evaluation has it,
    else the eps above 0 whose worst-case accuracy is nearest half the clean accuracy (where the model is
    neither untouched nor broken; the smaller eps on a tie), or None without an eps above 0."""
    worst = [row for row in metrics.worst_case() if row.eps > 0]
    if not worst:
        return None
    trained = metrics.training.adversarial if metrics.training else None
    if trained is not None and any(abs(row.eps - trained.eps) < 1e-9 for row in worst):
        return trained.eps
    half = worst[0].clean_accuracy / 2
    return min(worst, key=lambda row: (abs(row.accuracy - half), row.eps)).eps


def summary_cards(metrics: Metrics, colour: bool) -> list[dict[str, str]]:
    """The headline numbers at the top of the report, all in percent: test accuracy (and top-5 accuracy above
    5 classes), the training recipe, macro F1, balanced accuracy, ECE, each attack and the worst case at the
    telling eps (:func:`telling_eps`), the certified accuracy at the largest radius certified, and the failed
    checks."""
    clean, training = metrics.clean, metrics.training
    cards = [{"label": "test accuracy", "value": percent(clean.accuracy) if clean else "–"}]
    if clean and clean.top5_accuracy is not None:
        cards.append({"label": "top-5 accuracy", "value": percent(clean.top5_accuracy)})
    if training is not None and training.adversarial is not None:
        trained = training.adversarial
        cards.append({"label": f"trained with {trained.recipe} at eps {eps_label(trained.eps, colour)}",
                      "value": percent(trained.best_robust_val_accuracy) + " robust val"})
    if clean:
        cards.append({"label": "macro F1", "value": percent(clean.macro_f1)})
        cards.append({"label": "balanced accuracy", "value": percent(clean.balanced_accuracy)})
    if metrics.calibration is not None:
        cards.append({"label": "ECE (calibration error)", "value": percent(metrics.calibration.test.ece)})
    if metrics.corruptions is not None and metrics.corruptions.entries:
        cards.append({"label": f"mean corruption error ({len(metrics.corruptions.corruptions)} corruptions)",
                      "value": percent(metrics.corruptions.mean_error)})
        if metrics.corruptions.mce is not None:
            cards.append({"label": "mCE against the baseline", "value": percent(metrics.corruptions.mce)})
    attacks = metrics.attacks()
    eps = telling_eps(metrics)
    if eps is not None:
        plan = metrics.attack.plan if metrics.attack else []
        steps = {step.attack for outcome in plan for step in outcome.steps}  # cumulative rows: not headlines
        at = [row for row in metrics.robustness if abs(row.eps - eps) < 1e-9]
        for attack in attacks:
            row = next((r for r in at if r.attack == attack), None)
            if row is not None and attack not in steps:
                cards.append({"label": f"{attack.upper()} accuracy at eps {eps_label(eps, colour)}",
                              "value": percent(row.accuracy)})
        worst = next((r for r in at if r.attack == WORST_CASE), None)
        outcome = next((o for o in plan if abs(o.eps - eps) < 1e-9), None)
        if worst is not None and (len(attacks) > 1 or outcome is not None):
            card = {"label": f"worst-case robust accuracy at eps {eps_label(eps, colour)}",
                    "value": percent(worst.accuracy)}
            if outcome is not None:  # why it is believed, or why not
                card.update(note=outcome.reason, bad="" if outcome.converged else "not converged")
            cards.append(card)
    done = metrics.latest_certification
    shown = [row for row in done.rows if row.radius > 0 and row.certified > 0] if done is not None else []
    if done is not None and shown:  # the largest radius with something certified, and its bracket
        largest = shown[-1]
        card = {"label": f"certified L2 accuracy at radius {largest.radius:g} (sigma {done.sigma:g})",
                "value": percent(largest.certified)}
        if largest.smoothed_attack is not None:
            card["note"] = f"at most {percent(largest.smoothed_attack)} under SmoothAdv"
        cards.append(card)
    checks = metrics.attack.checks if metrics.attack else []
    if checks:
        failed = sum(check["status"] == "failed" for check in checks)
        cards.append({"label": "sanity checks failed", "value": f"{failed} of {len(checks)}"})
    return cards


def timing_rows(metrics: Metrics) -> list[tuple[str, str]]:
    """The timing and environment table in words: ``train_seconds`` is "training", ``scikit_learn`` is
    "scikit-learn", ``num_threads`` is "threads"."""
    rows = [(key.removesuffix("_seconds").replace("eval", "evaluation").replace("_", " ").replace("train", "training"),
             f"{value:,.1f} s") for key, value in metrics.timing.items()]
    names = {"num_threads": "threads", "cpu_count": "CPU cores", "imgclf": "imgclf", "python": "Python",
             "torch": "PyTorch", "numpy": "NumPy"}
    rows += [(names.get(key, key.replace("_", "-")), str(value)) for key, value in metrics.environment.items()]
    return rows


def stages_not_run(metrics: Metrics, explained: bool, run: str) -> list[str]:
    """What the report has no section for, with why where a stage recorded it and the command that adds it."""
    missing = []
    if not metrics.evaluations and metrics.clean is not None:
        missing.append(f"robustness under attack (imgclf attack {run})")
    if metrics.corruptions is None and metrics.clean is not None:
        why = metrics.skipped.get("corruptions")
        missing.append(f"common corruptions ({why + '; ' if why else ''}imgclf corrupt {run})")
    if not metrics.certifications and metrics.clean is not None:
        missing.append(f"certified robustness (for a model trained with Gaussian noise: imgclf certify {run})")
    if not explained and metrics.clean is not None:
        missing.append(f"what the model looks at (imgclf explain {run})")
    return missing


def table_of_contents(html: str) -> str:
    """``html`` with a list of links to its sections (each ``<h2 id=...>``) in place of ``<!-- contents -->``."""
    sections = re.findall(r'<h2 id="([\w-]+)">(.*?)</h2>', html)
    links = "".join(f'<li><a href="#{anchor}">{title}</a></li>' for anchor, title in sections)
    return html.replace("<!-- contents -->", f'<nav class="toc" aria-label="Contents"><ul>{links}</ul></nav>', 1)


def _shown(value: Any) -> str:
    """A setting's value as written in YAML (a list of scalars joined by commas)."""
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(_shown(v) for v in value)
    if value is None or isinstance(value, bool | dict | list):
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
    return str(value)


def config_settings(config_text: str) -> dict[str, str] | None:
    """Every setting of a ``config.yaml`` by dotted name (``train.lr``), its value as written, in file order;
    None when the text is not a mapping of settings (a damaged file is shown as it is)."""
    from imgclf.config import dotted

    try:
        values = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return None
    return {key: _shown(value) for key, value in dotted(values).items()} if isinstance(values, dict) else None


def changed_settings(config_text: str) -> list[tuple[str, str]]:
    """The settings of a ``config.yaml`` that differ from imgclf's defaults, as ``(dotted name, value as
    written)``, in file order; [] when the text is not a mapping of settings."""
    from imgclf.config import RunConfig, config_to_dict, dotted

    defaults = {key: _shown(value) for key, value in dotted(config_to_dict(RunConfig())).items()}
    return [(key, value) for key, value in (config_settings(config_text) or {}).items() if defaults.get(key) != value]


def write_report(folder: RunFolder) -> Path:
    """Write ``figures/*.png`` and ``report.html`` for the run in ``folder``.

    Sections whose inputs are missing (for example no attack stage yet) are
    left out.

    Returns:
        The path of ``report.html``.

    Raises:
        UsageError: If ``metrics.json`` cannot be read (see :func:`imgclf.record.read_metrics`).
    """
    from imgclf import __version__

    metrics = read_metrics(folder.path)
    info = _model_info(folder)
    class_names = _class_names(metrics, info)
    input_shape = _input_shape(metrics, info)
    colour = input_shape[0] == 3
    figures = embed_figures(_figures(folder, metrics, info), folder.figures)
    training = metrics.training
    # shown as it is on disk (a byte that is not UTF-8 shows as U+FFFD)
    config_text = next((path.read_bytes().decode("utf-8", errors="replace")
                        for path in (folder.config_path, folder.file(record.CLASSIFIER_CONFIG)) if path.is_file()), "")
    explanation, history = _explanation_view(folder, colour), folder.read_csv(record.HISTORY)
    html = jinja_environment().get_template("report.html.j2").render(
        model=metrics.model if metrics.model != "?" or info is None else info.model,
        dataset=metrics.dataset if metrics.dataset != "?" or info is None else info.dataset,
        num_classes=len(class_names),
        input_shape="×".join(str(v) for v in input_shape),
        seed=metrics.seed if metrics.seed is not None else "?",
        run_name=folder.path.name,
        inputs=metrics.inputs,
        splits=[(split, f"{getattr(metrics.data, split):,}", origin) for split, origin in metrics.data.origins.items()
                if split in ("train", "val", "test")] if metrics.data else [],
        cards=summary_cards(metrics, colour),
        notes=metrics.data_notes,
        figures=figures,
        best_val=percent(training.best_val_accuracy if training else None),
        adversarial=training.adversarial if training else None,
        best_epoch=training.best_epoch if training else "?",
        lr_finder=metrics.lr_finder,
        clean=metrics.clean,
        clean_n=metrics.clean.n if metrics.clean else None,
        calibration=metrics.calibration,
        calibration_rows=_calibration_rows(metrics, colour),
        corruptions=_corruption_view(metrics),
        certification=_certification_view(metrics),
        explanation=explanation,
        evaluations=[_evaluation_view(e, colour, metrics.clean.n if metrics.clean else None,
                                      current=metrics.current(e), run_name=str(folder.path))
                     for e in reversed(metrics.evaluations)],  # newest first
        worst_case=WORST_CASE,
        timing=timing_rows(metrics),
        not_run=stages_not_run(metrics, explanation is not None, str(folder.path)),
        single_epoch=history[0] if len(history) == 1 else None,
        failed_checks=[c for c in (metrics.attack.checks if metrics.attack else []) if c["status"] == "failed"],
        latest_key=metrics.latest.key if metrics.latest else None,
        config_text=config_text,
        changed=changed_settings(config_text) if folder.config_path.is_file() else [],
        version=__version__,
    )
    path = folder.file(record.REPORT)
    atomic_write_text(path, table_of_contents(html))
    return path


def jinja_environment() -> Environment:
    """The Jinja2 environment over imgclf's packaged templates (HTML autoescaped)."""
    return Environment(loader=PackageLoader("imgclf", "report/templates"), autoescape=select_autoescape(["html", "j2"]))
