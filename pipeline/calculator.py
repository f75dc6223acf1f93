"""A train cell's name -> an ASE calculator of its trained model (``faenet.calculator.ModelCalculator``).

The checkpoint is the train stage's DVC output ``models/<cell>/seed<k>.pt`` (a link to the run's final state in
``work/ckpt``); the graph settings are those the cell's dataset was built with (``profiles.<p>.data.catalysis`` or
``.qm7x`` / ``.qm9``: cutoff and neighbour cap), the frame dimension the task's (``pipeline.resolve``), the model
built through the registry (FAENet and every baseline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import CATALYSIS, ROOT, ConfigError, Params

MODELS = ROOT / "models"


def checkpoint_of(cell: str, seed: int = 0, models: Path = MODELS) -> Path:
    return models / cell / f"seed{seed}.pt"


def graph_settings(params: Params, task: str) -> dict[str, Any]:
    """``{cutoff, max_num_neighbors}`` of the active profile's ``task`` data."""
    data = params.active.data
    section = data.catalysis if task in CATALYSIS else getattr(data, task)
    return {"cutoff": float(section.cutoff), "max_num_neighbors": int(section.max_num_neighbors)}


def cell_calculator(params: Params, cell: str, run_seed: int = 0, models: Path = MODELS, **kwargs: Any):
    """The calculator of the run ``run_seed`` of ``cell`` (a ``train_cells`` name); ``kwargs`` go to ``ModelCalculator``
    (``forces``, ``frame_policy``, ``adsorbate_indices``...). ``FileNotFoundError`` names the missing
    checkpoint and the command that writes it."""
    from baselines.registry import build_model
    from faenet.calculator import ModelCalculator
    from pipeline.resolve import resolve_cell

    if cell not in params.train_cells:
        raise ConfigError(f"train_cells has no {cell!r}; cells: {sorted(params.train_cells)}")
    c = params.train_cells[cell]
    rc = resolve_cell(params, c.model, c.dataset, c.symmetry)
    path = checkpoint_of(cell, run_seed, models)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: train the cell first (`dvc repro train@{cell}`)")
    # kwargs may override the data's graph settings (e.g. max_num_neighbors: a cap ties in small periodic cells)
    return ModelCalculator.from_checkpoint(path, frame_dim=rc.frame_dim, build_model=build_model,
                                           **{**graph_settings(params, c.dataset), **kwargs})
