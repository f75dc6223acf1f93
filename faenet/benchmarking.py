"""The benchmark's measurement plan and its execution (library code: plain arguments, no DVC/MLflow/params).

``faenet.throughput`` times one model; this module decides what is timed on what. ``plan`` / ``s2ef_jobs``
list the measurements (``Job``), ``measure_group`` runs one model's (inference first, then training, then the
GPU figures where CUDA is present), ``measure_scaling``, ``measure_allocator_sensitivity`` and
``gemnet_costs`` the extra blocks. ``timing_batches`` / ``measure_interleaved`` are the fixed batches and the
interleaved forward throughput any stage that times variants side by side needs. What a model is
(constructor arguments, frame dimension, forces) comes in as ``ModelSpec``, resolved by the caller's
configuration (a ``Resolver``); how often to repeat, as ``Timing``. (The stage ``pipeline/benchmark.py`` names
the configuration keys below.)

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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from faenet.tasks import OC20_IS2RE_TRAIN

PROTOCOLS = ("paper", "same_graph_full", "same_graph_rewired")
#: The symmetry method of each model's row in the paper's tables (else none): the scaling curve's.
PAPER_ROWS = {"faenet": "sfa"}
NO_CAP = 10**9


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


@dataclass(frozen=True)
class ModelSpec:
    """What a benchmarked model is: constructor arguments, symmetry frames, forces, and how it trains."""

    hparams: dict[str, Any]
    frame_dim: int
    needs_forces: bool = False
    energy_grad_coef: float = 0.0
    rewired: bool = False  # trained on remove-tag-0 graphs (its embedded-train epoch uses them too)
    train_batch_size: int = 1


#: ``resolve(hparam_set, model, task, symmetry)``: the model as the caller's configuration defines it.
Resolver = Callable[[str, str, str, str], ModelSpec]


@dataclass(frozen=True)
class Timing:
    """Repetitions of every measurement: ``warmup`` untimed and median of ``repeats`` forward passes; training
    on the first ``train_graphs`` graphs, median of ``train_repeats``; ``memory``: peak RSS of a warm-up pass."""

    warmup: int = 1
    repeats: int = 3
    train_repeats: int = 2
    train_graphs: int = 8
    memory: bool = True


# ----------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------

def plan(methods: Mapping[str, Sequence[str]], hparam_sets: Sequence[str], *, batch_size: int, n_batches: int,
         paper_batch_sizes: Mapping[str, int], max_batch_size: int | None = None,
         max_graphs: Mapping[str, int] | None = None, exclude_models: Sequence[str] = ()
         ) -> tuple[list[Job], dict[str, dict[str, dict[str, str]]]]:
    """Every measurement and, per protocol and hparam set, which measurement each "model/symmetry" uses.

    ``methods``: model -> symmetry methods timed; ``exclude_models``: ``<model>`` (every hparam set) or
    ``<hparam set>:<model>``; ``max_graphs[model]``: time it on only the first graphs of each protocol."""
    max_graphs = max_graphs or {}
    jobs: dict[str, Job] = {}
    protocols: dict[str, dict[str, dict[str, str]]] = {p: {} for p in PROTOCOLS}

    def add(protocol: str, job: Job) -> None:
        jobs.setdefault(job.id, job)
        protocols[protocol].setdefault(job.hparams, {})[f"{job.model}/{job.symmetry}"] = job.id

    for hp in hparam_sets:
        for model, model_methods in methods.items():
            if model in exclude_models or f"{hp}:{model}" in exclude_models:
                continue
            cap = max_graphs.get(model) or NO_CAP
            n_same = min(batch_size * n_batches, cap)
            bs_paper = min(paper_batch_sizes.get(model, batch_size), max_batch_size or NO_CAP)
            n_paper = min(bs_paper * n_batches, cap)
            graph_paper = "rewired" if model == "faenet" else "full"
            for method in model_methods:
                add("same_graph_full", Job(hp, model, method, "full", min(batch_size, n_same), n_same))
                add("same_graph_rewired", Job(hp, model, method, "rewired", min(batch_size, n_same), n_same))
                add("paper", Job(hp, model, method, graph_paper, min(bs_paper, n_paper), n_paper))
    return list(jobs.values()), protocols


def s2ef_jobs(hparam_sets: Sequence[str], train_graphs: int, max_graphs: Mapping[str, int] | None = None
              ) -> list[Job]:
    """S2EF training steps: FAENet-SFA (paper protocol: rewired; and full) and ForceNet (full)."""
    max_graphs = max_graphs or {}
    out = []
    for hp in hparam_sets:
        for model, method, graphs in (("faenet", "sfa", ("rewired", "full")), ("forcenet", "none", ("full",))):
            n = min(train_graphs, max_graphs.get(model) or NO_CAP)
            out += [Job(hp, model, method, g, n, n, task="s2ef") for g in graphs]
    return out


def group_jobs(jobs: Sequence[Job]) -> dict[tuple[str, str], list[Job]]:
    """Jobs by (hparam set, model): the unit measured in one process."""
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.hparams, job.model), []).append(job)
    return groups


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------

def make_batches(graphs: Sequence, batch_size: int) -> list:
    """Consecutive PyG batches of ``batch_size`` graphs (the last one may be smaller)."""
    from torch_geometric.data import Batch

    return [Batch.from_data_list(list(graphs[i:i + batch_size])) for i in range(0, len(graphs), batch_size)]


def graph_stats(graphs: Sequence) -> dict[str, float]:
    """Mean atoms and edges per graph."""
    return {"atoms_per_graph": sum(int(x.natoms) for x in graphs) / len(graphs),
            "edges_per_graph": sum(int(x.edge_index.shape[1]) for x in graphs) / len(graphs)}


def timing_batches(graphs: Sequence, batch_size: int) -> tuple[list, dict[str, Any]]:
    """The fixed batches a set of models is timed on, and their description (graphs, batches, sizes)."""
    if not graphs:
        raise ValueError("no graphs to time on: give at least one graph")
    batches = make_batches(graphs, batch_size)
    return batches, {"n_graphs": len(graphs), "batch_size": batch_size, "n_batches": len(batches),
                     **graph_stats(graphs)}


def slab_inputs(n: int, forces: bool = False) -> dict[str, list]:
    """The benchmark's graphs: ``n`` OC20-sized slabs (seed 0), full and with tag-0 atoms removed."""
    from faenet.data.dataset import remove_tag0
    from faenet.throughput import oc20_like_slabs

    slabs = oc20_like_slabs(n, seed=0, forces=forces)
    return {"full": slabs, "rewired": [remove_tag0(g) for g in slabs]}


def describe_inputs(graphs: Mapping[str, list], embedded: list | None, n_embedded: int | None
                    ) -> dict[str, Any]:
    """``inputs`` of the results: per graph set its size, mean atoms and edges per graph and what it is."""
    inputs: dict[str, Any] = {name: {"n_graphs": len(gs), **graph_stats(gs),
                                     "description": ("OC20-like fcc 4x4x4 slabs + adsorbate, 6 Å / 50 neighbours, "
                                                     "seed 0" + (", tag-0 atoms removed" if name == "rewired" else ""))}
                              for name, gs in graphs.items()}
    inputs["embedded_train"] = None if embedded is None else {
        "n_graphs": len(embedded), "split_size": n_embedded, **graph_stats(embedded),
        "description": "first graphs of data/is2re/train.lmdb (rewired for models trained rewired)"}
    return inputs


def load_first(path: Path, task: str, n: int) -> tuple[list | None, int | None]:
    """The first ``n`` graphs of a dataset split and its size, or (None, None) when it is not there."""
    from faenet.data.dataset import GraphDataset

    if not path.exists():
        return None, None
    ds = GraphDataset(path, task=task)
    return [ds[i] for i in range(min(n, len(ds)))], len(ds)


def save_graphs(path: Path, graphs: Mapping[str, list], embedded: list | None, n_embedded: int | None) -> None:
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
                         "written by the benchmark in its temporary folder: rerun the benchmark")
    return {"graphs": {k: [data(d) for d in v] for k, v in raw["graphs"].items()},
            "embedded": None if raw["embedded"] is None else [data(d) for d in raw["embedded"]],
            "n_embedded": raw["n_embedded"]}


# ----------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------

def build_seeded(model: str, spec: ModelSpec):
    """``model`` built from ``spec`` after ``torch.manual_seed(0)`` (the same initial weights every time)."""
    from baselines.registry import build_model

    torch.manual_seed(0)
    return build_model(model, **spec.hparams)


def build_wrapped(model: str, spec: ModelSpec, symmetry: str):
    """``build_seeded`` inside its symmetry wrapper, in eval mode."""
    from faenet.symmetry import SymmetryWrapper

    return SymmetryWrapper(build_seeded(model, spec).eval(), symmetry, frame_dim=spec.frame_dim).eval()


def measure_interleaved(models: Mapping[str, Any], batches: Sequence, warmup: int, repeats: int,
                        device: Any = "cpu", malloc_regime: str | None = "steady",
                        keys: Sequence[str] = ("samples_per_s", "samples_per_s_per_repeat", "cpu_utilisation")
                        ) -> dict[str, dict]:
    """Interleaved forward throughput of several models on the same batches (``faenet.throughput.
    measure_forward_throughput_interleaved``), each result cut to ``keys``.

    Off the CPU, models and batches are moved to ``device`` first (CUDA passes are synchronised by the
    timing); on the CPU nothing moves. ``malloc_regime`` fixes glibc's allocator policy first (None: leave it):
    ``steady`` (freed memory reused) makes a model's speed independent of what ran before it."""
    from faenet.throughput import measure_forward_throughput_interleaved, set_malloc_regime

    if torch.device(device).type != "cpu":
        models = {k: m.to(device) for k, m in models.items()}
        batches = [b.to(device) for b in batches]
    if malloc_regime is not None:
        set_malloc_regime(malloc_regime)
    res = measure_forward_throughput_interleaved(models, batches, warmup=warmup, repeats=repeats)
    return {k: {key: r[key] for key in keys} for k, r in res.items()}


def measure_group(jobs: Sequence[Job], protocols: Mapping[str, Mapping[str, Mapping[str, str]]],
                  data: Mapping[str, Any], resolve: Resolver, timing: Timing, gpu: torch.device | None = None
                  ) -> list[dict[str, Any]]:
    """One model at one hparam set (the jobs of one ``group_jobs`` group): every inference measurement first,
    then the training ones (training allocates most; run last, it affects the allocator state of what follows
    least), then the GPU figures on ``gpu`` (None: not measured). ``data``: what ``load_graphs`` returns."""
    from faenet.data.dataset import remove_tag0
    from faenet.symmetry import SymmetryWrapper
    from faenet.throughput import measure_forward_throughput, measure_training_step

    nets: dict[str, Any] = {}

    def wrapped(job: Job):  # one network per task, shared by the symmetry methods (as trained weights would be)
        spec = resolve(job.hparams, job.model, job.task, job.symmetry)
        if job.task not in nets:
            nets[job.task] = build_seeded(job.model, spec).eval()
        return SymmetryWrapper(nets[job.task], job.symmetry, frame_dim=spec.frame_dim).eval()

    recs: dict[str, dict[str, Any]] = {}
    for job in jobs:
        g = data["graphs"][job.graph][:job.n_graphs]
        recs[job.id] = {
            "id": job.id, "hparams": job.hparams, "model": job.model, "symmetry": job.symmetry, "task": job.task,
            "graph": job.graph, "batch_size": job.batch_size, "n_graphs": job.n_graphs, **graph_stats(g),
            "n_params": sum(p.numel() for p in wrapped(job).parameters()),
            "protocols": sorted(p for p, per in protocols.items() if job.id in per.get(job.hparams, {}).values()),
            "inference": None, "training": None}
    for job in jobs:
        if job.task != "is2re" or job.symmetry == "da":  # DA's eval path is the model unchanged
            continue
        g = data["graphs"][job.graph][:job.n_graphs]
        torch.manual_seed(0)
        r = measure_forward_throughput(wrapped(job), make_batches(g, job.batch_size), warmup=timing.warmup,
                                       repeats=timing.repeats, memory=timing.memory)
        recs[job.id]["inference"] = {"samples_per_s": r["samples_per_s"],
                                     "samples_per_s_per_repeat": r["samples_per_s_per_repeat"],
                                     "cpu_utilisation": r["cpu_utilisation"],
                                     "peak_memory_mib": (r.get("peak_memory") or {}).get("peak_mib")}
    embedded, n_embedded = data["embedded"], data["n_embedded"]
    for job in jobs:
        g = data["graphs"][job.graph][:job.n_graphs][:timing.train_graphs]
        spec = resolve(job.hparams, job.model, job.task, job.symmetry)
        s2ef = spec.needs_forces
        torch.manual_seed(0)
        tr = measure_training_step(wrapped(job), make_batches(g, min(job.batch_size, len(g))), needs_forces=s2ef,
                                   warmup=1, repeats=timing.train_repeats,
                                   energy_grad_coef=spec.energy_grad_coef if s2ef else 0.0, memory=timing.memory)
        epoch = {"oc20_is2re": None if s2ef else tr["seconds_per_sample"] * OC20_IS2RE_TRAIN,
                 "embedded_is2re": None}
        if embedded is not None and not s2ef and "same_graph_full" in recs[job.id]["protocols"]:
            # as the train stage sees the embedded split: one batch of its size, rewired as the model trains
            train_as = resolve("profile", job.model, "is2re", "none")
            emb = [remove_tag0(x) for x in embedded] if train_as.rewired else embedded
            bs = resolve("profile", "faenet", "is2re", "none").train_batch_size
            te = measure_training_step(wrapped(job), make_batches(emb, min(bs, len(emb))), warmup=1,
                                       repeats=timing.train_repeats)
            epoch["embedded_is2re"] = te["seconds_per_sample"] * n_embedded
        recs[job.id]["training"] = {"seconds_per_sample": tr["seconds_per_sample"],
                                    "samples_per_s": tr["samples_per_s"], "n_graphs": len(g),
                                    "peak_memory_mib": (tr.get("peak_memory") or {}).get("peak_mib"),
                                    "epoch_seconds": epoch}
    for job in jobs:
        recs[job.id]["gpu"] = None if gpu is None else measure_gpu(job, data, resolve, timing, gpu)
    return list(recs.values())


def measure_gpu(job: Job, data: Mapping[str, Any], resolve: Resolver, timing: Timing, device: torch.device
                ) -> dict[str, Any]:
    """One job's GPU inference throughput (IS2RE rows, as the CPU figures) and training time per sample and
    per OC20 IS2RE epoch, CUDA-synchronised around each timed pass (``faenet.throughput.measure_on_device``)."""
    from faenet.throughput import measure_on_device

    spec = resolve(job.hparams, job.model, job.task, job.symmetry)
    model = build_wrapped(job.model, spec, job.symmetry)
    g = data["graphs"][job.graph][:job.n_graphs]
    infer = job.task == "is2re" and job.symmetry != "da"
    tg = g[:timing.train_graphs]
    s2ef = spec.needs_forces
    batches = make_batches(g, job.batch_size) if infer else make_batches(tg, min(job.batch_size, len(tg)))
    r = measure_on_device(model, batches, device, needs_forces=s2ef,
                          energy_grad_coef=spec.energy_grad_coef if s2ef else 0.0, warmup=max(timing.warmup, 1),
                          repeats=timing.repeats, train_repeats=timing.train_repeats, inference=infer)
    if infer and len(tg) != len(g):  # training on the same first train_graphs graphs as the CPU figure
        r["training"] = measure_on_device(model, make_batches(tg, min(job.batch_size, len(tg))), device,
                                          needs_forces=s2ef, train_repeats=timing.train_repeats,
                                          inference=False)["training"]
    r["training"]["epoch_seconds_oc20_is2re"] = (None if s2ef else
                                                 r["training"]["seconds_per_sample"] * OC20_IS2RE_TRAIN)
    return r


def measure_scaling(model: str, spec: ModelSpec, sizes: Sequence[int], batch_size: int, timing: Timing
                    ) -> dict[str, Any]:
    """Forward throughput of ``model`` (its paper-row method, ``PAPER_ROWS``) against atoms per graph on
    ``batch_size`` slabs of n x n x 4 atoms + adsorbate for n in ``sizes``, and the power-law fit."""
    from faenet.throughput import fit_power_law, measure_forward_throughput, oc20_like_slabs

    method = PAPER_ROWS.get(model, "none")
    wrapped = build_wrapped(model, spec, method)
    points = []
    for n in sizes:
        gs = oc20_like_slabs(batch_size, size=(n, n, 4), seed=0)
        r = measure_forward_throughput(wrapped, make_batches(gs, len(gs)), warmup=timing.warmup,
                                       repeats=timing.repeats)
        points.append({"size": n, **graph_stats(gs), "samples_per_s": r["samples_per_s"]})
    fit = fit_power_law([p["atoms_per_graph"] for p in points], [p["samples_per_s"] for p in points])
    return {"symmetry": method, "points": points, "fit": fit}


def measure_allocator_sensitivity(graphs: Sequence, faenet: ModelSpec, schnet: ModelSpec, n_graphs: int,
                                  batch_size: int, timing: Timing) -> dict[str, Any]:
    """The speed-target pair under two glibc allocator regimes, models interleaved in one process.

    On the first ``n_graphs`` of ``graphs`` (full slabs): SchNet, FAENet-SFA, FAENet Full FA and FAENet-SFA with
    the literal Eq. (8) (``fused=False``, the official package's per-edge product). Regime ``cold``: glibc's
    initial thresholds made static (every block >= 128 KiB mmapped and returned when freed: page faults on
    every large allocation); ``steady``: mmap threshold at glibc's maximum (32 MiB) and no trimming (freed
    memory reused, as a caching allocator or a long-running process). ``cold`` runs first (a fresh process).
    """
    from baselines.registry import build_model
    from faenet.frames import num_frames
    from faenet.symmetry import SymmetryWrapper
    from faenet.throughput import measure_forward_throughput_interleaved, set_malloc_regime

    n = min(n_graphs, len(graphs))
    batches = make_batches(graphs[:n], min(batch_size, n))
    fd = faenet.frame_dim
    torch.manual_seed(0)
    fa = build_model("faenet", **faenet.hparams).eval()
    lit = build_model("faenet", **{**faenet.hparams, "fused": False}).eval()
    lit.load_state_dict(fa.state_dict())
    torch.manual_seed(0)
    sn = build_model("schnet", **schnet.hparams).eval()
    models = {"schnet/none": SymmetryWrapper(sn, "none", fd), "faenet/sfa": SymmetryWrapper(fa, "sfa", fd),
              "faenet/full": SymmetryWrapper(fa, "full", fd), "faenet-literal/sfa": SymmetryWrapper(lit, "sfa", fd)}
    out: dict[str, Any] = {"n_graphs": n, "batch_size": min(batch_size, n), "regimes": {}}
    for regime in ("cold", "steady"):
        applied = set_malloc_regime(regime)
        torch.manual_seed(0)
        res = measure_forward_throughput_interleaved(models, batches, warmup=timing.warmup, repeats=timing.repeats)
        tp = {k: r["samples_per_s"] for k, r in res.items()}
        out["regimes"][regime] = {
            "applied": applied, "samples_per_s": tp,
            "faenet_sfa_over_schnet": tp["faenet/sfa"] / tp["schnet/none"],
            "faenet_literal_sfa_over_schnet": tp["faenet-literal/sfa"] / tp["schnet/none"],
            "fused_over_literal": tp["faenet/sfa"] / tp["faenet-literal/sfa"],
            "full_fa_cost_per_frame_over_sfa": tp["faenet/sfa"] / tp["faenet/full"] / num_frames(2, False)}
    return out


def gemnet_costs(path: Path, specs: Mapping[str, ModelSpec], batch_size: int, n_batches: int, timing: Timing
                 ) -> dict[str, Any] | None:
    """GemNet-T against GemNet-Q (``specs``: whichever of ``gemnet_t`` / ``gemnet_q`` to time) on the same
    batches: the first ``n_batches`` x ``batch_size`` graphs of the QM7-X-like split at ``path`` (molecules: the
    quadruplets of the OC20-sized slabs are out of CPU reach). Interleaved forward throughput (samples/s) and
    training-step seconds per sample, each model's scaling factors fitted on those batches first; ``q_over_t``:
    time ratios (> 1: GemNet-T cheaper).

    ``scale_factors``: the per-layer activation variance of GemNet-T: log2 var(out)/var(in) of every scaled
    layer on the NEXT ``n_batches`` batches (held out from the fit), with the fitted factors and with every
    factor 1. None without the data or without GemNet models."""
    from baselines.gemnet import activation_variance_ratios
    from faenet.throughput import measure_training_step
    from faenet.warmup import prepare_model

    models = list(specs)
    if not models or not path.exists():
        return None
    t0 = time.perf_counter()
    n = batch_size * n_batches
    graphs, _ = load_first(path, "qm7x", 2 * n)
    batches, held_out = make_batches(graphs[:n], batch_size), make_batches(graphs[n:], batch_size)
    nets = {}
    for m in models:
        nets[m] = build_seeded(m, specs[m])
        prepare_model(nets[m], batches)
    inf = measure_interleaved(nets, batches, timing.warmup, timing.repeats, malloc_regime=None,
                              keys=("samples_per_s",))
    train = {m: measure_training_step(nets[m], batches, needs_forces=True, warmup=1, repeats=timing.train_repeats)
             for m in models}
    out: dict[str, Any] = {
        "data": f"first {n} graphs of data/qm7x/train.lmdb, batches of {batch_size}", "hparams": "profile (qm7x)",
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


# ----------------------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------------------

def gpu_device(train_device: str = "auto") -> torch.device | None:
    """The CUDA device the GPU figures are measured on: ``train_device`` when it names one (auto: the current
    GPU), else the current GPU when CUDA is present; None without CUDA."""
    from faenet.device import resolve_device

    if not torch.cuda.is_available():
        return None
    dev = resolve_device(train_device)
    return dev if dev.type == "cuda" else torch.device("cuda", torch.cuda.current_device())


def gpu_info(train_device: str = "auto") -> dict[str, Any]:
    """Whether the GPU figures are measured here, on which device, or why not."""
    dev = gpu_device(train_device)
    if dev is None:
        return {"measured": False, "device": None,
                "reason": f"CUDA is not available (torch {torch.__version__}, CUDA build: {torch.version.cuda})"}
    return {"measured": True, "device": f"{dev} ({torch.cuda.get_device_name(dev)})", "reason": None,
            "cuda": torch.version.cuda}


def torch_info() -> dict[str, Any]:
    """torch's version, threads and CPU backends (MKL, oneDNN, OpenMP, vector capability)."""
    import platform

    cfg = torch.__config__.parallel_info()
    return {"version": torch.__version__, "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
            "openmp": "OpenMP" in cfg, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version()}
