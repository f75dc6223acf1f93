"""Stage `train`: one (model, dataset, symmetry method) cell of the DVC matrix, every seed of the profile.

    python -m pipeline.train --model faenet --dataset is2re --symmetry sfa

Writes ``metrics/train/<model>-<dataset>-<symmetry>.json`` (DVC metric, in git), the per-epoch curves
``metrics/train/curves/<cell>.csv`` (DVC plot) and the final checkpoints ``models/<cell>/seed<k>.pt`` (DVC
cache). One MLflow run per seed. Checkpoints of unfinished runs live in ``work/ckpt/`` (outside DVC's
outputs, which DVC deletes before a stage runs), so a killed stage resumes where it stopped.

A cell the active profile does not list under ``train.runs`` is recorded as not trained (no numbers) and
exits before importing torch: the matrix is the full product, the profile decides what is worth its time.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from pipeline.config import DATASETS, ROOT, SYMMETRY_METHODS, ConfigError, flatten, load_params, params_hash
from pipeline.tracking import provenance, write_json

DATA_DIR = ROOT / "data" / "catalysis"
SPLITS_EVAL = ("val_id", "val_ood_ads", "val_ood_cat", "val_ood_both", "test")


def cell_name(model: str, dataset: str, symmetry: str) -> str:
    return f"{model}-{dataset}-{symmetry}"


def _mean_std(values: list[float]) -> dict[str, float | list[float]]:
    import statistics

    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def _write_skip(cell: str, reason: str, metrics_path: Path, models_dir: Path) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / "NOT_TRAINED.txt").write_text(reason + "\n")
    write_json(metrics_path, {"cell": cell, "trained": False, "reason": reason})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--symmetry", required=True, choices=SYMMETRY_METHODS)
    args = ap.parse_args(argv)
    try:
        params = load_params()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    prof = params.active
    cell = cell_name(args.model, args.dataset, args.symmetry)
    metrics_path = ROOT / "metrics" / "train" / f"{cell}.json"
    curves_path = ROOT / "metrics" / "train" / "curves" / f"{cell}.csv"
    models_dir = ROOT / "models" / cell
    curves_path.parent.mkdir(parents=True, exist_ok=True)
    wanted = prof.train.runs.get(args.model, {}).get(args.dataset, [])
    if args.symmetry not in wanted:
        _write_skip(cell, f"profile '{params.profile}' does not train this cell (train.runs.{args.model}."
                          f"{args.dataset} = {wanted})", metrics_path, models_dir)
        curves_path.write_text("epoch,seed\n")
        print(f"{cell}: not in profile '{params.profile}', recorded as not trained")
        return 0
    return run_cell(params, args.model, args.dataset, args.symmetry, metrics_path, curves_path, models_dir)


def run_cell(params, model_name: str, task: str, symmetry: str, metrics_path: Path, curves_path: Path,
             models_dir: Path) -> int:
    import torch
    from baselines.registry import build_model
    from faenet.data.dataset import GraphDataset, content_hash, remove_tag0
    from faenet.symmetry import SymmetryWrapper

    from faenet.training import TrainSettings, evaluate, train
    from pipeline.tracking import mlflow_run

    prof = params.active
    tcfg = prof.train.for_run(model_name, task)
    torch.set_num_threads(prof.train.threads)
    cell = cell_name(model_name, task, symmetry)
    needs_forces = task == "s2ef"
    transform = remove_tag0 if tcfg.rewiring == "remove-tag-0" else None
    split_paths = {p.stem: p for p in sorted((DATA_DIR / task).glob("*.lmdb"))}
    if "train" not in split_paths:
        raise FileNotFoundError(f"{DATA_DIR / task}/train.lmdb is missing: run `dvc repro fetch` first")
    sets = {name: GraphDataset(path, task=task, transform=transform) for name, path in split_paths.items()}
    eval_names = [s for s in SPLITS_EVAL if s in sets and len(sets[s]) > 0]
    data_hash = content_hash(DATA_DIR / task)
    hparams = prof.models.get(model_name)
    hparams = hparams.for_task(task) if hparams is not None else {}
    if tcfg.regress_forces and needs_forces:
        hparams = {**hparams, "regress_forces": tcfg.regress_forces}
    elif not needs_forces:
        hparams = {**hparams, "regress_forces": ""}
    models_dir.mkdir(parents=True, exist_ok=True)
    per_seed: dict[str, dict[str, list[float]]] = {}
    run_ids, n_params, train_secs, epoch_secs = [], 0, [], []
    curve_rows: list[dict[str, float]] = []
    for seed in prof.train.seeds:
        torch.manual_seed(seed)
        net = build_model(model_name, **hparams)
        n_params = sum(p.numel() for p in net.parameters())
        wrapped = SymmetryWrapper(net, symmetry, frame_dim=2)
        settings = TrainSettings(seed=seed, eval_batch_size=prof.train.eval_batch_size,
                                 **tcfg.model_dump(exclude={"regress_forces", "rewiring"}))
        run_params = {**flatten(tcfg.model_dump(), "train."), **flatten(hparams, "model."),
                      "model": model_name, "dataset": task, "symmetry": symmetry, "seed": seed,
                      "profile": params.profile, "rewiring": tcfg.rewiring, "n_params": n_params,
                      **flatten(prof.data.model_dump(mode="json"), "data.")}
        tags = {**{k: v for k, v in provenance().items() if isinstance(v, str)}, "dvc_stage": f"train@{cell}",
                "dataset_hash": data_hash, "profile": params.profile, "params_hash": params_hash(params),
                "cell": cell}
        with mlflow_run(f"{cell}-s{seed}", run_params, tags) as run:
            import mlflow

            def on_epoch(epoch: int, row: dict[str, float], seed: int = seed) -> None:
                mlflow.log_metrics(row, step=epoch + 1)
                curve_rows.append({"epoch": epoch + 1, "seed": seed, **row})

            ckpt = ROOT / "work" / "ckpt" / cell / f"seed{seed}" / "last.pt"
            result = train(wrapped, sets["train"], {n: sets[n] for n in eval_names[:1]}, settings,
                           needs_forces, checkpoint_path=ckpt, on_epoch=on_epoch)
            if result.resumed_from_epoch:
                print(f"{cell} seed {seed}: resumed from epoch {result.resumed_from_epoch}")
            final = {n: evaluate(wrapped, sets[n], prof.train.eval_batch_size, result.normalizer, needs_forces)
                     for n in eval_names}
            flat_final = {f"final_{n}_{k}": v for n, m in final.items() for k, v in m.items()}
            mlflow.log_metrics(flat_final)
            out_ckpt = models_dir / f"seed{seed}.pt"
            torch.save({"model": net.state_dict(), "model_name": model_name, "hparams": hparams,
                        "symmetry": symmetry, "normalizer": vars(result.normalizer), "seed": seed,
                        "task": task}, out_ckpt)
            seed_metrics = {"cell": cell, "seed": seed, "final": final, "run_id": run.info.run_id}
            seed_json = ROOT / "work" / "metrics" / f"{cell}-s{seed}.json"
            write_json(seed_json, seed_metrics)
            mlflow.log_artifact(str(out_ckpt), "checkpoint")
            mlflow.log_artifact(str(seed_json), "metrics")
            mlflow.log_dict({"train": tcfg.model_dump(), "model": hparams, "profile": params.profile,
                             "symmetry": symmetry}, "resolved_config.json")
            run_ids.append(run.info.run_id)
        for n, m in final.items():
            for k, v in m.items():
                per_seed.setdefault(n, {}).setdefault(k, []).append(v)
        train_secs.append(result.train_seconds)
        epoch_secs.extend(result.epoch_seconds)
    with curves_path.open("w", newline="") as fh:
        keys = sorted({k for r in curve_rows for k in r}, key=lambda k: (k not in ("epoch", "seed"), k))
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(curve_rows)
    metrics = {"cell": cell, "trained": True, "model": model_name, "dataset": task, "symmetry": symmetry,
               "profile": params.profile, "seeds": list(prof.train.seeds), "mlflow_run_ids": run_ids,
               "n_params": n_params, "rewiring": tcfg.rewiring, "dataset_hash": data_hash,
               "train_seconds": _mean_std(train_secs),
               "epoch_seconds_mean": sum(epoch_secs) / max(1, len(epoch_secs)),
               "splits": {n: {k: _mean_std(v) for k, v in m.items()} for n, m in per_seed.items()}}
    write_json(metrics_path, metrics)
    e = metrics["splits"].get("val_id", {}).get("energy_mae", {})
    print(f"{cell}: val_id energy MAE {e.get('mean', float('nan')):.4f} ± {e.get('std', 0):.4f} eV")
    return 0


if __name__ == "__main__":
    sys.exit(main())
