"""faenet.graph against independent references: ASE's neighbour list and brute-force triplets."""

import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.neighborlist import neighbor_list

from faenet.graph import edge_vectors, radius_graph, triplets


def _slab(size=(3, 3, 4), metal="Cu"):
    slab = fcc111(metal, size, vacuum=8.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    return slab


@pytest.mark.parametrize("size,cutoff", [((3, 3, 4), 4.0), ((3, 3, 4), 6.0), ((2, 2, 3), 6.0)])
def test_periodic_radius_graph_matches_ase(size, cutoff):
    slab = _slab(size)
    pos, cell = torch.tensor(slab.positions), torch.tensor(slab.cell.array)
    ei, off = radius_graph(pos, cutoff, 10_000, cell, (True, True, False))
    i_a, j_a, s_a = neighbor_list("ijS", slab, cutoff)
    ours = sorted(zip(ei[1].tolist(), ei[0].tolist(), map(tuple, off.tolist()), strict=True))
    ref = sorted(zip(i_a.tolist(), j_a.tolist(), map(tuple, s_a.tolist()), strict=True))
    assert ours == ref
    vec = edge_vectors(pos, ei, off, cell[None], torch.zeros(len(pos), dtype=torch.long))
    assert float(vec.norm(dim=1).max()) <= cutoff + 1e-9


def test_molecule_graph_and_max_neighbors_keeps_nearest():
    mol = molecule("C6H6")
    pos = torch.tensor(mol.positions)
    ei, off = radius_graph(pos, 3.0, 3)
    assert (off == 0).all()
    assert int(torch.bincount(ei[1]).max()) <= 3
    d_all = torch.cdist(pos, pos)
    for i in range(len(pos)):
        kept = d_all[i, ei[0][ei[1] == i]]
        others = d_all[i][(d_all[i] > 0) & (d_all[i] <= 3.0)]
        # the kept neighbours are the nearest ones
        assert torch.allclose(kept.sort().values, others.sort().values[: len(kept)])


def test_radius_graph_is_deterministic_and_rejects_bad_input():
    slab = _slab()
    pos, cell = torch.tensor(slab.positions), torch.tensor(slab.cell.array)
    a = radius_graph(pos, 6.0, 20, cell, (True, True, False))
    b = radius_graph(pos, 6.0, 20, cell, (True, True, False))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="cutoff"):
        radius_graph(pos, -1.0)
    bad = pos.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        radius_graph(bad, 6.0)
    with pytest.raises(ValueError, match="degenerate cell"):
        radius_graph(pos, 6.0, 20, torch.zeros(3, 3), (True, True, False))


@pytest.mark.parametrize("use_offsets", [False, True])
def test_triplets_match_brute_force(use_offsets):
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        n = 7
        src, dst = torch.randint(0, n, (25,), generator=g), torch.randint(0, n, (25,), generator=g)
        keep = src != dst
        ei = torch.stack([src[keep], dst[keep]])
        offs = torch.randint(-1, 2, (ei.shape[1], 3), generator=g)
        got = sorted(zip(*[r.tolist() for r in triplets(ei, n, offs if use_offsets else None)], strict=True))
        expected = []
        for ji in range(ei.shape[1]):
            j, i = int(ei[0, ji]), int(ei[1, ji])
            for kj in range(ei.shape[1]):
                if int(ei[1, kj]) != j:
                    continue
                k = int(ei[0, kj])
                reverse = k == i and (not use_offsets or bool((offs[kj] == -offs[ji]).all()))
                if not reverse:
                    expected.append((i, j, k, kj, ji))
        assert got == sorted(expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vesin_candidates_give_the_dense_graph_exactly(dtype):
    """``backend="vesin"`` (the fetch-time default for periodic cells) == the dense pure-torch path, bit for
    bit and in the same order: fcc slabs and bulk cells (many equidistant neighbours, so the neighbour limit
    cuts through ties), positions outside the cell, skewed random cells, partial periodicity."""
    import numpy as np
    from ase.build import bulk

    slab = fcc111("Pt", (2, 2, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    cases = [(slab.positions, slab.cell.array, 6.0), (slab.positions + 7.3, slab.cell.array, 6.0),
             (bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)).positions, np.eye(3) * 7.22, 6.0)]
    rng = np.random.default_rng(0)
    for _ in range(6):
        cell = np.diag(rng.uniform(3, 9, 3)) + rng.uniform(-1.5, 1.5, (3, 3)) * (1 - np.eye(3))
        cases.append((rng.uniform(-0.2, 1.2, (int(rng.integers(1, 25)), 3)) @ cell, cell, float(rng.uniform(2, 7))))
    for pos, cell, cutoff in cases:
        for pbc in ((True, True, True), (True, True, False)):
            for limit in (50, 12, 5):
                args = (torch.tensor(pos, dtype=dtype), cutoff, limit, torch.tensor(cell, dtype=dtype), pbc)
                dense, fast = radius_graph(*args, backend="torch"), radius_graph(*args, backend="vesin")
                assert torch.equal(dense[0], fast[0]) and torch.equal(dense[1], fast[1]), (pbc, limit)
    with pytest.raises(ValueError, match="periodic cell"):
        radius_graph(torch.zeros(2, 3), 3.0, backend="vesin")
