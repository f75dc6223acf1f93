"""Real QM7-X loader on a tiny HDF5 fixture with the published key layout, xz-compressed as on Zenodo."""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch
from real_format_fixtures import N_DISPLACED, write_qm7x_hdf5

from faenet.data import qm7x
from faenet.data.download import ChecksumError
from faenet.data.records import validate_record
from faenet.data.store import LmdbReader


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, qm7x.QM7XFile]]:
    src = tmp_path_factory.mktemp("zenodo")
    truth = write_qm7x_hdf5(src / "1000.hdf5")
    with open(src / "1000.hdf5", "rb") as fin, lzma.open(src / "1000.xz", "wb") as fout:
        fout.write(fin.read())
    (src / "DupMols.dat").write_text("Geom-m2-i1-c2-opt\n")

    def md5(p: Path) -> str:
        return hashlib.md5(p.read_bytes()).hexdigest()

    base = src.as_uri() + "/"
    files = {n: qm7x.QM7XFile(n, md5(src / n), base_url=base) for n in ("1000.xz", "DupMols.dat")}
    raw = tmp_path_factory.mktemp("raw")
    paths = qm7x.download_qm7x(raw, ["1000"], files=files, progress=False)
    assert paths == [raw / "1000.hdf5"] and not (raw / "1000.xz").exists()
    return raw, truth, files


def test_reads_published_keys_in_fork_order(fetched: tuple) -> None:
    raw, truth, _ = fetched
    structs = list(qm7x.iter_qm7x([raw / "1000.hdf5"]))
    assert len(structs) == len(truth)
    # h5py's bytewise name order: molecules 1, 10, 11, 2; conformers opt last after d1, d10, d11, d2, ...
    assert [s.idmol for s in structs][:: N_DISPLACED + 1] == [1, 10, 11, 2, 2]
    first = [s.idconf for s in structs[: N_DISPLACED + 1]]
    assert first[:4] == ["Geom-m1-i1-c1-d1", "Geom-m1-i1-c1-d10", "Geom-m1-i1-c1-d11", "Geom-m1-i1-c1-d2"]
    assert first[-1] == "Geom-m1-i1-c1-opt"
    for s in structs:
        t = truth[f"{s.idmol}/{s.idconf}"]
        assert s.energy == t["e"]  # ePBE0+MBD, eV (not eAT / ePBE0)
        assert np.array_equal(s.force, t["f"]) and np.array_equal(s.pos, t["pos"])
        rec = qm7x.qm7x_record(s)
        validate_record(rec)
        assert rec.y == t["e"] and rec.atomic_numbers.dtype == torch.long
        assert torch.allclose(rec.force, torch.as_tensor(t["f"], dtype=torch.float32))  # eV/Å unchanged
        assert int(rec.sid) == s.idmol and int(rec.fid) == s.k
        assert torch.equal(rec.tags, torch.full((len(t["z"]),), -1))


def test_dupmols_drop_whole_family(fetched: tuple) -> None:
    raw, truth, _ = fetched
    dups = qm7x.read_dupmols(raw / "DupMols.dat")
    assert dups == {"Geom-m2-i1-c2"}
    kept = qm7x.list_structures([raw / "1000.hdf5"], dups)
    assert len(kept) == len(truth) - (N_DISPLACED + 1)
    assert not any("-c2-" in s.idconf for s in kept)
    ks = [s.k for s in kept if s.idmol == 2]
    assert ks == list(range(N_DISPLACED + 1))  # c1 comes first in molecule 2: its k are unchanged


def test_split_follows_fork_procedure() -> None:
    structs = [(m, k) for m in (1, 2, 3, 4, 5, 6) for k in range(20)]
    parts = qm7x.split_qm7x(structs, seed=123, test_molecules={4}, n_val_ood=2, train_prob=0.7)
    # Re-derivation with the fork's literal calls on numpy's global stream.
    np.random.seed(123)
    ood = set(np.random.choice([1, 2, 3, 5, 6], 2, replace=False).tolist())
    expect: dict[str, list[int]] = {"train": [], "val_id": [], "val_ood": [], "test": []}
    for i, (m, _) in enumerate(structs):
        if m == 4:
            expect["test"].append(i)
        elif m in ood:
            expect["val_ood"].append(i)
        else:
            expect["train" if np.random.rand() < 0.7 else "val_id"].append(i)
    assert parts == expect
    mols = {n: {structs[i][0] for i in idx} for n, idx in parts.items()}
    assert mols["test"] == {4} and len(mols["val_ood"]) == 2
    assert not (mols["test"] | mols["val_ood"]) & (mols["train"] | mols["val_id"])
    with pytest.raises(ValueError, match="n_val_ood"):
        qm7x.split_qm7x(structs, test_molecules={4}, n_val_ood=6)


def test_write_lmdbs_and_samples_json(fetched: tuple, tmp_path: Path) -> None:
    raw, truth, _ = fetched
    sizes = qm7x.write_qm7x_lmdbs([raw / "1000.hdf5"], tmp_path, dupmols=raw / "DupMols.dat", seed=0,
                                  test_molecules={10}, n_val_ood=1, train_prob=0.8)
    assert sum(sizes.values()) == len(truth) - (N_DISPLACED + 1)
    samples = json.loads((tmp_path / "samples.json").read_text())
    assert sorted(i for idx in samples["splits"].values() for i in idx) == list(range(sum(sizes.values())))
    mols = {}
    for name, n in sizes.items():
        recs = list(LmdbReader(tmp_path / f"{name}.lmdb"))
        assert len(recs) == n == len(samples["splits"][name])
        mols[name] = {int(r.sid) for r in recs}
        for r, i in zip(recs, samples["splits"][name], strict=True):
            assert [int(r.sid), int(r.fid)] == samples["structures"][i]
    assert mols["test"] == {10} and len(mols["val_ood"]) == 1
    assert not (mols["test"] | mols["val_ood"]) & (mols["train"] | mols["val_id"])


def test_checksums_and_bad_xz(fetched: tuple, tmp_path: Path) -> None:
    raw, _, files = fetched
    bad = {"1000.xz": qm7x.QM7XFile("1000.xz", "0" * 32, base_url=files["1000.xz"].base_url)}
    with pytest.raises(ChecksumError):
        qm7x.download_qm7x(tmp_path / "r", ["1000"], files=bad, dupmols=False, progress=False)
    (tmp_path / "x.xz").write_bytes(b"not xz at all")
    with pytest.raises(ValueError, match="not a valid xz"):
        qm7x.decompress_xz(tmp_path / "x.xz")
    with pytest.raises(ValueError, match="unknown QM7-X set ids"):
        qm7x.download_qm7x(tmp_path / "r", ["9000"], progress=False)
    # The published table carries md5 for all eight files and DupMols.dat.
    assert len(qm7x.QM7X_FILES) == 9 and all(len(f.md5) == 32 for f in qm7x.QM7X_FILES.values())
