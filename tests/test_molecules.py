"""Embedded QM7-X-like / QM9-like sets: GFN2-xTB labels, units, splits, determinism, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.units import Bohr, Hartree
from rdkit import Chem
from tblite.interface import Calculator

from faenet.data import molecules as M
from faenet.data.records import validate_record
from faenet.data.store import LmdbReader
from faenet.frames import count_degenerate

QM7X_KW = dict(n_molecules=6, conformers_per_molecule=3, unknown_fraction=0.2, val_ood_fraction=0.2,
               val_id_fraction=0.2, progress=False)


def _direct(z: np.ndarray, pos: np.ndarray) -> tuple[float, np.ndarray, object]:
    """A plain tblite call, independent of faenet: energy eV, forces eV/Å, raw result."""
    with M.single_omp_thread():  # the labels were made with one thread (bitwise-repeatable setting)
        calc = Calculator("GFN2-xTB", np.asarray(z), np.asarray(pos, dtype=np.float64) / Bohr)
        calc.set("verbosity", 0)
        res = calc.singlepoint()
    return float(res.get("energy")) * Hartree, -res.get("gradient") * Hartree / Bohr, res


def _split_bytes(d: Path) -> dict[str, bytes]:
    return {n: (d / f"{n}.lmdb").read_bytes() for n in M.SPLITS_QM7X}


@pytest.fixture(scope="module")
def qm7x_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("qm7x")
    return d, M.generate_qm7x_like(d, seed=3, workers=2, **QM7X_KW)


def test_pools_are_documented_sets() -> None:
    for kind, elems, max_heavy in (("qm7x", {"C", "N", "O", "S", "Cl"}, 7), ("qm9", {"C", "N", "O", "F"}, 9)):
        pool = M.molecule_pool(kind)
        assert len(pool) > 300 and list(pool) == sorted(set(pool))
        assert "CCO" in pool and "O" in pool  # ethanol, water
        for smi in pool:
            mol = Chem.MolFromSmiles(smi)
            assert Chem.MolToSmiles(mol) == smi and 1 <= mol.GetNumHeavyAtoms() <= max_heavy
            assert {a.GetSymbol() for a in mol.GetAtoms()} <= elems
    assert any("S" in s for s in M.molecule_pool("qm7x")) and any("F" in s for s in M.molecule_pool("qm9"))
    with pytest.raises(ValueError, match="unknown molecule pool"):
        M.molecule_pool("qm8")


def test_ethanol_labels_match_direct_tblite(tmp_path: Path) -> None:
    task = {"kind": "qm7x", "smiles": "CCO", "mol_seed": 11, "n_equilibrium": 1, "n_structures": 3,
            "displacement": [0.02, 0.06]}
    (out,) = M.label_molecules([task], workers=1, cache_dir=tmp_path, progress=False)
    assert out["pos"].shape == (3, 9, 3) and out["sigma"][0] == 0.0 and out["sigma"][1] > 0
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"truncated")  # an unreadable cache entry is recomputed, identically
    (again,) = M.label_molecules([task], workers=1, cache_dir=tmp_path, progress=False)
    assert all(np.array_equal(out[k], again[k]) for k in ("pos", "energy", "force"))
    for k in range(3):
        e, f, _ = _direct(out["z"], out["pos"][k])
        assert out["energy"][k] == pytest.approx(e, abs=1e-8)
        np.testing.assert_allclose(out["force"][k], f, atol=1e-8)
    # Units: forces are -dE/dx in eV/Å (central difference on one coordinate of a displaced structure).
    pos, h = out["pos"][1].copy(), 1e-4
    pos[2, 0] += h
    e_p, _ = M.xtb_energy_forces(out["z"], pos)
    pos[2, 0] -= 2 * h
    e_m, _ = M.xtb_energy_forces(out["z"], pos)
    assert -(e_p - e_m) / (2 * h) == pytest.approx(out["force"][1][2, 0], rel=1e-4, abs=1e-4)
    # Equilibrium structure = MMFF minimum: small but non-zero GFN2 forces (another method's minimum).
    assert np.abs(out["force"][0]).max() < 2.0


def test_qm7x_records_match_direct_tblite(qm7x_dir: tuple[Path, dict]) -> None:
    d, summary = qm7x_dir
    for name in M.SPLITS_QM7X:
        recs = list(LmdbReader(d / f"{name}.lmdb"))
        assert len(recs) == summary["sizes"][name] > 0
        for r in recs:
            validate_record(r)
            assert r.cell.abs().sum() == 0 and not r.pbc.any() and bool((r.tags == -1).all())
            assert (int(r.fid) == 0) == (r.displacement == 0.0)
        r = recs[-1]
        e, f, _ = _direct(r.atomic_numbers.numpy(), r.pos.double().numpy())
        assert r.y == pytest.approx(e, abs=1e-7)  # labels belong to the stored float32 positions
        np.testing.assert_allclose(r.force.numpy(), f, atol=1e-4)


def test_qm7x_splits_disjoint_by_molecule(qm7x_dir: tuple[Path, dict]) -> None:
    d, summary = qm7x_dir
    mols = {n: {int(r.sid) for r in LmdbReader(d / f"{n}.lmdb")} for n in M.SPLITS_QM7X}
    known = mols["train"] | mols["val_id"]
    assert len(mols["test"]) == 1 and len(mols["val_ood"]) == 1 and len(known) == 4
    assert not mols["test"] & known and not mols["val_ood"] & known and not mols["test"] & mols["val_ood"]
    assert summary["sizes"]["val_id"] == 2 and sum(summary["sizes"].values()) == 6 * 3
    assert summary["split_roles"] == {"known": "val_id", "unknown": "test"}
    pool = M.molecule_pool("qm7x")
    assert summary["molecules"]["test"] == [pool[i] for i in mols["test"]]


def test_qm7x_same_seed_same_bytes_and_resume(qm7x_dir: tuple[Path, dict], tmp_path: Path) -> None:
    d, summary = qm7x_dir
    fresh = tmp_path / "fresh"
    again = M.generate_qm7x_like(fresh, seed=3, workers=1, **QM7X_KW)  # one worker, no cache
    assert _split_bytes(fresh) == _split_bytes(d)
    same = {k: v for k, v in summary.items() if k != "timing"}
    assert {k: v for k, v in again.items() if k != "timing"} == same
    resumed = tmp_path / "resumed"
    cached = sorted((d / "cache").iterdir())
    M.generate_qm7x_like(resumed, seed=3, workers=2, cache_dir=d / "cache", **QM7X_KW)
    assert _split_bytes(resumed) == _split_bytes(d) and sorted((d / "cache").iterdir()) == cached
    other = tmp_path / "other"
    M.generate_qm7x_like(other, seed=4, workers=2, **QM7X_KW)
    assert (other / "train.lmdb").read_bytes() != (d / "train.lmdb").read_bytes()


def test_summary_counts(qm7x_dir: tuple[Path, dict]) -> None:
    d, summary = qm7x_dir
    recs = [r for n in M.SPLITS_QM7X for r in LmdbReader(d / f"{n}.lmdb")]
    assert summary["degenerate_frames"]["total"] == count_degenerate(recs)[0]
    hist = summary["element_histogram"]
    assert sum(hist.values()) == sum(int(r.natoms) for r in recs)
    assert set(hist) <= {"H", "C", "N", "O", "S", "Cl"}
    assert summary["timing"]["molecules"] == 6 and summary["timing"]["xtb_cpu_s_total"] > 0
    shifts = summary["element_energy_shifts_train"]
    assert shifts["residual_std"] < shifts["raw_std"]


def test_qm9_like_properties(tmp_path: Path) -> None:
    s = M.generate_qm9_like(tmp_path, n_molecules=8, seed=1, workers=1, target="gap", progress=False)
    names = [n for n, _, _ in M.QM9_LIKE_TARGETS]
    assert s["sizes"] == {"train": 6, "val": 1, "test": 1}
    assert "zpve" in s["unavailable"] and "zpve" not in names
    sids = [int(r.sid) for n in M.SPLITS_QM9 for r in LmdbReader(tmp_path / f"{n}.lmdb")]
    assert len(set(sids)) == 8
    r = LmdbReader(tmp_path / "test.lmdb")[0]
    validate_record(r)
    t = dict(zip(names, r.targets[0].tolist(), strict=True))
    assert r.y == pytest.approx(t["gap"], abs=1e-5)
    e, _, res = _direct(r.atomic_numbers.numpy(), r.pos.double().numpy())
    occ, eps = res.get("orbital-occupations"), res.get("orbital-energies") * Hartree
    homo = int(round(occ.sum())) // 2 - 1
    assert t["energy"] == pytest.approx(e, rel=1e-6)
    assert t["homo"] == pytest.approx(eps[homo], abs=1e-4)
    assert t["lumo"] == pytest.approx(eps[homo + 1], abs=1e-4)
    assert t["mu"] == pytest.approx(np.linalg.norm(res.get("dipole")) * 2.5417464506, abs=1e-4)
    assert t["alpha"] > 0
    # The split is the fork's torch.randperm(n, manual_seed(seed)) (n_train = floor(0.84 n), n_val = round).
    # Molecules are the first 8 of the seeded pool permutation (none failed).
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    order = np.random.default_rng(1).permutation(len(M.molecule_pool("qm9")))[:8]
    assert s["failed"] == [] and sids == [int(order[int(i)]) for i in perm]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_molecules"):
        M.generate_qm7x_like(tmp_path, n_molecules=10**6, conformers_per_molecule=2, seed=0)
    with pytest.raises(ValueError, match="n_equilibrium"):
        M.generate_qm7x_like(tmp_path, n_molecules=5, conformers_per_molecule=1, n_equilibrium=2, seed=0)
    with pytest.raises(ValueError, match="none for training"):
        M.generate_qm7x_like(tmp_path, n_molecules=2, conformers_per_molecule=2, seed=0)
    with pytest.raises(ValueError, match="unknown QM9-like target"):
        M.generate_qm9_like(tmp_path, n_molecules=5, seed=0, target="zpve")
    with pytest.raises(ValueError, match="workers"):
        M.generate_qm9_like(tmp_path, n_molecules=5, seed=0, workers=0)
    with pytest.raises(ValueError, match="odd electron count"):
        M.xtb_energy_forces(np.array([1]), np.zeros((1, 3)))
