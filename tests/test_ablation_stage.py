"""Stage `ablation` on a micro setup: a tiny IS2RE LMDB set in a tmp dir, 2 Table 6 variants, 1 epoch.

Checks the metrics schema (what a claims audit reads), the Table 6 files, that finished variants are not
trained again (and keep their MLflow runs), and the error for an unknown row name.
"""

from __future__ import annotations

import copy
import csv
import json
import statistics

import pytest
import torch
import yaml

import pipeline.runs
from faenet.data.store import write_lmdb
from faenet.throughput import oc20_like_slabs
from pipeline.ablation import BASELINE, VAL_SPLITS, run_ablation, variant_slug
from pipeline.config import PARAMS_PATH, ConfigError, parse_params

VARIANTS = [BASELINE, "Simple Energy Head"]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    data = root / "data" / "is2re"
    g = torch.Generator().manual_seed(0)
    sizes = {"train": 8, **{s: 2 for s in VAL_SPLITS}}
    for k, (split, n) in enumerate(sizes.items()):
        recs = oc20_like_slabs(n, size=(2, 2, 2), seed=k, cutoff=5.0, max_neighbors=20)
        for i, r in enumerate(recs):
            r.y = float(torch.randn(1, generator=g))
            r.sid = 100 * k + i
        write_lmdb(data / f"{split}.lmdb", recs)
    raw = yaml.safe_load(PARAMS_PATH.read_text())
    raw["profile"] = "smoke"
    prof = raw["profiles"]["smoke"]
    prof["train"]["is2re"] = {"epochs": 1, "batch_size": 4, "lr": 0.002}
    prof["train"]["eval_batch_size"] = 4
    prof["ablation"] = {"variants": VARIANTS, "seeds": [0, 1], "epochs": 1, "throughput_batch_size": 2,
                        "throughput_batches": 1, "throughput_warmup": 0, "throughput_repeats": 2}
    return root, raw


def _run(root, raw, monkeypatch):
    monkeypatch.setattr(pipeline.runs, "WORK", root / "work")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.chdir(root)
    params = parse_params(copy.deepcopy(raw))
    return run_ablation(params, data_dir=root / "data" / "is2re", results_path=root / "results" / "ablation.json",
                        tables_dir=root / "reports" / "tables", headline_path=root / "metrics" / "ablation.json")


@pytest.fixture(scope="module")
def first_run(micro):
    root, raw = micro
    with pytest.MonkeyPatch.context() as mp:
        result = _run(root, raw, mp)
    return root, raw, result


def test_metrics_schema_and_values(first_run):
    root, _, result = first_run
    on_disk = json.loads((root / "results" / "ablation.json").read_text())
    assert on_disk["order"] == VARIANTS == result["order"]
    assert on_disk["baseline"] == BASELINE
    p = on_disk["protocol"]
    assert p["eval_splits"] == list(VAL_SPLITS) and p["seeds"] == [0, 1] and p["n_train"] == 8
    assert p["train_settings"]["epochs"] == 1 and p["mae_unit"] == "meV"
    assert p["base_hparams"]["mp_type"] == "base" and p["base_hparams"]["energy_head"] == "weighted-av-final-embeds"
    need = {"n_graphs", "batch_size", "atoms_per_graph", "edges_per_graph", "repeats", "threads"}
    assert need <= set(p["throughput"])
    for v in VARIANTS:
        r = on_disk["variants"][v]
        assert set(r["mae_mev"]) == {*VAL_SPLITS, "average"}
        per_seed = r["mae_mev"]["average"]["per_seed"]
        assert len(per_seed) == 2 and all(x > 0 for x in per_seed)
        # average = mean over the four val splits, seed by seed
        for k in range(2):
            assert per_seed[k] == pytest.approx(statistics.fmean(r["mae_mev"][s]["per_seed"][k] for s in VAL_SPLITS))
        assert r["mae_mev"]["average"]["mean"] == pytest.approx(statistics.fmean(per_seed))
        assert r["throughput"]["samples_per_s"] > 0 and len(r["throughput"]["samples_per_s_per_repeat"]) == 2
        assert len(r["mlflow_run_ids"]) == 2 and r["n_params"] > 0
        assert r["paper"]["infer"] is not None and r["paper"]["mae"] is not None
    assert on_disk["variants"]["Simple Energy Head"]["switches"] == {"energy_head": ""}
    assert on_disk["variants"]["Simple Energy Head"]["hparams"]["energy_head"] == ""
    base = on_disk["variants"][BASELINE]
    assert base["vs_baseline"] == {"mae_delta_mev": 0.0, "throughput_ratio": 1.0}
    seh = on_disk["variants"]["Simple Energy Head"]
    assert seh["vs_baseline"]["mae_delta_mev"] == pytest.approx(
        seh["mae_mev"]["average"]["mean"] - base["mae_mev"]["average"]["mean"])
    assert seh["paper"]["mae_delta_mev"] == 589 - 568
    assert sorted(on_disk["rankings"]["ours"]["mae"]) == sorted(VARIANTS)
    assert on_disk["rankings"]["paper"]["mae"] == [BASELINE, "Simple Energy Head"]
    assert on_disk["best_mae"]["paper"] == BASELINE and on_disk["fastest"]["paper"] == "Simple Energy Head"
    assert on_disk["best_mae"]["ours"] in VARIANTS and on_disk["throughput_mlflow_run_id"]
    # The DVC metric: MAE and throughput per row, from the same numbers.
    head = json.loads((root / "metrics" / "ablation.json").read_text())
    assert head == {"profile": "smoke", "rows": {v: {
        "mae_meV": on_disk["variants"][v]["mae_mev"]["average"]["mean"],
        "mae_meV_std": on_disk["variants"][v]["mae_mev"]["average"]["std"],
        "samples_per_s": on_disk["variants"][v]["throughput"]["samples_per_s"]} for v in VARIANTS}}


def test_table6_written_in_the_paper_layout(first_run):
    root, _, result = first_run
    md = (root / "reports" / "tables" / "table6.md").read_text()
    header = "| Component | Throughput (samples/s), ours | Throughput, paper | MAE (meV, average), ours | MAE, paper |"
    assert header in md
    assert "| FAENet (baseline) |" in md and "| – Simple Energy Head |" in md
    assert "| 2129 |" in md and "| 568 |" in md and "| 2224 |" in md and "| 589 |" in md
    assert "±" in md  # two seeds: mean ± std
    assert "energy_head=''" in md  # the row-name mapping note
    with (root / "reports" / "tables" / "table6.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["component"] for r in rows] == VARIANTS
    assert float(rows[0]["mae_mev_mean"]) == pytest.approx(result["variants"][BASELINE]["mae_mev"]["average"]["mean"])
    assert len(rows[1]["mlflow_run_ids"].split()) == 2


def test_resume_skips_finished_variants(first_run, monkeypatch):
    root, raw, result = first_run
    import faenet.training

    calls = []
    real_train = faenet.training.train

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(faenet.training, "train", counting_train)
    again = _run(root, raw, monkeypatch)
    assert calls == []  # every variant and seed finished before: nothing trained
    for v in VARIANTS:
        assert again["variants"][v]["mlflow_run_ids"] == result["variants"][v]["mlflow_run_ids"]
        assert again["variants"][v]["mae_mev"] == result["variants"][v]["mae_mev"]
    # one more row: only its two seeds train
    raw2 = copy.deepcopy(raw)
    raw2["profiles"]["smoke"]["ablation"]["variants"] = [*VARIANTS, "No complex MP"]
    third = _run(root, raw2, monkeypatch)
    assert len(calls) == 2
    assert third["order"] == [BASELINE, "No complex MP", "Simple Energy Head"]  # Table 6 order
    assert (root / "work" / "results" / "ablation" / variant_slug("No complex MP")).is_dir()


def test_unknown_row_is_a_config_error(micro, monkeypatch):
    root, raw = micro
    raw2 = copy.deepcopy(raw)
    raw2["profiles"]["smoke"]["ablation"]["variants"] = ["Only rij"]
    with pytest.raises(ConfigError, match="Only r_ij"):
        _run(root, raw2, monkeypatch)
