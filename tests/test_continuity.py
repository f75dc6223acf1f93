"""faenet.continuity: a path through a degenerate PCA spectrum, and the jumps of FA predictions along it."""

import math

import pytest
import torch
from ase.build import add_adsorbate, fcc100
from torch_geometric.data import Batch, Data

from faenet.continuity import continuity_sweep, degenerate_path, nearest_degenerate, sweep_model, symmetry_predictors
from faenet.graph import radius_graph
from faenet.model import FAENet
from faenet.training import Normalizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _molecule(pos: torch.Tensor) -> Batch:
    n = pos.shape[0]
    ei = torch.tensor([[i, j] for i in range(n) for j in range(n) if i != j]).T
    return Batch.from_data_list([Data(pos=pos, atomic_numbers=torch.full((n,), 6), natoms=n,
                                      tags=torch.ones(n, dtype=torch.long), edge_index=ei,
                                      cell=torch.zeros(1, 3, 3, dtype=pos.dtype),
                                      cell_offsets=torch.zeros(ei.shape[1], 3, dtype=torch.long),
                                      pbc=torch.zeros(1, 3, dtype=torch.bool), y=0.0)])


def _cloud() -> Batch:
    g = torch.Generator().manual_seed(1)
    return _molecule(torch.randn(7, 3, generator=g, dtype=torch.float64) * torch.tensor([1.6, 1.0, 0.6],
                                                                                        dtype=torch.float64))


def _net() -> FAENet:
    torch.manual_seed(0)
    return FAENet(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=8, tag_hidden_channels=4,
                  pg_hidden_channels=4, phys_embeds=False, cutoff=30.0).double().eval()


def test_hand_checked_path_crosses_at_the_middle():
    # Variances x 8/6, y 2/6, z 0.18/6: at s = 0 (m = 4/6) x is scaled by (1/4)^(1/4) and y by 4^(1/4): both +-sqrt 2.
    pos = torch.tensor([[2.0, 0, 0], [-2, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 0.3], [0, 0, -0.3]],
                       dtype=torch.float64)
    ts, path = degenerate_path(_molecule(pos), dim=3, n_points=5, width=0.1)
    assert ts[2] == 0.0
    r2 = math.sqrt(2.0)
    expect = torch.tensor([[r2, 0, 0], [-r2, 0, 0], [0, r2, 0], [0, -r2, 0], [0, 0, 0.3], [0, 0, -0.3]],
                          dtype=torch.float64)
    torch.testing.assert_close(path[2].pos, expect)


def test_sweep_crosses_the_degeneracy_and_smooth_vs_jumping_predictors():
    data = _cloud()
    preds = {"distances": lambda d: torch.pdist(d.pos).sum().reshape(1),  # invariant and smooth
             # first principal axis' |x| component: continuous in the axis but the axis swaps at the crossing
             "axis": lambda d: d.pos.new_tensor([float(torch.linalg.eigh(torch.cov(d.pos.T))[1][0, -1].abs())])}
    res = continuity_sweep(preds, data, dim=3, n_points=21, width=0.1)
    k = res["crossing_index"]
    assert res["eigengap"][k] < 1e-10 < min(res["eigengap"][0], res["eigengap"][-1])
    assert res["jump_ratio"]["distances"] < 3
    assert res["jump_ratio"]["axis"] > 10


def test_faenet_none_is_smooth_full_fa_jumps_at_the_crossing():
    res = continuity_sweep(symmetry_predictors(_net(), 3, n_draws=8), _cloud(), dim=3, n_points=21, width=0.1)
    assert set(res["energy"]) == {"none", "sfa-mean", "full"}
    assert res["jump_ratio"]["none"] < 3
    # Measured, not assumed: full FA of PCA frames swaps axes at the crossing, a jump ~10x the smooth slope
    assert res["jump_ratio"]["full"] > 5
    e = res["energy"]["full"]
    k = res["crossing_index"]
    steps = [abs(b - a) for a, b in zip(e[:-1], e[1:], strict=True)]
    assert max(range(len(steps)), key=steps.__getitem__) in (k - 1, k)


def test_slab_lattice_frames_are_continuous():
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=6.0)  # square cell: in-plane variances near each other
    add_adsorbate(slab, "O", 1.6, "hollow", offset=(0.3, 0.1))
    slab.rattle(0.05, seed=2)
    pos, cell = torch.tensor(slab.positions), torch.tensor(slab.cell.array).reshape(1, 3, 3)
    pbc = torch.tensor([[True, True, False]])
    ei, off = radius_graph(pos, 6.0, 1000, cell[0], pbc[0])
    n = len(slab)
    data = Batch.from_data_list([Data(pos=pos, atomic_numbers=torch.tensor(slab.numbers), natoms=n,
                                      tags=torch.ones(n, dtype=torch.long), cell=cell, pbc=pbc, edge_index=ei,
                                      cell_offsets=off, y=0.0)])
    torch.manual_seed(0)
    net = FAENet(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=8, tag_hidden_channels=4,
                 pg_hidden_channels=4, phys_embeds=False, cutoff=8.0,
                 max_num_neighbors=1000).double().eval()  # no cap: ranking neighbours would jump
    res = continuity_sweep(symmetry_predictors(net, 2, n_draws=4, periodic=True), data, dim=2, n_points=21)
    assert res["eigengap"][res["crossing_index"]] < 1e-10
    assert res["jump_ratio"]["full-lattice"] < 3 and res["jump_ratio"]["none"] < 3
    assert res["jump_ratio"]["full"] > 5  # PCA frames of the in-plane positions swap axes at the crossing


def test_nearest_degenerate_picks_the_closest_variances_and_skips_exact_ones():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(9, 3, generator=g, dtype=torch.float64)
    base = base - base.mean(0)
    # Whiten, then give axis variances: far apart, close, and exactly degenerate (skipped: no path through it).
    u, _, vt = torch.linalg.svd(base, full_matrices=False)
    recs = [Data(pos=u @ torch.diag(torch.tensor(s, dtype=torch.float64)))
            for s in ([3.0, 1.0, 0.5], [1.05, 1.0, 0.5], [1.0, 1.0, 0.5])]
    k, gap = nearest_degenerate(recs, 3)
    assert k == 1 and gap == pytest.approx(1 - 1 / 1.05**2, rel=1e-6)


def test_sweep_model_denormalises_and_lifts_the_neighbour_cap():
    net = _net()
    net.max_num_neighbors = 4
    norm = Normalizer(mean=-1.0, std=0.5)
    res = sweep_model(net, norm, [_cloud()[0]], 3, n_draws=2, n_points=5, uncap_neighbors=True)
    assert net.max_num_neighbors is None and net.regress_forces == ""
    assert res["record_index"] == 0 and not res["periodic"] and res["seconds"] >= 0
    assert set(res["energy"]) == {"none", "sfa-mean", "full"} and len(res["t"]) == 5
    raw = sweep_model(net, Normalizer(), [_cloud()[0]], 3, n_draws=2, n_points=5)
    for m in ("none", "full"):  # de-normalised: std * prediction + mean at every point of the path
        assert res["energy"][m] == pytest.approx([0.5 * e - 1.0 for e in raw["energy"][m]], rel=1e-9)
