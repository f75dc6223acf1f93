"""Stage `report`: paper tables from ``metrics/``, the paper's numbers beside ours, with provenance.

Reads only metrics JSON files and ``pipeline/paper.yaml``; writes ``reports/tables/*.{md,csv}``,
``reports/provenance.json`` and ``reports/README.md``. Every cell of a CSV carries the MLflow run ids it
comes from. Numbers are formatted, never typed: a missing measurement prints as "–".
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

import yaml

from pipeline.config import ROOT, ConfigError, load_params, params_hash
from pipeline.tracking import provenance, write_json

SPLITS = ("val_id", "val_ood_ads", "val_ood_cat", "val_ood_both")
SPLIT_LABEL = {"val_id": "ID", "val_ood_ads": "OOD-ads", "val_ood_cat": "OOD-cat", "val_ood_both": "OOD-both",
               "average": "Average"}
# The cell of ours that stands for each paper row (the paper's own setting for that model).
PAPER_CELL = {"faenet": "sfa", "schnet": "none", "dimenet_pp": "none", "forcenet": "none"}
TABLES = ROOT / "reports" / "tables"


def load_paper() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "pipeline" / "paper.yaml").read_text())


def load_train_metrics() -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted((ROOT / "metrics" / "train").glob("*.json")):
        m = json.loads(p.read_text())
        if m.get("trained"):
            out[m["cell"]] = m
    return out


def fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_ms(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std else f"{mean:.{digits}f}"


def split_stat(m: dict[str, Any], split: str, key: str, scale: float = 1.0) -> tuple[float | None, float | None]:
    """Mean and std over seeds of ``key`` on ``split``; 'average' is the mean over the four val splits,
    computed per seed first so its std is over seeds too."""
    splits = m.get("splits", {})
    if split == "average":
        per = [splits.get(s, {}).get(key, {}).get("per_seed") for s in SPLITS]
        if any(p is None for p in per):
            return None, None
        seeds_avg = [sum(vals) / len(vals) * scale for vals in zip(*per, strict=True)]
        mean = sum(seeds_avg) / len(seeds_avg)
        std = (sum((v - mean) ** 2 for v in seeds_avg) / (len(seeds_avg) - 1)) ** 0.5 if len(seeds_avg) > 1 else 0
        return mean, std
    d = splits.get(split, {}).get(key)
    return (None, None) if d is None else (d["mean"] * scale, d["std"] * scale)


def write_table(name: str, title: str, header: list[str], rows: list[list[str]], csv_rows: list[dict[str, Any]],
                notes: list[str]) -> None:
    TABLES.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in notes]
    (TABLES / f"{name}.md").write_text("\n".join(lines) + "\n")
    with (TABLES / f"{name}.csv").open("w", newline="") as fh:
        if csv_rows:
            w = csv.DictWriter(fh, fieldnames=list(csv_rows[0]))
            w.writeheader()
            w.writerows(csv_rows)


def energy_force_table(task: str, paper_key: str, name: str, title: str, metrics: dict[str, dict[str, Any]],
                       paper: dict[str, Any], profile: str) -> int:
    """One row per trained cell of ``task``: ours per split (mean ± std over seeds), the paper's beside."""
    cells = sorted(c for c, m in metrics.items() if m["dataset"] == task)
    with_forces = task == "s2ef"
    cols = [*SPLITS, "average"]
    header = ["Model", "Symmetry", "Seeds"] + [f"E-MAE {SPLIT_LABEL[s]} [eV]" for s in cols]
    if with_forces:
        header += [f"F-MAE {SPLIT_LABEL[s]} [meV/Å]" for s in cols]
    header += ["Paper E-MAE avg [eV]"] + (["Paper F-MAE avg [meV/Å]"] if with_forces else [])
    rows, csv_rows = [], []
    for c in cells:
        m = metrics[c]
        prow = paper[paper_key]["rows"].get(m["model"], {}) if PAPER_CELL.get(m["model"]) == m["symmetry"] else {}
        row = [m["model"], m["symmetry"], str(len(m["seeds"]))]
        rec: dict[str, Any] = {"model": m["model"], "symmetry": m["symmetry"], "seeds": len(m["seeds"]),
                               "profile": m["profile"], "rewiring": m.get("rewiring", "none")}
        for key, scale, digits in [("energy_mae", 1.0, 4)] + ([("force_mae", 1000.0, 1)] if with_forces else []):
            for s in cols:
                mean, std = split_stat(m, s, key, scale)
                row.append(fmt_ms(mean, std, digits))
                rec[f"ours_{key}_{s}"] = mean
                rec[f"ours_{key}_{s}_std"] = std
        row.append(fmt(prow.get("energy_mae", {}).get("average")))
        rec["paper_energy_mae_average"] = prow.get("energy_mae", {}).get("average")
        if with_forces:
            row.append(fmt(prow.get("force_mae", {}).get("average"), 1))
            rec["paper_force_mae_average"] = prow.get("force_mae", {}).get("average")
        rec["mlflow_run_ids"] = " ".join(m["mlflow_run_ids"])
        rows.append(row)
        csv_rows.append(rec)
    notes = [f"Ours: profile `{profile}`, embedded EMT data (not OC20): absolute MAEs are not comparable with the "
             "paper's; orderings are.",
             "Paper column: the paper's row for the same model in its own setting (FAENet with SFA, baselines "
             "without frame averaging); blank where the paper has no such row.",
             "mean ± std over seeds; the CSV carries the MLflow run id of every cell."]
    write_table(name, title, header, rows, csv_rows, notes)
    return len(rows)


def main() -> int:
    try:
        params = load_params()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paper = load_paper()
    metrics = load_train_metrics()
    n9 = energy_force_table("is2re", "table9", "table9",
                            "Table 9 — IS2RE energy MAE per validation split (eV)", metrics, paper, params.profile)
    n1 = energy_force_table("s2ef", "table1_s2ef", "table1",
                            "Table 1 (S2EF part) — energy MAE (eV) and force MAE (meV/Å) per validation split",
                            metrics, paper, params.profile)
    fetch = json.loads((ROOT / "metrics" / "fetch.json").read_text()) if (ROOT / "metrics" / "fetch.json").exists() \
        else {}
    prov = provenance({"profile": params.profile, "params_hash": params_hash(params),
                       "dataset_hashes": fetch.get("content_hashes", {})})
    write_json(ROOT / "reports" / "provenance.json", prov)
    index = ["# Reports", "", f"Written by `dvc repro` (stage `report`), profile `{params.profile}`.", "",
             "| file | what |", "|---|---|",
             f"| [tables/table9.md](tables/table9.md) | IS2RE energy MAE per split, {n9} trained cells |",
             f"| [tables/table1.md](tables/table1.md) | S2EF energy and force MAE per split, {n1} trained cells |",
             "| [benchmark.md](benchmark.md) | throughput of every model and symmetry method, two graph protocols |",
             "| [data_card.md](data_card.md) | the embedded catalysis dataset: counts, elements, statistics |",
             "| [provenance.json](provenance.json) | git commit, dirty flag, params hash, dataset hashes, versions |",
             ""]
    (ROOT / "reports" / "README.md").write_text("\n".join(index))
    print(f"report: table9 {n9} rows, table1 {n1} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
