"""Benchmark: imgclf's AutoAttack ensemble (``--preset full``) against torchattacks' attacks.

Issue 16's target: on the same model and the same 1,000 MNIST test images, at eps 0.3 for an
adversarially trained ``simple-cnn`` and at eps 0.1 for a standard one, robust accuracy within 0.5
points of the reference per attack and in the worst case, and imgclf's wall time at most 0.5 times the
reference's.

Both libraries attack the model in eval mode on the CPU (``--device cuda``: the GPU) with the standard
version's settings: APGD-CE (100 steps), APGD-T (9 target classes, 100 steps), FAB-T (9 target classes,
100 steps) and Square (5,000 queries, p_init 0.8), L-inf. torchattacks runs each attack alone
(per-attack accuracy and time) and then the four as a ``MultiAttack`` (the worst case and the ensemble's
time, each attack on the examples still robust). torchattacks' own ``AutoAttack(version="standard")`` is
timed too, for the record: it runs APGD, APGD-T and FAB with 10 steps, not the standard 100, and is
weaker for it. imgclf runs the ensemble twice, in one ``robustness`` call each (which also counts the
model's forward and backward passes): every attack on every correct example (the per-attack rows,
against torchattacks' attacks alone) and as a cascade (``--cascade``: the worst case and the ensemble's
time, against the ``MultiAttack``). ``--ensemble-only`` runs just the two ensembles,
``--per-attack-only`` just the attacks alone, and ``--square-seeds 0,1,2`` just Square in both libraries,
once per seed (Square is a random search: one run of each is not enough to compare them);
``--square-full-window`` with it lets torchattacks' squares reach the last row and column of the image, which
its corner draw (as AutoAttack's) never does and imgclf's does. Times are
wall-clock seconds and, as this machine's speed drifts, also the process's CPU seconds.
Needs ``pip install torchattacks``.

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/autoattack_reference.py
    IMGCLF_DATA_DIR=../shared/data python bench/autoattack_reference.py --standard-run runs/mnist \\
        --robust-run runs/mnist-robust --examples 1000
    IMGCLF_DATA_DIR=../shared/data python bench/autoattack_reference.py --standard-run runs/mnist \\
        --robust-run runs/mnist-robust --examples 1000 --ensemble-only
    IMGCLF_DATA_DIR=../shared/data python bench/autoattack_reference.py --standard-run runs/mnist \\
        --robust-run runs/mnist-robust --examples 1000 --per-attack-only
    IMGCLF_DATA_DIR=../shared/data python bench/autoattack_reference.py --standard-run runs/mnist \\
        --models standard --examples 1000 --square-seeds 0,1,2
    IMGCLF_DATA_DIR=../shared/data python bench/autoattack_reference.py --standard-run runs/mnist \\
        --models standard --examples 1000 --square-seeds 0 --square-full-window

Without ``--standard-run`` / ``--robust-run`` the models are trained first with ``imgclf train``
(standard: 1 epoch; robust: ``fgsm-rs`` at eps 0.3, 6 epochs; a few minutes). Prints one table per
model and exits 1 if a target is missed.
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

import torch

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def train(out: Path, robust: bool, device: str) -> Path:
    extra = ["--adversarial", "fgsm-rs", "--adv-eps", "0.3", "--epochs", "6", "--batch-size", "128", "--lr", "5e-3"] \
        if robust else ["--epochs", "1"]
    subprocess.run([sys.executable, "-m", "imgclf", "train", "--dataset", "mnist", "--model", "simple-cnn", *extra,
                    "--device", device, "--out", str(out), "--quiet"], check=True)
    return out


def test_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    data = MNIST(os.environ.get("IMGCLF_DATA_DIR", "data"), train=False)
    return data.data[:count].float().div(255).unsqueeze(1), data.targets[:count].long()


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return sum(int((model(images[i:i + 500]).argmax(1) == labels[i:i + 500]).sum())
                   for i in range(0, len(labels), 500)) / len(labels)


def torchattacks_square(model: torch.nn.Module, eps: float, *, seed: int, full_window: bool = False):
    """torchattacks' Square at the standard version's settings: L-inf, 5,000 queries, p_init 0.8, one restart.

    ``full_window``: a square may also cover the last row and column, as imgclf's may. torchattacks draws the
    corner from ``[0, H - s)`` (``random_int``, as AutoAttack's code), so a square never reaches them and they
    keep their first stripes' values; this draws it from ``[0, H - s]`` instead, nothing else changed.
    """
    import torchattacks

    attack = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, seed=seed)
    if full_window:
        def random_int(low: int = 0, high: int = 1, shape: tuple[int, ...] = (1,)) -> torch.Tensor:
            return (low + (high - low + 1) * torch.rand(shape).to(attack.device)).long()

        attack.random_int = random_int
    return attack


def in_batches(attack, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    """A torchattacks attack's adversarial images of ``x``, ``batch`` images per call."""
    return torch.cat([attack(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])


def reference(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int, *,
              parts: set[str]) -> dict[str, tuple[float, float, float]]:
    """torchattacks: each attack alone (``"per-attack"`` in ``parts``), the four as a ``MultiAttack`` and its
    ``AutoAttack`` class (``"ensemble"``): ``{name: (robust accuracy, seconds, CPU seconds)}``."""
    import torchattacks

    attacks = {
        "apgd-ce": torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
        "apgd-t": torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=10, seed=0),
        "fab-t": torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                  n_classes=10, seed=0),
        "square": torchattacks_square(model, eps, seed=0),
    }
    # The standard ensemble at the standard settings: torchattacks' AutoAttack class runs APGD, APGD-T and FAB
    # with their default of 10 steps (torchattacks 3.5), so the ensemble is composed here from the attacks above.
    attacks["worst-case"] = torchattacks.MultiAttack([attacks[name] for name in ATTACKS])
    attacks["AutoAttack class"] = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                                          n_classes=10, seed=0)
    if "per-attack" not in parts:
        attacks = {"worst-case": attacks["worst-case"]}
    elif "ensemble" not in parts:
        attacks = {name: attacks[name] for name in ATTACKS}
    rows = {}
    for name, attack in attacks.items():
        began, cpu = time.perf_counter(), time.process_time()
        adversarial = in_batches(attack, x, y, batch)
        rows[name] = (accuracy(model, adversarial, y), time.perf_counter() - began, time.process_time() - cpu)
        print(f"  torchattacks {name:>10}: robust accuracy {rows[name][0]:.4f}  {rows[name][1]:7.1f} s "
              f"({rows[name][2]:7.1f} CPU s)", flush=True)
    return rows


def ours(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int, *, cascade: bool
         ) -> dict[str, tuple[float, float, float]]:
    """imgclf's ensemble in one evaluation: ``{name: (robust accuracy, seconds, CPU seconds)}``; CPU seconds
    for the worst case only (per attack: NaN). Each attack on every
    correct example (``cascade=False``: per-attack rows, as torchattacks' attacks alone), or as AutoAttack
    runs them (``cascade=True``: the worst case and the ensemble's time)."""
    from imgclf.attacks import AttackSpec, robustness

    began, cpu = time.perf_counter(), time.process_time()
    result = robustness(model, x, y, attacks=[AttackSpec(name) for name in ATTACKS], eps_values=[eps],
                        device=x.device, batch_size=batch, run_checks=False, cascade=cascade)
    total, cpu = time.perf_counter() - began, time.process_time() - cpu
    rows = {}
    label = "imgclf cascade" if cascade else "imgclf alone"
    for entry in result.entries:
        seconds, cpu_seconds = (total, cpu) if entry.attack == "worst-case" else (entry.seconds, float("nan"))
        rows[entry.attack] = (entry.accuracy, seconds, cpu_seconds)
        cost = f"{entry.forwards_per_example:7.0f} fwd {entry.backwards_per_example:6.0f} bwd /example" \
            if entry.attacked else ""
        cpu_note = f" ({cpu_seconds:7.1f} CPU s)" if entry.attack == "worst-case" else ""
        print(f"  {label:<14} {entry.attack:>10}: robust accuracy {entry.accuracy:.4f}  {seconds:7.1f} s{cpu_note}  "
              f"{cost}", flush=True)
    return rows


def square_seeds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int,
                 seeds: list[int], *, full_window: bool = False) -> float:
    """Square (5,000 queries) alone in both libraries, once per seed; prints each run and the means, and
    returns the gap of the means in accuracy (imgclf minus torchattacks). ``full_window``: see
    :func:`torchattacks_square`."""
    from imgclf.attacks import AttackSpec, robustness

    found: dict[str, list[float]] = {"imgclf": [], "torchattacks": []}
    for seed in seeds:
        began = time.perf_counter()
        result = robustness(model, x, y, attacks=[AttackSpec("square")], eps_values=[eps], device=x.device,
                            batch_size=batch, run_checks=False, seed=seed)
        found["imgclf"].append(next(e.accuracy for e in result.entries if e.attack == "square"))
        print(f"  seed {seed}: imgclf       square robust accuracy {found['imgclf'][-1]:.4f}  "
              f"{time.perf_counter() - began:7.1f} s", flush=True)
        began = time.perf_counter()
        adversarial = in_batches(torchattacks_square(model, eps, seed=seed, full_window=full_window), x, y, batch)
        found["torchattacks"].append(accuracy(model, adversarial, y))
        print(f"  seed {seed}: torchattacks square robust accuracy {found['torchattacks'][-1]:.4f}  "
              f"{time.perf_counter() - began:7.1f} s", flush=True)
    means = {name: sum(values) / len(values) for name, values in found.items()}
    for name, values in found.items():
        print(f"  {name:>12}: mean {means[name]:.4f}, range {min(values):.4f} to {max(values):.4f} "
              f"over seeds {', '.join(map(str, seeds))}", flush=True)
    return means["imgclf"] - means["torchattacks"]


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; anything else is an argparse error naming the expected form."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds (0,1,2), got {text!r}") from None
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    return seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--standard-run", type=Path, help="a standard simple-cnn MNIST run (default: train one)")
    parser.add_argument("--robust-run", type=Path, help="an adversarially trained one (default: train one)")
    parser.add_argument("--models", default="standard,robust", help="which of the two models to attack")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both libraries attack")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--ensemble-only", action="store_true",
                      help="only the ensembles (imgclf --cascade, torchattacks MultiAttack): the worst case and "
                           "the time ratio, without the per-attack runs")
    only.add_argument("--per-attack-only", action="store_true",
                      help="only each attack alone on every correct example, in both libraries")
    only.add_argument("--square-seeds", metavar="LIST", type=seed_list,
                      help="only Square, in both libraries, once per seed of the comma-separated list")
    parser.add_argument("--square-full-window", action="store_true",
                        help="with --square-seeds: let torchattacks' squares reach the last row and column too, "
                             "as imgclf's do")
    args = parser.parse_args()
    if args.square_full_window and not args.square_seeds:
        parser.error("--square-full-window needs --square-seeds")
    parts = {"ensemble"} if args.ensemble_only else {"per-attack"} if args.per_attack_only else {
        "ensemble", "per-attack"}

    from imgclf import load_model

    torch.set_num_threads(args.threads)
    x, y = (tensor.to(args.device) for tensor in test_images(args.examples))
    where = torch.cuda.get_device_name() if x.is_cuda else f"{platform.processor() or platform.machine()}, " \
        f"{args.threads} threads"
    print(f"{where}, torch {torch.__version__}; "
          f"MNIST, first {len(x)} test images, batch {args.batch_size}", flush=True)
    met = True
    with tempfile.TemporaryDirectory() as tmp:
        for label, run, eps, robust in (("standard simple-cnn", args.standard_run, 0.1, False),
                                        ("fgsm-rs simple-cnn", args.robust_run, 0.3, True)):
            if ("robust" if robust else "standard") not in args.models.split(","):
                continue
            path = run or train(Path(tmp) / label.split()[0], robust, args.device)
            model = load_model(path).eval().to(args.device)
            print(f"{label} ({path}), eps {eps}: clean accuracy {accuracy(model, x, y):.4f}", flush=True)
            if args.square_seeds:
                gap = square_seeds(model, x, y, eps, args.batch_size, args.square_seeds,
                                   full_window=args.square_full_window)
                print(f"  gap of the Square means {100 * gap:+.2f} points (target: within 0.5)", flush=True)
                met = met and abs(gap) <= 0.005
                continue
            alone = ours(model, x, y, eps, args.batch_size, cascade=False) if "per-attack" in parts else {}
            cascade = ours(model, x, y, eps, args.batch_size, cascade=True) if "ensemble" in parts else {}
            theirs = reference(model, x, y, eps, args.batch_size, parts=parts)
            gaps = [abs(alone[name][0] - theirs[name][0]) for name in alone if name in ATTACKS]
            line = ""
            if cascade:
                gaps.append(abs(cascade["worst-case"][0] - theirs["worst-case"][0]))
                ratio = cascade["worst-case"][1] / theirs["worst-case"][1]
                cpu_ratio = cascade["worst-case"][2] / theirs["worst-case"][2]
                line = f"; ensemble time imgclf / torchattacks = {ratio:.2f}, CPU time {cpu_ratio:.2f} (target <= 0.5)"
                met = met and ratio <= 0.5
            print(f"  largest robust-accuracy gap {100 * max(gaps):.2f} points (target <= 0.5){line}", flush=True)
            met = met and max(gaps) <= 0.005
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
