"""How unevenly DDP ranks share atoms, with and without ``train.balance_ranks: atoms``.

Under DDP a step waits for the slowest rank, whose cost grows with its atoms. For each world size, every global
batch of one epoch (``batch_size`` graphs per rank, the trainer's 1-process order) is split as the trainer splits
it: contiguous slices (``off``) or ``faenet.distributed.partition_by_atoms`` (``atoms``). Printed: the mean over
global batches of max / mean per-rank atoms (1.0 = perfectly balanced), and its worst batch.

    python -m benchmarks.rank_balance [--data data/is2re/train.lmdb] [--task is2re] [--batch-size 16]
                                      [--worlds 2 4 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from faenet import distributed as ddp
from faenet.data.dataset import GraphDataset
from faenet.training import atom_counts, epoch_order


def imbalance(natoms: list[int], batch_size: int, world: int, seed: int, balanced: bool) -> tuple[float, float]:
    """(mean, max) over the epoch's global batches of max / mean per-rank atoms."""
    n = len(natoms)
    ratios = []
    samplers = [ddp.GlobalBatchSampler(n, batch_size, ddp.Dist(r, world, r), lambda e: epoch_order(n, seed, e),
                                       natoms if balanced else None) for r in range(world)]
    per_rank = [list(s) for s in samplers]  # every rank's batches, as each rank draws them
    for k in range(len(per_rank[0])):
        totals = np.array([sum(natoms[i] for i in per_rank[r][k]) for r in range(world)], dtype=float)
        ratios.append(totals.max() / totals.mean())
    return float(np.mean(ratios)), float(np.max(ratios))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/is2re/train.lmdb")
    ap.add_argument("--task", default="is2re")
    ap.add_argument("--batch-size", type=int, default=16, help="graphs per rank (the default profile's IS2RE)")
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    natoms = atom_counts(GraphDataset(a.data, a.task, in_memory=False))
    print(f"{a.data}: {len(natoms)} graphs, {min(natoms)}-{max(natoms)} atoms (mean {np.mean(natoms):.1f}); "
          f"atom counts read in {time.perf_counter() - t0:.2f} s (one streamed pass)")
    print("| world | global batch | off: mean max/mean | off: worst | atoms: mean max/mean | atoms: worst |")
    print("|---|---|---|---|---|---|")
    for w in a.worlds:
        off = imbalance(natoms, a.batch_size, w, a.seed, False)
        on = imbalance(natoms, a.batch_size, w, a.seed, True)
        print(f"| {w} | {a.batch_size * w} | {off[0]:.3f} | {off[1]:.3f} | {on[0]:.3f} | {on[1]:.3f} |")


if __name__ == "__main__":
    main()
