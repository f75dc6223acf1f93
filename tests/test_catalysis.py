"""faenet.data.catalysis: the embedded EMT set is physical (energies/forces match EMT, referencing is
consistent), follows the record schema, has leak-free OOD splits, is deterministic (worker count included)
and resumes byte-identically after an interruption; faenet.data.dataset.remove_tag0 is exact."""

import json
import shutil

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT

from faenet.data import catalysis
from faenet.data.catalysis import (
    ADSORBATES,
    SPLITS,
    data_card_markdown,
    gas_references,
    generate_catalysis,
    split_counts,
)
from faenet.data.dataset import GraphDataset, content_hash, remove_tag0
from faenet.data.records import validate_record
from faenet.data.store import LmdbReader
from faenet.graph import radius_graph

KW = dict(n_systems={"train": 4, "val_id": 1, "val_ood_ads": 1, "val_ood_cat": 1, "val_ood_both": 1,
                     "test": 1},
          metals=["Cu", "Pt", "Ag"], alloys=["Cu3Pt"], ood_alloys=["Ag3Cu"], facets=["111", "100"],
          adsorbates=["H", "O", "CO", "N", "OH"], ood_adsorbates=["OH"], slab_size=(2, 2, 3), seed=3, max_steps=40,
          s2ef_frame_stride=3, progress=False)


def _lmdb_bytes(root):
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(root.glob("*/*.lmdb"))}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    summary = generate_catalysis(out, workers=2, **KW)
    return out, summary


def test_summary_and_files(ref):
    out, s = ref
    assert s["systems_planned"] == KW["n_systems"]
    assert set(_lmdb_bytes(out)) == {f"{t}/{sp}.lmdb" for t in ("is2re", "s2ef") for sp in SPLITS}
    assert sum(s["counts"]["is2re"].values()) + s["n_dropped"] == 9
    assert json.loads((out / "summary.json").read_text())["content_hashes"] == s["content_hashes"]
    assert s["content_hashes"]["is2re"] == content_hash(out / "is2re")
    card = data_card_markdown(s)
    assert "| train | 4 |" in card and s["content_hashes"]["s2ef"] in card


def test_records_follow_schema_and_splits_do_not_leak(ref):
    out, _ = ref
    sids = {}
    for split in SPLITS:
        is2re = GraphDataset(out / "is2re" / f"{split}.lmdb", task="is2re")
        s2ef = GraphDataset(out / "s2ef" / f"{split}.lmdb", task="s2ef")
        for rec in list(is2re) + list(s2ef):
            validate_record(rec)
            assert rec.pos.dtype == torch.float32 and rec.atomic_numbers.dtype == torch.long
            assert rec.pbc.tolist() == [[True, True, False]] and rec.cell.dtype == torch.float32
            assert set(rec.tags.tolist()) == {0, 1, 2}
            assert torch.equal(rec.fixed, (rec.tags == 0).long())  # the sub-surface layers are the fixed ones
            assert int((rec.cell_offsets[:, 2] != 0).sum()) == 0  # no z images: pbc is off in z
            ads = sorted(rec.atomic_numbers[rec.tags == 2].tolist())
            assert (ads == [1, 8]) == (split in ("val_ood_ads", "val_ood_both"))  # OH only in the OOD-ads splits
        sids[split] = {int(r.sid) for r in s2ef}
        assert sids[split] == {int(r.sid) for r in is2re}  # every kept system has frames, in its own split
    all_sids = [x for v in sids.values() for x in v]
    assert len(all_sids) == len(set(all_sids))


def test_labels_are_emt_physics(ref):
    out, _ = ref
    is2re = {int(r.sid): r for r in GraphDataset(out / "is2re" / "train.lmdb", task="is2re")}
    frames = list(GraphDataset(out / "s2ef" / "train.lmdb", task="s2ef"))
    mu = gas_references()
    assert mu["H"] == pytest.approx(mu["H2"] / 2) and mu["C"] == pytest.approx(mu["CO"] - mu["O"])
    for sid, rec in is2re.items():
        fr = sorted((f for f in frames if int(f.sid) == sid), key=lambda f: int(f.fid))
        assert int(fr[0].fid) == 0 and torch.equal(fr[0].pos, rec.pos)  # IS2RE positions = initial structure
        # IS2RE target = referenced energy of the relaxed (last) frame.
        assert float(fr[-1].y) == pytest.approx(float(rec.y), abs=1e-9)
        # Energies and unconstrained forces are EMT's (float32 positions: loose tolerance).
        offsets = []
        for f in (fr[0], fr[-1]):
            atoms = Atoms(numbers=f.atomic_numbers.numpy(), positions=f.pos.double().numpy(),
                          cell=f.cell[0].double().numpy(), pbc=[True, True, False])
            atoms.calc = EMT()
            np.testing.assert_allclose(f.force.numpy(), atoms.get_forces(), atol=2e-3)
            offsets.append(atoms.get_potential_energy() - float(f.y))
        assert offsets[0] == pytest.approx(offsets[1], abs=2e-4)  # one reference energy per system
        assert bool((fr[0].force[fr[0].fixed == 1] != 0).any())  # fixed atoms keep their forces
        ei, off = radius_graph(rec.pos.double(), 6.0, 50, rec.cell[0].double(), rec.pbc[0])
        assert torch.equal(ei, rec.edge_index) and torch.equal(off, rec.cell_offsets)


def test_deterministic_across_runs_and_worker_counts(ref, tmp_path):
    out, s = ref
    (tmp_path / "w1" / "is2re").mkdir(parents=True)
    (tmp_path / "w1" / "is2re" / "val_old.lmdb").write_bytes(b"from an earlier configuration")
    s1 = generate_catalysis(tmp_path / "w1", workers=1, **KW)
    assert _lmdb_bytes(tmp_path / "w1") == _lmdb_bytes(out)  # the stale split is gone, the rest identical
    assert (tmp_path / "w1" / "summary.json").read_bytes() == (out / "summary.json").read_bytes()
    assert s1["content_hashes"] == s["content_hashes"]
    other = generate_catalysis(tmp_path / "seed4", workers=2, **{**KW, "seed": 4})
    assert other["content_hashes"] != s["content_hashes"]


def test_resume_after_interruption_is_byte_identical(ref, tmp_path, monkeypatch):
    out, s = ref
    real = catalysis.build_system

    def crash_on_system_5(spec, p):
        if spec.index == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(spec, p)

    monkeypatch.setattr(catalysis, "build_system", crash_on_system_5)  # fork workers inherit the patch
    with pytest.raises(BaseException, match="simulated kill"):
        generate_catalysis(tmp_path / "run", workers=2, **KW)
    monkeypatch.setattr(catalysis, "build_system", real)
    cached = sorted((tmp_path / "run" / ".work").glob("sys*.pkl"))
    assert 0 < len(cached) < 9 and not (tmp_path / "run" / "summary.json").exists()
    resumed = generate_catalysis(tmp_path / "run", workers=2, **KW)
    assert resumed["systems_from_cache"] == len(cached) and resumed["systems_computed"] == 9 - len(cached)
    assert _lmdb_bytes(tmp_path / "run") == _lmdb_bytes(out)
    # Lost and torn cache files and a deleted output are recomputed / rewritten identically.
    cached[0].unlink()
    cached[1].write_bytes(cached[1].read_bytes()[:50])
    (tmp_path / "run" / "s2ef" / "train.lmdb").unlink()
    again = generate_catalysis(tmp_path / "run", workers=1, **KW)
    assert again["systems_computed"] == 2
    assert _lmdb_bytes(tmp_path / "run") == _lmdb_bytes(out)
    # A changed physics parameter never reuses stale cache entries.
    shutil.rmtree(tmp_path / "run" / "is2re")
    changed = generate_catalysis(tmp_path / "run", workers=2, **{**KW, "fmax": 0.1})
    assert changed["systems_computed"] == 9


def test_remove_tag0_drops_exactly_tag0_atoms_and_their_edges(ref):
    out, _ = ref
    rec = LmdbReader(out / "s2ef" / "train.lmdb")[0]
    new = remove_tag0(rec)
    keep = (rec.tags != 0).nonzero().view(-1).tolist()
    old_to_new = {o: k for k, o in enumerate(keep)}
    assert new.natoms == len(keep) == new.pos.shape[0] and 0 not in new.tags.tolist()
    for field in ("pos", "atomic_numbers", "tags", "fixed", "force"):
        assert torch.equal(new[field], rec[field][keep]), field
    old_edges = zip(*rec.edge_index.tolist(), rec.cell_offsets.tolist(), strict=True)
    expected = sorted((old_to_new[j], old_to_new[i], tuple(o)) for j, i, o in old_edges
                      if j in old_to_new and i in old_to_new)
    got = sorted(zip(*new.edge_index.tolist(), map(tuple, new.cell_offsets.tolist()), strict=True))
    assert got == expected and len(got) < rec.edge_index.shape[1]
    assert float(new.y) == float(rec.y) and torch.equal(new.cell, rec.cell)
    validate_record(new)
    # Edge vectors of kept edges are unchanged by the re-indexing.
    assert int(new.edge_index.max()) < new.natoms
    assert rec.natoms == 13 and torch.equal(remove_tag0(new).pos, new.pos)  # idempotent


def test_split_counts_and_argument_errors(tmp_path):
    c = split_counts(600, val_id_fraction=0.15, test_fraction=0.1)
    assert c["val_id"] == c["val_ood_ads"] == c["val_ood_cat"] == c["val_ood_both"]
    assert sum(c.values()) == 600 and c["train"] > 300
    assert split_counts(48, has_ood_catalysts=False)["val_ood_cat"] == 0
    with pytest.raises(ValueError, match="too small"):
        split_counts(3)
    for bad, msg in (({"metals": ["Fe"]}, "metals.*Fe"), ({"adsorbates": ["CO2"]}, "CO2"),
                     ({"facets": ["211"]}, "211"), ({"slab_size": (2, 2, 2)}, "layers >= 3"),
                     ({"ood_alloys": ["Cu3Zn"]}, "catalyst 'Cu3Zn'"), ({"alloys": ["Cu"]}, "pure metal"),
                     ({"ood_alloys": ["Cu3Au"]}, "Au.*no training system"),
                     ({"n_systems": {"training": 3}}, "training")):
        with pytest.raises(ValueError, match=msg):
            generate_catalysis(tmp_path, **{**KW, **bad})
    for name, atoms in ADSORBATES.items():  # binding atom first, at the origin
        assert atoms[0][1] == (0.0, 0.0, 0.0) and atoms[0][0] in "CNOH", name
