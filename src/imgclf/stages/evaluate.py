"""The evaluate stage: clean metrics and calibration on the test split."""

from __future__ import annotations

from imgclf.calibration import calibrate
from imgclf.evaluation import EvalResult, evaluate, predict_logits
from imgclf.record import section
from imgclf.stages.parts import RunParts
from imgclf.stages.store import save_samples


def evaluate_clean(parts: RunParts) -> EvalResult:
    """Clean metrics on the test split (:func:`imgclf.evaluation.evaluate`) and calibration (temperature
    fitted on the validation split, :func:`imgclf.calibration.calibrate`); writes ``metrics.json``'s
    ``clean`` and ``calibration`` sections and ``samples.npz``. With ``eval.tta`` each image's logits are
    averaged with its mirror's.

    Raises:
        UsageError: In a process that writes no run folder.
    """
    folder, data, config, model = parts.writes(), parts.data, parts.config, parts.model
    result = evaluate(model, data.test, list(data.spec.class_names), device=parts.device, tta=config.eval.tta)
    save_samples(folder, lambda rows: data.test.float_images(rows).numpy(), data.test.labels.numpy(),
                 result.predictions, config.seed)
    val_logits = predict_logits(model, data.val, device=parts.device, tta=config.eval.tta)
    calibration = calibrate(result.logits, data.test.labels, val_logits, data.val.labels,
                            bins=config.eval.calibration_bins)
    folder.update_metrics({"clean": result.metrics.to_dict(), "calibration": section(calibration),
                           "timing": {"eval_seconds": result.seconds}})
    m, c = result.metrics, calibration
    top5 = f"  top-5 accuracy {m.top5_accuracy:.4f}" if m.top5_accuracy is not None else ""
    parts.log(f"test: accuracy {m.accuracy:.4f}{top5}  macro F1 {m.macro_f1:.4f}  balanced accuracy "
              f"{m.balanced_accuracy:.4f}  (n={m.n})")
    parts.log(f"calibration: ECE {c.test.ece:.4f}  NLL {c.test.nll:.4f}  Brier {c.test.brier:.4f}; with "
              f"temperature {c.temperature:.3f} (fitted on val): ECE {c.test_scaled.ece:.4f}  NLL "
              f"{c.test_scaled.nll:.4f}  Brier {c.test_scaled.brier:.4f}")
    return result
