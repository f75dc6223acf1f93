"""Simulation with any ASE calculator: NVE molecular dynamics, its energy drift and stability, the Jacobian
asymmetry of a force field, and geometry optimisation. Plain arguments in, dataclasses out.

- :func:`run_nve`: velocity Verlet (``ase.md.verlet.VelocityVerlet``) from Maxwell-Boltzmann momenta drawn with
  a seeded ``numpy`` generator (``Stationary``: no centre-of-mass drift), recording ``Epot + Ekin`` every
  ``interval`` steps at full precision (ASE's ``MDLogger`` rounds to 4 decimals, too coarse for a drift fit).
- Drift (:func:`energy_drift`): the slope of a least-squares line through total energy per atom against time,
  eV/atom/ps (reported as meV/atom/ps). Verlet on a smooth potential fluctuates by O(dt^2) around a constant
  and has no slope; a non-conservative force field pumps energy in or out.
- Stability, after Fu et al. ("Forces are not Enough", TMLR 2023; their MD17 criterion): the bonds are the
  pairs within ASE's ``natural_cutoffs`` in the first frame; a trajectory collapses at the first recorded
  frame where some bond length deviates from its first-frame length by more than ``bond_tolerance`` (0.5 Å,
  their value). Fu et al. use the mean bond length of the reference data; the first frame (an equilibrium
  structure at the start of the run) stands in for it here. A run also stops as collapsed when the
  temperature leaves ``[0, max_temperature]`` (1e5 K, their early stop) or the energy is not finite.
- Jacobian asymmetry (:func:`jacobian_asymmetry`), after Bigi, Langer & Ceriotti (ICML 2025):
  ``λ = ||J_anti||_F / ||J||_F`` with ``J = dF/dr`` (3N x 3N) and ``J_anti = (J - J^T) / 2``. Conservative forces
  have ``J = -Hessian``, symmetric, so ``λ = 0``; computed by autograd on small systems.
- :func:`relax`: BFGS or FIRE to ``fmax`` within ``steps``; converged or not, and the final energy.
- Project data and trained cells: :func:`record_to_atoms` / :func:`structures` (records of a split as ASE
  ``Atoms``), :func:`reference_calculator` (the calculator of the embedded labels), :func:`run_plan` (which
  force modes and frame policies a cell supports), :func:`measure_nve` (one run as a flat record) and
  :func:`relaxation_runs` (model-relaxed structures scored by the reference's energy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from faenet.calculator import DIRECT_HEADS, FA_METHODS

#: Fu et al.'s bond-length deviation threshold, Å.
BOND_TOLERANCE = 0.5
#: Fu et al.'s early stop: temperatures above this (K) end a run as collapsed.
MAX_TEMPERATURE = 1e5


@dataclass
class NVEResult:
    """One NVE trajectory: recorded frames (time ps, energies eV, temperature K) and its verdicts."""

    time_ps: list[float]
    etot: list[float]
    epot: list[float]
    ekin: list[float]
    temperature: list[float]
    n_atoms: int
    steps_run: int
    stable: bool
    collapse_time_ps: float | None  # first recorded time past the stability criterion; None when stable
    reason: str  # "" when stable; else what ended the run
    max_bond_deviation: float  # Å, over the recorded frames up to the end of the run
    drift: float = field(default=float("nan"))  # eV/atom/ps, over the frames up to the end of the run

    def as_dict(self) -> dict[str, Any]:
        return {"time_ps": self.time_ps, "etot": self.etot, "epot": self.epot, "ekin": self.ekin,
                "temperature": self.temperature, "n_atoms": self.n_atoms, "steps_run": self.steps_run,
                "stable": self.stable, "collapse_time_ps": self.collapse_time_ps, "reason": self.reason,
                "max_bond_deviation": self.max_bond_deviation, "drift_ev_per_atom_ps": self.drift}


def energy_drift(time_ps: Any, etot: Any, n_atoms: int) -> float:
    """Slope (eV/atom/ps) of the least-squares line through ``etot / n_atoms`` against ``time_ps``."""
    t = np.asarray(time_ps, dtype=np.float64)
    e = np.asarray(etot, dtype=np.float64) / n_atoms
    if t.size < 2 or not np.all(np.isfinite(e)):
        return float("nan")
    return float(np.polyfit(t, e, 1)[0])


def bond_pairs(atoms: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, offsets)`` of the bonds of ``atoms``: pairs within the sum of ASE's natural cutoffs (periodic
    images included), each pair once."""
    from ase.neighborlist import NeighborList, natural_cutoffs

    nl = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=False, skin=0.0)
    nl.update(atoms)
    ii, jj, oo = [], [], []
    for i in range(len(atoms)):
        idx, off = nl.get_neighbors(i)
        ii += [i] * len(idx)
        jj += list(idx)
        oo += list(off)
    return (np.asarray(ii, dtype=np.int64), np.asarray(jj, dtype=np.int64),
            np.asarray(oo, dtype=np.float64).reshape(-1, 3))


def bond_lengths(positions: np.ndarray, cell: np.ndarray, bonds: tuple[np.ndarray, np.ndarray, np.ndarray]
                 ) -> np.ndarray:
    """Lengths (Å) of ``bonds`` (from :func:`bond_pairs`) at ``positions``; the lattice images stay those of
    the first frame (Verlet never wraps positions, so a bond keeps its image)."""
    i, j, off = bonds
    return np.linalg.norm(positions[j] + off @ cell - positions[i], axis=1)


def run_nve(atoms: Any, calc: Any, steps: int, timestep_fs: float, temperature_K: float, seed: int,
            interval: int = 1, bond_tolerance: float = BOND_TOLERANCE,
            max_temperature: float = MAX_TEMPERATURE) -> NVEResult:
    """NVE velocity Verlet of a copy of ``atoms`` with ``calc`` (module docstring); stops at collapse."""
    from ase import units
    from ase.md import velocitydistribution as vd
    from ase.md.verlet import VelocityVerlet

    if steps < 1 or interval < 1 or timestep_fs <= 0 or temperature_K < 0:
        raise ValueError(f"need steps >= 1, interval >= 1, timestep_fs > 0, temperature_K >= 0; got {steps}, "
                         f"{interval}, {timestep_fs}, {temperature_K}")
    atoms = atoms.copy()
    atoms.calc = calc
    # Maxwell-Boltzmann momenta; ASE 3.29 renamed MaxwellBoltzmannDistribution (now deprecated) to this.
    draw = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    draw(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    vd.Stationary(atoms)
    bonds = bond_pairs(atoms)
    cell = np.asarray(atoms.cell.array)
    ref = bond_lengths(atoms.positions, cell, bonds)
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    rec: dict[str, list[float]] = {"t": [], "etot": [], "epot": [], "ekin": [], "T": []}
    worst = 0.0

    def record(step: int) -> str:
        nonlocal worst
        epot, ekin = float(atoms.get_potential_energy()), float(atoms.get_kinetic_energy())
        temp = float(atoms.get_temperature())
        rec["t"].append(step * timestep_fs * 1e-3)
        rec["etot"].append(epot + ekin)
        rec["epot"].append(epot)
        rec["ekin"].append(ekin)
        rec["T"].append(temp)
        dev = float(np.abs(bond_lengths(atoms.positions, cell, bonds) - ref).max()) if ref.size else 0.0
        worst = max(worst, dev)
        if not np.isfinite(epot + ekin):
            return "non-finite energy"
        if temp > max_temperature:
            return f"temperature {temp:.3g} K > {max_temperature:g} K"
        if dev > bond_tolerance:
            return f"bond length deviation {dev:.3f} Å > {bond_tolerance} Å"
        return ""

    reason = record(0)
    done = 0
    while not reason and done < steps:
        n = min(interval, steps - done)
        dyn.run(n)
        done += n
        reason = record(done)
    res = NVEResult(time_ps=rec["t"], etot=rec["etot"], epot=rec["epot"], ekin=rec["ekin"], temperature=rec["T"],
                    n_atoms=len(atoms), steps_run=done, stable=not reason,
                    collapse_time_ps=rec["t"][-1] if reason else None, reason=reason, max_bond_deviation=worst)
    res.drift = energy_drift(res.time_ps, res.etot, res.n_atoms)
    return res


def jacobian_asymmetry(force_fn: Callable[[Tensor], Tensor], pos: Tensor) -> float:
    """Bigi et al.'s ``λ = ||J_anti||_F / ||J||_F`` of the force field ``force_fn`` ((K, 3) -> (K, 3),
    differentiable) at ``pos`` (K, 3); ``J = dF/dpos`` by autograd (3K backward passes: small systems)."""
    pos = pos.detach().clone()
    jac = torch.autograd.functional.jacobian(lambda p: force_fn(p.reshape(-1, 3)).reshape(-1), pos.reshape(-1))
    jac = jac.detach().to(torch.float64)
    norm = torch.linalg.norm(jac)
    if float(norm) == 0.0:
        raise ValueError("the force field's Jacobian is zero at these positions: λ is undefined")
    return float(torch.linalg.norm(0.5 * (jac - jac.T)) / norm)


@dataclass(frozen=True)
class RelaxResult:
    converged: bool
    steps: int
    energy: float  # eV, final
    fmax: float  # eV/Å, largest force norm on a free atom at the end
    atoms: Any = None  # the relaxed copy (``return_atoms``), its calculator detached


def relax(atoms: Any, calc: Any, fmax: float = 0.05, steps: int = 200, optimizer: str = "BFGS",
          return_atoms: bool = False) -> RelaxResult:
    """Relax a copy of ``atoms`` with ``calc`` by BFGS or FIRE to ``fmax`` (eV/Å) within ``steps``."""
    from ase.optimize import BFGS, FIRE

    opts = {"BFGS": BFGS, "FIRE": FIRE}
    if optimizer not in opts:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {list(opts)}")
    atoms = atoms.copy()
    atoms.calc = calc
    opt = opts[optimizer](atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    f = atoms.get_forces()  # constraints applied: fixed atoms report zero
    energy = float(atoms.get_potential_energy())
    final = None
    if return_atoms:
        final = atoms.copy()  # Atoms.copy drops the calculator
    return RelaxResult(converged=converged, steps=int(opt.nsteps), energy=energy,
                       fmax=float(np.linalg.norm(f, axis=1).max()) if len(f) else 0.0, atoms=final)


def record_to_atoms(rec: Any) -> Any:
    """An ASE ``Atoms`` of a project record: positions, Z, cell, pbc, tags, ``FixAtoms`` for ``fixed``."""
    from ase import Atoms
    from ase.constraints import FixAtoms

    atoms = Atoms(numbers=rec.atomic_numbers.numpy(), positions=rec.pos.double().numpy(),
                  cell=rec.cell.reshape(3, 3).double().numpy(), pbc=rec.pbc.reshape(3).numpy())
    tags = rec.tags.numpy()
    if (tags >= 0).all():
        atoms.set_tags(tags)
    fixed = np.flatnonzero(rec.fixed.numpy())
    if fixed.size:
        atoms.set_constraint(FixAtoms(indices=fixed))
    return atoms


def structures(data_dir: Path, task: str, n: int) -> list[tuple[str, Any]]:
    """``(label, Atoms)`` of the first ``n`` systems of ``data/<task>/val_id.lmdb`` (S2EF: last frame each, the
    nearest to the relaxed structure; IS2RE: initial structures)."""
    from faenet.data.dataset import GraphDataset

    path = data_dir / task / "val_id.lmdb"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro fetch` first")
    ds = GraphDataset(path, task=task)
    chosen: dict[int, Any] = {}
    for k in range(len(ds)):
        rec = ds[k]
        sid = int(getattr(rec, "sid", k))
        if task == "s2ef":
            if sid in chosen or len(chosen) < n:
                if sid not in chosen or int(getattr(rec, "fid", 0)) > int(getattr(chosen[sid], "fid", 0)):
                    chosen[sid] = rec
        elif len(chosen) < n:
            chosen[sid] = rec
    return [(f"sid{sid}", record_to_atoms(rec)) for sid, rec in list(chosen.items())[:n]]


def reference_calculator(task: str) -> Any:
    """The calculator of the embedded labels: EMT (catalysis), GFN2-xTB (molecules)."""
    if task == "s2ef":
        from ase.calculators.emt import EMT

        return EMT()
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def run_plan(model_force_mode: str, symmetry: str, force_modes: Sequence[str],
             frame_policies: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(forces, frame_policy)`` runs of a cell: the ``force_modes`` it has (direct only with a direct head),
    each under "full" for FA cells (None without frames); the further frame policies with the first of those
    modes only (a policy compares frames, not heads)."""
    modes = [m for m in force_modes if m == "from_energy" or model_force_mode in DIRECT_HEADS]
    if symmetry not in FA_METHODS:
        return [(m, None) for m in modes]
    plan = [(m, "full") for m in modes] if "full" in frame_policies else []
    plan += [(modes[0], p) for p in frame_policies if p != "full" and modes]
    return plan


def measure_nve(atoms: Any, calc: Any, steps: int, timestep_fs: float, temperature_K: float, seed: int,
                interval: int = 1) -> dict[str, Any]:
    """:func:`run_nve` as a flat record: its fields plus ``timestep_fs``, ``seconds`` (wall time) and
    ``max_abs_energy_change`` (eV/atom, from the first frame: a drift fit hides a jump)."""
    t0 = time.perf_counter()
    res = run_nve(atoms, calc, steps, timestep_fs, temperature_K, seed, interval=interval)
    out = res.as_dict()
    e = np.asarray(res.etot) / res.n_atoms
    out.update(timestep_fs=timestep_fs, seconds=time.perf_counter() - t0,
               max_abs_energy_change=float(np.abs(e - e[0]).max()) if e.size else float("nan"))
    return out


def relaxation_runs(systems: Sequence[tuple[str, Any]], model_calcs: Iterable[tuple[str, str, Any]],
                    fmax: float, steps: int, reference: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """BFGS of every ``(label, Atoms)`` with the reference (default EMT) and with each ``(cell, forces, calc)``
    of ``model_calcs`` (a generator builds each calculator only when reached). The error is the reference's
    energy of the model-relaxed structure minus its energy of the reference-relaxed one (eV): free of the
    models' energy referencing, >= 0 up to the optimiser tolerance when the model's minimum is the reference's."""
    make_ref = reference or (lambda: reference_calculator("s2ef"))

    def ref_energy(atoms: Any) -> float:
        a = atoms.copy()
        a.calc = make_ref()
        return float(a.get_potential_energy())

    ref = {label: relax(atoms, make_ref(), fmax, steps, return_atoms=True) for label, atoms in systems}
    out = [{"cell": "reference-s2ef", "forces": "reference", "structure": label, "converged": ref[label].converged,
            "steps": ref[label].steps, "energy": ref[label].energy, "emt_energy_error": 0.0} for label, _ in systems]
    for cell, forces, calc in model_calcs:
        for label, atoms in systems:
            r = relax(atoms, calc, fmax, steps, return_atoms=True)
            out.append({"cell": cell, "forces": forces, "structure": label, "converged": r.converged,
                        "steps": r.steps, "energy": r.energy,
                        "emt_energy_error": ref_energy(r.atoms) - ref[label].energy})
    return out
