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

Protocols:

- ``same_graph_full`` / ``same_graph_rewired``: every model on identical batches (``batch_size`` x
  ``n_batches`` graphs), full graphs / rewired graphs;
- ``paper``: each model with the graph preprocessing the authors used for it (FAENet rewired, baselines full:
  the authors' fork sets ``graph_rewiring: remove-tag-0`` in its FAENet configs and no rewiring in its baseline
  configs) at the batch size of the authors' IS2RE eval configs (``paper_batch_sizes``, capped at
  ``max_batch_size``); a measurement identical to a same-graph one is run once and shared.

``max_graphs[model]`` times a model on only the first graphs of each protocol (models too slow on CPU).

Measurements (``threads`` intra-op threads; with ``isolation: process`` each (hparam set, model) runs in its
own fresh process, ``python -m pipeline.benchmark --worker``; inference measurements first, then training;
glibc's allocator policy fixed by ``malloc_regime``, default ``steady``: freed memory is reused, as in a
long-running process or with the caching allocator of the paper's GPU runs, and a model's speed no longer
depends on what was allocated before):

- inference: ``faenet.throughput.measure_forward_throughput`` (eval mode, ``torch.inference_mode``,
  ``warmup`` passes, median of ``repeats`` passes), samples/s. DA is not timed at inference: in eval mode the
  wrapper runs the model unchanged (the ``none`` row);
- training: ``measure_training_step`` (forward, loss, backward, clip, AdamW) on the first ``train_graphs``
  graphs: 1 warm-up pass, median of ``train_repeats``; epoch time = seconds per sample x systems per epoch:
  OC20 IS2RE train (460,328 systems; from the OC20-sized slabs of the protocol) and the embedded IS2RE train
  split (from a separate training measurement on its first graphs, one batch of the train stage's size, as the
  train stage sees them);
- peak memory: ``faenet.throughput.peak_rss_increase`` around the first warm-up pass of each measurement: the
  process RSS high-water mark (reset per measurement through ``/proc/self/clear_refs``, after freed heap is
  handed back with ``malloc_trim``) minus the RSS before it, MiB: what one pass adds on top of the resident
  parameters and inputs. Isolated per measurement by the reset, not by a process per model;
- S2EF training steps (``s2ef_train``): FAENet-SFA (S2EF hparams, direct forces + the Eq. (9) gradient term)
  and ForceNet (direct forces) with force targets: the paper's "epoch time divided by 20 vs ForceNet" is S2EF;
- scaling: forward throughput of every model (FAENet with SFA) on ``scaling_batch_size`` slabs of n x n x 4
  atoms + adsorbate for n in ``scaling_sizes``, full graphs; ``exponent`` = slope of log(samples/s) against
  log(atoms per graph) (least squares; -1 = cost linear in atoms);
- allocator sensitivity (with the paper hparams): SchNet, FAENet-SFA, FAENet Full FA and FAENet-SFA with the
  literal Eq. (8) (``fused=False``), interleaved in one process, under two fixed glibc policies (``cold``: every
  large block mapped afresh, page faults each time; ``steady``: freed memory reused; ``faenet.throughput.
  set_malloc_regime``). SchNet's speed depends on it about twofold, so the speed targets are reported for both.

Outputs: ``reports/benchmark.md``, ``results/benchmark.json`` (the scaling curve's data; the figure is drawn
by the report stage, which owns ``reports/figures``) and its headline ``metrics/benchmark.json`` (DVC metric:
``headline``). ``results/benchmark.json``:

- ``profile``, ``seconds``, ``threads``, ``machine`` (cpu, cores, platform), ``packages`` (versions),
  ``torch`` (threads, interop threads, MKL / oneDNN / OpenMP flags), ``cpu_affinity``, ``load_average``
  (before, after), ``config`` (the benchmark section), ``hparam_sets`` (names measured), ``isolation``,
  ``workers`` (per process: kind, hparams, model, seconds, process_peak_rss_mib);
- ``inputs``: per graph set (``full``, ``rewired``, ``embedded_train``) ``atoms_per_graph``,
  ``edges_per_graph``, ``n_graphs``, ``description``;
- ``measurements``: list of ``{id, hparams, model, symmetry, task, graph, batch_size, n_graphs,
  atoms_per_graph, edges_per_graph, n_params, protocols (names using it), inference: {samples_per_s,
  samples_per_s_per_repeat, cpu_utilisation, peak_memory_mib} | null, training: {seconds_per_sample,
  samples_per_s, peak_memory_mib, epoch_seconds: {oc20_is2re, embedded_is2re}} | null}``;
- ``protocols``: ``{protocol: {hparams: {"model/symmetry": measurement id}}}``;
- ``ratios``: ``{hparams: {"faenet-sfa/<baseline>": {inference: {paper_protocol, same_graph_full,
  same_graph_rewired, paper}, epoch_time: {... same keys}}}}``: inference = throughput of FAENet-SFA over the
  baseline's (> 1: FAENet faster); epoch_time = the baseline's training seconds per sample over FAENet-SFA's
  (> 1: FAENet faster); ``paper`` = the same ratio from Table 9 (IS2RE ``infer`` / ``train_min``);
- ``s2ef``: ``{hparams: {"forcenet/faenet-sfa": {epoch_time: {paper_protocol, same_graph_full, paper}}}}``
  (``paper`` from Table 1 S2EF ``train_min``);
- ``symmetry_costs``: ``{hparams: {"full/sfa" | "sfa/none" | "se3-sfa/none" | "da/none" (training only):
  {inference: {same_graph_full, same_graph_rewired}, training: {...}, n_frames}}}``: cost = time per sample
  of the first method over the second's; for "full/sfa" also ``per_frame`` (cost / number of frames);
- ``speed_targets``: list of ``{name, regime, value, threshold, passed, what}`` (``passed`` null if not
  measured); ``regime`` "process" (the main measurements), "cold" or "steady" (``allocator_sensitivity``);
- ``allocator_sensitivity``: ``{n_graphs, batch_size, regimes: {cold|steady: {applied, samples_per_s: {model/
  symmetry: x}, faenet_sfa_over_schnet, faenet_literal_sfa_over_schnet, fused_over_literal,
  full_fa_cost_per_frame_over_sfa}}}`` or null;
- ``scaling``: ``{hparams: {model: {symmetry, points: [{size, atoms_per_graph, edges_per_graph,
  samples_per_s}], fit: {exponent, prefactor, r2}}}}``;
- ``paper_claims``: the text's speed claims (``pipeline/paper.yaml`` speed_claims) with the ratio of the
  table numbers they rest on.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ROOT, Params, stage_main
from pipeline.tables import load_paper
from pipeline.tracking import machine_info, package_versions, write_json

RESULTS_PATH = ROOT / "results" / "benchmark.json"
HEADLINE_PATH = ROOT / "metrics" / "benchmark.json"
REPORT_PATH = ROOT / "reports" / "benchmark.md"
EMBEDDED = ROOT / "data" / "is2re"
OC20_IS2RE_TRAIN = 460_328  # systems in OC20 IS2RE "all" train (ocp docs/core/datasets/oc20.md)
FAENET_METHODS = ("none", "sfa", "full")  # always measured for FAENet: the costs of Sec. 3.3
PAPER_ROWS = {"faenet": "sfa"}  # the symmetry method of each model's row in the paper's tables (else none)
TARGET_SFA_OVER_SCHNET = 0.4
TARGET_FULL_PER_FRAME = 1.0


@dataclass(frozen=True)
class Job:
    """One measurement: a model and symmetry method at a hparam set, on the first ``n_graphs`` of a graph set."""

    hparams: str
    model: str
    symmetry: str
    graph: str  # "full" | "rewired"
    batch_size: int
    n_graphs: int
    task: str = "is2re"  # "s2ef": training with forces only

    @property
    def id(self) -> str:
        return (f"{self.hparams}:{self.task}:{self.model}-{self.symmetry}:{self.graph}:bs{self.batch_size}"
                f":n{self.n_graphs}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return stage_main(lambda params: _main(params, argv))


def _main(params: Params, argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:  # one isolated group of measurements (run_benchmark starts these)
        spec_path, out_path = Path(argv[1]), Path(argv[2])
        write_json(out_path, run_worker(params, json.loads(spec_path.read_text())))
        return 0
    result = run_benchmark(params)
    write_json(RESULTS_PATH, result)
    write_json(HEADLINE_PATH, headline(result))
    write_report(result, REPORT_PATH)
    for line in target_lines(result):
        print(line)
    return 0


# ----------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------

def methods_of(params: Params, model: str) -> list[str]:
    """Symmetry methods benchmarked for ``model``: those ``train_cells`` uses for it (FAENet: and FAENET_METHODS)."""
    from pipeline.config import SYMMETRY_METHODS

    used = {m for methods in params.design.get(model, {}).values() for m in methods}
    if model == "faenet":
        used |= set(FAENET_METHODS)
    return [m for m in SYMMETRY_METHODS if m in used]


def hparam_sets(params: Params) -> dict[str, Any]:
    """``{"profile": Profile, "paper": Profile}`` (paper only with ``paper_hparams`` and a paper profile)."""
    sets = {"profile": params.active}
    if params.active.benchmark.paper_hparams and "paper" in params.profiles:
        sets["paper"] = params.profiles["paper"]
    return sets


def plan(params: Params) -> tuple[list[Job], dict[str, dict[str, dict[str, str]]]]:
    """Every measurement and, per protocol and hparam set, which measurement each "model/symmetry" uses."""
    b = params.active.benchmark
    jobs: dict[str, Job] = {}
    protocols: dict[str, dict[str, dict[str, str]]] = {"paper": {}, "same_graph_full": {}, "same_graph_rewired": {}}

    def add(protocol: str, job: Job) -> None:
        jobs.setdefault(job.id, job)
        protocols[protocol].setdefault(job.hparams, {})[f"{job.model}/{job.symmetry}"] = job.id

    for hp in hparam_sets(params):
        for model in params.design:
            if model in b.exclude_models or f"{hp}:{model}" in b.exclude_models:
                continue
            cap = b.max_graphs.get(model)
            n_same = min(b.batch_size * b.n_batches, cap or 10**9)
            bs_paper = min(b.paper_batch_sizes.get(model, b.batch_size), b.max_batch_size or 10**9)
            n_paper = min(bs_paper * b.n_batches, cap or 10**9)
            graph_paper = "rewired" if model == "faenet" else "full"
            for method in methods_of(params, model):
                add("same_graph_full", Job(hp, model, method, "full", min(b.batch_size, n_same), n_same))
                add("same_graph_rewired", Job(hp, model, method, "rewired", min(b.batch_size, n_same), n_same))
                add("paper", Job(hp, model, method, graph_paper, min(bs_paper, n_paper), n_paper))
    return list(jobs.values()), protocols


def s2ef_jobs(params: Params) -> list[Job]:
    """S2EF training steps: FAENet-SFA (paper protocol: rewired; and full) and ForceNet (full)."""
    b = params.active.benchmark
    if not b.s2ef_train or not {"faenet", "forcenet"} <= set(params.design):
        return []
    out = []
    for hp in hparam_sets(params):
        for model, method, graphs in (("faenet", "sfa", ("rewired", "full")), ("forcenet", "none", ("full",))):
            n = min(b.train_graphs, b.max_graphs.get(model) or 10**9)
            out += [Job(hp, model, method, g, n, n, task="s2ef") for g in graphs]
    return out


# ----------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------

def _batches(graphs: list, batch_size: int) -> list:
    from torch_geometric.data import Batch

    return [Batch.from_data_list(graphs[i:i + batch_size]) for i in range(0, len(graphs), batch_size)]


def _cell(params: Params, hp: str, model: str, task: str = "is2re", symmetry: str = "none"):
    """The model as the train stage resolves it (``pipeline.resolve``) at hparam set ``hp``: the active
    profile's (``profile``) or the paper profile's (``paper``) hyperparameters, force mode and settings."""
    from pipeline.resolve import resolve_cell

    return resolve_cell(params, model, task, symmetry, profile=params.profile if hp == "profile" else hp)


def _embedded_train(n: int) -> tuple[list | None, int | None]:
    """The first ``n`` graphs of the embedded IS2RE train split and its size, or (None, None) without data."""
    from faenet.data.dataset import GraphDataset

    path = EMBEDDED / "train.lmdb"
    if not path.exists():
        return None, None
    ds = GraphDataset(path, task="is2re")
    return [ds[i] for i in range(min(n, len(ds)))], len(ds)


def _graph_stats(graphs: list) -> dict[str, float]:
    return {"atoms_per_graph": sum(int(x.natoms) for x in graphs) / len(graphs),
            "edges_per_graph": sum(int(x.edge_index.shape[1]) for x in graphs) / len(graphs)}


def run_benchmark(params: Params) -> dict[str, Any]:
    """Run every measurement of the plan and assemble ``results/benchmark.json`` (module docstring).

    With ``isolation: process`` every (hparam set, model) is measured in its own fresh Python process (glibc's
    allocator state then depends on that model's own history only, not on the models measured before it),
    then the allocator-sensitivity block in one more; ``none`` measures everything in this process.
    """
    import tempfile

    import torch

    from faenet.data.dataset import remove_tag0
    from faenet.throughput import oc20_like_slabs

    t0 = time.perf_counter()
    prof = params.active
    b = prof.benchmark
    torch.set_num_threads(b.threads)
    load_before = os.getloadavg()
    jobs, protocols = plan(params)
    s2ef = s2ef_jobs(params)
    n_slabs = max(j.n_graphs for j in jobs + s2ef)
    slabs = oc20_like_slabs(n_slabs, seed=0, forces=bool(s2ef))
    graphs = {"full": slabs, "rewired": [remove_tag0(g) for g in slabs]}
    # The embedded graphs are small (~13 atoms): one training batch of the train stage's size.
    embedded, n_embedded = _embedded_train(_cell(params, "profile", "faenet").train.batch_size)
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs + s2ef:
        groups.setdefault((job.hparams, job.model), []).append(job)
    measurements: list[dict[str, Any]] = []
    scaling: dict[str, Any] = {}
    workers: list[dict[str, Any]] = []
    allocator = None
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        graphs_path = Path(tmp) / "graphs.pt"
        save_graphs(graphs_path, graphs, embedded, n_embedded)
        specs = [{"kind": "model", "hparams": hp, "model": model, "jobs": [j.__dict__ for j in group],
                  "protocols": protocols, "graphs_path": str(graphs_path)} for (hp, model), group in groups.items()]
        if "paper" in hparam_sets(params) and "schnet" in params.design:
            specs.append({"kind": "allocator", "graphs_path": str(graphs_path)})
        for spec in tqdm_iter(specs, "benchmark workers"):
            out = (_run_worker(spec, Path(tmp)) if b.isolation == "process" else run_worker(params, spec))
            workers.append({k: out[k] for k in ("kind", "hparams", "model", "seconds", "process_peak_rss_mib")
                            if k in out})
            measurements += out.get("measurements", [])
            for hp, per in out.get("scaling", {}).items():
                scaling.setdefault(hp, {}).update(per)
            if spec["kind"] == "allocator":
                allocator = out["allocator"]
    inputs: dict[str, Any] = {name: {"n_graphs": len(gs), **_graph_stats(gs),
                                     "description": ("OC20-like fcc 4x4x4 slabs + adsorbate, 6 Å / 50 neighbours, "
                                                     "seed 0" + (", tag-0 atoms removed" if name == "rewired" else ""))}
                              for name, gs in graphs.items()}
    inputs["embedded_train"] = None if embedded is None else {
        "n_graphs": len(embedded), "split_size": n_embedded, **_graph_stats(embedded),
        "description": "first graphs of data/is2re/train.lmdb (rewired for models trained rewired)"}
    order = {j.id: k for k, j in enumerate(jobs + s2ef)}
    measurements.sort(key=lambda m: order[m["id"]])
    result = {
        "profile": params.profile, "threads": torch.get_num_threads(), "machine": machine_info(),
        "packages": package_versions(), "torch": torch_info(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "config": b.model_dump(mode="json"), "hparam_sets": list(hparam_sets(params)), "inputs": inputs,
        "isolation": b.isolation, "workers": workers, "measurements": measurements, "protocols": protocols,
        "scaling": scaling, "gpu": gpu_info(params)}
    result["ratios"] = throughput_ratios(result)
    result["s2ef"] = s2ef_ratios(result)
    result["symmetry_costs"] = symmetry_costs(result)
    result["allocator_sensitivity"] = allocator
    result["speed_targets"] = speed_targets(result)
    result["paper_claims"] = paper_claims()
    result["gemnet"] = gemnet_costs(params)
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def tqdm_iter(items: list, desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(items, desc=desc, unit="worker")
    for item in bar:
        bar.set_postfix_str(f"{item.get('hparams', '')} {item.get('model', item['kind'])}", refresh=False)
        yield item


def save_graphs(path: Path, graphs: dict[str, list], embedded: list | None, n_embedded: int | None) -> None:
    """The workers' input file: each PyG ``Data`` as its attribute dict (tensors and plain values), so that
    :func:`load_graphs` reads it weights-only, never unpickling a class."""
    from faenet.checkpoint import save_checkpoint

    save_checkpoint({"graphs": {k: [g.to_dict() for g in v] for k, v in graphs.items()},
                     "embedded": None if embedded is None else [g.to_dict() for g in embedded],
                     "n_embedded": n_embedded}, path, keep_prev=False)


def load_graphs(path: Path) -> dict[str, Any]:
    """What :func:`save_graphs` wrote, with the ``Data`` objects rebuilt (same attributes, same order).

    A file that would run code raises ``faenet.checkpoint.UnsafeCheckpointError`` naming it."""
    from torch_geometric.data import Data

    from faenet.checkpoint import load_checkpoint

    def data(d: dict[str, Any]) -> Data:
        g = Data()
        for k, v in d.items():
            g[k] = v
        return g

    raw = load_checkpoint(path)
    if not isinstance(raw, dict) or not {"graphs", "embedded", "n_embedded"} <= set(raw):
        raise ValueError(f"{path}: not a benchmark graphs file (keys graphs, embedded, n_embedded); it is "
                         "written by run_benchmark in its temporary folder: rerun the benchmark stage")
    return {"graphs": {k: [data(d) for d in v] for k, v in raw["graphs"].items()},
            "embedded": None if raw["embedded"] is None else [data(d) for d in raw["embedded"]],
            "n_embedded": raw["n_embedded"]}


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

    t0 = time.perf_counter()
    b = params.active.benchmark
    torch.set_num_threads(b.threads)
    if b.malloc_regime != "default":
        set_malloc_regime(b.malloc_regime)
    data = load_graphs(Path(spec["graphs_path"]))
    gc.freeze()  # later collections (peak_rss_increase) then scan only the objects made by the measurements
    if spec["kind"] == "allocator":
        out: dict[str, Any] = {"kind": "allocator", "allocator": measure_allocator_sensitivity(params, data)}
    else:
        jobs = [Job(**j) for j in spec["jobs"]]
        out = {"kind": "model", "hparams": spec["hparams"], "model": spec["model"],
               "measurements": measure_group(params, jobs, spec["protocols"], data)}
        if spec["hparams"] in b.scaling_hparams:
            out["scaling"] = {spec["hparams"]: {spec["model"]: measure_scaling(params, spec["hparams"],
                                                                               spec["model"])}}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def measure_group(params: Params, jobs: list[Job], protocols: dict, data: dict[str, Any]) -> list[dict[str, Any]]:
    """One model at one hparam set: every inference measurement first, then the training ones (training
    allocates most; run last, it affects the allocator state of what follows least)."""
    import torch

    from baselines.registry import build_model
    from faenet.data.dataset import remove_tag0
    from faenet.symmetry import SymmetryWrapper
    from faenet.throughput import measure_forward_throughput, measure_training_step

    b = params.active.benchmark
    nets: dict[str, Any] = {}

    def wrapped(job: Job):
        cell = _cell(params, job.hparams, job.model, job.task, job.symmetry)
        if job.task not in nets:
            torch.manual_seed(0)
            nets[job.task] = build_model(job.model, **cell.hparams).eval()
        return SymmetryWrapper(nets[job.task], job.symmetry, frame_dim=cell.frame_dim).eval()

    recs: dict[str, dict[str, Any]] = {}
    for job in jobs:
        g = data["graphs"][job.graph][:job.n_graphs]
        net_params = sum(p.numel() for p in wrapped(job).parameters())
        recs[job.id] = {
            "id": job.id, "hparams": job.hparams, "model": job.model, "symmetry": job.symmetry, "task": job.task,
            "graph": job.graph, "batch_size": job.batch_size, "n_graphs": job.n_graphs, **_graph_stats(g),
            "n_params": net_params,
            "protocols": sorted(p for p, per in protocols.items() if job.id in per.get(job.hparams, {}).values()),
            "inference": None, "training": None}
    for job in jobs:
        if job.task != "is2re" or job.symmetry == "da":
            continue
        g = data["graphs"][job.graph][:job.n_graphs]
        torch.manual_seed(0)
        r = measure_forward_throughput(wrapped(job), _batches(g, job.batch_size), warmup=b.warmup,
                                       repeats=b.repeats, memory=b.memory)
        recs[job.id]["inference"] = {"samples_per_s": r["samples_per_s"],
                                     "samples_per_s_per_repeat": r["samples_per_s_per_repeat"],
                                     "cpu_utilisation": r["cpu_utilisation"],
                                     "peak_memory_mib": (r.get("peak_memory") or {}).get("peak_mib")}
    embedded, n_embedded = data["embedded"], data["n_embedded"]
    train_bs = _cell(params, "profile", "faenet").train.batch_size
    for job in jobs:
        g = data["graphs"][job.graph][:job.n_graphs][:b.train_graphs]
        cell = _cell(params, job.hparams, job.model, job.task, job.symmetry)
        s2ef = cell.needs_forces
        egc = cell.train.energy_grad_coef if s2ef else 0.0
        torch.manual_seed(0)
        tr = measure_training_step(wrapped(job), _batches(g, min(job.batch_size, len(g))), needs_forces=s2ef,
                                   warmup=1, repeats=b.train_repeats, energy_grad_coef=egc, memory=b.memory)
        epoch = {"oc20_is2re": None if s2ef else tr["seconds_per_sample"] * OC20_IS2RE_TRAIN,
                 "embedded_is2re": None}
        if embedded is not None and not s2ef and "same_graph_full" in recs[job.id]["protocols"]:
            rewired = _cell(params, "profile", job.model).rewiring == "remove-tag-0"
            emb = [remove_tag0(x) for x in embedded] if rewired else embedded
            te = measure_training_step(wrapped(job), _batches(emb, min(train_bs, len(emb))), warmup=1,
                                       repeats=b.train_repeats)
            epoch["embedded_is2re"] = te["seconds_per_sample"] * n_embedded
        recs[job.id]["training"] = {"seconds_per_sample": tr["seconds_per_sample"],
                                    "samples_per_s": tr["samples_per_s"], "n_graphs": len(g),
                                    "peak_memory_mib": (tr.get("peak_memory") or {}).get("peak_mib"),
                                    "epoch_seconds": epoch}
    # GPU figures beside the CPU ones (issue 14, item 6): the same models and batches on CUDA, where present.
    gpu = gpu_device(params)
    for job in jobs:
        recs[job.id]["gpu"] = None if gpu is None else _measure_gpu(params, job, data, gpu)
    return list(recs.values())


def gpu_device(params: Params):
    """The CUDA device the GPU figures are measured on: ``train.device`` when it names one (auto: the current
    GPU), else the current GPU when CUDA is present; None without CUDA (the report then says so)."""
    import torch

    from faenet.device import resolve_device

    if not torch.cuda.is_available():
        return None
    dev = resolve_device(params.active.train.device)
    return dev if dev.type == "cuda" else torch.device("cuda", torch.cuda.current_device())


def _measure_gpu(params: Params, job: Job, data: dict[str, Any], device) -> dict[str, Any]:
    """One job's GPU inference throughput (IS2RE rows, as the CPU figures) and training time per sample and
    per OC20 IS2RE epoch, CUDA-synchronised around each timed pass (``faenet.throughput.measure_on_device``)."""
    import torch

    from baselines.registry import build_model
    from faenet.symmetry import SymmetryWrapper
    from faenet.throughput import measure_on_device

    b = params.active.benchmark
    cell = _cell(params, job.hparams, job.model, job.task, job.symmetry)
    torch.manual_seed(0)
    net = build_model(job.model, **cell.hparams).eval()
    model = SymmetryWrapper(net, job.symmetry, frame_dim=cell.frame_dim).eval()
    g = data["graphs"][job.graph][:job.n_graphs]
    infer = job.task == "is2re" and job.symmetry != "da"
    tg = g[:b.train_graphs]
    s2ef = cell.needs_forces
    r = measure_on_device(model, _batches(g if infer else tg, job.batch_size if infer else min(job.batch_size,
                                                                                              len(tg))),
                          device, needs_forces=s2ef, energy_grad_coef=cell.train.energy_grad_coef if s2ef else 0.0,
                          warmup=max(b.warmup, 1), repeats=b.repeats, train_repeats=b.train_repeats, inference=infer)
    if infer and len(tg) != len(g):  # training on the same first train_graphs graphs as the CPU figure
        r["training"] = measure_on_device(model, _batches(tg, min(job.batch_size, len(tg))), device,
                                          needs_forces=s2ef, train_repeats=b.train_repeats,
                                          inference=False)["training"]
    r["training"]["epoch_seconds_oc20_is2re"] = (None if s2ef else
                                                 r["training"]["seconds_per_sample"] * OC20_IS2RE_TRAIN)
    return r


def measure_scaling(params: Params, hp: str, model: str) -> dict[str, Any]:
    """Forward throughput of ``model`` against atoms per graph on ``scaling_sizes`` n x n x 4 slabs."""
    import torch

    from baselines.registry import build_model
    from faenet.symmetry import SymmetryWrapper
    from faenet.throughput import fit_power_law, measure_forward_throughput, oc20_like_slabs

    b = params.active.benchmark
    method = PAPER_ROWS.get(model, "none")
    cell = _cell(params, hp, model, "is2re", method)
    torch.manual_seed(0)
    net = build_model(model, **cell.hparams).eval()
    wrapped = SymmetryWrapper(net, method, frame_dim=cell.frame_dim).eval()
    points = []
    for n in b.scaling_sizes:
        gs = oc20_like_slabs(b.scaling_batch_size, size=(n, n, 4), seed=0)
        r = measure_forward_throughput(wrapped, _batches(gs, len(gs)), warmup=b.warmup, repeats=b.repeats)
        points.append({"size": n, **_graph_stats(gs), "samples_per_s": r["samples_per_s"]})
    fit = fit_power_law([p["atoms_per_graph"] for p in points], [p["samples_per_s"] for p in points])
    return {"symmetry": method, "points": points, "fit": fit}


def measure_allocator_sensitivity(params: Params, data: dict[str, Any]) -> dict[str, Any]:
    """The speed-target pair under two glibc allocator regimes, models interleaved in one process.

    Paper hparams, same-graph full batches: SchNet, FAENet-SFA, FAENet Full FA and FAENet-SFA with the literal
    Eq. (8) (``fused=False``, the official package's per-edge product). Regime ``cold``: glibc's initial
    thresholds made static (every block >= 128 KiB mmapped and returned when freed: page faults on every
    large allocation); ``steady``: mmap threshold at glibc's maximum (32 MiB) and no trimming (freed memory
    reused, as a caching allocator or a long-running process). ``cold`` runs first (a fresh process).
    """
    import torch

    from baselines.registry import build_model
    from faenet.frames import num_frames
    from faenet.symmetry import SymmetryWrapper
    from faenet.throughput import measure_forward_throughput_interleaved, set_malloc_regime

    b = params.active.benchmark
    n = min(b.allocator_graphs, len(data["graphs"]["full"]))
    batches = _batches(data["graphs"]["full"][:n], min(b.batch_size, n))
    fa_cell, sn_cell = _cell(params, "paper", "faenet"), _cell(params, "paper", "schnet")
    fd = fa_cell.frame_dim
    torch.manual_seed(0)
    fa = build_model("faenet", **fa_cell.hparams).eval()
    lit = build_model("faenet", **{**fa_cell.hparams, "fused": False}).eval()
    lit.load_state_dict(fa.state_dict())
    torch.manual_seed(0)
    sn = build_model("schnet", **sn_cell.hparams).eval()
    models = {"schnet/none": SymmetryWrapper(sn, "none", fd), "faenet/sfa": SymmetryWrapper(fa, "sfa", fd),
              "faenet/full": SymmetryWrapper(fa, "full", fd), "faenet-literal/sfa": SymmetryWrapper(lit, "sfa", fd)}
    out: dict[str, Any] = {"n_graphs": n, "batch_size": min(b.batch_size, n), "regimes": {}}
    for regime in ("cold", "steady"):
        applied = set_malloc_regime(regime)
        torch.manual_seed(0)
        res = measure_forward_throughput_interleaved(models, batches, warmup=b.warmup, repeats=b.repeats)
        tp = {k: r["samples_per_s"] for k, r in res.items()}
        out["regimes"][regime] = {
            "applied": applied, "samples_per_s": tp,
            "faenet_sfa_over_schnet": tp["faenet/sfa"] / tp["schnet/none"],
            "faenet_literal_sfa_over_schnet": tp["faenet-literal/sfa"] / tp["schnet/none"],
            "fused_over_literal": tp["faenet/sfa"] / tp["faenet-literal/sfa"],
            "full_fa_cost_per_frame_over_sfa": tp["faenet/sfa"] / tp["faenet/full"] / num_frames(2, False)}
    return out


def gpu_info(params: Params) -> dict[str, Any]:
    """Whether the GPU figures were measured here, on which device, or why not."""
    import torch

    dev = gpu_device(params)
    if dev is None:
        return {"measured": False, "device": None,
                "reason": f"CUDA is not available (torch {torch.__version__}, CUDA build: "
                          f"{torch.version.cuda})"}
    return {"measured": True, "device": f"{dev} ({torch.cuda.get_device_name(dev)})", "reason": None,
            "cuda": torch.version.cuda}


def torch_info() -> dict[str, Any]:
    import torch

    cfg = torch.__config__.parallel_info()
    return {"version": torch.__version__, "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
            "openmp": "OpenMP" in cfg, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version()}


# ----------------------------------------------------------------------------------------------------------
# Ratios, costs, targets
# ----------------------------------------------------------------------------------------------------------

def _index(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in result["measurements"]}


def _lookup(result: dict[str, Any], protocol: str, hp: str, model: str, method: str) -> dict[str, Any] | None:
    mid = result["protocols"].get(protocol, {}).get(hp, {}).get(f"{model}/{method}")
    return _index(result).get(mid) if mid else None


def _inf(m: dict[str, Any] | None) -> float | None:
    return m["inference"]["samples_per_s"] if m and m.get("inference") else None


def _train(m: dict[str, Any] | None) -> float | None:
    return m["training"]["seconds_per_sample"] if m and m.get("training") else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _paper_ratio(table: str, num: str, den: str, quantity: str) -> float | None:
    rows = load_paper().get(table, {}).get("rows", {})
    a, b = rows.get(num, {}).get(quantity), rows.get(den, {}).get(quantity)
    return a / b if a is not None and b else None


PROTOCOL_KEYS = {"paper": "paper_protocol", "same_graph_full": "same_graph_full",
                 "same_graph_rewired": "same_graph_rewired"}


def throughput_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """FAENet-SFA over every baseline: inference throughput and epoch time, each protocol, vs Table 9."""
    out: dict[str, Any] = {}
    for hp in result["hparam_sets"]:
        models = {m["model"] for m in result["measurements"] if m["hparams"] == hp}
        out[hp] = {}
        for base in sorted(models - {"faenet"}):
            inf, ep = {}, {}
            for proto, key in PROTOCOL_KEYS.items():
                fa, bl = _lookup(result, proto, hp, "faenet", "sfa"), _lookup(result, proto, hp, base, "none")
                inf[key] = _ratio(_inf(fa), _inf(bl))
                ep[key] = _ratio(_train(bl), _train(fa))
            inf["paper"] = _paper_ratio("table9", "faenet", base, "infer")
            ep["paper"] = _paper_ratio("table9", base, "faenet", "train_min")
            out[hp][f"faenet-sfa/{base}"] = {"inference": inf, "epoch_time": ep}
    return out


GEMNET_DATA = ROOT / "data" / "qm7x" / "train.lmdb"
GEMNET_BATCHES = 2


def gemnet_costs(params: Params) -> dict[str, Any] | None:
    """GemNet-T against GemNet-Q (both when ``train_cells`` has them; their QM7-X cells' profile hyperparameters,
    forces as trained) on the same batches: the first ``GEMNET_BATCHES`` x ``benchmark.batch_size`` graphs of the
    embedded QM7-X-like train split (molecules: the quadruplets of the OC20-sized slabs are out of CPU reach).
    Interleaved forward throughput (samples/s) and training-step seconds per sample, each model's scaling
    factors fitted on those batches first; ``q_over_t``: time ratios (> 1: GemNet-T cheaper).

    ``scale_factors``: the per-layer activation variance of GemNet-T (§4 of shared/references/gemnet_facts.md):
    log2 var(out)/var(in) of every scaled layer on the NEXT ``GEMNET_BATCHES`` batches (held out from the fit),
    with the fitted factors and with every factor 1. None without QM7-X data or GemNet cells."""
    import torch

    from baselines.gemnet import activation_variance_ratios
    from baselines.registry import build_model
    from faenet.data.dataset import GraphDataset
    from faenet.throughput import measure_forward_throughput_interleaved, measure_training_step
    from faenet.warmup import prepare_model

    models = [m for m in ("gemnet_t", "gemnet_q") if "qm7x" in params.design.get(m, {})]
    if not models or not GEMNET_DATA.exists():
        return None
    t0 = time.perf_counter()
    b = params.active.benchmark
    ds = GraphDataset(GEMNET_DATA, task="qm7x")
    n = b.batch_size * GEMNET_BATCHES
    graphs = [ds[i] for i in range(min(2 * n, len(ds)))]
    batches, held_out = _batches(graphs[:n], b.batch_size), _batches(graphs[n:], b.batch_size)
    nets, hp = {}, {}
    for m in models:
        rc = _cell(params, "profile", m, "qm7x")
        torch.manual_seed(0)
        nets[m], hp[m] = build_model(m, **rc.hparams), rc.hparams
        prepare_model(nets[m], batches)
    inf = measure_forward_throughput_interleaved(nets, batches, warmup=b.warmup, repeats=b.repeats)
    train = {m: measure_training_step(nets[m], batches, needs_forces=True, warmup=1, repeats=b.train_repeats)
             for m in models}
    out: dict[str, Any] = {
        "data": f"first {n} graphs of data/qm7x/train.lmdb, batches of {b.batch_size}", "hparams": "profile (qm7x)",
        "models": {m: {"samples_per_s": inf[m]["samples_per_s"],
                       "train_seconds_per_sample": train[m]["seconds_per_sample"],
                       "n_params": sum(p.numel() for p in nets[m].parameters())} for m in models}}
    if len(models) == 2:
        t, q = out["models"]["gemnet_t"], out["models"]["gemnet_q"]
        out["q_over_t"] = {"inference": t["samples_per_s"] / q["samples_per_s"],
                           "epoch_time": q["train_seconds_per_sample"] / t["train_seconds_per_sample"]}
    if "gemnet_t" in nets and held_out:
        net = nets["gemnet_t"]
        fitted = activation_variance_ratios(net, held_out)
        saved = {sf.name: float(sf.scale) for sf in net.scale_factors()}
        for sf in net.scale_factors():
            sf.scale.fill_(1.0)
        unscaled = activation_variance_ratios(net, held_out)
        for sf in net.scale_factors():
            sf.scale.fill_(saved[sf.name])
        out["scale_factors"] = {"model": "gemnet_t", "held_out_graphs": len(graphs) - n, "factors": saved,
                                "log2_var_ratio": {"fitted": fitted, "unscaled": unscaled}}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def s2ef_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """ForceNet's S2EF training time per sample over FAENet-SFA's (> 1: FAENet faster), vs Table 1."""
    out: dict[str, Any] = {}
    s2 = [m for m in result["measurements"] if m["task"] == "s2ef"]
    for hp in result["hparam_sets"]:
        def get(model: str, graph: str, hp: str = hp) -> float | None:
            for m in s2:
                if (m["hparams"], m["model"], m["graph"]) == (hp, model, graph):
                    return _train(m)
            return None

        if not any(m["hparams"] == hp for m in s2):
            continue
        fn = get("forcenet", "full")
        out[hp] = {"forcenet/faenet-sfa": {"epoch_time": {
            "paper_protocol": _ratio(fn, get("faenet", "rewired")),
            "same_graph_full": _ratio(fn, get("faenet", "full")),
            "paper": _paper_ratio("table1_s2ef", "forcenet", "faenet", "train_min")}}}
    return out


def symmetry_costs(result: dict[str, Any]) -> dict[str, Any]:
    """Cost (time per sample) of one FAENet symmetry method over another, inference and training."""
    from faenet.frames import num_frames

    pairs = {"full/sfa": ("full", "sfa"), "se3-full/se3-sfa": ("se3-full", "se3-sfa"),
             "sfa/none": ("sfa", "none"), "se3-sfa/none": ("se3-sfa", "none"), "da/none": ("da", "none")}
    out: dict[str, Any] = {}
    for hp in result["hparam_sets"]:
        out[hp] = {}
        for name, (a, c) in pairs.items():
            inf, tr = {}, {}
            for proto in ("same_graph_full", "same_graph_rewired"):
                ma, mc = _lookup(result, proto, hp, "faenet", a), _lookup(result, proto, hp, "faenet", c)
                if ma is None or mc is None:
                    continue
                inf[proto] = _ratio(_inf(mc), _inf(ma))  # time ratio = inverse throughput ratio
                tr[proto] = _ratio(_train(ma), _train(mc))
            if not inf and not tr:
                continue
            entry: dict[str, Any] = {"inference": inf, "training": tr}
            if name.endswith("full/sfa") or name.endswith("full/se3-sfa"):
                n_f = num_frames(2, a.startswith("se3"))
                entry["n_frames"] = n_f
                entry["per_frame"] = {"inference": {k: v / n_f if v is not None else None for k, v in inf.items()},
                                      "training": {k: v / n_f if v is not None else None for k, v in tr.items()}}
            out[hp][name] = entry
    return out


def speed_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The developer guide's two targets at the paper's hyperparameters, same-graph protocol, full graphs: from
    the main measurements (regime ``main``, under ``malloc_regime``) and, when measured, from the
    allocator-sensitivity block (regimes ``cold`` and ``steady``)."""
    hp = "paper"
    sfa_schnet = (result["ratios"].get(hp, {}).get("faenet-sfa/schnet", {}).get("inference", {})
                  .get("same_graph_full"))
    full = result["symmetry_costs"].get(hp, {}).get("full/sfa", {})
    per_frame = full.get("per_frame", {}).get("inference", {}).get("same_graph_full")
    values = {"main": (sfa_schnet, per_frame)}
    for regime, r in ((result.get("allocator_sensitivity") or {}).get("regimes") or {}).items():
        values[regime] = (r["faenet_sfa_over_schnet"], r["full_fa_cost_per_frame_over_sfa"])

    def target(name: str, regime: str, value: float | None, threshold: float, higher: bool,
               what: str) -> dict[str, Any]:
        passed = None if value is None else (value >= threshold if higher else value <= threshold)
        return {"name": name, "regime": regime, "value": value, "threshold": threshold, "passed": passed,
                "what": what}

    out = []
    for regime, (ratio, cost) in values.items():
        out += [target("faenet_sfa_over_schnet_throughput", regime, ratio, TARGET_SFA_OVER_SCHNET, True,
                       "FAENet-SFA forward throughput (Table 7 IS2RE) / SchNet's (OCP IS2RE), identical full-graph "
                       "batches"),
                target("full_fa_cost_per_frame_over_sfa", regime, cost, TARGET_FULL_PER_FRAME, False,
                       f"Full FA forward time / SFA's / {full.get('n_frames', 4)} frames (Table 7 IS2RE, full graphs)")]
    return out


REGIMES = {"main": "main measurements", "cold": "allocator cold: page faults on every large allocation",
           "steady": "allocator steady: freed memory reused"}


def target_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for t in result["speed_targets"]:
        where = REGIMES.get(t.get("regime", "main"), t.get("regime"))
        if t.get("regime", "main") == "main":
            where += f", allocator {result.get('config', {}).get('malloc_regime', 'default')}"
        if t["passed"] is None:
            lines.append(f"SPEED TARGET {t['name']} [{where}]: not measured (needs paper_hparams) -- {t['what']}")
        else:
            op = ">=" if t["name"].startswith("faenet_sfa") else "<="
            lines.append(f"SPEED TARGET {t['name']} [{where}]: {t['value']:.3f} (target {op} {t['threshold']}) "
                         f"{'PASS' if t['passed'] else 'FAIL'} -- {t['what']}")
    return lines


def paper_claims() -> list[dict[str, Any]]:
    """The text's speed claims with the ratio of the table numbers behind them (``paper.yaml`` speed_claims)."""
    out = []
    for name, c in load_paper().get("speed_claims", {}).get("rows", {}).items():
        ratio = (_paper_ratio(c["table"], c["numerator"], c["denominator"], c["quantity"])
                 if c.get("table") else None)
        out.append({"name": name, "claim": c.get("claim"), "table_ratio": ratio, "text": c.get("text")})
    return out


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------

def _f(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _duration(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


#: Protocols of the headline's ratios: the paper's (each model on its own graphs) and identical full graphs.
HEADLINE_PROTOCOLS = ("paper_protocol", "same_graph_full")


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The stage's DVC metric from its full ``result``, at the hyperparameters the claims read (the paper's if
    measured, else the profile's): forward throughput (samples/s) of every model/symmetry under the paper
    protocol; the FAENet-SFA / baseline inference and epoch-time ratios and the S2EF ForceNet / FAENet-SFA
    epoch-time ratio under ``HEADLINE_PROTOCOLS``; the Full FA cost per frame over SFA and the SFA cost over
    no symmetry (forward, full graphs); the value of every speed target (``<name>@<regime>``)."""
    hp = "paper" if "paper" in result["hparam_sets"] else "profile"
    by_id = {m["id"]: m for m in result["measurements"]}
    throughput = {}
    for key, mid in sorted(result["protocols"].get("paper", {}).get(hp, {}).items()):
        inference = by_id[mid].get("inference")
        if inference:  # None for training-only methods (DA)
            throughput[key] = inference["samples_per_s"]
    ratios = {pair: {kind: {p: r[kind].get(p) for p in HEADLINE_PROTOCOLS} for kind in ("inference", "epoch_time")}
              for pair, r in sorted(result["ratios"].get(hp, {}).items())}
    s2ef = {pair: {p: r["epoch_time"].get(p) for p in HEADLINE_PROTOCOLS}
            for pair, r in sorted(result["s2ef"].get(hp, {}).items())}
    costs = result["symmetry_costs"].get(hp, {})
    symmetry = {"full/sfa_per_frame": costs.get("full/sfa", {}).get("per_frame", {}).get("inference", {})
                .get("same_graph_full"),
                "sfa/none": costs.get("sfa/none", {}).get("inference", {}).get("same_graph_full")}
    targets = {f"{t['name']}@{t['regime']}": t["value"] for t in result["speed_targets"]}
    return {"profile": result["profile"], "hparams": hp, "samples_per_s": throughput, "ratios": ratios,
            "s2ef_epoch_time": s2ef, "symmetry_cost": symmetry, "speed_targets": targets}


def gpu_lines(result: dict[str, Any]) -> list[str]:
    """The report's GPU section: one row per measurement, or the sentence saying they were not measured."""
    gpu = result.get("gpu") or {"measured": False, "reason": "no GPU block in the results"}
    lines = ["", "## GPU figures (CUDA-synchronised)", ""]
    if not gpu["measured"]:
        return lines + [f"GPU columns not measured on this machine: {gpu['reason']}. Where CUDA is present the "
                        "stage times every row below on the GPU as well (`torch.cuda.synchronize()` around each "
                        "timed pass, float32)."]
    lines += [f"Device {gpu['device']}, CUDA {gpu.get('cuda')}; same models, batches, warm-up and repeats as the CPU "
              "rows; `torch.cuda.synchronize()` before and after each timed pass; peak = CUDA memory allocated.", "",
              "| hparams | task | model | symmetry | graph | batch | GPU infer samples/s | GPU infer peak MiB | "
              "GPU train s/sample | GPU train peak MiB | GPU epoch OC20 IS2RE |", "|" + "---|" * 11]
    for r in result["measurements"]:
        g = r.get("gpu") or {}
        inf, tr = g.get("inference") or {}, g.get("training") or {}
        lines.append(f"| {r['hparams']} | {r['task']} | {r['model']} | {r['symmetry']} | {r['graph']} | "
                     f"{r['batch_size']} | {_f(inf.get('samples_per_s'), 1)} | {_f(inf.get('peak_memory_mib'), 0)} | "
                     f"{_f(tr.get('seconds_per_sample'), 5)} | {_f(tr.get('peak_memory_mib'), 0)} | "
                     f"{_duration(tr.get('epoch_seconds_oc20_is2re'))} |")
    return lines


def write_report(result: dict[str, Any], path: Path = REPORT_PATH) -> None:
    m, t = result["machine"], result["torch"]
    pk = result["packages"]
    lines = ["# Benchmark: throughput, training time, memory (CPU; GPU where CUDA is present)", "",
             f"{m['cpu']}, {result['threads']} threads (affinity {len(result['cpu_affinity'])} CPUs, {m['cores']} "
             f"cores); torch {t['version']} ({t['cpu_capability']}, MKL {t['mkl']}, oneDNN {t['mkldnn']}), "
             f"torch-geometric {pk.get('torch-geometric')}, numpy {pk.get('numpy')}, Python {t['python']}. "
             f"Load average before/after: {_f(result['load_average']['before'][0])} / "
             f"{_f(result['load_average']['after'][0])}. Profile `{result['profile']}`, {result['seconds']:.0f} s.", ""]
    for line in target_lines(result):
        lines.append(f"- **{line}**")
    skipped = result["config"].get("exclude_models") or []
    if skipped:
        lines.append(f"- Not benchmarked on the slabs (`benchmark.exclude_models`): {', '.join(skipped)}.")
    gem = result.get("gemnet")
    if gem:
        lines += ["", "## GemNet-T vs GemNet-Q (same QM7-X-like batches)", "", f"{gem['data']}, {gem['hparams']} "
                  "hyperparameters, scaling factors fitted on these batches.", "",
                  "| model | params | infer [samples/s] | train [ms/sample] |", "|---|---|---|---|"]
        for name, g in gem["models"].items():
            lines.append(f"| {name} | {g['n_params']} | {g['samples_per_s']:.1f} | "
                         f"{1000 * g['train_seconds_per_sample']:.2f} |")
        if "q_over_t" in gem:
            lines += ["", f"GemNet-Q / GemNet-T time: inference {gem['q_over_t']['inference']:.2f}x, training "
                      f"{gem['q_over_t']['epoch_time']:.2f}x."]
        sc = gem.get("scale_factors")
        if sc:
            fit, raw = sc["log2_var_ratio"]["fitted"], sc["log2_var_ratio"]["unscaled"]
            lines += ["", f"Scaling factors ({sc['model']}, {sc['held_out_graphs']} held-out graphs): "
                      "|log2 var(out)/var(in)| per scaled layer, mean (max): fitted "
                      f"{sum(abs(v) for v in fit.values()) / len(fit):.3f} ({max(abs(v) for v in fit.values()):.3f}), "
                      f"all factors 1 {sum(abs(v) for v in raw.values()) / len(raw):.3f} "
                      f"({max(abs(v) for v in raw.values()):.3f})."]
    alloc = result.get("allocator_sensitivity")
    if alloc:
        lines += ["", "## Allocator sensitivity of the speed-target pair", "",
                  f"Paper hparams, the first {alloc['n_graphs']} full-graph slabs, models interleaved in one process "
                  "(faenet-literal = FAENet-SFA with the literal Eq. (8) concatenation, the official package's "
                  "per-edge product). Samples/s:", "",
                  "| regime | SchNet | FAENet-SFA | FAENet Full FA | FAENet-SFA literal | SFA / SchNet | "
                  "literal / SchNet | fused / literal | Full FA per frame / SFA |", "|" + "---|" * 9]
        for regime, r in alloc["regimes"].items():
            tp = r["samples_per_s"]
            lines.append(f"| {REGIMES[regime]} | {tp['schnet/none']:.1f} | {tp['faenet/sfa']:.1f} | "
                         f"{tp['faenet/full']:.2f} | {tp['faenet-literal/sfa']:.2f} | "
                         f"{r['faenet_sfa_over_schnet']:.3f} | "
                         f"{r['faenet_literal_sfa_over_schnet']:.3f} | {r['fused_over_literal']:.2f} | "
                         f"{r['full_fa_cost_per_frame_over_sfa']:.3f} |")
        lines += ["", "SchNet's per-edge tensors are large and its arithmetic light: whether freed memory is reused "
                  "(steady) or every large block is mapped afresh with page faults (cold) changes its speed about "
                  "twofold, FAENet's (GEMM-bound) little. glibc's default policy lands in between, depending on "
                  "what ran before in the process; the main measurements give each model a fresh process."]
    lines += ["", "## Inputs", "", "| graphs | n | atoms/graph | edges/graph | what |", "|---|---|---|---|---|"]
    for name, info in result["inputs"].items():
        if info:
            lines.append(f"| {name} | {info['n_graphs']} | {info['atoms_per_graph']:.1f} | "
                         f"{info['edges_per_graph']:.0f} | {info['description']} |")
    lines += ["", "## Ratios: FAENet-SFA vs baselines", "",
              "Inference: FAENet-SFA throughput / baseline throughput. Epoch time: baseline training time per sample "
              "/ FAENet-SFA's. > 1 = FAENet faster. Paper: Table 9 (IS2RE, GPU).", "",
              "| hparams | ratio | quantity | paper protocol | same graph, full | same graph, rewired | paper |",
              "|---|---|---|---|---|---|---|"]
    for hp, per in result["ratios"].items():
        for name, v in per.items():
            for q in ("inference", "epoch_time"):
                r = v[q]
                lines.append(f"| {hp} | {name} | {q} | {_f(r['paper_protocol'])} | {_f(r['same_graph_full'])} | "
                             f"{_f(r['same_graph_rewired'])} | {_f(r['paper'])} |")
    for hp, per in result["s2ef"].items():
        r = per["forcenet/faenet-sfa"]["epoch_time"]
        lines.append(f"| {hp} | forcenet/faenet-sfa (S2EF, forces) | epoch_time | {_f(r['paper_protocol'])} | "
                     f"{_f(r['same_graph_full'])} | – | {_f(r['paper'])} |")
    lines += ["", "## FAENet symmetry costs (time per sample, first method / second)", "",
              "| hparams | costs | inference, full | inference, rewired | training, full | training, rewired | "
              "per frame (inference, full) |", "|---|---|---|---|---|---|---|"]
    for hp, per in result["symmetry_costs"].items():
        for name, v in per.items():
            pf = v.get("per_frame", {}).get("inference", {}).get("same_graph_full")
            lines.append(f"| {hp} | {name} | {_f(v['inference'].get('same_graph_full'))} | "
                         f"{_f(v['inference'].get('same_graph_rewired'))} | {_f(v['training'].get('same_graph_full'))}"
                         f" | {_f(v['training'].get('same_graph_rewired'))} | {_f(pf)} |")
    lines += ["", "## Every measurement", "",
              "| hparams | task | model | symmetry | graph | protocols | batch | graphs | atoms/graph | edges/graph | "
              "infer samples/s | infer peak MiB | train s/sample | train peak MiB | epoch OC20 IS2RE | epoch embedded "
              "| params |", "|" + "---|" * 17]
    for r in result["measurements"]:
        inf, tr = r["inference"] or {}, r["training"] or {}
        ep = tr.get("epoch_seconds", {})
        lines.append(f"| {r['hparams']} | {r['task']} | {r['model']} | {r['symmetry']} | {r['graph']} | "
                     f"{', '.join(r['protocols']) or '–'} | {r['batch_size']} | {r['n_graphs']} | "
                     f"{r['atoms_per_graph']:.1f} | {r['edges_per_graph']:.0f} | {_f(inf.get('samples_per_s'), 1)} | "
                     f"{_f(inf.get('peak_memory_mib'), 0)} | {_f(tr.get('seconds_per_sample'), 4)} | "
                     f"{_f(tr.get('peak_memory_mib'), 0)} | {_duration(ep.get('oc20_is2re'))} | "
                     f"{_duration(ep.get('embedded_is2re'))} | {r['n_params']:,} |")
    lines += gpu_lines(result)
    lines += ["", "## Scaling: throughput against atoms per graph (full graphs)", ""]
    for hp, per in result["scaling"].items():
        sizes = [p["size"] for p in next(iter(per.values()))["points"]] if per else []
        lines += [f"`{hp}` hparams; samples/s per slab size n (n x n x 4 + adsorbate); exponent = slope of "
                  "log(samples/s) vs log(atoms/graph).", "",
                  "| model | " + " | ".join(f"n={n}" for n in sizes) + " | exponent | r² |",
                  "|" + "---|" * (len(sizes) + 3)]
        for model, v in per.items():
            pts = " | ".join(f"{p['samples_per_s']:.1f} ({p['atoms_per_graph']:.0f} at.)" for p in v["points"])
            lines.append(f"| {model}-{v['symmetry']} | {pts} | {v['fit']['exponent']:.2f} | {v['fit']['r2']:.3f} |")
        lines.append("")
    lines += ["## The paper's speed claims and their tables", "", "| claim | text says | table ratio | source |",
              "|---|---|---|---|"]
    for c in result["paper_claims"]:
        lines.append(f"| {c['name']} | {_f(c['claim'], 0) if c['claim'] is not None else '–'} | "
                     f"{_f(c['table_ratio'])} | {c['text']} |")
    lines += ["", "## Protocol", "",
              "- Paper protocol: each model with the authors' graph preprocessing (FAENet on graphs without "
              "sub-surface atoms, `remove-tag-0`, as every FAENet config of the fork; baselines on full graphs) at "
              f"the authors' IS2RE eval batch sizes {result['config']['paper_batch_sizes']} capped at "
              f"{result['config']['max_batch_size']}. Same-graph protocol: every model on identical batches of "
              f"{result['config']['batch_size']}, once full and once rewired.",
              "- Inference: forward only, eval mode, `torch.inference_mode`, warmed up "
              f"({result['config']['warmup']} pass), median of {result['config']['repeats']} passes. DA is not timed "
              "at inference (its eval path is the model unchanged: the `none` row). Models with a `max_graphs` cap "
              f"({result['config']['max_graphs']}) are timed on the first graphs of the same batches only.",
              f"- Training: forward + loss + backward + clip + AdamW on the first {result['config']['train_graphs']} "
              f"graphs, 1 warm-up pass, median of {result['config']['train_repeats']}; epoch = seconds per sample x "
              f"{OC20_IS2RE_TRAIN:,} (OC20 IS2RE train, from the OC20-sized slabs) or x the embedded train split size "
              "(from a separate measurement on its own first graphs, same-graph full rows).",
              "- Peak memory: extra resident memory (RSS high-water mark, reset per measurement) during the first "
              "warm-up pass, MiB; parameters and inputs resident before are not counted.",
              "- The paper timed one RTX8000 GPU; compare ratios, not absolute numbers. Its FAENet throughput ratios "
              "compare FAENet on rewired graphs with baselines on full graphs (the paper protocol)."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
