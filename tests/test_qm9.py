"""Real QM9 loader on a fixture in the real raw formats (gdb9.sdf, gdb9.sdf.csv, uncharacterized.txt, zip)."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from faenet.data import qm9
from faenet.data.records import validate_record
from faenet.data.store import LmdbReader
from faenet.graph import radius_graph

SMILES = ["C", "N", "O", "C#C", "CCO"]  # molecule 2 (1-based) is listed as uncharacterized below
# CSV columns after mol_id: A, B, C, mu, alpha, homo, lumo, gap, r2, zpve, u0, u298, h298, g298, cv,
# u0_atom, u298_atom, h298_atom, g298_atom (GHz, D, a0^3, Ha x3, a0^2, Ha x5, cal/mol/K, kcal/mol x4)


def _csv_row(k: int) -> list[float]:
    return [157.7 + k, 157.7 - k, 157.6, 0.1 * k, 13.2 + k, -0.3877 - 0.01 * k, 0.1171 + 0.01 * k, 0.5048,
            35.36 + k, 0.044749, -40.47893 - k, -40.476062, -40.475117, -40.498597, 6.469 + k,
            -395.999595 - k, -398.64329, -401.014647, -372.471772]


def _write_raw(raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    w = Chem.SDWriter(str(raw / "gdb9.sdf"))
    for k, smi in enumerate(SMILES):
        m = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(m, randomSeed=k + 1)
        m.SetProp("_Name", f"gdb_{k + 1}")
        w.write(m)
    w.close()
    lines = [",".join(("mol_id",) + qm9.CSV_HEADER[1:])]
    lines += [",".join([f"gdb_{k + 1}"] + [repr(x) for x in _csv_row(k)]) for k in range(len(SMILES))]
    (raw / "gdb9.sdf.csv").write_text("\n".join(lines) + "\n")
    header = [f"header line {i}" for i in range(9)]
    body = ["    2  gdb_2  some comment", "footer"]
    (raw / "uncharacterized.txt").write_text("\n".join(header + body) + "\n")


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw files fetched through download_qm9 from file:// URLs (a zip as published + the skip list)."""
    src = tmp_path_factory.mktemp("src")
    _write_raw(src)
    with zipfile.ZipFile(src / "qm9.zip", "w") as zf:
        zf.write(src / "gdb9.sdf", "gdb9.sdf")
        zf.write(src / "gdb9.sdf.csv", "gdb9.sdf.csv")
    files = {n: qm9.QM9File(n, (src / n).as_uri()) for n in ("qm9.zip", "uncharacterized.txt")}
    raw = tmp_path_factory.mktemp("raw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no checksum published: download warns "unverified"
        assert qm9.download_qm9(raw, files=files, progress=False) == raw
    return raw


def test_targets_table_matches_pyg() -> None:
    from torch_geometric.datasets.qm9 import conversion

    assert [t.index for t in qm9.TARGETS] == list(range(19))
    assert torch.allclose(torch.tensor([t.conversion for t in qm9.TARGETS]), conversion)
    assert qm9.resolve_target("U0").index == 7 and qm9.resolve_target("gap").index == 4
    assert qm9.resolve_target(18).name == "C"
    with pytest.raises(ValueError, match="unknown QM9 target"):
        qm9.resolve_target("enthalpy")
    with pytest.raises(ValueError, match="unknown QM9 target"):
        qm9.resolve_target(19)


def test_units_and_skip(raw_dir: Path) -> None:
    recs = qm9.load_qm9(raw_dir, target="homo")
    assert [int(r.sid) for r in recs] == [0, 2, 3, 4]  # molecule 2 (index 1) is uncharacterized
    for r in recs:
        validate_record(r)
        k = int(r.sid)
        row = _csv_row(k)
        t = r.targets[0]
        assert r.y == pytest.approx(row[5] * 27.211386246, rel=1e-6)  # homo Ha -> eV
        assert t[0] == pytest.approx(row[3], rel=1e-6)                  # mu, D
        assert t[7] == pytest.approx(row[10] * 27.211386246, rel=1e-6)  # U0 Ha -> eV
        assert t[11] == pytest.approx(row[14], rel=1e-6)                # cv unchanged
        assert t[12] == pytest.approx(row[15] * 0.04336414, rel=1e-6)   # U0_ATOM kcal/mol -> eV
        assert torch.allclose(t[16:], torch.tensor(row[:3]))            # A, B, C moved to the end (GHz)
        assert torch.equal(r.tags, torch.full((int(r.natoms),), -1)) and not r.pbc.any()
        assert torch.equal(r.cell, torch.zeros(1, 3, 3))
        ei, off = radius_graph(r.pos, 6.0, 30)
        assert torch.equal(r.edge_index, ei) and torch.equal(r.cell_offsets, off)
    assert [int(n) for n in recs[3].atomic_numbers].count(6) == 2  # ethanol


def test_matches_pyg_processing(raw_dir: Path, tmp_path: Path) -> None:
    """PyG's own QM9.process on the same raw files gives the same molecules, positions and targets."""
    from torch_geometric.datasets import QM9

    root = tmp_path / "pyg"
    (root / "raw").mkdir(parents=True)
    for n in qm9.RAW_FILES:
        (root / "raw" / n).write_bytes((raw_dir / n).read_bytes())
    ds = QM9(str(root), force_reload=True)
    ours = list(qm9.iter_qm9(raw_dir))
    assert len(ds) == len(ours) == 4
    for d, (i, z, pos, y) in zip(ds, ours, strict=True):
        assert int(d.idx) == i
        assert torch.equal(d.z, torch.as_tensor(z))
        assert torch.equal(d.pos, torch.as_tensor(pos))
        assert torch.equal(d.y[0], y)


def test_split_as_fork_and_lmdbs(raw_dir: Path, tmp_path: Path) -> None:
    parts = qm9.split_indices(10, seed=123, n_train=6, n_val=2)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(123))
    assert torch.equal(torch.cat([parts["train"], parts["val"], parts["test"]]), perm)
    with pytest.raises(ValueError, match="cannot split"):
        qm9.split_indices(10, n_train=9, n_val=2)
    sizes = qm9.write_qm9_lmdbs(raw_dir, tmp_path, target=7, seed=123, n_train=2, n_val=1)
    assert sizes == {"train": 2, "val": 1, "test": 1}
    sids = {n: {int(r.sid) for r in LmdbReader(tmp_path / f"{n}.lmdb")} for n in sizes}
    assert set().union(*sids.values()) == {0, 2, 3, 4}
    assert sum(len(s) for s in sids.values()) == 4  # disjoint
    r = LmdbReader(tmp_path / "train.lmdb")[0]
    assert r.y == pytest.approx(float(r.targets[0, 7]))


def test_missing_raw_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download_qm9"):
        list(qm9.iter_qm9(tmp_path))
