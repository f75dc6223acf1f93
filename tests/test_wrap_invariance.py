"""Wrap-I (faenet.symmetry_metrics.wrap_invariance): moving atoms by lattice vectors, or translating and wrapping
a slab, leaves every edge vector unchanged; a model without frames predicts the same energy (float64), full FA
with PCA frames of the stored positions does not."""

import pytest
import torch
from ase.build import add_adsorbate, fcc111
from torch_geometric.data import Batch, Data

from faenet.graph import edge_vectors, radius_graph
from faenet.model import FAENet
from faenet.symmetry import SymmetryWrapper
from faenet.symmetry_metrics import wrap_invariance, wrap_moves

pytestmark = pytest.mark.usefixtures("one_thread")


def _slab_batch():
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.rattle(0.05, seed=2)
    pos = torch.tensor(slab.positions)
    cell = torch.tensor(slab.cell.array).reshape(1, 3, 3)
    pbc = torch.tensor([[True, True, False]])
    ei, off = radius_graph(pos, 6.0, 1000, cell[0], pbc[0])  # no neighbour cap: images tie in a 2x2 cell
    n = len(slab)
    tags = torch.ones(n, dtype=torch.long)
    tags[:4], tags[-1] = 0, 2
    return Batch.from_data_list([Data(pos=pos, atomic_numbers=torch.tensor(slab.numbers), natoms=n, tags=tags,
                                      fixed=(tags == 0).long(), cell=cell, pbc=pbc, edge_index=ei,
                                      cell_offsets=off, y=0.0)])


def test_moves_keep_every_edge_vector():
    data = _slab_batch()
    ref = edge_vectors(data.pos, data.edge_index, data.cell_offsets, data.cell, data.batch)
    a, b = wrap_moves(data, torch.Generator().manual_seed(0))
    assert not torch.allclose(a.pos, data.pos) and not torch.allclose(b.pos, data.pos)
    for moved in (a, b):
        vec = edge_vectors(moved.pos, moved.edge_index, moved.cell_offsets, moved.cell, moved.batch)
        torch.testing.assert_close(vec, ref, rtol=0, atol=1e-12)
    frac = torch.linalg.solve(b.cell[0].T, b.pos.T).T
    assert bool(((frac[:, :2] >= 0) & (frac[:, :2] < 1)).all())  # wrapped into the cell


def test_wrap_i_zero_without_frames_positive_with_full_fa():
    torch.manual_seed(0)
    net = FAENet(hidden_channels=16, num_filters=16, num_interactions=1, num_gaussians=8, tag_hidden_channels=4,
                 pg_hidden_channels=4, phys_embeds=False, cutoff=6.0).double().eval()
    data = _slab_batch()
    out = {}
    for method in ("none", "full"):
        wrapped = SymmetryWrapper(net, method, frame_dim=2).eval()
        out[method] = wrap_invariance(wrapped, [data], n_transforms=3, generator=torch.Generator().manual_seed(1))
    assert max(out["none"].values()) < 1e-9  # meV (rounding only)
    assert min(out["full"].values()) > 1e-6  # the PCA frame follows the stored positions
