"""faenet.data.oc20: OC20-format fixture LMDBs (written the way OC20's writers do: plain pickle of PyG Data,
float atomic numbers, y_relaxed, no length key for IS2RE, an old PyG-1.x layout record) read back and
converted; the S2EF extxyz path; the download registry; fetch + extraction from a local archive."""

import hashlib
import pickle
import tarfile

import numpy as np
import pytest
import torch
from real_format_fixtures import oc20_is2re_data, old_layout_bytes, write_like_oc20, write_s2ef_pair
from torch_geometric.data import Data

from faenet.data import oc20
from faenet.data.dataset import GraphDataset
from faenet.data.oc20 import OC20_FILES, convert_oc20_record, fetch_oc20, prepare_oc20, read_s2ef_frames
from faenet.data.records import validate_record
from faenet.data.store import LmdbReader


@pytest.fixture
def is2re_fixture(tmp_path):
    recs = [oc20_is2re_data(s) for s in range(3)]
    values = [pickle.dumps(recs[0], protocol=-1), old_layout_bytes(recs[1]),
              pickle.dumps(recs[2], protocol=-1)]
    path = tmp_path / "is2re" / "all" / "val_id" / "data.lmdb"
    path.parent.mkdir(parents=True)
    write_like_oc20(path, values, length_key=False)
    return path, recs


def test_old_layout_fixture_is_really_old_layout(is2re_fixture):
    path, _ = is2re_fixture
    raw = pickle.loads(LmdbReader(path).raw(1))  # plain pickle: no conversion
    assert "_store" not in raw.__dict__ and "y_relaxed" in raw.__dict__


def test_is2re_fixture_read_and_converted(is2re_fixture):
    path, recs = is2re_fixture
    reader = LmdbReader(path)
    assert len(reader) == 3  # no length key: the entry count
    for i, want in enumerate(recs):
        got = convert_oc20_record(reader[i], "is2re")
        validate_record(got, f"record {i}")
        assert got.atomic_numbers.dtype == torch.long
        assert got.atomic_numbers.tolist() == want.atomic_numbers.long().tolist()
        assert got.y == pytest.approx(float(want.y_relaxed)) and isinstance(got.y, float)
        assert got.fixed.dtype == torch.long and got.fixed.tolist() == want.fixed.long().tolist()
        assert got.tags.dtype == torch.long and tuple(got.cell.shape) == (1, 3, 3)
        assert got.pbc.tolist() == [[True, True, True]] and isinstance(got.natoms, int)
        assert got.sid == 1000 + i
        assert torch.equal(got.edge_index, want.edge_index) and got.cell_offsets.dtype == torch.long
        assert torch.equal(got.pos, want.pos)
    ds = GraphDataset(path, task="is2re")
    assert [round(float(d.y), 4) for d in ds] == [-0.75, -1.75, -2.75]


def test_s2ef_lmdb_record_and_test_split_without_labels():
    base = oc20_is2re_data(0)
    n = int(base.natoms)
    # No edges: they are built with the OC20 radius graph (6 Å, 50 neighbours, pbc on in x, y, z).
    rec = Data(pos=base.pos, cell=base.cell, atomic_numbers=base.atomic_numbers, natoms=n, tags=base.tags,
               fixed=base.fixed.int(), y=np.float64(-3.25), force=torch.randn(n, 3),
               sid=torch.LongTensor([77]), fid=torch.LongTensor([4]))
    got = convert_oc20_record(pickle.loads(pickle.dumps(rec)), "s2ef")
    validate_record(got)
    assert got.y == -3.25 and got.sid == 77 and got.fid == 4 and torch.equal(got.force, rec.force)
    assert torch.equal(got.edge_index, base.edge_index) and torch.equal(got.cell_offsets, base.cell_offsets)
    fairchem = Data(**{k: v for k, v in rec.to_dict().items() if k not in ("y", "force")}, energy=-1.0,
                    forces=torch.zeros(n, 3))
    assert convert_oc20_record(fairchem, "s2ef").y == -1.0
    with pytest.raises(ValueError, match="hide their labels"):
        convert_oc20_record(Data(**{k: v for k, v in rec.to_dict().items() if k != "y"}), "s2ef")
    with pytest.raises(ValueError, match="no y_relaxed"):
        convert_oc20_record(Data(**{k: v for k, v in base.to_dict().items() if k != "y_relaxed"}), "is2re")
    with pytest.raises(ValueError, match="task 'qm9'"):
        convert_oc20_record(base, "qm9")


def test_s2ef_extxyz_frames_are_referenced_and_unconstrained(tmp_path):
    frames = write_s2ef_pair(tmp_path, 1, compress=False)
    recs = list(read_s2ef_frames(tmp_path / "1.extxyz", tmp_path / "1.txt"))
    assert len(recs) == 3
    for f, (a, rec) in enumerate(zip(frames, recs, strict=True)):
        validate_record(rec)
        assert rec.y == pytest.approx(a.get_potential_energy() + 1.5, abs=1e-6)  # minus reference -1.5
        want = torch.tensor(a.get_forces(apply_constraint=False), dtype=torch.float32)
        assert torch.allclose(rec.force, want, atol=1e-6)
        assert bool((rec.force[rec.fixed == 1] != 0).any())  # fixed atoms keep their forces
        assert rec.fixed.tolist() == [1] * 8 + [0] * 5 and rec.tags.tolist() == [0] * 8 + [1] * 4 + [2]
        assert (rec.sid, rec.fid) == (501, f)


def test_registry_is_md5_only_with_reasons():
    assert len(OC20_FILES) == 10
    for f in OC20_FILES.values():
        assert f.url.startswith("https://dl.fbaipublicfiles.com/opencatalystproject/data/")
        assert len(f.md5) == 32 and int(f.md5, 16) >= 0
        assert f.sha256 is None and "md5 only" in f.sha256_note
    assert OC20_FILES["s2ef_train_200K"].md5 == "f8d0909c2623a393148435dede7d3a46"
    assert OC20_FILES["is2res_train_val_test_lmdbs"].md5 == "cfc04dd2f87b4102ab2f607240d25fb1"
    with pytest.raises(ValueError, match="unknown OC20 archive"):
        fetch_oc20("s2ef_train_1B", "/tmp/none")


def test_fetch_and_prepare_from_local_archives(tmp_path, is2re_fixture, monkeypatch):
    # A small tarball laid out like the real S2EF val archive, served from a file:// URL.
    src = tmp_path / "build" / "s2ef_val_id" / "s2ef_val_id"
    src.mkdir(parents=True)
    for k in (0, 1):
        write_s2ef_pair(src, k, n_frames=2)
    arc = tmp_path / "serve" / "s2ef_val_id.tar"
    arc.parent.mkdir()
    with tarfile.open(arc, "w") as tf:
        tf.add(tmp_path / "build" / "s2ef_val_id", arcname="s2ef_val_id")
    md5 = hashlib.md5(arc.read_bytes()).hexdigest()
    monkeypatch.setattr(oc20, "BASE_URL", (tmp_path / "serve").as_uri() + "/")
    monkeypatch.setitem(OC20_FILES, "s2ef_val_id", oc20.OC20File("s2ef_val_id.tar", "s2ef", md5, "tiny"))
    root = tmp_path / "oc20"
    fetch_oc20("s2ef_val_id", root, progress=False)
    names = sorted(p.name for p in (root / "s2ef_val_id" / "s2ef_val_id").iterdir())
    assert names[:2] == ["0.extxyz.xz", "0.txt.xz"]
    # Conversion of a whole tree: IS2RE val_id from the fixture (train reuses it), S2EF val_id from the tar.
    is2re_path, _ = is2re_fixture
    (root / "is2re" / "all" / "val_id").mkdir(parents=True)
    (root / "is2re" / "all" / "val_id" / "data.lmdb").write_bytes(is2re_path.read_bytes())
    (root / "is2re" / "10k" / "train").mkdir(parents=True)
    (root / "is2re" / "10k" / "train" / "data.lmdb").write_bytes(is2re_path.read_bytes())
    with pytest.raises(FileNotFoundError, match="val_ood_ads"):
        prepare_oc20(root, tmp_path / "out", is2re_size="10k", tasks=("is2re",), download_missing=False)
    for split in ("val_ood_ads", "val_ood_cat", "val_ood_both"):
        (root / "is2re" / "all" / split).mkdir(parents=True)
        (root / "is2re" / "all" / split / "data.lmdb").write_bytes(is2re_path.read_bytes())
    summary = prepare_oc20(root, tmp_path / "out", is2re_size="10k", tasks=("is2re",), download_missing=False)
    assert summary["counts"]["is2re"] == {s: 3 for s in ("train", "val_id", "val_ood_ads", "val_ood_cat",
                                                          "val_ood_both")}
    assert len(GraphDataset(tmp_path / "out" / "is2re" / "val_id.lmdb", task="is2re")) == 3
    recs = list(oc20.s2ef_folder_records(root / "s2ef_val_id"))
    assert [(r.sid, r.fid) for r in recs] == [(500, 0), (500, 1), (501, 0), (501, 1)]
    assert "| is2re | train | 3 |" in oc20.data_card_markdown(summary)
