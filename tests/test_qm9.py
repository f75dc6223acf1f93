"""Real QM9 loader on a fixture in the real raw formats (gdb9.sdf, gdb9.sdf.csv, uncharacterized.txt, zip)."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from real_format_fixtures import qm9_csv_row, write_qm9_raw

from faenet.data import qm9
from faenet.data.records import validate_record
from faenet.data.store import LmdbReader
from faenet.graph import radius_graph


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw files fetched through download_qm9 from file:// URLs (a zip as published + the skip list)."""
    src = tmp_path_factory.mktemp("src")
    write_qm9_raw(src)
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
        row = qm9_csv_row(k)
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


def test_record_transform_picks_one_property_and_pickles(tmp_path: Path) -> None:
    # Runs are sent to worker processes: the transform must pickle by reference from its library module.
    import json
    import pickle

    from torch_geometric.data import Data

    from faenet.data.transforms import RecordTransform, dataset_targets

    (tmp_path / "summary.json").write_text(json.dumps({"target_names": ["mu", "alpha", "gap"]}))
    names = dataset_targets(tmp_path)
    t = pickle.loads(pickle.dumps(RecordTransform(False, names.index("gap"), "gap")))
    rec = Data(targets=torch.tensor([[1.0, float("nan"), 3.0]]), y=0.0, sid=7)
    assert t(rec).y == 3.0 and rec.y == 0.0  # a copy: the stored record is not changed
    with pytest.raises(ValueError, match="'alpha' is nan"):
        RecordTransform(False, names.index("alpha"), "alpha")(rec)
    assert RecordTransform()(rec) is rec
    with pytest.raises(FileNotFoundError):
        dataset_targets(tmp_path / "missing")
