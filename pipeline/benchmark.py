"""Stage `benchmark`: inference throughput, training time per epoch and peak memory of every model and
symmetry method, at the profile's and the paper's hyperparameters, under two graph protocols; the scaling of
throughput with graph size; the paper's speed ratios beside ours; the project's speed targets.

    python -m pipeline.benchmark

Inputs (``faenet.throughput.oc20_like_slabs``, seed 0): OC20-sized slabs, fcc(111)/(100) 4x4x4 of six metals
+ one adsorbate (~66 atoms), 6 Å radius graph with at most 50 neighbours (OC20's), sub-surface = the bottom
two layers (tag 0); "rewired" = the same slabs with tag-0 atoms and their edges removed (``remove_tag0``).
Models: every model of ``train_cells`` with its symmetry methods there (FAENet: also none, sfa,
full), 2D frames (OC20). Hyperparameter sets: ``profile`` (the active profile's ``hparams``) and ``paper``
(``profiles.paper.hparams``: Table 7 for FAENet, the OCP IS2RE configs for the baselines).

Outputs: ``reports/benchmark.md``, ``results/benchmark.json`` (the scaling curve's data; the figure is drawn
by the report stage, which owns ``reports/figures``) and its headline ``metrics/benchmark.json`` (DVC metric:
``headline``).
(``pipeline/reporting/benchmark.py`` documents its keys). The protocol and the measurements:
``faenet/benchmarking.py``; the ratios, speed targets, headline and report: ``pipeline/reporting/benchmark.py``.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

from faenet import benchmarking as B
from pipeline.config import ROOT, SYMMETRY_METHODS, Params, stage_main
from pipeline.reporting import benchmark as R
from pipeline.reporting.benchmark import headline  # every stage's headline is pipeline.<stage>.headline
from pipeline.tracking import machine_info, package_versions, write_json

RESULTS_PATH = ROOT / "results" / "benchmark.json"
HEADLINE_PATH = ROOT / "metrics" / "benchmark.json"
REPORT_PATH = ROOT / "reports" / "benchmark.md"
EMBEDDED = ROOT / "data" / "is2re" / "train.lmdb"
GEMNET_DATA = ROOT / "data" / "qm7x" / "train.lmdb"
GEMNET_BATCHES = 2
FAENET_METHODS = ("none", "sfa", "full")  # always measured for FAENet: the costs of Sec. 3.3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return stage_main(lambda params: _main(params, argv))


def _main(params: Params, argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:  # one isolated group of measurements (run_benchmark starts these)
        write_json(Path(argv[2]), run_worker(params, json.loads(Path(argv[1]).read_text())))
        return 0
    result = run_benchmark(params)
    write_json(RESULTS_PATH, result)
    write_json(HEADLINE_PATH, headline(result))
    R.write_report(result, REPORT_PATH)
    for line in R.target_lines(result):
        print(line)
    return 0


def hparam_sets(params: Params) -> list[str]:
    """``profile``, and ``paper`` with ``benchmark.paper_hparams`` and a paper profile."""
    return ["profile"] + (["paper"] if params.active.benchmark.paper_hparams and "paper" in params.profiles else [])


def methods_of(params: Params, model: str) -> list[str]:
    """Symmetry methods benchmarked for ``model``: those ``train_cells`` uses for it (FAENet: and FAENET_METHODS)."""
    used = {m for methods in params.design.get(model, {}).values() for m in methods}
    return [m for m in SYMMETRY_METHODS if m in used | (set(FAENET_METHODS) if model == "faenet" else set())]


def plan(params: Params) -> tuple[list[B.Job], dict[str, dict[str, dict[str, str]]]]:
    """``faenet.benchmarking.plan`` of the active profile's ``benchmark`` section and ``train_cells``."""
    b = params.active.benchmark
    return B.plan({m: methods_of(params, m) for m in params.design}, hparam_sets(params), batch_size=b.batch_size,
                  n_batches=b.n_batches, paper_batch_sizes=b.paper_batch_sizes, max_batch_size=b.max_batch_size,
                  max_graphs=b.max_graphs, exclude_models=b.exclude_models)


def s2ef_jobs(params: Params) -> list[B.Job]:
    b = params.active.benchmark
    if not b.s2ef_train or not {"faenet", "forcenet"} <= set(params.design):
        return []
    return B.s2ef_jobs(hparam_sets(params), b.train_graphs, b.max_graphs)


def resolver(params: Params) -> B.Resolver:
    """The models as the train stage resolves them (``pipeline.resolve``) at hparam set ``profile`` (the active
    profile's hyperparameters, force mode and settings) or ``paper`` (the paper profile's)."""
    from pipeline.resolve import resolve_cell

    @cache
    def resolve(hp: str, model: str, task: str = "is2re", symmetry: str = "none") -> B.ModelSpec:
        c = resolve_cell(params, model, task, symmetry, profile=params.profile if hp == "profile" else hp)
        return B.ModelSpec(hparams=c.hparams, frame_dim=c.frame_dim, needs_forces=c.needs_forces,
                           energy_grad_coef=c.train.energy_grad_coef, rewired=c.rewiring == "remove-tag-0",
                           train_batch_size=c.train.batch_size)

    return resolve


def timing(params: Params) -> B.Timing:
    b = params.active.benchmark
    return B.Timing(warmup=b.warmup, repeats=b.repeats, train_repeats=b.train_repeats, train_graphs=b.train_graphs,
                    memory=b.memory)


def run_benchmark(params: Params) -> dict[str, Any]:
    """Every measurement of the plan, assembled as ``results/benchmark.json``. With ``isolation: process`` every
    (hparam set, model) is measured in its own fresh Python process (glibc's allocator state then depends on that
    model's own history only), then the allocator-sensitivity block in one more; ``none``: all in this one."""
    import torch
    from tqdm.auto import tqdm

    from faenet.frames import num_frames

    t0, load_before = time.perf_counter(), os.getloadavg()
    b, resolve = params.active.benchmark, resolver(params)
    torch.set_num_threads(b.threads)
    jobs, protocols = plan(params)
    s2ef = s2ef_jobs(params)
    graphs = B.slab_inputs(max(j.n_graphs for j in jobs + s2ef), forces=bool(s2ef))
    # The embedded graphs are small (~13 atoms): one training batch of the train stage's size.
    embedded, n_embedded = B.load_first(EMBEDDED, "is2re", resolve("profile", "faenet").train_batch_size)
    measurements, scaling, workers, allocator = [], {}, [], None
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        graphs_path = Path(tmp) / "graphs.pt"
        B.save_graphs(graphs_path, graphs, embedded, n_embedded)
        specs = [{"kind": "model", "hparams": hp, "model": model, "jobs": [j.__dict__ for j in group],
                  "protocols": protocols, "graphs_path": str(graphs_path)}
                 for (hp, model), group in B.group_jobs(jobs + s2ef).items()]
        if "paper" in hparam_sets(params) and "schnet" in params.design:
            specs.append({"kind": "allocator", "graphs_path": str(graphs_path)})
        for spec in tqdm(specs, desc="benchmark workers", unit="worker"):
            out = _run_worker(spec, Path(tmp)) if b.isolation == "process" else run_worker(params, spec)
            workers.append({k: out[k] for k in ("kind", "hparams", "model", "seconds", "process_peak_rss_mib")
                            if k in out})
            measurements += out.get("measurements", [])
            for hp, per in out.get("scaling", {}).items():
                scaling.setdefault(hp, {}).update(per)
            allocator = out.get("allocator", allocator)
    order = {j.id: k for k, j in enumerate(jobs + s2ef)}
    measurements.sort(key=lambda m: order[m["id"]])
    result = {
        "profile": params.profile, "threads": torch.get_num_threads(), "machine": machine_info(),
        "packages": package_versions(), "torch": B.torch_info(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "config": b.model_dump(mode="json"), "hparam_sets": hparam_sets(params),
        "inputs": B.describe_inputs(graphs, embedded, n_embedded), "isolation": b.isolation, "workers": workers,
        "measurements": measurements, "protocols": protocols, "scaling": scaling,
        "gpu": B.gpu_info(params.active.train.device)}
    result["ratios"] = R.throughput_ratios(result)
    result["s2ef"] = R.s2ef_ratios(result)
    result["symmetry_costs"] = R.symmetry_costs(result, {m: num_frames(2, m.startswith("se3"))
                                                         for m in ("full", "se3-full")})
    result["allocator_sensitivity"] = allocator
    result["speed_targets"] = R.speed_targets(result)
    result["paper_claims"] = R.paper_claims()
    result["gemnet"] = gemnet_costs(params)
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _run_worker(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """``run_worker`` in a fresh ``python -m pipeline.benchmark --worker`` process (same params.yaml)."""
    name = f"{spec['kind']}-{spec.get('hparams', '')}-{spec.get('model', '')}"
    spec_path, out_path = tmp / f"{name}.spec.json", tmp / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "pipeline.benchmark", "--worker", str(spec_path), str(out_path)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out_path.read_text())


def run_worker(params: Params, spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (hparam set, model) group, or the allocator-sensitivity block; returns JSON-able results."""
    import resource

    import torch

    from faenet.throughput import set_malloc_regime

    t0, b, resolve = time.perf_counter(), params.active.benchmark, resolver(params)
    torch.set_num_threads(b.threads)
    if b.malloc_regime != "default":
        set_malloc_regime(b.malloc_regime)
    data = B.load_graphs(Path(spec["graphs_path"]))
    gc.freeze()  # later collections (peak_rss_increase) then scan only the objects made by the measurements
    if spec["kind"] == "allocator":
        out: dict[str, Any] = {"kind": "allocator", "allocator": B.measure_allocator_sensitivity(
            data["graphs"]["full"], resolve("paper", "faenet"), resolve("paper", "schnet"), b.allocator_graphs,
            b.batch_size, timing(params))}
    else:
        hp, model = spec["hparams"], spec["model"]
        out = {"kind": "model", "hparams": hp, "model": model,
               "measurements": B.measure_group([B.Job(**j) for j in spec["jobs"]], spec["protocols"], data, resolve,
                                               timing(params), B.gpu_device(params.active.train.device))}
        if hp in b.scaling_hparams:
            method = B.PAPER_ROWS.get(model, "none")
            out["scaling"] = {hp: {model: B.measure_scaling(model, resolve(hp, model, "is2re", method),
                                                            b.scaling_sizes, b.scaling_batch_size, timing(params))}}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def gemnet_costs(params: Params) -> dict[str, Any] | None:
    """``faenet.benchmarking.gemnet_costs`` of the GemNet QM7-X cells of ``train_cells`` (profile hparams)."""
    resolve = resolver(params)
    specs = {m: resolve("profile", m, "qm7x") for m in ("gemnet_t", "gemnet_q") if "qm7x" in params.design.get(m, {})}
    return B.gemnet_costs(GEMNET_DATA, specs, params.active.benchmark.batch_size, GEMNET_BATCHES, timing(params))


if __name__ == "__main__":
    sys.exit(main())
