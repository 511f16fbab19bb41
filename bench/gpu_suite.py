"""GPU suite: the GPU rows of the documentation's "The published anchors", in one script for about ten minutes
of one H100 or H200 (issue 19).

Parts (``--parts``, in this order; default all):

* ``fast``: the ``fast`` recipe on CIFAR-10: test accuracy after every epoch, the training seconds to 94%,
  the first epoch (cuDNN autotuning, compilation) apart from the rest (``bench/train_speed.py``'s measurement).
* ``fgsm-rs``: ``--recipe fgsm-rs-cifar10`` (PreAct ResNet-18, eps 8/255; Wong et al. 2020), then
  ``imgclf attack --preset full`` at 8/255 on 1,000 test images: clean and robust accuracy, training
  seconds.
* ``single-step``: the same training (``--recipe fgsm-rs-cifar10``: PreAct ResNet-18, eps 8/255, its schedule)
  with N-FGSM (``--adversarial n-fgsm``: de Jorge et al. 2022, noise 2 eps, step eps) and with GradAlign
  (``--adversarial gradalign``: Andriushchenko and Flammarion 2020, lambda 0.2), each evaluated like ``fgsm-rs``
  (Wong et al.'s FGSM-RS: 43.21% under AutoAttack), with the catastrophic-overfitting probes and restarts on.
* ``mnist``: ``--recipe pgd-mnist`` and ``--recipe trades-mnist`` (the papers' networks) for 10 epochs
  each (the papers ran 100 and 104; TRADES's learning-rate steps at the same shares of the run), then
  ``--preset full`` at 0.3.
* ``paths``: the same short ResNet-18 training in fp32, bf16, fp16 with the gradient scaler, bf16 with
  channels-last, bf16 channels-last with ``--compile``, and bf16 under DDP with NCCL over every GPU
  (``torchrun``): test accuracy and training images per second of each.
* ``certify``: PreAct ResNet-18 on CIFAR-10 trained with Gaussian-noise augmentation at sigma 0.25 (and
  flip-and-crop), then ``imgclf certify`` at sigma 0.25 on 500 test images (n 10,000, alpha 0.001): certified
  accuracy at L2 radius 0, 0.25, 0.5 and 0.75 with the SmoothAdv upper bound beside it (Cohen et al.'s ResNet-110,
  90 epochs, n 100,000: 77%, 60%, 42% certified at 0, 0.25, 0.5).
* ``attacks``: ``bench/attack_speed.py --device cuda`` (PGD against torchattacks and ART) and
  ``bench/autoattack_reference.py --device cuda`` (the AutoAttack ensemble against torchattacks); each
  prints its own table (needs the wheels of torchattacks and the Adversarial Robustness Toolbox).

Every training and attack is an ``imgclf`` command, printed before it runs; the numbers are read back from
its run folder's ``metrics.json``. The results go to ``--out``/``gpu-suite.json`` too.

``--scale tiny`` is the check on a CPU (a test runs it, with a small image folder as ``--cifar``): every
training on 64 images for one epoch, 8 attacked images, no ``torchrun``, ``attacks`` skipped. It measures
nothing.

Usage (data: MNIST under ``$IMGCLF_DATA_DIR``, CIFAR-10 as ``--cifar``, an image folder or the built-in).
On a GPU machine without a network, ``bench/gpu_pack.sh`` packs the data and wheels here into ``.gpu/``
(33 MB) and ``bench/gpu_unpack.sh ARGS`` unpacks them there and runs this script with ``ARGS``::

    PYTHONPATH=src IMGCLF_DATA_DIR=data python bench/gpu_suite.py --cifar data/cifar10-jpg --out gpu-results
    bash bench/gpu_unpack.sh --parts fast,fgsm-rs --out /tmp/suite      # on the GPU machine, .gpu/ carried
    IMGCLF_DATA_DIR=../shared/data python bench/gpu_suite.py --scale tiny --cifar ../shared/data/cifar10-jpg \\
        --device cpu --out /tmp/gpu-suite-check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from imgclf.run_folder import atomic_write_text

PARTS = ("fast", "fgsm-rs", "single-step", "mnist", "paths", "certify", "attacks")
#: Per scale: extra flags of every training, the attacked images, MNIST epochs, the paths' epochs and model,
#: Square's queries (None: the preset's 5,000), the Gaussian-noise training's epochs, the certified images, n and
#: the other flags of ``imgclf certify`` (tiny: without the attacks, minutes of a ResNet-18 on a CPU).
SCALES = {
    "gpu": {"train": [], "aa_examples": 1000, "mnist_epochs": 10, "paths_epochs": 4, "paths_model": "resnet18",
            "queries": None, "noise_epochs": 30, "certify_examples": 500, "certify_n": 10_000, "certify": []},
    "tiny": {"train": ["--train-examples", "64", "--epochs", "1", "--robust-val-examples", "16"],
             "aa_examples": 8, "mnist_epochs": 1, "paths_epochs": 1, "paths_model": "simple-cnn", "queries": "20",
             "noise_epochs": 1, "certify_examples": 8, "certify_n": 200, "certify": ["--no-certify-attack"]},
}


class Suite:
    """Runs imgclf commands into ``out`` and collects one result row per measurement."""

    def __init__(self, out: Path, device: str, scale: str, cifar: str):
        self.out, self.device, self.scale, self.cifar = out, device, SCALES[scale], cifar
        self.rows: list[dict] = []

    def imgclf(self, *args: str, launcher: list[str] | None = None) -> float:
        """Run ``imgclf ARGS`` (under ``launcher``, e.g. torchrun); its wall seconds. Raises on failure."""
        command = [*(launcher or [sys.executable, "-m"]), "imgclf", *args]
        print("$", " ".join(command), flush=True)
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL if "--quiet" in args else None)
        return time.perf_counter() - began

    def train(self, name: str, *flags: str, launcher: list[str] | None = None) -> dict:
        """``imgclf train`` into ``out/name`` (a fresh folder), then its metrics.json."""
        run = self.out / name
        if run.exists():
            raise SystemExit(f"{run} exists: give a new --out")
        self.imgclf("train", *flags, *self.scale["train"], "--device", self.device, "--out", str(run), "--quiet",
                    launcher=launcher)
        return json.loads((run / "metrics.json").read_text())

    def full_ensemble(self, name: str, eps: str) -> dict:
        """``imgclf attack --preset full`` on the run ``name``: clean and worst-case accuracy at ``eps``."""
        queries = ["--queries", self.scale["queries"]] if self.scale["queries"] else []
        seconds = self.imgclf("attack", str(self.out / name), "--preset", "full", "--eps", eps, "--n-examples",
                              str(self.scale["aa_examples"]), *queries, "--device", self.device, "--quiet")
        evaluation = json.loads((self.out / name / "metrics.json").read_text())["evaluations"][-1]
        worst = [row for row in evaluation["robustness"] if row["attack"] == "worst-case"][-1]
        failed = [check["name"] for check in evaluation["attack"]["checks"] if check["status"] == "failed"]
        return {"clean_accuracy": evaluation["attack"]["clean_accuracy"], "robust_accuracy": worst["accuracy"],
                "n": worst["n"], "attack_seconds": round(seconds, 1), "failed_checks": failed}

    def record(self, row: dict) -> None:
        self.rows.append(row)
        print("  " + json.dumps(row), flush=True)
        atomic_write_text(self.out / "gpu-suite.json", json.dumps(self.rows, indent=1) + "\n")

    def fast(self) -> None:
        sys.path.insert(0, str(Path(__file__).parent))
        import torch

        from train_speed import time_to_target

        overrides = {"data.dataset": self.cifar, "device": self.device, "recipe": "fast"}
        if self.scale["train"]:
            overrides.update({"data.train_examples": 64, "train.epochs": 1})
        result = time_to_target("fast recipe (fast-cnn) on CIFAR-10", overrides, 0.94, torch.device(self.device))
        self.record({"part": "fast", **result})

    def fgsm_rs(self) -> None:
        metrics = self.train("fgsm-rs-cifar10", "--recipe", "fgsm-rs-cifar10", "--dataset", self.cifar)
        self.record({"part": "fgsm-rs", "recipe": "fgsm-rs-cifar10", "train_seconds":
                     round(metrics["timing"]["train_seconds"], 1), **self.full_ensemble("fgsm-rs-cifar10", "8/255")})

    def single_step(self) -> None:
        for recipe in ("n-fgsm", "gradalign"):
            name = f"{recipe}-cifar10"
            metrics = self.train(name, "--recipe", "fgsm-rs-cifar10", "--dataset", self.cifar, "--adversarial", recipe,
                                 "--on-overfit", "restart")
            adversarial = metrics["training"]["adversarial"]
            self.record({"part": "single-step", "recipe": recipe, "train_seconds":
                         round(metrics["timing"]["train_seconds"], 1), "recoveries": len(adversarial["recoveries"]),
                         "catastrophic_overfitting": adversarial["catastrophic_overfitting"],
                         **self.full_ensemble(name, "8/255")})

    def mnist(self) -> None:
        epochs = self.scale["mnist_epochs"]
        # TRADES's steps at epochs 55, 75 and 90 of 100, at the same shares of the shorter run
        milestones = ",".join(str(e) for e in sorted({max(1, round(share * epochs)) for share in (0.55, 0.75, 0.9)}))
        for recipe, extra in (("pgd-mnist", []), ("trades-mnist", ["--milestones", milestones])):
            metrics = self.train(recipe, "--recipe", recipe, "--epochs", str(epochs), *extra)
            self.record({"part": "mnist", "recipe": recipe, "epochs": epochs, "train_seconds":
                         round(metrics["timing"]["train_seconds"], 1), **self.full_ensemble(recipe, "0.3")})

    def paths(self) -> None:
        import torch

        base = ["--dataset", self.cifar, "--model", self.scale["paths_model"], "--epochs",
                str(self.scale["paths_epochs"]), "--batch-size", "512", "--optimizer", "sgd", "--lr", "0.2",
                "--augment", "flip-crop"]
        variants = {"fp32": ["--amp", "off", "--no-channels-last"], "bf16": ["--amp", "bf16", "--no-channels-last"],
                    "fp16 + gradient scaler": ["--amp", "fp16", "--no-channels-last"],
                    "bf16 + channels-last": ["--amp", "bf16", "--channels-last"],
                    "bf16 + channels-last + compile": ["--amp", "bf16", "--channels-last", "--compile"]}
        gpus = torch.cuda.device_count() if self.device == "cuda" else 0
        if gpus:  # NCCL over every GPU of the machine
            variants[f"bf16 + channels-last, DDP over {gpus} GPU(s)"] = ["--amp", "bf16", "--channels-last"]
        for index, (label, flags) in enumerate(variants.items()):
            name = f"path-{index}"
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                        "-m"] if "DDP" in label else None
            self.train(name, *base, *flags, launcher=launcher)
            self.imgclf("evaluate", str(self.out / name), "--device", self.device, "--quiet")
            metrics = json.loads((self.out / name / "metrics.json").read_text())
            images = metrics["data"]["train"] * metrics["training"]["epochs_run"]
            self.record({"part": "paths", "path": label, "test_accuracy": metrics["clean"]["accuracy"],
                         "train_seconds": round(metrics["timing"]["train_seconds"], 1),
                         "images_per_second": round(images / metrics["timing"]["train_seconds"])})

    def certify(self) -> None:
        epochs = str(self.scale["noise_epochs"])
        metrics = self.train("noise-cifar10", "--dataset", self.cifar, "--model", "preact-resnet18", "--augment",
                             "flip-crop+gaussian-noise:sigma=0.25", "--epochs", epochs, "--batch-size", "256",
                             "--optimizer", "sgd", "--lr", "0.1", "--amp", "bf16" if self.device == "cuda" else "off")
        seconds = self.imgclf("certify", str(self.out / "noise-cifar10"), "--sigma", "0.25", "--radii",
                              "0,0.25,0.5,0.75", "--n-examples", str(self.scale["certify_examples"]),
                              "--n-samples", str(self.scale["certify_n"]), *self.scale["certify"], "--device",
                              self.device, "--quiet")
        done = json.loads((self.out / "noise-cifar10" / "metrics.json").read_text())["certifications"][-1]
        self.record({"part": "certify", "model": "preact-resnet18", "epochs": int(epochs), "sigma": 0.25,
                     "train_seconds": round(metrics["timing"]["train_seconds"], 1), "n": done["n"],
                     "samples": done["samples"], "clean_accuracy": done["clean_accuracy"],
                     "certified": {str(row["radius"]): row["certified"] for row in done["rows"]},
                     "smoothed_attack": {str(row["radius"]): row["smoothed_attack"] for row in done["rows"]},
                     "certify_seconds": round(seconds, 1)})

    def attacks(self) -> None:
        for script in ("attack_speed.py", "autoattack_reference.py"):
            command = [sys.executable, str(Path(__file__).parent / script), "--device", self.device]
            print("$", " ".join(command), flush=True)
            code = subprocess.run(command).returncode
            self.record({"part": "attacks", "benchmark": script, "targets_met": code == 0})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--cifar", default="cifar10", help="CIFAR-10: 'cifar10' or an image folder")
    parser.add_argument("--scale", choices=tuple(SCALES), default="gpu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the runs and gpu-suite.json")
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(PARTS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda, but torch sees no CUDA GPU (give --device cpu with --scale tiny)")
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    if args.out.exists():
        parser.error(f"{args.out} exists: give a new folder")
    args.out.mkdir(parents=True)
    suite = Suite(args.out, args.device, args.scale, args.cifar)
    began = time.perf_counter()
    for part in PARTS:
        if part in parts and not (part == "attacks" and args.scale == "tiny"):
            getattr(suite, part.replace("-", "_"))()
    print(f"suite: {time.perf_counter() - began:.0f} s; results in {args.out / 'gpu-suite.json'}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
