"""faenet.simulation: Jacobian asymmetry (hand-computed case, 0 for -dE/dpos, > 0 for a direct head), energy
drift and stability of NVE with EMT as the control, geometry optimisation, and MD on a periodic slab."""

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.constraints import FixAtoms

from faenet.calculator import ModelCalculator
from faenet.model import FAENet
from faenet.simulation import energy_drift, jacobian_asymmetry, relax, run_nve

pytestmark = pytest.mark.usefixtures("one_thread")

HP = dict(hidden_channels=16, num_filters=16, num_interactions=1, num_gaussians=8, tag_hidden_channels=0,
          pg_hidden_channels=4, phys_embeds=False, cutoff=5.0, regress_forces="direct_with_gradient_target")


def _net(hp=HP):
    torch.manual_seed(0)
    return FAENet(**hp)


def _molecule():
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=3)
    return atoms


def test_jacobian_asymmetry_of_a_linear_field_is_hand_computed():
    # F(p) = M p for one atom: J = M; ||(M - M^T)/2||_F = sqrt(2 * 1^2), ||M||_F = sqrt(1 + 4 + 1 + 1).
    m = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    lam = jacobian_asymmetry(lambda p: p @ m.T, torch.randn(1, 3, dtype=torch.float64))
    assert lam == pytest.approx(np.sqrt(2 / 7), rel=1e-14)
    assert jacobian_asymmetry(lambda p: p @ (m + m.T).T, torch.randn(1, 3, dtype=torch.float64)) == 0.0


@pytest.mark.parametrize("symmetry,policy", [("none", None), ("full", "full"), ("sfa", "fixed")])
def test_jacobian_asymmetry_zero_for_gradient_forces_positive_for_direct(symmetry, policy):
    atoms = _molecule()
    pos = torch.tensor(atoms.positions)
    lam = {}
    for mode in ("from_energy", "direct"):
        calc = ModelCalculator(_net(), symmetry=symmetry, frame_dim=3, frame_policy=policy, forces=mode,
                               cutoff=5.0, max_num_neighbors=40)
        force_fn, _ = calc.force_fn(atoms, create_graph=True)
        lam[mode] = jacobian_asymmetry(force_fn, pos)
    assert lam["from_energy"] < 1e-12  # J = -Hessian (measured ~2e-16)
    assert lam["direct"] > 0.05  # an untrained direct head is no gradient (measured 0.28-0.70)


def test_energy_drift_is_the_fitted_slope():
    t = np.linspace(0, 2, 21)
    e = 3.0 + 0.25 * t * 8 + 1e-3 * np.sin(40 * t)  # 8 atoms, 0.25 eV/atom/ps plus a wiggle
    assert energy_drift(t, e, 8) == pytest.approx(0.25, abs=2e-4)
    assert energy_drift(t, 3.0 + 0 * t, 8) == pytest.approx(0.0, abs=1e-12)


def test_nve_with_emt_conserves_energy_and_flags_collapse():
    cluster = Icosahedron("Cu", 2)  # 13 atoms
    res = run_nve(cluster, EMT(), steps=100, timestep_fs=2.0, temperature_K=300.0, seed=0, interval=5)
    assert res.stable and res.steps_run == 100 and len(res.etot) == 21
    assert abs(res.drift) * 1e3 < 0.5  # meV/atom/ps (measured 0.01 over 200 steps)
    assert np.ptp(res.etot) < 0.01  # eV: Verlet's O(dt^2) fluctuation
    assert 100 < res.temperature[0] < 600
    again = run_nve(cluster, EMT(), steps=100, timestep_fs=2.0, temperature_K=300.0, seed=0, interval=5)
    assert again.etot == res.etot  # seeded velocities: the same trajectory
    tight = run_nve(cluster, EMT(), steps=100, timestep_fs=2.0, temperature_K=300.0, seed=0, interval=5,
                    bond_tolerance=0.02)
    assert not tight.stable and "bond length deviation" in tight.reason and tight.steps_run < 100


def test_relax_with_emt_converges_with_both_optimizers():
    cluster = Icosahedron("Cu", 2)
    cluster.rattle(0.05, seed=1)
    out = {name: relax(cluster, EMT(), fmax=0.02, steps=200, optimizer=name) for name in ("BFGS", "FIRE")}
    assert all(r.converged and r.fmax <= 0.02 for r in out.values())
    assert out["BFGS"].energy == pytest.approx(out["FIRE"].energy, abs=2e-3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        relax(cluster, EMT(), optimizer="LBFGS-B")


def test_md_on_a_periodic_slab_with_fixed_atoms():
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.set_tags(0)
    bottom = [a.index for a in slab if a.position[2] < slab.positions[:, 2].min() + 0.1]
    slab.set_constraint(FixAtoms(indices=bottom))
    slab.pbc = (True, True, False)
    calc = ModelCalculator(_net({**HP, "tag_hidden_channels": 4, "cutoff": 6.0}), symmetry="full", frame_dim=2,
                           forces="from_energy", rewiring="remove-tag-0", cutoff=6.0, max_num_neighbors=30,
                           adsorbate_indices=[len(slab) - 1])
    res = run_nve(slab, calc, steps=5, timestep_fs=1.0, temperature_K=300.0, seed=0)
    assert res.steps_run == 5 and np.isfinite(res.etot).all()
    with pytest.raises(ValueError, match="need steps"):
        run_nve(slab, calc, steps=0, timestep_fs=1.0, temperature_K=300.0, seed=0)
