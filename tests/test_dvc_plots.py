"""`dvc plots show` draws one learning-curve line per seed (and per QM9 property), not one zig-zag through all.

A tiny DVC repo in tmp holds curves written by the train stage's writer (``pipeline.reporting.train.write_curves``), the
project's plots definition of the train stage (dvc.yaml) and its template (``.dvc/plots/``); the rendered
vega-lite spec (``dvc plots show --json``) must colour the lines by run and carry every run's points.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.reporting.train import CURVE_Y, curve_series, write_curves

ROOT = Path(__file__).resolve().parent.parent
DVC = str(Path(sys.executable).parent / "dvc")
EPOCHS = 3


def _runs(seeds: list[int], targets: list[str], val_split: str) -> list[dict]:
    """Run records as ``pipeline.runs`` returns them (history rows with the val split's prefix)."""
    return [{"seed": s, "target": t, "history": [
        {"epoch": e, "lr": 1e-3, "epoch_seconds": 0.1, "train_loss": 1.0 / e, f"{val_split}_energy_mae": 1.0 / (e + s),
         f"{val_split}_energy_ewt": 0.0} for e in range(1, EPOCHS + 1)]} for t in targets for s in seeds]


def test_plots_show_one_line_per_seed_and_qm9_property(tmp_path):
    cells = {"faenet-is2re-sfa": ([0, 1, 2], ["energy"], "val_id"), "faenet-qm9-sfa": ([0, 1], ["gap", "mu"], "val"),
             "schnet-s2ef-none": ([], [], "")}  # an untrained cell: header only
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, capture_output=True)
    # What `dvc init` makes that plots need (a .dvc/ with a config), without its ~4 s process start.
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    (repo / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    train = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "foreach": {c: {"model": "m"} for c in cells}, "do": {"cmd": "true", "plots": train["plots"]}}}}))
    for cell, (seeds, targets, split) in cells.items():
        write_curves(repo / "results" / "curves" / f"{cell}.csv", _runs(seeds, targets, split), split)

    res = subprocess.run([DVC, "plots", "show", "--json"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert not shown.get("errors"), shown["errors"]
    assert shown["data"]["results/curves/schnet-s2ef-none.csv"] == []  # nothing to draw, and no error
    for cell, (seeds, targets, _) in cells.items():
        if not seeds:
            continue
        (plot,) = shown["data"][f"results/curves/{cell}.csv"]
        spec = plot["content"]
        assert spec["encoding"]["color"]["field"] == "series", spec["encoding"]  # one colour (line) per run
        assert spec["encoding"]["y"]["field"] == CURVE_Y and spec["encoding"]["x"]["field"] == "epoch"
        assert spec["title"] == cell
        points = spec["data"]["values"]
        series = {p["series"] for p in points}
        assert series == {curve_series(s, t) for t in targets for s in seeds}
        assert len(series) == len(seeds) * len(targets)  # 3 lines for 3 seeds; 4 for 2 seeds x 2 QM9 properties
        for name in series:  # each line is its own run's curve, epochs in order
            assert [int(p["epoch"]) for p in points if p["series"] == name] == list(range(1, EPOCHS + 1))
    qm9 = shown["data"]["results/curves/faenet-qm9-sfa.csv"][0]["content"]["data"]["values"]
    assert {p["series"] for p in qm9} == {"gap-seed0", "gap-seed1", "mu-seed0", "mu-seed1"}
    assert {p["val_split"] for p in qm9} == {"val"}
