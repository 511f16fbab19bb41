"""Benchmark: imgclf's randomized-smoothing CERTIFY against ART's, on the same model and test images.

Both run Cohen, Rosenfeld and Kolter's CERTIFY (ICML 2019) with the same sigma, n0, n and alpha, each with its
own noise (ART draws from NumPy's global generator, imgclf from a seeded torch generator), so they agree up to
Monte Carlo noise. Targets: the paired mean difference of the certified radii within three of its standard
errors, and the certified accuracy at each radius within 2 points. Also gives each one's time.

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/certify_vs_art.py --run runs/mnist-noise025 --dataset mnist

``--run`` is a run folder whose model was trained with Gaussian noise (``--augment gaussian-noise:sigma=0.25``);
imgclf certifies its first ``--examples`` test images (torchvision's MNIST or FashionMNIST test split), ART the
first ``--art-examples`` of them (ART is compared on those). Prints imgclf's certified accuracy on all of them,
the comparison table, and exits 1 if a target is missed. Needs ``pip install adversarial-robustness-toolbox
statsmodels`` (ART's CERTIFY takes its bound from statsmodels).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

#: The L2 radii (pixel units) the certified accuracies are compared at.
RADII = (0.0, 0.25, 0.5, 0.75)
#: The largest gap allowed between the two certified accuracies at a radius (a fraction), and the largest paired
#: mean radius difference in standard errors.
GAP, STANDARD_ERRORS = 0.02, 3.0


def test_images(dataset: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST, FashionMNIST

    ds = {"mnist": MNIST, "fashion-mnist": FashionMNIST}[dataset](os.environ.get("IMGCLF_DATA_DIR", "data"),
                                                                  train=False)
    return ds.data[:count].float().div(255).unsqueeze(1), ds.targets[:count].long()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist")
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--art-examples", type=int, default=100)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import art
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    from imgclf import load_model
    from imgclf.certification import Certificates, certificates
    from imgclf.runtime import generator

    torch.set_num_threads(args.threads)
    model = load_model(args.run).eval()
    images, labels = test_images(args.dataset, args.examples)
    with torch.no_grad():
        classes = int(model(images[:1]).shape[1])
    print(f"# {args.examples} {args.dataset} test images, sigma {args.sigma}, n0 {args.n0}, n {args.n:,}, alpha "
          f"{args.alpha}; torch {torch.__version__}, ART {art.__version__}, "
          f"{platform.processor() or platform.machine()}, {args.threads} threads")
    began = time.perf_counter()
    ours = certificates(model, images, sigma=args.sigma, num_classes=classes, n0=args.n0, n=args.n, alpha=args.alpha,
                         batch_size=args.batch_size, generator=generator(0))
    ours_seconds = time.perf_counter() - began
    truth = labels.numpy()
    print(f"imgclf on all {len(truth)} images: certified accuracy " + ", ".join(
        f"{ours.certified_accuracy(truth, r):.2%} at radius {r:g}" for r in RADII)
        + f"; abstained {ours.abstained:.2%}; {ours_seconds:.1f} s, {ours.forwards:,} forward passes")
    count = min(args.art_examples, len(truth))
    images, truth = images[:count], truth[:count]
    ours = Certificates(ours.prediction[:count], ours.p_lower[:count], ours.radius[:count], ours.sigma, ours.n0,
                        ours.n, ours.alpha, forwards=count * (ours.n0 + ours.n))
    np.random.seed(0)
    theirs_model = PyTorchRandomizedSmoothing(model, torch.nn.CrossEntropyLoss(), tuple(images.shape[1:]), classes,
                                              device_type="cpu", sample_size=args.n0, scale=args.sigma,
                                              alpha=args.alpha)
    began = time.perf_counter()
    prediction, radius = theirs_model.certify(images.numpy(), n=args.n, batch_size=args.batch_size)
    art_seconds = time.perf_counter() - began
    theirs = {r: float(((prediction == truth) & (radius >= r)).mean()) for r in RADII}
    print(f"on the first {count}:")
    print("| radius | imgclf certified accuracy | ART certified accuracy | gap (points) |")
    print("| ---: | ---: | ---: | ---: |")
    missed = False
    for r in RADII:
        mine = ours.certified_accuracy(truth, r)
        missed |= abs(mine - theirs[r]) > GAP
        print(f"| {r:g} | {mine:.2%} | {theirs[r]:.2%} | {100 * (mine - theirs[r]):+.2f} |")
    same = float((ours.prediction == prediction).mean())
    difference = ours.radius - radius
    error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else float("inf")
    missed |= abs(difference.mean()) > STANDARD_ERRORS * max(error, 1e-12)
    print(f"same prediction (or abstention): {same:.2%}; mean radius {ours.radius.mean():.4f} vs "
          f"{radius.mean():.4f} (paired difference {difference.mean():+.4f}, standard error {error:.4f}); "
          f"abstained {ours.abstained:.2%} vs {float((prediction == -1).mean()):.2%}")
    print(f"seconds on these {count}: ART {art_seconds:.1f} ({ours.forwards:,} forward passes)")
    print(f"targets: certified accuracy within {100 * GAP:.0f} points at every radius, paired mean radius "
          f"difference within {STANDARD_ERRORS:g} standard errors")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
