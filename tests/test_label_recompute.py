"""Every stored label is the reference method's result for exactly the stored (float32) structure.

For 5 random records of each embedded set, read back from its LMDB, the label is recomputed here with plain ASE
(EMT) and tblite (GFN2-xTB) calls on the stored positions and cell: energies and adsorption energies (with the
documented references: relaxed clean slab + gas-phase mu_X) to 1e-6 eV, forces to 1e-5 eV/Å, QM9-like properties
to float32 precision. Also: every element of every evaluation split of the catalysis set occurs in training.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import BFGS
from ase.units import Bohr, Hartree
from tblite.interface import Calculator

from faenet.data import catalysis as C
from faenet.data import molecules as M
from faenet.data.store import LmdbReader

CAT_KW = dict(n_systems={"train": 6, "val_id": 2, "val_ood_ads": 2, "val_ood_cat": 2, "val_ood_both": 2, "test": 1},
              metals=["Cu", "Pt", "Au"], alloys=["Cu3Pt", "AuPt"], ood_alloys=["CuPt", "Cu3Au"], facets=["111", "100"],
              adsorbates=["H", "O", "N", "CO", "OH"], ood_adsorbates=["OH"], slab_size=(2, 2, 3), seed=5,
              max_steps=60, s2ef_frame_stride=3, fmax=0.05, progress=False)
N_CHECK = 5


@pytest.fixture(scope="module")
def cat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cat")
    return out, C.generate_catalysis(out, workers=2, **CAT_KW)


def _specs() -> dict[int, C.SystemSpec]:
    cats = [*CAT_KW["metals"], *CAT_KW["alloys"], *CAT_KW["ood_alloys"]]
    specs = C.plan_systems(CAT_KW["n_systems"], cats, CAT_KW["facets"], CAT_KW["adsorbates"], CAT_KW["ood_alloys"],
                           CAT_KW["ood_adsorbates"], CAT_KW["seed"])
    return {s.index: s for s in specs}


def _reference_energy(spec: C.SystemSpec) -> float:
    """The documented reference: relaxed clean slab (EMT, same BFGS settings) + sum of gas-phase mu_X."""
    mu = C.gas_references()
    slab = C.clean_slab_energy(spec.catalyst, spec.facet, CAT_KW["slab_size"], CAT_KW["fmax"], CAT_KW["max_steps"])
    return slab + sum(mu[s] for s, _ in C.ADSORBATES[spec.adsorbate])


def _atoms(rec) -> Atoms:
    atoms = Atoms(numbers=rec.atomic_numbers.numpy(), positions=rec.pos.double().numpy(),
                  cell=rec.cell[0].double().numpy(), pbc=rec.pbc[0].tolist())
    atoms.calc = EMT()
    return atoms


def _sample(records: list, k: int = N_CHECK, seed: int = 0) -> list:
    return random.Random(seed).sample(records, min(k, len(records)))


def _all(folder: Path) -> list:
    return [r for p in sorted(folder.glob("*.lmdb")) for r in LmdbReader(p)]


def test_s2ef_labels_are_emt_at_the_stored_positions(cat: tuple[Path, dict]) -> None:
    out, _ = cat
    specs = _specs()
    frames = _all(out / "s2ef")
    assert len(frames) >= N_CHECK
    for rec in _sample(frames):
        atoms = _atoms(rec)
        e_ref = _reference_energy(specs[int(rec.sid)])
        assert float(rec.y) == pytest.approx(atoms.get_potential_energy() - e_ref, abs=1e-6)
        np.testing.assert_allclose(rec.force.double().numpy(), atoms.get_forces(), rtol=0, atol=1e-5)


def test_is2re_target_is_the_relaxation_from_the_stored_structure(cat: tuple[Path, dict]) -> None:
    out, _ = cat
    specs = _specs()
    for rec in _sample(_all(out / "is2re")):
        atoms = _atoms(rec)
        atoms.set_constraint(FixAtoms(mask=rec.fixed.numpy().astype(bool)))
        BFGS(atoms, logfile=None).run(fmax=CAT_KW["fmax"], steps=CAT_KW["max_steps"])
        relaxed = atoms.positions.astype(np.float32).astype(np.float64)  # the stored relaxed structure is float32
        final = Atoms(numbers=atoms.numbers, positions=relaxed, cell=atoms.cell, pbc=atoms.pbc)
        final.calc = EMT()
        e_ref = _reference_energy(specs[int(rec.sid)])
        assert float(rec.y) == pytest.approx(final.get_potential_energy() - e_ref, abs=1e-6)


def test_every_evaluation_element_occurs_in_training(cat: tuple[Path, dict]) -> None:
    out, summary = cat
    per_split = {p.stem: {int(z) for r in LmdbReader(p) for z in r.atomic_numbers.tolist()}
                 for p in sorted((out / "is2re").glob("*.lmdb"))}
    for split, z in per_split.items():
        assert z <= per_split["train"], f"{split} has elements absent from train: {sorted(z - per_split['train'])}"
    from ase.data import chemical_symbols

    assert summary["elements_per_split"] == {s: sorted(chemical_symbols[i] for i in z) for s, z in per_split.items()}
    card = C.data_card_markdown(summary)
    assert "Elements per split" in card and "| val_ood_cat |" in card


def test_ood_splits_hold_new_compositions_of_seen_elements(cat: tuple[Path, dict]) -> None:
    out, _ = cat
    specs = _specs()
    by_split = {p.stem: [specs[int(r.sid)] for r in LmdbReader(p)] for p in sorted((out / "is2re").glob("*.lmdb"))}
    train_cats = {s.catalyst for s in by_split["train"]}
    for split, ss in by_split.items():
        cats, ads = {s.catalyst for s in ss}, {s.adsorbate for s in ss}
        ood_cat, ood_ads = split in ("val_ood_cat", "val_ood_both"), split in ("val_ood_ads", "val_ood_both")
        assert (cats <= set(CAT_KW["ood_alloys"])) if ood_cat else not cats & set(CAT_KW["ood_alloys"]), split
        assert (ads <= set(CAT_KW["ood_adsorbates"])) if ood_ads else not ads & set(CAT_KW["ood_adsorbates"]), split
        if ood_cat:
            assert not cats & train_cats
    # A stored alloy slab has the composition its name says (Cu3Pt: 3/4 Cu among the metal atoms).
    for p in sorted((out / "is2re").glob("*.lmdb")):
        for r in LmdbReader(p):
            spec = specs[int(r.sid)]
            major, minor, kind = C.parse_catalyst(spec.catalyst)
            metal = r.atomic_numbers[r.tags != 2].tolist()
            if minor is not None:
                from ase.data import atomic_numbers

                frac = metal.count(atomic_numbers[minor]) / len(metal)
                assert frac == (0.25 if kind == "A3B" else 0.5), spec


def test_catalyst_names_and_coverage_errors(tmp_path: Path) -> None:
    assert C.parse_catalyst("Cu") == ("Cu", None, "A")
    assert C.parse_catalyst("Cu3Au") == C.parse_catalyst("AuCu3") == ("Cu", "Au", "A3B")
    assert C.parse_catalyst("CuPd") == ("Cu", "Pd", "AB")
    for bad in ("Cu3", "CuCu", "CuZn", "Cu3Au3", "cu"):
        with pytest.raises(ValueError, match="catalyst"):
            C.parse_catalyst(bad)
    with pytest.raises(ValueError, match="Au.*no training system"):
        C.generate_catalysis(tmp_path, **{**CAT_KW, "metals": ["Cu", "Pt"], "alloys": ["Cu3Pt"]})
    with pytest.raises(ValueError, match="even nx"):
        C.generate_catalysis(tmp_path, **{**CAT_KW, "slab_size": (3, 2, 3)})


def _xtb(z: np.ndarray, pos: np.ndarray):
    with M.single_omp_thread():
        calc = Calculator("GFN2-xTB", np.asarray(z), np.asarray(pos, dtype=np.float64) / Bohr)
        calc.set("verbosity", 0)
        return calc.singlepoint()


def test_qm7x_like_labels_are_xtb_at_the_stored_positions(tmp_path: Path) -> None:
    M.generate_qm7x_like(tmp_path, n_molecules=6, conformers_per_molecule=3, unknown_fraction=0.2,
                         val_ood_fraction=0.2, val_id_fraction=0.2, seed=2, workers=2, progress=False)
    recs = _all(tmp_path)
    for r in _sample(recs):
        res = _xtb(r.atomic_numbers.numpy(), r.pos.double().numpy())
        assert float(r.y) == pytest.approx(float(res.get("energy")) * Hartree, abs=1e-6)
        np.testing.assert_allclose(r.force.double().numpy(), -res.get("gradient") * Hartree / Bohr, rtol=0, atol=1e-5)


def test_qm9_like_properties_are_xtb_at_the_stored_positions(tmp_path: Path) -> None:
    M.generate_qm9_like(tmp_path, n_molecules=8, seed=1, workers=2, target="gap", polarizability=False,
                        progress=False)
    names = [n for n, _, _ in M.QM9_LIKE_TARGETS]
    for r in _sample(_all(tmp_path)):
        props = M.xtb_properties(r.atomic_numbers.numpy(), r.pos.double().numpy(), polarizability=False)
        stored = r.targets[0].double().numpy()
        for i, n in enumerate(names):
            if n == "alpha":
                continue
            assert stored[i] == pytest.approx(np.float32(props[n]), rel=1e-6, abs=1e-6), n


def test_md17_like_labels_are_xtb_at_the_stored_positions(tmp_path: Path) -> None:
    from faenet.data.md17 import generate_md17_like

    generate_md17_like(tmp_path, molecules=["ethanol", "malonaldehyde"], n_trajectories=1, frames_per_trajectory=10,
                       equilibration_steps=50, seed=3, workers=2, progress=False)
    for r in _sample(_all(tmp_path)):
        res = _xtb(r.atomic_numbers.numpy(), r.pos.double().numpy())
        assert float(r.y) == pytest.approx(float(res.get("energy")) * Hartree, abs=1e-6)
        np.testing.assert_allclose(r.force.double().numpy(), -res.get("gradient") * Hartree / Bohr, rtol=0, atol=1e-5)
