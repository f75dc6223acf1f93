"""DVC stage ``continuity`` (beyond the paper): FA predictions of trained cells through a degenerate PCA spectrum.

Wiring only; the path and the measures are ``faenet.continuity``. For every cell of ``continuity.cells`` (by
default FAENet-SFA on QM7-X, a molecule, and on IS2RE, a slab): its first seed's checkpoint, the ``val_id``
structure (among the first ``candidates``, after the cell's rewiring) whose two leading PCA variances are
closest (so the path strains it least), deformed until those variances cross (``faenet.continuity.
degenerate_path``), and the energy (eV) along the path of the same backbone with no FA, SFA (mean of
``n_draws`` draws), full FA and, for slabs, full FA with lattice frames. Per method: the largest jump per unit
displacement (eV/Å) and the jump ratio (a few when smooth).

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

DATA = ROOT / "data"
MODELS = ROOT / "models"
RESULTS = ROOT / "results" / "continuity.json"
HEADLINE = ROOT / "metrics" / "continuity.json"
FIGURE = ROOT / "reports" / "continuity.png"


def _nearest_degenerate(records: list, dim: int) -> tuple[int, float]:
    """Index and relative gap of the record whose two leading PCA variances are closest."""
    import torch

    from faenet.frames import compute_frames

    best, gap = 0, float("inf")
    for k, rec in enumerate(records):
        p = rec.pos.to(torch.float64)
        lam = compute_frames(p, torch.zeros(p.shape[0], dtype=torch.long), 1, dim=dim).eigenvalues[0]
        g = float((lam[0] - lam[1]) / lam[0])
        if 1e-6 < g < gap:
            best, gap = k, g
    return best, gap


def run_cell(params: Params, cell: str, data_dir: Path = DATA, models: Path = MODELS) -> dict[str, Any]:
    """The sweep of one trained cell (module docstring)."""
    import torch
    from torch_geometric.data import Batch

    from baselines.registry import build_model
    from faenet.checkpoint import load_checkpoint
    from faenet.continuity import continuity_sweep, symmetry_predictors
    from faenet.data.dataset import GraphDataset, remove_tag0
    from faenet.symmetry_eval import DenormalizedPredictor
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
    # Energies only: forces are not swept, and -dE/dpos would double the cost. The energy is the same function.
    net.regress_forces = ""
    if cfg.uncap_neighbors and hasattr(net, "max_num_neighbors"):
        # The data's neighbour cap ranks equidistant periodic images (2x2 slabs), so the backbone itself jumps
        # along any strain; without it the `none` row measures the backbone, and FA rows the frames.
        net.max_num_neighbors = None
    norm = Normalizer.from_state(ckpt["normalizer"])
    dim = FRAME_DIM[c.dataset]
    ds = GraphDataset(data_dir / c.dataset / "val_id.lmdb", task=c.dataset)
    records = [ds[k] for k in range(min(len(ds), cfg.candidates))]
    if ckpt.get("rewiring") == "remove-tag-0":
        records = [remove_tag0(r) for r in records]
    k, gap0 = _nearest_degenerate(records, dim)
    data = Batch.from_data_list([records[k]])
    periodic = bool(getattr(records[k], "pbc", torch.zeros(3)).bool().any())

    def wrap(w):
        p = DenormalizedPredictor(w, norm)
        return lambda d: p(d)["energy"]

    preds = symmetry_predictors(net, dim, n_draws=cfg.n_draws, seed=cfg.seed, periodic=periodic, wrap=wrap)
    t0 = time.perf_counter()
    res = continuity_sweep(preds, data, dim, n_points=cfg.n_points, width=cfg.width)
    return {"cell": cell, "task": c.dataset, "seed": seed, "trained_symmetry": ckpt["symmetry"],
            "uncapped_neighbors": cfg.uncap_neighbors,
            "frame_dim": dim, "record_index": k, "initial_gap": gap0, "periodic": periodic,
            "seconds": time.perf_counter() - t0, **res}


def run_stage(params: Params, data_dir: Path = DATA, models: Path = MODELS) -> dict[str, Any]:
    cfg = params.active.continuity
    trained = {f"{m}-{t}-{s}" for m, t, s in params.trained_cells()}
    cells = [c for c in cfg.cells if c in trained]
    return {"profile": params.profile, "config": cfg.model_dump(mode="json"),
            "cells": {c: run_cell(params, c, data_dir, models) for c in cells},
            "units": {"energy": "eV", "max_jump_per_A": "eV/Å", "excess_jump": "eV", "step_A": "Å"}}


def headline(result: dict[str, Any]) -> dict[str, Any]:
    return {"profile": result["profile"],
            **{cell: {f"{m}_max_jump_eV_per_A": v for m, v in r["max_jump_per_A"].items()}
               | {f"{m}_jump_ratio": v for m, v in r["jump_ratio"].items()}
               for cell, r in result["cells"].items()}}


def _figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(result["cells"].items())
    fig, axes = plt.subplots(1, max(1, len(cells)), figsize=(5.5 * max(1, len(cells)), 3.8), squeeze=False)
    for ax, (cell, r) in zip(axes[0], cells, strict=False):
        for m, e in r["energy"].items():
            ax.plot(r["t"], [x - e[0] for x in e], marker=".", ms=3, label=f"{m} (ratio {r['jump_ratio'][m]:.0f})")
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{cell} (trained {r['trained_symmetry']}), {r['frame_dim']}D frames", fontsize=9)
        ax.set_xlabel("path s (PCA variances cross at s = 0)")
        ax.set_ylabel("E(s) - E(-1) (eV)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict[str, Any], results: Path = RESULTS, head: Path = HEADLINE,
                  figure: Path = FIGURE) -> None:
    from pipeline.tracking import write_json

    stable = {**result, "cells": {c: {k: v for k, v in r.items() if k != "seconds"}
                                  for c, r in result["cells"].items()}}  # same inputs, same bytes
    write_json(results, stable)
    write_json(head, headline(result))
    _figure(result, figure)


def main() -> int:
    return stage_main(_main)


def _main(params: Params) -> int:
    t0 = time.perf_counter()
    result = run_stage(params)
    write_outputs(result)
    for cell, r in result["cells"].items():
        jumps = ", ".join(f"{m} {v:.3g} eV/Å (ratio {r['jump_ratio'][m]:.1f})" for m, v in r["max_jump_per_A"].items())
        print(f"{cell}: {jumps}; sweep {r['seconds']:.1f} s")
    print(f"continuity: {len(result['cells'])} cells in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
