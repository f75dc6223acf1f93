"""The ``simulate`` stage's results as numbers, text and a figure (torch-free): the per-cell summary rows, the
headline (``metrics/simulate.json``), ``reports/tables/simulate.md``/``.csv`` and the energy figure.

Every function reads the result dict that ``pipeline.simulate.run_stage`` returns: ``runs`` (one record per NVE
run: ``task``, ``cell``, ``forces``, ``frame_policy``, ``structure`` and ``faenet.simulation.measure_nve``'s
fields), ``jacobian`` (``{"<cell>/<forces>": λ}``), ``relaxations`` (``faenet.simulation.relaxation_runs``) and
``config`` (the ``simulate`` section).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.reporting.table_writer import fmt, write_table
from pipeline.tracking import write_json


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, cell, forces, frame policy): mean drift, fraction stable, worst bond deviation."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in result["runs"]:
        groups.setdefault((r["task"], r["cell"], r["forces"], r["frame_policy"]), []).append(r)
    rows = []
    for (task, cell, forces, policy), rs in groups.items():
        rows.append({"task": task, "cell": cell, "forces": forces, "frame_policy": policy or "",
                     "n": len(rs), "steps": int(np.mean([r["steps_run"] for r in rs])),
                     "timestep_fs": rs[0]["timestep_fs"],
                     "drift_mev_atom_ps": float(np.mean([r["drift_ev_per_atom_ps"] for r in rs])) * 1e3,
                     "max_abs_energy_change_mev_atom": max(r["max_abs_energy_change"] for r in rs) * 1e3,
                     "stable_fraction": float(np.mean([r["stable"] for r in rs])),
                     "max_bond_deviation_A": max(r["max_bond_deviation"] for r in rs),
                     "jacobian_asymmetry": result["jacobian"].get(f"{cell}/{forces}")
                     if policy in (None, "full") else None,
                     "seconds": float(sum(r["seconds"] for r in rs))})
    return rows


def relax_groups(relaxations: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """``(cell, forces, runs)`` of the relaxations, in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in relaxations:
        groups.setdefault((r["cell"], r["forces"]), []).append(r)
    return [(c, f, rs) for (c, f), rs in groups.items()]


def headline_metrics(result: dict[str, Any], rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """``metrics/simulate.json``: run count, stable fraction, per-row drift / stability / λ, relaxation scores."""
    return {"seconds": round(seconds, 1), "runs": len(result["runs"]),
            "stable_fraction": float(np.mean([r["stable"] for r in result["runs"]])) if result["runs"] else None,
            "rows": {f"{r['cell']}/{r['forces']}" + (f"/{r['frame_policy']}" if r["frame_policy"] else ""):
                     {"drift_mev_atom_ps": round(r["drift_mev_atom_ps"], 4),
                      "stable_fraction": r["stable_fraction"],
                      "jacobian_asymmetry": r["jacobian_asymmetry"]} for r in rows},
            "relax": {f"{c}/{f}": {"converged_fraction": float(np.mean([r["converged"] for r in rs])),
                                   "emt_energy_error": float(np.mean([r["emt_energy_error"] for r in rs]))}
                      for c, f, rs in relax_groups(result.get("relaxations", []))}}


HEADER = ["task", "cell", "forces", "frame policy", "runs", "steps x dt (fs)", "drift (meV/atom/ps)",
          "max abs dE (meV/atom)", "stable", "max bond dev (Å)", "Jacobian asymmetry λ"]


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The markdown cells of :func:`summary_rows`, in :data:`HEADER` order."""
    return [[r["task"], r["cell"], r["forces"], r["frame_policy"] or "-", str(r["n"]),
             f"{r['steps']} x {r['timestep_fs']:g}", fmt(r["drift_mev_atom_ps"], 3),
             fmt(r["max_abs_energy_change_mev_atom"], 3), f"{r['stable_fraction']:.2f}",
             fmt(r["max_bond_deviation_A"], 3),
             fmt(r["jacobian_asymmetry"], 4) if r["jacobian_asymmetry"] is not None else "-"] for r in rows]


def table_notes(result: dict[str, Any], seconds: float) -> list[str]:
    """The table's notes: the protocol, the definitions, and one line per relaxation group."""
    cfg = result["config"]
    notes = [f"NVE velocity Verlet, {cfg['steps']} steps, Maxwell-Boltzmann velocities at {cfg['temperature_K']:g} "
             f"K (seed {cfg['seed']}); energies every {cfg['interval']} steps; drift = slope of a linear fit of "
             "total energy per atom against time.",
             "stable: fraction of runs where no bond (ASE natural cutoffs, first frame) deviates by more than "
             "0.5 Å from its first-frame length (Fu et al. 2023), with T < 1e5 K and finite energies.",
             "λ = ||(J - Jᵀ)/2||_F / ||J||_F, J = dF/dr by autograd at the first structure (Bigi et al. 2025); "
             "0 to rounding for -dE/dpos.",
             "reference: the calculator of the embedded labels (EMT for slabs, GFN2-xTB for molecules).",
             "frame policy (FA cells): full = average over all frames; redraw = a new SFA frame every step "
             "(stochastic potential).",
             f"stage time {seconds:.1f} s."]
    for cell, forces, rs in relax_groups(result.get("relaxations", [])):
        steps = np.mean([r["steps"] for r in rs])
        notes.append(f"relaxation (BFGS, IS2RE initial structures) {cell} {forces}: converged "
                     f"{sum(r['converged'] for r in rs)}/{len(rs)}, mean steps {steps:.0f}, "
                     f"mean EMT-energy error {np.mean([r['emt_energy_error'] for r in rs]):.3f} eV")
    return notes


def write_outputs(result: dict[str, Any], seconds: float, *, tables: Path, figure: Path, results: Path,
                  headline: Path) -> None:
    """Every output of the stage: results (with the summary), headline, table and figure."""
    rows = summary_rows(result)
    write_json(results, {**result, "summary": rows, "seconds": seconds})
    write_json(headline, headline_metrics(result, rows, seconds))
    write_table("simulate", "NVE stability of direct vs conservative forces (beyond the paper)", HEADER,
                table_rows(rows), rows, table_notes(result, seconds), folder=tables)
    energy_figure(result, figure)


def energy_figure(result: dict[str, Any], path: Path) -> None:
    """Total energy per atom against time of every run on each task's first structure, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in result["runs"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6 * max(1, len(tasks)), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        first = next(r["structure"] for r in result["runs"] if r["task"] == task)
        for r in result["runs"]:
            if r["task"] != task or r["structure"] != first:
                continue
            e = (np.asarray(r["etot"]) - r["etot"][0]) / r["n_atoms"] * 1e3
            label = r["cell"] + ("" if r["forces"] == "reference" else f" {r['forces']}") + \
                (f" {r['frame_policy']}" if r["frame_policy"] else "")
            ax.plot(r["time_ps"], e, label=label, lw=1.2, ls="--" if r["forces"] == "reference" else "-")
        ax.set_title(f"{task}: NVE total energy (first structure)")
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("E_tot(t) - E_tot(0) (meV/atom)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
