"""Benchmark: imgclf's minimal-norm attack (FMN) against Foolbox's FMN, and its curve against APGD-CE.

Targets: on MNIST ``simple-cnn`` (one epoch), the robustness curve of imgclf's FMN under L-inf within 1 point of
APGD-CE's fixed-eps robust accuracy at eps 0.05, 0.1 and 0.2 on the same test images. Beside it, per norm
(L-inf, L2, L1), imgclf's FMN and Foolbox 3's (``LInfFMNAttack``, ``L2FMNAttack``, ``L1FMNAttack``, the same
100 steps, started at the clean image) on the same images: the share found, the median smallest perturbation
(over the correctly classified examples; not found counts as larger than every radius), the curve at three
radii, and the time. Foolbox is the independent implementation (Pintor et al.'s own code went into it).

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/minimal_norm.py --run runs/mnist

Without ``--run`` a ``simple-cnn`` is trained for one epoch on MNIST first (about a minute). Prints one row per
norm and library and exits 1 if the L-inf curve misses the 1-point target. Needs ``pip install foolbox``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

#: The radii the curves are read at, per norm (MNIST, pixel units).
RADII = {"linf": (0.05, 0.1, 0.2), "l2": (0.5, 1.0, 2.0), "l1": (2.5, 5.0, 10.0)}
#: The largest gap allowed between the L-inf curve and APGD-CE, a fraction.
GAP = 0.01


def train(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "imgclf", "run", "--dataset", "mnist", "--model", "simple-cnn",
                    "--epochs", "1", "--attack", "fgsm", "--eps", "0", "--no-minimal-norm", "--out", str(out),
                    "--quiet"], check=True)
    return out


def test_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    ds = MNIST(os.environ.get("IMGCLF_DATA_DIR", "data"), train=False)
    return ds.data[:count].float().div(255).unsqueeze(1), ds.targets[:count].long()


def summary(radii: np.ndarray, norm: str) -> dict[str, float]:
    attacked = radii[radii > 0]
    row = {"found": float(np.isfinite(attacked).mean()), "median": float(np.median(attacked))}
    row.update({f"curve@{r:g}": float((radii > r).mean()) for r in RADII[norm]})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import foolbox

    from imgclf import load_model
    from imgclf.attacks import apgd, fmn
    from imgclf.attacks.core import largest_eps
    from imgclf.attacks.minimal_norm import minimal_radii

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(args.run or train(Path(tmp) / "run")).eval()
    images, labels = test_images(args.examples)
    print(f"# {args.examples} MNIST test images, {args.steps} steps, torch {torch.__version__}, "
          f"foolbox {foolbox.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    fb_model = foolbox.PyTorchModel(model, bounds=(0, 1))
    classes = {"linf": foolbox.attacks.LInfFMNAttack, "l2": foolbox.attacks.L2FMNAttack,
               "l1": foolbox.attacks.L1FMNAttack}
    curves: dict[str, np.ndarray] = {}
    for norm, foolbox_attack in classes.items():
        start = time.perf_counter()
        ours = fmn(model, images, labels, eps=largest_eps(images, norm), norm=norm, steps=args.steps)
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        _, theirs, _ = foolbox_attack(steps=args.steps)(fb_model, images, labels, epsilons=None)
        theirs_seconds = time.perf_counter() - start
        curves[norm] = minimal_radii(model, ours, images, labels, norm).numpy()
        for name, radii, seconds in (("imgclf", curves[norm], ours_seconds),
                                     ("foolbox", minimal_radii(model, theirs, images, labels, norm).numpy(),
                                      theirs_seconds)):
            row = summary(radii, norm)
            print(f"{norm:>4} {name:<8} found {row.pop('found'):.1%}  median {row.pop('median'):.4f}  " + "  ".join(
                f"{key} {value:.4f}" for key, value in row.items()) + f"  {seconds:.1f} s")
    missed = False
    for eps in RADII["linf"]:
        adversarial = apgd(model, images, labels, eps=eps, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            fixed = float((model(adversarial).argmax(1) == labels).float().mean())
        curve = float((curves["linf"] > eps).mean())
        gap = curve - fixed
        missed |= abs(gap) > GAP
        print(f"linf eps {eps:g}: APGD-CE {fixed:.4f}, FMN curve {curve:.4f}, gap {100 * gap:+.2f} points "
              f"({'met' if abs(gap) <= GAP else 'missed'}: within {100 * GAP:g})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
