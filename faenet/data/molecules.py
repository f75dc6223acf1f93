"""Embedded molecular stand-ins for the paper's Sec. 5 datasets, labelled with real tight binding (GFN2-xTB).

The real QM7-X / QM9 (``faenet.data.qm7x``, ``faenet.data.qm9``) are tens of GB of DFT data; these sets keep
their *shape* (elements, sizes, equilibrium vs displaced structures, known/unknown-molecule splits) and label
every structure with GFN2-xTB through ``tblite`` -- a real quantum-chemical method, not DFT. Nothing is fitted
or invented: a property xTB cannot give is marked unavailable (:data:`QM9_LIKE_UNAVAILABLE`).

Molecules (documented, fixed pool; :func:`molecule_pool`): every pair ``R-R'`` of the monovalent groups
below (plus each group capped with H), joined with RDKit ``molzip``, deduplicated by canonical SMILES, kept
if its heavy atoms are within the budget and MMFF94 has parameters for it; two groups whose attachment
atoms are both heteroatoms are not joined (no peroxides, N-O, S-Cl, ...). QM7-X-like: C, N, O, S, Cl,
<= 7 heavy atoms; QM9-like: C, N, O, F, <= 9 heavy atoms. A run takes a seeded permutation of the pool.

Geometry: RDKit ETKDGv3 (``randomSeed`` = per-molecule seed, ``numThreads = 1``) + MMFF94 optimisation
("equilibrium" = MMFF minimum, not an xTB or DFT minimum). QM7-X-like non-equilibrium structures: Gaussian
Cartesian displacements of an equilibrium structure with a per-structure std drawn in ``displacement``
(default 0.02-0.06 Å; QM7-X displaced its equilibrium geometries along linear combinations of normal modes,
Hoja et al., Sci. Data 8, 2021; Cartesian noise of 0.1 Å already gives GFN2 force std 3-6 eV/Å against
QM7-X's 1.62). Positions are rounded to float32 *before* labelling, so a record's labels belong exactly to
its stored positions.

Labels (tblite GFN2-xTB single points, converted from Hartree and Bohr): total energy (eV), forces (eV/Å),
HOMO/LUMO/gap (eV, closed shell: HOMO = orbital ``n_el/2 - 1``), dipole norm (Debye), isotropic
polarizability (a0^3, finite field +-1e-3 au on the dipole: GFN2's minimal basis underestimates it, e.g.
ethanol ~15 vs ~32 a0^3 in QM9).

Reproducibility: tblite results are bitwise repeatable only at a fixed OpenMP thread count, so labelling runs
in spawned worker processes with ``OMP_NUM_THREADS=1`` (set before tblite loads; ``workers=1`` uses one such
process too). Per-molecule seeds come from ``(seed, SMILES)``, so a molecule's structures do not depend on
how many molecules are drawn; per-molecule results are cached (``cache_dir``, one ``.npz`` each, written
atomically) and a rerun resumes from them. Same arguments -> same LMDB bytes; only ``summary.json``'s
``timing`` block varies between runs. This module imports neither torch nor tblite at import time (workers
start in ~0.5 s instead of ~4 s). Workers are *spawned*, so a script calling the generators needs the usual
``if __name__ == "__main__":`` guard (the pipeline stages have it).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import json
import math
import os
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faenet.procs import run_pool

if TYPE_CHECKING:
    from torch_geometric.data import Data

# ase.units values (CODATA 2014): ``ase.units.Bohr``, ``ase.units.Hartree``; e·Bohr to Debye.
BOHR = 0.5291772105638411  # Å
HARTREE = 27.211386024367243  # eV
DEBYE_PER_E_BOHR = 2.5417464506
FIELD_STEP = 1e-3  # au, finite-field step for the polarizability

QM7X_LIKE_ELEMENTS = ("C", "N", "O", "S", "Cl")
QM9_LIKE_ELEMENTS = ("C", "N", "O", "F")
MAX_HEAVY = {"qm7x": 7, "qm9": 9}
SPLITS_QM7X = ("train", "val_id", "val_ood", "test")  # val_id ~ "known", test ~ "unknown" molecules
SPLITS_QM9 = ("train", "val", "test")

# QM9-like targets: (name, unit, index of the QM9 target it stands in for, as in faenet.data.qm9.TARGETS).
QM9_LIKE_TARGETS: tuple[tuple[str, str, int], ...] = (
    ("mu", "D", 0),          # |dipole| of the GFN2 density
    ("alpha", "a0^3", 1),    # isotropic finite-field polarizability (GFN2 minimal basis: too small)
    ("homo", "eV", 2),
    ("lumo", "eV", 3),
    ("gap", "eV", 4),
    ("energy", "eV", 7),     # GFN2 total energy; stands in for U0 but has no zero-point energy
)
QM9_LIKE_UNAVAILABLE = {
    "r2": "electronic spatial extent needs the density's second moment (tblite gives a traceless quadrupole)",
    "zpve": "needs a Hessian at an xTB minimum; the geometries are MMFF minima",
    "U": "thermal correction needs vibrational frequencies (see zpve)",
    "H": "thermal correction needs vibrational frequencies (see zpve)",
    "G": "thermal correction needs vibrational frequencies (see zpve)",
    "cv": "needs vibrational frequencies (see zpve)",
    "U0_ATOM/U_ATOM/H_ATOM/G_ATOM": "GFN2 free-atom energies are not meaningful atomisation references",
    "A/B/C": "rotational constants are geometry, not electronic structure; not stored",
}

# Monovalent groups, attachment atom first ("[*:1]" marks the bond). Documented source of the pools.
_GROUPS_COMMON = (
    "C", "CC", "CCC", "C(C)C", "CCCC", "C(C)(C)C", "C=C", "C#C", "CC=C", "C=CC=C", "C1CC1", "C1CCC1",
    "C1CCCC1", "c1ccccc1", "C=O", "C(C)=O", "C(=O)O", "C(=O)N", "C(=O)OC", "C#N", "CC#N", "CO", "CN",
    "C1CO1", "C1CN1", "C1CCOC1", "C1CCNC1", "C(=N)N", "c1ccco1", "c1ccc[nH]1", "c1cccnc1", "O", "OC", "OC=O",
    "OC(C)=O", "N", "NC", "N(C)C", "NC=O", "N=C", "N1CC1",
)
_GROUPS_QM7X = _GROUPS_COMMON + (
    "CS", "CCl", "C(Cl)(Cl)Cl", "C(=S)N", "c1cccs1", "S", "SC", "S(C)=O", "S(C)(=O)=O", "Cl",
)
_GROUPS_QM9 = _GROUPS_COMMON + (
    "CCCCC", "C1CCCCC1", "C(=O)OCC", "CC(=O)O", "CC(N)=O", "C(F)(F)F", "CF", "C(F)F", "c1ccc(F)cc1",
    "c1ccncc1", "c1cnc[nH]1", "c1ncco1", "CCO", "CCN", "C(C)(C)O", "C1CCOCC1", "N1CCCC1", "OCC", "NC(C)=O",
    "F",
)


# ----------------------------------------------------------------------------------------------------------
# Molecule pools
# ----------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def molecule_pool(kind: str) -> tuple[str, ...]:
    """Sorted canonical SMILES of the ``kind`` ("qm7x" or "qm9") pool described in the module docstring."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    if kind not in MAX_HEAVY:
        raise ValueError(f"unknown molecule pool {kind!r}; allowed: {sorted(MAX_HEAVY)}")
    RDLogger.DisableLog("rdApp.*")
    groups = _GROUPS_QM7X if kind == "qm7x" else _GROUPS_QM9
    allowed = set(QM7X_LIKE_ELEMENTS if kind == "qm7x" else QM9_LIKE_ELEMENTS) | {"H"}
    frags = [Chem.MolFromSmiles("[*:1]" + g) for g in groups]
    hetero = [f.GetAtomWithIdx(0).GetNeighbors()[0].GetSymbol().upper() != "C" for f in frags]
    candidates = [Chem.MolFromSmiles(g) for g in groups]  # each group capped with H
    for a in range(len(frags)):
        for b in range(a, len(frags)):
            if not (hetero[a] and hetero[b]):
                candidates.append(Chem.molzip(frags[a], frags[b]))
    pool = set()
    for mol in candidates:
        if mol is None or mol.GetNumHeavyAtoms() > MAX_HEAVY[kind]:
            continue
        Chem.SanitizeMol(mol)
        if any(at.GetSymbol() not in allowed for at in mol.GetAtoms()):
            continue
        if not AllChem.MMFFHasAllMoleculeParams(Chem.AddHs(mol)):
            continue
        pool.add(Chem.MolToSmiles(mol))
    return tuple(sorted(pool))


def molecule_seed(seed: int, smiles: str) -> int:
    """Per-molecule seed in [0, 2^31): a hash of ``(seed, smiles)``, independent of the molecule's rank."""
    h = hashlib.sha256(f"{int(seed)}|{smiles}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------------------------
# Geometry (RDKit) and labels (tblite)
# ----------------------------------------------------------------------------------------------------------

def embed_conformers(smiles: str, n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """``n`` ETKDGv3 conformers of ``smiles`` (with H), each MMFF94-optimised.

    Returns atomic numbers (N,), positions (N, 3) Å rounded to float32 values, MMFF energies (kcal/mol).
    Raises ``RuntimeError`` if no conformer can be embedded.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1
    cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    if len(cids) < n:  # retry from random coordinates (RDKit's documented fallback)
        params.useRandomCoords = True
        mol.RemoveAllConformers()
        cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    if not cids:
        raise RuntimeError(f"ETKDG could not embed {smiles!r}")
    res = AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=2000)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    pos = [mol.GetConformer(c).GetPositions().astype(np.float32).astype(np.float64) for c in cids]
    return z, pos, [float(e) for _, e in res]


@contextlib.contextmanager
def single_omp_thread() -> Iterator[None]:
    """Run the block with one OpenMP thread (restored afterwards), for tblite called in a process that
    already loaded OpenMP (e.g. through torch), where ``OMP_NUM_THREADS`` can no longer take effect.

    Why: results are bitwise repeatable only at a fixed thread count, and on a busy 2-core machine
    tblite's multi-threaded barriers make a small single point orders of magnitude slower.
    ``libgomp.so.1`` is the runtime tblite links; dlopen by soname returns the copy already loaded.
    """
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
    except OSError:  # no GNU OpenMP runtime here: nothing to pin
        yield
        return
    prev = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(1)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(prev)


def _xtb(numbers: np.ndarray, positions: np.ndarray, field: np.ndarray | None = None) -> Any:
    from tblite.interface import Calculator

    with single_omp_thread():
        calc = Calculator("GFN2-xTB", np.asarray(numbers), np.asarray(positions, dtype=np.float64) / BOHR)
        calc.set("verbosity", 0)
        if field is not None:
            # tblite 0.8.0's Python binding passes the ndarray straight to a C double*; give it a cffi buffer.
            from tblite import library

            calc.add("electric-field", library.ffi.new("double[3]", [float(x) for x in field]))
        return calc.singlepoint()


def _check_closed_shell(numbers: np.ndarray) -> None:
    if int(np.sum(numbers)) % 2:
        raise ValueError(f"odd electron count (sum Z = {int(np.sum(numbers))}): only closed-shell neutral "
                         "molecules are supported")


def xtb_energy_forces(numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
    """GFN2-xTB total energy (eV) and forces (N, 3) eV/Å of a neutral closed-shell molecule (positions Å)."""
    _check_closed_shell(numbers)
    res = _xtb(numbers, positions)
    return float(res.get("energy")) * HARTREE, -np.asarray(res.get("gradient")) * (HARTREE / BOHR)


def xtb_properties(numbers: np.ndarray, positions: np.ndarray, polarizability: bool = True
                   ) -> dict[str, float]:
    """GFN2-xTB properties named in :data:`QM9_LIKE_TARGETS` (units there); ``alpha`` is NaN if skipped."""
    _check_closed_shell(numbers)
    res = _xtb(numbers, positions)
    occ, eps = np.asarray(res.get("orbital-occupations")), np.asarray(res.get("orbital-energies"))
    n_el = int(round(float(occ.sum())))
    homo = n_el // 2 - 1  # closed shell: doubly occupied orbitals 0..homo (robust to Fermi smearing)
    if homo < 0 or homo + 1 >= len(eps):
        raise RuntimeError(f"no HOMO/LUMO pair: {n_el} electrons in {len(eps)} orbitals")
    alpha = float("nan")
    if polarizability:
        # alpha_ij = d mu_i / d F_j (atomic units -> a0^3), central differences.
        cols = []
        for j in range(3):
            f = np.zeros(3)
            f[j] = FIELD_STEP
            mu_p = np.asarray(_xtb(numbers, positions, f).get("dipole"))
            mu_m = np.asarray(_xtb(numbers, positions, -f).get("dipole"))
            cols.append((mu_p - mu_m) / (2 * FIELD_STEP))
        alpha = float(np.trace(np.stack(cols, axis=1)) / 3)
    return {"mu": float(np.linalg.norm(res.get("dipole"))) * DEBYE_PER_E_BOHR, "alpha": alpha,
            "homo": float(eps[homo]) * HARTREE, "lumo": float(eps[homo + 1]) * HARTREE,
            "gap": float(eps[homo + 1] - eps[homo]) * HARTREE, "energy": float(res.get("energy")) * HARTREE}


def _label_qm7x(task: dict[str, Any]) -> dict[str, np.ndarray]:
    """Equilibrium + displaced structures of one molecule with energies and forces."""
    t0 = time.process_time()  # CPU seconds of this single-threaded worker: robust to machine load
    z, eq, _ = embed_conformers(task["smiles"], task["n_equilibrium"], task["mol_seed"])
    t1 = time.process_time()
    rng = np.random.default_rng(task["mol_seed"])
    lo, hi = task["displacement"]
    structures, sigmas = list(eq), [0.0] * len(eq)
    for k in range(task["n_structures"] - len(eq)):
        sigma = float(rng.uniform(lo, hi))
        base = eq[k % len(eq)]
        pos = base + rng.normal(0.0, sigma, base.shape)
        structures.append(pos.astype(np.float32).astype(np.float64))
        sigmas.append(sigma)
    labels = [xtb_energy_forces(z, p) for p in structures]
    return {"z": z, "pos": np.stack(structures), "energy": np.array([e for e, _ in labels]),
            "force": np.stack([f for _, f in labels]), "sigma": np.array(sigmas),
            "rdkit_s": np.array(t1 - t0), "xtb_s": np.array(time.process_time() - t1)}


def _label_qm9(task: dict[str, Any]) -> dict[str, np.ndarray]:
    """Lowest-MMFF-energy conformer of one molecule with its GFN2-xTB properties."""
    t0 = time.process_time()
    z, confs, e_mmff = embed_conformers(task["smiles"], task["n_trials"], task["mol_seed"])
    best = int(np.argmin(e_mmff))
    t1 = time.process_time()
    props = xtb_properties(z, confs[best], polarizability=task["polarizability"])
    return {"z": z, "pos": confs[best][None], "targets": np.array([props[n] for n, _, _ in QM9_LIKE_TARGETS]),
            "rdkit_s": np.array(t1 - t0), "xtb_s": np.array(time.process_time() - t1)}


def _label_md17(task: dict[str, Any]) -> dict[str, np.ndarray]:
    """One Langevin trajectory of one molecule (``faenet.data.md17``; imported here, in the worker, on demand)."""
    from faenet.data.md17 import label_trajectory

    return label_trajectory(task)


_LABELLERS: dict[str, Callable[[dict[str, Any]], dict[str, np.ndarray]]] = {
    "qm7x": _label_qm7x, "qm9": _label_qm9, "md17": _label_md17}


def _run_task(task: dict[str, Any]) -> dict[str, np.ndarray]:
    """Worker entry: label one molecule; failures come back as ``{"error": message}`` (deterministic)."""
    try:
        out = _LABELLERS[task["kind"]](task)
    except Exception as err:  # noqa: BLE001 (RDKit/tblite raise assorted types; record and drop the molecule)
        return {"error": np.array(f"{type(err).__name__}: {err}")}
    if not all(np.isfinite(v).all() for k, v in out.items() if k in ("pos", "energy", "force", "temperature")):
        return {"error": np.array("non-finite positions or labels")}
    return out


def _init_worker() -> None:
    # Before tblite is imported in this process: fixed thread count -> bitwise-repeatable results.
    os.environ["OMP_NUM_THREADS"] = "1"


# ----------------------------------------------------------------------------------------------------------
# Process pool with a per-molecule cache
# ----------------------------------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    return {p: importlib.metadata.version(p) for p in ("tblite", "rdkit")}


def _cache_path(cache_dir: Path, task: dict[str, Any]) -> Path:
    key = json.dumps({**task, "versions": _versions()}, sort_keys=True)
    return cache_dir / f"{task['kind']}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def label_molecules(tasks: Sequence[dict[str, Any]], *, workers: int, cache_dir: Path,
                    progress: bool = True) -> list[dict[str, np.ndarray]]:
    """Label ``tasks`` in order with ``workers`` spawned processes, reusing/writing ``cache_dir``."""

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = [_cache_path(cache_dir, t) for t in tasks]
    results: list[dict[str, np.ndarray] | None] = [None] * len(tasks)
    for i, p in enumerate(paths):
        if p.is_file():
            try:
                with np.load(p, allow_pickle=False) as f:
                    results[i] = {k: f[k] for k in f.files}
            except (OSError, ValueError, zipfile.BadZipFile):  # unreadable cache entry: recompute it
                p.unlink()
    todo = [i for i, r in enumerate(results) if r is None]
    # Spawned (fork after torch/OpenMP start-up is unsafe), always in workers: _init_worker fixes tblite's threads.
    desc = f"GFN2-xTB labels ({tasks[0]['kind']})" if progress and todo else None
    for k, out in run_pool(_run_task, [tasks[i] for i in todo], workers, initializer=_init_worker, inline=False,
                           desc=desc, unit="it"):
        _save_npz(paths[todo[k]], out)
        results[todo[k]] = out
    return results  # type: ignore[return-value]


def _label_until(kind: str, order: Sequence[str], n: int, task_args: dict[str, Any], seed: int, *,
                 workers: int, cache_dir: Path, progress: bool) -> tuple[list[tuple[str, dict]], list[dict]]:
    """Label molecules in ``order`` until ``n`` succeed (failed ones are replaced by the next in order)."""
    done: list[tuple[str, dict]] = []
    failed: list[dict] = []
    pos = 0
    while len(done) < n and pos < len(order):
        batch = order[pos: pos + n - len(done)]
        pos += len(batch)
        tasks = [{"kind": kind, "smiles": s, "mol_seed": molecule_seed(seed, s), **task_args} for s in batch]
        outs = label_molecules(tasks, workers=workers, cache_dir=cache_dir, progress=progress)
        for s, out in zip(batch, outs, strict=True):
            if "error" in out:
                failed.append({"smiles": s, "error": str(out["error"])})
            else:
                done.append((s, out))
    if len(done) < n:
        raise RuntimeError(f"only {len(done)} of {n} molecules could be labelled ({len(failed)} failed)")
    return done, failed


# ----------------------------------------------------------------------------------------------------------
# Records, splits, summaries
# ----------------------------------------------------------------------------------------------------------

def molecule_record(numbers: Any, positions: Any, y: float, *, cutoff: float, max_neighbors: int,
                    force: Any = None, **extra: Any) -> Data:
    """A project record (``faenet.data.records``) for a molecule: zero cell, no pbc, tags -1, radius graph.

    ``positions`` (N, 3) Å are stored as float32 and the graph is built from the stored values;
    ``force`` (N, 3) eV/Å is optional; ``extra`` fields (ints or tensors) are attached as given.
    """
    import torch
    from torch_geometric.data import Data

    from faenet.graph import radius_graph

    pos = torch.as_tensor(np.asarray(positions), dtype=torch.float32).reshape(-1, 3)
    z = torch.as_tensor(np.asarray(numbers), dtype=torch.long).reshape(-1)
    n = int(z.numel())
    if pos.shape[0] != n:
        raise ValueError(f"{pos.shape[0]} positions for {n} atomic numbers")
    edge_index, offsets = radius_graph(pos, cutoff, max_neighbors)
    data = Data(pos=pos, atomic_numbers=z, natoms=n, tags=torch.full((n,), -1, dtype=torch.long),
                fixed=torch.zeros(n, dtype=torch.long), cell=torch.zeros(1, 3, 3),
                pbc=torch.zeros(1, 3, dtype=torch.bool), edge_index=edge_index, cell_offsets=offsets,
                y=float(y))
    if force is not None:
        data.force = torch.as_tensor(np.asarray(force), dtype=torch.float32).reshape(n, 3)
    for k, v in extra.items():
        setattr(data, k, v)
    return data


def _n_of(fraction: float, total: int, name: str) -> int:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    return 0 if fraction == 0 else max(1, int(round(fraction * total)))


def fit_element_shifts(numbers: Iterable[Any], energies: Iterable[float]) -> dict[str, Any]:
    """Least-squares per-element energies ``E ~ sum_Z count_Z s_Z`` (eV), as the authors' ``lse_shift``.

    ``numbers``: atomic numbers per structure. Returns ``{"shifts": {Z: eV}, "residual_std": eV,
    "raw_std": eV}``; training on ``E - sum_Z count_Z s_Z`` removes the composition part of the energy.
    """
    rows = [Counter(int(a) for a in z) for z in numbers]
    y = np.asarray(list(energies), dtype=np.float64)
    if len(rows) != len(y):
        raise ValueError(f"{len(rows)} structures but {len(y)} energies")
    if not rows:
        return {"shifts": {}, "residual_std": float("nan"), "raw_std": float("nan")}
    zs = sorted(set().union(*rows))
    a = np.array([[c[z] for z in zs] for c in rows], dtype=np.float64)
    s, *_ = np.linalg.lstsq(a, y, rcond=None)
    return {"shifts": {str(z): float(v) for z, v in zip(zs, s, strict=True)},
            "residual_std": float(np.std(y - a @ s)),
            "raw_std": float(np.std(y))}


def _element_histogram(records: Iterable[Data]) -> dict[str, int]:
    from ase.data import chemical_symbols

    c: Counter[int] = Counter()
    for r in records:
        c.update(int(a) for a in r.atomic_numbers)
    return {chemical_symbols[z]: c[z] for z in sorted(c)}


def _degenerate_frames(splits: dict[str, list[Data]]) -> dict[str, Any]:
    from faenet.frames import DEFAULT_DEGENERACY_TOL, count_degenerate

    out: dict[str, Any] = {"tol": DEFAULT_DEGENERACY_TOL,
                           "measure": "relative PCA eigengap (faenet.frames.eigengap) below tol"}
    for name, recs in splits.items():
        out[name] = count_degenerate(recs, dim=3)[0]
    out["total"] = sum(out[name] for name in splits)
    return out


def _timing(results: list[dict[str, np.ndarray]], wall_s: float, workers: int) -> dict[str, Any]:
    rd = np.array([float(r["rdkit_s"]) for r in results])
    xt = np.array([float(r["xtb_s"]) for r in results])
    return {"molecules": len(results), "workers": workers, "wall_s": wall_s,
            "rdkit_cpu_s_total": float(rd.sum()), "xtb_cpu_s_total": float(xt.sum()),
            "cpu_s_per_molecule_mean": float((rd + xt).mean()),
            "cpu_s_per_molecule_median": float(np.median(rd + xt)),
            "note": "per-molecule CPU seconds of a single-threaded worker, measured when the molecule was "
                    "first labelled (cached molecules keep theirs); wall_s = this call, records and LMDBs "
                    "included"}


def _write_splits(out_dir: Path, splits: dict[str, list[Data]]) -> dict[str, int]:
    from faenet.data.store import write_lmdb

    return {name: write_lmdb(out_dir / f"{name}.lmdb", recs) for name, recs in splits.items()}


def _write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def _check_common(n_molecules: int, seed: int, workers: int, pool: Sequence[str], kind: str) -> None:
    if n_molecules < 1 or n_molecules > len(pool):
        raise ValueError(f"n_molecules must be in [1, {len(pool)}] (size of the {kind}-like pool), "
                         f"got {n_molecules}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


# ----------------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------------

def generate_qm7x_like(out_dir: str | os.PathLike, *, n_molecules: int, conformers_per_molecule: int,
                       seed: int, workers: int = 2, n_equilibrium: int = 1,
                       displacement: tuple[float, float] = (0.02, 0.06), unknown_fraction: float = 0.1,
                       val_ood_fraction: float = 0.1, val_id_fraction: float = 0.1, cutoff: float = 5.0,
                       max_neighbors: int = 40, cache_dir: str | os.PathLike | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """QM7-X-like set: ``out_dir/{train,val_id,val_ood,test}.lmdb`` + ``summary.json``; returns the summary.

    Per molecule: ``n_equilibrium`` MMFF minima, then displaced structures up to ``conformers_per_molecule``.
    Records: ``y`` GFN2 total energy (eV), ``force`` (N, 3) eV/Å, ``sid`` = molecule index in
    :func:`molecule_pool`, ``fid`` = structure index (equilibrium first), ``displacement`` = noise std (Å).
    Splits as the authors' fork splits QM7-X (``faenet.data.qm7x.split_qm7x``), with fractions instead of fixed
    counts: of the seeded molecule order, the first ``unknown_fraction`` molecules are ``test`` ("unknown
    molecules"), the next ``val_ood_fraction`` ``val_ood``; the structures of all other molecules are split at
    random into ``val_id`` (``val_id_fraction``, "known molecules") and ``train``. Graph: radius ``cutoff`` Å,
    ``max_neighbors`` (the fork's QM7-X: 5 Å, 40).
    """
    start = time.perf_counter()
    pool = molecule_pool("qm7x")
    _check_common(n_molecules, seed, workers, pool, "qm7x")
    if n_equilibrium < 1 or conformers_per_molecule < n_equilibrium:
        raise ValueError(f"need 1 <= n_equilibrium ({n_equilibrium}) <= conformers_per_molecule "
                         f"({conformers_per_molecule})")
    lo, hi = (float(x) for x in displacement)
    if not 0.0 <= lo <= hi:
        raise ValueError(f"displacement must be (low, high) Å with 0 <= low <= high, got {displacement}")
    n_test = _n_of(unknown_fraction, n_molecules, "unknown_fraction")
    n_ood = _n_of(val_ood_fraction, n_molecules, "val_ood_fraction")
    _n_of(val_id_fraction, 1, "val_id_fraction")
    if n_test + n_ood >= n_molecules:
        raise ValueError(f"{n_molecules} molecules leave none for training after {n_test} test and {n_ood} "
                         "val_ood molecules; raise n_molecules or lower the fractions")
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    task_args = {"n_equilibrium": n_equilibrium, "n_structures": conformers_per_molecule,
                 "displacement": [lo, hi]}
    done, failed = _label_until("qm7x", order, n_molecules, task_args, seed, workers=workers, cache_dir=cache,
                                progress=progress)
    index = {s: i for i, s in enumerate(pool)}
    role = ["test"] * n_test + ["val_ood"] * n_ood + ["known"] * (n_molecules - n_test - n_ood)
    splits: dict[str, list[Data]] = {name: [] for name in SPLITS_QM7X}
    known: list[Data] = []
    for (smi, out), r in zip(done, role, strict=True):
        for k in range(len(out["energy"])):
            rec = molecule_record(out["z"], out["pos"][k], out["energy"][k], force=out["force"][k],
                                  cutoff=cutoff, max_neighbors=max_neighbors, sid=index[smi], fid=k,
                                  displacement=float(out["sigma"][k]))
            (known if r == "known" else splits[r]).append(rec)
    n_val_id = _n_of(val_id_fraction, len(known), "val_id_fraction")
    val_mask = np.zeros(len(known), dtype=bool)
    val_mask[np.random.default_rng([seed, 1]).permutation(len(known))[:n_val_id]] = True
    splits["train"] = [r for r, v in zip(known, val_mask, strict=True) if not v]
    splits["val_id"] = [r for r, v in zip(known, val_mask, strict=True) if v]
    sizes = _write_splits(out_dir, splits)
    mols = {name: sorted({pool[int(r.sid)] for r in recs}) for name, recs in splits.items()}
    forces = np.concatenate([o["force"].reshape(-1) for _, o in done])
    summary = {
        "dataset": "qm7x-like", "labels": "GFN2-xTB (tblite) total energy eV, forces eV/Å",
        "seed": seed, "n_molecules": n_molecules, "conformers_per_molecule": conformers_per_molecule,
        "n_equilibrium": n_equilibrium, "displacement_A": [lo, hi], "cutoff_A": cutoff,
        "max_neighbors": max_neighbors, "elements": list(QM7X_LIKE_ELEMENTS),
        "max_heavy_atoms": MAX_HEAVY["qm7x"],
        "pool_size": len(pool), "sizes": sizes, "molecules_per_split": {k: len(v) for k, v in mols.items()},
        "split_roles": {"known": "val_id", "unknown": "test"}, "molecules": mols, "failed": failed,
        "element_histogram": _element_histogram(r for recs in splits.values() for r in recs),
        "energy_eV": {"mean": float(np.mean([r.y for rs in splits.values() for r in rs])),
                      "std": float(np.std([r.y for rs in splits.values() for r in rs]))},
        "force_eV_per_A": {"std": float(forces.std()), "max_abs": float(np.abs(forces).max())},
        "element_energy_shifts_train": fit_element_shifts((r.atomic_numbers for r in splits["train"]),
                                                          (r.y for r in splits["train"])),
        "degenerate_frames": _degenerate_frames(splits), "versions": _versions(), "omp_num_threads": 1,
        "timing": _timing([o for _, o in done], time.perf_counter() - start, workers),
    }
    _write_summary(out_dir, summary)
    return summary


def generate_qm9_like(out_dir: str | os.PathLike, *, n_molecules: int, seed: int, workers: int = 2,
                      target: str = "energy",
                      split_fractions: tuple[float, float] = (110_000 / 130_831, 10_000 / 130_831),
                      n_trials: int = 4, polarizability: bool = True, cutoff: float = 6.0,
                      max_neighbors: int = 30, cache_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """QM9-like set: ``out_dir/{train,val,test}.lmdb`` + ``summary.json``; returns the summary.

    One equilibrium structure per molecule (lowest MMFF energy of ``n_trials`` ETKDG conformers). Records:
    ``y`` = property ``target`` (one of :data:`QM9_LIKE_TARGETS`), ``targets`` (1, K) float32 all of them in
    that order (so one file serves every target), ``sid`` = molecule index in :func:`molecule_pool`.
    Split as the paper / authors' fork: ``torch.randperm`` with ``manual_seed(seed)``; the first
    ``split_fractions[0]`` go to train, the next ``split_fractions[1]`` to val (default: the paper's
    110k / 10k of 130,831), the rest to test. Graph: ``cutoff`` 6 Å, 30 neighbours (the paper's QM9).
    """
    import torch

    from faenet.data.qm9 import split_indices

    start = time.perf_counter()
    pool = molecule_pool("qm9")
    _check_common(n_molecules, seed, workers, pool, "qm9")
    names = [n for n, _, _ in QM9_LIKE_TARGETS]
    if target not in names:
        raise ValueError(f"unknown QM9-like target {target!r}; available: {names} "
                         f"(unavailable from GFN2-xTB: {sorted(QM9_LIKE_UNAVAILABLE)})")
    if target == "alpha" and not polarizability:
        raise ValueError("target 'alpha' needs polarizability=True")
    f_train, f_val = split_fractions
    if f_train <= 0 or f_val < 0 or f_train + f_val > 1:
        raise ValueError(f"split_fractions {split_fractions} must be (train > 0, val >= 0) with sum <= 1")
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    task_args = {"n_trials": n_trials, "polarizability": polarizability}
    done, failed = _label_until("qm9", order, n_molecules, task_args, seed, workers=workers, cache_dir=cache,
                                progress=progress)
    index = {s: i for i, s in enumerate(pool)}
    t_idx = names.index(target)
    records = [molecule_record(o["z"], o["pos"][0], o["targets"][t_idx], cutoff=cutoff,
                               max_neighbors=max_neighbors, sid=index[s],
                               targets=torch.as_tensor(o["targets"], dtype=torch.float32)[None])
               for s, o in done]
    n_train = int(math.floor(f_train * n_molecules))
    n_val = int(round(f_val * n_molecules))
    parts = split_indices(len(records), seed=seed, n_train=n_train, n_val=n_val)
    splits = {name: [records[int(i)] for i in parts[name]] for name in SPLITS_QM9}
    sizes = _write_splits(out_dir, splits)
    tab = np.stack([o["targets"] for _, o in done])
    summary = {
        "dataset": "qm9-like", "labels": "GFN2-xTB (tblite) properties at MMFF94 minima", "seed": seed,
        "n_molecules": n_molecules, "target": target, "cutoff_A": cutoff, "max_neighbors": max_neighbors,
        "elements": list(QM9_LIKE_ELEMENTS), "max_heavy_atoms": MAX_HEAVY["qm9"], "pool_size": len(pool),
        "sizes": sizes, "failed": failed,
        "targets": [{"name": n, "unit": u, "qm9_index": q, "mean": float(np.mean(tab[:, i])),
                     "std": float(np.std(tab[:, i]))} for i, (n, u, q) in enumerate(QM9_LIKE_TARGETS)],
        "unavailable": QM9_LIKE_UNAVAILABLE,
        "molecules": {name: sorted(pool[int(r.sid)] for r in recs) for name, recs in splits.items()},
        "element_histogram": _element_histogram(records),
        "element_energy_shifts_train": fit_element_shifts(
            (r.atomic_numbers for r in splits["train"]),
            (float(r.targets[0, names.index("energy")]) for r in splits["train"])),
        "degenerate_frames": _degenerate_frames(splits), "versions": _versions(), "omp_num_threads": 1,
        "timing": _timing([o for _, o in done], time.perf_counter() - start, workers),
    }
    _write_summary(out_dir, summary)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Data card
# ----------------------------------------------------------------------------------------------------------

def data_card_markdown(summary: dict[str, Any]) -> str:
    """Markdown data card of a molecular set's summary (embedded QM7-X-like / QM9-like, or the real sets)."""
    name = summary.get("dataset", "molecules")
    lines = [f"# Data card: {name}", ""]
    if "labels" in summary:
        lines += [f"Labels: {summary['labels']}. Molecules: RDKit ETKDGv3 + MMFF94 from a fixed pool of "
                  f"{summary.get('pool_size')} SMILES (faenet.data.molecules.molecule_pool), elements "
                  f"{summary.get('elements')}, at most {summary.get('max_heavy_atoms')} heavy atoms; seed "
                  f"{summary.get('seed')}. Graph: radius {summary.get('cutoff_A')} Å, at most "
                  f"{summary.get('max_neighbors')} neighbours.", ""]
    else:
        lines += [f"Source: {summary.get('source')}.", ""]
    sizes = summary.get("sizes", {})
    mols = summary.get("molecules_per_split") or {k: len(v) for k, v in summary.get("molecules", {}).items()}
    lines += ["| split | structures | molecules |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {mols.get(k, '–')} |" for k, v in sizes.items()]
    if "split_roles" in summary:
        lines += ["", f"Paper roles: known molecules = `{summary['split_roles']['known']}`, unknown molecules = "
                      f"`{summary['split_roles']['unknown']}` (disjoint by molecule)."]
    if "energy_eV" in summary:
        e, f = summary["energy_eV"], summary.get("force_eV_per_A", {})
        lines += ["", f"- Total energy (eV): mean {e['mean']:.2f}, std {e['std']:.2f}; forces (eV/Å): component "
                      f"std {f.get('std', float('nan')):.3f}, max |F| {f.get('max_abs', float('nan')):.2f}",
                  f"- Displacement std of non-equilibrium structures: {summary.get('displacement_A')} Å; "
                  f"{summary.get('conformers_per_molecule')} structures per molecule "
                  f"({summary.get('n_equilibrium')} equilibrium)"]
    if summary.get("targets"):
        lines += ["", "| target | unit | QM9 index | mean | std |", "|---|---|---|---|---|"]
        lines += [f"| {t['name']} | {t['unit']} | {t['qm9_index']} | {t['mean']:.4g} | {t['std']:.4g} |"
                  for t in summary["targets"]]
        if summary.get("unavailable"):
            lines += ["", "Not available from GFN2-xTB (left out, not invented): "
                      + "; ".join(f"{k}: {v}" for k, v in summary["unavailable"].items())]
    shifts = summary.get("element_energy_shifts_train")
    if shifts:
        lines += ["", f"- Per-element least-squares energy shifts (train): residual std "
                      f"{shifts['residual_std']:.3f} eV vs raw std {shifts['raw_std']:.3f} eV"]
    deg = summary.get("degenerate_frames")
    if deg:
        per = ", ".join(f"{k} {v}" for k, v in deg.items() if k not in ("tol", "measure", "total"))
        lines += [f"- Near-degenerate 3D frames ({deg['measure']} < {deg['tol']:g}): {deg['total']} ({per})"]
    if summary.get("element_histogram"):
        lines += ["- Atoms per element: " + ", ".join(f"{k} {v}" for k, v in summary["element_histogram"].items())]
    if summary.get("failed"):
        lines += [f"- Molecules skipped (embedding or SCF failure): {len(summary['failed'])}"]
    t = summary.get("timing")
    if t:
        lines += [f"- Label generation: {t['wall_s']:.1f} s wall with {t['workers']} workers; "
                  f"{t['cpu_s_per_molecule_mean'] * 1000:.0f} ms CPU per molecule (mean)"]
    return "\n".join(lines) + "\n"
