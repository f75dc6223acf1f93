"""Stage `benchmark`: forward throughput (samples/s) of every model and symmetry method on identical batches.

Two hyperparameter sets side by side: the profile's and the paper's (Table 7 for FAENet, the OCP IS2RE
configs for the baselines). Two graph protocols:

- ``paper``: each model with the preprocessing the authors used for it: FAENet on graphs with the
  sub-surface atoms removed (``remove-tag-0``), the baselines on full graphs;
- ``same-graph``: every model on identical batches, once full and once rewired.

Batches are OC20-sized slabs (4x4x4 fcc(111) + an adsorbate, ~67 atoms, 6 Å graph, 50 neighbours) built
with ASE, so the figures do not depend on the embedded dataset's small cells. Forward only, warmed up,
median of repeats. Writes ``metrics/benchmark.json`` and ``reports/benchmark.md``.
"""

from __future__ import annotations

import sys
import time

from pipeline.config import ROOT, ConfigError, load_params
from pipeline.tracking import machine_info, package_versions, write_json

# Symmetry methods benchmarked per model; FAENet's costs relative to `none` are the Sec. 3 claim.
METHODS = {"faenet": ["none", "sfa", "se3-sfa", "full", "se3-full"], "forcenet": ["none", "sfa"]}
PAPER_BATCH = 64  # one inference batch size for every model: throughput is per sample, the batch is shared


def oc20_like_slabs(n: int, seed: int = 0) -> list:
    """``n`` OC20-sized slabs with adsorbates, as records (edges: 6 Å, 50 neighbours)."""
    import numpy as np
    import torch
    from ase.build import add_adsorbate, fcc100, fcc111, molecule
    from torch_geometric.data import Data

    from faenet.graph import radius_graph

    rng = np.random.default_rng(seed)
    metals, builders = ["Cu", "Pt", "Pd", "Ag", "Au", "Ni"], [fcc111, fcc100]
    ads = [("O", None), ("H", None), ("CO", 1), ("OH", 0), ("N", None)]
    out = []
    for k in range(n):
        slab = builders[k % 2](metals[k % len(metals)], (4, 4, 4), vacuum=8.0)
        z_layers = np.unique(np.round(slab.positions[:, 2], 2))
        tags = np.where(np.round(slab.positions[:, 2], 2) == z_layers[-1], 1, 0)
        name, idx = ads[k % len(ads)]
        mol = molecule(name) if len(name) > 1 else name
        add_adsorbate(slab, mol, 1.8, position=tuple(rng.uniform(0, 5, 2)), mol_index=idx or 0)
        tags = np.concatenate([tags, np.full(len(slab) - len(tags), 2)])
        pos = torch.tensor(slab.positions, dtype=torch.float32)
        cell = torch.tensor(slab.cell.array, dtype=torch.float32)
        ei, off = radius_graph(pos, 6.0, 50, cell, (True, True, False))
        na = len(slab)
        out.append(Data(pos=pos, atomic_numbers=torch.tensor(slab.numbers), natoms=na, tags=torch.tensor(tags),
                        fixed=torch.tensor((tags == 0).astype(np.int64)), cell=cell[None],
                        pbc=torch.tensor([[True, True, False]]), edge_index=ei, cell_offsets=off, y=0.0))
    return out


def main() -> int:
    try:
        params = load_params()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch
    from torch_geometric.data import Batch

    from baselines.registry import build_model
    from faenet.data.dataset import remove_tag0
    from faenet.symmetry import SymmetryWrapper
    from faenet.throughput import measure_forward_throughput

    prof = params.active
    b = prof.benchmark
    torch.set_num_threads(b.threads)
    torch.manual_seed(0)
    graphs = oc20_like_slabs(b.batch_size * b.n_batches)
    full = [Batch.from_data_list(graphs[i:i + b.batch_size]) for i in range(0, len(graphs), b.batch_size)]
    rewired = [Batch.from_data_list([remove_tag0(g) for g in graphs[i:i + b.batch_size]])
               for i in range(0, len(graphs), b.batch_size)]
    paper_prof = params.profiles.get("paper")
    hp_sets = {"profile": prof}
    if b.paper_hparams and paper_prof is not None:
        hp_sets["paper"] = paper_prof
    rows = []
    t0 = time.perf_counter()
    for hp_name, hp_prof in hp_sets.items():
        for model_name in params.train_matrix.model:
            spec = hp_prof.models.get(model_name)
            hparams = {**(spec.for_task("is2re") if spec else {}), "regress_forces": ""}
            torch.manual_seed(0)
            net = build_model(model_name, **hparams).eval()
            n_params = sum(p.numel() for p in net.parameters())
            for method in METHODS.get(model_name, ["none"]):
                wrapped = SymmetryWrapper(net, method, frame_dim=2).eval()
                for graph_name, batches in (("full", full), ("rewired", rewired)):
                    res = measure_forward_throughput(wrapped, batches, warmup=b.warmup, repeats=b.repeats)
                    rows.append({"hparams": hp_name, "model": model_name, "symmetry": method, "graph": graph_name,
                                 "samples_per_s": res["samples_per_s"], "n_params": n_params,
                                 "atoms_per_graph": sum(int(x.natoms.sum()) for x in batches) / len(graphs),
                                 "edges_per_graph": sum(x.edge_index.shape[1] for x in batches) / len(graphs)})
                    print(f"{hp_name:8s} {model_name:10s} {method:8s} {graph_name:8s} "
                          f"{res['samples_per_s']:9.1f} samples/s", flush=True)
    result = {"rows": rows, "batch_size": b.batch_size, "n_graphs": len(graphs), "threads": b.threads,
              "machine": machine_info(), "packages": package_versions(), "profile": params.profile,
              "seconds": round(time.perf_counter() - t0, 1)}
    result["ratios"] = throughput_ratios(rows)
    write_json(ROOT / "metrics" / "benchmark.json", result)
    write_benchmark_table(result)
    return 0


def _tp(rows: list[dict], hp: str, model: str, method: str, graph: str) -> float | None:
    for r in rows:
        if (r["hparams"], r["model"], r["symmetry"], r["graph"]) == (hp, model, method, graph):
            return r["samples_per_s"]
    return None


def throughput_ratios(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """FAENet-SFA throughput over each baseline's, under the paper protocol and the same-graph protocol."""
    out: dict[str, dict[str, float | None]] = {}
    for hp in sorted({r["hparams"] for r in rows}):
        for base in sorted({r["model"] for r in rows if r["model"] != "faenet"}):
            fa = {g: _tp(rows, hp, "faenet", "sfa", g) for g in ("full", "rewired")}
            bl = {g: _tp(rows, hp, base, "none", g) for g in ("full", "rewired")}

            def ratio(a: float | None, c: float | None) -> float | None:
                return a / c if a and c else None

            out[f"{hp}:faenet-sfa/{base}"] = {
                "paper_protocol": ratio(fa["rewired"], bl["full"]),
                "same_graph_full": ratio(fa["full"], bl["full"]),
                "same_graph_rewired": ratio(fa["rewired"], bl["rewired"])}
        nofa = {g: _tp(rows, hp, "faenet", "none", g) for g in ("full", "rewired")}
        for m in ("sfa", "se3-sfa", "full", "se3-full"):
            t = _tp(rows, hp, "faenet", m, "full")
            out[f"{hp}:faenet-{m}/faenet-none"] = {"same_graph_full": t / nofa["full"] if t and nofa["full"] else None}
    return out


def write_benchmark_table(result: dict) -> None:
    lines = ["# Forward throughput (samples/s), CPU", "",
             f"{result['machine']['cpu']}, {result['threads']} threads, batch {result['batch_size']}, "
             f"{result['n_graphs']} OC20-sized slabs (4x4x4 fcc + adsorbate).", "",
             "| hparams | model | symmetry | graph | samples/s | atoms/graph | edges/graph | params |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['hparams']} | {r['model']} | {r['symmetry']} | {r['graph']} | {r['samples_per_s']:.1f} | "
                     f"{r['atoms_per_graph']:.1f} | {r['edges_per_graph']:.0f} | {r['n_params']:,} |")
    lines += ["", "## Ratios", "", "| ratio | paper protocol | same graph (full) | same graph (rewired) |",
              "|---|---|---|---|"]

    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    for k, v in result["ratios"].items():
        lines.append(f"| {k} | {f(v.get('paper_protocol'))} | {f(v.get('same_graph_full'))} | "
                     f"{f(v.get('same_graph_rewired'))} |")
    lines += ["", "Paper protocol: FAENet on graphs without sub-surface atoms (`remove-tag-0`, as the authors' "
              "configs), baselines on full graphs. Same graph: every model on identical batches."]
    path = ROOT / "reports" / "benchmark.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
