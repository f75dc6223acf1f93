"""The paper's metrics, as small pure functions (tensors in, floats out):

- ``energy_mae``: mean |E_pred - E_true| over graphs (target units: eV for energies, a QM9 property's unit);
- ``energy_within_threshold`` (EwT, OC20): fraction of graphs with |E_pred - E_true| < 0.02 eV (strict);
- ``force_mae``: mean |F_pred - F_true| over the selected atoms and the 3 components (eV/Å);
- ``relative_improvement``: ``(MAE_ref - MAE) / MAE_ref``, and ``mean_relative_improvement``, Eq. (11) of the
  paper (App. C.3): per property against SchNet, then the mean and population std over the properties.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # no torch import at run time: the report stage reads JSON and uses Eq. (11) only
    from torch import Tensor

#: Energy within threshold (OC20's EwT): |E_pred - E_true| below 0.02 eV.
EWT_THRESHOLD_EV = 0.02


def energy_mae(pred: Tensor, target: Tensor) -> float:
    """Mean absolute error over graphs, in the targets' unit."""
    return float((pred - target).abs().mean())


def energy_within_threshold(pred: Tensor, target: Tensor, threshold: float = EWT_THRESHOLD_EV) -> float:
    """Fraction of graphs whose absolute energy error is strictly below ``threshold`` (eV)."""
    return float(((pred - target).abs() < threshold).float().mean())


def force_mae(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """Mean absolute error over the atoms of ``mask`` (all atoms if None) and the three components."""
    if mask is not None:
        pred, target = pred[mask], target[mask]
    return float((pred - target).abs().mean())


def relative_improvement(mae: float, reference: float) -> float:
    """``(reference - mae) / reference``: positive when ``mae`` is below the reference's."""
    return (reference - mae) / reference


def mean_relative_improvement(mae: Mapping[str, float | None], reference: Mapping[str, float],
                              excluded: Iterable[str] = ()) -> dict[str, Any]:
    """Eq. (11): per property ``(MAE_SchNet - MAE_model) / MAE_SchNet`` (``reference`` = SchNet's MAEs), over
    the properties both have (with a nonzero reference and a value), minus ``excluded``; their mean and
    population std. ``{"per_property", "mean", "std", "n"}``; mean and std are None without a property."""
    skip = set(excluded)
    per = {p: relative_improvement(v, reference[p]) for p, v in mae.items()
           if p in reference and reference[p] and p not in skip and v is not None}
    vals = list(per.values())
    if not vals:
        return {"per_property": {}, "mean": None, "std": None, "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    return {"per_property": per, "mean": mean, "std": std, "n": len(vals)}
