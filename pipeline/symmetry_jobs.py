"""The symmetry stage's jobs: one per (cell, seed) and per No-Train seed, planned, evaluated, run in a pool.

- ``plan_jobs``: every trained cell of ``symmetry.datasets`` (not matching ``symmetry.exclude``), one job per
  energy run of its train results, then, with ``symmetry.notrain``, No-Train per training seed; a missing
  checkpoint fails here, before any work.
- ``run_job``: one job in whichever process runs it: the model (its checkpoint, or an untrained FAENet as
  ``pipeline.resolve.resolve_cell`` builds the cell), then ``faenet.symmetry_runs.evaluate_run``. Every draw
  is seeded from the job (``derived_seed``), so the numbers do not depend on the process or the order.
- ``run_jobs``: every job in ``symmetry.workers`` processes (``faenet.procs.run_pool``), longest first.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import FRAME_DIM, Params
from pipeline.reporting.symmetry import NOTRAIN, row_key
from pipeline.symmetry_inputs import (
    CheckpointError,
    StageInputError,
    TaskData,
    checkpoint_path,
    excluded,
    load_cell_checkpoint,
    missing_checkpoint,
    task_data,
    trained_cells,
)


@dataclass
class Job:
    task: str
    cell: str
    row: str
    model: str
    symmetry: str
    seed: int
    trained: bool
    meta: dict[str, Any]  # the cell's train results ({} for No-Train)
    train_run_id: str | None = None
    checkpoint: Path | None = None


def plan_jobs(params: Params, models: Path, train_results: Path) -> list[Job]:
    """Every job of the stage, seeds in train order (module docstring)."""
    from pipeline.resolve import resolve_cell

    cfg = params.active.symmetry
    cells = [c for c in trained_cells(train_results, list(cfg.datasets), params.profile)
             if not excluded(c["cell"], cfg.exclude)]
    jobs: list[Job] = []
    for task in cfg.datasets:
        for m in (c for c in cells if c["dataset"] == task):
            runs = [r for r in m.get("runs", []) if r.get("target", "energy") == "energy"]
            if not runs:
                raise StageInputError(f"results/train/{m['cell']}.json lists no energy runs; rerun its train "
                                      "stage")
            for r in runs:
                jobs.append(Job(task, m["cell"], row_key(m["model"], m["symmetry"]), m["model"], m["symmetry"],
                                int(r["seed"]), True, m, r.get("run_id"),
                                checkpoint_path(models, m["cell"], int(r["seed"]))))
        if cfg.notrain:
            for seed in resolve_cell(params, "faenet", task, "none").seeds:
                jobs.append(Job(task, f"faenet-{task}-{NOTRAIN}", f"faenet-{NOTRAIN}", "faenet", "none", seed,
                                False, {}))
    # Fail before any work if a checkpoint is absent (unreadable ones fail when loaded).
    for j in jobs:
        if j.checkpoint is not None and not j.checkpoint.is_file():
            raise missing_checkpoint(j.checkpoint, j.meta, j.seed)
    return jobs


def build_predictor(job: Job, params: Params, data: TaskData):
    """(predictor, rewiring, No-Train normaliser or None) of a job: its checkpoint, or an untrained FAENet."""
    import torch

    from baselines.registry import build_model
    from faenet.symmetry_runs import derived_seed, eval_predictor
    from faenet.training import Normalizer
    from pipeline.resolve import resolve_cell

    # The trained cells' hparams, symmetry method and rewiring are their checkpoint's; No-Train's are resolved.
    cell = resolve_cell(params, job.model, job.task, job.symmetry)
    gen = torch.Generator().manual_seed(derived_seed(params.active.symmetry.seed, job.cell, job.seed))
    if job.trained:
        ckpt = load_cell_checkpoint(job.checkpoint, job.meta, job.seed, data.hash)
        net = build_model(ckpt["model_name"], **ckpt["hparams"])
        try:
            net.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise CheckpointError(f"{job.checkpoint}: weights do not fit {ckpt['model_name']} with the stored "
                                  f"hyperparameters ({err}); rerun `dvc repro train@{job.cell}`") from None
        predictor = eval_predictor(net, ckpt["symmetry"], cell.frame_dim, Normalizer.from_state(ckpt["normalizer"]),
                                   gen)
        return predictor, ckpt["rewiring"], None
    torch.manual_seed(job.seed)
    net = build_model(cell.model, **cell.hparams)
    tcfg = cell.train
    norm = data.notrain_normalizer(cell.rewiring, tcfg.normalize_targets, tcfg.element_shift)
    return eval_predictor(net, cell.symmetry, cell.frame_dim, norm, gen), cell.rewiring, {
        "mean": norm.mean, "std": norm.std, "element_shift": norm.element_shift is not None}


def wrap_i_wanted(job: Job, wcfg: Any) -> bool:
    """Whether Wrap-I is measured for a job: a trained FA cell matching ``symmetry.wrap_i.cells`` (the
    frames of none / DA cells are never used, so swapping the construction changes nothing there)."""
    return (job.trained and job.symmetry.endswith(("sfa", "full"))
            and any(fnmatch.fnmatchcase(job.cell, pat) for pat in wcfg.cells))


def run_job(job: Job, params: Params, data_dir: Path) -> dict[str, Any]:
    """Evaluate one (cell, seed): ``{"res": evaluate_symmetry(...), "wrap_i", "rewiring", "notrain_normalizer",
    "seconds", "indices", "split", "n_split"}``. Self-seeded, so the same in any process and any order."""
    import torch

    from faenet.device import resolve_device
    from faenet.symmetry_runs import WrapISettings, derived_seed, evaluate_run

    cfg = params.active.symmetry
    torch.set_num_threads(cfg.threads)
    data = task_data(data_dir, job.task, cfg.max_graphs, cfg.seed)
    t0 = time.perf_counter()
    predictor, rewiring, notrain_norm = build_predictor(job, params, data)
    w = cfg.wrap_i
    res, wrap = evaluate_run(
        predictor, data.records(rewiring), frame_dim=FRAME_DIM[job.task], n_transforms=cfg.n_transforms,
        batch_size=cfg.batch_size, seed=cfg.seed, degenerate_tol=cfg.degenerate_tol,
        translation_scale=cfg.translation_scale, global_seed=derived_seed(cfg.seed, "global", job.cell, job.seed),
        device=resolve_device(params.active.train.device),  # the train stage's device
        wrap_i=WrapISettings(w.frames, w.max_graphs, w.n_transforms, w.edge_cutoff) if wrap_i_wanted(job, w)
        else None)
    return {"res": res, "wrap_i": wrap, "rewiring": rewiring, "notrain_normalizer": notrain_norm,
            "seconds": time.perf_counter() - t0, "indices": data.indices, "split": data.split,
            "n_split": data.n_split}


def expected_cost(job: Job, jobs: list[Job]) -> float:
    """The train stage's epoch time of the cell (No-Train: of its task's FAENet cells): a proxy for the
    evaluation cost, used only to start the longest jobs first when running in parallel."""
    if job.trained:
        return float(job.meta.get("epoch_seconds_mean") or 0.0)
    same = [float(j.meta.get("epoch_seconds_mean") or 0.0) for j in jobs if j.trained and j.task == job.task
            and j.model == "faenet" and j.symmetry in ("none", "da")]
    return max(same, default=0.0)


def run_jobs(jobs: list[Job], params: Params, data_dir: Path, progress: bool) -> Iterator[tuple[int, dict]]:
    """Yield ``(index, output)`` of every job, in completion order, longest first; ``symmetry.workers`` processes."""
    from functools import partial

    from faenet.procs import run_pool

    order = sorted(range(len(jobs)), key=lambda i: -expected_cost(jobs[i], jobs))
    for k, out in run_pool(partial(run_job, params=params, data_dir=data_dir), [jobs[i] for i in order],
                           params.active.symmetry.workers, ordered=False, desc="symmetry" if progress else None,
                           unit="model", label=lambda job: f"{job.cell} seed{job.seed}"):
        yield order[k], out
