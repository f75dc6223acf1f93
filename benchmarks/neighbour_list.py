"""The project's dense pure-torch periodic radius graph (``faenet.graph.radius_graph``) against vesin's cell-list
neighbour list, on fcc Cu supercells (periodic in x, y, z) at a 6 Å cutoff. (``radius_graph(backend="auto")``
uses vesin's pairs as candidates for periodic cells; this compares the dense path with vesin itself.)

For each cell: both edge sets (sorted ``(centre i, neighbour j, cell offset)`` rows) must be equal, then the
best of ``--repeats`` wall times of each (vesin: the neighbour list only, ``quantities="ijS"``). The neighbour
limit is set above every atom's degree so that both lists are complete.

    python -m benchmarks.neighbour_list [--sizes 200 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.build import bulk

from faenet.graph import radius_graph

CUTOFF = 6.0


def cu_supercell(n_atoms: int):
    """An fcc Cu supercell of exactly ``n_atoms`` atoms (a multiple of 4: the cubic cell holds 4), the
    repetition as even as possible over the three axes (200: 5 x 5 x 2; 2000: 10 x 10 x 5)."""
    if n_atoms % 4:
        raise ValueError(f"--sizes: {n_atoms} is not a multiple of 4 (atoms per cubic fcc cell)")
    m = n_atoms // 4
    reps = min(((a, b, m // (a * b)) for a in range(1, m + 1) for b in range(1, m + 1) if m % (a * b) == 0),
               key=lambda r: (max(r) / min(r), r))
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(reps)


def torch_edges(atoms) -> np.ndarray:
    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    ei, off = radius_graph(pos, CUTOFF, len(atoms), cell, (True, True, True), backend="torch")
    return _rows(ei[1].numpy(), ei[0].numpy(), off.numpy())


def vesin_edges(atoms) -> np.ndarray:
    from vesin import NeighborList

    i, j, s = NeighborList(cutoff=CUTOFF, full_list=True).compute(atoms.positions, atoms.cell.array, True, "ijS")
    return _rows(i, j, s)


def _rows(i: np.ndarray, j: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    rows = np.column_stack([i, j, offsets]).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def best_seconds(fn, atoms, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(atoms)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); cutoff {CUTOFF} Å; best of "
          f"{args.repeats}")
    for n in args.sizes:
        atoms = cu_supercell(n)
        a, b = torch_edges(atoms), vesin_edges(atoms)
        same = a.shape == b.shape and bool((a == b).all())
        t_torch = best_seconds(torch_edges, atoms, args.repeats)
        t_vesin = best_seconds(vesin_edges, atoms, args.repeats)
        print(f"{len(atoms):5d} atoms, {len(a):7d} edges: same edge set {same}; faenet.graph.radius_graph "
              f"{t_torch * 1e3:9.1f} ms, vesin {t_vesin * 1e3:7.1f} ms ({t_torch / t_vesin:.0f}x)")


if __name__ == "__main__":
    main()
