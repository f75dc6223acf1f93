"""Stage continuity: a trained-like checkpoint (untrained seeded FAENet) swept end to end; outputs and config."""

import json

import pytest
import torch
import yaml
from torch_geometric.data import Data

from baselines.registry import build_model
from faenet.data.store import write_lmdb
from faenet.graph import radius_graph
from pipeline import continuity as stage
from pipeline.config import PARAMS_PATH, ConfigError, parse_params
from pipeline.reporting import continuity as report

pytestmark = pytest.mark.usefixtures("one_thread")

HP = {"hidden_channels": 16, "num_filters": 16, "num_interactions": 1, "num_gaussians": 8, "tag_hidden_channels": 0,
      "pg_hidden_channels": 4, "phys_embeds": False, "cutoff": 5.0, "regress_forces": "from_energy"}


def _params(**cont):
    raw = yaml.safe_load(PARAMS_PATH.read_text())
    raw["profile"] = "smoke"
    raw["profiles"]["smoke"]["continuity"] = {"cells": ["faenet-qm7x-sfa"], "n_points": 7, "n_draws": 2,
                                              "candidates": 3, **cont}
    raw["profiles"]["smoke"]["train"]["only"] = ["faenet-qm7x-sfa"]
    return parse_params(raw, check_models=False)


def _molecule(seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(6, 3, generator=g) * torch.tensor([1.5, 1.0, 0.5])
    ei, off = radius_graph(pos, 5.0, 50)
    return Data(pos=pos, atomic_numbers=torch.tensor([6, 6, 8, 1, 1, 1]), natoms=6, tags=torch.ones(6).long(),
                fixed=torch.zeros(6).long(), cell=torch.zeros(1, 3, 3), pbc=torch.zeros(1, 3, dtype=torch.bool),
                edge_index=ei, cell_offsets=off, y=-1.0, force=torch.zeros(6, 3), sid=seed, fid=0)


def test_stage_sweeps_a_checkpoint_and_writes_outputs(tmp_path):
    params = _params()
    if ("faenet", "qm7x", "sfa") not in params.trained_cells():
        pytest.skip("smoke profile does not train faenet-qm7x-sfa")
    write_lmdb(tmp_path / "data" / "qm7x" / "val_id.lmdb", [_molecule(k) for k in range(3)])
    torch.manual_seed(0)
    net = build_model("faenet", **HP)
    seed = params.active.train.seeds_for("faenet", "qm7x")[0]
    (tmp_path / "models" / "faenet-qm7x-sfa").mkdir(parents=True)
    torch.save({"model": net.state_dict(), "model_name": "faenet", "hparams": HP, "symmetry": "sfa",
                "normalizer": {"mean": -1.0, "std": 0.5, "element_shift": None}, "rewiring": "none"},
               tmp_path / "models" / "faenet-qm7x-sfa" / f"seed{seed}.pt")
    res = stage.run_stage(params, tmp_path / "data", tmp_path / "models")
    r = res["cells"]["faenet-qm7x-sfa"]
    assert set(r["energy"]) == {"none", "sfa-mean", "full"} and len(r["t"]) == 7
    assert r["eigengap"][r["crossing_index"]] < 1e-5  # float32 positions: ~1e-8 measured
    report.write_outputs(res, tmp_path / "r.json", tmp_path / "h.json", tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert "seconds" not in json.loads((tmp_path / "r.json").read_text())["cells"]["faenet-qm7x-sfa"]
    assert "full_jump_ratio" in json.loads((tmp_path / "h.json").read_text())["faenet-qm7x-sfa"]


@pytest.mark.parametrize("bad", [{"n_points": 8}, {"width": 1.5}])
def test_config_rejects_bad_paths(bad):
    with pytest.raises(ConfigError):
        _params(**bad)
