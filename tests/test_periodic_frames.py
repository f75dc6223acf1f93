"""Wrap-invariant frame constructions (faenet.frames.compute_frames_by: ``lattice``, ``edges``), float64.

FAENet under full FA and under SFA with a fixed frame draw predicts the same energy (1e-12 eV) when atoms are
moved by lattice vectors or the slab is translated and wrapped, and full FA stays E(3)-invariant (rotations,
reflections, translations of atoms and cell together); the paper's PCA frame changes by orders of magnitude more.
"""

import pytest
import torch
from ase.build import add_adsorbate, bulk, fcc111
from torch_geometric.data import Batch, Data

from faenet.frames import FRAME_CONSTRUCTIONS, compute_frames_by
from faenet.graph import radius_graph
from faenet.model import FAENet
from faenet.symmetry import SymmetryWrapper, apply_transform, random_rotation
from faenet.symmetry_metrics import wrap_moves

pytestmark = pytest.mark.usefixtures("one_thread")


def _graph(atoms, pbc, tags=None) -> Batch:
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array).reshape(1, 3, 3)
    pbc_t = torch.tensor([pbc])
    ei, off = radius_graph(pos, 6.0, 1000, cell[0], pbc_t[0])  # no neighbour cap: images tie in small cells
    n = len(atoms)
    tags = torch.ones(n, dtype=torch.long) if tags is None else tags
    return Batch.from_data_list([Data(pos=pos, atomic_numbers=torch.tensor(atoms.numbers), natoms=n, tags=tags,
                                      fixed=(tags == 0).long(), cell=cell, pbc=pbc_t, edge_index=ei,
                                      cell_offsets=off, y=0.0)])


def _slab() -> Batch:
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.rattle(0.05, seed=2)
    tags = torch.ones(len(slab), dtype=torch.long)
    tags[:4], tags[-1] = 0, 2
    return _graph(slab, [True, True, False], tags)


def _bulk() -> Batch:
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 2)
    crystal.cell[2] += [0.4, 0.2, 0.0]  # triclinic, so no lattice axis is special
    crystal.positions[:] = crystal.cell.cartesian_positions(crystal.cell.scaled_positions(crystal.positions))
    crystal.rattle(0.08, seed=3)
    return _graph(crystal, [True, True, True])


def _net() -> FAENet:
    torch.manual_seed(0)
    return FAENet(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=8, tag_hidden_channels=4,
                  pg_hidden_channels=4, phys_embeds=False, cutoff=6.0).double().eval()


def _energy(net, data, method: str, dim: int, construction: str, seed: int = 5) -> torch.Tensor:
    # A fresh generator per call: SFA draws the same frame index for both descriptions of the structure.
    w = SymmetryWrapper(net, method, frame_dim=dim, generator=torch.Generator().manual_seed(seed),
                        frame_construction=construction).eval()
    with torch.no_grad():
        return w(data)["energy"].reshape(-1)


@pytest.mark.parametrize("construction", ["lattice", "edges"])
@pytest.mark.parametrize("method", ["full", "sfa"])
@pytest.mark.parametrize("system,dim", [("slab", 2), ("bulk", 3)])
def test_new_frames_are_wrap_invariant_pca_is_not(construction, method, system, dim):
    net, data = _net(), _slab() if system == "slab" else _bulk()
    gen = torch.Generator().manual_seed(11)
    diffs = {c: [] for c in ("pca", construction)}
    for _ in range(3):
        moved = wrap_moves(data, gen)
        for c in diffs:
            e0 = _energy(net, data, method, dim, c)
            diffs[c] += [float((_energy(net, m, method, dim, c) - e0).abs().max()) for m in moved]
    assert max(diffs[construction]) < 1e-12
    assert max(diffs["pca"]) > 1e-5  # ~7 orders above: the PCA frame follows the stored positions


@pytest.mark.parametrize("construction", FRAME_CONSTRUCTIONS)
@pytest.mark.parametrize("system,dim", [("slab", 2), ("bulk", 3)])
def test_full_fa_stays_e3_invariant(construction, system, dim):
    net, data = _net(), _slab() if system == "slab" else _bulk()
    gen = torch.Generator().manual_seed(4)
    e0 = _energy(net, data, "full", dim, construction)
    for _ in range(4):
        q = random_rotation(1, dim, reflect=True, generator=gen)
        t = torch.randn(1, 3, generator=gen, dtype=torch.float64) * 3.0
        if dim == 2:
            t[:, 2] = 0.0  # slabs: z is the surface normal, the 2D group acts in the plane (translations too)
        e = _energy(net, apply_transform(data, q, t), "full", dim, construction)
        assert float((e - e0).abs().max()) < 1e-12


def test_lattice_frame_hand_checked():
    # A cell a = (2, 0, 0), b = (1, 1, 0): Gram-Schmidt gives axes x, y; a rotation of the cell by 90 degrees
    # about z gives axes y, -x (rotated with it), and the frame set is the 4 sign flips of those columns.
    cell = torch.tensor([[[2.0, 0, 0], [1.0, 1, 0], [0, 0, 10.0]]], dtype=torch.float64)
    pos = torch.tensor([[0.3, 0.1, 1.0], [1.2, 0.7, 2.0]], dtype=torch.float64)
    batch = torch.zeros(2, dtype=torch.long)
    pbc = torch.tensor([[True, True, False]])
    fr = compute_frames_by("lattice", pos, batch, 1, dim=2, cell=cell, pbc=pbc)
    torch.testing.assert_close(fr.rotations[0, 0], torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(fr.eigenvalues[0], torch.tensor([4.0, 1.0], dtype=torch.float64))
    q = torch.tensor([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=torch.float64)  # row vectors: x -> y
    fr_q = compute_frames_by("lattice", pos @ q, batch, 1, dim=2, cell=cell @ q, pbc=pbc)
    torch.testing.assert_close(fr_q.rotations[0, 0], q.T)


def test_molecules_fall_back_to_pca():
    pos = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = torch.zeros(6, dtype=torch.long)
    cell = torch.zeros(1, 3, 3, dtype=torch.float64)
    pca = compute_frames_by("pca", pos, batch, 1)
    lat = compute_frames_by("lattice", pos, batch, 1, cell=cell, pbc=torch.zeros(1, 3, dtype=torch.bool))
    torch.testing.assert_close(lat.rotations, pca.rotations)
    with pytest.raises(ValueError, match="allowed: pca, lattice, edges"):
        compute_frames_by("wigner", pos, batch, 1)
