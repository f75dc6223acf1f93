"""Stage `expressivity` (App. B.2, Tables 3-5): can a model tell the two graphs of a geometric-gnn-dojo pair apart?

Wiring only. The pairs and the one-pair protocol (dojo training, the ``paper`` and ``strict`` evaluations) are
``faenet.expressivity``; the grid of experiments, model construction, the worker pool and the computed facts
(congruence, frame inputs, what each model is) are ``faenet.expressivity_runs``; the results document, its
headline and Tables 3-5 are ``pipeline.reporting.expressivity_tables`` (torch-free). This file reads
``profiles.<profile>.expressivity`` (``ExpressivityConfig``) and ``train.device``, runs the experiments, logs
one MLflow run per (model, experiment) as results arrive (``MlflowLogger``), and writes
``results/expressivity.json`` (schema: ``pipeline.reporting.expressivity_tables``), the DVC metric
``metrics/expressivity.json`` (``headline``) and ``reports/tables/table{3,4,5}.{md,csv}``.

MLflow runs are flat rather than nested, grouped by the tag ``stage_run`` shared by one stage execution, so that
each run stands alone in MLflow's search (``tags.stage_run = '...' and params.model = 'faenet'``): per-seed
accuracies ``acc_paper`` / ``acc_strict`` and ``best_epoch`` with step = seed, their mean/std.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

from faenet import expressivity_runs as runs
from faenet.expressivity_runs import Experiment
from pipeline.config import ROOT, ConfigError, ExpressivityConfig, Params, flatten, params_hash, stage_main
from pipeline.reporting.expressivity_tables import build_metrics, headline, write_expressivity_tables
from pipeline.reporting.table_writer import TABLES, mean_std
from pipeline.tracking import provenance, write_json

RESULTS = ROOT / "results" / "expressivity.json"
HEADLINE = ROOT / "metrics" / "expressivity.json"


class MlflowLogger:
    """``logger(experiment, result)``: one MLflow run per experiment; run ids in ``.ids``, seconds in ``.seconds``.

    Runs carry the per-seed accuracies ``acc_paper`` / ``acc_strict`` and ``best_epoch`` (step = seed), their
    mean/std, the resolved hyperparameters and pair facts as params, and the tag ``stage_run`` shared by every
    run of one stage execution.
    """

    def __init__(self, cfg: ExpressivityConfig, facts: dict[str, dict[str, Any]], tags: dict[str, str],
                 profile: str) -> None:
        self.cfg, self.facts, self.profile = cfg, facts, profile
        self.tags = {**tags, "dvc_stage": "expressivity", "stage_run": uuid.uuid4().hex[:12]}
        self.ids: dict[str, str] = {}
        self.seconds = 0.0

    def __call__(self, exp: Experiment, r: dict[str, Any]) -> None:
        from pipeline.tracking import log_finished_run

        t0 = time.perf_counter()
        facts = self.facts
        params = {"table": exp.table, "model": exp.model, "pair": exp.pair, "layers": exp.layers,
                  "profile": self.profile, "n_params": r["n_params"],
                  **{f"congruent_{k}": v for k, v in facts["congruence"][exp.pair].items()},
                  "frame_inputs_match_E3": facts["frames"][exp.pair]["inputs_match"]["E3"],
                  **flatten(self.cfg.model_dump(exclude={"hparams", "models"}), "expressivity."),
                  **flatten(runs.resolved_hparams(self.cfg, exp.model, exp.layers), "model.")}
        per_seed = [{"step": seed, "acc_paper": paper, "acc_strict": strict, "best_epoch": best}
                    for seed, (paper, strict, best) in enumerate(zip(r["paper"], r["strict"], r["best_epoch"],
                                                                     strict=True))]
        summary = {f"acc_{p}_{k}": mean_std(r[p], ddof=0)[k] for p in ("paper", "strict") for k in ("mean", "std")}
        self.ids[exp.name] = log_finished_run(f"expressivity-{exp.name}", params, {**self.tags, "table": exp.table},
                                              metrics=summary, history=per_seed)
        self.seconds += time.perf_counter() - t0


def run_stage(cfg: ExpressivityConfig, *, profile: str, tables_dir: Path = TABLES, results_path: Path = RESULTS,
              headline_path: Path = HEADLINE, track: bool = True, tags: dict[str, str] | None = None,
              progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Run every experiment on ``device`` (a ``train.device`` string), log MLflow (``track``), write the results
    JSON, its headline and Tables 3-5; returns the results. Bad settings: ``ConfigError``, before any training."""
    t0 = time.perf_counter()
    experiments = runs.plan(cfg)
    try:
        runs.check_settings(cfg, experiments)
        sections = {**runs.pair_facts(cfg, experiments), "models": runs.model_facts(cfg),
                    "config": cfg.model_dump(mode="json"), "protocol": runs.protocol_facts(cfg)}
    except ValueError as err:
        raise ConfigError(str(err)) from None
    logger = MlflowLogger(cfg, sections, tags or {}, profile) if track else None
    results = runs.run_experiments(cfg, experiments, progress, on_result=logger, device=device)
    metrics = build_metrics(experiments, results, sections, logger.ids if logger else {}, profile)
    metrics["workers"] = min(cfg.workers, len(experiments))
    metrics["seconds"] = {"experiments_and_mlflow": round(time.perf_counter() - t0, 1),
                          "mlflow": round(logger.seconds if logger else 0.0, 1),
                          "total": round(time.perf_counter() - t0, 1),
                          "cpu_experiments": round(sum(r["cpu_seconds"] for r in results.values()), 1)}
    metrics["provenance"] = provenance()
    write_json(results_path, metrics)
    write_json(headline_path, headline(metrics))
    write_expressivity_tables(metrics, tables_dir)
    return metrics


def main() -> int:
    return stage_main(_main)


def _main(params: Params) -> int:
    cfg = params.active.expressivity
    tags = {k: v for k, v in provenance().items() if isinstance(v, str)}
    tags.update(profile=params.profile, params_hash=params_hash(params))
    try:
        metrics = run_stage(cfg, profile=params.profile, tags=tags, device=params.active.train.device)
    except ConfigError as err:  # run_stage's paths are relative to the profile
        raise ConfigError([f"profiles.{params.profile}.{line}" for line in err.errors]) from None
    s = metrics["seconds"]
    print(f"expressivity: {len(runs.plan(cfg))} experiments x {cfg.n_seeds} seeds in {s['total']:.0f} s on "
          f"{metrics['workers']} workers ({s['cpu_experiments']:.0f} CPU s of experiments, MLflow {s['mlflow']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
