"""DVC stage ``continuity`` (beyond the paper): FA predictions of trained cells through a degenerate PCA spectrum.

Wiring only; the path and the measures are ``faenet.continuity``, the outputs ``pipeline.reporting.
continuity``. For every cell of ``continuity.cells`` (by default FAENet-SFA on QM7-X, a molecule, and on IS2RE,
a slab): its first seed's checkpoint, the ``val_id`` structure (among the first ``candidates``, after the
cell's rewiring) whose two leading PCA variances are closest (so the path strains it least), deformed until
those variances cross (``faenet.continuity.degenerate_path``), and the energy (eV) along the path of the same
backbone with no FA, SFA (mean of ``n_draws`` draws), full FA and, for slabs, full FA with lattice frames. Per
method: the largest jump per unit displacement (eV/Å) and the jump ratio (a few when smooth).

Outputs: ``results/continuity.json`` (every path), ``metrics/continuity.json`` (headline) and
``reports/continuity.png`` (energy along the path, one panel per cell; ``reports/figures`` is the report
stage's output). The claims audit reads the results (a beyond-the-paper row). Nothing is logged to MLflow.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pipeline.config import ROOT, Params, stage_main
from pipeline.reporting.continuity import write_outputs

DATA = ROOT / "data"
MODELS = ROOT / "models"
RESULTS = ROOT / "results" / "continuity.json"
HEADLINE = ROOT / "metrics" / "continuity.json"
FIGURE = ROOT / "reports" / "continuity.png"


def run_cell(params: Params, cell: str, data_dir: Path = DATA, models: Path = MODELS) -> dict[str, Any]:
    """The sweep of one trained cell (module docstring): its first seed's checkpoint, ``val_id`` candidates."""
    from baselines.registry import build_model
    from faenet.checkpoint import load_checkpoint
    from faenet.continuity import sweep_model
    from faenet.data.dataset import GraphDataset, remove_tag0
    from faenet.tasks import FRAME_DIM
    from faenet.training import Normalizer

    cfg = params.active.continuity
    c = params.train_cells[cell]
    seed = params.active.train.seeds_for(c.model, c.dataset)[0]
    path = models / cell / f"seed{seed}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: train the cell first (`dvc repro train@{cell}`)")
    ckpt = load_checkpoint(path)
    net = build_model(ckpt["model_name"], **ckpt["hparams"])
    net.load_state_dict(ckpt["model"])
    net.eval()
    dim = FRAME_DIM[c.dataset]
    ds = GraphDataset(data_dir / c.dataset / "val_id.lmdb", task=c.dataset)
    records = [ds[k] for k in range(min(len(ds), cfg.candidates))]
    if ckpt.get("rewiring") == "remove-tag-0":
        records = [remove_tag0(r) for r in records]
    res = sweep_model(net, Normalizer.from_state(ckpt["normalizer"]), records, dim, n_draws=cfg.n_draws,
                      seed=cfg.seed, n_points=cfg.n_points, width=cfg.width, uncap_neighbors=cfg.uncap_neighbors)
    return {"cell": cell, "task": c.dataset, "seed": seed, "trained_symmetry": ckpt["symmetry"],
            "uncapped_neighbors": cfg.uncap_neighbors, "frame_dim": dim, **res}


def run_stage(params: Params, data_dir: Path = DATA, models: Path = MODELS) -> dict[str, Any]:
    cfg = params.active.continuity
    trained = {f"{m}-{t}-{s}" for m, t, s in params.trained_cells()}
    cells = [c for c in cfg.cells if c in trained]
    return {"profile": params.profile, "config": cfg.model_dump(mode="json"),
            "cells": {c: run_cell(params, c, data_dir, models) for c in cells},
            "units": {"energy": "eV", "max_jump_per_A": "eV/Å", "excess_jump": "eV", "step_A": "Å"}}


def main() -> int:
    return stage_main(_main)


def _main(params: Params) -> int:
    t0 = time.perf_counter()
    result = run_stage(params)
    write_outputs(result, results=RESULTS, head=HEADLINE, figure=FIGURE)
    for cell, r in result["cells"].items():
        jumps = ", ".join(f"{m} {v:.3g} eV/Å (ratio {r['jump_ratio'][m]:.1f})" for m, v in r["max_jump_per_A"].items())
        print(f"{cell}: {jumps}; sweep {r['seconds']:.1f} s")
    print(f"continuity: {len(result['cells'])} cells in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
