"""The symmetry stage's results as a document (torch-free): per-seed evaluations -> ``results/symmetry.json``,
its headline (``metrics/symmetry.json``) and the stage's summary lines. Tables 11-12 and the Wrap-I table from the
same document: ``pipeline.reporting.symmetry_tables``.

The document's keys, types and metric definitions: ``pipeline.reporting.schemas.Symmetry`` (``SCHEMA`` names
its version). A row per (task, evaluated cell): ``cell_entry`` of its seeds' runs; the headline: ``headline``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.reporting.symmetry_tables import SPLITS, fmt_stat, ordered_rows, row_label
from pipeline.reporting.table_writer import mean_std

SCHEMA = "faenet-repro/symmetry/v1"
UNITS = {"rot_i": "meV", "refl_i": "meV", "pct_diff": "%", "f_rot_e": "meV/Å", "f_refl_e": "meV/Å", "pos": "Å",
         "pos_refl": "Å", "pos_frac": "fraction", "mae_meV": "meV", "force_mae_meV_per_A": "meV/Å"}
NOTRAIN = "notrain"

#: The headline's metrics (``all`` graphs, mean over seeds): energy invariance, and for force tasks the
#: rotation equivariance of the forces; the other metrics stay in the full results.
HEADLINE_METRICS = {"rot_i": "rot_i_meV", "refl_i": "refl_i_meV", "f_rot_e": "f_rot_e_meV_per_A"}

#: Wrap-I in the headline: the frames the models were trained with and the preferred periodic construction (the
#: other constructions are in results/ and reports/tables/wrap_i.md), so that `dvc metrics show` stays one screen.
HEADLINE_WRAP_FRAMES = ("pca", "lattice")


def row_key(model: str, symmetry: str) -> str:
    """The paper row of a cell: ``<model>-<symmetry>`` (``faenet-notrain`` for No-Train)."""
    return f"{model}-{symmetry}"


def stat(values: list[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "per_seed"}`` over seeds; mean and std None when any seed has no value."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "per_seed": list(values)}
    return mean_std(values)


def flat_metrics(res: Mapping[str, Any]) -> dict[str, float]:
    """One run's ``evaluate_symmetry`` result as flat ``<split>_<metric>`` numbers (its MLflow metrics)."""
    out = {f"{s}_{k}": v for s in SPLITS for k, v in res[s].items() if isinstance(v, int | float)}
    out["n_degenerate"] = res["n_degenerate"]
    return out


def cell_entry(*, row: str, model: str, symmetry: str, trained: bool, frame_dim: int,
               runs: Sequence[Mapping[str, Any]], train_val_id_mae: Mapping[str, Any] | None) -> dict[str, Any]:
    """One row of ``results/symmetry.json`` from its seeds' ``runs`` (in seed order), each ``{"seed", "res",
    "wrap_i", "rewiring", "run_id", "train_run_id", "checkpoint"}``; ``train_val_id_mae``: the train stage's
    energy MAE stats on ``val_id`` (eV; None for No-Train)."""
    res0 = runs[0]["res"]
    entry: dict[str, Any] = {"row": row, "label": row_label(row), "model": model, "symmetry": symmetry,
                             "trained": trained, "frame_dim": frame_dim, "rewiring": runs[0]["rewiring"],
                             "seeds": [r["seed"] for r in runs], "n_graphs": res0["n_graphs"],
                             "n_degenerate": res0["n_degenerate"]}
    for split in SPLITS:
        keys = [k for k in res0[split] if k != "n_graphs"]
        entry[split] = {"n_graphs": res0[split]["n_graphs"],
                        **{k: stat([r["res"][split].get(k) for r in runs]) for k in keys}}
    entry["mae_meV"] = entry["all"]["mae_meV"]
    if runs[0].get("wrap_i"):  # {construction: {metric: stat over seeds}}; trained with PCA frames
        entry["wrap_i"] = {c: {k: stat([r["wrap_i"][c][k] for r in runs]) if k.startswith("wrap_i_") or k == "mae_meV"
                               else v
                               for k, v in w.items() if k != "seconds"}
                           for c, w in runs[0]["wrap_i"].items()}
    m = train_val_id_mae
    entry["mae_meV_train_val_id"] = (
        {"mean": m["mean"] * 1000, "std": (m["std"] or 0.0) * 1000, "per_seed": [v * 1000 for v in m["per_seed"]]}
        if m and m.get("mean") is not None else None)
    entry["mlflow_run_ids"] = [r["run_id"] for r in runs]
    entry["train_mlflow_run_ids"] = [r["train_run_id"] for r in runs if r["train_run_id"]]
    entry["checkpoints"] = [r["checkpoint"] for r in runs if r["checkpoint"] is not None]
    return entry


def headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's DVC metric from its full ``result``: per task and evaluated row (trained cells and No-Train),
    Rot-I and Refl-I (and F-Rot-E for force tasks) on the evaluated split, mean over seeds."""
    out: dict[str, Any] = {"profile": result["profile"]}
    for task in result["config"]["datasets"]:
        out[task] = {cell: {**{name: e["all"][k]["mean"] for k, name in HEADLINE_METRICS.items() if k in e["all"]},
                            **{f"wrap_i_{c}_meV": w["wrap_i_offsets"]["mean"] for c, w in e.get("wrap_i", {}).items()
                               if c in HEADLINE_WRAP_FRAMES}}
                     for cell, e in sorted(result.get(task, {}).items())}
    return out


def summary_lines(result: Mapping[str, Any], datasets: Sequence[str]) -> list[str]:
    """One line per evaluated row (the paper's order): Rot-I, Refl-I and Pos frac on all graphs."""
    lines = []
    for task in datasets:
        for cell, e in ordered_rows(task, result.get(task, {})):
            a = e["all"]
            lines.append(f"{cell:28s} Rot-I {fmt_stat(a['rot_i']):>16s} meV  Refl-I {fmt_stat(a['refl_i']):>16s} meV  "
                         f"Pos frac {fmt_stat(a['pos_frac'], 2)}")
    return lines
