"""Stage `scaling`: does each accuracy gap close with more data?

For every cell of ``scaling.cells`` (FAENet-SFA and the baselines its accuracy claims compare it with), the
cell's runs are trained again, with the cell's own settings and seeds, on nested seeded subsets of its training
split (``scaling.fractions``, e.g. 1/4 and 1/2; the same epochs, so the same passes over each sample); the full
split is the train stage's runs, read from ``results/train/<cell>.json``. Writes ``results/scaling.json``
(per cell, fraction, split and metric: the per-seed errors; and the log-log slope of error against training-set
size with its 95% interval) and the headline ``metrics/scaling.json``. The claims audit reads it for its
"trend with data" column; the report draws one figure per task.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from pipeline.config import ROOT, ConfigError, Params, stage_main
from pipeline.tracking import write_json

DATA = ROOT / "data"
RESULTS_PATH = ROOT / "results" / "scaling.json"
HEADLINE_PATH = ROOT / "metrics" / "scaling.json"
TRAIN_RESULTS = ROOT / "results" / "train"
METRICS = ("energy_mae", "force_mae")


def main() -> int:
    return stage_main(_main)


def _cell_jobs(params: Params, cell: str, fractions: list[float], subset_seed: int, prov: dict[str, str]):
    """The runs of ``cell`` at each fraction, and the training-set sizes."""
    from faenet.data.dataset import GraphDataset, content_hash, nested_subsets
    from faenet.data.transforms import RecordTransform
    from pipeline.resolve import resolve_cell, resolve_run
    from pipeline.runs import DataSpec, Job

    c = params.train_cells[cell]
    if c.dataset == "qm9":
        raise ConfigError(f"scaling.cells: {cell} is a QM9 cell (one model per property); list IS2RE, S2EF or "
                          "QM7-X cells")
    rc = resolve_cell(params, c.model, c.dataset, c.symmetry)
    data_dir = DATA / c.dataset
    split_paths = {p.stem: p for p in sorted(data_dir.glob("*.lmdb"))}
    if "train" not in split_paths:
        raise FileNotFoundError(f"{data_dir}/train.lmdb is missing: run `dvc repro fetch` first")
    eval_names = tuple(s for s in rc.eval_splits if s in split_paths)
    n_train = len(GraphDataset(split_paths["train"], task=c.dataset, in_memory=False))  # the length only
    subsets = nested_subsets(n_train, fractions, subset_seed)
    transform = RecordTransform(True) if rc.rewiring == "remove-tag-0" else None
    data_hash = content_hash(data_dir)
    jobs: list[tuple[float, Any]] = []
    for frac, idx in subsets.items():
        data = DataSpec({n: str(split_paths[n]) for n in ("train", *eval_names)}, c.dataset, transform, tuple(idx),
                        in_memory=not params.active.train.stream)
        for seed in rc.seeds:
            spec = resolve_run(params, rc, seed, data_hash=data_hash, folder=f"scaling/{cell}/f{frac:g}",
                               stage="scaling", extra_key={"train_fraction": frac, "subset_seed": subset_seed},
                               extra_params={"train_fraction": frac, "train_graphs": len(idx)},
                               extra_tags={"scaling_cell": cell}, provenance_tags=prov)
            jobs.append((frac, Job(spec, data, eval_names, rc.needs_forces, rc.eval_batch_size)))
    sizes = {f"{f:g}": len(i) for f, i in subsets.items()}
    sizes["1"] = n_train
    return rc, jobs, sizes


def _full_size(cell: str) -> dict[str, dict[str, list[float]]]:
    """The train stage's per-seed final errors of ``cell`` (the fraction-1 point)."""
    path = TRAIN_RESULTS / f"{cell}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro train@{cell}` first")
    record = json.loads(path.read_text())
    if not record.get("trained"):
        raise ConfigError(f"scaling.cells: {cell} is not trained in this profile ({record.get('reason', '')})")
    return {s: {k: v["per_seed"] for k, v in m.items() if k in METRICS} for s, m in record["splits"].items()}


def loglog_slope(sizes: dict[str, int], by_fraction: dict[str, dict[str, dict[str, list[float]]]], split: str,
                 metric: str) -> dict[str, Any] | None:
    """Slope of log(error) on log(training graphs) over every (size, seed) point, with its 95% interval."""
    from pipeline.reporting.verdicts import slope_interval

    xs, ys = [], []
    for frac, per_split in by_fraction.items():
        for v in per_split.get(split, {}).get(metric, []):
            if v > 0:
                xs.append(math.log(sizes[frac]))
                ys.append(math.log(v))
    if len(set(xs)) < 2:
        return None
    iv = slope_interval(xs, ys)
    return {"slope": iv.value, "low": iv.low if iv.defined else None, "high": iv.high if iv.defined else None,
            "n_points": len(xs)}


def _main(params: Params) -> int:
    from pipeline.resolve import run_provenance_tags
    from pipeline.runs import run_all

    prof = params.active
    sc = prof.scaling
    cells = [c for c in sc.cells if params.trains(params.train_cells[c].model, params.train_cells[c].dataset,
                                                 params.train_cells[c].symmetry)]
    skipped = sorted(set(sc.cells) - set(cells))
    prov = run_provenance_tags()
    plans = {cell: _cell_jobs(params, cell, sc.fractions, sc.subset_seed, prov) for cell in cells}
    jobs = [job for _, js, _ in plans.values() for _, job in js]
    import torch

    torch.set_num_threads(prof.train.threads)
    print(f"scaling: {len(cells)} cells x {len(sc.fractions)} fractions: {len(jobs)} runs", flush=True)
    records = iter(run_all(jobs, workers=prof.train.workers, threads=prof.train.threads))
    out_cells: dict[str, Any] = {}
    for cell, (rc, js, sizes) in plans.items():
        by_fraction: dict[str, dict[str, dict[str, list[float]]]] = {}
        for frac, _ in js:
            run = next(records)
            for split, metrics in run["final"].items():
                for k, v in metrics.items():
                    if k in METRICS:
                        by_fraction.setdefault(f"{frac:g}", {}).setdefault(split, {}).setdefault(k, []).append(v)
        by_fraction["1"] = _full_size(cell)
        splits = sorted({s for per in by_fraction.values() for s in per})
        slopes = {s: {k: sl for k in METRICS if (sl := loglog_slope(sizes, by_fraction, s, k)) is not None}
                  for s in splits}
        out_cells[cell] = {"task": rc.task, "model": rc.model, "symmetry": rc.symmetry, "seeds": list(rc.seeds),
                           "train_sizes": sizes, "by_fraction": by_fraction, "loglog_slopes": slopes}
    result = {"profile": params.profile, "fractions": [*sc.fractions, 1.0], "subset_seed": sc.subset_seed,
              "skipped": skipped, "cells": out_cells,
              "note": "fraction 1 = the train stage's runs; smaller fractions are nested seeded subsets of train"}
    write_json(RESULTS_PATH, result)
    write_json(HEADLINE_PATH, headline(result))
    for cell, entry in out_cells.items():
        first = next(iter(entry["loglog_slopes"].values()), {})
        shown = ", ".join(f"{k} {v['slope']:.2f}" for k, v in first.items())
        print(f"{cell}: log-log slopes {shown}")
    return 0


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """DVC metric: per cell, the log-log slope of each metric on the first evaluation split."""
    out: dict[str, Any] = {"profile": result["profile"]}
    for cell, entry in result["cells"].items():
        slopes = entry["loglog_slopes"]
        split = "val_id" if "val_id" in slopes else next(iter(slopes), None)
        if split is not None:
            out[cell] = {f"{k}_loglog_slope": round(v["slope"], 4) for k, v in slopes[split].items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
