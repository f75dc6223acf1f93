"""The symmetry stage's results as a document (torch-free): per-seed evaluations -> ``results/symmetry.json``,
its headline (``metrics/symmetry.json``) and the stage's summary lines. Tables 11-12 and the Wrap-I table from the
same document: ``pipeline.symmetry_tables``.

Schema of ``results/symmetry.json`` (``SCHEMA``)::

    {"schema": "faenet-repro/symmetry/v1",
     "profile": str,
     "params_hash": str,
     "config": {<profiles.<p>.symmetry>, "split": {task: "val_id"}, "split_size": {task: int},
                "frame_dim": {task: 2|3}, "seeds": [int],
                "excluded_cells": [str]},         # trained cells matching symmetry.exclude (not evaluated)
     "units": {"rot_i": "meV", "refl_i": "meV", "pct_diff": "%", "f_rot_e": "meV/Å", "f_refl_e": "meV/Å",
               "pos": "Å", "pos_refl": "Å", "pos_frac": "fraction", "mae_meV": "meV",
               "force_mae_meV_per_A": "meV/Å"},
     "<task>": {                                  # is2re, s2ef (, qm7x): one entry per evaluated row
        "<cell>": {                               # "<model>-<task>-<symmetry>", or "faenet-<task>-notrain"
           "row": str,                            # paper row key, "<model>-<symmetry>" / "faenet-notrain"
           "label": str,                          # the paper's row name ("Full FA", "No-FA", ...)
           "model": str, "symmetry": str,         # symmetry method of the wrapper ("none" for No-Train)
           "trained": bool, "frame_dim": int, "rewiring": str,
           "seeds": [int], "n_graphs": int, "n_degenerate": int,
           "all" | "degenerate" | "non_degenerate": {   # graphs split by PCA-frame degeneracy
              "n_graphs": int,
              "<metric>": {"mean": float|null, "std": float|null, "per_seed": [float|null]},
              ...},                               # metrics: pos, pos_refl, pos_frac, rot_i, refl_i,
                                                  # pct_diff, mae_meV; force tasks add f_rot_e, f_refl_e,
                                                  # force_mae_meV_per_A
           "mae_meV": {"mean", "std", "per_seed"},        # = all.mae_meV: energy MAE of the reference
                                                  # predictions E(x) on the evaluated graphs
           "wrap_i": {<frames>: {"wrap_i_offsets" | "wrap_i_translate" | "mae_meV": {"mean", "std",
                      "per_seed"}, "n_graphs": int, "n_degenerate": int, ...}},  # trained FA cells matching
                                                  # symmetry.wrap_i.cells only
           "mae_meV_train_val_id": {"mean", "std", "per_seed"} | null,  # train stage, whole val_id
           "mlflow_run_ids": [str],               # this stage's runs, one per seed (seed order)
           "train_mlflow_run_ids": [str],         # the train stage's runs ([] for No-Train)
           "checkpoints": [str]}},                # relative paths ([] for No-Train)
     }

Definitions (``faenet/symmetry_metrics.py``): Rot-I / Refl-I = mean |E(x) - E(g x)| over (graph,
transform) pairs; %-diff = 100 mean |E(x) - E(R x)| / |y|; F-Rot-E / F-Refl-E = mean over atoms of the L2
norm of F(x) Q - F(g x); ``pos_frac`` = fraction of (graph, rotation) pairs whose backbone input changed
(the paper's binary Pos, measured); ``pos`` = mean per-atom distance (Å) between the backbone inputs for x
and R x, each centred (frame sets compared for full FA); ``pos_refl`` the same for reflections. Std: sample std
over seeds (0 for one seed). ``null``: not computable (e.g. no degenerate graph).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.symmetry_tables import SPLITS, fmt_stat, ordered_rows, row_label
from pipeline.tables import mean_std

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
