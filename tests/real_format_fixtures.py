"""Fixture writers in the real datasets' formats, shared by the loader tests (test_oc20, test_qm7x, test_qm9) and
the real-format end-to-end run (test_real_format_e2e): OC20 IS2RE LMDBs of pickled PyG ``Data`` as OCP writes
them, S2EF extxyz/txt shards, a QM7-X HDF5 file with the published keys, QM9's raw files."""

from __future__ import annotations

import copyreg
import hashlib
import io
import lzma
import pickle
from pathlib import Path

import h5py
import lmdb
import numpy as np
import torch
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from rdkit import Chem
from rdkit.Chem import AllChem
from torch_geometric.data import Data

from faenet.data import qm9
from faenet.graph import radius_graph

# ---- OC20 -------------------------------------------------------------------------------------------------

def oc20_atoms(seed=0):
    slab = fcc111("Cu", (2, 2, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.rattle(0.05, seed=seed)
    tags = np.array([0] * 8 + [1] * 4 + [2])  # OC20 tags
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    slab.pbc = True
    slab.info.pop("adsorbate_info", None)
    return slab


def oc20_is2re_data(seed: int) -> Data:
    """An IS2RE record as OC20's AtomsToGraphs + preprocess_relaxed produce it (PyG 2 layout)."""
    a = oc20_atoms(seed)
    pos = torch.tensor(a.positions, dtype=torch.float32)
    cell = torch.tensor(a.cell.array, dtype=torch.float32).reshape(1, 3, 3)
    ei, off = radius_graph(pos.double(), 6.0, 50, cell[0].double(), (True, True, True))
    return Data(pos=pos, cell=cell, atomic_numbers=torch.tensor(a.numbers, dtype=torch.float32),
                natoms=len(a), tags=torch.tensor(a.get_tags()), fixed=torch.tensor((a.get_tags() == 0) * 1.0),
                edge_index=ei, cell_offsets=off, distances=torch.ones(ei.shape[1]), sid=1000 + seed,
                y_init=np.float64(1.5 + seed), y_relaxed=np.float64(-0.75 - seed),
                pos_relaxed=pos + 0.01)


def old_layout_bytes(data: Data) -> bytes:
    """A PyG-1.x ``Data`` pickle, as in the released LMDBs: NEWOBJ(Data) + BUILD(plain attribute dict)."""
    attrs = {"x": None, "edge_attr": None, "y": None, "normal": None, "face": None, "__num_nodes__": None,
             **data.to_dict()}
    old = Data.__new__(Data)
    old.__dict__.update(attrs)  # attributes straight in __dict__, no _store

    class OldLayoutPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if obj is old:
                return (copyreg.__newobj__, (Data,), attrs)
            return NotImplemented

    buf = io.BytesIO()
    OldLayoutPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(old)
    return buf.getvalue()


def write_like_oc20(path, values: list[bytes], length_key: bool):
    env = lmdb.open(str(path), map_size=1099511627776 * 2, subdir=False, meminit=False, map_async=True)
    for i, v in enumerate(values):
        txn = env.begin(write=True)
        txn.put(f"{i}".encode("ascii"), v)
        txn.commit()
    if length_key:
        txn = env.begin(write=True)
        txn.put(b"length", pickle.dumps(len(values), protocol=-1))
        txn.commit()
    env.sync()
    env.close()


def write_s2ef_pair(folder, k: int, n_frames: int = 3, compress: bool = True):
    import ase.io

    frames, lines = [], []
    for f in range(n_frames):
        a = oc20_atoms(seed=10 * k + f)
        calc = EMT()
        a.calc = calc
        e, forces = a.get_potential_energy(), a.get_forces(apply_constraint=False)
        a.calc = SinglePointCalculator(a, energy=e, free_energy=e, forces=forces)
        frames.append(a)
        lines.append(f"random{500 + k},frame{f},{-1.5 * k}\n")
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    if compress:
        (folder / f"{k}.extxyz.xz").write_bytes(lzma.compress(buf.getvalue().encode()))
        (folder / f"{k}.txt.xz").write_bytes(lzma.compress("".join(lines).encode()))
    else:
        (folder / f"{k}.extxyz").write_text(buf.getvalue())
        (folder / f"{k}.txt").write_text("".join(lines))
    return frames


# ---- QM7-X ------------------------------------------------------------------------------------------------

# idmol -> number of atoms; conformer families c1 (and c2 for molecule 2, listed in DupMols.dat)
MOLECULES = {"1": 3, "2": 4, "10": 5, "11": 3}
N_DISPLACED = 11  # d1..d11: exercises h5py's bytewise order (d1, d10, d11, d2, ...)


def qm7x_value(idmol: str, idconf: str, what: str) -> float:
    """Deterministic distinct numbers per structure and key."""
    h = hashlib.sha256(f"{idmol}/{idconf}/{what}".encode()).digest()
    return int.from_bytes(h[:4], "little") / 2**32


def write_qm7x_hdf5(path: Path, molecules: dict[str, int] | None = None, n_displaced: int = N_DISPLACED,
                    duplicated: tuple[str, ...] = ("2",)) -> dict[str, dict]:
    """QM7-X HDF5 with the published keys: ``molecules`` idmol -> atoms, conformer family c1 (and c2 for the
    ``duplicated`` ones), ``opt`` + ``n_displaced`` displaced structures each; returns the written values."""
    molecules = MOLECULES if molecules is None else molecules
    truth = {}
    with h5py.File(path, "w") as f:
        for idmol, n in molecules.items():
            fams = ["c1", "c2"] if idmol in duplicated else ["c1"]
            for fam in fams:
                for suffix in ["opt"] + [f"d{k}" for k in range(1, n_displaced + 1)]:
                    idconf = f"Geom-m{idmol}-i1-{fam}-{suffix}"
                    g = f.create_group(f"{idmol}/{idconf}")
                    z = np.array([6, 1, 8, 16, 17][:n], dtype=np.int32)  # file dtype, not int64
                    pos = np.arange(3 * n, dtype=np.float64).reshape(n, 3) * 0.7 + qm7x_value(idmol, idconf, "x")
                    e = -1000.0 * n - qm7x_value(idmol, idconf, "e")
                    force = np.full((n, 3), qm7x_value(idmol, idconf, "f")) * np.arange(1, n + 1)[:, None]
                    g["atNUM"], g["atXYZ"], g["ePBE0+MBD"], g["totFOR"] = z, pos, np.array([e]), force
                    g["eAT"] = np.array([75.0])            # decoys: other energies and forces
                    g["ePBE0"] = np.array([e + 1.0])
                    g["pbe0FOR"] = force + 1.0
                    truth[f"{idmol}/{idconf}"] = {"z": z, "pos": pos, "e": e, "f": force}
    return truth


# ---- QM9 --------------------------------------------------------------------------------------------------

SMILES = ["C", "N", "O", "C#C", "CCO"]  # molecule 2 (1-based) is listed as uncharacterized below
# CSV columns after mol_id: A, B, C, mu, alpha, homo, lumo, gap, r2, zpve, u0, u298, h298, g298, cv,
# u0_atom, u298_atom, h298_atom, g298_atom (GHz, D, a0^3, Ha x3, a0^2, Ha x5, cal/mol/K, kcal/mol x4)


def qm9_csv_row(k: int) -> list[float]:
    return [157.7 + k, 157.7 - k, 157.6, 0.1 * k, 13.2 + k, -0.3877 - 0.01 * k, 0.1171 + 0.01 * k, 0.5048,
            35.36 + k, 0.044749, -40.47893 - k, -40.476062, -40.475117, -40.498597, 6.469 + k,
            -395.999595 - k, -398.64329, -401.014647, -372.471772]


def write_qm9_raw(raw: Path, smiles: list[str] | None = None) -> None:
    """gdb9.sdf (RDKit-embedded ``smiles``), gdb9.sdf.csv and uncharacterized.txt (skips gdb_2) in ``raw``."""
    smiles = SMILES if smiles is None else smiles
    raw.mkdir(parents=True, exist_ok=True)
    w = Chem.SDWriter(str(raw / "gdb9.sdf"))
    for k, smi in enumerate(smiles):
        m = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(m, randomSeed=k + 1)
        m.SetProp("_Name", f"gdb_{k + 1}")
        w.write(m)
    w.close()
    lines = [",".join(("mol_id",) + qm9.CSV_HEADER[1:])]
    lines += [",".join([f"gdb_{k + 1}"] + [repr(x) for x in qm9_csv_row(k)]) for k in range(len(smiles))]
    (raw / "gdb9.sdf.csv").write_text("\n".join(lines) + "\n")
    header = [f"header line {i}" for i in range(9)]
    body = ["    2  gdb_2  some comment", "footer"]
    (raw / "uncharacterized.txt").write_text("\n".join(header + body) + "\n")
