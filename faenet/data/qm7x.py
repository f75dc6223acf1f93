"""The real QM7-X (paper Sec. 5, Table 2): download, xz decompression, HDF5 reading, records, splits.

Sources: Hoja et al., Sci. Data 8, 2021; Zenodo record 4288677 (README, ``createDB.py``). Each ``<N>000.xz``
is one xz stream of one HDF5 file; md5s are published (:data:`QM7X_FILES`), no sha256. HDF5 layout:
``f[idmol][idconf][key]`` with ``idconf = Geom-m<idmol>-i<s>-c<t>-{opt | d1..d100}``; this loader reads
``atNUM`` (N), ``atXYZ`` (N, 3) Å, ``ePBE0+MBD`` (1) eV (total energy, the authors' target) and ``totFOR``
(N, 3) eV/Å (total PBE0+MBD forces).

Structures are enumerated as the fork does: files in ``1000..8000`` order, molecules and conformers in h5py's
iteration order; ``k`` = index of the conformer in its molecule's list. ``DupMols.dat`` (optional, as
schnetpack): each listed ``...-opt`` id minus ``-opt`` names a duplicated conformer family whose
equilibrium and 100 displaced structures are all dropped (``k`` keeps counting the full list, so keys are
stable). The fork keeps duplicates.

Splits (:func:`split_qm7x`, the fork's ``samples.json`` procedure): ``test`` = every structure of the 25
SpookyNet molecules; ``val_ood`` = every structure of 25 molecules drawn with ``np.random.seed(123)``,
``np.random.choice(non-test ids, 25, replace=False)`` (ids sorted: what ``list(set)`` gives for these small
ints); every other structure goes to ``train`` if ``np.random.rand() < 0.975``, else ``val_id``. The paper's
"known molecules" column ~ ``val_id`` and "unknown molecules" ~ ``test`` (an inference from the fork's
configs). Records: ``y`` = total energy eV, ``force`` (N, 3) eV/Å, ``sid`` = idmol, ``fid`` = k; graph:
radius 5 Å, 40 neighbours (the fork's QM7-X setting).
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch_geometric.data import Data

from faenet.data.download import download, verify_checksum
from faenet.data.molecules import molecule_record
from faenet.data.store import write_lmdb

BASE_URL = "https://zenodo.org/record/4288677/files/"
SET_IDS = ("1000", "2000", "3000", "4000", "5000", "6000", "7000", "8000")
ENERGY_KEY, FORCE_KEY = "ePBE0+MBD", "totFOR"
SPOOKYNET_TEST_MOLECULES = frozenset({1771, 1805, 1824, 2020, 2085, 2117, 3019, 3108, 3190, 3217, 3257, 3329,
                                      3531, 4010, 4181, 4319, 4713, 5174, 5370, 5580, 5891, 6315, 6583, 6809,
                                      7020})
PAPER_SPLIT = {"seed": 123, "n_val_ood": 25, "train_prob": 0.975}
PAPER_GRAPH = {"cutoff": 5.0, "max_neighbors": 40}
SPLITS = ("train", "val_id", "val_ood", "test")


@dataclass(frozen=True)
class QM7XFile:
    """One published QM7-X file (md5 as on Zenodo; no sha256 is published)."""

    name: str
    md5: str
    size_bytes: int | None = None
    base_url: str = BASE_URL  # a mirror (or file:// folder URI ending in "/")

    @property
    def url(self) -> str:
        return self.base_url + self.name


QM7X_FILES: dict[str, QM7XFile] = {f.name: f for f in (
    QM7XFile("1000.xz", "b50c6a5d0a4493c274368cf22285503e", 715_361_604),
    QM7XFile("2000.xz", "4418a813daf5e0d44aa5a26544249ee6", 1_043_743_376),
    QM7XFile("3000.xz", "f7b5aac39a745f11436047c12d1eb24e", 2_052_043_036),
    QM7XFile("4000.xz", "26819601705ef8c14080fa7fc69decd4", 1_461_283_500),
    QM7XFile("5000.xz", "85ac444596b87812aaa9e48d203d0b70", 1_135_294_700),
    QM7XFile("6000.xz", "787fc4a9036af0e67c034a30ad854c07", 2_016_065_508),
    QM7XFile("7000.xz", "5ecce00a188410d06b747cb683d8d347", 1_104_141_872),
    QM7XFile("8000.xz", "c893ae88b8f5c32541c3f024fc1daa45", 89_426_884),
    QM7XFile("DupMols.dat", "5d886ccac38877c8cb26c07704dd1034"),
)}


@dataclass(frozen=True)
class Qm7xStructure:
    """One QM7-X structure: ``energy`` eV, ``force`` (N, 3) eV/Å, ``pos`` (N, 3) Å."""

    idmol: int
    k: int
    idconf: str
    numbers: np.ndarray
    pos: np.ndarray
    energy: float
    force: np.ndarray


def decompress_xz(src: str | os.PathLike, dest: str | os.PathLike | None = None,
                  md5: str | None = None) -> Path:
    """Stream-decompress ``src`` (one xz stream) to ``dest`` (default: ``src`` with ``.hdf5``), returned.

    ``md5`` is checked on ``src`` first. Atomic (temporary file + rename); an existing ``dest`` is kept.
    """
    src = Path(src)
    dest = src.with_suffix(".hdf5") if dest is None else Path(dest)
    if dest.is_file():
        return dest
    if md5 is not None:
        verify_checksum(src, md5=md5)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    try:
        with lzma.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 22)
    except lzma.LZMAError as err:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{src} is not a valid xz file ({err}); delete it and download it again") from None
    os.replace(tmp, dest)
    return dest


def download_qm7x(raw_dir: str | os.PathLike, set_ids: Sequence[str] = SET_IDS, *, dupmols: bool = True,
                  keep_xz: bool = False, progress: bool = True,
                  files: dict[str, QM7XFile] | None = None) -> list[Path]:
    """Download (md5-checked) and decompress ``<id>.xz`` for ``set_ids``; returns the HDF5 paths.

    ``DupMols.dat`` is fetched too when ``dupmols``. ``files`` overrides :data:`QM7X_FILES` (mirrors, tests).
    """
    files = QM7X_FILES if files is None else files
    raw = Path(raw_dir)
    bad = [s for s in set_ids if f"{s}.xz" not in files]
    if bad:
        allowed = [n[:-3] for n in files if n.endswith(".xz")]
        raise ValueError(f"unknown QM7-X set ids {bad}; allowed: {allowed}")
    out = []
    for s in set_ids:
        f = files[f"{s}.xz"]
        h5 = raw / f"{s}.hdf5"
        if not h5.is_file():
            xz = download(f.url, raw / f.name, md5=f.md5, progress=progress)
            decompress_xz(xz, h5)
            if not keep_xz:
                xz.unlink()
        out.append(h5)
    # Like the HDF5 files above, a DupMols.dat already in raw_dir is used as it is (a local copy, a mirror's):
    # re-checking it against the published md5 would set a user's own list aside and need the network.
    if dupmols and not (raw / "DupMols.dat").is_file():
        d = files["DupMols.dat"]
        download(d.url, raw / d.name, md5=d.md5, progress=progress)
    return out


def read_dupmols(path: str | os.PathLike) -> frozenset[str]:
    """Conformer-family ids of ``DupMols.dat`` (``Geom-m1-i1-c2-opt`` -> ``Geom-m1-i1-c2``)."""
    out = set()
    for line in Path(path).read_text().splitlines():
        s = line.strip()
        if s:
            out.add(s[: -len("-opt")] if s.endswith("-opt") else s)
    return frozenset(out)


def _family(idconf: str) -> str:
    """``Geom-m1-i1-c1-d17`` -> ``Geom-m1-i1-c1``."""
    return idconf.rsplit("-", 1)[0]


class StructureKey(NamedTuple):
    """Where one structure lives: ``f[group]`` of HDF5 file ``path`` (``group = "<idmol>/<idconf>"``)."""

    idmol: int
    k: int
    idconf: str
    path: str
    group: str


def list_structures(hdf5_paths: Iterable[str | os.PathLike], duplicates: frozenset[str] = frozenset()
                    ) -> list[StructureKey]:
    """Every kept structure, in the fork's order (reads no arrays)."""
    import h5py

    out = []
    for p in hdf5_paths:
        with h5py.File(p, "r") as f:
            for idmol in f:
                for k, idconf in enumerate(f[idmol]):
                    if _family(idconf) not in duplicates:
                        out.append(StructureKey(int(idmol), k, idconf, str(p), f"{idmol}/{idconf}"))
    return out


def iter_qm7x(hdf5_paths: Iterable[str | os.PathLike], duplicates: frozenset[str] = frozenset(),
              energy_key: str = ENERGY_KEY, force_key: str = FORCE_KEY) -> Iterator[Qm7xStructure]:
    """Every kept structure of the files, in :func:`list_structures` order."""
    import h5py

    for p in hdf5_paths:
        with h5py.File(p, "r") as f:
            for idmol in f:
                for k, idconf in enumerate(f[idmol]):
                    if _family(idconf) not in duplicates:
                        yield _read(f[idmol][idconf], int(idmol), k, idconf, energy_key, force_key, p)


def _read(g: object, idmol: int, k: int, idconf: str, energy_key: str, force_key: str,
          path: str | os.PathLike) -> Qm7xStructure:
    missing = [key for key in ("atNUM", "atXYZ", energy_key, force_key) if key not in g]
    if missing:
        raise ValueError(f"{path}: {idmol}/{idconf} lacks {missing}; a QM7-X structure has atNUM, atXYZ, "
                         f"{ENERGY_KEY}, {FORCE_KEY}, ...")
    z = np.asarray(g["atNUM"][()], dtype=np.int64).reshape(-1)
    pos = np.asarray(g["atXYZ"][()], dtype=np.float64).reshape(-1, 3)
    force = np.asarray(g[force_key][()], dtype=np.float64).reshape(-1, 3)
    if len(pos) != len(z) or len(force) != len(z):
        raise ValueError(f"{path}: {idmol}/{idconf} has {len(z)} atoms but atXYZ {pos.shape}, {force_key} "
                         f"{force.shape}")
    return Qm7xStructure(idmol, k, idconf, z, pos, float(np.asarray(g[energy_key][()]).reshape(-1)[0]), force)


def qm7x_record(s: Qm7xStructure, cutoff: float = PAPER_GRAPH["cutoff"],
                max_neighbors: int = PAPER_GRAPH["max_neighbors"]) -> Data:
    """Project record: ``y`` energy eV, ``force`` eV/Å, ``sid`` = idmol, ``fid`` = k."""
    return molecule_record(s.numbers, s.pos, s.energy, force=s.force, cutoff=cutoff,
                           max_neighbors=max_neighbors, sid=s.idmol, fid=s.k)


def split_qm7x(structures: Sequence[tuple[int, int]], seed: int = PAPER_SPLIT["seed"],
               test_molecules: Iterable[int] = SPOOKYNET_TEST_MOLECULES,
               n_val_ood: int = PAPER_SPLIT["n_val_ood"], train_prob: float = PAPER_SPLIT["train_prob"]
               ) -> dict[str, list[int]]:
    """Indices into ``structures`` (``(idmol, k)`` in order) per split; see the module docstring.

    ``test`` and ``val_ood`` are disjoint by molecule from each other and from ``train``/``val_id``.
    """
    if not 0.0 < train_prob <= 1.0:
        raise ValueError(f"train_prob must be in (0, 1], got {train_prob}")
    test_set = {int(m) for m in test_molecules}
    non_test = sorted({int(m) for m, _ in structures} - test_set)
    if n_val_ood < 0 or n_val_ood > len(non_test):
        raise ValueError(f"n_val_ood must be in [0, {len(non_test)}] (non-test molecules), got {n_val_ood}")
    rs = np.random.RandomState(seed)  # the legacy global stream of np.random.seed(seed)
    ood = {int(m) for m in rs.choice(non_test, n_val_ood, replace=False)} if n_val_ood else set()
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for i, (m, _) in enumerate(structures):
        m = int(m)
        if m in test_set:
            out["test"].append(i)
        elif m in ood:
            out["val_ood"].append(i)
        else:
            out["train" if rs.rand() < train_prob else "val_id"].append(i)
    return out


def write_qm7x_lmdbs(hdf5_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                     dupmols: str | os.PathLike | None = None, seed: int = PAPER_SPLIT["seed"],
                     test_molecules: Iterable[int] = SPOOKYNET_TEST_MOLECULES,
                     n_val_ood: int = PAPER_SPLIT["n_val_ood"], train_prob: float = PAPER_SPLIT["train_prob"],
                     cutoff: float = PAPER_GRAPH["cutoff"], max_neighbors: int = PAPER_GRAPH["max_neighbors"]
                     ) -> dict[str, int]:
    """``out_dir/{train,val_id,val_ood,test}.lmdb`` + ``samples.json`` (the fork's format); returns sizes.

    One pass to list structures (no arrays), then each split streams only its own structures.
    """
    import h5py

    dups = read_dupmols(dupmols) if dupmols is not None else frozenset()
    structs = list_structures(hdf5_paths, dups)
    parts = split_qm7x([(s.idmol, s.k) for s in structs], seed, test_molecules, n_val_ood, train_prob)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.json").write_text(json.dumps(
        {"structures": [[s.idmol, s.k] for s in structs], "splits": parts}) + "\n")

    def records(idx: list[int]) -> Iterator[Data]:
        files: dict[str, h5py.File] = {}
        try:
            for i in idx:
                s = structs[i]
                if s.path not in files:
                    files[s.path] = h5py.File(s.path, "r")
                g = files[s.path][s.group]
                yield qm7x_record(_read(g, s.idmol, s.k, s.idconf, ENERGY_KEY, FORCE_KEY, s.path), cutoff,
                                  max_neighbors)
        finally:
            for f in files.values():
                f.close()

    return {name: write_lmdb(out / f"{name}.lmdb", records(parts[name])) for name in SPLITS}
