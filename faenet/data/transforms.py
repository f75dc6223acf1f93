"""What one run sees of a dataset's records: the picklable transform its loaders apply (tag-0 rewiring, the
QM9 property it trains on) and the names of the QM9 ``targets`` columns that property is picked from.

The transform is a module-level class so that a run sent to a worker process pickles it by reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def dataset_targets(data_dir: str | os.PathLike) -> list[str]:
    """Names of the columns of the records' ``targets`` field (QM9), from ``data_dir/summary.json``: a
    property is trained by its column index, so the name -> index map must be the one the data were written
    with."""
    summary = Path(data_dir) / "summary.json"
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

    def __call__(self, data: Any) -> Any:
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
