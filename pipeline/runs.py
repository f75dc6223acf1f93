"""One training run (a model, a symmetry method, a target, a seed) as the stages run it: trained once, logged
to MLflow once, resumed after a kill, reused when it already finished. Shared by the ``train`` and
``ablation`` stages.

Keying: a run is identified by a digest of everything it depends on (model name, hyperparameters, training
settings, symmetry method, target, seed, rewiring and the dataset's content hash), under a folder of
``work/`` chosen by the stage (the train cell, or ``ablation/<variant>``):

- ``work/ckpt/<folder>/<tag>-<key>.pt``: the checkpoint of an unfinished run (written every epoch, resumed;
  the one before it kept as ``.pt.prev``);
- ``work/ckpt/<folder>/<tag>-<key>.final.pt``: the final model state (model, hparams, normaliser, ...);
- ``work/results/<folder>/<tag>-<key>.json``: the run record (below), written last.

Checkpoints are written atomically and read weights-only (``faenet.checkpoint``): reading one never runs code.

A run whose record and final state both exist is not trained again nor logged again. ``work/`` lies outside
DVC's outputs (DVC deletes those before a stage runs), so nothing computed is lost.

Parallel runs (``run_all`` with ``workers > 1``): independent runs (seeds, QM9 properties) train in spawned
processes with ``threads // workers`` torch threads each: small models use two cores better as two runs than
as one run on two threads. Workers never touch MLflow (one SQLite writer); each writes its record without a
``run_id``, and the parent logs the finished run (params, per-epoch metrics at their epochs, artifacts, its
real start and end times), then adds the ``run_id``. A record without ``run_id`` (the parent was killed
between the two) is logged on the next run, not retrained. Results do not depend on the number of workers.

Run record (``RunRecord`` keys): ``seed``, ``target``, ``run_id`` (MLflow), ``final`` ({split: {metric:
value}}, eV; QM9 properties as ``<name>_mae``), ``n_params``, ``train_seconds``, ``epoch_seconds`` (list),
``history`` (per-epoch rows with ``epoch``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ROOT, digest
from pipeline.tracking import write_json

WORK = ROOT / "work"


@dataclass(frozen=True)
class RunSpec:
    """What one run trains and where it is filed (built by ``pipeline.resolve.resolve_run``). ``settings`` is a
    ``faenet.training.TrainSettings``."""

    model_name: str
    hparams: dict[str, Any]
    symmetry: str
    task: str
    seed: int
    settings: Any
    data_hash: str
    folder: str  # under work/ckpt and work/results: the train cell, or "ablation/<variant>"
    target: str = "energy"
    run_name: str = ""  # MLflow run name; default "<folder>-<tag>"
    rewiring: str = "none"
    frame_dim: int | None = None  # of the symmetry wrapper; set by pipeline.resolve.resolve_run (not in the key)
    run_params: dict[str, Any] = field(default_factory=dict)  # extra MLflow params (n_params is added)
    tags: dict[str, str] = field(default_factory=dict)  # MLflow tags
    config: dict[str, Any] = field(default_factory=dict)  # logged as resolved_config.json
    extra_key: dict[str, Any] = field(default_factory=dict)  # anything else the run depends on (e.g. a subset)

    @property
    def tag(self) -> str:
        return f"seed{self.seed}" if self.target == "energy" else f"{self.target}-seed{self.seed}"

    @property
    def name(self) -> str:
        return self.run_name or f"{self.folder}-{self.tag}"

    @property
    def key(self) -> str:
        parts = {"model": self.model_name, "hparams": self.hparams, "settings": self.settings.digest(),
                 "symmetry": self.symmetry, "target": self.target, "seed": self.seed, "data": self.data_hash,
                 "rewiring": self.rewiring}
        if self.extra_key:  # only when set, so the train stage's keys stay what they were
            parts["extra"] = self.extra_key
        return digest(parts)

    @property
    def mlflow_tags(self) -> dict[str, str]:
        """The MLflow run's tags; ``run_key`` (with the run name, its identity) lets a resumed run mark the
        runs of its killed attempts KILLED (``pipeline.tracking.end_stale_runs``)."""
        from pipeline.tracking import RUN_KEY_TAG

        return {**self.tags, "target": self.target, RUN_KEY_TAG: self.key}

    @property
    def ckpt_path(self) -> Path:
        return WORK / "ckpt" / self.folder / f"{self.tag}-{self.key}.pt"

    @property
    def final_path(self) -> Path:
        return self.ckpt_path.with_suffix(".final.pt")

    @property
    def result_path(self) -> Path:
        return WORK / "results" / self.folder / f"{self.tag}-{self.key}.json"

    def done(self) -> bool:
        """Finished and logged: nothing left to do."""
        return self.trained() and bool(json.loads(self.result_path.read_text()).get("run_id"))

    def trained(self) -> bool:
        """Finished (record and final state written), logged to MLflow or not."""
        return self.result_path.exists() and self.final_path.exists()


def build_wrapped(spec: RunSpec):
    """``(model, SymmetryWrapper(model))`` for the spec, freshly initialised from its seed."""
    import torch

    from baselines.registry import build_model
    from faenet.symmetry import SymmetryWrapper

    if spec.frame_dim is None:
        raise ValueError(f"run {spec.name}: RunSpec.frame_dim is unset; build run specs with "
                         "pipeline.resolve.resolve_run")
    torch.manual_seed(spec.seed)
    net = build_model(spec.model_name, **spec.hparams)
    return net, SymmetryWrapper(net, spec.symmetry, frame_dim=spec.frame_dim)


def check_splits(model: Any, sets: Mapping[str, Any], eval_names: Sequence[str]) -> None:
    """Refuse an empty split, or one with atomic numbers ``model`` does not embed, before any training: the
    last eval splits are otherwise first read after the whole run (``faenet.data.dataset.check_split``)."""
    from faenet.data.dataset import check_split

    for name in ("train", *eval_names):
        check_split(model, sets[name], name)


def load_final(spec: RunSpec):
    """The trained ``(model, SymmetryWrapper(model))`` of a finished run (its final state), loaded weights-only:
    a file that would run code raises ``faenet.checkpoint.UnsafeCheckpointError`` naming it, a corrupt one
    ``CorruptCheckpointError`` (delete it: the run is then trained again)."""
    from faenet.checkpoint import load_checkpoint

    if not spec.final_path.exists():
        raise FileNotFoundError(f"{spec.final_path} is missing: the run {spec.name} has not finished")
    state = load_checkpoint(spec.final_path)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{spec.final_path}: not the final state of a run (no 'model' entry); delete it, the run "
                         f"{spec.name} is then trained again")
    net, wrapped = build_wrapped(spec)
    net.load_state_dict(state["model"])
    return net, wrapped


def train_or_reuse(spec: RunSpec, sets: Mapping[str, Any], eval_names: list[str], needs_forces: bool,
                   eval_batch_size: int, out_ckpt: Path | None = None) -> dict[str, Any]:
    """Train the run (resuming its checkpoint) and evaluate it on ``eval_names``, or reuse its record.

    ``sets`` maps ``"train"`` and every eval split to a dataset; the first eval split is evaluated every epoch
    (it drives the plateau scheduler). The final state is copied to ``out_ckpt`` when given (a DVC output).
    Returns the run record (module docstring).
    """
    if spec.done():
        run = json.loads(spec.result_path.read_text())
        if out_ckpt is not None:
            shutil.copyfile(spec.final_path, out_ckpt)
        print(f"{spec.name}: finished earlier (MLflow run {run['run_id']}), reused")
        return run

    from faenet.checkpoint import remove_checkpoint, save_checkpoint
    from faenet.training import evaluate, train
    from pipeline.tracking import mlflow_run

    net, wrapped = build_wrapped(spec)
    check_splits(net, sets, eval_names)
    n_params = sum(p.numel() for p in net.parameters())
    run_params = {**spec.run_params, "n_params": n_params}
    with mlflow_run(spec.name, run_params, spec.mlflow_tags) as mlf:
        import mlflow

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            mlflow.log_metrics(row, step=epoch + 1)

        result = train(wrapped, sets["train"], {n: sets[n] for n in eval_names[:1]}, spec.settings, needs_forces,
                       checkpoint_path=spec.ckpt_path, on_epoch=on_epoch)
        if result.resumed_from_epoch:
            print(f"{spec.name}: resumed from epoch {result.resumed_from_epoch}")
            for i, row in enumerate(result.history[:result.resumed_from_epoch]):  # the killed attempt's epochs
                mlflow.log_metrics(row, step=i + 1)
        final = {n: evaluate(wrapped, sets[n], eval_batch_size, result.normalizer, needs_forces, split=n)
                 for n in eval_names}
        if spec.target != "energy":
            final = {n: {f"{spec.target}_mae": m["energy_mae"]} for n, m in final.items()}
        mlflow.log_metrics({f"final_{n}_{k}": v for n, m in final.items() for k, v in m.items()})
        state = {"model": net.state_dict(), "model_name": spec.model_name, "hparams": spec.hparams,
                 "symmetry": spec.symmetry, "normalizer": vars(result.normalizer), "seed": spec.seed,
                 "task": spec.task, "target": spec.target, "rewiring": spec.rewiring, "data_hash": spec.data_hash}
        save_checkpoint(state, spec.final_path, keep_prev=False)
        if out_ckpt is not None:
            shutil.copyfile(spec.final_path, out_ckpt)
        run = {"seed": spec.seed, "target": spec.target, "run_id": mlf.info.run_id, "final": final,
               "n_params": n_params, "train_seconds": result.train_seconds,
               "epoch_seconds": result.epoch_seconds,
               "history": [{"epoch": i + 1, **h} for i, h in enumerate(result.history)]}
        mlflow.log_artifact(str(out_ckpt if out_ckpt is not None else spec.final_path), "checkpoint")
        with tempfile.TemporaryDirectory() as tmp:  # the record, as it will be filed
            write_json(Path(tmp) / spec.result_path.name, run)
            mlflow.log_artifact(str(Path(tmp) / spec.result_path.name), "metrics")
        mlflow.log_dict(spec.config, "resolved_config.json")
        # Filed last: a record with a run_id means "done", so a kill before it resumes (and marks this run
        # KILLED) instead of reusing a run left RUNNING; only the run's end remains after it.
        write_json(spec.result_path, run)
    remove_checkpoint(spec.ckpt_path)  # and its .prev: the .final.pt holds what a rerun needs
    return run


@dataclass(frozen=True)
class DataSpec:
    """How a worker process opens the datasets of a run: LMDB paths, task and a picklable transform."""

    paths: dict[str, str]  # split name -> LMDB path; "train" and every eval split
    task: str
    transform: Any = None  # a picklable callable (e.g. ``pipeline.train.RecordTransform``), or None

    def open(self) -> dict[str, Any]:
        from faenet.data.dataset import GraphDataset

        return {name: GraphDataset(path, task=self.task, transform=self.transform) for name, path in self.paths.items()}


@dataclass(frozen=True)
class Job:
    """One run to execute: the spec, its data, where the DVC output checkpoint goes."""

    spec: RunSpec
    data: DataSpec
    eval_names: tuple[str, ...]
    needs_forces: bool
    eval_batch_size: int
    out_ckpt: str | None = None


def fit(job: Job, on_epoch=None) -> dict[str, Any]:
    """Train and evaluate one run (resuming its checkpoint); write its final state and its record without an
    MLflow ``run_id``. No MLflow here: ``on_epoch(epoch, row)`` lets an in-process caller log live."""
    import time

    from faenet.checkpoint import remove_checkpoint, save_checkpoint
    from faenet.training import evaluate, train

    spec, sets = job.spec, job.data.open()
    started = time.time()
    net, wrapped = build_wrapped(spec)
    check_splits(net, sets, job.eval_names)
    result = train(wrapped, sets["train"], {n: sets[n] for n in job.eval_names[:1]}, spec.settings,
                   job.needs_forces, checkpoint_path=spec.ckpt_path, on_epoch=on_epoch,
                   progress=on_epoch is not None)
    if result.resumed_from_epoch:
        print(f"{spec.name}: resumed from epoch {result.resumed_from_epoch}", flush=True)
    final = {n: evaluate(wrapped, sets[n], job.eval_batch_size, result.normalizer, job.needs_forces, split=n)
             for n in job.eval_names}
    if spec.target != "energy":  # a QM9 property: EwT (an energy threshold in eV) does not apply
        final = {n: {f"{spec.target}_mae": m["energy_mae"]} for n, m in final.items()}
    state = {"model": net.state_dict(), "model_name": spec.model_name, "hparams": spec.hparams,
             "symmetry": spec.symmetry, "normalizer": vars(result.normalizer), "seed": spec.seed,
             "task": spec.task, "target": spec.target, "rewiring": spec.rewiring, "data_hash": spec.data_hash}
    save_checkpoint(state, spec.final_path, keep_prev=False)
    run = {"seed": spec.seed, "target": spec.target, "run_id": None, "final": final,
           "n_params": sum(p.numel() for p in net.parameters()), "train_seconds": result.train_seconds,
           "epoch_seconds": result.epoch_seconds, "started": started, "ended": time.time(),
           "history": [{"epoch": i + 1, **h} for i, h in enumerate(result.history)]}
    write_json(spec.result_path, run)
    remove_checkpoint(spec.ckpt_path)  # and its .prev: the .final.pt holds what a rerun needs
    return run


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _fit_in_worker(job: Job) -> dict[str, Any]:
    return fit(job)


def _log_finished(job: Job, run: dict[str, Any]) -> dict[str, Any]:
    """Log a finished run to MLflow (with its real start/end times) and add its ``run_id`` to the record."""
    from pipeline.tracking import log_finished_run

    spec = job.spec
    run_id = log_finished_run(
        spec.name, {**spec.run_params, "n_params": run["n_params"]}, spec.mlflow_tags,
        history=run["history"], final=run["final"], artifacts={"checkpoint": str(spec.final_path),
                                                               "metrics": str(spec.result_path)},
        config=spec.config, start_time=run.get("started"), end_time=run.get("ended"))
    run = {**run, "run_id": run_id}
    write_json(spec.result_path, run)
    return run


def run_all(jobs: list[Job], workers: int = 1, threads: int = 1) -> list[dict[str, Any]]:
    """Run every job (``train_or_reuse`` semantics), ``workers`` at a time; records in job order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from faenet.procs import die_with_parent

    records: list[dict[str, Any] | None] = [None] * len(jobs)
    todo = []
    for k, job in enumerate(jobs):
        if job.spec.done():
            records[k] = json.loads(job.spec.result_path.read_text())
            print(f"{job.spec.name}: finished earlier (MLflow run {records[k]['run_id']}), reused", flush=True)
        elif job.spec.trained():  # trained, not logged: the parent died in between
            records[k] = _log_finished(job, json.loads(job.spec.result_path.read_text()))
        else:
            todo.append(k)
    if workers <= 1 or len(todo) <= 1:
        for k in todo:
            records[k] = train_or_reuse(jobs[k].spec, jobs[k].data.open(), list(jobs[k].eval_names),
                                        jobs[k].needs_forces, jobs[k].eval_batch_size,
                                        Path(jobs[k].out_ckpt) if jobs[k].out_ckpt else None)
    else:
        n = min(workers, len(todo))
        print(f"{len(todo)} runs in {n} processes x {max(1, threads // n)} threads", flush=True)
        with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                                 initargs=(_worker_init, max(1, threads // n))) as pool:
            futures = {k: pool.submit(_fit_in_worker, jobs[k]) for k in todo}
            for k in todo:  # in job order, so MLflow and the metrics see a deterministic order
                records[k] = _log_finished(jobs[k], futures[k].result())
                print(f"{jobs[k].spec.name}: done", flush=True)
    for job in jobs:
        if job.out_ckpt is not None:
            shutil.copyfile(job.spec.final_path, job.out_ckpt)
    return [r for r in records if r is not None]
