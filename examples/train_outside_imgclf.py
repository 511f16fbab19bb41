"""Train the two models of the README's "Models imgclf did not train" section, in plain PyTorch.

They stand for a user's own models: nothing here imports imgclf. Each is trained briefly on the CPU and
its weights are written as a user would write them:

- ``net``: ``tests/fixtures/own_net.py:Net`` on MNIST's 60,000 training images, 1 epoch, pixels in
  ``[0, 1]`` (no normalization), saved with safetensors as ``OUT/net.safetensors``;
- ``resnet18``: torchvision's ``resnet18(num_classes=10)`` (its ImageNet stem, unchanged) on the CIFAR-10
  image folder at 32x32 with random flips, inputs normalized with ImageNet's mean and std as torchvision's
  weights expect, saved with ``torch.save(model.state_dict())`` as ``OUT/resnet18-cifar.pth``.

Usage::

    IMGCLF_DATA_DIR=../shared/data python examples/train_outside_imgclf.py --out weights
    IMGCLF_DATA_DIR=../shared/data python examples/train_outside_imgclf.py --out weights --models resnet18 --epochs 2

and then, for example::

    imgclf attack --model torchvision:resnet18 --model-option num_classes=10 --weights weights/resnet18-cifar.pth \\
        --dataset ../shared/data/cifar10-jpg --image-size 32 --preset full --eps 8/255 --n-examples 100
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def own_net() -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("own_net", ROOT / "tests" / "fixtures" / "own_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Net()


def fit(model: torch.nn.Module, loader: DataLoader, epochs: int, lr: float,
        prepare=lambda x: x) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * len(loader))
    model.train()
    for epoch in range(epochs):
        began, total, correct = time.perf_counter(), 0, 0
        for images, labels in loader:
            logits = model(prepare(images))
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += len(labels)
            correct += int((logits.argmax(1) == labels).sum())
        print(f"  epoch {epoch + 1}: training accuracy {correct / total:.4f}, {time.perf_counter() - began:.0f} s",
              flush=True)
    model.eval()


def test_accuracy(model: torch.nn.Module, loader: DataLoader, prepare=lambda x: x) -> float:
    total = correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(prepare(images)).argmax(1) == labels).sum())
            total += len(labels)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("weights"))
    parser.add_argument("--models", default="net,resnet18", help="which to train: net, resnet18 or both")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    data = Path(os.environ.get("IMGCLF_DATA_DIR", "data"))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if "net" in args.models.split(","):
        from safetensors.torch import save_file

        to_tensor = transforms.ToTensor()
        train = DataLoader(datasets.MNIST(data, train=True, transform=to_tensor), batch_size=128, shuffle=True)
        test = DataLoader(datasets.MNIST(data, train=False, transform=to_tensor), batch_size=500)
        model = own_net()
        print("net on MNIST", flush=True)
        fit(model, train, args.epochs, lr=0.05)
        print(f"  test accuracy {test_accuracy(model, test):.4f}", flush=True)
        save_file(model.state_dict(), args.out / "net.safetensors")
    if "resnet18" in args.models.split(","):
        folder = data / "cifar10-jpg"
        augment = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        train = DataLoader(datasets.ImageFolder(folder / "train", transform=augment), batch_size=128, shuffle=True,
                           num_workers=1)
        test = DataLoader(datasets.ImageFolder(folder / "test", transform=transforms.ToTensor()), batch_size=500)
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        model = models.resnet18(num_classes=10).to(memory_format=torch.channels_last)
        print("torchvision resnet18 on CIFAR-10 (32x32)", flush=True)
        fit(model, train, args.epochs, lr=0.1, prepare=normalize)
        print(f"  test accuracy {test_accuracy(model, test, normalize):.4f}", flush=True)
        torch.save(model.to(memory_format=torch.contiguous_format).state_dict(), args.out / "resnet18-cifar.pth")
    print(f"weights in {args.out}/")


if __name__ == "__main__":
    main()
