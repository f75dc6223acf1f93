"""Stage `ablation`: Table 6 (App. B.3), FAENet variants on IS2RE, energy MAE and forward throughput.

    python -m pipeline.ablation

For each variant (``ablation.variants``; empty = every row of ``faenet.model.TABLE6_ABLATIONS``) and seed
(``ablation.seeds``): FAENet with the profile's IS2RE hyperparameters plus the row's switches
(``faenet.model.table6_hparams``), wrapped by ``ablation.symmetry`` (SFA), trained on ``data/is2re`` with the
profile's ``train.is2re`` settings (``ablation.epochs`` / ``max_train_graphs`` shorten them), evaluated on the
four val splits. Training goes through ``pipeline.runs`` exactly as the train stage: one MLflow run per
variant and seed, resumed after a kill, not redone when finished (keyed under ``work/*/ablation/<variant>``).
Then the forward throughput of every variant (its seed-``seeds[0]`` trained weights) is measured on the same
fixed batches, variants interleaved (``faenet.benchmarking.measure_interleaved``), and logged as one MLflow
run ``ablation-throughput``. Throughput is measured at every run of the stage (it is a property of the
machine at that time); the trainings are not repeated.

Writes ``reports/tables/table6.{md,csv}`` (the paper's layout: Component | Throughput | MAE, ours beside the
paper's), ``results/ablation.json`` and its headline ``metrics/ablation.json`` (DVC metric: ``headline``).
The results' keys, the headline and the table: ``pipeline/reporting/ablation.py``.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import ROOT, ConfigError, Params, params_hash, stage_main
from pipeline.reporting import ablation as R
from pipeline.reporting.ablation import BASELINE, VAL_SPLITS, headline  # noqa: F401  (the stage's public names)
from pipeline.reporting.table_writer import TABLES
from pipeline.tracking import log_finished_run, machine_info, package_versions, write_json

if TYPE_CHECKING:
    from pipeline.resolve import ResolvedCell

DATA = ROOT / "data" / "is2re"
RESULTS_PATH = ROOT / "results" / "ablation.json"
HEADLINE_PATH = ROOT / "metrics" / "ablation.json"


def variant_slug(row: str) -> str:
    """A file/run-name friendly form of a Table 6 row name: "Only r_ij" -> "only-r-ij"."""
    return re.sub(r"[^a-z0-9]+", "-", row.lower()).strip("-")


def main() -> int:
    return stage_main(_main)


def _main(params: Params) -> int:
    run_ablation(params)
    return 0


def selected_variants(params: Params) -> list[str]:
    """The profile's Table 6 rows, in Table 6 order; unknown names are a ConfigError listing the rows."""
    from faenet.model import TABLE6_ABLATIONS

    asked = params.active.ablation.variants
    unknown = [v for v in asked if v not in TABLE6_ABLATIONS]
    if unknown:
        raise ConfigError(f"profiles.{params.profile}.ablation.variants: unknown row(s) {unknown}; Table 6 rows: "
                          f"{list(TABLE6_ABLATIONS)}")
    return [v for v in TABLE6_ABLATIONS if not asked or v in asked]


def resolve_variant(params: Params, row: str | None = None) -> ResolvedCell:
    """The ablation's cell (``pipeline.resolve.ResolvedCell``): FAENet on IS2RE with ``ablation.symmetry``, the
    paper's IS2RE architecture (params.yaml ``profiles.paper.hparams.faenet.is2re``, Table 7: mp_type "base",
    complex MP, weighted energy head, concatenated jumping connections, two-layer MLPs, r_ij + RBF edge
    embedding, 40 neighbours) under the profile's FAENet IS2RE hyperparameters (its sizes, and any switch it
    sets), then Table 6 row ``row``'s switches (None: the baseline configuration itself); the profile's
    ``train.is2re`` settings with ``ablation.epochs``; the four val splits. Without the Table 7 switches several
    rows would equal the baseline (the constructor's defaults are "updownscale_base", no complex MP, sum
    pooling)."""
    from pipeline.resolve import resolve_cell

    a = params.active.ablation
    paper_is2re = resolve_cell(params, "faenet", "is2re", a.symmetry, profile="paper").hparams
    return resolve_cell(params, "faenet", "is2re", a.symmetry, hparam_base=paper_is2re, table6_row=row,
                        epochs=a.epochs, eval_splits=VAL_SPLITS)


def run_ablation(params: Params, data_dir: Path = DATA, results_path: Path = RESULTS_PATH,
                 tables_dir: Path = TABLES, headline_path: Path = HEADLINE_PATH) -> dict[str, Any]:
    """Train (or reuse) every variant and seed, measure throughput, write the table, the results and their
    headline."""
    import torch

    from faenet.benchmarking import measure_interleaved
    from faenet.data.dataset import GraphDataset, content_hash, remove_tag0
    from faenet.device import resolve_device
    from faenet.model import TABLE6_ABLATIONS
    from pipeline.resolve import resolve_run, run_provenance_tags
    from pipeline.runs import DataSpec, Job, RunSpec, load_final, run_all

    t0 = time.perf_counter()
    prof, a = params.active, params.active.ablation
    variants = selected_variants(params)
    torch.set_num_threads(prof.train.threads)
    split_paths = {p.stem: p for p in sorted(Path(data_dir).glob("*.lmdb"))}
    missing = [s for s in ("train", *VAL_SPLITS) if s not in split_paths]
    if missing:
        raise FileNotFoundError(f"{data_dir} lacks {missing} (.lmdb): run `dvc repro fetch` first")
    base = resolve_variant(params)
    cells = {v: resolve_variant(params, v) for v in variants}
    rewire = remove_tag0 if base.rewiring == "remove-tag-0" else None
    n_train, subset = len(GraphDataset(split_paths["train"], task="is2re")), {}
    if a.max_train_graphs is not None and a.max_train_graphs < n_train:  # the first graphs (DataSpec below)
        n_train, subset = a.max_train_graphs, {"train_graphs": a.max_train_graphs}
    data_hash = content_hash(data_dir)
    prov = run_provenance_tags()
    tags = {**prov, "dvc_stage": "ablation", "dataset_hash": data_hash, "profile": params.profile,
            "params_hash": params_hash(params)}  # the throughput run's; resolve_run tags the trainings alike
    specs: dict[str, list[RunSpec]] = {v: [resolve_run(
        params, cells[v], seed, data_hash=data_hash, folder=f"ablation/{variant_slug(v)}",
        run_name=f"ablation-{variant_slug(v)}-seed{seed}", stage="ablation", extra_key=subset,
        extra_params={"variant": v, "n_train": n_train}, extra_tags={"variant": v},
        extra_config={"variant": v, "switches": TABLE6_ABLATIONS[v], "subset": subset}, provenance_tags=prov)
        for seed in a.seeds] for v in variants}
    # Every (variant, seed) run in parallel processes, as the train stage runs seeds (small models use two cores
    # better as two runs than as one run on two threads); results do not depend on the number of workers.
    data = DataSpec({n: str(split_paths[n]) for n in ("train", *base.eval_splits)}, "is2re", rewire,
                    tuple(range(n_train)) if subset else None, in_memory=not prof.train.stream)
    todo = [(v, s) for v in variants for s in specs[v]]
    jobs = [Job(spec, data, tuple(cells[v].eval_splits), cells[v].needs_forces, cells[v].eval_batch_size)
            for v, spec in todo]
    runs: dict[str, list[dict[str, Any]]] = {}
    for (v, _), run in zip(todo, run_all(jobs, workers=prof.train.workers, threads=prof.train.threads),
                           strict=True):
        runs.setdefault(v, []).append(run)

    batches, tp_info = throughput_batches(params, split_paths, rewire)
    models = {v: load_final(specs[v][0])[1] for v in variants}
    torch.manual_seed(0)  # SFA draws frames from the global RNG
    device = resolve_device(prof.train.device)  # the trainings' device: throughput measured where they ran
    # glibc allocator "steady" (as the benchmark stage): freed memory reused, speeds independent of history
    tp = measure_interleaved(models, batches, a.throughput_warmup, a.throughput_repeats, device)
    tp_info.update(warmup=a.throughput_warmup, repeats=a.throughput_repeats, threads=torch.get_num_threads(),
                   device=str(device), rewiring=base.rewiring, weights=f"trained, seed {a.seeds[0]}",
                   mode=f"forward only, eval mode, torch.inference_mode, {a.symmetry} wrapper, variants interleaved, "
                        "glibc allocator steady (freed memory reused)")
    tp_run = log_finished_run("ablation-throughput", {f"throughput.{k}": v for k, v in tp_info.items()},
                              {**tags, "kind": "throughput"},
                              metrics={f"samples_per_s.{variant_slug(v)}": tp[v]["samples_per_s"] for v in variants})
    result = R.summarize(params.profile, variants, {v: TABLE6_ABLATIONS[v] for v in variants},
                         {v: c.hparams for v, c in cells.items()}, runs, tp, tp_info=tp_info, symmetry=a.symmetry,
                         seeds=a.seeds, train_settings=base.train.model_dump(), base=base.hparams,
                         data_hash=data_hash, n_train=n_train)
    result.update(seconds=round(time.perf_counter() - t0, 1), throughput_mlflow_run_id=tp_run,
                  machine=machine_info(), packages=package_versions())
    write_json(results_path, result)
    write_json(headline_path, headline(result))
    R.write_table6(result, tables_dir)
    print("\n".join(R.summary_lines(result)))
    return result


def throughput_batches(params: Params, split_paths: dict[str, Path], rewire: Callable[[Any], Any] | None
                       ) -> tuple[list, dict[str, Any]]:
    """The fixed batches every variant is timed on (``faenet.benchmarking.timing_batches``), and their
    description."""
    from faenet.benchmarking import timing_batches
    from faenet.data.dataset import GraphDataset
    from faenet.throughput import oc20_like_slabs

    a = params.active.ablation
    n = a.throughput_batch_size * a.throughput_batches
    if a.throughput_data == "oc20_like":
        graphs = oc20_like_slabs(n, seed=0)
        what = "OC20-like slabs (fcc 4x4x4 + adsorbate, faenet.throughput.oc20_like_slabs, seed 0)"
    else:
        val = GraphDataset(split_paths["val_id"], task="is2re")
        graphs = [val[i] for i in range(min(n, len(val)))]
        what = "the first graphs of the embedded val_id split"
    if rewire is not None:
        graphs = [rewire(g) for g in graphs]
    batches, info = timing_batches(graphs, a.throughput_batch_size)
    return batches, {"data": a.throughput_data, "description": what, **info}


if __name__ == "__main__":
    sys.exit(main())
