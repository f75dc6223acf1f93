"""One training run (a model, a symmetry method, a target, a seed) as the stages run it: trained once, logged
to MLflow once, resumed after a kill, reused when it already finished. Shared by the ``train`` and
``ablation`` stages.

Keying: a run is identified by a digest of everything it depends on (model name, hyperparameters, training
settings, symmetry method, target, seed, rewiring and the dataset's content hash), under a folder of
``work/`` chosen by the stage (the train cell, or ``ablation/<variant>``):

- ``work/ckpt/<folder>/<tag>-<key>.pt``: the checkpoint of an unfinished run (written every epoch, resumed;
  the one before it kept as ``.pt.prev``);
- ``work/ckpt/<folder>/<tag>-<key>.final.pt``: the final model state (model, hparams, normaliser, ...), the
  one copy this module writes. The train stage's DVC output ``models/<cell>/<tag>.pt`` is made a hard link to
  it (a copy where links are not possible; ``faenet.checkpoint.link_or_copy``); DVC then stores it in its cache
  and checks it out by its ``cache.type`` (by default a reflink or a copy). MLflow holds a pointer to it (path,
  size, SHA-256; ``checkpoint/checkpoint.json``), not the weights;
- ``work/results/<folder>/<tag>-<key>.json``: the run record (below), written last.

Checkpoints are written atomically and read weights-only (``faenet.checkpoint``): reading one never runs code.

One sequence for every run: :func:`fit` trains, evaluates, writes the final state and the record (no MLflow:
it may run in a worker process), then :func:`record_run`, in the stage's process, logs the finished run to
MLflow (params, per-epoch metrics at their epochs and times, artifacts, its real start and end times) and adds
the ``run_id`` to the record. A run whose record and final state exist is not trained again; one whose record
has no ``run_id`` (the process was killed between the two) is logged, not retrained (:func:`reused`). A killed
training leaves no MLflow run behind; a killed logging leaves one RUNNING, marked KILLED when the run is
logged again. ``work/`` lies outside DVC's outputs (DVC deletes those before a stage runs), so nothing
computed is lost.

Parallel runs (``run_all`` with ``workers > 1``): independent runs (seeds, QM9 properties) train in spawned
processes (``faenet.procs.run_pool``) with ``threads // workers`` torch threads each: small models use two
cores better as two runs than as one run on two threads. Only the parent logs to MLflow (one SQLite writer),
in job order. Results do not depend on the number of workers.

Run record (``RunRecord`` keys): ``seed``, ``target``, ``run_id`` (MLflow), ``final`` ({split: {metric:
value}}, eV; QM9 properties as ``<name>_mae``), ``n_params``, ``train_seconds``, ``epoch_seconds`` (list),
``history`` (per-epoch rows with ``epoch``), ``started``/``ended`` and ``epoch_ended`` (list; Unix seconds).
"""

from __future__ import annotations

import json
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
    device: str = "auto"  # train.device (not in the key: where a run computes, not what it is)
    amp: str = "off"  # train.amp (in the key when not "off": mixed precision changes the numbers)
    num_workers: int = 0  # train.num_workers (not in the key: DataLoader workers give the same batches)
    balance_ranks: str = "off"  # train.balance_ranks (not in the key, like nproc_per_node: the same union batches)
    # train.stream: in the key only with an element shift, whose streamed normal equations agree with the
    # in-memory least squares to float rounding only (without one, a streamed run is bit-identical).
    stream: bool = False

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
        if self.amp != "off":  # idem
            parts["amp"] = self.amp
        if self.stream and getattr(self.settings, "element_shift", False):  # idem
            parts["stream"] = True
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


def fit(spec: RunSpec, sets: Mapping[str, Any], eval_names: Sequence[str], needs_forces: bool,
        eval_batch_size: int, progress: bool = False, dist: Any = None) -> dict[str, Any]:
    """Train the run (resuming its checkpoint), evaluate it on ``eval_names``, write its final state, then its
    record (without an MLflow ``run_id``: :func:`record_run` logs it). The one training sequence of the stages,
    in this process or in a worker; no MLflow here (workers must not write to the SQLite store).

    ``sets`` maps ``"train"`` and every eval split to a dataset; the first eval split is evaluated every epoch
    (it drives the plateau scheduler). Returns the record (module docstring), with ``started``/``ended`` and
    ``epoch_ended`` (Unix seconds; None for the epochs of a killed attempt, whose times are not known).

    ``dist`` (a ``faenet.distributed.Dist``, process group initialised): every rank trains and evaluates its
    share; rank 0 alone writes the checkpoints, the final state and the record. None: one process.
    """
    import time

    from faenet import distributed as ddp
    from faenet.checkpoint import remove_checkpoint, save_checkpoint
    from faenet.device import resolve_device
    from faenet.training import evaluate, train

    dist = dist or ddp.Dist()
    device = resolve_device(spec.device, dist.local_rank if dist.enabled else None)
    started = time.time()
    epoch_ended: dict[int, float] = {}
    net, wrapped = build_wrapped(spec)
    check_splits(net, sets, eval_names)
    result = train(wrapped, sets["train"], {n: sets[n] for n in eval_names[:1]}, spec.settings, needs_forces,
                   checkpoint_path=spec.ckpt_path, on_epoch=lambda epoch, _: epoch_ended.update({epoch: time.time()}),
                   progress=progress, device=device, amp=spec.amp, dist=dist, num_workers=spec.num_workers,
                   balance_ranks=spec.balance_ranks)
    if result.resumed_from_epoch and dist.is_main:
        print(f"{spec.name}: resumed from epoch {result.resumed_from_epoch}", flush=True)
    final = {n: evaluate(wrapped, sets[n], eval_batch_size, result.normalizer, needs_forces, split=n,
                         device=device, dist=dist, num_workers=spec.num_workers, zero_reference=True)
             for n in eval_names}
    net.to("cpu")  # the final state is stored CPU-side (loadable anywhere)
    if spec.target != "energy":  # a QM9 property: EwT (an energy threshold in eV) does not apply
        final = {n: {f"{spec.target}_mae": m["energy_mae"]} for n, m in final.items()}
    state = {"model": net.state_dict(), "model_name": spec.model_name, "hparams": spec.hparams,
             "symmetry": spec.symmetry, "normalizer": vars(result.normalizer), "seed": spec.seed,
             "task": spec.task, "target": spec.target, "rewiring": spec.rewiring, "data_hash": spec.data_hash}
    run = {"seed": spec.seed, "target": spec.target, "run_id": None, "final": final,
           "n_params": sum(p.numel() for p in net.parameters()), "train_seconds": result.train_seconds,
           "epoch_seconds": result.epoch_seconds, "started": started, "ended": time.time(),
           "epoch_ended": [epoch_ended.get(i) for i in range(len(result.history))],
           "history": [{"epoch": i + 1, **h} for i, h in enumerate(result.history)]}
    if dist.is_main:
        save_checkpoint(state, spec.final_path, keep_prev=False)
        write_json(spec.result_path, run)
        remove_checkpoint(spec.ckpt_path)  # and its .prev: the .final.pt holds what a rerun needs
    ddp.barrier(dist)  # every rank sees the run finished before the next one
    return run


def record_run(spec: RunSpec, run: dict[str, Any]) -> dict[str, Any]:
    """Log a finished run (its record from :func:`fit`) to MLflow and file the record with its ``run_id``.

    The run holds the params, every epoch's metrics at its epoch and time (those of a killed attempt at the
    run's start), ``final_<split>_<metric>``, the record and the resolved config as artifacts, a pointer to the
    final state (``checkpoint/checkpoint.json``: path, size, SHA-256; not a third copy of the weights: the
    state lives in ``work/ckpt`` and, for the train stage, in DVC's cache) and the run's real start and end.
    """
    from pipeline.tracking import log_finished_run

    times = run.get("epoch_ended") or []
    history = [{"step": h["epoch"], "time": (times[i] if i < len(times) else None) or run.get("started"),
                **{k: v for k, v in h.items() if k != "epoch"}} for i, h in enumerate(run["history"])]
    run_id = log_finished_run(
        spec.name, {**spec.run_params, "n_params": run["n_params"]}, spec.mlflow_tags, history=history,
        metrics={f"final_{n}_{k}": v for n, m in run["final"].items() for k, v in m.items()},
        artifacts={"metrics": spec.result_path},
        dicts={"resolved_config.json": spec.config, "checkpoint/checkpoint.json": _file_pointer(spec.final_path)},
        start_time=run.get("started"), end_time=run.get("ended"))
    run = {**run, "run_id": run_id}
    # Filed last: a record with a run_id means "done"; a kill before it logs the run again (marking the
    # half-logged one KILLED), it never trains again.
    write_json(spec.result_path, run)
    return run


def _file_pointer(path: Path) -> dict[str, Any]:
    import hashlib

    digest_ = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest_.update(chunk)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return {"path": str(shown), "bytes": path.stat().st_size, "sha256": digest_.hexdigest()}


def reused(spec: RunSpec) -> dict[str, Any] | None:
    """The record of a run trained earlier (logged to MLflow now if its process died before logging it), or
    None when it has to be trained."""
    if not spec.trained():
        return None
    run = json.loads(spec.result_path.read_text())
    if not run.get("run_id"):  # trained, not logged: the process died in between
        return record_run(spec, run)
    print(f"{spec.name}: finished earlier (MLflow run {run['run_id']}), reused", flush=True)
    return run


def train_or_reuse(spec: RunSpec, sets: Mapping[str, Any], eval_names: Sequence[str], needs_forces: bool,
                   eval_batch_size: int) -> dict[str, Any]:
    """The record of the run: reused, or trained here on the open datasets ``sets`` (:func:`fit`) and logged
    (:func:`record_run`). For runs whose datasets are built in this process (the ablation's subsets)."""
    return reused(spec) or record_run(spec, fit(spec, sets, eval_names, needs_forces, eval_batch_size,
                                                progress=True))


@dataclass(frozen=True)
class DataSpec:
    """How a worker process opens the datasets of a run: LMDB paths, task and a picklable transform."""

    paths: dict[str, str]  # split name -> LMDB path; "train" and every eval split
    task: str
    transform: Any = None  # a picklable callable (e.g. ``faenet.data.transforms.RecordTransform``), or None
    train_indices: tuple[int, ...] | None = None  # a subset of the train split (stage scaling); None = all
    in_memory: bool = True  # False (train.stream): read the LMDBs lazily, records decoded on access

    def open(self) -> dict[str, Any]:
        from torch.utils.data import Subset

        from faenet.data.dataset import GraphDataset

        sets = {name: GraphDataset(path, task=self.task, transform=self.transform, in_memory=self.in_memory)
                for name, path in self.paths.items()}
        if self.train_indices is not None:
            sets["train"] = Subset(sets["train"], list(self.train_indices))
        return sets


@dataclass(frozen=True)
class Job:
    """One run to execute: the spec, its data, where the DVC output checkpoint goes."""

    spec: RunSpec
    data: DataSpec
    eval_names: tuple[str, ...]
    needs_forces: bool
    eval_batch_size: int
    out_ckpt: str | None = None


def _fit_job(job: Job) -> dict[str, Any]:
    """:func:`fit` of a job, in a worker or in this process (epoch progress bars only in the main process:
    workers share its terminal)."""
    import multiprocessing as mp

    return fit(job.spec, job.data.open(), job.eval_names, job.needs_forces, job.eval_batch_size,
               progress=mp.parent_process() is None)


def run_all(jobs: list[Job], workers: int = 1, threads: int = 1, dist: Any = None) -> list[dict[str, Any]]:
    """The record of every job (reused, or trained and logged), ``workers`` at a time; in job order.

    Runs to train go to :func:`faenet.procs.run_pool` (one: in this process, on its torch threads; more: in
    spawned workers with ``threads // workers`` torch threads each); this process logs each finished run to
    MLflow in job order.
    Each final state is then linked to the job's DVC output (``out_ckpt``).

    Under DDP (``dist`` with several ranks) every rank trains every run to train, one after the other, in this
    process (``workers`` is ignored: the ranks are the parallelism); rank 0 alone logs to MLflow and links the
    outputs; the other ranks return the records without ``run_id``.
    """
    from faenet import distributed as ddp
    from faenet.checkpoint import link_or_copy
    from faenet.procs import run_pool

    if dist is not None and dist.enabled:
        done = [job.spec.trained() for job in jobs]  # the same answer on every rank (nothing written yet)
        ddp.barrier(dist)
        out = []
        for job, finished in zip(jobs, done, strict=True):
            if finished:
                run = reused(job.spec) if dist.is_main else json.loads(job.spec.result_path.read_text())
            else:
                run = fit(job.spec, job.data.open(), job.eval_names, job.needs_forces, job.eval_batch_size,
                          progress=True, dist=dist)
                if dist.is_main:
                    run = record_run(job.spec, run)
            if dist.is_main and job.out_ckpt is not None:
                link_or_copy(job.spec.final_path, job.out_ckpt)
            out.append(run)
        ddp.barrier(dist)
        return out

    records = [reused(job.spec) for job in jobs]
    todo = [k for k, r in enumerate(records) if r is None]
    n = max(1, min(workers, len(todo)))
    if n > 1:
        print(f"{len(todo)} runs in {n} processes x {max(1, threads // n)} threads", flush=True)
    # One run trains here, on this process's torch threads (the stage set them); workers share ``threads``.
    for i, run in run_pool(_fit_job, [jobs[k] for k in todo], n, threads=max(1, threads // n) if n > 1 else None):
        job = jobs[todo[i]]
        records[todo[i]] = record_run(job.spec, run)
        if n > 1:
            print(f"{job.spec.name}: done", flush=True)
    for job in jobs:
        if job.out_ckpt is not None:
            link_or_copy(job.spec.final_path, job.out_ckpt)
    return [r for r in records if r is not None]
