"""MD17-like set: molecular-dynamics trajectories of one (or a few) small molecules, GFN2-xTB energies and forces.

MD17 (Chmiela et al., Sci. Adv. 2017) samples each molecule along an ab initio MD trajectory at 500 K; the
revised rMD17 (Christensen & von Lilienfeld, 2020) relabels 100k frames per molecule with PBE/def2-SVP. Models are
trained per molecule, on frames drawn at random from the trajectory: one molecule's thermal distribution, the
"simple" dataset of the GemNet ablation (against COLL / QM7-X's many molecules). This embedded stand-in keeps that
shape with real physics:

- geometry: RDKit ETKDGv3 + MMFF94 (``faenet.data.molecules.embed_conformers``) per trajectory, seeded;
- dynamics: ASE Langevin (``temperature_K``, default MD17's 500 K; ``timestep_fs`` 0.5 fs, MD17's; friction
  ``friction_per_fs``) driven by GFN2-xTB forces (tblite, one thread), Maxwell-Boltzmann start with zero
  momentum and rotation, ``equilibration_steps`` discarded, then one frame every ``stride`` steps;
- labels: each kept frame's positions are rounded to float32 and relabelled with GFN2-xTB *there*, so a record's
  energy (eV) and forces (eV/Å) belong exactly to its stored structure (tests/test_label_recompute.py);
- splits: ``train`` / ``val`` / ``test`` drawn at random over all frames (seeded), as MD17's random splits:
  neighbouring frames are correlated, which is part of why MD17 is the easy case.

One trajectory is one labelled chunk: computed in a spawned single-thread worker and cached as ``.npz``
(``faenet.data.molecules.label_molecules``), so a rerun resumes and the same arguments give the same LMDB bytes.
``load_rmd17_npz`` reads the real rMD17 files (``rmd17_<molecule>.npz``) into the same records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faenet.data import molecules as M

if TYPE_CHECKING:
    from torch_geometric.data import Data

SPLITS_MD17 = ("train", "val", "test")
KCAL_PER_MOL = 0.0433641043  # eV (ase.units.kcal / ase.units.mol)

# MD17 molecules the RDKit + GFN2 generator knows by name (SMILES); any neutral closed-shell SMILES is accepted.
MD17_MOLECULES = {"ethanol": "CCO", "malonaldehyde": "O=CCC=O", "uracil": "O=c1cc[nH]c(=O)[nH]1",
                  "toluene": "Cc1ccccc1", "benzene": "c1ccccc1", "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
                  "naphthalene": "c1ccc2ccccc2c1", "salicylic": "O=C(O)c1ccccc1O"}


def resolve_molecule(name: str) -> str:
    """SMILES of an MD17 molecule name (``MD17_MOLECULES``), or ``name`` itself if RDKit parses it."""
    if name in MD17_MOLECULES:
        return MD17_MOLECULES[name]
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    if Chem.MolFromSmiles(name) is None:
        raise ValueError(f"molecule {name!r} is neither an MD17 name {sorted(MD17_MOLECULES)} nor a SMILES RDKit "
                         "parses")
    return name


def run_trajectory(numbers: np.ndarray, positions: np.ndarray, *, n_frames: int, stride: int,
                   equilibration_steps: int, temperature_K: float, timestep_fs: float, friction_per_fs: float,
                   seed: int) -> dict[str, np.ndarray]:
    """Langevin MD with GFN2-xTB forces from ``positions`` (Å); ``n_frames`` frames, one every ``stride`` steps
    after ``equilibration_steps``. Returns float32-rounded positions (F, N, 3), their GFN2 energies (F,) eV and
    forces (F, N, 3) eV/Å (relabelled at the rounded positions) and the kinetic temperature (F,) K of each frame.
    """
    from ase import Atoms, units
    from ase.calculators.calculator import Calculator, all_changes
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    class _XTB(Calculator):
        implemented_properties = ("energy", "forces")

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):  # noqa: ANN001
            super().calculate(atoms, properties, system_changes)
            e, f = M.xtb_energy_forces(self.atoms.numbers, self.atoms.positions)
            self.results = {"energy": e, "forces": f}

    if n_frames < 1 or stride < 1 or equilibration_steps < 0:
        raise ValueError(f"need n_frames >= 1, stride >= 1, equilibration_steps >= 0; got {n_frames}, {stride}, "
                         f"{equilibration_steps}")
    atoms = Atoms(numbers=np.asarray(numbers), positions=np.asarray(positions, dtype=np.float64))
    atoms.calc = _XTB()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    # FixCom instead of Langevin's fixcm=True, which ASE documents as not sampling NVT exactly (and deprecates);
    # the constraint also removes its 3 degrees of freedom from get_temperature.
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction_per_fs / units.fs,
                   fixcm=False, rng=rng)
    if equilibration_steps:
        dyn.run(equilibration_steps)
    pos, temp = [], []
    for _ in range(n_frames):
        dyn.run(stride)
        pos.append(atoms.positions.astype(np.float32).astype(np.float64))
        temp.append(atoms.get_temperature())
    labels = [M.xtb_energy_forces(atoms.numbers, p) for p in pos]
    return {"pos": np.stack(pos), "energy": np.array([e for e, _ in labels]),
            "force": np.stack([f for _, f in labels]), "temperature": np.array(temp)}


def label_trajectory(task: dict[str, Any]) -> dict[str, np.ndarray]:
    """Worker entry (``faenet.data.molecules`` kind ``md17``): one seeded trajectory of one molecule."""
    t0 = time.process_time()
    z, (start,), _ = M.embed_conformers(task["smiles"], 1, task["mol_seed"])
    t1 = time.process_time()
    out = run_trajectory(z, start, n_frames=task["n_frames"], stride=task["stride"],
                         equilibration_steps=task["equilibration_steps"], temperature_K=task["temperature_K"],
                         timestep_fs=task["timestep_fs"], friction_per_fs=task["friction_per_fs"],
                         seed=task["mol_seed"])
    return {"z": z, **out, "rdkit_s": np.array(t1 - t0), "xtb_s": np.array(time.process_time() - t1)}


def _split(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    n_val, n_test = M._n_of(val_fraction, n, "val_fraction"), M._n_of(test_fraction, n, "test_fraction")
    if n_val + n_test >= n:
        raise ValueError(f"{n} frames leave none for training after {n_val} val and {n_test} test frames; add "
                         "frames or lower the fractions")
    perm = np.random.default_rng([seed, 17]).permutation(n)
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def generate_md17_like(out_dir: str | os.PathLike, *, molecules: Sequence[str] = ("ethanol",),
                       n_trajectories: int, frames_per_trajectory: int, seed: int, stride: int = 10,
                       equilibration_steps: int = 400, temperature_K: float = 500.0, timestep_fs: float = 0.5,
                       friction_per_fs: float = 0.02, val_fraction: float = 0.1, test_fraction: float = 0.2,
                       workers: int = 2, cutoff: float = 5.0, max_neighbors: int = 40,
                       cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """MD17-like set: ``out_dir/{train,val,test}.lmdb`` + ``summary.json``; returns the summary.

    ``n_trajectories`` independent trajectories per molecule (each from its own seeded ETKDG conformer and
    velocities), ``frames_per_trajectory`` frames each. Records: ``y`` GFN2 total energy (eV), ``force`` (N, 3)
    eV/Å, ``sid`` = index of the molecule in ``molecules``, ``fid`` = trajectory * frames_per_trajectory + frame.
    Graph: radius ``cutoff`` Å (5 Å: every pair of a small molecule), ``max_neighbors``.
    """
    start = time.perf_counter()
    if not molecules:
        raise ValueError("molecules is empty: name at least one, e.g. ['ethanol']")
    smiles = [resolve_molecule(m) for m in molecules]
    if len(set(smiles)) != len(smiles):
        raise ValueError(f"molecules lists a molecule twice: {list(molecules)}")
    for name, v in (("n_trajectories", n_trajectories), ("frames_per_trajectory", frames_per_trajectory),
                    ("stride", stride), ("workers", workers)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if equilibration_steps < 0 or not (temperature_K > 0 and timestep_fs > 0 and friction_per_fs > 0):
        raise ValueError(f"need equilibration_steps >= 0 and temperature_K, timestep_fs, friction_per_fs > 0; got "
                         f"{equilibration_steps}, {temperature_K}, {timestep_fs}, {friction_per_fs}")
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    md = {"n_frames": frames_per_trajectory, "stride": stride, "equilibration_steps": equilibration_steps,
          "temperature_K": float(temperature_K), "timestep_fs": float(timestep_fs),
          "friction_per_fs": float(friction_per_fs)}
    tasks = [{"kind": "md17", "smiles": s, "trajectory": k, "mol_seed": M.molecule_seed(seed, f"{s}#traj{k}"), **md}
             for s in smiles for k in range(n_trajectories)]
    outs = M.label_molecules(tasks, workers=workers, cache_dir=cache, progress=progress)
    bad = [(t["smiles"], t["trajectory"], str(o["error"])) for t, o in zip(tasks, outs, strict=True) if "error" in o]
    if bad:  # a trajectory cannot be replaced by another molecule's as QM7-X's pool does: say which failed
        raise RuntimeError(f"MD trajectories failed: {bad}")
    records: list[Data] = []
    for t, o in zip(tasks, outs, strict=True):
        for j in range(frames_per_trajectory):
            records.append(M.molecule_record(o["z"], o["pos"][j], o["energy"][j], force=o["force"][j], cutoff=cutoff,
                                             max_neighbors=max_neighbors, sid=smiles.index(t["smiles"]),
                                             fid=t["trajectory"] * frames_per_trajectory + j))
    parts = _split(len(records), val_fraction, test_fraction, seed)
    splits = {name: [records[int(i)] for i in parts[name]] for name in SPLITS_MD17}
    sizes = M._write_splits(out_dir, splits)
    energies = np.concatenate([o["energy"] for o in outs])
    forces = np.concatenate([o["force"].reshape(-1) for o in outs])
    temps = np.concatenate([o["temperature"] for o in outs])
    summary = {
        "dataset": "md17-like", "labels": "GFN2-xTB (tblite) total energy eV, forces eV/Å, along Langevin MD",
        "seed": seed, "molecules": dict(zip(molecules, smiles, strict=True)), "n_trajectories": n_trajectories,
        "frames_per_trajectory": frames_per_trajectory,
        "md": {**md, "integrator": "ase.md.langevin.Langevin", "forces": "GFN2-xTB",
               "kept_every_fs": stride * timestep_fs, "equilibration_fs": equilibration_steps * timestep_fs},
        "cutoff_A": cutoff, "max_neighbors": max_neighbors, "sizes": sizes,
        "split": f"random over frames (seed {seed}): val {val_fraction}, test {test_fraction}",
        "temperature_K_kept_frames": {"mean": float(temps.mean()), "std": float(temps.std())},
        "energy_eV": {"mean": float(energies.mean()), "std": float(energies.std())},
        "force_eV_per_A": {"std": float(forces.std()), "max_abs": float(np.abs(forces).max())},
        "element_histogram": M._element_histogram(records),
        "degenerate_frames": M._degenerate_frames(splits), "versions": M._versions(), "omp_num_threads": 1,
        "timing": {**M._timing(outs, time.perf_counter() - start, workers),
                   "md_steps": len(tasks) * (equilibration_steps + stride * frames_per_trajectory)},
    }
    M._write_summary(out_dir, summary)
    return summary


def load_rmd17_npz(path: str | os.PathLike, *, cutoff: float = 5.0, max_neighbors: int = 40,
                   indices: Sequence[int] | None = None) -> list[Data]:
    """Records of a revised MD17 file (``rmd17_<molecule>.npz``: ``nuclear_charges`` (N,), ``coords`` (F, N, 3) Å,
    ``energies`` (F,) kcal/mol, ``forces`` (F, N, 3) kcal/mol/Å), converted to eV and eV/Å; ``indices`` selects
    frames (rMD17 ships its 5 train/test index splits as separate files). ``sid`` 0, ``fid`` = frame index."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("nuclear_charges", "coords", "energies", "forces") if k not in f.files]
        if missing:
            raise ValueError(f"{path}: not an rMD17 file, keys {missing} missing (has {f.files})")
        z, pos, e, frc = (np.asarray(f[k]) for k in ("nuclear_charges", "coords", "energies", "forces"))
    n_frames = pos.shape[0]
    if pos.ndim != 3 or pos.shape[1:] != (z.shape[0], 3) or e.shape != (n_frames,) or frc.shape != pos.shape:
        raise ValueError(f"{path}: inconsistent shapes nuclear_charges {z.shape}, coords {pos.shape}, energies "
                         f"{e.shape}, forces {frc.shape}")
    idx = range(n_frames) if indices is None else [int(i) for i in indices]
    return [M.molecule_record(z, pos[i], float(e[i]) * KCAL_PER_MOL, force=frc[i] * KCAL_PER_MOL, cutoff=cutoff,
                              max_neighbors=max_neighbors, sid=0, fid=int(i)) for i in idx]


def write_rmd17_lmdbs(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, *, molecules: Sequence[str],
                      n_frames: int, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.2,
                      cutoff: float = 5.0, max_neighbors: int = 40) -> dict[str, Any]:
    """The real rMD17 as ``out_dir/{train,val,test}.lmdb``: the first ``n_frames`` frames of each
    ``raw_dir/rmd17_<molecule>.npz`` (``sid`` = the molecule's index in ``molecules``), split at random over
    frames as :func:`generate_md17_like`; writes and returns the summary."""
    raw = Path(raw_dir)
    records: list[Data] = []
    for k, name in enumerate(molecules):
        path = raw / f"rmd17_{name}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: download rMD17 (figshare, 'Revised MD17 dataset (rMD17)', "
                                    f"doi:10.6084/m9.figshare.12672038) and put its npz_data/rmd17_{name}.npz there")
        with np.load(path, allow_pickle=False) as f:
            available = int(f["coords"].shape[0]) if "coords" in f.files else 0
        recs = load_rmd17_npz(path, cutoff=cutoff, max_neighbors=max_neighbors, indices=range(min(n_frames, available)))
        for r in recs:
            r.sid = k
        records += recs
    parts = _split(len(records), val_fraction, test_fraction, seed)
    splits = {name: [records[int(i)] for i in parts[name]] for name in SPLITS_MD17}
    sizes = M._write_splits(Path(out_dir), splits)
    summary = {"dataset": "rmd17", "source": "revised MD17 (Christensen & von Lilienfeld 2020), PBE/def2-SVP",
               "molecules": list(molecules), "sizes": sizes, "seed": seed,
               "split": f"random over frames (seed {seed}): val {val_fraction}, test {test_fraction}",
               "units": "energies kcal/mol -> eV, forces kcal/mol/Å -> eV/Å (x 0.0433641043)"}
    M._write_summary(Path(out_dir), summary)
    return summary


def data_card_markdown(summary: dict[str, Any]) -> str:
    """Markdown data card of the MD17-like set's summary (or of the real rMD17's)."""
    if "md" not in summary:
        lines = [f"# Data card: {summary.get('dataset')}", "", f"Source: {summary.get('source')}; molecules "
                 f"{summary.get('molecules')}; {summary.get('split')}; {summary.get('units')}.", "",
                 "| split | frames |", "|---|---|"]
        return "\n".join(lines + [f"| {k} | {v} |" for k, v in summary.get("sizes", {}).items()]) + "\n"
    md = summary["md"]
    t, e, f = summary["temperature_K_kept_frames"], summary["energy_eV"], summary["force_eV_per_A"]
    mols = ", ".join(f"{k} (`{v}`)" for k, v in summary["molecules"].items())
    lines = [f"# Data card: {summary['dataset']}", "",
             f"Labels: {summary['labels']}. Molecules: {mols}; {summary['n_trajectories']} trajectories each "
             f"(RDKit ETKDGv3 + MMFF94 start, seed {summary['seed']}), {summary['frames_per_trajectory']} frames per "
             f"trajectory. Dynamics: Langevin at {md['temperature_K']:g} K, {md['timestep_fs']:g} fs steps, friction "
             f"{md['friction_per_fs']:g} /fs, {md['equilibration_fs']:g} fs discarded, one frame every "
             f"{md['kept_every_fs']:g} fs. Graph: radius {summary['cutoff_A']} Å, at most {summary['max_neighbors']} "
             "neighbours.", "", "| split | frames |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["sizes"].items()]
    lines += ["", f"- Split: {summary['split']} (MD17's random frame splits)",
              f"- Kinetic temperature of the kept frames: mean {t['mean']:.0f} K, std {t['std']:.0f} K",
              f"- Total energy (eV): mean {e['mean']:.2f}, std {e['std']:.3f}; forces (eV/Å): component std "
              f"{f['std']:.3f}, max |F| {f['max_abs']:.2f}",
              "- Atoms per element: " + ", ".join(f"{k} {v}" for k, v in summary["element_histogram"].items())]
    deg = summary.get("degenerate_frames")
    if deg:
        lines += [f"- Near-degenerate 3D frames ({deg['measure']} < {deg['tol']:g}): {deg['total']}"]
    tm = summary.get("timing")
    if tm:
        lines += [f"- Generation: {tm['wall_s']:.1f} s wall with {tm['workers']} workers, {tm['md_steps']} MD steps; "
                  f"{tm['cpu_s_per_molecule_mean']:.1f} s CPU per trajectory (mean)"]
    return "\n".join(lines) + "\n"
