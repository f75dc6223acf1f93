"""The symmetry stage's inputs as the other stages left them: trained cells, their checkpoints, the task data.

Every missing, stale or unreadable input raises ``StageInputError`` (``CheckpointError`` for checkpoints)
naming the file and the command that regenerates it, before any evaluation where that can be known. Reading a
checkpoint goes through the project's one weights-only loader (``faenet.checkpoint.load_checkpoint``); the
files are the train stage's DVC outputs ``models/<cell>/<RunSpec.tag>.pt`` (``pipeline.runs``).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import EVAL_SPLITS


class StageInputError(RuntimeError):
    """An input of the stage (data, train metrics, checkpoint) is missing, stale or unreadable; the message
    names the file and the command that regenerates it."""


class CheckpointError(StageInputError):
    """A checkpoint the train metrics announce is missing, unreadable or does not match its cell."""


def excluded(cell: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(cell, p) for p in patterns)


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
    """The train stage's output for an energy run: ``models/<cell>/<RunSpec.tag>.pt``, tag ``seed<seed>``."""
    return models / cell / f"seed{seed}.pt"


def _retrain_hint(cell_meta: Mapping[str, Any]) -> str:
    return (f"rerun `dvc repro train@{cell_meta['cell']}` (or `python -m pipeline.train --model "
            f"{cell_meta['model']} --dataset {cell_meta['dataset']} --symmetry {cell_meta['symmetry']}`)")


def missing_checkpoint(path: Path, cell_meta: Mapping[str, Any], seed: int) -> CheckpointError:
    return CheckpointError(f"{path}: checkpoint of cell {cell_meta['cell']}, seed {seed} is missing although "
                           f"results/train/{cell_meta['cell']}.json says the cell was trained; "
                           f"{_retrain_hint(cell_meta)}")


def load_cell_checkpoint(path: Path, cell_meta: Mapping[str, Any], seed: int, data_hash: str) -> dict[str, Any]:
    """The train stage's checkpoint of ``cell_meta['cell']`` for ``seed``, checked against the cell."""
    from faenet.checkpoint import CorruptCheckpointError, UnsafeCheckpointError, load_checkpoint

    cell = cell_meta["cell"]
    fix = _retrain_hint(cell_meta)
    if not path.is_file():
        raise missing_checkpoint(path, cell_meta, seed)
    try:
        ckpt = load_checkpoint(path)  # never runs code from the file
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


def _fetched(path: Path) -> Path:
    if not path.exists():
        raise StageInputError(f"{path} is missing: run the fetch stage first (`dvc repro fetch`)")
    return path


class TaskData:
    """The evaluated graphs of one task (``faenet.symmetry_runs.TaskGraphs`` of its first eval split), the
    data's content hash (checked against every checkpoint) and No-Train's normalisers, fitted once each."""

    def __init__(self, data_dir: Path, task: str, max_graphs: int, seed: int) -> None:
        from faenet.data.dataset import content_hash
        from faenet.symmetry_runs import TaskGraphs

        self.task, self.split, self.data_dir = task, EVAL_SPLITS[task][0], data_dir
        self.graphs = TaskGraphs(_fetched(data_dir / task / f"{self.split}.lmdb"), task, max_graphs, seed)
        self.indices, self.n_split = self.graphs.indices, self.graphs.n_split
        self.hash = content_hash(data_dir / task)
        self._normalizers: dict[tuple, Any] = {}

    def records(self, rewiring: str) -> list:
        return self.graphs.records(rewiring)

    def notrain_normalizer(self, rewiring: str, normalize: bool, element_shift: bool):
        """Mean/std (and element shift) of the training targets, fitted as the train stage does."""
        from faenet.symmetry_runs import fit_normalizer

        key = (rewiring, normalize, element_shift)
        if key not in self._normalizers:
            self._normalizers[key] = fit_normalizer(_fetched(self.data_dir / self.task / "train.lmdb"), self.task,
                                                    rewiring, normalize, element_shift)
        return self._normalizers[key]


# Per process: the evaluated graphs of each task (loaded once per worker).
_TASK_DATA: dict[tuple, TaskData] = {}


def task_data(data_dir: Path, task: str, max_graphs: int, seed: int) -> TaskData:
    key = (str(data_dir), task, max_graphs, seed)
    if key not in _TASK_DATA:
        _TASK_DATA[key] = TaskData(data_dir, task, max_graphs, seed)
    return _TASK_DATA[key]
