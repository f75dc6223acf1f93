"""``reports/README.md``: the index of every table, figure and audit the stages write."""

from __future__ import annotations

from pathlib import Path

# ----------------------------------------------------------------------------------------------------------
# Index
# ----------------------------------------------------------------------------------------------------------

TABLE_INDEX = (
    ("table1", "S2EF energy and force MAE per split, epoch time, throughput (Table 1 + App. C.4)", "report"),
    ("table2", "QM7-X energy and force MAE, known / unknown molecules", "report"),
    ("md17", "MD17-like (one molecule's MD trajectory) energy and force MAE, not a paper table", "report"),
    ("table3", "k-chains expressivity, layers sweep, paper and strict protocols", "expressivity"),
    ("table4", "rotationally symmetric structures, paper and strict protocols", "expressivity"),
    ("table5", "2-, 3-, 4-body counterexamples, paper and strict protocols", "expressivity"),
    ("table6", "FAENet ablation on IS2RE: throughput and MAE per variant", "ablation"),
    ("table8", "QM9 MAE per property, relative improvement over SchNet, epoch time", "report"),
    ("table9", "IS2RE energy MAE and EwT per split, epoch time, throughput", "report"),
    ("table11", "IS2RE symmetry metrics (App. D)", "symmetry"),
    ("table12", "S2EF symmetry metrics (App. D)", "symmetry"),
)


def write_index(profile: str, figures: list[str], claims_summary: str, reports: Path) -> None:
    lines = ["# Reports", "", f"Written by `dvc repro`, profile `{profile}`. Every number here is computed by the "
             "pipeline from the results in `results/`; the paper's numbers come from `pipeline/paper.yaml`.", "",
             f"**Claims audit**: [claims.md](claims.md) ({claims_summary}).", "",
             "| file | what | stage |", "|---|---|---|"]
    for name, what, stage in TABLE_INDEX:
        if (reports / "tables" / f"{name}.md").exists():
            lines.append(f"| [tables/{name}.md](tables/{name}.md) | {what} | {stage} |")
    for f in figures:
        what = (f"{f.split('_')[-1].removesuffix('.png').upper()}: error against training-set size (does the gap "
                "close with data?)" if "scaling_" in f else
                f"{'IS2RE' if 'fig2' in f else 'QM9'} Pareto plot, paper vs ours")
        lines.append(f"| [{f}]({f}) | {what} | report |")
    lines += ["| [benchmark.md](benchmark.md) | throughput, epoch time, memory of every model and method, two graph "
              "protocols, scaling | benchmark |",
              "| [data_card.md](data_card.md) | the datasets: sizes, splits, elements, statistics, hashes | fetch |",
              "| [claims.json](claims.json) | the audit, machine-readable | report |",
              "| [provenance.json](provenance.json) | git commit, dirty flag, params hash, dataset hashes, versions | "
              "report |", "",
              "Trace a number to its run: the CSV beside each table lists the MLflow run ids "
              "(`mlflow ui --backend-store-uri sqlite:///mlflow.db`, see the top-level README).", ""]
    (reports / "README.md").write_text("\n".join(lines))
