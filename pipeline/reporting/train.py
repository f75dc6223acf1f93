"""A train cell's results as files (torch-free): the full results ``results/train/<cell>.json``
(``summarize_cell``), their headline ``metrics/train/<cell>.json`` (the DVC metric: ``headline``), the
per-epoch curves ``results/curves/<cell>.csv`` (the DVC plot: ``write_curves``) and where each lives
(``CellOutputs``).

``pipeline.train`` (the stage) trains the runs; this module only arranges what they recorded, so the report,
the tests and tools read and rebuild these files without torch.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faenet.tasks import EVAL_SPLITS
from pipeline.config import ROOT
from pipeline.reporting.table_writer import mean_std
from pipeline.tracking import write_json

#: Leading columns of a curves file; ``CURVE_Y`` is the column dvc.yaml plots (the main val split's energy MAE).
CURVE_KEYS = ("epoch", "series", "seed", "target", "val_split")
CURVE_Y = "val_energy_mae"


@dataclass(frozen=True)
class CellOutputs:
    """The files of one cell (dvc.yaml train: outs, metrics, plots)."""

    results: Path  # full results (summarize_cell)
    headline: Path  # DVC metric (headline)
    curves: Path  # DVC plot (write_curves)
    models: Path  # checkpoints

    @classmethod
    def of(cls, cell: str, root: Path = ROOT) -> CellOutputs:
        return cls(results=root / "results" / "train" / f"{cell}.json",
                   headline=root / "metrics" / "train" / f"{cell}.json",
                   curves=root / "results" / "curves" / f"{cell}.csv", models=root / "models" / cell)

    def write_record(self, record: dict[str, Any]) -> None:
        """The full results and their headline together, so the two files cannot disagree."""
        write_json(self.results, record)
        write_json(self.headline, headline(record))


def summarize_cell(profile: str, seeds: Sequence[int], cell: str, model: str, task: str, symmetry: str,
                   runs: list[dict[str, Any]], n_params: int, data_hash: str, rewiring: str) -> dict[str, Any]:
    """The cell's full results: per split and metric, mean ± std over seeds (and per QM9 target). ``seeds``
    are the cell's resolved seeds (the caller resolves them, so this module needs no torch)."""
    per: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for split, metrics in r["final"].items():
            for k, v in metrics.items():
                per.setdefault(split, {}).setdefault(k, []).append(v)
    epoch_s = [s for r in runs for s in r["epoch_seconds"]]
    return {"cell": cell, "trained": True, "model": model, "dataset": task, "symmetry": symmetry,
            "profile": profile, "seeds": list(seeds),
            "targets": sorted({r["target"] for r in runs}), "mlflow_run_ids": [r["run_id"] for r in runs],
            "runs": [{"seed": r["seed"], "target": r["target"], "run_id": r["run_id"]} for r in runs],
            "n_params": n_params, "rewiring": rewiring, "dataset_hash": data_hash,
            "train_seconds": mean_std([r["train_seconds"] for r in runs]),
            "epoch_seconds_mean": sum(epoch_s) / max(1, len(epoch_s)),
            "splits": {s: {k: mean_std(v) for k, v in m.items()} for s, m in per.items()}}


def json_first_metric(runs: list[dict[str, Any]], split: str) -> str:
    """One line of the stage's log: each final metric of ``split``, mean ± std over ``runs``."""
    vals: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r["final"].get(split, {}).items():
            vals.setdefault(k, []).append(v)
    return ", ".join(f"{k} {mean_std(v)['mean']:.4f} ± {mean_std(v)['std']:.4f}" for k, v in vals.items())


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The cell's DVC metric (``dvc metrics show/diff``), a few numbers from its full results ``record``
    (``summarize_cell``): the MAEs of the main val split (``EVAL_SPLITS``' first, ``val_id``) and of ``test``
    (mean and std over seeds; energy, and forces for force tasks), and the mean epoch time. QM9 trains one
    model per property: the per-property test MAE (Table 8's number), means only, so that the 12 properties of
    the paper profile still fit in a short headline. An untrained cell's record has no numbers and is its own
    headline."""
    if not record.get("trained"):
        return dict(record)
    out: dict[str, Any] = {"cell": record["cell"], "trained": True, "profile": record["profile"]}
    splits = record["splits"]
    if record["dataset"] == "qm9":
        out["test"] = {k: v["mean"] for k, v in sorted(splits.get("test", {}).items()) if k.endswith("_mae")}
    else:
        for split in (EVAL_SPLITS[record["dataset"]][0], "test"):
            for k in ("energy_mae", "force_mae"):
                if k in splits.get(split, {}):
                    out.setdefault(split, {}).update({k: splits[split][k]["mean"],
                                                      f"{k}_std": splits[split][k]["std"]})
    out["epoch_seconds"] = record["epoch_seconds_mean"]
    return out


def curve_series(seed: int, target: str) -> str:
    """The name of one run's line in the curves plot: ``seed0``, or ``gap-seed0`` for a QM9 property."""
    return f"seed{seed}" if target == "energy" else f"{target}-seed{seed}"


def write_curves(path: Path, runs: list[dict[str, Any]], val_split: str) -> None:
    """The learning curves of a cell's ``runs`` (records with ``seed``, ``target`` and per-epoch ``history``),
    long format: one row per (run, epoch), ``series`` naming the run (``curve_series``), so DVC's
    ``learning_curves`` template (``.dvc/plots/``) draws one line per seed and QM9 property. The history's
    ``<val_split>_*`` columns (the split evaluated every epoch) are written as ``val_*``, so every cell has the
    plotted column ``CURVE_Y``; ``val_split`` keeps the split's name."""
    rows = []
    for r in runs:
        for h in r["history"]:
            rows.append({"series": curve_series(r["seed"], r["target"]), "seed": r["seed"], "target": r["target"],
                         "val_split": val_split,
                         **{("val_" + k[len(val_split) + 1:] if k.startswith(val_split + "_") else k): v
                            for k, v in h.items()}})
    rest = sorted({k for row in rows for k in row} - set(CURVE_KEYS) - {CURVE_Y})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*CURVE_KEYS, CURVE_Y, *rest])
        w.writeheader()
        w.writerows(rows)
