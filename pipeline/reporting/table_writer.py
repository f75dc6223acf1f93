"""Shared by the stages that write paper tables: the paper's numbers, number formatting, md + csv writing.

Every table is ``reports/tables/<name>.md`` (for reading) and ``<name>.csv`` (for machines, with the MLflow
run id of every measured cell). Numbers are formatted, never typed: a missing measurement prints as "–".
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ROOT

TABLES = ROOT / "reports" / "tables"
PAPER_PATH = ROOT / "pipeline" / "paper.yaml"
MISSING = "–"


@cache
def load_paper() -> dict[str, Any]:
    """The paper's reference numbers (``pipeline/paper.yaml``), each under its table and row."""
    return yaml.safe_load(PAPER_PATH.read_text())


def paper_row(table: str, row: str) -> dict[str, Any]:
    """One row of a paper table ({} if the paper has no such row)."""
    return load_paper().get(table, {}).get("rows", {}).get(row, {}) or {}


def read_json(path: Path) -> dict[str, Any]:
    """A metrics file; a missing one is a clear error naming the stage that writes it."""
    if not path.exists():
        raise FileNotFoundError(f"{path.relative_to(ROOT)} is missing: run `dvc repro` (the stage that "
                                "writes it) first")
    return json.loads(path.read_text())


def mean_std(values: Sequence[float], ddof: int = 1) -> dict[str, Any]:
    """``{"mean", "std", "per_seed"}`` of finite values (std 0 for one value; ddof 1 = sample std)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": None, "std": None, "per_seed": []}
    std = statistics.stdev(vals) if ddof == 1 and len(vals) > 1 else (statistics.pstdev(vals) if vals else 0.0)
    return {"mean": statistics.fmean(vals), "std": std if len(vals) > 1 else 0.0, "per_seed": vals}


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    return f"{x:.{digits}f}"


def fmt_ms(mean: float | None, std: float | None, digits: int = 4) -> str:
    """``mean ± std`` (just ``mean`` when std is 0 or unknown, i.e. one seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std else f"{mean:.{digits}f}"


def write_table(name: str, title: str, header: list[str], rows: Iterable[list[str]],
                csv_rows: list[dict[str, Any]], notes: Iterable[str] = (), folder: Path = TABLES) -> Path:
    """Write ``<folder>/<name>.md`` (title, one markdown table, notes) and ``<name>.csv``; returns the md path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = list(notes)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    md = folder / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    fields: list[str] = []
    for r in csv_rows:
        fields += [k for k in r if k not in fields]
    with (folder / f"{name}.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields or ["empty"])
        w.writeheader()
        w.writerows(csv_rows)
    return md
