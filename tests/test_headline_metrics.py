"""Each stage's DVC metric (``metrics/``) is a short headline of its full results (``results/``).

``dvc metrics show/diff`` list every numeric leaf of every metrics file; the full results hold hundreds to
thousands each. On the committed results of the default profile (real stage outputs), every stage's
``headline`` stays small, equals the committed headline file, and dvc.yaml declares headlines as metrics and
full results as plain outputs.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from faenet.tasks import EVAL_SPLITS, FORCE_TASKS
from pipeline.reporting.train import headline as train_headline

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("fetch", "symmetry", "expressivity", "benchmark", "ablation")
MAX_LEAVES = 60
MAX_LEAVES_TRAIN_CELL = 15
TRAIN_CELLS = sorted((ROOT / "results" / "train").glob("*.json"))


def numeric_leaves(x: Any) -> int:
    """Numbers (and null metric slots) that `dvc metrics show` would list, lists included."""
    if isinstance(x, bool) or isinstance(x, str):
        return 0
    if x is None or isinstance(x, int | float):
        return 1
    if isinstance(x, dict):
        return sum(numeric_leaves(v) for v in x.values())
    if isinstance(x, list):
        return sum(numeric_leaves(v) for v in x)
    return 0


@pytest.mark.parametrize("stage", STAGES)
def test_stage_headline_is_small_and_committed(stage):
    full = json.loads((ROOT / "results" / f"{stage}.json").read_text())
    head = importlib.import_module(f"pipeline.{stage}").headline(full)
    n = numeric_leaves(head)
    assert 0 < n <= MAX_LEAVES, f"{stage}: headline has {n} numbers (full results: {numeric_leaves(full)})"
    assert head == json.loads((ROOT / "metrics" / f"{stage}.json").read_text()), \
        f"metrics/{stage}.json is not the headline of results/{stage}.json: rerun `dvc repro {stage}`"


@pytest.mark.parametrize("path", TRAIN_CELLS, ids=[p.stem for p in TRAIN_CELLS])
def test_train_cell_headline_is_small_and_committed(path):
    full = json.loads(path.read_text())
    head = train_headline(full)
    assert numeric_leaves(head) <= MAX_LEAVES_TRAIN_CELL, (path.stem, numeric_leaves(head))
    assert head == json.loads((ROOT / "metrics" / "train" / path.name).read_text())
    if full["trained"] and full["dataset"] != "qm9":
        split = EVAL_SPLITS[full["dataset"]][0]  # the headline's main split (md17: "val")
        assert head[split]["energy_mae"] == full["splits"][split]["energy_mae"]["mean"]
        assert head["test"]["energy_mae_std"] == full["splits"]["test"]["energy_mae"]["std"]
        assert ("force_mae" in head[split]) == (full["dataset"] in FORCE_TASKS)


def test_train_headline_of_every_qm9_property_stays_small():
    # The paper profile trains the 12 QM9 properties: the headline keeps one number per property.
    full = json.loads((ROOT / "results" / "train" / "faenet-qm9-sfa.json").read_text())
    stat = {"mean": 0.5, "std": 0.1, "per_seed": [0.4, 0.6]}
    props = ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv"]
    full["splits"] = {s: {f"{p}_mae": stat for p in props} for s in ("val", "test")}
    head = train_headline(full)
    assert set(head["test"]) == {f"{p}_mae" for p in props} and numeric_leaves(head) == 13


def test_dvc_yaml_declares_headlines_as_metrics_and_full_results_as_outputs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def paths(entries: list) -> set[str]:
        return {next(iter(e)) if isinstance(e, dict) else e for e in entries}

    for stage in STAGES:
        assert paths(stages[stage]["metrics"]) == {f"metrics/{stage}.json"}, stage
        assert f"results/{stage}.json" in paths(stages[stage]["outs"]), stage
    train = stages["train"]["do"]
    assert paths(train["metrics"]) == {"metrics/train/${key}.json"}
    assert "results/train/${key}.json" in paths(train["outs"])
    # The report reads the full results only.
    report_deps = set(stages["report"]["deps"])
    assert {f"results/{s}.json" for s in STAGES} | {"results/train"} <= report_deps
    assert not any(d.startswith("metrics/") and d != "metrics/validated.json" for d in report_deps)
