"""Benchmark: imgclf's PGD against torchattacks and the Adversarial Robustness Toolbox.

Targets: on a ``simple-cnn`` trained on MNIST, PGD-20 (L-inf, eps 0.1, step 0.01,
random start) on 2,000 test images: imgclf's robust accuracy within 1 point of
torchattacks' and ART's; ``imgclf.attacks.pgd`` given all 2,000 images in one call
(it batches them itself) at most 0.6 times ART's wall time with ART's batch of
``--batch-size`` (256), and imgclf in the caller's batches at most 0.8 times the
faster of the two.

All three attack the same model (loaded from an imgclf run folder, in eval
mode, on the CPU or with ``--device cuda`` the GPU) with the same images, settings and batch size; each is
timed after one warm-up batch. Needs ``pip install torchattacks
adversarial-robustness-toolbox``.

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/attack_speed.py --dataset mnist --examples 2000
    IMGCLF_DATA_DIR=../shared/data python bench/attack_speed.py --dataset fashion-mnist --examples 10000

Without ``--run``, a ``simple-cnn`` is first trained for one epoch on the data
set with ``imgclf run`` (about a minute). Prints one row per implementation and
exits 1 if a target is missed.
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


def train(dataset: str, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "imgclf", "run", "--dataset", dataset, "--model", "simple-cnn",
                    "--epochs", "1", "--attack", "fgsm", "--eps", "0", "--out", str(out), "--quiet"], check=True)
    return out


def test_images(dataset: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST, FashionMNIST

    data_dir = os.environ.get("IMGCLF_DATA_DIR", "data")
    cls = {"mnist": MNIST, "fashion-mnist": FashionMNIST}[dataset]
    ds = cls(data_dir, train=False)
    return ds.data[:count].float().div(255).unsqueeze(1), ds.targets[:count].long()


def timed(fn) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    adversarial = fn()
    return adversarial, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--run", type=Path, help="a trained imgclf run folder (default: train one)")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where all three attack")
    args = parser.parse_args()

    import torchattacks
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    from imgclf import load_model
    from imgclf.attacks import pgd

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train(args.dataset, Path(tmp) / "run")
        model = load_model(run, device=args.device).eval()
    x, y = (tensor.to(args.device) for tensor in test_images(args.dataset, args.examples))
    bs, eps, alpha, steps = args.batch_size, args.eps, args.alpha, args.steps

    def accuracy(images: torch.Tensor) -> float:
        with torch.no_grad():
            return sum(int((model(images[i:i + 512]).argmax(1) == y[i:i + 512]).sum())
                       for i in range(0, len(y), 512)) / len(y)

    def ours(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(x.device).manual_seed(0)
        return torch.cat([pgd(model, images[i:i + bs], labels[i:i + bs], eps=eps, alpha=alpha, steps=steps,
                              generator=gen) for i in range(0, len(images), bs)])

    def ours_one_call(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(x.device).manual_seed(0)
        return pgd(model, images, labels, eps=eps, alpha=alpha, steps=steps, generator=gen)

    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)

    def theirs_torchattacks(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([ta(images[i:i + bs], labels[i:i + bs]) for i in range(0, len(images), bs)])

    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=int(model(x[:1]).shape[1]), clip_values=(0.0, 1.0),
                                   device_type="gpu" if x.is_cuda else "cpu")
    art_pgd = ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps,
                                       num_random_init=1, batch_size=bs, verbose=False)

    def theirs_art(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(art_pgd.generate(images.cpu().numpy(), labels.cpu().numpy())).to(images.device)

    implementations = {"imgclf (one call)": ours_one_call, "imgclf": ours, "torchattacks": theirs_torchattacks,
                       "ART": theirs_art}
    for fn in implementations.values():
        fn(x[:bs], y[:bs])  # warm-up
    where = torch.cuda.get_device_name() if x.is_cuda else f"{platform.processor() or platform.machine()}, " \
        f"{args.threads} threads"
    print(f"{where}, torch {torch.__version__}; "
          f"{args.dataset}, {len(x)} test images, PGD-{steps} L-inf eps {eps} step {alpha}, batch {bs}")
    print(f"clean accuracy {accuracy(x):.4f}")
    rows = {}
    for name, fn in implementations.items():
        adversarial, seconds = timed(lambda fn=fn: fn(x, y))
        assert (adversarial - x).abs().max() <= eps + 1e-6 and adversarial.min() >= 0 and adversarial.max() <= 1
        rows[name] = (accuracy(adversarial), seconds)
        print(f"{name:>13}: robust accuracy {rows[name][0]:.4f}  {seconds:6.1f} s")
    fastest = min(rows["torchattacks"][1], rows["ART"][1])
    ratio = rows["imgclf"][1] / fastest
    one_call = rows["imgclf (one call)"][1] / rows["ART"][1]
    gap = max(abs(rows[mine][0] - rows[k][0]) for k in ("torchattacks", "ART")
              for mine in ("imgclf", "imgclf (one call)"))
    print(f"imgclf time / faster reference = {ratio:.2f} (target <= 0.80); one call / ART = {one_call:.2f} "
          f"(target <= 0.60); largest robust-accuracy gap {gap * 100:.2f} points (target <= 1)")
    return 0 if ratio <= 0.8 and one_call <= 0.6 and gap <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
