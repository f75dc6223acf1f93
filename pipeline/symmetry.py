"""Stage `symmetry` (paper App. D, Tables 11-12): invariance / equivariance metrics of every trained cell.

    python -m pipeline.symmetry

For each task of ``symmetry.datasets`` (is2re, s2ef; qm7x goes to the JSON only), every cell whose
``results/train/<cell>.json`` says ``trained: true`` and, if ``symmetry.notrain``, an untrained FAENet
(the paper's No-Train row), each seed is evaluated by ``faenet.symmetry_eval.evaluate_symmetry`` on
``max_graphs`` graphs of ``val_id`` (a subset drawn with ``symmetry.seed`` if the split is larger), with
``n_transforms`` random transforms per graph: rotations about z and vertical mirror planes for slabs
(``FRAME_DIM`` 2), Haar SO(3) rotations and mirror planes of uniform normal for molecules (3), plus a
Gaussian translation. Every model runs in eval mode through its own symmetry wrapper (SFA draws frames in
eval too, from a generator seeded per cell and seed; DA is a training-time method and sees the raw input;
full FA averages all frames). Predictions are de-normalised with the checkpoint's normaliser. The same
transforms (``symmetry.seed``) are applied to every model, so rows are paired comparisons. Trained cells
matching ``symmetry.exclude`` are skipped (and listed). Jobs (cell x seed) run in ``symmetry.workers``
processes; every job seeds its own draws, so the numbers do not depend on the number of workers.

No-Train: FAENet built with the profile's hyperparameters for the task (and its ``regress_forces`` and
rewiring from ``train``) after ``torch.manual_seed(seed)`` for each training seed, no symmetry method; its
normaliser is fitted on the task's training split (mean/std of the training targets, with the element
shift if the train settings ask for one), as the train stage does, so its outputs are on the eV scale.

Outputs: ``results/symmetry.json`` (full results; its headline ``metrics/symmetry.json``, the DVC metric, is
``headline``), ``reports/tables/table11.{md,csv}`` (IS2RE), ``table12.{md,csv}`` (S2EF) and
``wrap_i.{md,csv}``, one MLflow run per (cell, seed) (tags ``dvc_stage=symmetry``, ``cell``, ``profile``;
metrics ``<split>_<metric>``; the per-graph values as the artifact ``symmetry_per_graph.json``).

Wiring only. The stage's inputs (train results, checkpoints, task data) and their errors:
``pipeline.symmetry_inputs``; the jobs, one job's evaluation and the worker pool: ``pipeline.symmetry_jobs``
(on ``faenet.symmetry_runs`` and ``faenet.symmetry_eval``); the results document, its schema and headline:
``pipeline.reporting.symmetry``; Tables 11-12 and Wrap-I: ``pipeline.reporting.symmetry_tables``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import EVAL_SPLITS, FRAME_DIM, ROOT, Params, params_hash, stage_main
from pipeline.reporting import symmetry as R
from pipeline.reporting.symmetry import SCHEMA, headline  # every stage's headline is pipeline.<stage>.headline
from pipeline.reporting.symmetry_tables import write_tables, write_wrap_table
from pipeline.symmetry_inputs import CheckpointError, StageInputError, excluded, trained_cells
from pipeline.symmetry_jobs import plan_jobs, run_jobs
from pipeline.tracking import write_json

__all__ = ["SCHEMA", "CheckpointError", "StageInputError", "StagePaths", "evaluate_all", "headline", "run_stage"]

#: ``log_run(run_name, params, tags, metrics, artifacts) -> run id``; artifacts: {file name: JSON object}.
RunLogger = Callable[[str, Mapping[str, Any], Mapping[str, str], Mapping[str, float], Mapping[str, Any]],
                     str | None]


@dataclass(frozen=True)
class StagePaths:
    """Where the stage reads and writes (the repository layout by default; a tmp dir in tests)."""

    data: Path
    models: Path
    train_results: Path  # the train stage's full results, one JSON per cell
    tables: Path
    results: Path  # this stage's full results
    headline: Path  # its DVC metric

    @classmethod
    def under(cls, root: Path) -> StagePaths:
        return cls(data=root / "data", models=root / "models", train_results=root / "results" / "train",
                   tables=root / "reports" / "tables", results=root / "results" / "symmetry.json",
                   headline=root / "metrics" / "symmetry.json")


def evaluate_all(params: Params, paths: StagePaths, log_run: RunLogger | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Evaluate every job (cell x seed, No-Train x seed) and return the ``results/symmetry.json`` object."""
    cfg = params.active.symmetry
    jobs = plan_jobs(params, paths.models, paths.train_results)

    def rel(path: Path | None) -> str | None:
        return str(path.relative_to(paths.models.parent)) if path is not None else None

    outputs: dict[int, dict[str, Any]] = {}
    for i, out in run_jobs(jobs, params, paths.data, progress):
        job, res = jobs[i], out["res"]
        out["run_id"] = None
        if log_run is not None:
            run_params = {"cell": job.cell, "dataset": job.task, "model": job.model, "symmetry": job.symmetry,
                          "seed": job.seed, "trained": job.trained, "rewiring": out["rewiring"],
                          "frame_dim": FRAME_DIM[job.task], "split": out["split"], "n_graphs": res["n_graphs"],
                          "n_split": out["n_split"], **{f"symmetry.{k}": v for k, v in cfg.model_dump().items()},
                          "checkpoint": rel(job.checkpoint) or "",
                          "notrain_normalizer": out["notrain_normalizer"] or ""}
            tags = {"dvc_stage": "symmetry", "cell": job.cell, "profile": params.profile,
                    "train_run_id": job.train_run_id or "", "kind": "trained" if job.trained else R.NOTRAIN}
            wrap = {f"wrap_i_{c}_{k}": v for c, w in (out["wrap_i"] or {}).items() for k, v in w.items()
                    if k != "n_graphs"}
            out["run_id"] = log_run(f"symmetry-{job.cell}-seed{job.seed}", run_params, tags,
                                    {**R.flat_metrics(res), "eval_seconds": out["seconds"], **wrap},
                                    {"symmetry_per_graph.json": {"indices": out["indices"], **res["per_graph"]}})
        outputs[i] = out
    results: dict[str, dict[str, Any]] = {task: {} for task in cfg.datasets}
    per_cell: dict[tuple[str, str], list[int]] = {}
    for i, job in enumerate(jobs):  # job order: seeds in train order, whatever the completion order
        per_cell.setdefault((job.task, job.cell), []).append(i)
    for (task, cell), idx in per_cell.items():
        job = jobs[idx[0]]
        runs = [{**outputs[i], "seed": jobs[i].seed, "train_run_id": jobs[i].train_run_id,
                 "checkpoint": rel(jobs[i].checkpoint)} for i in idx]
        train_mae = job.meta.get("splits", {}).get("val_id", {}).get("energy_mae") if job.trained else None
        results[task][cell] = R.cell_entry(row=job.row, model=job.model, symmetry=job.symmetry, trained=job.trained,
                                           frame_dim=FRAME_DIM[task], runs=runs, train_val_id_mae=train_mae)
    sizes = {task: next((o["n_split"] for i, o in outputs.items() if jobs[i].task == task), None)
             for task in cfg.datasets}
    skipped = sorted(c["cell"] for c in trained_cells(paths.train_results, list(cfg.datasets), params.profile)
                     if excluded(c["cell"], cfg.exclude))
    return {"schema": SCHEMA, "profile": params.profile, "params_hash": params_hash(params),
            "config": {**cfg.model_dump(mode="json"), "split": {t: EVAL_SPLITS[t][0] for t in cfg.datasets},
                       "frame_dim": {t: FRAME_DIM[t] for t in cfg.datasets}, "split_size": sizes,
                       "excluded_cells": skipped, "seeds": list(params.active.train.seeds)},
            "units": R.UNITS, **results}


def mlflow_logger(params: Params) -> RunLogger:
    """A ``RunLogger`` writing one MLflow run per call in the project experiment."""
    from pipeline.tracking import log_finished_run, provenance

    base = {**{k: v for k, v in provenance().items() if isinstance(v, str)}, "params_hash": params_hash(params)}

    def log(run_name, run_params, tags, metrics, artifacts) -> str:
        return log_finished_run(run_name, run_params, {**base, **tags}, metrics=metrics, dicts=artifacts)
    return log


def run_stage(params: Params, paths: StagePaths, log_run: RunLogger | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Evaluate, then write the results, their headline and Tables 11-12; returns the results object."""
    result = evaluate_all(params, paths, log_run, progress)
    write_json(paths.results, result)
    write_json(paths.headline, headline(result))
    write_tables(result, paths.tables)
    write_wrap_table(result, paths.tables)
    return result


def main() -> int:
    return stage_main(_main)


def _main(params: Params) -> int:
    t0 = time.perf_counter()
    try:
        result = run_stage(params, StagePaths.under(ROOT), mlflow_logger(params))
    except StageInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    datasets = params.active.symmetry.datasets
    for line in R.summary_lines(result, datasets):
        print(line)
    print(f"symmetry: {sum(len(result.get(t, {})) for t in datasets)} rows in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
