"""The ``continuity`` stage's outputs (torch-free): ``results/continuity.json``, the headline
(``metrics/continuity.json``: per cell and method the largest jump per Å and the jump ratio) and the figure of
the energy along each path.

Every function reads the result dict of ``pipeline.continuity.run_stage``: ``profile``, ``config``, ``units``
and ``cells`` (per cell ``pipeline.continuity.run_cell``'s record: ``faenet.continuity.sweep_model``'s fields
plus the cell's task, seed, trained symmetry and frame dimension).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.tracking import write_json


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """``metrics/continuity.json``: ``{profile, <cell>: {<method>_max_jump_eV_per_A, <method>_jump_ratio}}``."""
    return {"profile": result["profile"],
            **{cell: {f"{m}_max_jump_eV_per_A": v for m, v in r["max_jump_per_A"].items()}
               | {f"{m}_jump_ratio": v for m, v in r["jump_ratio"].items()}
               for cell, r in result["cells"].items()}}


def path_figure(result: dict[str, Any], path: Path) -> None:
    """Energy along the path relative to its start, one panel per cell, one line per method."""
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


def write_outputs(result: dict[str, Any], results: Path, head: Path, figure: Path) -> None:
    """Results without the sweep timings (same inputs, same bytes), the headline and the figure."""
    stable = {**result, "cells": {c: {k: v for k, v in r.items() if k != "seconds"}
                                  for c, r in result["cells"].items()}}
    write_json(results, stable)
    write_json(head, headline(result))
    path_figure(result, figure)
