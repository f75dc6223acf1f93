"""One training run (a model, a symmetry method, a target, a seed) as the stages run it: trained once, logged
to MLflow once, resumed after a kill, reused when it already finished. Shared by the ``train`` and
``ablation`` stages.

Keying: a run is identified by a digest of everything it depends on (model name, hyperparameters, training
settings, symmetry method, target, seed, rewiring and the dataset's content hash), under a folder of
``work/`` chosen by the stage (the train cell, or ``ablation/<variant>``):

- ``work/ckpt/<folder>/<tag>-<key>.pt``: the checkpoint of an unfinished run (written every epoch, resumed);
- ``work/ckpt/<folder>/<tag>-<key>.final.pt``: the final model state (model, hparams, normaliser, ...);
- ``work/results/<folder>/<tag>-<key>.json``: the run record (below), written last.

A run whose record and final state both exist is not trained again nor logged again. ``work/`` lies outside
DVC's outputs (DVC deletes those before a stage runs), so nothing computed is lost.

Run record (``RunRecord`` keys): ``seed``, ``target``, ``run_id`` (MLflow), ``final`` ({split: {metric:
value}}, eV; QM9 properties as ``<name>_mae``), ``n_params``, ``train_seconds``, ``epoch_seconds`` (list),
``history`` (per-epoch rows with ``epoch``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import FRAME_DIM, ROOT, digest
from pipeline.tracking import write_json

WORK = ROOT / "work"


@dataclass(frozen=True)
class RunSpec:
    """What one run trains and where it is filed. ``settings`` is a ``faenet.training.TrainSettings``."""

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
    def ckpt_path(self) -> Path:
        return WORK / "ckpt" / self.folder / f"{self.tag}-{self.key}.pt"

    @property
    def final_path(self) -> Path:
        return self.ckpt_path.with_suffix(".final.pt")

    @property
    def result_path(self) -> Path:
        return WORK / "results" / self.folder / f"{self.tag}-{self.key}.json"

    def done(self) -> bool:
        return self.result_path.exists() and self.final_path.exists()


def build_wrapped(spec: RunSpec):
    """``(model, SymmetryWrapper(model))`` for the spec, freshly initialised from its seed."""
    import torch

    from baselines.registry import build_model
    from faenet.symmetry import SymmetryWrapper

    torch.manual_seed(spec.seed)
    net = build_model(spec.model_name, **spec.hparams)
    return net, SymmetryWrapper(net, spec.symmetry, frame_dim=FRAME_DIM[spec.task])


def load_final(spec: RunSpec):
    """The trained ``(model, SymmetryWrapper(model))`` of a finished run (its final state)."""
    import torch

    if not spec.final_path.exists():
        raise FileNotFoundError(f"{spec.final_path} is missing: the run {spec.name} has not finished")
    net, wrapped = build_wrapped(spec)
    net.load_state_dict(torch.load(spec.final_path, weights_only=False)["model"])
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

    import torch

    from faenet.training import evaluate, train
    from pipeline.tracking import mlflow_run

    net, wrapped = build_wrapped(spec)
    n_params = sum(p.numel() for p in net.parameters())
    run_params = {**spec.run_params, "n_params": n_params}
    with mlflow_run(spec.name, run_params, {**spec.tags, "target": spec.target}) as mlf:
        import mlflow

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            mlflow.log_metrics(row, step=epoch + 1)

        result = train(wrapped, sets["train"], {n: sets[n] for n in eval_names[:1]}, spec.settings, needs_forces,
                       checkpoint_path=spec.ckpt_path, on_epoch=on_epoch)
        if result.resumed_from_epoch:
            print(f"{spec.name}: resumed from epoch {result.resumed_from_epoch}")
        final = {n: evaluate(wrapped, sets[n], eval_batch_size, result.normalizer, needs_forces)
                 for n in eval_names}
        if spec.target != "energy":
            final = {n: {f"{spec.target}_mae": m["energy_mae"]} for n, m in final.items()}
        mlflow.log_metrics({f"final_{n}_{k}": v for n, m in final.items() for k, v in m.items()})
        state = {"model": net.state_dict(), "model_name": spec.model_name, "hparams": spec.hparams,
                 "symmetry": spec.symmetry, "normalizer": vars(result.normalizer), "seed": spec.seed,
                 "task": spec.task, "target": spec.target, "rewiring": spec.rewiring, "data_hash": spec.data_hash}
        spec.final_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, spec.final_path)
        if out_ckpt is not None:
            shutil.copyfile(spec.final_path, out_ckpt)
        run = {"seed": spec.seed, "target": spec.target, "run_id": mlf.info.run_id, "final": final,
               "n_params": n_params, "train_seconds": result.train_seconds,
               "epoch_seconds": result.epoch_seconds,
               "history": [{"epoch": i + 1, **h} for i, h in enumerate(result.history)]}
        write_json(spec.result_path, run)
        mlflow.log_artifact(str(out_ckpt if out_ckpt is not None else spec.final_path), "checkpoint")
        mlflow.log_artifact(str(spec.result_path), "metrics")
        mlflow.log_dict(spec.config, "resolved_config.json")
    if spec.ckpt_path.exists():
        spec.ckpt_path.unlink()  # the .final.pt holds what a rerun needs
    return run
