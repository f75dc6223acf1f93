"""DVC stage ``simulate`` (beyond the paper): NVE molecular dynamics with the trained S2EF and QM7-X cells.

Wiring only; the physics lives in ``faenet.calculator`` and ``faenet.simulation``, the outputs in
``pipeline.reporting.simulate``. For every trained cell matching
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

from pipeline.config import ROOT, Params, SimulateConfig, cell_name, stage_main
from pipeline.reporting.simulate import summary_rows, write_outputs

TASKS = ("s2ef", "qm7x")
DATA = ROOT / "data"
RESULTS = ROOT / "results" / "simulate.json"
HEADLINE = ROOT / "metrics" / "simulate.json"
TABLES = ROOT / "reports" / "tables"
FIGURE = ROOT / "reports" / "simulate_energy.png"  # reports/figures is the report stage's output


def selected_cells(params: Params, cfg: SimulateConfig) -> list[tuple[str, str, str]]:
    return [c for c in params.trained_cells() if c[1] in TASKS
            and any(fnmatch.fnmatchcase(cell_name(*c), p) for p in cfg.cells)]


def _graph_override(cfg: SimulateConfig) -> dict[str, Any]:
    return {} if cfg.max_num_neighbors is None else {"max_num_neighbors": cfg.max_num_neighbors}


def _run(atoms: Any, calc: Any, task: str, cfg: SimulateConfig) -> dict[str, Any]:
    from faenet.simulation import measure_nve

    dt = cfg.slab_timestep_fs if task == "s2ef" else cfg.molecule_timestep_fs
    return measure_nve(atoms, calc, cfg.steps, dt, cfg.temperature_K, cfg.seed, interval=cfg.interval)


def run_stage(params: Params, data_dir: Path = DATA, models: Path | None = None) -> dict[str, Any]:
    """Every run of the stage (module docstring): ``{"runs": [...], "jacobian": {...}, "config": ...}``."""
    import torch

    from faenet.simulation import jacobian_asymmetry, reference_calculator, relaxation_runs, run_plan, structures
    from pipeline.calculator import MODELS, cell_calculator
    from pipeline.resolve import force_mode

    cfg = params.active.simulate
    models = models or MODELS
    torch.set_num_threads(cfg.threads)
    cells = selected_cells(params, cfg)
    systems = {t: structures(data_dir, t, cfg.n_structures) for t in TASKS if any(c[1] == t for c in cells)}

    def plan(model: str, task: str, symmetry: str) -> list[tuple[str, str | None]]:
        return run_plan(force_mode(params, model, task), symmetry, cfg.force_modes, cfg.frame_policies)

    def calculator(model: str, task: str, cell: str, **kwargs: Any) -> Any:
        return cell_calculator(params, cell, run_seed=params.active.train.seeds_for(model, task)[0],
                               models=models, **kwargs, **_graph_override(cfg))

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
        for forces, policy in plan(model, task, symmetry):
            calc = calculator(model, task, cell, forces=forces, frame_policy=policy, seed=cfg.seed)
            for label, atoms in systems[task]:
                runs.append({"task": task, "cell": cell, "forces": forces, "frame_policy": policy,
                             "structure": label, **_run(atoms, calc, task, cfg)})
            if cfg.jacobian and policy in (None, "full"):
                fn, keep = calc.force_fn(systems[task][0][1], create_graph=True)
                pos = torch.tensor(systems[task][0][1].positions[keep.numpy()], dtype=calc.dtype)
                jac[f"{cell}/{forces}"] = jacobian_asymmetry(fn, pos)
    relaxations = []
    if cfg.relax_structures:
        # BFGS from IS2RE initial structures with every S2EF cell and force mode (Full FA) and with EMT.
        model_calcs = ((cell_name(m, t, s), f, calculator(m, t, cell_name(m, t, s), forces=f, frame_policy=p))
                       for m, t, s in cells if t == "s2ef" for f, p in plan(m, t, s) if p in (None, "full"))
        relaxations = relaxation_runs(structures(data_dir, "is2re", cfg.relax_structures), model_calcs,
                                      cfg.relax_fmax, cfg.relax_steps)
    return {"runs": runs, "jacobian": jac, "relaxations": relaxations, "config": cfg.model_dump(mode="json")}


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
    write_outputs(result, seconds, tables=TABLES, figure=FIGURE, results=RESULTS, headline=HEADLINE)
    for r in summary_rows(result):
        lam = r["jacobian_asymmetry"]
        print(f"{r['cell']:24s} {r['forces']:12s} {r['frame_policy'] or '-':7s} drift "
              f"{r['drift_mev_atom_ps']:9.3f} meV/atom/ps  stable {r['stable_fraction']:.2f}  "
              f"λ {'-' if lam is None else f'{lam:.3g}'}")
    print(f"simulate: {len(result['runs'])} runs in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
