"""The App. D symmetry evaluation of many models (Tables 11-12): the evaluated graphs, seeds, normalisers, one run.

``faenet.symmetry_eval`` measures ONE model on a list of records; this module holds what evaluating a grid of
models (trained cells and untrained ones, several seeds each) on the same graphs needs, free of any pipeline
concern (it is given file paths, never finds them), so a notebook can rerun one row of the tables:

- ``TaskGraphs(split_path, task, max_graphs, seed)``: the evaluated graphs of one split (a seeded subset when
  the split is larger), raw and per rewiring, read lazily (the real OC20 splits do not fit in memory);
- ``fit_normalizer``: the target mean/std (and element shift) of a training split, fitted as training does;
- ``derived_seed``: stable per-(cell, seed) seeds, so that a run's draws do not depend on the process or the
  order it runs in;
- ``eval_predictor``: a model in eval mode inside its symmetry wrapper, outputs de-normalised;
- ``evaluate_run``: the App. D metrics of one predictor, and its Wrap-I with each frame construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TaskGraphs", "WrapISettings", "derived_seed", "eval_predictor", "evaluate_run", "fit_normalizer"]


def derived_seed(*parts: Any) -> int:
    """A stable 63-bit seed from strings/ints (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def fit_normalizer(train_path: Path, task: str, rewiring: str, normalize: bool, element_shift: bool):
    """Mean/std (and element shift) of the training targets of ``train_path``, rewired as training sees them."""
    from faenet.data.dataset import GraphDataset, remove_tag0
    from faenet.training import Normalizer

    train = GraphDataset(train_path, task=task, transform=remove_tag0 if rewiring == "remove-tag-0" else None,
                         in_memory=False)  # lazy: the real S2EF training split does not fit in memory
    return Normalizer.fit(train, normalize, element_shift)


class TaskGraphs:
    """The evaluated graphs of one split: ``max_graphs`` of it drawn with ``seed`` (all if it is smaller)."""

    def __init__(self, split_path: Path, task: str, max_graphs: int, seed: int) -> None:
        from faenet.data.dataset import GraphDataset
        from faenet.symmetry_eval import select_graphs

        ds = GraphDataset(split_path, task=task, in_memory=False)  # read only the selected graphs (OC20 is big)
        self.task = task
        self.indices = select_graphs(len(ds), max_graphs, seed)
        self.n_split = len(ds)
        self.raw = [ds[i] for i in self.indices]
        self._rewired: dict[str, list] = {"none": self.raw}

    def records(self, rewiring: str) -> list:
        """The graphs as a model trained with ``rewiring`` sees them (rewired once, then reused)."""
        if rewiring not in self._rewired:
            if rewiring != "remove-tag-0":
                raise ValueError(f"unknown rewiring {rewiring!r}; allowed: none, remove-tag-0")
            from faenet.data.dataset import remove_tag0

            self._rewired[rewiring] = [remove_tag0(r) for r in self.raw]
        return self._rewired[rewiring]


def eval_predictor(net: Any, symmetry: str, frame_dim: int, normalizer: Any, generator: Any):
    """``net`` inside its symmetry wrapper (SFA draws its frames from ``generator``), in eval mode, outputs
    de-normalised with ``normalizer``: a ``faenet.symmetry_eval.DenormalizedPredictor``."""
    from faenet.symmetry import SymmetryWrapper
    from faenet.symmetry_eval import DenormalizedPredictor

    return DenormalizedPredictor(SymmetryWrapper(net, symmetry, frame_dim=frame_dim, generator=generator),
                                 normalizer)


@dataclass(frozen=True)
class WrapISettings:
    """Wrap-I of a run: the frame constructions swapped in at inference, on the first ``max_graphs`` graphs."""

    frames: Sequence[str]
    max_graphs: int
    n_transforms: int
    edge_cutoff: float


def evaluate_run(predictor: Any, records: Sequence[Any], *, frame_dim: int, n_transforms: int, batch_size: int,
                 seed: int, degenerate_tol: float, translation_scale: float, global_seed: int, device: Any = None,
                 wrap_i: WrapISettings | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(evaluate_symmetry(...), wrap_i_by_frames(...) or None)`` of one predictor on ``records``.

    The global torch RNG is seeded with ``global_seed`` first: nothing should draw from it, and if something
    does, its draws are still the run's own. Wrap-I runs on the CPU batches after the metrics (moving the model
    back is a no-op unless the metrics ran on a GPU)."""
    import torch

    from faenet.symmetry_eval import evaluate_symmetry, wrap_i_by_frames

    torch.manual_seed(global_seed)
    res = evaluate_symmetry(predictor, records, frame_dim=frame_dim, n_transforms=n_transforms,
                            batch_size=batch_size, seed=seed, degenerate_tol=degenerate_tol,
                            translation_scale=translation_scale, device=device)
    predictor.wrapper.to("cpu")
    if wrap_i is None:
        return res, None
    wrap = wrap_i_by_frames(predictor, list(records)[: wrap_i.max_graphs], frames=wrap_i.frames,
                            n_transforms=wrap_i.n_transforms, batch_size=batch_size, seed=seed,
                            edge_cutoff=wrap_i.edge_cutoff, degenerate_tol=degenerate_tol)
    return res, wrap
