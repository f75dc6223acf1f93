"""MD17-like set: Langevin MD driven by GFN2-xTB; determinism, physical sanity, rMD17 loader, config sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faenet.data import md17 as D
from faenet.data import molecules as M
from faenet.data.records import validate_record
from faenet.data.store import LmdbReader

KW = dict(molecules=["ethanol"], n_trajectories=2, frames_per_trajectory=40, stride=10, equilibration_steps=200,
          seed=4, workers=2, progress=False)


@pytest.fixture(scope="module")
def md17_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("md17")
    return d, D.generate_md17_like(d, **KW)


def _bytes(d: Path) -> dict[str, bytes]:
    return {n: (d / f"{n}.lmdb").read_bytes() for n in D.SPLITS_MD17}


def test_same_seed_same_bytes_and_resume(md17_dir: tuple[Path, dict], tmp_path: Path) -> None:
    d, summary = md17_dir
    assert summary["sizes"] == {"train": 56, "val": 8, "test": 16}
    again = D.generate_md17_like(tmp_path / "b", **KW)  # fresh cache: recomputed from scratch
    assert _bytes(tmp_path / "b") == _bytes(d) and again["sizes"] == summary["sizes"]
    resumed = D.generate_md17_like(tmp_path / "c", **{**KW, "workers": 1}, cache_dir=d / "cache")  # from the cache
    assert _bytes(tmp_path / "c") == _bytes(d) and resumed["energy_eV"] == summary["energy_eV"]
    other = D.generate_md17_like(tmp_path / "d", **{**KW, "seed": 5})
    assert _bytes(tmp_path / "d") != _bytes(d) and other["energy_eV"] != summary["energy_eV"]


def test_records_are_valid_and_splits_partition_the_frames(md17_dir: tuple[Path, dict]) -> None:
    d, _ = md17_dir
    fids = []
    for split in D.SPLITS_MD17:
        for r in LmdbReader(d / f"{split}.lmdb"):
            validate_record(r, where=f"md17 {split}")
            assert r.atomic_numbers.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1] and int(r.sid) == 0
            fids.append(int(r.fid))
    assert sorted(fids) == list(range(80))  # every frame once, in exactly one split


def test_langevin_trajectory_is_physically_sane() -> None:
    z, (start,), _ = M.embed_conformers("CCO", 1, 7)
    out = D.run_trajectory(z, start, n_frames=150, stride=10, equilibration_steps=400, temperature_K=500.0,
                           timestep_fs=0.5, friction_per_fs=0.02, seed=7)
    assert np.isfinite(out["energy"]).all() and np.isfinite(out["force"]).all()
    # 9 atoms, 24 degrees of freedom: one frame's kinetic temperature has a relative std of sqrt(2/24) = 29%;
    # 150 frames 5 fs apart (~15 independent samples with the 50 fs thermostat time) -> the mean within 20%.
    assert abs(out["temperature"].mean() - 500.0) < 100.0, out["temperature"].mean()
    # A thermal trajectory, not a frozen or exploded one: energies spread by ~kT per dof, bonds intact.
    assert 0.02 < out["energy"].std() < 1.0
    d = np.linalg.norm(out["pos"][:, :, None] - out["pos"][:, None], axis=-1)
    assert d[:, 0, 1].max() < 1.9 and d[:, 1, 2].max() < 1.8  # C-C, C-O bonds
    # Stored positions are float32 values and the labels are those of exactly these positions.
    assert np.array_equal(out["pos"], out["pos"].astype(np.float32).astype(np.float64))
    e, f = M.xtb_energy_forces(z, out["pos"][-1])
    assert e == out["energy"][-1] and np.array_equal(f, out["force"][-1])


def test_forces_are_minus_the_energy_gradient_on_an_md_frame(md17_dir: tuple[Path, dict]) -> None:
    d, _ = md17_dir
    rec = next(iter(LmdbReader(d / "test.lmdb")))
    z, pos = rec.atomic_numbers.numpy(), rec.pos.double().numpy()
    h = 1e-4
    for atom, axis in ((0, 0), (2, 1), (5, 2)):
        dp = np.zeros_like(pos)
        dp[atom, axis] = h
        fd = -(M.xtb_energy_forces(z, pos + dp)[0] - M.xtb_energy_forces(z, pos - dp)[0]) / (2 * h)
        assert float(rec.force[atom, axis]) == pytest.approx(fd, abs=2e-3), (atom, axis)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither an MD17 name"):
        D.generate_md17_like(tmp_path, **{**KW, "molecules": ["not-a-molecule("]})
    with pytest.raises(ValueError, match="molecules is empty"):
        D.generate_md17_like(tmp_path, **{**KW, "molecules": []})
    with pytest.raises(ValueError, match="frames_per_trajectory"):
        D.generate_md17_like(tmp_path, **{**KW, "frames_per_trajectory": 0})
    with pytest.raises(ValueError, match="leave none for training"):
        D._split(4, 0.4, 0.4, 0)


def test_rmd17_npz_loader_converts_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
    coords = rng.normal(0, 1.0, (20, 9, 3)) + np.arange(9)[None, :, None]
    energies, forces = -97000.0 + rng.normal(0, 1, 20), rng.normal(0, 20, (20, 9, 3))
    np.savez(tmp_path / "rmd17_ethanol.npz", nuclear_charges=z, coords=coords, energies=energies, forces=forces)
    recs = D.load_rmd17_npz(tmp_path / "rmd17_ethanol.npz", indices=[3, 7])
    assert [int(r.fid) for r in recs] == [3, 7]
    assert float(recs[0].y) == pytest.approx(energies[3] * 0.0433641043, rel=1e-12)
    np.testing.assert_allclose(recs[1].force.numpy(), forces[7] * 0.0433641043, rtol=1e-6)
    summary = D.write_rmd17_lmdbs(tmp_path, tmp_path / "out", molecules=["ethanol"], n_frames=10, seed=0,
                                  val_fraction=0.2, test_fraction=0.3)
    assert summary["sizes"] == {"train": 5, "val": 2, "test": 3}
    assert "rmd17" in D.data_card_markdown(summary)
    with pytest.raises(FileNotFoundError, match="rmd17_aspirin.npz"):
        D.write_rmd17_lmdbs(tmp_path, tmp_path / "o2", molecules=["aspirin"], n_frames=10, seed=0)
    np.savez(tmp_path / "bad.npz", coords=coords)
    with pytest.raises(ValueError, match="not an rMD17 file"):
        D.load_rmd17_npz(tmp_path / "bad.npz")


def test_data_card(md17_dir: tuple[Path, dict]) -> None:
    _, summary = md17_dir
    card = D.data_card_markdown(summary)
    assert "Langevin at 500 K" in card and "| train | 56 |" in card and "ethanol" in card


def test_config_md17_sizes() -> None:
    from pipeline.config import MD17Data, load_params

    for name in ("smoke", "default", "paper"):
        d = load_params().profiles[name].data.md17
        assert d.cutoff == 5.0 and d.val_fraction + d.test_fraction < 1
    with pytest.raises(ValueError, match="leave none for training"):
        MD17Data(n_trajectories=1, frames_per_trajectory=2)
    with pytest.raises(ValueError, match="listed twice"):
        MD17Data(molecules=["ethanol", "ethanol"])
    with pytest.raises(ValueError):
        MD17Data(frames_per_trajectory=0)
