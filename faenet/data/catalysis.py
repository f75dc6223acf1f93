"""The embedded OC20-like catalysis dataset: adsorbates on fcc metal slabs, labelled with ASE's EMT.

A small, honest stand-in for OC20 (Chanussot et al., ACS Catal. 11, 2021) that builds on 2 CPU cores in seconds to
minutes. Energies are EMT energies (an effective-medium potential, not DFT), so absolute numbers are not
comparable with the paper's; the task structure is the same:

- Catalysts: fcc(111)/(100)/(110) slabs of a *composition* (:func:`parse_catalyst`): a pure metal of Al, Cu, Ag,
  Au, Ni, Pd, Pt, or an ordered substitutional binary alloy ``A3B`` (one B per 2x2 cell of every layer, shifted
  layer to layer, as the (111) planes of L1_2 Cu3Au) or ``AB`` (a checkerboard per layer, alternating layer to
  layer); lattice constant = Vegard's law over the EMT-relaxed fcc constants;
  ``slab_size = (nx, ny, layers)``, 10 Å of vacuum on each side of the slab, ``pbc = [True, True, False]``.
  The bottom ``ceil(layers / 2)`` layers are fixed and tagged 0 (sub-surface), the others are free and
  tagged 1 (surface), the adsorbate is tagged 2 (OC20 tags). One adsorbate of :data:`ADSORBATES` is placed
  at a random named site (top/bridge/hollow) of a random surface cell, with a random rotation about z, small
  tilt and xy jitter, at a site-dependent height.
- IS2RE: the adsorbate is placed on the relaxed clean slab (as OC20 does), then BFGS relaxation (``fmax``,
  ``max_steps``; convergence recorded) from that initial structure; target
  ``y = E(slab+ads, relaxed) - E(clean slab, relaxed) - sum_atoms mu_X`` with gas references as OC20's
  (H2, H2O, N2, CO): mu_H = E(H2)/2, mu_O = E(H2O) - E(H2), mu_N = E(N2)/2, mu_C = E(CO) - mu_O, all
  EMT-relaxed molecules. Record positions are the initial structure.
- S2EF: frames ``0, s, 2s, ...`` and the last frame of each relaxation, ``y = E_frame - E_slab - sum mu``
  (OC20's ``--ref-energy``), ``force`` = unconstrained forces (fixed atoms included).
- Splits as OC20's: ``train``, ``val_id``, ``test`` (in-distribution catalysts: every pure metal and the
  ``alloys``; in-distribution adsorbates), ``val_ood_ads`` (adsorbates absent from training, made of elements it
  has), ``val_ood_cat`` (``ood_alloys``: compositions absent from training, made of metals it has),
  ``val_ood_both``. So every element of every split occurs in training, as in OC20. All S2EF frames of a
  system go to that system's split.
- Labels belong to the stored structures: cell and initial positions are rounded to float32 before the
  relaxation starts, every stored S2EF frame is relabelled (EMT single point) at its float32-rounded positions,
  and the IS2RE target is the energy of the float32-rounded relaxed structure (= the last S2EF frame's).
- Filters as OC20's: systems with ``|E_ads| > 10 eV`` or any ``|F| > 50 eV/Å`` are dropped, and so are
  systems whose adsorbate desorbed, dissociated or sank below the surface layer; drops are counted.
  EMT (parametrised "not for serious use" for H, C, N, O) breaks X-H bonds easily: measured drop rates on
  600 systems of 2x2x3 slabs are 0 % for H, O, N, C; 13-27 % for OH, NO, CH, NH, CO; 94 % for CH2 (NH2,
  OH2, CH3 alike), so prefer the first two groups.

Determinism: system ``i`` draws its composition and geometry from ``numpy`` generators seeded with
``(seed, i)``, so results do not depend on worker count or scheduling; every finished system is cached
(atomically) in the work folder, and a resumed run writes byte-identical LMDBs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from faenet.data.compositions import (
    ADSORBATES,
    EMT_METALS,
    check_element_coverage,
    parse_catalyst,
)
from faenet.data.records import TAG_ADSORBATE, TAG_SUBSURFACE, TAG_SURFACE, validate_record
from faenet.data.store import dumps, loads, write_lmdb
from faenet.graph import radius_graph
from faenet.procs import run_pool, starred
from faenet.tasks import CATALYSIS, EVAL_SPLITS

FACETS = ("111", "100", "110")
SPLITS = ("train", *EVAL_SPLITS["is2re"])  # IS2RE and S2EF share their splits
ID_SPLITS = ("train", "val_id", "test")
VACUUM = 10.0  # Å each side: the 6 Å graph never reaches a z image even with pbc on in z
CACHE_VERSION = "emt-catalysis-v2"  # bump when the physics or record layout changes (invalidates caches)
MAX_ABS_E_ADS, MAX_ABS_FORCE = 10.0, 50.0  # OC20's filters, eV and eV/Å

# Initial height (Å) of the binding atom above the top layer: (on top, bridge, hollow), near EMT's own
# minima on fcc(111) (EMT binds H, C, N, O farther out than DFT does; closer starts give |F| > 50 eV/Å).
_HEIGHTS = {"H": (2.0, 1.8, 1.7), "C": (1.8, 1.5, 1.4), "N": (1.8, 1.5, 1.4), "O": (1.9, 1.7, 1.6)}
_COVALENT = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66}


@dataclass(frozen=True)
class SystemSpec:
    """Composition of system ``index`` (its geometry is drawn from ``(seed, index)`` when it is built)."""

    index: int
    split: str
    catalyst: str  # a composition of :func:`parse_catalyst`: "Cu", "Cu3Au", "CuPd"
    facet: str
    adsorbate: str


@dataclass(frozen=True)
class PhysicsParams:
    seed: int
    slab_size: tuple[int, int, int]
    fmax: float
    max_steps: int
    cutoff: float
    max_num_neighbors: int
    s2ef_frame_stride: int


def _minority_sites(n: int, nx: int, ny: int, kind: str) -> np.ndarray:
    """Mask of the slab atoms (ASE's order: layer by layer from the bottom, rows of ``nx``) that hold the
    minority metal of an ``A3B`` or ``AB`` ordering."""
    k = np.arange(n)
    layer, i, j = k // (nx * ny), k % nx, (k % (nx * ny)) // nx
    if kind == "A3B":  # one site of every 2x2 in-plane cell, moved layer to layer so B never stacks on B
        return (i % 2 == layer % 2) & (j % 2 == (layer // 2) % 2)
    return (i + j + layer) % 2 == 0  # "AB": checkerboard, alternating layer to layer


# ----------------------------------------------------------------------------------------------------------
# Physics (EMT)
# ----------------------------------------------------------------------------------------------------------

@cache
def emt_lattice_constant(metal: str) -> float:
    """fcc lattice constant (Å) minimising the EMT bulk energy (so slabs start unstrained).

    Golden-section search on [0.9, 1.1] x ASE's reference value, to 1e-4 Å.
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers, reference_states

    def energy(a: float) -> float:
        atoms = bulk(metal, "fcc", a=a, cubic=True)
        atoms.calc = EMT()
        return atoms.get_potential_energy()

    a0 = reference_states[atomic_numbers[metal]]["a"]
    lo, hi = 0.9 * a0, 1.1 * a0
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = energy(x1), energy(x2)
    while hi - lo > 1e-4:
        if f1 < f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = energy(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = energy(x2)
    return round((lo + hi) / 2, 4)


@cache
def gas_references(fmax: float = 0.01) -> dict[str, float]:
    """EMT energies (eV) of relaxed H2, H2O, N2, CO and the per-element references mu_H, mu_O, mu_N, mu_C."""
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    e = {}
    for name in ("H2", "H2O", "N2", "CO"):
        m = molecule(name)
        m.center(vacuum=6.0)
        m.calc = EMT()
        BFGS(m, logfile=None).run(fmax=fmax, steps=200)
        e[name] = float(m.get_potential_energy())
    mu_o = e["H2O"] - e["H2"]
    return {**e, "H": e["H2"] / 2, "O": mu_o, "N": e["N2"] / 2, "C": e["CO"] - mu_o}


def catalyst_lattice_constant(catalyst: str) -> float:
    """Vegard's law over the EMT fcc lattice constants of the catalyst's metals (Å)."""
    a, b, kind = parse_catalyst(catalyst)
    if b is None:
        return emt_lattice_constant(a)
    x_b = 0.25 if kind == "A3B" else 0.5
    return round((1 - x_b) * emt_lattice_constant(a) + x_b * emt_lattice_constant(b), 4)


def _round32(x: np.ndarray) -> np.ndarray:
    """The float64 values of ``x`` stored as float32: labels are computed at exactly these."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def _build_slab(catalyst: str, facet: str, size: tuple[int, int, int]) -> Any:
    from ase.build import fcc100, fcc110, fcc111
    from ase.constraints import FixAtoms

    major, minor, kind = parse_catalyst(catalyst)
    builder = {"111": fcc111, "100": fcc100, "110": fcc110}[facet]
    slab = builder(major, size=tuple(size), a=catalyst_lattice_constant(catalyst), vacuum=VACUUM)
    if minor is not None:
        symbols = np.array(slab.get_chemical_symbols(), dtype=object)
        symbols[_minority_sites(len(slab), size[0], size[1], kind)] = minor
        slab.set_chemical_symbols(list(symbols))
    slab.set_cell(_round32(slab.get_cell().array), scale_atoms=False)  # the stored cell is float32
    layer = slab.get_tags()  # ASE: 1 = top layer ... nlayers = bottom
    n_fixed = math.ceil(size[2] / 2)
    free = layer <= size[2] - n_fixed
    slab.set_tags(np.where(free, TAG_SURFACE, TAG_SUBSURFACE))
    slab.set_constraint(FixAtoms(mask=~free))
    return slab


def _relax(atoms: Any, fmax: float, max_steps: int, keep_frames: bool) -> tuple[bool, list[tuple], int]:
    """BFGS relaxation; returns (converged, frames [(positions, energy, unconstrained forces)], steps)."""
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    atoms.calc = EMT()
    frames: list[tuple] = []
    opt = BFGS(atoms, logfile=None)
    if keep_frames:
        # Observers run on the initial structure and after every step; the calculator's results are cached.
        opt.attach(lambda: frames.append((atoms.get_positions().copy(), float(atoms.get_potential_energy()),
                                          atoms.get_forces(apply_constraint=False).copy())), interval=1)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    return converged, frames, int(opt.nsteps)


@cache
def relaxed_clean_slab(catalyst: str, facet: str, size: tuple[int, int, int], fmax: float,
                       max_steps: int) -> tuple[np.ndarray, float]:
    """Positions (float32 values) and EMT energy (eV) of the relaxed clean slab, cached per (catalyst, facet,
    size, fmax, max_steps). Adsorbates are placed on it, as OC20 places them on relaxed slabs: an alloy slab
    strained by Vegard's law then relaxes once here, not again in every adsorbate relaxation."""
    slab = _build_slab(catalyst, facet, size)
    _relax(slab, fmax, max_steps, keep_frames=False)
    return _round32(slab.positions), float(slab.get_potential_energy())


def clean_slab_energy(catalyst: str, facet: str, size: tuple[int, int, int], fmax: float,
                      max_steps: int) -> float:
    """EMT energy (eV) of the relaxed clean slab (:func:`relaxed_clean_slab`), the slab reference of E_ads."""
    return relaxed_clean_slab(catalyst, facet, size, fmax, max_steps)[1]


def _place_adsorbate(slab: Any, name: str, rng: np.random.Generator) -> tuple[Any, str]:
    from ase import Atoms
    from ase.build import add_adsorbate

    spec = ADSORBATES[name]
    xyz = np.array([p for _, p in spec], dtype=float)
    if len(spec) > 1:  # random rotation about z, then a small tilt about x
        phi, tilt = rng.uniform(0, 2 * np.pi), rng.uniform(0, np.deg2rad(15))
        rz = np.array([[np.cos(phi), -np.sin(phi), 0], [np.sin(phi), np.cos(phi), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
        xyz = xyz @ (rx @ rz).T
    ads = Atoms([s for s, _ in spec], positions=xyz)
    sites = sorted(slab.info["adsorbate_info"]["sites"])
    site = sites[int(rng.integers(len(sites)))]
    kind = 0 if site == "ontop" else 1 if "bridge" in site else 2
    height = _HEIGHTS[spec[0][0]][kind] + rng.uniform(-0.15, 0.15)
    nx, ny = slab.info["size"][:2] if "size" in slab.info else (1, 1)
    offset = (int(rng.integers(nx)), int(rng.integers(ny)))
    n_slab = len(slab)
    add_adsorbate(slab, ads, height, position=site, offset=offset, mol_index=0)
    jitter = rng.uniform(-0.2, 0.2, size=2)
    slab.positions[n_slab:, :2] += jitter
    tags = slab.get_tags()
    tags[n_slab:] = TAG_ADSORBATE
    slab.set_tags(tags)
    return slab, site


def _anomaly(atoms: Any, n_slab: int) -> str | None:
    """OC20-style anomaly of a relaxed system: desorbed, dissociated, intercalated, or None."""
    ads = np.arange(n_slab, len(atoms))
    sym = atoms.get_chemical_symbols()
    d_slab = atoms.get_distances(int(ads[0]), list(range(n_slab)), mic=True)
    if d_slab.min() > 2.6:
        return "desorbed"
    top_z = atoms.positions[:n_slab][atoms.get_tags()[:n_slab] == TAG_SURFACE, 2].max()
    if atoms.positions[ads, 2].min() < top_z - 0.5:
        return "intercalated"
    if len(ads) > 1:  # adsorbate atoms must stay one bonded cluster
        seen, stack = {0}, [0]
        while stack:
            k = stack.pop()
            for m in range(len(ads)):
                if m in seen:
                    continue
                d = atoms.get_distance(int(ads[k]), int(ads[m]), mic=True)
                if d < 1.3 * (_COVALENT[sym[ads[k]]] + _COVALENT[sym[ads[m]]]):
                    seen.add(m)
                    stack.append(m)
        if len(seen) < len(ads):
            return "dissociated"
    return None


def _record(pos: np.ndarray, z: np.ndarray, tags: np.ndarray, fixed: np.ndarray, cell: np.ndarray,
            y: float, p: PhysicsParams, sid: int, force: np.ndarray | None = None, fid: int | None = None
            ) -> Data:
    """A record in the schema of ``faenet.data.records`` (fields in a fixed order, plain Python scalars)."""
    pos_t = torch.tensor(pos, dtype=torch.float32)
    cell_t = torch.tensor(cell, dtype=torch.float32).reshape(1, 3, 3)
    pbc = torch.tensor([[True, True, False]])
    edge_index, offsets = radius_graph(pos_t.double(), p.cutoff, p.max_num_neighbors, cell_t[0].double(),
                                       pbc[0])
    fields: dict[str, Any] = dict(
        pos=pos_t, atomic_numbers=torch.tensor(z, dtype=torch.long), natoms=int(len(z)),
        tags=torch.tensor(tags, dtype=torch.long), fixed=torch.tensor(fixed, dtype=torch.long), cell=cell_t,
        pbc=pbc, edge_index=edge_index, cell_offsets=offsets, y=float(y), sid=int(sid))
    if force is not None:
        fields["force"] = torch.tensor(force, dtype=torch.float32)
        fields["fid"] = int(fid)
    return Data(**fields)


def _emt_single_point(atoms: Any, positions: np.ndarray) -> tuple[float, np.ndarray]:
    """EMT energy and unconstrained forces of ``atoms`` (its cell and numbers) at ``positions``."""
    from ase.calculators.emt import EMT

    frame = atoms.copy()
    frame.set_constraint()
    frame.positions = positions
    frame.calc = EMT()
    return float(frame.get_potential_energy()), frame.get_forces(apply_constraint=False).copy()


def build_system(spec: SystemSpec, p: PhysicsParams) -> dict[str, Any]:
    """Build, relax and label one system: ``{"meta": ..., "is2re": Data | None, "s2ef": [Data, ...]}``.

    ``is2re`` is None and ``s2ef`` empty when the system is dropped (``meta["drop"]`` says why). Every label is
    EMT's at the stored float32 values: the relaxation starts from the rounded initial structure and each kept
    frame is relabelled at its rounded positions (the optimiser's own frames are float64).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng([p.seed, spec.index])
    size = tuple(p.slab_size)
    slab = _build_slab(spec.catalyst, spec.facet, size)
    slab.positions = relaxed_clean_slab(spec.catalyst, spec.facet, size, p.fmax, p.max_steps)[0]
    slab.info["size"] = size
    n_slab = len(slab)
    atoms, site = _place_adsorbate(slab, spec.adsorbate, rng)
    atoms.positions = _round32(atoms.positions)
    z = atoms.get_atomic_numbers()
    tags = atoms.get_tags()
    fixed = np.zeros(len(atoms), dtype=np.int64)
    fixed[atoms.constraints[0].get_indices()] = 1
    cell = atoms.get_cell().array.copy()
    converged, frames, steps = _relax(atoms, p.fmax, p.max_steps, keep_frames=True)
    mu = gas_references()
    e_ref = clean_slab_energy(spec.catalyst, spec.facet, size, p.fmax, p.max_steps) \
        + sum(mu[s] for s, _ in ADSORBATES[spec.adsorbate])
    max_f = max(float(np.abs(f).max()) for _, _, f in frames)
    keep = sorted(set(range(0, len(frames), p.s2ef_frame_stride)) | {len(frames) - 1})
    # Relabel the kept frames at their stored (float32) positions; frame 0 is already rounded.
    labelled = {k: (frames[k][0], frames[k][1], frames[k][2]) if k == 0 else
                (_round32(frames[k][0]), *_emt_single_point(atoms, _round32(frames[k][0]))) for k in keep}
    e_ads = labelled[keep[-1]][1] - e_ref  # the rounded relaxed structure's energy: = the last S2EF frame's
    drop = None
    if not (math.isfinite(e_ads) and abs(e_ads) <= MAX_ABS_E_ADS):
        drop = "energy_out_of_range"
    elif not max_f <= MAX_ABS_FORCE:
        drop = "force_out_of_range"
    else:
        drop = _anomaly(atoms, n_slab)
    meta = {**asdict(spec), "site": site, "converged": converged, "steps": steps, "n_frames": len(frames),
            "n_atoms": len(atoms), "e_ads": e_ads, "e_ref": e_ref, "max_force": max_f, "drop": drop}
    if drop is not None:
        meta["seconds"] = time.perf_counter() - t0
        return {"meta": meta, "is2re": None, "s2ef": []}
    is2re = _record(frames[0][0], z, tags, fixed, cell, e_ads, p, spec.index)
    s2ef = [_record(labelled[k][0], z, tags, fixed, cell, labelled[k][1] - e_ref, p, spec.index,
                    force=labelled[k][2], fid=k) for k in keep]
    for rec in (is2re, *s2ef):
        validate_record(rec, f"system {spec.index}")
    meta["seconds"] = time.perf_counter() - t0
    meta["n_s2ef"] = len(s2ef)
    return {"meta": meta, "is2re": is2re, "s2ef": s2ef}


# ----------------------------------------------------------------------------------------------------------
# Planning, caching, parallel execution
# ----------------------------------------------------------------------------------------------------------

def split_counts(n_systems: int, *, val_id_fraction: float = 0.15, test_fraction: float = 0.1,
                 has_ood_catalysts: bool = True, has_ood_adsorbates: bool = True) -> dict[str, int]:
    """Systems per split from a total: each OOD split is as large as ``val_id`` (OC20's four val splits are
    equal), ``val_id`` and ``test`` are fractions of the in-distribution systems, the rest is ``train``.

    With ``n_id`` in-distribution systems and ``k`` OOD splits, ``v = round(f_val n / (1 + k f_val))``.
    """
    if n_systems < 1:
        raise ValueError(f"n_systems must be >= 1, got {n_systems}")
    if not 0 < val_id_fraction < 1 or not 0 <= test_fraction < 1 or val_id_fraction + test_fraction >= 1:
        raise ValueError(f"val_id_fraction {val_id_fraction} and test_fraction {test_fraction} must be in "
                         "(0, 1) and [0, 1) with a sum below 1")
    ood = [s for s, on in (("val_ood_ads", has_ood_adsorbates), ("val_ood_cat", has_ood_catalysts),
                           ("val_ood_both", has_ood_catalysts and has_ood_adsorbates)) if on]
    v = max(1, round(val_id_fraction * n_systems / (1 + len(ood) * val_id_fraction)))
    n_id = n_systems - len(ood) * v
    n_test = max(1, round(test_fraction * n_id)) if test_fraction > 0 else 0
    counts = {"train": n_id - v - n_test, "val_id": v, "test": n_test, **{s: v for s in ood}}
    if counts["train"] < 1:
        raise ValueError(f"n_systems = {n_systems} is too small for these splits {counts}: use at least "
                         f"{n_systems + 1 - counts['train']}")
    return {s: counts.get(s, 0) for s in SPLITS}


def plan_systems(counts: dict[str, int], catalysts: list[str], facets: list[str], adsorbates: list[str],
                 ood_catalysts: list[str], ood_adsorbates: list[str], seed: int) -> list[SystemSpec]:
    """Compositions of every system, split by split (:data:`SPLITS` order), drawn from ``(seed, index)``.

    In-distribution splits draw from ``catalysts`` x (``adsorbates`` minus ``ood_adsorbates``); OOD-cat from
    ``ood_catalysts``, OOD-ads from ``ood_adsorbates``, OOD-both from both."""
    id_c = [c for c in catalysts if c not in ood_catalysts]
    id_a = [a for a in adsorbates if a not in ood_adsorbates]
    pools = {"train": (id_c, id_a), "val_id": (id_c, id_a), "test": (id_c, id_a),
             "val_ood_ads": (id_c, list(ood_adsorbates)), "val_ood_cat": (list(ood_catalysts), id_a),
             "val_ood_both": (list(ood_catalysts), list(ood_adsorbates))}
    specs, index = [], 0
    for split in SPLITS:
        cs, ads = pools[split]
        if counts.get(split, 0) and (not cs or not ads):
            raise ValueError(f"split {split} asks for {counts[split]} systems but has no catalysts ({cs}) or "
                             f"no adsorbates ({ads}) to draw from; set ood_alloys/ood_adsorbates or count 0")
        for k in range(counts.get(split, 0)):
            rng = np.random.default_rng([seed, index, 7])  # composition stream, separate from geometry
            c, f, a = int(rng.integers(len(cs))), int(rng.integers(len(facets))), int(rng.integers(len(ads)))
            if split == "train" and k < max(len(cs), len(ads)):
                c, a = k % len(cs), k % len(ads)  # training sees every catalyst and adsorbate, whatever the draw
            specs.append(SystemSpec(index, split, cs[c], facets[f], ads[a]))
            index += 1
    return specs


def _cache_path(work_dir: Path, spec: SystemSpec, p: PhysicsParams) -> Path:
    key = json.dumps({"v": CACHE_VERSION, "spec": asdict(spec), "p": asdict(p)}, sort_keys=True)
    return work_dir / f"sys{spec.index:06d}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pkl"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _run_and_cache(spec: SystemSpec, p: PhysicsParams, path: str) -> dict[str, Any]:
    result = build_system(spec, p)
    _atomic_write(Path(path), dumps(result))
    return result["meta"]


def _load_cached(path: Path) -> dict[str, Any] | None:
    try:
        return loads(path.read_bytes(), str(path))
    except Exception:  # a torn or foreign cache file is recomputed, never trusted
        return None


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def _check_choice(name: str, values: list[str], allowed: tuple[str, ...] | list[str]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name} {bad} not supported; allowed: {list(allowed)}")


def generate_catalysis(
    out_dir: str | os.PathLike, *,
    n_systems: int | dict[str, int] = 200,
    metals: list[str] = EMT_METALS,
    alloys: list[str] = ("Cu3Au", "CuPd", "Ni3Al", "PtNi"),
    ood_alloys: list[str] = ("Cu3Pd", "AuCu"),
    facets: list[str] = FACETS,
    adsorbates: list[str] = ("H", "O", "N", "C", "OH", "CO", "NO", "CH", "NH", "CH2"),
    ood_adsorbates: list[str] = ("NO",),
    val_id_fraction: float = 0.15,
    test_fraction: float = 0.1,
    slab_size: tuple[int, int, int] = (2, 2, 3),
    seed: int = 0,
    workers: int = 2,
    cutoff: float = 6.0,
    max_num_neighbors: int = 50,
    s2ef_frame_stride: int = 2,
    fmax: float = 0.05,
    max_steps: int = 200,
    work_dir: str | os.PathLike | None = None,
    progress: bool = True,
    summary_path: str | os.PathLike | None = "summary.json",
) -> dict[str, Any]:
    """Generate the embedded set: ``out_dir/is2re/<split>.lmdb``, ``out_dir/s2ef/<split>.lmdb``,
    ``out_dir/summary.json``; returns the summary.

    ``n_systems``: a total (split with :func:`split_counts`) or ``{split: count}``. Per-system results
    are cached in ``work_dir`` (default ``out_dir/.work``) and reused, so an interrupted run resumes; the
    LMDBs are byte-identical whatever the interruptions and the number of ``workers``. ``summary_path`` is
    relative to ``out_dir``; None writes no summary file.
    """
    t0 = time.perf_counter()
    metals, facets, adsorbates = list(metals), [str(f) for f in facets], list(adsorbates)
    alloys, ood_alloys, ood_adsorbates = list(alloys), list(ood_alloys), list(ood_adsorbates)
    _check_choice("metals", metals, EMT_METALS)
    _check_choice("facets", facets, FACETS)
    _check_choice("adsorbates", adsorbates, tuple(ADSORBATES))
    _check_choice("ood_adsorbates", ood_adsorbates, adsorbates)
    for name in (*alloys, *ood_alloys):
        if parse_catalyst(name)[1] is None:
            raise ValueError(f"alloy {name!r} is a pure metal: list pure metals under metals (all in training)")
    overlap = sorted(set(alloys) & set(ood_alloys))
    if overlap:
        raise ValueError(f"alloys {overlap} are listed both in alloys (training) and ood_alloys: pick one")
    catalysts = [*metals, *alloys, *ood_alloys]
    check_element_coverage(catalysts, ood_alloys, adsorbates, ood_adsorbates)
    if len(slab_size) != 3 or min(slab_size[:2]) < 1 or slab_size[2] < 3:
        raise ValueError(f"slab_size {slab_size} must be (nx >= 1, ny >= 1, layers >= 3)")
    if (alloys or ood_alloys) and (slab_size[0] % 2 or slab_size[1] % 2):
        raise ValueError(f"slab_size {slab_size}: the A3B / AB orderings repeat every 2 cells; use even nx, ny")
    for name, v in (("workers", workers), ("s2ef_frame_stride", s2ef_frame_stride), ("max_steps", max_steps),
                    ("max_num_neighbors", max_num_neighbors)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if isinstance(n_systems, dict):
        _check_choice("n_systems splits", list(n_systems), SPLITS)
        counts = {s: int(n_systems.get(s, 0)) for s in SPLITS}
    else:
        counts = split_counts(int(n_systems), val_id_fraction=val_id_fraction, test_fraction=test_fraction,
                              has_ood_catalysts=bool(ood_alloys), has_ood_adsorbates=bool(ood_adsorbates))
    p = PhysicsParams(int(seed), tuple(int(s) for s in slab_size), float(fmax), int(max_steps), float(cutoff),
                      int(max_num_neighbors), int(s2ef_frame_stride))
    specs = plan_systems(counts, catalysts, facets, adsorbates, ood_alloys, ood_adsorbates, p.seed)
    out = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    paths = [_cache_path(work, s, p) for s in specs]
    results: dict[int, dict[str, Any]] = {}
    for s, path in zip(specs, paths, strict=True):
        if path.exists() and (r := _load_cached(path)) is not None:
            results[s.index] = r
    todo = [(s, path) for s, path in zip(specs, paths, strict=True) if s.index not in results]
    n_cached = len(results)
    t_compute = time.perf_counter()
    gas_references()  # computed once here; forked workers inherit these caches
    for c in catalysts:
        catalyst_lattice_constant(c)
    if todo:
        # One process per core (EMT and the small graphs gain nothing from threads); forked: the workers
        # inherit the caches computed above.
        for _ in run_pool(starred(_run_and_cache), [(s, p, str(path)) for s, path in todo], int(workers), threads=1,
                          start_method="fork", ordered=False, inline=False,
                          desc="EMT relaxations" if progress else None, unit="system"):
            pass
        for s, path in todo:
            r = _load_cached(path)
            if r is None:
                raise RuntimeError(f"worker result for system {s.index} is missing or unreadable at {path}")
            results[s.index] = r
    compute_seconds = time.perf_counter() - t_compute
    summary = _write_outputs(out, specs, results, counts, p)
    train_el = set(summary["elements_per_split"].get("train", []))
    absent = {sp: sorted(set(els) - train_el) for sp, els in summary["elements_per_split"].items()
              if set(els) - train_el}
    if absent:  # dropped training systems took an element with them; the per-system cache keeps the work
        raise ValueError(f"elements {absent} occur in evaluation splits but in no kept training system: raise "
                         "n_systems (or the train share), or use adsorbates that EMT does not dissociate")
    summary["config"] = {"n_systems": n_systems, "metals": metals, "alloys": alloys, "ood_alloys": ood_alloys,
                         "facets": facets, "adsorbates": adsorbates, "ood_adsorbates": ood_adsorbates,
                         "val_id_fraction": val_id_fraction, "test_fraction": test_fraction, **asdict(p)}
    # summary.json holds only what the data determine (same inputs -> same bytes); timings are returned.
    if summary_path is not None:
        (out / summary_path).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    seconds = [results[s.index]["meta"]["seconds"] for s, _ in todo]
    summary.update(
        generation_seconds=round(time.perf_counter() - t0, 3), compute_seconds=round(compute_seconds, 3),
        systems_computed=len(todo), systems_from_cache=n_cached, workers=int(workers),
        seconds_per_system=_stats(seconds))
    return summary


def _write_outputs(out: Path, specs: list[SystemSpec], results: dict[int, dict[str, Any]],
                   counts: dict[str, int], p: PhysicsParams) -> dict[str, Any]:
    from faenet.data.dataset import content_hash

    metas = [results[s.index]["meta"] for s in specs]
    per_split: dict[str, dict[str, list]] = {s: {"is2re": [], "s2ef": []} for s in SPLITS}
    for s in specs:
        r = results[s.index]
        if r["is2re"] is not None:
            per_split[s.split]["is2re"].append(r["is2re"])
            per_split[s.split]["s2ef"].extend(r["s2ef"])
    n_records: dict[str, dict[str, int]] = {"is2re": {}, "s2ef": {}}
    for task in CATALYSIS:
        for split in SPLITS:
            if counts.get(split, 0) == 0:
                continue
            n_records[task][split] = write_lmdb(out / task / f"{split}.lmdb", per_split[split][task])
        for stale in (out / task).glob("*.lmdb"):  # splits of an earlier configuration must not linger
            if stale.stem not in n_records[task]:
                stale.unlink()
    kept = [m for m in metas if m["drop"] is None]
    elements: Counter[str] = Counter()
    from ase.data import chemical_symbols

    for split in SPLITS:
        for rec in per_split[split]["is2re"]:
            elements.update(chemical_symbols[int(z)] for z in rec.atomic_numbers)
    s2ef_all = [r for split in SPLITS for r in per_split[split]["s2ef"]]
    free_f = torch.cat([r.force[r.fixed == 0].reshape(-1) for r in s2ef_all]) if s2ef_all else torch.zeros(0)
    all_f = torch.cat([r.force.reshape(-1) for r in s2ef_all]) if s2ef_all else torch.zeros(0)
    steps = [m["steps"] for m in metas]
    return {
        "source": "emt",
        "counts": n_records,
        "systems_planned": {s: counts.get(s, 0) for s in SPLITS},
        "dropped": dict(sorted(Counter(m["drop"] for m in metas if m["drop"] is not None).items())),
        "n_dropped": len(metas) - len(kept),
        "element_histogram": dict(sorted(elements.items())),
        "adsorbate_histogram": dict(sorted(Counter(m["adsorbate"] for m in kept).items())),
        "drop_rate_by_adsorbate": {
            a: round(sum(m["drop"] is not None for m in metas if m["adsorbate"] == a) / n, 4)
            for a, n in sorted(Counter(m["adsorbate"] for m in metas).items())},
        "catalyst_histogram": dict(sorted(Counter(m["catalyst"] for m in kept).items())),
        "elements_per_split": _elements_per_split(per_split),
        "site_histogram": dict(sorted(Counter(m["site"] for m in kept).items())),
        "is2re_energy_eV": {split: _stats([float(r.y) for r in per_split[split]["is2re"]])
                            for split in SPLITS if counts.get(split, 0)},
        "s2ef_energy_eV": _stats([float(r.y) for r in s2ef_all]),
        "s2ef_force_eV_per_A": {"std_all": float(all_f.std()) if all_f.numel() > 1 else 0.0,
                                "std_free": float(free_f.std()) if free_f.numel() > 1 else 0.0,
                                "mean_abs_free": float(free_f.abs().mean()) if free_f.numel() else 0.0,
                                "max_abs": float(all_f.abs().max()) if all_f.numel() else 0.0},
        "frames_per_system": _stats([float(m["n_s2ef"]) for m in kept]),
        "convergence": {"converged_fraction": sum(m["converged"] for m in metas) / max(1, len(metas)),
                        "steps": _stats([float(x) for x in steps])},
        "references_eV": {"gas": gas_references(), "lattice_constants_A": {
            c: catalyst_lattice_constant(c) for c in sorted({s.catalyst for s in specs})}},
        "content_hashes": {task: content_hash(out / task) for task in CATALYSIS},
        "degenerate_frames": _degenerate_frames(per_split),
    }


def _elements_per_split(per_split: dict[str, dict[str, list]]) -> dict[str, list[str]]:
    """Chemical symbols present in each split's IS2RE records (the data card lists them; a test checks that
    every one of an evaluation split occurs in train)."""
    from ase.data import chemical_symbols

    return {split: sorted({chemical_symbols[int(z)] for r in d["is2re"] for z in r.atomic_numbers.tolist()})
            for split, d in per_split.items() if d["is2re"]}


def _degenerate_frames(per_split: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Near-degenerate 2D (xy) PCA frames per task and split, on full graphs and after tag-0 removal (the
    atoms FAENet's frames see under ``remove-tag-0``)."""
    from faenet.data.dataset import remove_tag0
    from faenet.frames import DEFAULT_DEGENERACY_TOL, count_degenerate

    out: dict[str, Any] = {"tol": DEFAULT_DEGENERACY_TOL, "dim": 2,
                           "measure": "relative PCA eigengap in the xy plane (faenet.frames.eigengap) below tol"}
    for task in CATALYSIS:
        recs = [r for split in SPLITS for r in per_split[split][task]]
        out[task] = {"full": count_degenerate(recs, dim=2)[0],
                     "remove_tag0": count_degenerate((remove_tag0(r) for r in recs), dim=2)[0],
                     "n": len(recs)}
    return out


def data_card_markdown(summary: dict[str, Any]) -> str:
    """The data card (markdown) of a :func:`generate_catalysis` summary."""
    cfg = summary.get("config", {})
    lines = [
        "# Data card: embedded OC20-like catalysis set (ASE EMT)", "",
        "Adsorbates on fcc metal slabs, relaxed with BFGS under ASE's EMT potential (not DFT: energies are "
        "EMT energies, comparable within this set only). Adsorption energies are referenced as OC20's: "
        "E(slab+ads) - E(clean slab) - sum of gas references (H2, H2O, N2, CO).", "",
        f"- Catalysts: pure metals {cfg.get('metals')} and alloys {cfg.get('alloys')} in training; held out "
        f"(OOD-cat) {cfg.get('ood_alloys')}; facets {cfg.get('facets')}; adsorbates {cfg.get('adsorbates')}, held "
        f"out (OOD-ads) {cfg.get('ood_adsorbates')}",
        "- How the splits map to OC20's (Chanussot et al. 2021): OC20's OOD-cat holds bulk catalyst compositions "
        "absent from training and OOD-ads adsorbates absent from it, both made of elements training has; here "
        "OOD-cat is ordered binary alloys (A3B: one B per 2x2 cell of each layer; AB: a per-layer checkerboard) "
        "whose composition no training slab has, and OOD-ads adsorbates of seen elements. Where it cannot follow "
        "OC20: 7 EMT metals instead of 55 elements, 2x2 cells (so only these two orderings), no unary/ternary "
        "split by bulk, and the OOD-cat alloys share metals (and often the pair) with training alloys.",
        f"- Slab size {cfg.get('slab_size')}, BFGS fmax {cfg.get('fmax')} eV/Å, at most "
        f"{cfg.get('max_steps')} steps; graph cutoff {cfg.get('cutoff')} Å, "
        f"<= {cfg.get('max_num_neighbors')} neighbours; "
        f"S2EF frame stride {cfg.get('s2ef_frame_stride')}; seed {cfg.get('seed')}",
        f"- Generation time {summary.get('generation_seconds', float('nan')):.1f} s with "
        f"{summary.get('workers')} workers ({summary.get('systems_computed')} systems computed, "
        f"{summary.get('systems_from_cache')} from cache)",
        f"- Converged relaxations {100 * summary['convergence']['converged_fraction']:.1f} %, "
        f"steps mean {summary['convergence']['steps'].get('mean', float('nan')):.1f}; dropped "
        f"{summary['n_dropped']} systems {summary['dropped']}; drop rate by adsorbate "
        f"{summary['drop_rate_by_adsorbate']} (EMT is crude for X-H bonds: H-rich adsorbates dissociate)",
        "",
        "## Counts per split", "", "| split | systems planned | IS2RE records | S2EF frames |",
        "|---|---|---|---|",
    ]
    for split, n in summary["systems_planned"].items():
        if n:
            lines.append(f"| {split} | {n} | {summary['counts']['is2re'].get(split, 0)} | "
                         f"{summary['counts']['s2ef'].get(split, 0)} |")
    lines += ["", "## IS2RE adsorption energy (eV)", "", "| split | n | mean | std | min | max |",
              "|---|---|---|---|---|---|"]
    for split, st in summary["is2re_energy_eV"].items():
        if st.get("n"):
            lines.append(f"| {split} | {st['n']} | {st['mean']:.3f} | {st['std']:.3f} | {st['min']:.3f} | "
                         f"{st['max']:.3f} |")
    se, sf = summary["s2ef_energy_eV"], summary["s2ef_force_eV_per_A"]
    if se.get("n"):
        lines += ["", "## S2EF", "",
                  f"- Referenced energy (eV): mean {se['mean']:.3f}, std {se['std']:.3f}, "
                  f"range [{se['min']:.3f}, {se['max']:.3f}] over {se['n']} frames",
                  f"- Forces (eV/Å): component std {sf['std_all']:.3f} (free atoms {sf['std_free']:.3f}), "
                  f"mean |F| free {sf['mean_abs_free']:.3f}, max |F| {sf['max_abs']:.3f}",
                  f"- Frames per system: mean {summary['frames_per_system'].get('mean', 0):.1f}"]
    lines += ["", "## Elements (atoms over IS2RE records)", "", "| element | atoms |", "|---|---|"]
    lines += [f"| {el} | {n} |" for el, n in summary["element_histogram"].items()]
    per_split = summary.get("elements_per_split", {})
    if per_split:
        train = set(per_split.get("train", []))
        lines += ["", "## Elements per split (every one must occur in train)", "",
                  "| split | elements | absent from train |", "|---|---|---|"]
        lines += [f"| {sp} | {', '.join(els)} | {', '.join(sorted(set(els) - train)) or 'none'} |"
                  for sp, els in per_split.items()]
    cats = summary.get("catalyst_histogram", {})
    if cats:
        lines += ["", "## Catalysts (kept systems)", "", "| catalyst | systems |", "|---|---|"]
        lines += [f"| {c} | {n} |" for c, n in cats.items()]
    deg = summary.get("degenerate_frames")
    if deg:
        lines += ["", "## Near-degenerate frames", "",
                  f"Graphs whose {deg['measure']} < {deg['tol']:g}: frame averaging is not exactly invariant "
                  "on them (the symmetry stage reports them separately).", "",
                  "| task | graphs | degenerate (all atoms) | degenerate (tag-0 removed) |", "|---|---|---|---|"]
        lines += [f"| {t} | {deg[t]['n']} | {deg[t]['full']} | {deg[t]['remove_tag0']} |" for t in CATALYSIS]
    lines += ["", "## Content hashes (sha256 over record values)", "", "| data | hash |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in summary["content_hashes"].items()]
    return "\n".join(lines) + "\n"
