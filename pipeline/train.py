"""Stage `train`: one (model, dataset, symmetry method) cell of ``train_cells``, every seed of the profile.

    python -m pipeline.train --model faenet --dataset is2re --symmetry sfa

Writes the cell's full results ``results/train/<cell>.json`` (what the symmetry and report stages read), its
headline ``metrics/train/<cell>.json`` (DVC metric: ``headline``), the per-epoch curves
``results/curves/<cell>.csv`` (DVC plot, one series per seed and QM9 target: ``write_curves``) and the final
checkpoints ``models/<cell>/`` (DVC cache); the three files are in git.
One MLflow run per seed (per seed and property for QM9, which trains one model per target as the paper).

Nothing computed is lost: checkpoints of unfinished runs live in ``work/ckpt/`` (outside DVC's outputs,
which DVC deletes before a stage runs), so a killed stage resumes where it stopped; a finished run leaves
its result in ``work/results/`` and is not repeated (nor logged twice) when DVC reruns the cell because an
unrelated parameter changed. Both are keyed by a digest of everything the run depends on (model,
hyperparameters, training settings, symmetry method, target, seed and the dataset's content hash).

A cell that ``train_cells`` does not list, or that the profile's ``train.only`` filters out, is
recorded as not trained (no numbers) before torch is imported.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import (
    DATASETS,
    EVAL_SPLITS,
    ROOT,
    SYMMETRY_METHODS,
    ConfigError,
    Params,
    cell_name,
    stage_main,
    validate_models,
)
from pipeline.tables import mean_std
from pipeline.tracking import write_json

DATA = ROOT / "data"
#: Leading columns of a curves file; ``CURVE_Y`` is the column dvc.yaml plots (the main val split's energy MAE).
CURVE_KEYS = ("epoch", "series", "seed", "target", "val_split")
CURVE_Y = "val_energy_mae"


@dataclass(frozen=True)
class CellOutputs:
    """The files of one cell (dvc.yaml train: outs, metrics, plots)."""

    results: Path  # full results (summarize_cell)
    headline: Path  # DVC metric (headline)
    curves: Path  # DVC plot (write_curves)
    models: Path  # checkpoints

    @classmethod
    def of(cls, cell: str, root: Path = ROOT) -> CellOutputs:
        return cls(results=root / "results" / "train" / f"{cell}.json",
                   headline=root / "metrics" / "train" / f"{cell}.json",
                   curves=root / "results" / "curves" / f"{cell}.csv", models=root / "models" / cell)

    def write_record(self, record: dict[str, Any]) -> None:
        write_json(self.results, record)
        write_json(self.headline, headline(record))


def _write_skip(cell: str, reason: str, out: CellOutputs) -> None:
    out.models.mkdir(parents=True, exist_ok=True)
    (out.models / "NOT_TRAINED.txt").write_text(reason + "\n")
    write_curves(out.curves, [], "")
    out.write_record({"cell": cell, "trained": False, "reason": reason})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--symmetry", required=True, choices=SYMMETRY_METHODS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to re-execute under torchrun
    # The registry (torch) only if there is work to do: _main validates the models then.
    return stage_main(lambda params: _main(params, args), check_models=False)


def _main(params: Params, args: argparse.Namespace) -> int:
    cell = cell_name(args.model, args.dataset, args.symmetry)
    out = CellOutputs.of(cell)
    if not params.trains(args.model, args.dataset, args.symmetry):
        why = (f"train.only of profile '{params.profile}' filters it out" if cell in params.train_cells
               else f"train_cells has no {cell!r}")
        _write_skip(cell, f"not trained: {why}", out)
        print(f"{cell}: not trained ({why})")
        return 0
    validate_models(params)
    from faenet import distributed as ddp

    nproc = params.active.train.nproc_per_node
    if nproc > 1 and not ddp.launched():  # one node: this stage again, on nproc ranks
        return ddp.relaunch(nproc, "pipeline.train", args.argv)
    return run_cell(params, args.model, args.dataset, args.symmetry, out)


def dataset_targets(task: str) -> list[str]:
    """Names of the columns of the records' ``targets`` field (QM9), from the dataset's summary.json."""
    summary = DATA / task / "summary.json"
    if not summary.exists():
        raise FileNotFoundError(f"{summary} is missing: run `dvc repro fetch` first")
    info = json.loads(summary.read_text())
    names = info.get("target_names") or [t["name"] for t in info.get("targets", [])]
    if not names:
        raise ValueError(f"{summary} lists no targets (expected 'target_names')")
    return names


class RecordTransform:
    """Picklable dataset transform (runs may train in worker processes): the tag-0 rewiring if asked, then for
    QM9 ``y`` = column ``target_index`` of ``targets`` (one model per property)."""

    def __init__(self, rewire: bool = False, target_index: int | None = None, target: str = "energy") -> None:
        self.rewire, self.target_index, self.target = rewire, target_index, target

    def __call__(self, data):
        if self.rewire:
            from faenet.data.dataset import remove_tag0

            data = remove_tag0(data)
        if self.target_index is None:
            return data
        value = float(data.targets.reshape(-1)[self.target_index])
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"QM9 record sid={getattr(data, 'sid', '?')}: property {self.target!r} is {value}; "
                             "it is not available in this dataset (e.g. alpha without data.qm9.polarizability)")
        out = data.clone()
        out.y = value
        return out


def run_cell(params: Params, model_name: str, task: str, symmetry: str, out: CellOutputs) -> int:
    import torch

    from faenet import distributed as ddp
    from pipeline.resolve import resolve_cell

    prof = params.active
    rc = resolve_cell(params, model_name, task, symmetry)
    torch.set_num_threads(prof.train.threads)
    # Under torchrun/srun: join the process group (rank 0 alone writes the outputs and logs to MLflow).
    dist = ddp.init(prof.train.device)[0] if ddp.launched() else None
    try:
        return _run_cell(params, rc, out, dist)
    finally:
        ddp.shutdown()


def _run_cell(params: Params, rc: Any, out: CellOutputs, dist: Any) -> int:
    from faenet.data.dataset import content_hash
    from pipeline.resolve import resolve_run, run_provenance_tags
    from pipeline.runs import DataSpec, Job, run_all

    prof = params.active
    task, model_name, symmetry = rc.task, rc.model, rc.symmetry
    cell = rc.name
    data_dir = DATA / task
    split_paths = {p.stem: p for p in sorted(data_dir.glob("*.lmdb"))}
    if "train" not in split_paths:
        raise FileNotFoundError(f"{data_dir}/train.lmdb is missing: run `dvc repro fetch` first")
    eval_names = [s for s in rc.eval_splits if s in split_paths]
    data_hash = content_hash(data_dir)
    if task == "qm9":
        names = dataset_targets(task)
        unknown = [t for t in rc.targets if t not in names]
        if unknown:
            raise ConfigError(f"profiles.{params.profile}.train.qm9.targets: {unknown} are not in the dataset; "
                              f"available: {names}")
        targets = [(t, names.index(t)) for t in rc.targets]
    else:
        targets = [(t, None) for t in rc.targets]
    out.models.mkdir(parents=True, exist_ok=True)
    prov = run_provenance_tags()
    jobs = []
    for target, t_index in targets:
        transform = RecordTransform(rc.rewiring == "remove-tag-0", t_index, target)
        if not transform.rewire and t_index is None:
            transform = None
        data = DataSpec({name: str(split_paths[name]) for name in ["train", *eval_names]}, task, transform,
                        in_memory=not prof.train.stream)
        for seed in rc.seeds:
            spec = resolve_run(params, rc, seed, target, data_hash=data_hash, provenance_tags=prov)
            jobs.append(Job(spec, data, tuple(eval_names), rc.needs_forces, rc.eval_batch_size,
                            str(out.models / f"{spec.tag}.pt")))
    runs = run_all(jobs, workers=prof.train.workers, threads=prof.train.threads, dist=dist)
    if dist is not None and not dist.is_main:
        return 0
    n_params = runs[-1]["n_params"]
    record = summarize_cell(params, cell, model_name, task, symmetry, runs, n_params, data_hash, rc.rewiring)
    out.write_record(record)
    write_curves(out.curves, runs, eval_names[0])
    m = json_first_metric(runs, eval_names[0])
    print(f"{cell}: {eval_names[0]} {m}")
    return 0


def summarize_cell(params: Params, cell: str, model: str, task: str, symmetry: str, runs: list[dict[str, Any]],
                   n_params: int, data_hash: str, rewiring: str) -> dict[str, Any]:
    """The cell's full results: per split and metric, mean ± std over seeds (and per QM9 target)."""
    from pipeline.resolve import resolve_cell

    per: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for split, metrics in r["final"].items():
            for k, v in metrics.items():
                per.setdefault(split, {}).setdefault(k, []).append(v)
    epoch_s = [s for r in runs for s in r["epoch_seconds"]]
    return {"cell": cell, "trained": True, "model": model, "dataset": task, "symmetry": symmetry,
            "profile": params.profile, "seeds": list(resolve_cell(params, model, task, symmetry).seeds),
            "targets": sorted({r["target"] for r in runs}), "mlflow_run_ids": [r["run_id"] for r in runs],
            "runs": [{"seed": r["seed"], "target": r["target"], "run_id": r["run_id"]} for r in runs],
            "n_params": n_params, "rewiring": rewiring, "dataset_hash": data_hash,
            "train_seconds": mean_std([r["train_seconds"] for r in runs]),
            "epoch_seconds_mean": sum(epoch_s) / max(1, len(epoch_s)),
            "splits": {s: {k: mean_std(v) for k, v in m.items()} for s, m in per.items()}}


def json_first_metric(runs: list[dict[str, Any]], split: str) -> str:
    vals: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r["final"].get(split, {}).items():
            vals.setdefault(k, []).append(v)
    return ", ".join(f"{k} {mean_std(v)['mean']:.4f} ± {mean_std(v)['std']:.4f}" for k, v in vals.items())


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The cell's DVC metric (``dvc metrics show/diff``), a few numbers from its full results ``record``
    (``summarize_cell``): the MAEs of the main val split (``EVAL_SPLITS``' first, ``val_id``) and of ``test``
    (mean and std over seeds; energy, and forces for force tasks), and the mean epoch time. QM9 trains one
    model per property: the per-property test MAE (Table 8's number), means only, so that the 12 properties of
    the paper profile still fit in a short headline. An untrained cell's record has no numbers and is its own
    headline."""
    if not record.get("trained"):
        return dict(record)
    out: dict[str, Any] = {"cell": record["cell"], "trained": True, "profile": record["profile"]}
    splits = record["splits"]
    if record["dataset"] == "qm9":
        out["test"] = {k: v["mean"] for k, v in sorted(splits.get("test", {}).items()) if k.endswith("_mae")}
    else:
        for split in (EVAL_SPLITS[record["dataset"]][0], "test"):
            for k in ("energy_mae", "force_mae"):
                if k in splits.get(split, {}):
                    out.setdefault(split, {}).update({k: splits[split][k]["mean"],
                                                      f"{k}_std": splits[split][k]["std"]})
    out["epoch_seconds"] = record["epoch_seconds_mean"]
    return out


def curve_series(seed: int, target: str) -> str:
    """The name of one run's line in the curves plot: ``seed0``, or ``gap-seed0`` for a QM9 property."""
    return f"seed{seed}" if target == "energy" else f"{target}-seed{seed}"


def write_curves(path: Path, runs: list[dict[str, Any]], val_split: str) -> None:
    """The learning curves of a cell's ``runs`` (records with ``seed``, ``target`` and per-epoch ``history``),
    long format: one row per (run, epoch), ``series`` naming the run (``curve_series``), so DVC's
    ``learning_curves`` template (``.dvc/plots/``) draws one line per seed and QM9 property. The history's
    ``<val_split>_*`` columns (the split evaluated every epoch) are written as ``val_*``, so every cell has the
    plotted column ``CURVE_Y``; ``val_split`` keeps the split's name."""
    rows = []
    for r in runs:
        for h in r["history"]:
            rows.append({"series": curve_series(r["seed"], r["target"]), "seed": r["seed"], "target": r["target"],
                         "val_split": val_split,
                         **{("val_" + k[len(val_split) + 1:] if k.startswith(val_split + "_") else k): v
                            for k, v in h.items()}})
    rest = sorted({k for row in rows for k in row} - set(CURVE_KEYS) - {CURVE_Y})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*CURVE_KEYS, CURVE_Y, *rest])
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
