"""The real QM9 (paper Sec. 5, Table 8): download, parsing exactly as PyG's ``QM9.process``, records, split.

Sources (PyG ``torch_geometric/datasets/qm9.py``; the authors' fork ``RolnickLab/ocp``,
``ocpmodels/datasets/qm9.py``): PyG's raw files -- ``qm9.zip`` (``gdb9.sdf``, ``gdb9.sdf.csv``) from the
MoleculeNet bucket and figshare file 3195404 saved as ``uncharacterized.txt``. No checksum of either file is
published (PyG and the authors' fork check none), so :data:`QM9_FILES` has ``sha256 = md5 = None`` and
:func:`download_qm9` warns that the files are unverified; pass ``sha256=...`` once you have pinned them.

Parsing (PyG 2.2.0 / 2.8.1): CSV rows -> 19 floats (columns 1..19), A, B, C moved to the end, multiplied by
the ``conversion`` column of :data:`TARGETS` in float32 (as PyG); molecule ``i`` of ``gdb9.sdf`` (RDKit
``SDMolSupplier(removeHs=False, sanitize=False)``) pairs with CSV row ``i`` and is dropped if listed in
``uncharacterized.txt`` (``[int(line.split()[0]) - 1 for line in lines[9:-2]]``) -> 130,831 molecules.
One deliberate difference: PyG drops the last CSV row when the file lacks a final newline; here it is kept.

Records (``faenet.data.records``): ``y`` = the chosen target (eV, D, a0^3, ... as :data:`TARGETS`),
``targets`` (1, 19) float32 every target, ``sid`` = PyG's ``idx`` (0-based SDF index), zero cell, no pbc,
tags -1; the graph is a radius graph (the paper's QM9: cutoff 6 Å, 30 neighbours; the bond graph is ignored,
as FAENet does). Split (the authors' fork): ``torch.randperm(n, generator=manual_seed(123))``; 110,000
train, 10,000 val, the rest (10,831) test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from faenet.data.download import download, safe_extract
from faenet.data.molecules import molecule_record
from faenet.data.store import write_lmdb

HAR2EV = 27.211386246  # PyG's constants
KCALMOL2EV = 0.04336414
RAW_FILES = ("gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt")
PAPER_SPLIT = {"seed": 123, "n_train": 110_000, "n_val": 10_000}
PAPER_GRAPH = {"cutoff": 6.0, "max_neighbors": 30}
N_MOLECULES = 130_831  # after dropping the 3,054 uncharacterized of 133,885


@dataclass(frozen=True)
class QM9File:
    """One raw QM9 download."""

    name: str
    url: str
    sha256: str | None = None
    md5: str | None = None
    note: str = "no checksum published (PyG and the authors' fork verify none)"


QM9_FILES = {
    "qm9.zip": QM9File("qm9.zip", "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/molnet_publish/qm9.zip"),
    "uncharacterized.txt": QM9File("uncharacterized.txt", "https://ndownloader.figshare.com/files/3195404"),
}


@dataclass(frozen=True)
class Qm9Target:
    """A QM9 regression target in PyG's order."""

    index: int
    name: str
    csv_column: str
    unit: str        # after conversion
    raw_unit: str    # in gdb9.sdf.csv
    conversion: float


TARGETS: tuple[Qm9Target, ...] = (
    Qm9Target(0, "mu", "mu", "D", "D", 1.0),
    Qm9Target(1, "alpha", "alpha", "a0^3", "a0^3", 1.0),
    Qm9Target(2, "homo", "homo", "eV", "Ha", HAR2EV),
    Qm9Target(3, "lumo", "lumo", "eV", "Ha", HAR2EV),
    Qm9Target(4, "gap", "gap", "eV", "Ha", HAR2EV),
    Qm9Target(5, "r2", "r2", "a0^2", "a0^2", 1.0),
    Qm9Target(6, "zpve", "zpve", "eV", "Ha", HAR2EV),
    Qm9Target(7, "U0", "u0", "eV", "Ha", HAR2EV),
    Qm9Target(8, "U", "u298", "eV", "Ha", HAR2EV),
    Qm9Target(9, "H", "h298", "eV", "Ha", HAR2EV),
    Qm9Target(10, "G", "g298", "eV", "Ha", HAR2EV),
    Qm9Target(11, "cv", "cv", "cal/(mol K)", "cal/(mol K)", 1.0),
    Qm9Target(12, "U0_ATOM", "u0_atom", "eV", "kcal/mol", KCALMOL2EV),
    Qm9Target(13, "U_ATOM", "u298_atom", "eV", "kcal/mol", KCALMOL2EV),
    Qm9Target(14, "H_ATOM", "h298_atom", "eV", "kcal/mol", KCALMOL2EV),
    Qm9Target(15, "G_ATOM", "g298_atom", "eV", "kcal/mol", KCALMOL2EV),
    Qm9Target(16, "A", "A", "GHz", "GHz", 1.0),
    Qm9Target(17, "B", "B", "GHz", "GHz", 1.0),
    Qm9Target(18, "C", "C", "GHz", "GHz", 1.0),
)
CSV_HEADER = ("mol_id", "A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "u0", "u298",
              "h298", "g298", "cv", "u0_atom", "u298_atom", "h298_atom", "g298_atom")


def resolve_target(target: int | str) -> Qm9Target:
    """A :data:`TARGETS` entry by index (0-18) or name (``"U0"``, ``"gap"``, ...; case-insensitive)."""
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if 0 <= int(target) < len(TARGETS):
            return TARGETS[int(target)]
    elif isinstance(target, str):
        for t in TARGETS:
            if target.lower() in (t.name.lower(), t.csv_column.lower()):
                return t
    names = [t.name for t in TARGETS]
    raise ValueError(f"unknown QM9 target {target!r}; use an index 0-18 or one of {names}")


def download_qm9(raw_dir: str | os.PathLike, *, progress: bool = True, keep_archive: bool = False,
                 files: dict[str, QM9File] | None = None) -> Path:
    """Fetch the raw files into ``raw_dir`` (skipped when all of :data:`RAW_FILES` exist), returned.

    ``files`` overrides :data:`QM9_FILES` (e.g. a mirror, or pinned checksums). The zip is removed after
    extraction (as PyG does) unless ``keep_archive``.
    """
    files = QM9_FILES if files is None else files
    raw = Path(raw_dir)
    if all((raw / n).is_file() for n in RAW_FILES):
        return raw
    z = files["qm9.zip"]
    archive = download(z.url, raw / z.name, sha256=z.sha256, md5=z.md5, progress=progress)
    safe_extract(archive, raw)
    if not keep_archive:
        archive.unlink()
    u = files["uncharacterized.txt"]
    download(u.url, raw / "uncharacterized.txt", sha256=u.sha256, md5=u.md5, progress=progress)
    missing = [n for n in RAW_FILES if not (raw / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{raw}: {missing} missing after download; {archive} should hold gdb9.sdf "
                                "and gdb9.sdf.csv")
    return raw


def read_targets(csv_path: str | os.PathLike) -> Tensor:
    """(M, 19) float32 targets in :data:`TARGETS` order and units, from ``gdb9.sdf.csv`` (as PyG)."""
    lines = Path(csv_path).read_text().split("\n")[1:]
    if lines and lines[-1] == "":
        lines = lines[:-1]
    rows = []
    for k, line in enumerate(lines):
        cols = line.split(",")
        if len(cols) < 20:
            raise ValueError(f"{csv_path}: line {k + 2} has {len(cols)} columns, expected 20 ({CSV_HEADER})")
        try:
            rows.append([float(x) for x in cols[1:20]])
        except ValueError as err:
            raise ValueError(f"{csv_path}: line {k + 2}: {err}") from None
    y = torch.tensor(rows, dtype=torch.float32).reshape(-1, 19)
    y = torch.cat([y[:, 3:], y[:, :3]], dim=-1)
    return y * torch.tensor([t.conversion for t in TARGETS], dtype=torch.float32)


def read_skip(path: str | os.PathLike) -> list[int]:
    """0-based indices of the uncharacterized molecules (PyG: lines 9..-2, first token, minus 1)."""
    out = []
    for k, line in enumerate(Path(path).read_text().split("\n")[9:-2]):
        try:
            out.append(int(line.split()[0]) - 1)
        except (IndexError, ValueError):
            raise ValueError(f"{path}: line {k + 10} ({line!r}) does not start with a molecule index; "
                             "expected 9 header lines, one index per line, one footer line") from None
    return out


def iter_qm9(raw_dir: str | os.PathLike) -> Iterator[tuple[int, np.ndarray, np.ndarray, Tensor]]:
    """Yield ``(idx, atomic_numbers (N,), positions (N, 3) float32 Å, targets (19,))`` per kept molecule."""
    from rdkit import Chem, RDLogger

    raw = Path(raw_dir)
    missing = [n for n in RAW_FILES if not (raw / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{raw}: raw QM9 files {missing} missing; run faenet.data.qm9.download_qm9")
    RDLogger.DisableLog("rdApp.*")
    y = read_targets(raw / "gdb9.sdf.csv")
    skip = set(read_skip(raw / "uncharacterized.txt"))
    suppl = Chem.SDMolSupplier(str(raw / "gdb9.sdf"), removeHs=False, sanitize=False)
    for i, mol in enumerate(suppl):
        if i in skip:
            continue
        if mol is None:
            raise ValueError(f"{raw / 'gdb9.sdf'}: molecule {i} cannot be read by RDKit")
        if i >= len(y):
            raise ValueError(f"{raw / 'gdb9.sdf'} has more molecules than gdb9.sdf.csv has rows ({len(y)})")
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        pos = mol.GetConformer().GetPositions().astype(np.float32)
        yield i, z, pos, y[i]


def qm9_record(idx: int, z: np.ndarray, pos: np.ndarray, targets: Tensor, target: int | str = 7,
               cutoff: float = PAPER_GRAPH["cutoff"], max_neighbors: int = PAPER_GRAPH["max_neighbors"]
               ) -> Data:
    """Project record of one QM9 molecule: ``y`` = ``targets[target]``, ``targets`` (1, 19), ``sid`` = idx."""
    t = resolve_target(target)
    return molecule_record(z, pos, float(targets[t.index]), cutoff=cutoff, max_neighbors=max_neighbors,
                           sid=int(idx), targets=targets.reshape(1, -1).to(torch.float32))


def load_qm9(raw_dir: str | os.PathLike, target: int | str = 7, cutoff: float = PAPER_GRAPH["cutoff"],
             max_neighbors: int = PAPER_GRAPH["max_neighbors"], limit: int | None = None) -> list[Data]:
    """All (or the first ``limit``) kept molecules as records, in SDF order."""
    out = []
    for i, z, pos, y in iter_qm9(raw_dir):
        if limit is not None and len(out) >= limit:
            break
        out.append(qm9_record(i, z, pos, y, target, cutoff, max_neighbors))
    return out


def split_indices(n: int, seed: int = PAPER_SPLIT["seed"], n_train: int = PAPER_SPLIT["n_train"],
                  n_val: int = PAPER_SPLIT["n_val"]) -> dict[str, Tensor]:
    """The fork's split: ``perm = torch.randperm(n, generator=Generator().manual_seed(seed))``;
    ``train = perm[:n_train]``, ``val = perm[n_train:n_train + n_val]``, ``test`` = the rest."""
    if n < 1 or n_train < 0 or n_val < 0 or n_train + n_val > n:
        raise ValueError(f"cannot split {n} molecules into {n_train} train + {n_val} val (+ the rest as "
                         "test); need n_train + n_val <= n")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}


def write_qm9_lmdbs(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, *, target: int | str = 7,
                    seed: int = PAPER_SPLIT["seed"], n_train: int = PAPER_SPLIT["n_train"],
                    n_val: int = PAPER_SPLIT["n_val"], cutoff: float = PAPER_GRAPH["cutoff"],
                    max_neighbors: int = PAPER_GRAPH["max_neighbors"]) -> dict[str, int]:
    """``out_dir/{train,val,test}.lmdb`` with the paper's split; returns the sizes."""
    records = load_qm9(raw_dir, target, cutoff, max_neighbors)
    parts = split_indices(len(records), seed, n_train, n_val)
    out = Path(out_dir)
    return {name: write_lmdb(out / f"{name}.lmdb", (records[int(i)] for i in idx))
            for name, idx in parts.items()}
