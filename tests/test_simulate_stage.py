"""pipeline/simulate.py and its library/reporting halves (faenet.simulation, pipeline.reporting.simulate): which
runs a cell gets, records -> Atoms (tags, FixAtoms), and the outputs written from a small real result (EMT
control runs)."""

import json

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111

from faenet.calculator import atoms_tags, fixed_mask
from faenet.simulation import measure_nve, record_to_atoms, reference_calculator, relaxation_runs, run_plan
from pipeline.config import SimulateConfig
from pipeline.reporting.simulate import summary_rows, write_outputs
from pipeline.simulate import _run


def test_run_plan_follows_the_model_heads_and_frames():
    cfg = SimulateConfig(force_modes=["direct", "from_energy"], frame_policies=["full", "redraw"])
    modes = (cfg.force_modes, cfg.frame_policies)
    assert run_plan("direct_with_gradient_target", "sfa", *modes) == [("direct", "full"), ("from_energy", "full"),
                                                                      ("direct", "redraw")]
    assert run_plan("from_energy", "none", *modes) == [("from_energy", None)]
    assert run_plan("direct", "da", *modes) == [("direct", None), ("from_energy", None)]
    only = SimulateConfig(force_modes=["from_energy"], frame_policies=["fixed"])
    assert run_plan("direct", "full", only.force_modes, only.frame_policies) == [("from_energy", "fixed")]


def _slab_record():
    from faenet.data.records import validate_record

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    tags = np.array([1] * (len(slab) - 1) + [2])
    tags[:4] = 0
    fixed = (tags == 0).astype(np.int64)
    from torch_geometric.data import Data

    rec = Data(pos=torch.tensor(slab.positions, dtype=torch.float32), atomic_numbers=torch.tensor(slab.numbers),
               natoms=len(slab), tags=torch.tensor(tags), fixed=torch.tensor(fixed),
               cell=torch.tensor(slab.cell.array, dtype=torch.float32).reshape(1, 3, 3),
               pbc=torch.tensor([[True, True, False]]), edge_index=torch.zeros(2, 0, dtype=torch.long),
               cell_offsets=torch.zeros(0, 3, dtype=torch.long), y=0.0)
    validate_record(rec)
    return rec


def test_record_to_atoms_keeps_tags_and_fixed_atoms():
    rec = _slab_record()
    atoms = record_to_atoms(rec)
    assert list(atoms.pbc) == [True, True, False]
    np.testing.assert_array_equal(atoms_tags(atoms), rec.tags.numpy())
    np.testing.assert_array_equal(fixed_mask(atoms), rec.fixed.numpy() == 1)
    np.testing.assert_allclose(atoms.positions, rec.pos.double().numpy())


def test_outputs_from_emt_control_runs(tmp_path):
    atoms = record_to_atoms(_slab_record())
    cfg = SimulateConfig(steps=10, interval=5)
    runs = [{"task": "s2ef", "cell": "reference-s2ef", "forces": "reference", "frame_policy": None,
             "structure": "sid0", **_run(atoms, reference_calculator("s2ef"), "s2ef", cfg)}]
    result = {"runs": runs, "jacobian": {}, "config": cfg.model_dump(mode="json")}
    (row,) = summary_rows(result)
    assert row["stable_fraction"] == 1.0 and row["steps"] == 10 and np.isfinite(row["drift_mev_atom_ps"])
    write_outputs(result, 1.0, tables=tmp_path, figure=tmp_path / "fig.png", results=tmp_path / "r.json",
                  headline=tmp_path / "h.json")
    head = json.loads((tmp_path / "h.json").read_text())
    assert head["runs"] == 1 and "reference-s2ef/reference" in head["rows"]
    assert "reference-s2ef" in (tmp_path / "simulate.md").read_text()
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_measure_nve_is_the_stage_run_with_plain_args():
    atoms = record_to_atoms(_slab_record())
    cfg = SimulateConfig(steps=10, interval=5)
    a = _run(atoms, reference_calculator("s2ef"), "s2ef", cfg)
    b = measure_nve(atoms, reference_calculator("s2ef"), 10, cfg.slab_timestep_fs, cfg.temperature_K, cfg.seed, 5)
    assert a.pop("seconds") >= 0 and b.pop("seconds") >= 0
    assert a == b and a["timestep_fs"] == cfg.slab_timestep_fs and a["max_abs_energy_change"] >= 0


def test_relaxation_runs_score_models_by_the_reference_energy():
    from ase.calculators.emt import EMT

    systems = [("sid0", record_to_atoms(_slab_record()))]
    rows = relaxation_runs(systems, ((c, "from_energy", EMT()) for c in ["emt-as-model"]), 0.5, 5)
    assert [r["cell"] for r in rows] == ["reference-s2ef", "emt-as-model"]
    assert rows[0]["emt_energy_error"] == 0.0
    assert rows[1]["energy"] == pytest.approx(rows[0]["energy"]) and abs(rows[1]["emt_energy_error"]) < 1e-9


def test_simulate_config_refuses_unknown_modes():
    with pytest.raises(ValueError):
        SimulateConfig(force_modes=["numerical"])
    with pytest.raises(ValueError):
        SimulateConfig(frame_policies=["full", "full"])
