"""SchNet, DimeNet++ and ForceNet behind the project interface: shapes, symmetry, forces, batching, cutoff."""

import math

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule
from scipy.special import sph_harm_y
from torch_geometric.data import Batch, Data
from torch_geometric.nn.models.dimenet import SphericalBasisLayer

from baselines import build_model, get_presets
from baselines.dimenet_pp import SphericalBasis, bessel_zeros
from baselines.forcenet import element_tables, real_spherical_harmonics
from faenet.graph import edge_vectors, radius_graph, triplets

MODELS = ("schnet", "dimenet_pp", "forcenet")
# Small models; DimeNet++'s zero-initialised output layer would make every energy 0, so use glorot (and
# 3 x 3 bases, whose symbolic functions build faster than the preset's 4 x 4).
EXTRA = {"schnet": {}, "forcenet": {},
         "dimenet_pp": {"output_initializer": "glorot_orthogonal", "num_spherical": 3, "num_radial": 3}}


def small(name: str, **overrides):
    hp = {**get_presets(name)["small"], **EXTRA[name], **overrides}
    torch.manual_seed(0)
    return build_model(name, **hp).double()


def record(atoms, cutoff: float = 6.0, dtype=torch.float64) -> Data:
    """A record of faenet/data/records.py built with faenet.graph.radius_graph (periodic images included)."""
    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    periodic = bool(atoms.pbc.any())
    cell = torch.tensor(atoms.cell.array if periodic else np.zeros((3, 3)), dtype=torch.float64)
    ei, off = radius_graph(pos, cutoff, 50, cell if periodic else None, tuple(bool(p) for p in atoms.pbc))
    n = len(atoms)
    tags = torch.tensor(atoms.get_tags(), dtype=torch.long) if periodic else torch.full((n,), -1)
    return Data(pos=pos.to(dtype), atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.long), natoms=n,
                tags=tags, fixed=torch.zeros(n, dtype=torch.long), cell=cell.to(dtype)[None],
                pbc=torch.tensor(atoms.pbc)[None], edge_index=ei, cell_offsets=off, y=0.0)


def slab(metal: str = "Cu", ads: str = "O", size=(2, 2, 3)):
    atoms = fcc111(metal, size, vacuum=6.0)
    add_adsorbate(atoms, ads, 1.7, "fcc")
    atoms.positions += np.random.default_rng(1).normal(0, 0.05, atoms.positions.shape)  # break symmetry
    return atoms


def mol(name: str = "CH3CH2OH"):
    atoms = molecule(name)
    atoms.positions += np.random.default_rng(2).normal(0, 0.05, atoms.positions.shape)
    return atoms


def transformed(rec: Data, q: torch.Tensor, t: torch.Tensor) -> Data:
    """``pos @ q + t``, ``cell @ q``: the same structure in another frame (edges and offsets stay valid)."""
    out = rec.clone()
    out.pos = rec.pos @ q + t
    out.cell = rec.cell @ q
    return out


def random_o3(g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.rand(1, generator=g) < 0.5 else -q  # half of them reflections


def random_z(g: torch.Generator) -> torch.Tensor:
    a = float(torch.rand(1, generator=g)) * 2 * math.pi
    q = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    if torch.rand(1, generator=g) < 0.5:
        q = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)) @ q  # reflection x -> -x first
    return q


def symmetry_batch(n: int = 20):
    """The original plus n random E(3) copies of a molecule (O(3)) and of a slab (about z, cell rotated)."""
    g = torch.Generator().manual_seed(0)
    m, s = record(mol()), record(slab())
    recs = [m, s]
    for _ in range(n):
        recs.append(transformed(m, random_o3(g), torch.randn(3, generator=g, dtype=torch.float64) * 3))
        recs.append(transformed(s, random_z(g), torch.randn(3, generator=g, dtype=torch.float64) * 3))
    return Batch.from_data_list(recs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny graphs gain nothing from threads, and on a busy 2-core machine OpenMP spin-waits make the many
    small forward passes here several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sym_batch():
    return symmetry_batch()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("forces", ["", "force_mode"])
def test_forward_shapes(name, forces):
    mode = {"schnet": "from_energy", "dimenet_pp": "from_energy", "forcenet": "direct"}[name]
    mode = mode if forces else ""
    model = small(name, regress_forces=mode)
    assert model.regress_forces == mode
    recs = [record(slab(), dtype=torch.float32), record(mol(), dtype=torch.float32),
            record(slab("Pt", "H"), dtype=torch.float32)]
    batch = Batch.from_data_list(recs)
    out = model.float()(batch)
    n = batch.pos.shape[0]
    assert out["energy"].shape == (3,) and out["energy"].dtype == torch.float32
    assert torch.isfinite(out["energy"]).all()
    if mode:
        assert out["forces"].shape == (n, 3) and torch.isfinite(out["forces"]).all()
    else:
        assert "forces" not in out


@pytest.mark.parametrize("name", ["schnet", "dimenet_pp"])
def test_invariant_models_are_e3_invariant(name, sym_batch):
    energy = small(name)(sym_batch)["energy"].detach()
    mol_e, slab_e = energy[0::2], energy[1::2]
    for e in (mol_e, slab_e):
        assert abs(float(e[0])) > 1e-3  # a non-trivial function
        assert torch.allclose(e, e[0].expand_as(e), rtol=1e-10, atol=1e-10), (e - e[0]).abs().max()


def test_forcenet_is_not_rotation_invariant_but_translation_invariant(sym_batch):
    model = small("forcenet")
    energy = model(sym_batch)["energy"].detach()
    for e in (energy[0::2], energy[1::2]):
        spread = float((e - e[0]).abs().max() / e.abs().max())
        assert spread > 1e-4  # ~1e11 x float64 noise (invariant models: ~1e-15): no built-in invariance
    # Only relative vectors enter, so a pure translation changes nothing.
    rec = record(mol())
    shift = torch.tensor([1.5, -2.0, 7.0], dtype=torch.float64)
    moved = transformed(rec, torch.eye(3, dtype=torch.float64), shift)
    e = model(Batch.from_data_list([rec, moved]))["energy"].detach()
    assert torch.allclose(e[0], e[1], rtol=1e-12, atol=1e-12)


def _finite_difference_forces(model, batch, entries, h=1e-5):
    out = []
    for atom, dim in entries:
        vals = []
        for sign in (1.0, -1.0):
            b = batch.clone()
            b.pos = batch.pos.detach().clone()
            b.pos[atom, dim] += sign * h
            vals.append(float(model(b)["energy"].sum()))
        out.append(-(vals[0] - vals[1]) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", MODELS)
def test_from_energy_forces_match_finite_differences(name):
    model = small(name, regress_forces="from_energy").eval()
    batch = Batch.from_data_list([record(mol()), record(slab())])
    forces = model(batch)["forces"].detach()
    g = torch.Generator().manual_seed(3)
    entries = [(int(torch.randint(batch.pos.shape[0], (1,), generator=g)), k % 3) for k in range(6)]
    with torch.no_grad():
        fd = _finite_difference_forces(model, batch, entries)
    ours = torch.stack([forces[a, d] for a, d in entries])
    assert torch.allclose(ours, fd, rtol=1e-6, atol=1e-7), (ours, fd)
    assert float(ours.abs().max()) > 1e-4


def test_dimenet_detach_angles_drops_angular_forces():
    """OCP's DimeNet++ detaches positions in the angle term: its forces are not -dE/dx (documented option)."""
    kw = {"regress_forces": "from_energy"}
    exact, ocp = small("dimenet_pp", **kw), small("dimenet_pp", detach_angles=True, **kw)
    batch = Batch.from_data_list([record(mol())])
    e1, e2 = exact(batch), ocp(batch)
    assert torch.allclose(e1["energy"], e2["energy"], rtol=1e-12)
    assert float((e1["forces"] - e2["forces"]).detach().abs().max()) > 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_prediction_independent_of_batch_mates(name):
    """Per-graph statistics only (ForceNet's GraphNorm included, in training mode): a graph's output is the
    same alone, next to other graphs, and next to stacked copies of itself (as frame averaging builds)."""
    mode = "direct" if name == "forcenet" else "from_energy"
    model = small(name, regress_forces=mode).train()
    a, b = record(slab()), record(mol())
    alone = model(Batch.from_data_list([a]))
    mixed = model(Batch.from_data_list([b, a, b]))
    copies = model(Batch.from_data_list([a, a, a]))
    na = a.pos.shape[0]
    nb = b.pos.shape[0]
    assert torch.allclose(mixed["energy"][1], alone["energy"][0], rtol=1e-10, atol=1e-10)
    assert torch.allclose(copies["energy"], alone["energy"].expand(3), rtol=1e-10, atol=1e-10)
    assert torch.allclose(mixed["forces"][nb:nb + na], alone["forces"], rtol=1e-9, atol=1e-10)
    assert torch.allclose(copies["forces"][na:2 * na], alone["forces"], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", MODELS)
def test_model_cutoff_masks_longer_edges(name):
    """A graph built at 6 Å fed to a model with cutoff 4 Å gives the 4 Å graph's prediction."""
    model = small(name, cutoff=4.0)
    wide = Batch.from_data_list([record(slab(), cutoff=6.0), record(mol(), cutoff=6.0)])
    tight = Batch.from_data_list([record(slab(), cutoff=4.0), record(mol(), cutoff=4.0)])
    assert wide.edge_index.shape[1] > tight.edge_index.shape[1]
    assert torch.allclose(model(wide)["energy"], model(tight)["energy"], rtol=1e-10, atol=1e-10)


def _brute_force_triplets(ei, offsets):
    """(i, j, k, kj, ji) for every pair of edges k->j, j->i, except k being the same image as i."""
    out = []
    for ji in range(ei.shape[1]):
        j, i = int(ei[0, ji]), int(ei[1, ji])
        for kj in range(ei.shape[1]):
            if int(ei[1, kj]) != j:
                continue
            k = int(ei[0, kj])
            back = k == i and (offsets is None or bool((offsets[kj] + offsets[ji] == 0).all()))
            if not back:
                out.append((i, j, k, kj, ji))
    return sorted(out)


@pytest.mark.parametrize("periodic", [False, True])
def test_graph_triplets_match_brute_force(periodic):
    g = torch.Generator().manual_seed(5)
    for _ in range(12):
        n = int(torch.randint(2, 7, (1,), generator=g))
        e = int(torch.randint(1, 30, (1,), generator=g))
        src, dst = torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)
        offs = torch.randint(-1, 2, (e, 3), generator=g)
        if periodic:  # self-image edges (src == dst) need a non-zero offset, like radius_graph's
            offs[(src == dst) & (offs == 0).all(1), 0] = 1
        else:
            keep = src != dst
            src, dst, offs = src[keep], dst[keep], offs[keep]
        ei = torch.stack([src, dst])
        got = sorted(zip(*[t.tolist() for t in triplets(ei, n, offs if periodic else None)], strict=True))
        assert got == _brute_force_triplets(ei, offs if periodic else None)


def test_graph_triplets_on_a_small_periodic_cell_exclude_only_true_backtracks():
    """On a 2x2 Cu cell (many self-image edges), every kept triplet's k sits at a different point than i."""
    rec = record(slab(size=(2, 2, 2)), cutoff=5.0)
    ei, off = rec.edge_index, rec.cell_offsets
    idx_i, idx_j, idx_k, idx_kj, idx_ji = triplets(ei, rec.pos.shape[0], off)
    assert len(idx_i) == len(_brute_force_triplets(ei, off))
    vec = edge_vectors(rec.pos, ei, off, rec.cell, torch.zeros(rec.pos.shape[0], dtype=torch.long))
    k_from_i = vec[idx_ji] + vec[idx_kj]  # position of the k image relative to i
    assert float(k_from_i.norm(dim=1).min()) > 0.5
    assert bool(((idx_k == idx_i) & (off[idx_kj] + off[idx_ji] != 0).any(1)).any())  # periodic k == i kept


def test_spherical_harmonics_match_scipy():
    v = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = v / v.norm(dim=1, keepdim=True)
    polar = np.arccos(v[:, 2].numpy())
    azimuth = np.arctan2(v[:, 1].numpy(), v[:, 0].numpy())
    for option, max_n in (("all", 3), ("all", 5), ("sine", 4), ("cosine", 3)):
        nm = [(n, m) for n in range(max_n) for m in range(n + 1)
              if option == "all" or (n % 2 == 1) == (option == "sine")]
        ref = np.stack([sph_harm_y(n, m, polar, azimuth) for n, m in nm], axis=1)
        m0 = np.array([m == 0 for _, m in nm])
        ref = np.concatenate([ref[:, m0].real, ref[:, ~m0].real, ref[:, ~m0].imag], axis=1)
        np.testing.assert_allclose(real_spherical_harmonics(v, max_n, option).numpy(), ref, atol=1e-12)


def test_numeric_spherical_basis_matches_pygs_symbolic_one():
    # PyG builds the basis with sympy; ours evaluates the same functions numerically (float64 here).
    ours, ref = SphericalBasis(4, 4, 5.0, 5), SphericalBasisLayer(4, 4, 5.0, 5)
    g = torch.Generator().manual_seed(0)
    dist = torch.rand(40, generator=g, dtype=torch.float64) * 4.5 + 0.5  # 0.5-5 Å, as interatomic distances
    angle = torch.rand(100, generator=g, dtype=torch.float64) * math.pi
    idx = torch.randint(0, 40, (100,), generator=g)
    a, b = ours(dist, angle, idx), ref(dist, angle, idx)
    assert a.shape == b.shape == (100, 16)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)  # float32 rounding of PyG's symbolic coefficients


def test_spherical_bessel_zeros_are_zeros():
    from scipy.special import spherical_jn

    z = bessel_zeros(5, 6)
    for order in range(5):
        assert np.abs(spherical_jn(order, z[order].astype(np.float64))).max() < 1e-5
        assert np.all(np.diff(z[order]) > 0)


def test_forcenet_element_tables():
    atom_map, radii = element_tables()
    assert atom_map.shape == (101, 9) and radii.shape == (101,)
    assert torch.isfinite(atom_map).all() and float(atom_map.min()) >= 0 and float(atom_map.max()) <= 1
    assert torch.isfinite(radii).all()
    assert float(radii[29]) == pytest.approx(1.35) and float(radii[1]) == pytest.approx(0.25)  # Cu, H (Å)


@pytest.mark.parametrize("name,bad", [
    ("schnet", {"regress_forces": "direct"}), ("schnet", {"readout": "max"}), ("schnet", {"cutoff": 0.0}),
    ("dimenet_pp", {"regress_forces": "bogus"}), ("dimenet_pp", {"num_radial": 65}),
    ("dimenet_pp", {"output_initializer": "ones"}),
    ("forcenet", {"regress_forces": "yes"}), ("forcenet", {"basis": "sphallm40"}),
    ("forcenet", {"feat": "x"}),
    ("forcenet", {"activation_str": "gelu"}), ("forcenet", {"basis": "sphsinemul", "max_n": 1}),
])
def test_bad_values_raise_clear_errors(name, bad):
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=repr(value) if isinstance(value, str) else key):
        build_model(name, **{**get_presets(name)["small"], **bad})


OLD_IMPORT_BASELINE = '''
import torch
from torch import nn
from torch_geometric.utils import scatter

from baselines.registry import register
from baselines.schnet import check_force_mode, edge_geometry, forces_from_energy, graph_index


@register("old_import_net")
class OldImportNet(nn.Module):
    force_modes = ("", "from_energy")

    def __init__(self, cutoff: float = 6.0, regress_forces: str = ""):
        super().__init__()
        self.regress_forces = check_force_mode("OldImportNet", regress_forces, self.force_modes)
        self.cutoff = cutoff
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, data):
        with torch.set_grad_enabled(torch.is_grad_enabled() or bool(self.regress_forces)):
            data.pos.requires_grad_(bool(self.regress_forces))
            batch, num_graphs = graph_index(data)
            edge_index, _, _, dist = edge_geometry(data, self.cutoff)
            e_atom = scatter(self.scale / dist, edge_index[1], dim=0, dim_size=data.pos.shape[0])
            out = {"energy": scatter(e_atom, batch, dim=0, dim_size=num_graphs)}
            if self.regress_forces:
                out["forces"] = forces_from_energy(out["energy"], data.pos, self.training)
        return out
'''


def test_helpers_old_import_path_from_baselines_schnet_still_works(tmp_path, monkeypatch):
    # The helpers moved to baselines.common; a user's baseline file written against baselines.schnet must
    # still import, register and run, and get the very same functions.
    import baselines.common as common
    import baselines.registry as registry
    import baselines.schnet as schnet
    from baselines.registry import discover

    # Register into a copy: later tests iterate every registered model (e.g. for its supported_z).
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    for helper in ("check_force_mode", "edge_geometry", "forces_from_energy", "graph_index"):
        assert getattr(schnet, helper) is getattr(common, helper)
    (tmp_path / "old_import_net.py").write_text(OLD_IMPORT_BASELINE)
    assert discover([tmp_path]) == ["old_import_net"]
    model = build_model("old_import_net", cutoff=3.0, regress_forces="from_energy")
    batch = Batch.from_data_list([record(mol()), record(slab())])
    out = model(batch)
    assert out["energy"].shape == (2,) and out["forces"].shape == batch.pos.shape
    assert torch.isfinite(out["forces"]).all()
    with pytest.raises(ValueError, match="OldImportNet: regress_forces='direct'"):  # check_force_mode's error
        type(model)(regress_forces="direct")
