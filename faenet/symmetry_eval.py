"""App. D symmetry evaluation of one model (trained or not) on a list of records, in eV-based units.

The glue between a model and ``faenet.symmetry_metrics``, free of any pipeline concern (no files, no
tracking), so a notebook can evaluate a checkpoint it built itself:

- ``DenormalizedPredictor(wrapper, normalizer)``: ``batch -> {"energy": eV (B,), "forces": eV/Å (N, 3)}``
  around a ``faenet.symmetry.SymmetryWrapper`` in eval mode (the model predicts normalised targets; the
  official evaluation compared normalised outputs, here every metric is in physical units). It exposes the
  backbone as ``.model`` so ``symmetry_metrics`` hooks the positions the backbone receives (Pos).
- ``select_graphs(n, max_graphs, seed)``: a seeded subset of a split (S2EF splits are trajectories stored
  in order, so the first ``max_graphs`` frames would cover only a few systems).
- ``evaluate_symmetry(predictor, records, ...)``: Rot-I, Refl-I, %-diff, Pos, F-Rot-E, F-Refl-E (meV,
  meV/Å, %, Å) over every graph and split by PCA-frame degeneracy, plus the energy (and force) MAE of the
  same predictions on the untransformed graphs.
- ``wrap_i_by_frames(predictor, records, frames=...)``: Wrap-I (lattice moves of the atoms, beyond the
  paper) of the same model with each frame construction swapped in at inference (``pca``, ``lattice``,
  ``edges``; ``faenet.frames.compute_frames_by``).

Reproducibility: the transforms come from a generator seeded with ``seed`` (the same draws for every model
given the same records and batch size, so rows of a table are paired comparisons); stochastic frames (SFA)
come from the wrapper's own generator, which the caller seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from faenet.frames import DEFAULT_DEGENERACY_TOL, compute_frames_by, is_degenerate
from faenet.symmetry import SymmetryWrapper
from faenet.symmetry_metrics import METRIC_KEYS, frame_degeneracy_mask, summarize, symmetry_metrics, wrap_invariance
from faenet.training import Normalizer

#: Graph splits of every result: all evaluated graphs, then those whose PCA frames are (not) degenerate.
SPLITS = ("all", "degenerate", "non_degenerate")
ENERGY_SCALE = 1000.0  # eV -> meV


class DenormalizedPredictor:
    """``wrapper`` in eval mode, outputs de-normalised to eV and eV/Å (forces times the target std).

    Gradients are enabled only for ``from_energy`` backbones (forces = -dE/dpos); direct heads run under
    ``no_grad``. The wrapper is put in eval mode: SFA still draws a frame per graph and pass (from the
    wrapper's generator), DA evaluates the raw input, full FA averages every frame.
    """

    def __init__(self, wrapper: SymmetryWrapper, normalizer: Normalizer) -> None:
        if not isinstance(wrapper, SymmetryWrapper):
            raise TypeError(f"wrapper must be a faenet.symmetry.SymmetryWrapper, got {type(wrapper).__name__}")
        self.wrapper = wrapper.eval()
        self.normalizer = normalizer

    @property
    def model(self) -> nn.Module:
        """The backbone, whose inputs ``symmetry_metrics`` captures for Pos."""
        return self.wrapper.model

    def __call__(self, data: Any) -> dict[str, Tensor]:
        grad = self.wrapper.regress_forces == "from_energy"
        with torch.enable_grad() if grad else torch.no_grad():
            out = self.wrapper(data)
        res = {"energy": self.normalizer.denormalize(out["energy"].detach().reshape(-1), data)}
        if "forces" in out:
            res["forces"] = out["forces"].detach() * self.normalizer.std
        return res


def select_graphs(n_total: int, max_graphs: int, seed: int) -> list[int]:
    """Sorted indices of ``min(n_total, max_graphs)`` graphs drawn without replacement (all if fewer)."""
    if n_total < 1:
        raise ValueError("the split holds no graphs: generate or download the data first")
    if max_graphs < 1:
        raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
    if max_graphs >= n_total:
        return list(range(n_total))
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return sorted(int(i) for i in perm[:max_graphs])


def make_batches(records: Sequence[Any], batch_size: int) -> list[Batch]:
    """Consecutive PyG batches of ``batch_size`` records (the last one may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [Batch.from_data_list(list(records[i:i + batch_size])) for i in range(0, len(records), batch_size)]


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


class _ReferenceRecorder:
    """Passes calls through to ``predict`` and keeps its outputs on the untransformed batches.

    ``symmetry_metrics`` calls ``predict(x)`` on each batch object itself before its transformed copies; the
    MAE is computed from those outputs, i.e. from the very predictions the invariance metrics compare
    against (the same SFA draws), without a second pass. ``model`` is forwarded for the Pos hook.
    """

    def __init__(self, predict: DenormalizedPredictor, batches: Sequence[Batch]) -> None:
        self.predict, self.model = predict, predict.model
        self._ids = {id(b) for b in batches}
        self.outputs: dict[int, dict[str, Tensor]] = {}

    def __call__(self, data: Any) -> dict[str, Tensor]:
        out = self.predict(data)
        if id(data) in self._ids and id(data) not in self.outputs:
            self.outputs[id(data)] = out
        return out


def _error_per_graph(outputs: Sequence[dict[str, Tensor]], batches: Sequence[Batch],
                     free_only: bool = True) -> dict[str, Tensor]:
    """Per graph: |E - y| (meV), and for force models the sum and count of |F - F_true| components (meV/Å)."""
    abs_e, f_sum, f_cnt = [], [], []
    for out, data in zip(outputs, batches, strict=True):
        y = torch.as_tensor(data.y).reshape(-1).to(torch.float64)
        abs_e.append((out["energy"].to(torch.float64).cpu() - y).abs() * ENERGY_SCALE)
        if "forces" in out and getattr(data, "force", None) is not None:
            b = int(data.num_graphs)
            keep = (data.fixed == 0) if free_only and getattr(data, "fixed", None) is not None else \
                torch.ones(data.pos.shape[0], dtype=torch.bool)
            err = (out["forces"].to(torch.float64).cpu() - data.force.to(torch.float64)).abs().sum(1)
            err = torch.where(keep, err, 0.0) * ENERGY_SCALE
            f_sum.append(torch.zeros(b, dtype=torch.float64).index_add_(0, data.batch, err))
            f_cnt.append(torch.zeros(b, dtype=torch.float64).index_add_(0, data.batch, keep.to(torch.float64) * 3))
    res = {"abs_energy_error": torch.cat(abs_e)}
    if f_sum:
        res["force_abs_sum"], res["force_count"] = torch.cat(f_sum), torch.cat(f_cnt)
    return res


def _mae(errors: dict[str, Tensor], mask: Tensor) -> dict[str, float | None]:
    out: dict[str, float | None] = {"mae_meV": _nan_to_none(float(errors["abs_energy_error"][mask].mean()))
                                    if bool(mask.any()) else None}
    if "force_abs_sum" in errors:
        cnt = float(errors["force_count"][mask].sum())
        out["force_mae_meV_per_A"] = float(errors["force_abs_sum"][mask].sum()) / cnt if cnt > 0 else None
    return out


def evaluate_symmetry(predict: DenormalizedPredictor, records: Sequence[Any], *, frame_dim: int,
                      n_transforms: int, batch_size: int, seed: int,
                      degenerate_tol: float = DEFAULT_DEGENERACY_TOL, translation_scale: float = 5.0,
                      device: torch.device | str = "cpu") -> dict:
    """App. D metrics of ``predict`` on ``records``, overall and by frame degeneracy, and the MAE.

    Returns ``{"all" | "degenerate" | "non_degenerate": {metric: float | None, "n_graphs": int,
    "mae_meV": float | None[, "force_mae_meV_per_A"]}, "n_graphs", "n_degenerate", "units", "per_graph":
    {key: list}}``. Metric keys are ``faenet.symmetry_metrics.METRIC_KEYS`` available for the model
    (force metrics only for force models); a split without graphs has ``None`` values (never NaN, so the
    result is valid JSON). Units: meV (Rot-I, Refl-I, MAE), meV/Å (force metrics), % (%-diff), Å (Pos),
    fraction of (graph, transform) pairs (``pos_frac``).

    The MAE comes from the predictions on the untransformed graphs that the invariance metrics use as
    reference (for SFA: the same frame draws), so it costs no extra pass.

    ``device``: where the model and the batches compute (``faenet.device.resolve_device``). The transforms and
    SFA frames are drawn from CPU generators and every metric is accumulated CPU-side in float64 (never
    autocast), so a CUDA run draws the same transforms; on the CPU nothing moves.
    """
    device = torch.device(device)
    cpu_batches = make_batches(records, batch_size)
    batches = cpu_batches
    if device.type != "cpu":
        predict.wrapper.to(device)
        batches = [b.to(device) for b in cpu_batches]
    gen = torch.Generator().manual_seed(seed)
    recorder = _ReferenceRecorder(predict, batches)
    res = symmetry_metrics(recorder, batches, n_transforms=n_transforms, frame_dim=frame_dim, generator=gen,
                           degenerate_mask_fn=frame_degeneracy_mask(frame_dim, degenerate_tol),
                           translation_scale=translation_scale, energy_scale=ENERGY_SCALE, force_norm="l2",
                           pos_modulo_translation=True)
    per_graph = res["per_graph"]
    if len(recorder.outputs) != len(batches):
        raise RuntimeError("symmetry_metrics did not evaluate every untransformed batch; cannot compute the MAE")
    errors = _error_per_graph([recorder.outputs[id(b)] for b in batches], cpu_batches)  # labels CPU-side
    degenerate = per_graph["degenerate"].bool()
    masks = {"all": torch.ones_like(degenerate), "degenerate": degenerate, "non_degenerate": ~degenerate}
    keys = [k for k in METRIC_KEYS if k in per_graph]
    out: dict[str, Any] = {}
    for split, mask in masks.items():
        summary = summarize(per_graph, mask)
        out[split] = {**{k: _nan_to_none(summary[k]) for k in keys}, "n_graphs": int(summary["n_graphs"]),
                      **_mae(errors, mask)}
    out["n_graphs"] = int(degenerate.numel())
    out["n_degenerate"] = int(degenerate.sum())
    out["units"] = {**{k: v for k, v in res["units"].items() if k in keys}, "mae_meV": "meV",
                    "force_mae_meV_per_A": "meV/Å"}
    out["per_graph"] = {k: v.tolist() for k, v in {**per_graph, **errors}.items()}
    return out


def wrap_i_by_frames(predict: DenormalizedPredictor, records: Sequence[Any], *, frames: Sequence[str],
                     n_transforms: int, batch_size: int, seed: int, edge_cutoff: float = 6.0,
                     degenerate_tol: float = DEFAULT_DEGENERACY_TOL) -> dict[str, dict[str, float | int]]:
    """Wrap-I (meV, ``faenet.symmetry_metrics.wrap_invariance``) of ``predict`` with each frame construction.

    Returns ``{construction: {"wrap_i_offsets", "wrap_i_translate", "mae_meV" (meV; energy MAE of the
    unmoved graphs with that construction), "n_degenerate", "n_graphs", "seconds"}}``. The moves are the same
    draws for every construction (a generator seeded with ``seed``).
    For SFA the wrapper's frame draw is reseeded before every forward, so a structure and its moved copy get
    the same frame index: Wrap-I then measures the frames, not the SFA draw noise. ``n_degenerate`` counts
    graphs whose frames under that construction have a relative gap below ``degenerate_tol``. The wrapper's
    construction and generator are restored afterwards.
    """
    wrapper = predict.wrapper
    saved = (getattr(wrapper, "frame_construction", "pca"), getattr(wrapper, "edge_cutoff", 6.0), wrapper.generator)
    batches = make_batches(records, batch_size)
    draw = torch.Generator().manual_seed(seed)

    def fixed_draw(data: Any) -> dict[str, Tensor]:
        draw.manual_seed(seed)
        return predict(data)

    out: dict[str, dict[str, float | int]] = {}
    try:
        wrapper.generator, wrapper.edge_cutoff = draw, edge_cutoff
        for construction in frames:
            wrapper.frame_construction = construction
            t0 = time.perf_counter()
            res = wrap_invariance(fixed_draw, batches, n_transforms=n_transforms,
                                  generator=torch.Generator().manual_seed(seed), energy_scale=ENERGY_SCALE)
            # The accuracy cost of swapping the construction in at inference (the model saw PCA frames).
            errors = _error_per_graph([fixed_draw(b) for b in batches], batches)["abs_energy_error"]
            res["mae_meV"] = float(errors.mean())
            n_deg = 0
            for b in batches:
                fr = compute_frames_by(construction, b.pos, b.batch, b.num_graphs, wrapper.frame_dim,
                                       wrapper.se3, cell=b.cell, pbc=b.pbc, edge_index=b.edge_index,
                                       cell_offsets=b.cell_offsets, edge_cutoff=edge_cutoff)
                n_deg += int(is_degenerate(fr, degenerate_tol).sum())
            out[construction] = {**res, "n_degenerate": n_deg, "n_graphs": sum(int(b.num_graphs) for b in batches),
                                 "seconds": time.perf_counter() - t0}
    finally:
        wrapper.frame_construction, wrapper.edge_cutoff, wrapper.generator = saved
    return out
