"""Benchmark: Square's focused search (``focus``) against the full search, and how far Square is from converging.

On a run folder's seeded stratified test subset (the one every evaluation draws), after APGD-CE and APGD-DLR at
``--eps``: Square with ``--queries`` on every example still standing, and the same search with ``--focus`` (past
a fifth of its queries, only the examples of smallest margin go on), for each ``--seeds``; then, on what the
first full search left (the first seed's), a search of the same length with the next seed and one of twice the
length with the seed after: whether a new draw, or a longer search, finds more. Target: the focused search
finds at least 90% of what the full one finds.

Usage::

    IMGCLF_DATA_DIR=../shared/data python bench/square_focus.py --run runs/anchor-fgsm-rs-mnist-eps035 --eps 0.3

Prints one line per search and exits 1 if the target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--focus", type=float, default=0.125)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    args = parser.parse_args()

    import imgclf
    from imgclf.attacks import apgd, square
    from imgclf.data import stratified_subset

    run = imgclf.Run.open(args.run, quiet=True)
    model, test = run.model.eval(), run.data.test
    rows = stratified_subset(test.labels.numpy(), args.examples, run.settings.config.seed)
    x, y = test.float_images(rows), test.labels[torch.as_tensor(rows)]

    def standing(adversarial: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(adversarial).argmax(1) == labels

    def seeded(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    keep = standing(x, y)
    x, y = x[keep], y[keep]
    for seed, loss in ((1, "ce"), (2, "dlr")):
        keep = standing(apgd(model, x, y, eps=args.eps, loss=loss, generator=seeded(seed)), y)
        x, y = x[keep], y[keep]
    print(f"{args.run}: {len(y)} of {args.examples} test images standing after APGD-CE and APGD-DLR at eps {args.eps}")
    shares = []
    for seed in args.seeds:
        found = {}
        for focus in (1.0, args.focus):
            began = time.perf_counter()
            found[focus] = ~standing(square(model, x, y, eps=args.eps, queries=args.queries, focus=focus,
                                            generator=seeded(seed)), y)
            print(f"seed {seed}, Square {args.queries} queries, focus {focus:g}: fooled {int(found[focus].sum())} "
                  f"of {len(y)} in {time.perf_counter() - began:.0f} s", flush=True)
        full = int(found[1.0].sum())
        shares.append(int((found[args.focus] & found[1.0]).sum()) / full if full else 1.0)
        if seed == args.seeds[0]:
            left = ~found[1.0]  # what the first seed's full search left
    print(f"the focused search found {', '.join(f'{share:.0%}' for share in shares)} of what the full one found")
    x, y = x[left], y[left]
    for queries, seed in ((args.queries, args.seeds[0] + 1), (2 * args.queries, args.seeds[0] + 2)):
        began = time.perf_counter()
        more = ~standing(square(model, x, y, eps=args.eps, queries=queries, generator=seeded(seed)), y)
        print(f"on the {len(y)} the first full search left: Square {queries} queries, a new seed, fooled "
              f"{int(more.sum())} ({more.float().mean().item():.2%}) in {time.perf_counter() - began:.0f} s",
              flush=True)
    return 0 if min(shares) >= 0.9 else 1


if __name__ == "__main__":
    from imgclf.errors import UsageError

    try:
        sys.exit(main())
    except UsageError as error:  # a run folder that is not there or not a run: one line, not a traceback
        sys.exit(f"square_focus: {error}")
