"""Benchmark: robust accuracy of trained runs on held-out *validation* images, to compare recipes and seeds
without looking at the test set.

Choosing a recipe, a setting or a seed by its test figure is selection on the test set. This script
attacks, for each run folder given, images of the run's own validation split that its robust validation
during training did not use (the ``adversarial.val_examples`` stratified subset is left out): APGD-CE
(100 steps), then Square (5,000 queries) on what APGD-CE failed on, L-inf, at the given eps: the two attacks
that decide the worst case of the AutoAttack ensemble on the MNIST anchors (docs/results.md, "The published
anchors"). Runs with the same data set, seed and ``--val-fraction`` share their validation split and
so get the same images; runs of different seeds are probed on their own held-out images. Prints one
line per run: clean, APGD-CE and worst-case robust accuracy on those images, and the seconds; given
several runs, a last line names the one with the highest worst case (the first of a tie), the choice a
validation split exists for (docs/results.md, "The published anchors": the best of 17 trainings under four
settings).

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/validation_probe.py runs/a runs/b --eps 0.3 --examples 2000

Exits 2 with one line on a bad argument or a run folder imgclf cannot open.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from imgclf.attacks.robust_accuracy import robustness
from imgclf.attacks.spec import AttackSpec
from imgclf.data.loading import stratified_subset
from imgclf.defenses.validation import RobustValidation
from imgclf.errors import UsageError
from imgclf.pipeline import Run

#: Seeds the choice of the probe's images among the validation images left over (the robust validation's
#: subset is drawn with the run's own seed).
PROBE_SEED = 1


def probe_rows(labels: np.ndarray, *, excluded: int, seed: int, examples: int) -> np.ndarray:
    """Positions in the validation split of the probe's images: a stratified ``examples`` of those left
    after the robust validation's subset (:meth:`RobustValidation.rows`) is removed.

    Args:
        labels: ``int64`` ``(N,)`` validation labels.
        excluded: Size of the robust validation's subset (``adversarial.val_examples``).
        seed: The run's seed, which drew that subset.
        examples: Probe size; all that are left if fewer.

    Returns:
        ``int64`` positions, sorted.
    """
    used = np.zeros(len(labels), dtype=bool)
    used[RobustValidation.rows(labels, examples=excluded, seed=seed)] = True
    rest = np.flatnonzero(~used)
    return rest[stratified_subset(labels[rest], examples, PROBE_SEED)]  # both sorted: so is the result


def probe(path: str, *, eps: float, examples: int, batch_size: int) -> tuple[str, float]:
    """One run's line: clean, APGD-CE and worst-case (APGD-CE then Square) accuracy on its probe images,
    and that worst case (a fraction in [0, 1]).

    Raises:
        UsageError: If ``path`` is not a run folder imgclf can open, or no validation image is left.
    """
    run = Run.open(path, quiet=True)
    val = run.data.val
    labels = val.labels.numpy()
    if not len(labels):
        raise UsageError(f"{path}: the run has no validation split (--val-fraction 0); nothing to probe")
    rows = probe_rows(labels, excluded=run.config.adversarial.val_examples, seed=run.config.seed,
                      examples=examples)
    if not len(rows):
        raise UsageError(f"{path}: all {len(labels)} validation images are in the robust validation's subset "
                         f"(adversarial.val_examples {run.config.adversarial.val_examples}); none is left to probe")
    images, targets = val.float_images(rows), val.labels[torch.as_tensor(rows)]
    start = time.perf_counter()
    result = robustness(run.model, images, targets, attacks=[AttackSpec("apgd-ce"), AttackSpec("square")],
                        eps_values=[eps], device=run.device, batch_size=batch_size, seed=0, run_checks=False,
                        cascade=True)
    accuracy = {e.attack: e.accuracy for e in result.entries}
    line = (f"{path}: {len(rows)} validation images, clean {result.clean_accuracy:.4f}, APGD-CE "
            f"{accuracy['apgd-ce']:.4f}, then Square: worst case {accuracy['worst-case']:.4f} at eps {eps:g} "
            f"({time.perf_counter() - start:.0f} s)")
    return line, accuracy["worst-case"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders to probe")
    parser.add_argument("--eps", type=float, default=0.3, help="L-inf radius in pixel units (default 0.3)")
    parser.add_argument("--examples", type=int, default=2000, help="validation images per run (default 2000)")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    if args.eps <= 0 or args.examples < 1 or args.batch_size < 1:
        parser.error("--eps must be > 0, --examples and --batch-size >= 1")
    worst: dict[str, float] = {}
    try:
        for path in dict.fromkeys(args.runs):  # a run given twice is probed once
            line, worst[path] = probe(path, eps=args.eps, examples=args.examples, batch_size=args.batch_size)
            print(line, flush=True)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(worst) > 1:
        best = max(worst, key=worst.__getitem__)  # the first of a tie
        print(f"highest worst case: {best} ({worst[best]:.4f}, of {len(worst)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
