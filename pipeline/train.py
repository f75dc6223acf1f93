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

The result files (their keys, the headline, the curves' columns): ``pipeline/reporting/train.py``; the
records' transform and the QM9 target names: ``faenet/data/transforms.py``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.config import (
    DATASETS,
    ROOT,
    SYMMETRY_METHODS,
    ConfigError,
    Params,
    cell_name,
    stage_main,
    validate_models,
)
from pipeline.reporting.train import CellOutputs, json_first_metric, summarize_cell, write_curves

DATA = ROOT / "data"


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
    from faenet.data.transforms import RecordTransform, dataset_targets
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
        names = dataset_targets(data_dir)
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
    record = summarize_cell(params.profile, rc.seeds, cell, model_name, task, symmetry, runs, n_params, data_hash,
                            rc.rewiring)
    out.write_record(record)
    write_curves(out.curves, runs, eval_names[0])
    m = json_first_metric(runs, eval_names[0])
    print(f"{cell}: {eval_names[0]} {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
