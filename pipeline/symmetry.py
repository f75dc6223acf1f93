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
``headline``), ``reports/tables/table11.{md,csv}`` (IS2RE) and
``table12.{md,csv}`` (S2EF), one MLflow run per (cell, seed) (tags ``dvc_stage=symmetry``, ``cell``,
``profile``; metrics ``<split>_<metric>``; the per-graph values as the artifact ``symmetry_per_graph.json``).

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
           "mae_meV_train_val_id": {"mean", "std", "per_seed"} | null,  # train stage, whole val_id
           "mlflow_run_ids": [str],               # this stage's runs, one per seed (seed order)
           "train_mlflow_run_ids": [str],         # the train stage's runs ([] for No-Train)
           "checkpoints": [str]}},                # relative paths ([] for No-Train)
     }

Definitions (``faenet/symmetry_metrics.py``): Rot-I / Refl-I = mean |E(x) - E(g x)| over (graph,
transform) pairs; %-diff = 100 mean |E(x) - E(R x)| / |y|; F-Rot-E / F-Refl-E = mean over atoms of the L2
norm of F(x) Q - F(g x); ``pos_frac`` = fraction of (graph, rotation) pairs whose backbone input changed
(the paper's binary Pos, measured); ``pos`` = mean per-atom distance (Å) between the backbone inputs for x
and R x, each centred (frame sets compared for full FA); ``pos_refl`` the same for reflections. Std: sample std over
seeds (0 for one seed). ``null``: not computable (e.g. no degenerate graph).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import (
    EVAL_SPLITS,
    FRAME_DIM,
    ROOT,
    Params,
    params_hash,
    stage_main,
)
from pipeline.symmetry_tables import SPLITS, fmt_stat, ordered_rows, row_label, write_tables, write_wrap_table
from pipeline.tables import mean_std
from pipeline.tracking import write_json

SCHEMA = "faenet-repro/symmetry/v1"
UNITS = {"rot_i": "meV", "refl_i": "meV", "pct_diff": "%", "f_rot_e": "meV/Å", "f_refl_e": "meV/Å", "pos": "Å",
         "pos_refl": "Å", "pos_frac": "fraction", "mae_meV": "meV", "force_mae_meV_per_A": "meV/Å"}
NOTRAIN = "notrain"

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


class StageInputError(RuntimeError):
    """An input of the stage (data, train metrics, checkpoint) is missing, stale or unreadable; the message
    names the file and the command that regenerates it."""


class CheckpointError(StageInputError):
    """A checkpoint the train metrics announce is missing, unreadable or does not match its cell."""


# ----------------------------------------------------------------------------------------------------------
# Inputs: trained cells, checkpoints, data
# ----------------------------------------------------------------------------------------------------------

def row_key(model: str, symmetry: str) -> str:
    return f"{model}-{symmetry}"


def trained_cells(train_results: Path, datasets: list[str], profile: str) -> list[dict[str, Any]]:
    """The train results of every trained cell of ``datasets``; a cell trained under another profile is an
    error (its checkpoints do not belong to this run of the pipeline)."""
    if not train_results.is_dir():
        raise StageInputError(f"{train_results} is missing: run the train stage first (`dvc repro train`)")
    cells = []
    for path in sorted(train_results.glob("*.json")):
        try:
            m = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StageInputError(f"{path} is not valid JSON ({err}); rerun its train stage") from None
        if not m.get("trained") or m.get("dataset") not in datasets:
            continue
        if m.get("profile") != profile:
            raise StageInputError(f"{path} was written under profile {m.get('profile')!r}, the active profile "
                                  f"is {profile!r}: rerun `dvc repro train@{m.get('cell', path.stem)}`")
        cells.append(m)
    return cells


def checkpoint_path(models: Path, cell: str, seed: int) -> Path:
    return models / cell / f"seed{seed}.pt"


def _retrain_hint(cell_meta: Mapping[str, Any]) -> str:
    return (f"rerun `dvc repro train@{cell_meta['cell']}` (or `python -m pipeline.train --model "
            f"{cell_meta['model']} --dataset {cell_meta['dataset']} --symmetry {cell_meta['symmetry']}`)")


def _missing(path: Path, cell_meta: Mapping[str, Any], seed: int) -> CheckpointError:
    return CheckpointError(f"{path}: checkpoint of cell {cell_meta['cell']}, seed {seed} is missing although "
                           f"results/train/{cell_meta['cell']}.json says the cell was trained; "
                           f"{_retrain_hint(cell_meta)}")


def load_checkpoint(path: Path, cell_meta: Mapping[str, Any], seed: int, data_hash: str) -> dict[str, Any]:
    """The train stage's checkpoint of ``cell_meta['cell']`` for ``seed``, checked against the cell."""
    from faenet.checkpoint import CorruptCheckpointError, UnsafeCheckpointError
    from faenet.checkpoint import load_checkpoint as load_weights_only

    cell = cell_meta["cell"]
    fix = _retrain_hint(cell_meta)
    if not path.is_file():
        raise _missing(path, cell_meta, seed)
    try:
        ckpt = load_weights_only(path)  # never runs code from the file
    except UnsafeCheckpointError as err:
        raise CheckpointError(f"{path}: checkpoint of cell {cell}, seed {seed} is unreadable weights-only "
                              f"({err.reason}): the train stage did not write it, or it carries a pickled "
                              f"payload; nothing in it was run. Delete it and {fix}") from None
    except CorruptCheckpointError as err:
        raise CheckpointError(f"{path}: checkpoint of cell {cell}, seed {seed} is unreadable, corrupt or "
                              f"truncated ({err.reason}); {fix}") from None
    except Exception as err:  # torch raises several types for a corrupt/truncated file
        first = (str(err).strip().splitlines() or [""])[0][:200]  # torch's messages run over many lines
        raise CheckpointError(f"{path}: checkpoint of cell {cell}, seed {seed} is unreadable "
                              f"({type(err).__name__}: {first}); {fix}") from None
    need = ("model", "model_name", "hparams", "symmetry", "normalizer", "seed", "task", "rewiring", "data_hash")
    missing = [k for k in need if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a train-stage checkpoint (missing {missing}); {fix}")
    expect = {"model_name": cell_meta["model"], "task": cell_meta["dataset"], "symmetry": cell_meta["symmetry"],
              "seed": seed}
    wrong = {k: (ckpt[k], v) for k, v in expect.items() if ckpt[k] != v}
    if wrong:
        raise CheckpointError(f"{path}: checkpoint does not belong to cell {cell} seed {seed} "
                              f"(found, expected: {wrong}); {fix}")
    if ckpt["data_hash"] != data_hash:
        raise CheckpointError(f"{path}: trained on data/{cell_meta['dataset']} with content hash "
                              f"{ckpt['data_hash'][:12]}…, the data now has {data_hash[:12]}…; {fix}")
    return ckpt


def _normalizer(saved: Mapping[str, Any]):
    from faenet.training import Normalizer

    shift = saved.get("element_shift")
    return Normalizer(mean=float(saved["mean"]), std=float(saved["std"]),
                      element_shift=tuple(shift) if shift is not None else None)


def _derived_seed(*parts: Any) -> int:
    """A stable 63-bit seed from strings/ints (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class _TaskData:
    """The evaluated graphs of one task, raw and per rewiring, and the data's content hash."""

    def __init__(self, data_dir: Path, task: str, max_graphs: int, seed: int) -> None:
        from faenet.data.dataset import GraphDataset, content_hash
        from faenet.symmetry_eval import select_graphs

        split = EVAL_SPLITS[task][0]
        path = data_dir / task / f"{split}.lmdb"
        if not path.exists():
            raise StageInputError(f"{path} is missing: run the fetch stage first (`dvc repro fetch`)")
        ds = GraphDataset(path, task=task, in_memory=False)  # read only the selected graphs (OC20 splits are big)
        self.task, self.split, self.data_dir = task, split, data_dir
        self.indices = select_graphs(len(ds), max_graphs, seed)
        self.n_split = len(ds)
        self.raw = [ds[i] for i in self.indices]
        self.hash = content_hash(data_dir / task)
        self._rewired: dict[str, list] = {"none": self.raw}
        self._normalizers: dict[tuple, Any] = {}

    def records(self, rewiring: str) -> list:
        if rewiring not in self._rewired:
            if rewiring != "remove-tag-0":
                raise ValueError(f"unknown rewiring {rewiring!r}; allowed: none, remove-tag-0")
            from faenet.data.dataset import remove_tag0

            self._rewired[rewiring] = [remove_tag0(r) for r in self.raw]
        return self._rewired[rewiring]

    def notrain_normalizer(self, rewiring: str, normalize: bool, element_shift: bool):
        """Mean/std (and element shift) of the training targets, fitted as the train stage does."""
        from faenet.data.dataset import GraphDataset, remove_tag0
        from faenet.training import Normalizer

        key = (rewiring, normalize, element_shift)
        if key in self._normalizers:
            return self._normalizers[key]
        path = self.data_dir / self.task / "train.lmdb"
        if not path.exists():
            raise StageInputError(f"{path} is missing: run the fetch stage first (`dvc repro fetch`)")
        train = GraphDataset(path, task=self.task, transform=remove_tag0 if rewiring == "remove-tag-0" else None,
                             in_memory=False)  # lazy: the real S2EF training split does not fit in memory
        self._normalizers[key] = Normalizer.fit(train, normalize, element_shift)
        return self._normalizers[key]


# ----------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Job:
    task: str
    cell: str
    row: str
    model: str
    symmetry: str
    seed: int
    trained: bool
    meta: dict[str, Any]
    train_run_id: str | None = None
    checkpoint: Path | None = None


def excluded(cell: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(cell, p) for p in patterns)


def _jobs(params: Params, paths: StagePaths) -> list[_Job]:
    from pipeline.resolve import resolve_cell

    cfg = params.active.symmetry
    cells = [c for c in trained_cells(paths.train_results, list(cfg.datasets), params.profile)
             if not excluded(c["cell"], cfg.exclude)]
    jobs: list[_Job] = []
    for task in cfg.datasets:
        for m in (c for c in cells if c["dataset"] == task):
            runs = [r for r in m.get("runs", []) if r.get("target", "energy") == "energy"]
            if not runs:
                raise StageInputError(f"results/train/{m['cell']}.json lists no energy runs; rerun its train "
                                      "stage")
            for r in runs:
                jobs.append(_Job(task, m["cell"], row_key(m["model"], m["symmetry"]), m["model"], m["symmetry"],
                                 int(r["seed"]), True, m, r.get("run_id"),
                                 checkpoint_path(paths.models, m["cell"], int(r["seed"]))))
        if cfg.notrain:
            for seed in resolve_cell(params, "faenet", task, "none").seeds:
                jobs.append(_Job(task, f"faenet-{task}-{NOTRAIN}", f"faenet-{NOTRAIN}", "faenet", "none", seed,
                                 False, {}))
    # Fail before any work if a checkpoint is absent (unreadable ones fail when loaded).
    for j in jobs:
        if j.checkpoint is not None and not j.checkpoint.is_file():
            raise _missing(j.checkpoint, j.meta, j.seed)
    return jobs


def _build(job: _Job, params: Params, data: _TaskData):
    """(predictor, rewiring, No-Train normaliser or None) of a job: its checkpoint, or an untrained FAENet."""
    import torch

    from baselines.registry import build_model
    from faenet.symmetry import SymmetryWrapper
    from faenet.symmetry_eval import DenormalizedPredictor
    from pipeline.resolve import resolve_cell

    # The trained cells' hparams, symmetry method and rewiring are their checkpoint's; No-Train's are resolved.
    cell = resolve_cell(params, job.model, job.task, job.symmetry)
    gen = torch.Generator().manual_seed(_derived_seed(params.active.symmetry.seed, job.cell, job.seed))
    if job.trained:
        ckpt = load_checkpoint(job.checkpoint, job.meta, job.seed, data.hash)
        net = build_model(ckpt["model_name"], **ckpt["hparams"])
        try:
            net.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise CheckpointError(f"{job.checkpoint}: weights do not fit {ckpt['model_name']} with the stored "
                                  f"hyperparameters ({err}); rerun `dvc repro train@{job.cell}`") from None
        wrapper = SymmetryWrapper(net, ckpt["symmetry"], frame_dim=cell.frame_dim, generator=gen)
        return DenormalizedPredictor(wrapper, _normalizer(ckpt["normalizer"])), ckpt["rewiring"], None
    torch.manual_seed(job.seed)
    net = build_model(cell.model, **cell.hparams)
    tcfg = cell.train
    norm = data.notrain_normalizer(cell.rewiring, tcfg.normalize_targets, tcfg.element_shift)
    wrapper = SymmetryWrapper(net, cell.symmetry, frame_dim=cell.frame_dim, generator=gen)
    return DenormalizedPredictor(wrapper, norm), cell.rewiring, {"mean": norm.mean, "std": norm.std,
                                                                 "element_shift": norm.element_shift is not None}


def _stat(values: list[float | None]) -> dict[str, Any]:
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "per_seed": list(values)}
    return mean_std(values)


def _flat_metrics(res: Mapping[str, Any]) -> dict[str, float]:
    out = {f"{s}_{k}": v for s in SPLITS for k, v in res[s].items() if isinstance(v, int | float)}
    out["n_degenerate"] = res["n_degenerate"]
    return out


# Per process: the evaluated graphs of each task (loaded once per worker).
_TASK_DATA: dict[tuple, _TaskData] = {}


def _task_data(data_dir: Path, task: str, max_graphs: int, seed: int) -> _TaskData:
    key = (str(data_dir), task, max_graphs, seed)
    if key not in _TASK_DATA:
        _TASK_DATA[key] = _TaskData(data_dir, task, max_graphs, seed)
    return _TASK_DATA[key]


def run_job(job: _Job, params: Params, paths: StagePaths) -> dict[str, Any]:
    """Evaluate one (cell, seed): ``{"res": evaluate_symmetry(...), "rewiring", "notrain_normalizer",
    "seconds", "indices", "split", "n_split"}``. Self-seeded, so the same in any process and any order."""
    import torch

    from faenet.device import resolve_device
    from faenet.symmetry_eval import evaluate_symmetry

    cfg = params.active.symmetry
    torch.set_num_threads(cfg.threads)
    data = _task_data(paths.data, job.task, cfg.max_graphs, cfg.seed)
    t0 = time.perf_counter()
    predictor, rewiring, notrain_norm = _build(job, params, data)
    torch.manual_seed(_derived_seed(cfg.seed, "global", job.cell, job.seed))  # nothing else should draw
    res = evaluate_symmetry(predictor, data.records(rewiring), frame_dim=FRAME_DIM[job.task],
                            n_transforms=cfg.n_transforms, batch_size=cfg.batch_size, seed=cfg.seed,
                            degenerate_tol=cfg.degenerate_tol, translation_scale=cfg.translation_scale,
                            device=resolve_device(params.active.train.device))  # the train stage's device
    predictor.wrapper.to("cpu")  # Wrap-I runs on the CPU batches (a no-op unless the metrics ran on a GPU)
    wrap = _wrap_i(job, cfg, predictor, data.records(rewiring))
    return {"res": res, "wrap_i": wrap, "rewiring": rewiring, "notrain_normalizer": notrain_norm,
            "seconds": time.perf_counter() - t0, "indices": data.indices, "split": data.split,
            "n_split": data.n_split}


def wrap_i_wanted(job: _Job, wcfg: Any) -> bool:
    """Whether Wrap-I is measured for a job: a trained FA cell matching ``symmetry.wrap_i.cells`` (the
    frames of none / DA cells are never used, so swapping the construction changes nothing there)."""
    return (job.trained and job.symmetry.endswith(("sfa", "full"))
            and any(fnmatch.fnmatchcase(job.cell, pat) for pat in wcfg.cells))


def _wrap_i(job: _Job, cfg: Any, predictor: Any, records: list) -> dict[str, Any] | None:
    """Wrap-I of the job's model with each ``symmetry.wrap_i.frames`` construction (None when not wanted)."""
    wcfg = cfg.wrap_i
    if not wrap_i_wanted(job, wcfg):
        return None
    from faenet.symmetry_eval import wrap_i_by_frames

    return wrap_i_by_frames(predictor, records[: wcfg.max_graphs], frames=wcfg.frames,
                            n_transforms=wcfg.n_transforms, batch_size=cfg.batch_size, seed=cfg.seed,
                            edge_cutoff=wcfg.edge_cutoff, degenerate_tol=cfg.degenerate_tol)


def _expected_cost(job: _Job, jobs: list[_Job]) -> float:
    """The train stage's epoch time of the cell (No-Train: of its task's FAENet cells): a proxy for the
    evaluation cost, used only to start the longest jobs first when running in parallel."""
    if job.trained:
        return float(job.meta.get("epoch_seconds_mean") or 0.0)
    same = [float(j.meta.get("epoch_seconds_mean") or 0.0) for j in jobs if j.trained and j.task == job.task
            and j.model == "faenet" and j.symmetry in ("none", "da")]
    return max(same, default=0.0)


def _run_all(jobs: list[_Job], params: Params, paths: StagePaths, progress: bool):
    """Yield ``(index, output)`` of every job, in completion order, longest first; ``symmetry.workers`` processes."""
    from functools import partial

    from faenet.procs import run_pool

    order = sorted(range(len(jobs)), key=lambda i: -_expected_cost(jobs[i], jobs))
    for k, out in run_pool(partial(run_job, params=params, paths=paths), [jobs[i] for i in order],
                           params.active.symmetry.workers, ordered=False, desc="symmetry" if progress else None,
                           unit="model", label=lambda job: f"{job.cell} seed{job.seed}"):
        yield order[k], out


def evaluate_all(params: Params, paths: StagePaths, log_run: RunLogger | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Evaluate every job (cell x seed, No-Train x seed) and return the ``results/symmetry.json`` object."""
    prof = params.active
    cfg = prof.symmetry
    jobs = _jobs(params, paths)
    outputs: dict[int, dict[str, Any]] = {}
    for i, out in _run_all(jobs, params, paths, progress):
        job, res = jobs[i], out["res"]
        out["run_id"] = None
        if log_run is not None:
            run_params = {"cell": job.cell, "dataset": job.task, "model": job.model, "symmetry": job.symmetry,
                          "seed": job.seed, "trained": job.trained, "rewiring": out["rewiring"],
                          "frame_dim": FRAME_DIM[job.task], "split": out["split"], "n_graphs": res["n_graphs"],
                          "n_split": out["n_split"], **{f"symmetry.{k}": v for k, v in cfg.model_dump().items()},
                          "checkpoint": str(job.checkpoint.relative_to(paths.models.parent))
                          if job.checkpoint is not None else "",
                          "notrain_normalizer": out["notrain_normalizer"] or ""}
            tags = {"dvc_stage": "symmetry", "cell": job.cell, "profile": params.profile,
                    "train_run_id": job.train_run_id or "", "kind": "trained" if job.trained else NOTRAIN}
            out["run_id"] = log_run(f"symmetry-{job.cell}-seed{job.seed}", run_params, tags,
                                    {**_flat_metrics(res), "eval_seconds": out["seconds"],
                                     **{f"wrap_i_{c}_{k}": v for c, w in (out["wrap_i"] or {}).items()
                                        for k, v in w.items() if k != "n_graphs"}},
                                    {"symmetry_per_graph.json": {"indices": out["indices"], **res["per_graph"]}})
        outputs[i] = out
    results: dict[str, dict[str, Any]] = {task: {} for task in cfg.datasets}
    per_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for i, job in enumerate(jobs):  # job order: seeds in train order, whatever the completion order
        per_cell.setdefault((job.task, job.cell), []).append({"job": job, **outputs[i]})
    for (task, cell), runs in per_cell.items():
        results[task][cell] = _cell_entry(runs, FRAME_DIM[task], paths)
    sizes = {task: next((o["n_split"] for i, o in outputs.items() if jobs[i].task == task), None)
             for task in cfg.datasets}
    skipped = sorted(c["cell"] for c in trained_cells(paths.train_results, list(cfg.datasets), params.profile)
                     if excluded(c["cell"], cfg.exclude))
    return {"schema": SCHEMA, "profile": params.profile, "params_hash": params_hash(params),
            "config": {**cfg.model_dump(mode="json"), "split": {t: EVAL_SPLITS[t][0] for t in cfg.datasets},
                       "frame_dim": {t: FRAME_DIM[t] for t in cfg.datasets}, "split_size": sizes,
                       "excluded_cells": skipped,
                       "seeds": list(prof.train.seeds)},
            "units": UNITS, **results}


def _cell_entry(runs: list[dict[str, Any]], frame_dim: int, paths: StagePaths) -> dict[str, Any]:
    job: _Job = runs[0]["job"]
    res0 = runs[0]["res"]
    entry: dict[str, Any] = {"row": job.row, "label": row_label(job.row), "model": job.model,
                             "symmetry": job.symmetry, "trained": job.trained, "frame_dim": frame_dim,
                             "rewiring": runs[0]["rewiring"], "seeds": [r["job"].seed for r in runs],
                             "n_graphs": res0["n_graphs"], "n_degenerate": res0["n_degenerate"]}
    for split in SPLITS:
        keys = [k for k, v in res0[split].items() if k != "n_graphs"]
        entry[split] = {"n_graphs": res0[split]["n_graphs"],
                        **{k: _stat([r["res"][split].get(k) for r in runs]) for k in keys}}
    entry["mae_meV"] = entry["all"]["mae_meV"]
    if runs[0].get("wrap_i"):  # {construction: {metric: stat over seeds}}; trained with PCA frames
        entry["wrap_i"] = {c: {k: _stat([r["wrap_i"][c][k] for r in runs]) if k.startswith("wrap_i_") or k == "mae_meV"
                               else v
                               for k, v in w.items() if k != "seconds"}
                           for c, w in runs[0]["wrap_i"].items()}
    train_mae = job.meta.get("splits", {}).get("val_id", {}).get("energy_mae") if job.trained else None
    entry["mae_meV_train_val_id"] = (
        {"mean": train_mae["mean"] * 1000, "std": (train_mae["std"] or 0.0) * 1000,
         "per_seed": [v * 1000 for v in train_mae["per_seed"]]} if train_mae and train_mae.get("mean") is not None
        else None)
    entry["mlflow_run_ids"] = [r["run_id"] for r in runs]
    entry["train_mlflow_run_ids"] = [r["job"].train_run_id for r in runs if r["job"].train_run_id]
    entry["checkpoints"] = [str(r["job"].checkpoint.relative_to(paths.models.parent)) for r in runs
                            if r["job"].checkpoint is not None]
    return entry


# ----------------------------------------------------------------------------------------------------------
# Stage
# ----------------------------------------------------------------------------------------------------------

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


#: The headline's metrics (``all`` graphs, mean over seeds): energy invariance, and for force tasks the
#: rotation equivariance of the forces; the other metrics stay in the full results.
HEADLINE_METRICS = {"rot_i": "rot_i_meV", "refl_i": "refl_i_meV", "f_rot_e": "f_rot_e_meV_per_A"}


#: Wrap-I in the headline: the frames the models were trained with and the preferred periodic construction (the
#: other constructions are in results/ and reports/tables/wrap_i.md), so that `dvc metrics show` stays one screen.
HEADLINE_WRAP_FRAMES = ("pca", "lattice")


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


def main() -> int:
    return stage_main(_main)


def _main(params: Params) -> int:
    t0 = time.perf_counter()
    try:
        result = run_stage(params, StagePaths.under(ROOT), mlflow_logger(params))
    except StageInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for task in params.active.symmetry.datasets:
        for cell, e in ordered_rows(task, result.get(task, {})):
            a = e["all"]
            print(f"{cell:28s} Rot-I {fmt_stat(a['rot_i']):>16s} meV  Refl-I {fmt_stat(a['refl_i']):>16s} meV  "
                  f"Pos frac {fmt_stat(a['pos_frac'], 2)}")
    print(f"symmetry: {sum(len(result.get(t, {})) for t in params.active.symmetry.datasets)} rows in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
