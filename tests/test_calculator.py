"""faenet.calculator: the ASE calculator equals the model's own forward, -dE/dpos equals finite differences of
its energy, periodic slabs with FixAtoms get the OC20 tags and rewiring, and bad settings fail clearly."""

import copy

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms
from torch_geometric.data import Batch, Data

from faenet.calculator import ModelCalculator, atoms_tags
from faenet.checkpoint import save_checkpoint
from faenet.data.dataset import remove_tag0
from faenet.graph import radius_graph
from faenet.model import FAENet
from faenet.symmetry import SymmetryWrapper
from faenet.training import Normalizer

pytestmark = pytest.mark.usefixtures("one_thread")

HP = dict(hidden_channels=16, num_filters=16, num_interactions=1, num_gaussians=8, tag_hidden_channels=0,
          pg_hidden_channels=4, phys_embeds=False, cutoff=5.0, regress_forces="direct_with_gradient_target")
SLAB_HP = {**HP, "tag_hidden_channels": 4, "cutoff": 6.0}
# A non-trivial normaliser: mean, std and per-element references all reach the energy.
NORM = Normalizer(mean=-1.5, std=0.7, element_shift=(0.0, -0.3, 0.0, 0.0, 0.0, 0.0, -1.1, 0.0, -2.0))
GRAPH = dict(cutoff=5.0, max_num_neighbors=40)


def _net(hp=HP, seed=0):
    torch.manual_seed(seed)
    return FAENet(**hp)


def _molecule():
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=3)
    return atoms


def _slab():
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.set_tags(0)  # ASE's layer tags are not OC20 tags: the calculator derives them from the constraint
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.position[2] < slab.positions[:, 2].min() + 0.1]))
    slab.pbc = (True, True, False)
    # Rattled: on the ideal lattice many neighbours tie in distance, and the neighbour cap's tie-break then
    # switches edges under a 1e-5 Å move (a discontinuity of the potential, not of the calculator).
    slab.rattle(0.05, seed=2)
    return slab


def _batch(atoms, dtype=torch.float64, tags=None, fixed=None, cutoff=5.0, max_nb=40):
    """The record, built here independently of the calculator, as the datasets build theirs."""
    pos = torch.tensor(atoms.positions, dtype=dtype)
    periodic = any(atoms.pbc)
    cell = torch.tensor(atoms.cell.array, dtype=dtype).reshape(1, 3, 3) if periodic else torch.zeros(1, 3, 3,
                                                                                                       dtype=dtype)
    pbc = torch.tensor(atoms.pbc).reshape(1, 3)
    ei, off = radius_graph(pos.double(), cutoff, max_nb, cell[0].double() if periodic else None, pbc[0])
    n = len(atoms)
    data = Data(pos=pos, atomic_numbers=torch.tensor(atoms.numbers), natoms=n,
                tags=torch.full((n,), -1) if tags is None else torch.as_tensor(tags),
                fixed=torch.zeros(n, dtype=torch.long) if fixed is None else torch.as_tensor(fixed),
                cell=cell, pbc=pbc, edge_index=ei, cell_offsets=off, y=0.0)
    return data


@pytest.mark.parametrize("symmetry,policy", [("none", None), ("full", "full"), ("sfa", "redraw"),
                                             ("sfa", "full"), ("se3-sfa", "fixed")])
def test_calculator_equals_model_forward(symmetry, policy):
    net = _net()
    atoms = _molecule()
    calc = ModelCalculator(net, symmetry=symmetry, frame_dim=3, normalizer=NORM, frame_policy=policy, seed=5,
                           **GRAPH)
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    # The same model in float64, wrapped as the policy says, on the hand-built record.
    method = {"redraw": symmetry, "fixed": symmetry, "full": symmetry.replace("sfa", "full"), None: symmetry}[policy]
    ref_net = copy.deepcopy(net).double().eval()
    wrapped = SymmetryWrapper(ref_net, method, frame_dim=3, generator=torch.Generator().manual_seed(5)).eval()
    batch = Batch.from_data_list([_batch(atoms)])
    with torch.no_grad():
        out = wrapped(batch)
    assert energy == float(NORM.denormalize(out["energy"], batch)[0])
    np.testing.assert_array_equal(forces, (out["forces"] * NORM.std).numpy())
    assert next(net.parameters()).dtype == torch.float32  # the caller's model is not converted


def test_fixed_policy_is_deterministic_and_redraw_is_not():
    atoms = _molecule()
    energies = {}
    for policy in ("fixed", "redraw"):
        calc = ModelCalculator(_net(), symmetry="sfa", frame_dim=3, frame_policy=policy, **GRAPH)
        energies[policy] = [calc.predict(atoms)[0] for _ in range(6)]
    assert len(set(energies["fixed"])) == 1
    assert len(set(energies["redraw"])) > 1  # 6 draws of 8 frames: all equal has probability 8^-5


def test_from_energy_matches_a_from_energy_model_without_frames():
    """No frame: the calculator's -dE/dpos (of the de-normalised energy) is the model's own -dE/dpos * std."""
    net = _net({**HP, "regress_forces": "from_energy"})
    atoms = _molecule()
    e, f = ModelCalculator(net, normalizer=NORM, **GRAPH).predict(atoms)
    batch = Batch.from_data_list([_batch(atoms)])
    out = copy.deepcopy(net).double().eval()(batch)
    assert e == float(NORM.denormalize(out["energy"].detach(), batch)[0])
    np.testing.assert_allclose(f, out["forces"].detach().numpy() * NORM.std, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("symmetry,policy,slab", [("none", None, False), ("full", "full", False),
                                                  ("sfa", "fixed", False), ("full", "full", True)])
def test_from_energy_forces_are_minus_the_gradient_of_the_energy(symmetry, policy, slab):
    """Central finite differences (float64, h = 1e-5 Å) of the calculator's own energy, graph rebuilt each call;
    under FA the frame moves with the atoms and the forces still match (differentiable frames).

    The slab runs without a neighbour cap: in a 2x2 cell the periodic images of an atom tie exactly in
    distance, so a cap (30 in the default profile's data) switches edges under any move and the potential
    jumps (measured: FD "forces" of 1e2 eV/Å at max_num_neighbors=40, for every model)."""
    atoms = _slab() if slab else _molecule()
    hp = SLAB_HP if slab else HP
    calc = ModelCalculator(_net(hp), symmetry=symmetry, frame_dim=2 if slab else 3, normalizer=NORM,
                           frame_policy=policy, forces="from_energy", cutoff=hp["cutoff"],
                           max_num_neighbors=1000 if slab else 40,
                           adsorbate_indices=[len(atoms) - 1] if slab else None)
    forces = calc.predict(atoms)[1]
    h = 1e-5
    free = np.flatnonzero(atoms_tags(atoms) != 0) if slab else np.arange(len(atoms))
    for i in free[:4]:
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            fd = -(calc.predict(plus)[0] - calc.predict(minus)[0]) / (2 * h)
            assert fd == pytest.approx(forces[i, k], rel=1e-5, abs=1e-7)


def test_periodic_slab_tags_fixed_atoms_and_rewiring():
    atoms = _slab()
    n = len(atoms)
    fixed = np.zeros(n, dtype=np.int64)
    fixed[atoms.constraints[0].get_indices()] = 1
    tags = atoms_tags(atoms, adsorbate_indices=[n - 1])
    assert (tags[fixed == 1] == 0).all() and tags[-1] == 2 and (tags[(fixed == 0)][:-1] == 1).all()
    net = _net(SLAB_HP)
    calc = ModelCalculator(net, symmetry="full", frame_dim=2, normalizer=NORM, rewiring="remove-tag-0",
                           forces="direct", cutoff=6.0, max_num_neighbors=40, adsorbate_indices=[n - 1])
    atoms.calc = calc
    e, raw = atoms.get_potential_energy(), calc.results["forces"]
    assert (raw[fixed == 1] == 0).all() and np.abs(raw[fixed == 0]).sum() > 0  # removed atoms: zero force
    batch = Batch.from_data_list([remove_tag0(_batch(atoms, tags=tags, fixed=fixed, cutoff=6.0))])
    ref = SymmetryWrapper(copy.deepcopy(net).double().eval(), "full", frame_dim=2).eval()
    with torch.no_grad():
        out = ref(batch)
    # Equal to rounding, not bit for bit: the calculator finds edges on wrapped positions (same vectors, and
    # possibly another edge order).
    assert e == pytest.approx(float(NORM.denormalize(out["energy"], batch)[0]), rel=1e-12, abs=1e-12)
    # Periodic images: the graph includes them (an in-plane lattice move of one atom changes nothing
    # for the model without frames, whose prediction depends on edge vectors only).
    plain = ModelCalculator(net, symmetry="none", frame_dim=2, cutoff=6.0, max_num_neighbors=1000,  # no cap: ties
                            adsorbate_indices=[n - 1])
    moved = atoms.copy()
    moved.positions[n - 1] += atoms.cell[0] - 2 * atoms.cell[1]
    e0, f0 = plain.predict(atoms)
    e1, f1 = plain.predict(moved)
    assert e1 == pytest.approx(e0, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(f1, f0, atol=1e-10)


def test_from_checkpoint_reads_a_final_state(tmp_path):
    net = _net()
    path = tmp_path / "seed0.final.pt"
    save_checkpoint({"model": net.state_dict(), "model_name": "faenet", "hparams": HP, "symmetry": "sfa",
                     "normalizer": vars(NORM), "task": "qm7x", "rewiring": "none"}, path, keep_prev=False)
    calc = ModelCalculator.from_checkpoint(path, **GRAPH)
    assert (calc.symmetry, calc.frame_dim, calc.frame_policy, calc.forces_mode) == ("sfa", 3, "full", "direct")
    atoms = _molecule()
    direct = ModelCalculator(net, symmetry="sfa", frame_dim=3, normalizer=NORM, **GRAPH)
    assert calc.predict(atoms)[0] == direct.predict(atoms)[0]
    save_checkpoint({"model": {}, "model_name": "schnet", "hparams": {}, "symmetry": "none"}, path,
                    keep_prev=False)
    with pytest.raises(ValueError, match="build_model"):
        ModelCalculator.from_checkpoint(path, **GRAPH)


def test_bad_settings_fail_clearly():
    net = _net()
    with pytest.raises(ValueError, match="unknown frame_policy 'average'"):
        ModelCalculator(net, symmetry="sfa", frame_policy="average", **GRAPH)
    with pytest.raises(ValueError, match="needs a frame-averaged model"):
        ModelCalculator(net, symmetry="none", frame_policy="redraw", **GRAPH)
    with pytest.raises(ValueError, match="unknown forces mode 'numerical'"):
        ModelCalculator(net, forces="numerical", **GRAPH)
    with pytest.raises(ValueError, match="needs a direct force head"):
        ModelCalculator(_net({**HP, "regress_forces": "from_energy"}), forces="direct", **GRAPH)
    with pytest.raises(ValueError, match="needs a direct force head"):
        ModelCalculator(_net({**HP, "regress_forces": ""}), forces="direct", **GRAPH)
    with pytest.raises(ValueError, match="unknown rewiring"):
        ModelCalculator(net, rewiring="tag0", **GRAPH)
    slab = _slab()
    slab.set_constraint(FixAtoms(indices=list(range(len(slab)))))
    calc = ModelCalculator(_net(SLAB_HP), frame_dim=2, rewiring="remove-tag-0", cutoff=6.0, max_num_neighbors=40)
    with pytest.raises(ValueError, match="leaves no atom"):
        calc.predict(slab)


def test_every_baseline_through_the_calculator():
    from baselines.registry import build_model, get_presets

    atoms = _molecule()
    for name, mode in (("schnet", "from_energy"), ("forcenet", "direct"), ("dimenet_pp", "from_energy")):
        hp = {**get_presets(name).get("small", {}), "regress_forces": mode, "cutoff": 5.0}
        torch.manual_seed(0)
        model = build_model(name, **hp)
        e, f = ModelCalculator(model, **GRAPH).predict(atoms)
        assert np.isfinite(e) and f.shape == (len(atoms), 3) and np.isfinite(f).all()
        if mode == "from_energy":  # the calculator's gradient = the model's own (no frame)
            batch = Batch.from_data_list([_batch(atoms)])
            own = copy.deepcopy(model).double().eval()(batch)["forces"].detach().numpy()
            np.testing.assert_allclose(f, own, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method,dim", [("full", 3), ("sfa", 3), ("se3-full", 2), ("sfa", 2)])
def test_differentiable_frames_change_no_value(method, dim):
    """The calculator's differentiable frames give the same outputs, bit for bit, as the training wrapper's."""
    from faenet.frames import compute_frames

    atoms = _molecule()
    pos = torch.tensor(atoms.positions)
    batch = torch.zeros(len(atoms), dtype=torch.long)
    a = compute_frames(pos, batch, 1, dim)
    b = compute_frames(pos.clone().requires_grad_(True), batch, 1, dim, differentiable=True)
    for name in ("centroid", "rotations", "eigenvalues", "eigengap", "signs"):
        assert torch.equal(getattr(a, name), getattr(b, name).detach()), name
    net = copy.deepcopy(_net()).double().eval()
    data = Batch.from_data_list([_batch(atoms)])
    outs = []
    for diff in (False, True):
        w = SymmetryWrapper(net, method, frame_dim=dim, generator=torch.Generator().manual_seed(1),
                            differentiable_frames=diff).eval()
        with torch.no_grad():
            outs.append(w(data))
    assert torch.equal(outs[0]["energy"], outs[1]["energy"]) and torch.equal(outs[0]["forces"], outs[1]["forces"])
