"""DVC stage ``simulate`` (beyond the paper): NVE molecular dynamics with the trained S2EF and QM7-X cells.

Wiring only; the physics lives in ``faenet.calculator`` and ``faenet.simulation``. For every trained cell matching
``simulate.cells`` and each of the first ``n_structures`` structures of its task's ``val_id`` split (S2EF: the last
frame of a system's relaxation, nearest to its relaxed structure; QM7-X: a conformer), one NVE run per
(force mode, frame policy) (``pipeline.config.SimulateConfig``), and the reference calculator of the embedded
labels (EMT for slabs, GFN2-xTB via tblite for molecules) on the same structures as the control. Per run: drift
(meV/atom/ps), Fu et al.'s stability, the largest bond deviation, and (once per cell and force mode) Bigi et
al.'s Jacobian asymmetry at the first structure.

Outputs: ``results/simulate.json`` (every run, with its recorded energies), ``metrics/simulate.json`` (headline),
``reports/tables/simulate.md``/``.csv`` and ``reports/simulate_energy.png`` (total energy per atom
against time, one panel per task). The report stage does not read them; ``reports/tables/simulate.md`` is this
stage's report. Nothing is logged to MLflow (no training happens here).
"""

from __future__ import annotations

import fnmatch
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ROOT, Params, SimulateConfig, cell_name, stage_main

TASKS = ("s2ef", "qm7x")
DATA = ROOT / "data"
RESULTS = ROOT / "results" / "simulate.json"
HEADLINE = ROOT / "metrics" / "simulate.json"
TABLES = ROOT / "reports" / "tables"
FIGURE = ROOT / "reports" / "simulate_energy.png"  # reports/figures is the report stage's output
_DIRECT_HEADS = ("direct", "direct_with_gradient_target")
_FA = ("sfa", "full", "se3-sfa", "se3-full")


def record_to_atoms(rec: Any):
    """An ASE ``Atoms`` of a project record: positions, Z, cell, pbc, tags, ``FixAtoms`` for ``fixed``."""
    from ase import Atoms
    from ase.constraints import FixAtoms

    atoms = Atoms(numbers=rec.atomic_numbers.numpy(), positions=rec.pos.double().numpy(),
                  cell=rec.cell.reshape(3, 3).double().numpy(), pbc=rec.pbc.reshape(3).numpy())
    tags = rec.tags.numpy()
    if (tags >= 0).all():
        atoms.set_tags(tags)
    fixed = np.flatnonzero(rec.fixed.numpy())
    if fixed.size:
        atoms.set_constraint(FixAtoms(indices=fixed))
    return atoms


def structures(data_dir: Path, task: str, n: int) -> list[tuple[str, Any]]:
    """``(label, Atoms)`` of the first ``n`` systems of ``data/<task>/val_id.lmdb`` (S2EF: last frame each;
    IS2RE: initial structures)."""
    from faenet.data.dataset import GraphDataset

    path = data_dir / task / "val_id.lmdb"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro fetch` first")
    ds = GraphDataset(path, task=task)
    chosen: dict[int, Any] = {}
    for k in range(len(ds)):
        rec = ds[k]
        sid = int(getattr(rec, "sid", k))
        if task == "s2ef":
            if sid in chosen or len(chosen) < n:
                if sid not in chosen or int(getattr(rec, "fid", 0)) > int(getattr(chosen[sid], "fid", 0)):
                    chosen[sid] = rec
        elif len(chosen) < n:
            chosen[sid] = rec
    return [(f"sid{sid}", record_to_atoms(rec)) for sid, rec in list(chosen.items())[:n]]


def reference_calculator(task: str):
    """The calculator of the embedded labels: EMT (catalysis), GFN2-xTB (molecules)."""
    if task == "s2ef":
        from ase.calculators.emt import EMT

        return EMT()
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def run_plan(model_force_mode: str, symmetry: str, cfg: SimulateConfig) -> list[tuple[str, str | None]]:
    """``(forces, frame_policy)`` runs of a cell: the force modes it has, each under "full" for FA cells (None
    without frames); the further frame policies with the first of those modes only."""
    modes = [m for m in cfg.force_modes if m == "from_energy" or model_force_mode in _DIRECT_HEADS]
    if symmetry not in _FA:
        return [(m, None) for m in modes]
    plan = [(m, "full") for m in modes] if "full" in cfg.frame_policies else []
    plan += [(modes[0], p) for p in cfg.frame_policies if p != "full" and modes]
    return plan


def selected_cells(params: Params, cfg: SimulateConfig) -> list[tuple[str, str, str]]:
    return [c for c in params.trained_cells() if c[1] in TASKS
            and any(fnmatch.fnmatchcase(cell_name(*c), p) for p in cfg.cells)]


def _graph_override(cfg: SimulateConfig) -> dict[str, Any]:
    return {} if cfg.max_num_neighbors is None else {"max_num_neighbors": cfg.max_num_neighbors}


def _run(atoms: Any, calc: Any, task: str, cfg: SimulateConfig) -> dict[str, Any]:
    from faenet.simulation import run_nve

    dt = cfg.slab_timestep_fs if task == "s2ef" else cfg.molecule_timestep_fs
    t0 = time.perf_counter()
    res = run_nve(atoms, calc, cfg.steps, dt, cfg.temperature_K, cfg.seed, interval=cfg.interval)
    out = res.as_dict()
    e = np.asarray(res.etot) / res.n_atoms
    out.update(timestep_fs=dt, seconds=time.perf_counter() - t0,
               max_abs_energy_change=float(np.abs(e - e[0]).max()) if e.size else float("nan"))
    return out


def run_stage(params: Params, data_dir: Path = DATA, models: Path | None = None) -> dict[str, Any]:
    """Every run of the stage (module docstring): ``{"runs": [...], "jacobian": {...}, "config": ...}``."""
    import torch

    from faenet.simulation import jacobian_asymmetry
    from pipeline.calculator import MODELS, cell_calculator
    from pipeline.resolve import force_mode

    cfg = params.active.simulate
    torch.set_num_threads(cfg.threads)
    cells = selected_cells(params, cfg)
    systems = {t: structures(data_dir, t, cfg.n_structures) for t in TASKS if any(c[1] == t for c in cells)}
    runs: list[dict[str, Any]] = []
    jac: dict[str, float] = {}
    if cfg.reference:
        for task, items in systems.items():
            for label, atoms in items:
                runs.append({"task": task, "cell": f"reference-{task}", "forces": "reference",
                             "frame_policy": None, "structure": label,
                             **_run(atoms, reference_calculator(task), task, cfg)})
    for model, task, symmetry in cells:
        cell = cell_name(model, task, symmetry)
        for forces, policy in run_plan(force_mode(params, model, task), symmetry, cfg):
            calc = cell_calculator(params, cell, run_seed=params.active.train.seeds_for(model, task)[0],
                                   models=models or MODELS, forces=forces, frame_policy=policy, seed=cfg.seed,
                                   **_graph_override(cfg))
            for label, atoms in systems[task]:
                runs.append({"task": task, "cell": cell, "forces": forces, "frame_policy": policy,
                             "structure": label, **_run(atoms, calc, task, cfg)})
            if cfg.jacobian and policy in (None, "full"):
                fn, keep = calc.force_fn(systems[task][0][1], create_graph=True)
                pos = torch.tensor(systems[task][0][1].positions[keep.numpy()], dtype=calc.dtype)
                jac[f"{cell}/{forces}"] = jacobian_asymmetry(fn, pos)
    relaxations = _relaxations(params, cfg, data_dir, models or MODELS, cells) if cfg.relax_structures else []
    return {"runs": runs, "jacobian": jac, "relaxations": relaxations, "config": cfg.model_dump(mode="json")}


def _relaxations(params: Params, cfg: SimulateConfig, data_dir: Path, models: Path,
                 cells: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """BFGS from IS2RE initial structures with every S2EF cell and force mode (Full FA) and with EMT. The error
    is EMT's energy of the model-relaxed structure minus EMT's energy of the EMT-relaxed one (eV): free of the
    models' energy referencing, >= 0 up to the optimiser tolerance when the model's minimum is EMT's."""
    from faenet.simulation import relax
    from pipeline.calculator import cell_calculator
    from pipeline.resolve import force_mode

    def emt_energy(atoms: Any) -> float:
        a = atoms.copy()
        a.calc = reference_calculator("s2ef")
        return float(a.get_potential_energy())

    out = []
    systems = structures(data_dir, "is2re", cfg.relax_structures)
    emt = {label: relax(atoms, reference_calculator("s2ef"), cfg.relax_fmax, cfg.relax_steps, return_atoms=True)
           for label, atoms in systems}
    for label, _ in systems:
        r = emt[label]
        out.append({"cell": "reference-s2ef", "forces": "reference", "structure": label,
                    "converged": r.converged, "steps": r.steps, "energy": r.energy, "emt_energy_error": 0.0})
    for model, task, symmetry in cells:
        if task != "s2ef":
            continue
        cell = cell_name(model, task, symmetry)
        for forces, policy in run_plan(force_mode(params, model, task), symmetry, cfg):
            if policy not in (None, "full"):
                continue
            calc = cell_calculator(params, cell, run_seed=params.active.train.seeds_for(model, task)[0],
                                   models=models, forces=forces, frame_policy=policy, **_graph_override(cfg))
            for label, atoms in systems:
                r = relax(atoms, calc, cfg.relax_fmax, cfg.relax_steps, return_atoms=True)
                out.append({"cell": cell, "forces": forces, "structure": label, "converged": r.converged,
                            "steps": r.steps, "energy": r.energy,
                            "emt_energy_error": emt_energy(r.atoms) - emt[label].energy})
    return out


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


def write_outputs(result: dict[str, Any], seconds: float, tables: Path = TABLES, figure: Path = FIGURE,
                  results: Path = RESULTS, headline: Path = HEADLINE) -> None:
    from pipeline.tables import fmt, write_table
    from pipeline.tracking import write_json

    rows = summary_rows(result)
    cfg = result["config"]
    write_json(results, {**result, "summary": rows, "seconds": seconds})
    write_json(headline, {"seconds": round(seconds, 1), "runs": len(result["runs"]),
                          "stable_fraction": float(np.mean([r["stable"] for r in result["runs"]]))
                          if result["runs"] else None,
                          "rows": {f"{r['cell']}/{r['forces']}" + (f"/{r['frame_policy']}" if r["frame_policy"]
                                                                    else ""):
                                   {"drift_mev_atom_ps": round(r["drift_mev_atom_ps"], 4),
                                    "stable_fraction": r["stable_fraction"],
                                    "jacobian_asymmetry": r["jacobian_asymmetry"]} for r in rows},
                          "relax": {f"{c}/{f}": {"converged_fraction": float(np.mean([r["converged"] for r in rs])),
                                                 "emt_energy_error": float(np.mean([r["emt_energy_error"]
                                                                                    for r in rs]))}
                                    for c, f, rs in _relax_groups(result.get("relaxations", []))}})
    header = ["task", "cell", "forces", "frame policy", "runs", "steps x dt (fs)", "drift (meV/atom/ps)",
              "max abs dE (meV/atom)", "stable", "max bond dev (Å)", "Jacobian asymmetry λ"]
    md_rows = [[r["task"], r["cell"], r["forces"], r["frame_policy"] or "-", str(r["n"]),
                f"{r['steps']} x {r['timestep_fs']:g}", fmt(r["drift_mev_atom_ps"], 3),
                fmt(r["max_abs_energy_change_mev_atom"], 3), f"{r['stable_fraction']:.2f}",
                fmt(r["max_bond_deviation_A"], 3),
                fmt(r["jacobian_asymmetry"], 4) if r["jacobian_asymmetry"] is not None else "-"] for r in rows]
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
    for cell, forces, rs in _relax_groups(result.get("relaxations", [])):
        steps = np.mean([r["steps"] for r in rs])
        notes.append(f"relaxation (BFGS, IS2RE initial structures) {cell} {forces}: converged "
                     f"{sum(r['converged'] for r in rs)}/{len(rs)}, mean steps {steps:.0f}, "
                     f"mean EMT-energy error {np.mean([r['emt_energy_error'] for r in rs]):.3f} eV")
    write_table("simulate", "NVE stability of direct vs conservative forces (beyond the paper)", header, md_rows,
                rows, notes, folder=tables)
    _figure(result, figure)


def _relax_groups(relaxations: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in relaxations:
        groups.setdefault((r["cell"], r["forces"]), []).append(r)
    return [(c, f, rs) for (c, f), rs in groups.items()]


def _figure(result: dict[str, Any], path: Path) -> None:
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


def main() -> int:
    return stage_main(_main)


def _main(params: Params) -> int:
    t0 = time.perf_counter()
    try:
        result = run_stage(params)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    write_outputs(result, seconds)
    for r in summary_rows(result):
        lam = r["jacobian_asymmetry"]
        print(f"{r['cell']:24s} {r['forces']:12s} {r['frame_policy'] or '-':7s} drift "
              f"{r['drift_mev_atom_ps']:9.3f} meV/atom/ps  stable {r['stable_fraction']:.2f}  "
              f"λ {'-' if lam is None else f'{lam:.3g}'}")
    print(f"simulate: {len(result['runs'])} runs in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
