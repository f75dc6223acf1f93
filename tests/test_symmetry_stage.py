"""Stage `symmetry` (pipeline/symmetry.py) on a fabricated setup in a tmp dir, and faenet.symmetry_eval.

Tiny periodic slabs (IS2RE, and S2EF with forces) written with ``write_lmdb``; untrained tiny FAENets saved
in the train stage's checkpoint format for ``full`` and ``none`` (two seeds); fake train metrics. Checks:
the JSON schema, Full FA invariant / equivariant to float32 precision while ``none`` is not, the tables
with the paper's columns and rows, run ids in JSON and CSV, reproducibility, and clear checkpoint errors.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch_geometric.data import Batch, Data

from baselines.registry import build_model
from faenet.data.dataset import content_hash
from faenet.data.store import write_lmdb
from faenet.graph import radius_graph
from faenet.symmetry import SymmetryWrapper
from faenet.symmetry_eval import DenormalizedPredictor, select_graphs
from faenet.training import Normalizer
from pipeline.config import PARAMS_PATH, ConfigError, parse_params
from pipeline.reporting.schemas import Symmetry
from pipeline.reporting.symmetry import SCHEMA
from pipeline.reporting.symmetry_tables import SPLITS, fmt_stat, ordered_rows
from pipeline.symmetry import StagePaths, run_stage
from pipeline.symmetry_inputs import CheckpointError, StageInputError

SEEDS = [0, 1]
N_VAL = 6
HPARAMS = {"hidden_channels": 32, "num_filters": 16, "num_interactions": 1, "num_gaussians": 8,
           "tag_hidden_channels": 4, "pg_hidden_channels": 4, "cutoff": 4.0}
CELLS = [("faenet", "is2re", "full"), ("faenet", "is2re", "none"), ("faenet", "s2ef", "full"),
         ("faenet", "s2ef", "none")]


pytestmark = pytest.mark.usefixtures("one_thread")


def _slab(seed: int, forces: bool) -> Data:
    """A small periodic slab-like record (6 x 6 Å cell in xy, pbc x, y), random positions and targets."""
    g = torch.Generator().manual_seed(seed)
    n = 7 + seed % 3
    pos = torch.rand(n, 3, generator=g) * torch.tensor([6.0, 6.0, 5.0])
    cell = torch.diag(torch.tensor([6.0, 6.0, 25.0]))
    ei, off = radius_graph(pos, 4.0, 12, cell, (True, True, False))
    z_rank = pos[:, 2].argsort().argsort()
    tags = torch.where(z_rank < 3, 0, torch.where(z_rank < n - 2, 1, 2))
    rec = Data(pos=pos, atomic_numbers=torch.where(tags == 2, 8, 29), natoms=n, tags=tags,
               fixed=(tags == 0).long(), cell=cell[None], pbc=torch.tensor([[True, True, False]]),
               edge_index=ei, cell_offsets=off, y=float(-1.0 - torch.rand(1, generator=g)), sid=seed)
    if forces:
        rec.force = torch.randn(n, 3, generator=g) * 0.3
        rec.fid = 0
    return rec


def _params(**symmetry):
    raw = yaml.safe_load(PARAMS_PATH.read_text())
    raw["profile"] = "smoke"
    prof = raw["profiles"]["smoke"]
    prof["symmetry"] = {"n_transforms": 2, "max_graphs": 5, "batch_size": 3, **symmetry}
    prof["train"]["seeds"] = SEEDS
    prof["hparams"]["faenet"] = {"common": HPARAMS}
    return parse_params(raw, check_models=False)


def _setup(root: Path) -> StagePaths:
    paths = StagePaths.under(root)
    for task in ("is2re", "s2ef"):
        forces = task == "s2ef"
        write_lmdb(paths.data / task / "train.lmdb", [_slab(100 + i, forces) for i in range(8)])
        write_lmdb(paths.data / task / "val_id.lmdb", [_slab(i, forces) for i in range(N_VAL)])
    for model, task, method in CELLS:
        cell = f"{model}-{task}-{method}"
        hp = {**HPARAMS, "regress_forces": "direct" if task == "s2ef" else ""}
        runs = []
        for seed in SEEDS:
            torch.manual_seed(seed)
            net = build_model(model, **hp)
            (paths.models / cell).mkdir(parents=True, exist_ok=True)
            torch.save({"model": net.state_dict(), "model_name": model, "hparams": hp, "symmetry": method,
                        "normalizer": {"mean": -1.5, "std": 0.4, "element_shift": None}, "seed": seed,
                        "task": task, "target": "energy", "rewiring": "none",
                        "data_hash": content_hash(paths.data / task)}, paths.models / cell / f"seed{seed}.pt")
            runs.append({"seed": seed, "target": "energy", "run_id": f"train-{cell}-{seed}"})
        metrics = {"cell": cell, "trained": True, "model": model, "dataset": task, "symmetry": method,
                   "profile": "smoke", "seeds": SEEDS, "runs": runs, "mlflow_run_ids": [r["run_id"] for r in runs],
                   "splits": {"val_id": {"energy_mae": {"mean": 0.5, "std": 0.1, "per_seed": [0.4, 0.6]}}}}
        paths.train_results.mkdir(parents=True, exist_ok=True)
        (paths.train_results / f"{cell}.json").write_text(json.dumps(metrics))
    # A cell that was not trained is ignored.
    (paths.train_results / "schnet-is2re-none.json").write_text(json.dumps(
        {"cell": "schnet-is2re-none", "trained": False, "reason": "not trained"}))
    return paths


class FakeLogger:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, name, params, tags, metrics, artifacts) -> str:
        self.calls.append((name, dict(params), dict(tags), dict(metrics), dict(artifacts)))
        return f"run-{len(self.calls)}"


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("symstage")
    paths = _setup(root)
    logger = FakeLogger()
    result = run_stage(_params(), paths, logger, progress=False)
    return root, paths, result, logger


def _no_nan(x):
    raise AssertionError(f"non-JSON constant {x} in results/symmetry.json")


def test_json_schema_and_run_ids(stage):
    _, paths, result, logger = stage
    on_disk = json.loads(paths.results.read_text(), parse_constant=_no_nan)
    assert on_disk == json.loads(json.dumps(result))
    # The DVC metric: Rot-I / Refl-I of every evaluated row (F-Rot-E on S2EF), nothing else.
    head = json.loads(paths.headline.read_text(), parse_constant=_no_nan)
    assert paths.headline.parent.name == "metrics" and paths.results.parent.name == "results"
    energy = {"rot_i_meV", "refl_i_meV"}
    for task, names in (("is2re", energy), ("s2ef", energy | {"f_rot_e_meV_per_A"})):
        assert set(head[task]) == set(result[task])
        for cell, h in head[task].items():
            assert set(h) == names and h["rot_i_meV"] == result[task][cell]["all"]["rot_i"]["mean"], cell
    assert result["schema"] == SCHEMA and result["profile"] == "smoke"
    # The schema documents every key of the file and of its rows (nothing left in the models' extras).
    doc = Symmetry.model_validate(on_disk)
    assert not doc.model_extra and not any(r.model_extra for t in (doc.is2re, doc.s2ef) for r in t.values())
    assert result["config"]["n_transforms"] == 2 and result["config"]["seeds"] == SEEDS
    assert result["config"]["split_size"] == {"is2re": N_VAL, "s2ef": N_VAL}
    assert set(result["is2re"]) == {"faenet-is2re-full", "faenet-is2re-none", "faenet-is2re-notrain"}
    assert set(result["s2ef"]) == {"faenet-s2ef-full", "faenet-s2ef-none", "faenet-s2ef-notrain"}
    assert len(logger.calls) == 6 * len(SEEDS)
    ids = []
    for task in ("is2re", "s2ef"):
        for cell, e in result[task].items():
            assert e["n_graphs"] == 5 and e["seeds"] == SEEDS and e["frame_dim"] == 2
            assert e["n_degenerate"] == e["degenerate"]["n_graphs"]
            assert e["degenerate"]["n_graphs"] + e["non_degenerate"]["n_graphs"] == 5
            metrics = {"pos", "pos_refl", "pos_frac", "rot_i", "refl_i", "pct_diff", "mae_meV"}
            if task == "s2ef":
                metrics |= {"f_rot_e", "f_refl_e", "force_mae_meV_per_A"}
            for split in SPLITS:
                assert set(e[split]) == metrics | {"n_graphs"}, (cell, split)
            for k in metrics:
                stat = e["all"][k]
                assert set(stat) == {"mean", "std", "per_seed"} and len(stat["per_seed"]) == len(SEEDS)
                assert math.isclose(stat["mean"], sum(stat["per_seed"]) / len(SEEDS), rel_tol=1e-12)
            assert e["mae_meV"] == e["all"]["mae_meV"]
            assert len(e["mlflow_run_ids"]) == len(SEEDS)
            ids += e["mlflow_run_ids"]
            if e["trained"]:
                assert e["mae_meV_train_val_id"]["per_seed"] == pytest.approx([400.0, 600.0])
                assert e["train_mlflow_run_ids"] == [f"train-{cell}-{s}" for s in SEEDS]
                assert e["checkpoints"] == [f"models/{cell}/seed{s}.pt" for s in SEEDS]
            else:
                assert e["row"] == "faenet-notrain" and e["label"] == "No-Train" and e["symmetry"] == "none"
                assert e["mae_meV_train_val_id"] is None and e["checkpoints"] == []
    assert sorted(ids) == sorted(f"run-{i + 1}" for i in range(len(logger.calls)))
    name, params, tags, metrics, artifacts = logger.calls[0]
    assert tags["dvc_stage"] == "symmetry" and tags["profile"] == "smoke" and tags["cell"] in name
    assert "all_rot_i" in metrics and "non_degenerate_refl_i" in metrics
    assert len(artifacts["symmetry_per_graph.json"]["rot_i"]) == 5


def test_full_fa_is_invariant_to_float_precision_and_none_is_not(stage):
    _, _, result, _ = stage
    for task in ("is2re", "s2ef"):
        full, none = result[task][f"faenet-{task}-full"]["all"], result[task][f"faenet-{task}-none"]["all"]
        assert full["n_graphs"] == 5
        for k in ("rot_i", "refl_i"):  # meV; float32 energies of ~1 eV carry ~1e-4 meV of rounding
            assert full[k]["mean"] < 1e-2, (task, k, full[k])
            assert none[k]["mean"] > 0.1 and none[k]["mean"] > 100 * full[k]["mean"], (task, k)
        assert full["pos_frac"]["mean"] == 0.0 and none["pos_frac"]["mean"] == 1.0
        assert full["pos"]["mean"] < 1e-4 < none["pos"]["mean"]
    s2ef_full, s2ef_none = result["s2ef"]["faenet-s2ef-full"]["all"], result["s2ef"]["faenet-s2ef-none"]["all"]
    for k in ("f_rot_e", "f_refl_e"):  # meV/Å
        assert s2ef_full[k]["mean"] < 1e-2 and s2ef_none[k]["mean"] > 100 * s2ef_full[k]["mean"]


def test_tables_have_paper_columns_rows_and_run_ids(stage):
    _, paths, result, _ = stage
    md11 = (paths.tables / "table11.md").read_text()
    header = md11.splitlines()[2]
    for col in ("Pos (paper)", "Pos frac (ours)", "Pos Å (ours)", "Rot-I (ours)", "Rot-I (paper)",
                "%-diff (ours)", "%-diff (paper)", "Refl-I (ours)", "Refl-I (paper)", "MAE (ours)",
                "MAE (paper)"):
        assert col in header
    rows = [ln.split(" | ")[0].lstrip("| ") for ln in md11.splitlines()[4:7]]
    assert rows == ["Full FA", "No-Train", "No-FA"]  # the paper's order
    assert "| 51.1 |" in md11 and "Split by frame degeneracy" in md11 and "meV" in md11
    md12 = (paths.tables / "table12.md").read_text()
    assert "F-Rot-E (ours)" in md12 and "F-Refl-E (paper)" in md12 and "| 86.03 |" in md12
    rows12 = [ln.split(" | ")[0].lstrip("| ") for ln in md12.splitlines()[4:7]]
    assert rows12 == ["Full FA", "No-FA", "No-Train"]
    with (paths.tables / "table11.csv").open() as fh:
        recs = list(csv.DictReader(fh))
    assert len(recs) == 3 * len(SPLITS)
    assert {r["split"] for r in recs} == set(SPLITS)
    full = [r for r in recs if r["cell"] == "faenet-is2re-full" and r["split"] == "all"][0]
    assert full["mlflow_run_ids"].split(";") == result["is2re"]["faenet-is2re-full"]["mlflow_run_ids"]
    assert float(full["paper_rot_i"]) == 0.07 and full["rot_i_per_seed"].count(";") == len(SEEDS) - 1


def test_same_inputs_give_same_numbers_in_any_job_order(stage, tmp_path, monkeypatch):
    # Every job seeds its own draws, so the numbers cannot depend on which jobs ran before it (in one
    # process or spread over `symmetry.workers` processes, checked by hand: identical with 1 and 2 workers).
    root, paths, result, _ = stage
    import pipeline.symmetry_jobs as jobs_module

    monkeypatch.setattr(jobs_module, "expected_cost", lambda job, jobs: float(jobs.index(job)))  # reversed
    again = run_stage(_params(), StagePaths(paths.data, paths.models, paths.train_results, tmp_path / "t",
                                            tmp_path / "s.json", tmp_path / "h.json"), None, progress=False)

    def strip(r):
        r = copy.deepcopy(r)
        for task in ("is2re", "s2ef"):
            for e in r[task].values():
                e.pop("mlflow_run_ids")
        return r
    assert strip(again) == strip(result)


def test_excluded_cells_are_listed_not_evaluated(stage, tmp_path):
    _, paths, _, _ = stage
    out = StagePaths(paths.data, paths.models, paths.train_results, tmp_path / "t", tmp_path / "s.json",
                     tmp_path / "h.json")
    res = run_stage(_params(exclude=["*-is2re-none"], notrain=False), out, None, progress=False)
    assert set(res["is2re"]) == {"faenet-is2re-full"} and res["config"]["excluded_cells"] == ["faenet-is2re-none"]
    assert "not evaluated (`symmetry.exclude`" in (tmp_path / "t" / "table11.md").read_text()


def test_missing_and_unreadable_checkpoints_fail_clearly(stage, tmp_path):
    _, paths, _, _ = stage
    models = tmp_path / "models"
    shutil.copytree(paths.models, models)
    bad = StagePaths(paths.data, models, paths.train_results, tmp_path / "t", tmp_path / "s.json",
                     tmp_path / "h.json")
    (models / "faenet-is2re-full" / "seed1.pt").unlink()
    with pytest.raises(CheckpointError, match=r"faenet-is2re-full/seed1\.pt.*missing.*dvc repro "
                                              r"train@faenet-is2re-full"):
        run_stage(_params(), bad, None, progress=False)
    (models / "faenet-is2re-full" / "seed1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"seed1\.pt.*unreadable.*rerun"):
        run_stage(_params(), bad, None, progress=False)
    assert not (tmp_path / "s.json").exists()


def test_train_metrics_of_another_profile_fail_clearly(stage, tmp_path):
    _, paths, _, _ = stage
    shutil.copytree(paths.train_results, tmp_path / "train")
    meta = json.loads((tmp_path / "train" / "faenet-is2re-none.json").read_text())
    (tmp_path / "train" / "faenet-is2re-none.json").write_text(json.dumps({**meta, "profile": "default"}))
    stale = StagePaths(paths.data, paths.models, tmp_path / "train", tmp_path / "t", tmp_path / "s.json",
                     tmp_path / "h.json")
    with pytest.raises(StageInputError, match=r"faenet-is2re-none\.json was written under profile 'default'.*"
                                              r"dvc repro train@faenet-is2re-none"):
        run_stage(_params(), stale, None, progress=False)


def test_row_order_puts_other_cells_last_and_formats():
    entries = {c: {"row": r} for c, r in [("mymodel-is2re-none", "mymodel-none"), ("faenet-is2re-sfa", "faenet-sfa"),
                                          ("forcenet-is2re-da", "forcenet-da"), ("faenet-is2re-full", "faenet-full")]}
    assert [c for c, _ in ordered_rows("is2re", entries)] == ["faenet-is2re-full", "faenet-is2re-sfa",
                                                              "forcenet-is2re-da", "mymodel-is2re-none"]
    assert fmt_stat({"mean": 6.5712, "std": 0.123, "per_seed": [6.4, 6.7]}) == "6.57 ± 0.12"
    assert fmt_stat({"mean": 1.8e-4, "std": 0.0, "per_seed": [1.8e-4]}) == "1.8e-04"
    assert fmt_stat({"mean": None, "std": None, "per_seed": [None]}) == "–"


def test_select_graphs_and_denormalized_predictor():
    assert select_graphs(5, 10, 0) == [0, 1, 2, 3, 4]
    sub = select_graphs(100, 7, 3)
    assert sub == sorted(sub) and len(set(sub)) == 7 and sub == select_graphs(100, 7, 3)
    with pytest.raises(ValueError, match="no graphs"):
        select_graphs(0, 4, 0)
    torch.manual_seed(0)
    net = build_model("faenet", **{**HPARAMS, "regress_forces": "direct"})
    batch = Batch.from_data_list([_slab(i, True) for i in range(2)])
    wrapper = SymmetryWrapper(net, "none", frame_dim=2).eval()
    norm = Normalizer(mean=-2.0, std=0.5)
    pred = DenormalizedPredictor(wrapper, norm)(batch)
    with torch.no_grad():
        raw = wrapper(batch)
    assert torch.allclose(pred["energy"], raw["energy"] * 0.5 - 2.0)
    assert torch.allclose(pred["forces"], raw["forces"] * 0.5)
    assert DenormalizedPredictor(wrapper, norm).model is net


def test_config_rejects_qm9():
    raw = yaml.safe_load(PARAMS_PATH.read_text())
    raw["profiles"]["smoke"]["symmetry"] = {"datasets": ["is2re", "qm9"]}
    with pytest.raises(ConfigError, match=r"symmetry.datasets.*qm9 trains one model per molecular property"):
        parse_params(raw, check_models=False)


def test_wrap_i_table_new_frames_zero_pca_not(stage, tmp_path):
    paths = stage[1]
    out = StagePaths(paths.data, paths.models, paths.train_results, tmp_path / "t", tmp_path / "r.json",
                     tmp_path / "h.json")
    res = run_stage(_params(wrap_i={"cells": ["faenet-*"], "max_graphs": 3, "n_transforms": 1}), out, None,
                    progress=False)
    for task in ("is2re", "s2ef"):
        assert "wrap_i" not in res[task][f"faenet-{task}-none"]  # frames unused: not evaluated
        w = res[task][f"faenet-{task}-full"]["wrap_i"]
        assert set(w) == {"pca", "lattice", "edges"} and w["pca"]["n_graphs"] == 3
        for c in ("lattice", "edges"):  # float32 model: rounding only
            assert w[c]["wrap_i_offsets"]["mean"] < 1e-2 and w[c]["wrap_i_translate"]["mean"] < 1e-2
        assert w["pca"]["wrap_i_offsets"]["mean"] > 100 * max(w["lattice"]["wrap_i_offsets"]["mean"], 1e-4)
    md = (tmp_path / "t" / "wrap_i.md").read_text()
    assert "TRAINED with PCA frames" in md and "lattice (Gram-Schmidt of the cell)" in md
    assert "wrap_i_lattice_meV" in json.dumps(json.loads((tmp_path / "h.json").read_text()))
