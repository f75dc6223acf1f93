"""faenet.symmetry_metrics (paper App. D): every metric on hand-made predictors with known answers (float64).

- an exactly invariant energy (sum of edge lengths) with equivariant forces (-dE/dpos) scores 0;
- the raw x-coordinate sum (forces (-1, 0, 0)) scores exactly what the drawn transforms imply, and its
  expectation over Haar rotations / uniform mirrors matches the closed forms derived below;
- Pos / pos_frac through faenet.symmetry.SymmetryWrapper: 0 for full FA (non-degenerate graphs), > 0 on a
  degenerate graph (split by faenet.frames), ~7/8 for SFA, 1 without FA.
"""

import math

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from faenet.graph import edge_vectors, radius_graph
from faenet.symmetry import SymmetryWrapper
from faenet.symmetry_metrics import (
    draw_transforms,
    frame_degeneracy_mask,
    mean_std,
    random_reflection,
    split_by_mask,
    summarize,
    symmetry_metrics,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny graphs: intra-op threads only add contention on a loaded 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def record(pos, y: float = 1.0, cutoff: float = 3.5) -> Data:
    pos = torch.as_tensor(pos, dtype=F64)
    n = len(pos)
    ei, off = radius_graph(pos, cutoff, max_num_neighbors=n)
    return Data(pos=pos, atomic_numbers=torch.full((n,), 6), natoms=n, tags=torch.full((n,), -1),
                fixed=torch.zeros(n, dtype=torch.long), cell=torch.zeros(1, 3, 3, dtype=F64),
                pbc=torch.zeros(1, 3, dtype=torch.bool), edge_index=ei, cell_offsets=off, y=y)


def random_batches(seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    recs = [record(torch.randn(n, 3, generator=g, dtype=F64) * 1.2 + 3.0, y=0.5 + i)
            for i, n in enumerate((4, 6, 5))]
    return [Batch.from_data_list(recs[:2]), Batch.from_data_list(recs[2:])]


def graph_sum(values, data):
    return torch.zeros(data.num_graphs, dtype=values.dtype).index_add_(0, data.batch, values)


class EdgeLengthModel(nn.Module):
    """E = sum of edge lengths (E(3)-invariant); forces = -dE/dpos (equivariant)."""

    regress_forces = "from_energy"

    def forward(self, data):
        pos = data.pos
        if not pos.requires_grad:
            pos.requires_grad_(True)
        with torch.enable_grad():
            vec = edge_vectors(pos, data.edge_index, data.cell_offsets, data.cell, data.batch)
            e_edge = vec.norm(dim=1)
            energy = torch.zeros(data.num_graphs, dtype=pos.dtype).index_add_(
                0, data.batch[data.edge_index[1]], e_edge)
            (grad,) = torch.autograd.grad(energy.sum(), pos)
        return {"energy": energy.detach(), "forces": -grad}


class XSumModel(nn.Module):
    """E = sum_i x_i (not invariant); forces = -dE/dpos = (-1, 0, 0) for every atom (not equivariant)."""

    regress_forces = "direct"

    def forward(self, data):
        forces = torch.zeros_like(data.pos)
        forces[:, 0] = -1.0
        return {"energy": graph_sum(data.pos[:, 0], data), "forces": forces}


class TanhModel(nn.Module):
    """A deliberately non-invariant energy and force model reading raw coordinates and edge vectors."""

    regress_forces = "direct"

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.tensor([0.3, -0.7, 0.5], dtype=F64)
        self.m = torch.tensor([[0.2, 0.9, -0.4], [-0.6, 0.1, 0.8], [0.5, -0.3, 0.7]], dtype=F64)

    def forward(self, data):
        vec = edge_vectors(data.pos, data.edge_index, data.cell_offsets, data.cell, data.batch)
        # Odd terms cancel in the average over all sign frames; the quartic survives and is not a function
        # of the covariance eigenvalues alone, so full FA is NOT invariant on a degenerate (isotropic) graph.
        p = data.pos @ self.w
        e_atom = torch.tanh(p) + 0.1 * p ** 2 + 0.05 * p ** 4
        e_edge = torch.zeros(len(p), dtype=F64).index_add_(0, data.edge_index[1], torch.tanh(vec @ self.w))
        return {"energy": graph_sum(e_atom + e_edge, data), "forces": torch.tanh(data.pos @ self.m)}


# -- transforms ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
def test_reflections_are_true_mirrors(dim):
    p = random_reflection(500, dim, torch.Generator().manual_seed(1))
    eye = torch.eye(3, dtype=F64).expand(500, 3, 3)
    assert torch.allclose(torch.linalg.det(p), torch.full((500,), -1.0, dtype=F64), atol=1e-12)
    assert torch.allclose(p @ p.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(p @ p, eye, atol=1e-12)  # a mirror is an involution, unlike the official type 3
    if dim == 2:
        assert torch.equal(p[:, 2, 2], torch.ones(500, dtype=F64))
        assert torch.equal(p[:, 2, :2], torch.zeros(500, 2, dtype=F64))
        assert torch.equal(p[:, :2, 2], torch.zeros(500, 2, dtype=F64))


@pytest.mark.parametrize("dim", [2, 3])
def test_drawn_rotations_are_proper(dim):
    tr = draw_transforms(300, dim, torch.Generator().manual_seed(2), translation_scale=2.0)
    assert torch.allclose(torch.linalg.det(tr["rot"]), torch.ones(300, dtype=F64), atol=1e-12)
    assert torch.allclose(torch.linalg.det(tr["refl"]), -torch.ones(300, dtype=F64), atol=1e-12)
    assert tr["rot_t"].shape == (300, 3) and 1.5 < float(tr["rot_t"].std()) < 2.5
    if dim == 2:
        assert torch.equal(tr["rot"][:, 2, 2], torch.ones(300, dtype=F64))


# -- invariant model scores 0 -------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
def test_invariant_model_scores_zero(dim):
    res = symmetry_metrics(EdgeLengthModel(), random_batches(), n_transforms=4, frame_dim=dim,
                           generator=torch.Generator().manual_seed(3))
    for k in ("rot_i", "refl_i", "pct_diff", "f_rot_e", "f_refl_e"):
        assert res[k] < 1e-8, (k, res[k])
        assert res["per_graph"][k].shape == (3,)
    # Raw positions are what this plain model sees: they move, so Pos (Å) and pos_frac are non-zero.
    assert res["pos"] > 0.1 and res["pos_frac"] == 1.0
    assert res["n_graphs"] == 3 and res["units"]["rot_i"] == "meV"


# -- x-sum model: exact values for the drawn transforms ------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_xsum_model_exact_values(dim, norm):
    batches = random_batches(4)
    n_t = 3
    res = symmetry_metrics(XSumModel(), batches, n_transforms=n_t, frame_dim=dim, force_norm=norm,
                           generator=torch.Generator().manual_seed(5), translation_scale=1.5)
    # Replay the draws: symmetry_metrics draws draw_transforms(B) per batch and transform, in order.
    gen = torch.Generator().manual_seed(5)
    exp = {k: [] for k in ("rot_i", "refl_i", "pct_diff", "f_rot_e", "f_refl_e", "pos")}
    f_ref = torch.tensor([-1.0, 0.0, 0.0], dtype=F64)
    for data in batches:
        b = data.num_graphs
        acc = {k: torch.zeros(b, dtype=F64) for k in exp}
        force_atoms = {"rot": torch.zeros(b, dtype=F64), "refl": torch.zeros(b, dtype=F64)}
        for _ in range(n_t):
            tr = draw_transforms(b, dim, gen, 1.5)
            for kind in ("rot", "refl"):
                q, t = tr[kind], tr[kind + "_t"]
                for g in range(b):
                    x = data.pos[data.batch == g]
                    moved = x @ q[g] + t[g]
                    de = abs(float(x[:, 0].sum() - moved[:, 0].sum()))
                    diff = f_ref @ q[g] - f_ref
                    ferr = float(diff.norm() if norm == "l2" else diff.abs().sum())
                    if kind == "rot":
                        acc["rot_i"][g] += 1000 * de
                        acc["pct_diff"][g] += 100 * de / abs(float(data.y[g]))
                        acc["pos"][g] += float((moved - x).norm(dim=1).mean())
                    else:
                        acc["refl_i"][g] += 1000 * de
                    force_atoms[kind][g] += 1000 * ferr
        for k in ("rot_i", "refl_i", "pct_diff", "pos"):
            exp[k].append(acc[k] / n_t)
        exp["f_rot_e"].append(force_atoms["rot"] / n_t)
        exp["f_refl_e"].append(force_atoms["refl"] / n_t)
    for k, v in exp.items():
        assert torch.allclose(res["per_graph"][k], torch.cat(v), rtol=1e-9, atol=1e-9), k
    natoms = res["per_graph"]["natoms"].double()
    assert res["f_rot_e"] == pytest.approx(float((torch.cat(exp["f_rot_e"]) * natoms).sum() / natoms.sum()))
    assert res["rot_i"] == pytest.approx(float(torch.cat(exp["rot_i"]).mean()))


# -- x-sum model: Haar / mirror expectations ---------------------------------------------------------------
# One graph with s = sum_i x_i = (rho, 0, 0), no translation. E(x) - E(g x) = s_x - (s @ Q)_x.
#  3D Haar rotation: (s @ R)_x = rho u, u ~ U[-1, 1]           -> E|.| = rho E(1 - u) = rho.
#  2D rotation by theta:        rho cos(theta)                 -> rho E(1 - cos) = rho.
#  3D mirror, normal n uniform: s_x - 2 (n.s) n_x = rho (1 - 2 n_x^2) -> E|.| = 2 rho E n_x^2 = 2 rho / 3.
#  2D mirror, n = (cos a, sin a, 0): rho (1 - 2 cos^2 a)        -> 2 rho E cos^2 a = rho.
# Forces F = (-1, 0, 0): ||F @ Q - F|| = ||Q[0] - e_x||:
#  3D rotation: sqrt(2 - 2u) -> E = 4/3;  2D rotation: 2|sin(theta/2)| -> 4/pi;
#  3D mirror: 2|n_x| -> E = 1;  2D mirror: 2|cos a| -> 4/pi.
EXPECTED = {3: dict(rot_i=1.0, refl_i=2 / 3, f_rot_e=4 / 3, f_refl_e=1.0),
            2: dict(rot_i=1.0, refl_i=1.0, f_rot_e=4 / math.pi, f_refl_e=4 / math.pi)}


@pytest.mark.parametrize("dim", [2, 3])
def test_xsum_model_haar_expectation(dim):
    rho = 2.0
    g = record([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, -1.0, 0.0]])
    batch = Batch.from_data_list([g] * 500)
    res = symmetry_metrics(XSumModel(), [batch], n_transforms=4, frame_dim=dim, translation_scale=0.0,
                           generator=torch.Generator().manual_seed(6), energy_scale=1.0)
    for k, v in EXPECTED[dim].items():
        expected = v * (rho if k in ("rot_i", "refl_i") else 1.0)
        per = res["per_graph"][k]
        se = float(per.std()) / math.sqrt(per.numel())
        assert abs(res[k] - expected) < 5 * se + 1e-12, (k, res[k], expected, se)
        assert se < 0.05 * expected  # the test has power


# -- Pos and degeneracy through the symmetry wrappers -------------------------------------------------------

def wrapper_batches() -> list[Batch]:
    gen = torch.Generator().manual_seed(7)
    generic = [record(torch.randn(6, 3, generator=gen, dtype=F64) * torch.tensor([2.0, 1.3, 0.7], dtype=F64))
               for _ in range(3)]
    tetra = record([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])  # cov = I
    return [Batch.from_data_list(generic[:2]), Batch.from_data_list([generic[2], tetra])]


def run_wrapper(method: str, n_transforms: int = 4, seed: int = 8) -> dict:
    model = SymmetryWrapper(TanhModel(), method, frame_dim=3, generator=torch.Generator().manual_seed(seed))
    model.eval()
    return symmetry_metrics(model, wrapper_batches(), n_transforms=n_transforms, frame_dim=3,
                            generator=torch.Generator().manual_seed(seed),
                            degenerate_mask_fn=frame_degeneracy_mask(3))


def test_full_fa_is_exact_on_nondegenerate_graphs_and_split_by_degeneracy():
    res = run_wrapper("full")
    assert res["per_graph"]["degenerate"].tolist() == [False, False, False, True]
    nd, dg = res["by_degeneracy"]["non_degenerate"], res["by_degeneracy"]["degenerate"]
    assert nd["n_graphs"] == 3 and dg["n_graphs"] == 1
    for k in ("pos", "pos_refl", "pos_frac", "rot_i", "refl_i", "f_rot_e", "f_refl_e"):
        assert nd[k] < 1e-8, (k, nd[k])
    # The isotropic tetrahedron has no well-defined frame: FA is not invariant there.
    assert dg["pos"] > 1e-3 and dg["rot_i"] > 1e-3 and dg["pos_frac"] > 0.5


def test_se3_full_fa_sees_reflections():
    nd = run_wrapper("se3-full")["by_degeneracy"]["non_degenerate"]
    assert nd["pos"] < 1e-8 and nd["rot_i"] < 1e-8 and nd["f_rot_e"] < 1e-8
    assert nd["pos_refl"] > 0.1 and nd["refl_i"] > 1.0  # SE(3) frame sets of x and P x are disjoint


def test_sfa_and_no_fa_positions_differ():
    sfa = run_wrapper("sfa", n_transforms=16)["by_degeneracy"]["non_degenerate"]
    assert 0.6 < sfa["pos_frac"] < 1.0  # expected 7/8: same frame index drawn with probability 1/8
    assert sfa["rot_i"] > 1.0
    none = run_wrapper("none")
    assert none["pos_frac"] == 1.0 and none["rot_i"] > 1.0 and none["f_rot_e"] > 1.0


def test_2d_full_fa_pos_is_zero_modulo_translation_only():
    # 2D frames leave z uncentred (faenet.frames), so the z part of the translation survives projection:
    # as given, the canonical clouds differ by |t_z|; modulo each cloud's centroid they coincide.
    gen = torch.Generator().manual_seed(3)
    batches = [Batch.from_data_list([record(torch.randn(6, 3, generator=gen, dtype=F64)
                                            * torch.tensor([2.0, 1.0, 0.5], dtype=F64)) for _ in range(2)])]

    def run(modulo: bool) -> dict:
        model = SymmetryWrapper(TanhModel(), "full", frame_dim=2).eval()
        return symmetry_metrics(model, batches, n_transforms=3, frame_dim=2, translation_scale=5.0,
                                generator=torch.Generator().manual_seed(0), pos_modulo_translation=modulo)
    centred, raw = run(True), run(False)
    assert centred["pos"] < 1e-8 and centred["pos_frac"] == 0.0
    assert raw["pos"] > 0.1 and raw["pos_frac"] == 1.0
    assert centred["rot_i"] == raw["rot_i"]  # only Pos depends on the option


def test_plain_callable_without_module_has_no_pos():
    model = XSumModel()
    res = symmetry_metrics(lambda d: model(d), random_batches(), n_transforms=1, frame_dim=3,
                           generator=torch.Generator().manual_seed(0))
    assert "pos" not in res and "pos" not in res["per_graph"] and res["rot_i"] > 0


def test_energy_only_model_has_no_force_metrics():
    class EnergyOnly(nn.Module):
        def forward(self, data):
            return {"energy": graph_sum(data.pos[:, 0], data)}

    res = symmetry_metrics(EnergyOnly(), random_batches(), n_transforms=1, frame_dim=2,
                           generator=torch.Generator().manual_seed(0))
    assert "f_rot_e" not in res and "f_rot_e" not in res["per_graph"] and res["refl_i"] > 0


# -- aggregation helpers -----------------------------------------------------------------------------------

def test_summaries_weight_forces_by_atoms_and_split():
    per = {"rot_i": torch.tensor([1.0, 3.0, 5.0], dtype=F64),
           "f_rot_e": torch.tensor([1.0, 2.0, 4.0], dtype=F64), "natoms": torch.tensor([1, 3, 4])}
    s = summarize(per)
    assert s["rot_i"] == pytest.approx(3.0) and s["f_rot_e"] == pytest.approx((1 + 6 + 16) / 8)
    split = split_by_mask(per, torch.tensor([True, False, True]))
    assert split["degenerate"]["rot_i"] == pytest.approx(3.0)
    assert split["degenerate"]["f_rot_e"] == pytest.approx((1 + 16) / 5)
    assert split["non_degenerate"]["n_graphs"] == 1 and split["non_degenerate"]["rot_i"] == 3.0
    empty = summarize(per, torch.zeros(3, dtype=torch.bool))
    assert math.isnan(empty["rot_i"]) and empty["n_graphs"] == 0


def test_mean_std_over_seeds():
    runs = [{"rot_i": 1.0, "pos": 0.0, "name": "x"}, {"rot_i": 3.0, "pos": 2.0}, {"rot_i": 5.0}]
    out = mean_std(runs)
    assert out["rot_i"] == pytest.approx((3.0, math.sqrt(8 / 3)))
    assert out["pos"] == pytest.approx((1.0, 1.0)) and "name" not in out
    assert mean_std(runs, ddof=1)["rot_i"][1] == pytest.approx(2.0)


def test_bad_arguments_raise():
    b = random_batches()
    with pytest.raises(ValueError, match="n_transforms"):
        symmetry_metrics(XSumModel(), b, n_transforms=0, frame_dim=3)
    with pytest.raises(ValueError, match="frame_dim"):
        symmetry_metrics(XSumModel(), b, n_transforms=1, frame_dim=4)
    with pytest.raises(ValueError, match="force_norm"):
        symmetry_metrics(XSumModel(), b, n_transforms=1, frame_dim=3, force_norm="max")
    with pytest.raises(ValueError, match="empty"):
        symmetry_metrics(XSumModel(), [], n_transforms=1, frame_dim=3)
    with pytest.raises(ValueError, match="dim"):
        random_reflection(2, dim=1)
