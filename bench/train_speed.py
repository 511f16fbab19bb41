"""Benchmark: seconds per epoch and time to a target test accuracy.

CPU suite (``--suite cpu``): ``simple-cnn`` on MNIST (target 99.0%) and on
Fashion-MNIST (target 90.0%), imgclf's defaults.

GPU suite (``--suite gpu``): ``resnet18`` (target 93%) and the ``fast`` recipe
(``fast-cnn``, target 94%, flip TTA) on CIFAR-10, with bf16 autocast and
channels-last. Give ``--cifar`` a torchvision CIFAR-10 data folder's parent (the
built-in ``cifar10``) or a CIFAR-10 image folder.

Each run trains to its epoch budget, evaluates the test split after every
epoch, and prints the hardware, seconds per epoch (training pass only), and the
training seconds until the test accuracy first reached the target.

    IMGCLF_DATA_DIR=../shared/data python bench/train_speed.py --suite cpu
    python bench/train_speed.py --suite gpu --cifar ../shared/data/cifar10-jpg
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.is_file() else []
    name = models[0] if models else platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def time_to_target(label: str, overrides: dict, target: float, device: torch.device) -> dict:
    """Train with ``overrides``; print and return seconds per epoch (the first apart), the best test accuracy
    and the training seconds until the test accuracy first reached ``target`` (None if never)."""
    from imgclf.config import load_config
    from imgclf.data import load_data
    from imgclf.evaluation import evaluate
    from imgclf.models import create_model
    from imgclf.runtime import seed_everything
    from imgclf.training import fit

    config = load_config(None, overrides)
    seed_everything(config.seed)
    data = load_data(config.data, seed=config.seed)
    s = data.spec
    model = create_model(config.model.name, channels=s.channels, image_size=s.image_size,
                         num_classes=s.num_classes, mean=s.mean, std=s.std, options=config.model.options).to(device)
    accuracies: list[float] = []

    def after_epoch(result, state) -> None:  # test accuracy of this epoch's weights, outside the timing
        snapshot = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state["model"])
        accuracies.append(evaluate(model, data.test, list(s.class_names), device=device,
                                   tta=config.eval.tta).metrics.accuracy)
        model.load_state_dict(snapshot)
        model.train()

    start = time.perf_counter()
    result = fit(model, data, config.train, augment=config.data.augment, device=device, seed=config.seed,
                 log=lambda line: None, quiet=True, on_epoch=after_epoch)
    wall = time.perf_counter() - start
    per_epoch = [row["train_seconds"] for row in result.history]
    reached = next((i for i, acc in enumerate(accuracies) if acc >= target), None)
    seconds = sum(per_epoch[: reached + 1]) if reached is not None else None
    to_target = f"{seconds:.1f} s (epoch {reached + 1})" if reached is not None else "not reached"
    rest = per_epoch[1:] or per_epoch
    print(f"  {label:<44} first epoch {per_epoch[0]:.2f} s, then {sum(rest) / len(rest):7.2f} s/epoch  best test "
          f"accuracy {max(accuracies):.4f}  time to {target:.1%}: {to_target}  (wall {wall:.0f} s)")
    return {"label": label, "first_epoch_seconds": round(per_epoch[0], 2),
            "seconds_per_epoch": round(sum(rest) / len(rest), 2), "test_accuracy": accuracies,
            "best_test_accuracy": max(accuracies), "target": target,
            "seconds_to_target": None if seconds is None else round(seconds, 2), "wall_seconds": round(wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--cifar", default="cifar10", help="GPU suite: 'cifar10' or a CIFAR-10 image folder")
    args = parser.parse_args()
    device = torch.device("cuda" if args.suite == "gpu" else "cpu")
    if args.suite == "gpu" and not torch.cuda.is_available():
        print("the GPU suite needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"hardware: {hardware(device)}")
    if args.suite == "cpu":
        time_to_target("simple-cnn on MNIST, 5 epochs",
                       {"data.dataset": "mnist", "model.name": "simple-cnn", "train.epochs": 5}, 0.990, device)
        time_to_target("simple-cnn on Fashion-MNIST, 10 epochs",
                       {"data.dataset": "fashion-mnist", "model.name": "simple-cnn", "train.epochs": 10},
                       0.900, device)
    else:
        gpu = {"data.dataset": args.cifar, "device": "cuda"}
        time_to_target("resnet18 on CIFAR-10, 20 epochs, batch 512",
                       {**gpu, "model.name": "resnet18", "train.epochs": 20, "train.batch_size": 512,
                        "train.optimizer": "sgd", "train.lr": 0.2, "data.augment": "flip-crop",
                        "train.label_smoothing": 0.1}, 0.93, device)
        time_to_target("fast recipe (fast-cnn) on CIFAR-10, 10 epochs", {**gpu, "recipe": "fast"}, 0.94, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
