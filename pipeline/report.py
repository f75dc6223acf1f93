"""Stage `report`: the paper's Tables 1, 2, 8 and 9 (and the MD17-like table), the Pareto plots of Fig. 2 and 3,
the claims audit, provenance and the index of ``reports/``.

Reads only the stages' results JSON (``results/``, validated by ``pipeline.reporting.schemas``) and
``pipeline/paper.yaml``. Tables 3-6, 11 and 12 are written by the stages that measure them (expressivity,
ablation, symmetry); this stage indexes them. Every table cell of ours is traceable to MLflow: the CSVs carry
the run ids of the cell's seeds. The logic lives in ``pipeline.reporting`` (torch-free); this module is the
wiring: read, compute, write.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipeline.config import EVAL_SPLITS, ROOT, Params, params_hash, stage_main
from pipeline.reporting.claims import evaluate_claims, write_claims
from pipeline.reporting.figures import draw_figures, draw_scaling, pareto_data, write_plot_data
from pipeline.reporting.index import write_index
from pipeline.reporting.schemas import load_results
from pipeline.reporting.tables import table2, table8, table_md17, table_oc20
from pipeline.tracking import provenance, write_json

RESULTS = ROOT / "results"
REPORTS = ROOT / "reports"


def load_metrics(results_dir: Path = RESULTS) -> dict[str, Any]:
    """Every results file the report reads, validated (``pipeline.reporting.schemas.load_results``)."""
    return load_results(results_dir)


def main() -> int:
    return stage_main(_main)


def _main(params: Params) -> int:
    ctx = load_metrics()
    n9 = table_oc20("is2re", ctx, params.profile)
    n1 = table_oc20("s2ef", ctx, params.profile)
    n2 = table2(ctx, params.profile)
    n_md17 = table_md17(ctx, params.profile)
    qm9 = table8(ctx, params.profile)
    data = pareto_data(ctx, qm9)
    write_plot_data(data, REPORTS)
    figures = draw_figures(data, params.profile, REPORTS) + draw_scaling(ctx.get("scaling"), REPORTS)
    claims = evaluate_claims(ctx, qm9)
    summary = write_claims(claims, REPORTS, params.profile)
    fetch = ctx["fetch"] or {}
    write_json(REPORTS / "provenance.json", provenance({
        "profile": params.profile, "params_hash": params_hash(params),
        "dataset_hashes": fetch.get("content_hashes", {}),
        "mlflow_runs": {c: m.get("mlflow_run_ids", []) for c, m in sorted(ctx["train"].items())},
        "eval_splits": EVAL_SPLITS}))
    write_index(params.profile, figures, summary, REPORTS)
    print(f"report: table9 {n9} rows, table1 {n1}, table2 {n2}, md17 {n_md17}, table8 {len(qm9['results'])} cells; "
          f"claims: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
