"""Stage `expressivity` (pipeline/expressivity.py): tables, JSON schema, known answers, determinism, MLflow."""

from __future__ import annotations

import csv
import json

import pytest

from faenet.expressivity import pair_congruence
from faenet.expressivity_runs import Experiment, build_pair, plan, resolved_hparams, run_experiments
from pipeline.config import ConfigError, ExpressivityConfig
from pipeline.expressivity import run_stage
from pipeline.reporting.expressivity_tables import reported
from pipeline.reporting.table_writer import load_paper

TINY = {"schnet": {"hidden_channels": 16, "num_filters": 16, "num_gaussians": 8},
        "faenet": {"hidden_channels": 16, "num_filters": 16, "num_gaussians": 8, "tag_hidden_channels": 0,
                   "pg_hidden_channels": 0, "phys_embeds": False}}
MICRO = ExpressivityConfig(models=["schnet", "faenet-full"], n_seeds=2, epochs=3, kchain_layers=[1], folds=[3],
                           body_pairs=["3body", "4body_chiral"], strict_transforms=4, paper_draws=2, workers=1,
                           hparams=TINY)
CELL_KEYS = {"pair", "layers", "model", "paper", "strict", "reported", "best_epoch", "best_val_acc", "final_loss",
             "n_params", "seconds", "mlflow_run_id"}


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("expressivity")
    metrics = run_stage(MICRO, profile="micro", tables_dir=out / "tables", results_path=out / "expressivity.json",
                        headline_path=out / "headline.json", track=False, progress=False)
    return out, metrics


def test_stage_writes_tables_and_a_json_with_the_schema(stage):
    out, metrics = stage
    on_disk = json.loads((out / "expressivity.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["profile"] == "micro"
    assert set(on_disk["table3"]) == set(on_disk["table4"]) == set(on_disk["table5"]) == {"schnet", "faenet-full"}
    assert set(on_disk["table3"]["schnet"]) == {"1"} and set(on_disk["table4"]["schnet"]) == {"3"}
    assert set(on_disk["table5"]["faenet-full"]) == {"3body", "4body_chiral"}
    for table in ("table3", "table4", "table5"):
        for cells in on_disk[table].values():
            for cell in cells.values():
                assert set(cell) == CELL_KEYS
                for protocol in ("paper", "strict"):
                    s = cell[protocol]
                    assert len(s["per_seed"]) == 2 and all(0 <= a <= 100 for a in s["per_seed"])
                    assert s["mean"] == pytest.approx(sum(s["per_seed"]) / 2)
                    assert s["std"] == pytest.approx(abs(s["per_seed"][0] - s["per_seed"][1]) / 2)  # population
                assert len(cell["best_epoch"]) == 2 and cell["mlflow_run_id"] is None and cell["n_params"] > 0
    assert on_disk["models"]["faenet-full"]["invariance"].startswith("FA")
    assert on_disk["models"]["schnet"]["hparams"]["cutoff"] == 10.0  # the dojo cutoff unless given
    assert on_disk["config"]["n_seeds"] == 2 and on_disk["protocol"]["epochs"] == 3
    for name in ("table3", "table4", "table5"):
        md = (out / "tables" / f"{name}.md").read_text()
        assert "ours · paper protocol" in md and "ours · strict protocol" in md and "congruent E(3) / SE(3)" in md
        rows = list(csv.DictReader((out / "tables" / f"{name}.csv").open()))
        ours = [r for r in rows if r["ours_paper_mean"]]
        assert len(ours) == sum(len(c) for c in on_disk[name].values())
        assert all("mlflow_run_id" in r for r in rows)
    t3 = (out / "tables" / "table3.md").read_text()
    assert "| Inv. | IGWL | ours (model not in this project) | – |" in t3  # paper-only rows
    assert "ours (not run in this profile)" in t3  # DimeNet++ is a project model, not in MICRO


def test_congruence_column_is_computed(stage):
    _, metrics = stage
    for pair, verdict in metrics["congruence"].items():
        assert verdict == pair_congruence(build_pair(pair, MICRO))
    assert metrics["congruence"]["4body_chiral"] == {"E3": True, "SE3": True}
    assert metrics["congruence"]["3body"] == {"E3": False, "SE3": False}
    rows = list(csv.DictReader((stage[0] / "tables" / "table5.csv").open()))
    by_pair = {r["pair"]: r["congruent_E3"] for r in rows if r["row"] == "schnet"}
    assert by_pair == {"2body": "", "3body": "False", "4body_chiral": "True"}  # 2body not run: no verdict


def test_invariant_models_cannot_beat_chance_on_a_congruent_pair(stage):
    _, metrics = stage
    # SchNet is exactly E(3)-invariant; full FA is invariant here since both graphs give the same frame inputs.
    assert metrics["frames"]["4body_chiral"]["inputs_match"]["E3"]
    for model in ("schnet", "faenet-full"):
        cell = metrics["table5"][model]["4body_chiral"]
        assert max(cell["strict"]["per_seed"]) <= 50.0
        assert max(cell["paper"]["per_seed"]) <= 50.0


def test_paper_values_are_attached_to_rows(stage):
    out, metrics = stage
    paper = load_paper()
    for table in ("table3", "table4", "table5"):
        assert paper[table]["title"] and paper[table]["rows"]
    assert reported("table3", "faenet", "1") == {"mean": 100.0, "std": 0.0}
    assert reported("table3", "gwl", "3") == {"mean": 100.0, "std": None}
    assert reported("table3", "mace", "5") == {"mean": 95.0, "std": 15.0}
    assert reported("table4", "tfn_mace_l3", "5") == {"mean": 50.0, "std": 0.0}
    assert reported("table5", "dimenet_pp", "2body") == {"mean": 100.0, "std": 0.0}
    assert reported("table5", "faenet-sfa", "4body_chiral") == {"mean": 100.0, "std": 0.0}
    assert reported("table5", "faenet", "4body_nonchiral") is None  # not in the paper
    assert metrics["table3"]["schnet"]["1"]["reported"] == {"mean": 50.0, "std": 0.0}
    # Paper columns are the stage's column keys (layers 1-5, folds 2/3/5/7, the body-pair names).
    default = ExpressivityConfig()
    assert {str(k) for k in paper["table3"]["rows"]["faenet"]["mean"]} == {str(n) for n in default.kchain_layers}
    assert {str(k) for k in paper["table4"]["rows"]["faenet"]["mean"]} == {str(f) for f in default.folds}
    assert set(paper["table5"]["rows"]["faenet"]["mean"]) <= set(default.body_pairs)
    rows = list(csv.DictReader((out / "tables" / "table4.csv").open()))
    tfn = {r["column"]: r["paper_mean"] for r in rows if r["row"] == "tfn_mace_l2"}
    assert tfn == {"2": "100.0", "3": "50.0", "5": "50.0", "7": "50.0"}
    assert "paper (FAENet (L=0)) | 100.0 ± 0.0" in (out / "tables" / "table4.md").read_text()


def test_results_do_not_depend_on_worker_count():
    cfg = MICRO.model_copy(update={"models": ["faenet", "faenet-sfa"], "epochs": 2})
    exps = [e for e in plan(cfg) if e.pair in ("kchain_4", "3body")]

    def strip(res):
        return {k: {f: v for f, v in r.items() if f not in ("seconds", "cpu_seconds")} for k, r in res.items()}

    one = run_experiments(cfg, exps, progress=False)
    two = run_experiments(cfg.model_copy(update={"workers": 2}), exps, progress=False)
    assert list(one) == [e.name for e in exps] and strip(one) == strip(two)


def test_configuration_errors_name_the_key(tmp_path):
    # The stage turns the library's ValueError into a ConfigError, before any training or writing.
    with pytest.raises(ConfigError, match=r"expressivity\.hparams\.schnet: .*unknown hyperparameter"):
        run_stage(MICRO.model_copy(update={"hparams": {"schnet": {"width": 3}}}), profile="micro",
                  tables_dir=tmp_path / "t", results_path=tmp_path / "r.json", headline_path=tmp_path / "h.json",
                  track=False, progress=False)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"hparams\.schnet\.num_interactions: the stage sets it"):
        resolved_hparams(MICRO.model_copy(update={"hparams": {"schnet": {"num_interactions": 3}}}), "schnet", 1)
    with pytest.raises(ValueError, match=r"hparams\.faenet\.cutoff=6\.0 Å drops edges"):
        resolved_hparams(MICRO.model_copy(update={"hparams": {"faenet": {**TINY["faenet"], "cutoff": 6.0}}}),
                         "faenet-full", 1, max_edge=8.66)
    with pytest.raises(ValueError, match=r"hparams\.schnet: .*unknown hyperparameter"):
        resolved_hparams(MICRO.model_copy(update={"hparams": {"schnet": {"width": 3}}}), "schnet", 1)
    with pytest.raises(ValueError, match="rotsym_r=3 must lie in 1..fold"):
        ExpressivityConfig(folds=[2, 5], rotsym_r=3)
    # Full-name hparams are merged over the base model's.
    cfg = MICRO.model_copy(update={"hparams": {**TINY, "faenet-full": {"hidden_channels": 24}}})
    assert resolved_hparams(cfg, "faenet-full", 2)["hidden_channels"] == 24
    assert resolved_hparams(cfg, "faenet-full", 2)["num_interactions"] == 2
    assert Experiment("table3", "faenet", "kchain_4", 2, "2").name == "faenet-kchain_4-L2"


def test_headline_summarises_the_tables(stage):
    out, metrics = stage
    head = json.loads((out / "headline.json").read_text())
    assert head["profile"] == "micro" and set(head["separation_rate"]) == {"schnet", "faenet-full"}
    assert {t: head["tables"][t]["cells"] for t in ("table3", "table4", "table5")} == {"table3": 2, "table4": 2,
                                                                                        "table5": 4}
    # SchNet on Table 5: the share of its (pair, seed) runs at 100% under the paper protocol.
    runs = [a for c in metrics["table5"]["schnet"].values() for a in c["paper"]["per_seed"]]
    assert head["separation_rate"]["schnet"]["table5"] == sum(a == 100.0 for a in runs) / len(runs)
    for t in head["tables"].values():
        assert t["match_paper"] is None if not t["reported"] else 0 <= t["match_paper"] <= 1


def test_mlflow_runs_hold_the_per_seed_accuracies(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = MICRO.model_copy(update={"models": ["schnet"], "body_pairs": ["3body"], "epochs": 2})
    metrics = run_stage(cfg, profile="micro", tables_dir=tmp_path / "tables", results_path=tmp_path / "m.json",
                        headline_path=tmp_path / "h.json", tags={"profile": "micro"}, progress=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    cell = metrics["table5"]["schnet"]["3body"]
    run = client.get_run(cell["mlflow_run_id"])
    assert run.data.params["pair"] == "3body" and run.data.tags["dvc_stage"] == "expressivity"
    history = client.get_metric_history(run.info.run_id, "acc_strict")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == cell["strict"]["per_seed"]
    ids = {r["mlflow_run_id"] for r in csv.DictReader((tmp_path / "tables" / "table5.csv").open())} - {""}
    assert cell["mlflow_run_id"] in ids
