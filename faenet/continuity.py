"""Continuity of frame averaging through a degenerate PCA spectrum (beyond the paper; Dym et al., ICML 2024).

PCA frames (Eq. (2)) sort the principal axes by variance, so where two principal variances cross the axes
swap and the frame set ``{U diag(s)}`` jumps to ``{U P diag(s)}`` (P a permutation, not a sign change). A
backbone that is not itself invariant then predicts differently on either side: full FA of a PCA frame is
discontinuous exactly at the degeneracy in general (Dym et al.: no efficiently computable unweighted frame is
continuous for the common groups). SFA's expectation over draws is full FA, so it inherits the jump; a single
draw also jumps wherever the sign canonicalisation (third moments) changes sign. A frame built from the cell
(``lattice``, ``faenet.frames.compute_frames_by``) does not depend on the atoms and so cannot jump.

- :func:`degenerate_path`: a structure deformed affinely along its two leading principal axes (atoms and, for
  periodic graphs, the cell: a strain) so that the two principal variances cross at the middle point of the
  path: ``var1(s) = m (1 - width s)``, ``var2(s) = m (1 + width s)``, ``m = sqrt(λ1 λ2)``, s in [-1, 1]
  (area-preserving at the crossing; the strain from the input is small when λ1 ~ λ2, so pick a structure
  near degeneracy to keep the model's graph physical). The graph (edges, cell offsets) is kept, so every
  edge vector moves continuously.
- :func:`continuity_sweep`: the predictions of named predictors along the path, the eigengap, and per
  predictor the largest ``|E(t_k+1) - E(t_k)| / max_i |x_i(t_k+1) - x_i(t_k)|`` (eV/Å: a bounded slope for a
  continuous prediction, ~jump / step for a discontinuous one), with the median step slope beside it.
- :func:`symmetry_predictors`: ``none`` / ``sfa-mean`` (mean of ``n_draws`` SFA draws, the same draws at every
  point: common random numbers) / ``full`` (/ ``full-lattice`` for periodic graphs) around one backbone.
- :func:`nearest_degenerate` / :func:`sweep_model`: a trained model swept through the candidate structure whose
  two leading variances are closest (the path strains it least), energies de-normalised.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from faenet.frames import compute_frames
from faenet.symmetry import SymmetryWrapper

Predictor = Callable[[Any], Tensor]  # batch -> (B,) energies


def degenerate_path(data: Any, dim: int, n_points: int = 41, width: float = 0.1) -> tuple[Tensor, list[Any]]:
    """``(s (K,), [batch at each s])``: ``data`` (one graph) deformed so its principal variances 1 and 2 cross at
    the middle point (``n_points`` odd puts a point exactly on the crossing). ``dim`` 2 deforms in the xy plane
    (slabs; z untouched), 3 in space. Periodic graphs (a ``cell``) are strained with their atoms."""
    if n_points < 3 or n_points % 2 == 0:
        raise ValueError(f"n_points must be odd and >= 3 (a point on the crossing), got {n_points}")
    if not 0 < width < 1:
        raise ValueError(f"width (relative split of the two variances at the path ends) must lie in (0, 1), "
                         f"got {width}")
    pos = data.pos.to(torch.float64)
    batch = torch.zeros(pos.shape[0], dtype=torch.long)
    fr = compute_frames(pos, batch, 1, dim=dim)
    lam = fr.eigenvalues[0].to(torch.float64)
    if float(lam[1]) <= 0 or float((lam[0] - lam[1]) / lam[0]) < 1e-6:
        raise ValueError(f"the structure's two leading variances must be distinct and > 0, got {lam.tolist()}")
    u = fr.rotations[0, 0].to(torch.float64)  # 3x3, columns = canonical axes (z = identity in 2D)
    centre = fr.centroid[0].to(torch.float64)
    ts = torch.linspace(-1.0, 1.0, n_points, dtype=torch.float64)
    ts[(n_points - 1) // 2] = 0.0  # exactly on the crossing
    m = (lam[0] * lam[1]).sqrt()
    cell = getattr(data, "cell", None)
    out = []
    for t in ts:
        scale = torch.ones(3, dtype=torch.float64)
        scale[0] = (m * (1 - width * t) / lam[0]).sqrt()
        scale[1] = (m * (1 + width * t) / lam[1]).sqrt()
        strain = u @ torch.diag(scale) @ u.T  # symmetric: x -> (x - c) @ strain + c for row vectors
        moved = copy.copy(data)
        moved.pos = ((pos - centre) @ strain + centre).to(data.pos.dtype)
        if cell is not None:
            moved.cell = (cell.to(torch.float64) @ strain).to(cell.dtype)
        out.append(moved)
    return ts, out


def symmetry_predictors(model: torch.nn.Module, dim: int, *, n_draws: int = 32, seed: int = 0,
                        periodic: bool = False,
                        wrap: Callable[[SymmetryWrapper], Predictor] | None = None) -> dict[str, Predictor]:
    """Named predictors around ``model``: ``none``, ``sfa-mean``, ``full`` and, when ``periodic``, ``full-lattice``
    (full FA with lattice frames). ``wrap`` turns a wrapper into a predictor (e.g. a de-normalising one);
    default: the wrapper's ``energy`` output."""
    def make(method: str, construction: str = "pca", gen: torch.Generator | None = None) -> Predictor:
        w = SymmetryWrapper(model, method, frame_dim=dim, generator=gen, frame_construction=construction).eval()
        if wrap is not None:
            return wrap(w)
        return lambda d: w(d)["energy"].reshape(-1)

    gen = torch.Generator().manual_seed(seed)
    sfa = make("sfa", gen=gen)

    def sfa_mean(d: Any) -> Tensor:
        gen.manual_seed(seed)  # the same draws at every point of the path
        return torch.stack([sfa(d).to(torch.float64) for _ in range(n_draws)]).mean(0)

    preds = {"none": make("none"), "sfa-mean": sfa_mean, "full": make("full")}
    if periodic:
        preds["full-lattice"] = make("full", "lattice")
    return preds


def continuity_sweep(predictors: Mapping[str, Predictor], data: Any, dim: int, n_points: int = 41,
                     width: float = 0.1) -> dict[str, Any]:
    """Predictions of every predictor along :func:`degenerate_path` of ``data`` and their largest jump.

    Returns ``{"t", "eigengap" (PCA, relative), "step_A" (largest atom displacement per step, Å), "crossing_index",
    "energy": {name: [E]}, "max_jump_per_A", "excess_jump", "jump_ratio": {name: float}}``, plain floats.
    ``max_jump_per_A``: the largest ``|ΔE| / step`` (E unit per Å; bounded by the slope for a continuous
    prediction, ~jump / step otherwise). ``excess_jump``: the largest ``|ΔE_k - (ΔE_k-1 + ΔE_k+1) / 2|``, the
    part of a step its neighbours do not explain (O(step^2) when smooth, the jump itself otherwise);
    ``jump_ratio``: that over the median ``|ΔE_k+1 - ΔE_k|``: a few for a smooth prediction (turning points
    included), large where one step jumps.
    """
    ts, path = degenerate_path(data, dim, n_points, width)
    gaps = []
    for d in path:
        p = d.pos.to(torch.float64)
        gaps.append(float(compute_frames(p, torch.zeros(p.shape[0], dtype=torch.long), 1, dim=dim).eigengap[0]))
    steps = [float((b.pos.to(torch.float64) - a.pos.to(torch.float64)).norm(dim=1).max())
             for a, b in zip(path[:-1], path[1:], strict=True)]
    energy: dict[str, list[float]] = {}
    with torch.no_grad():
        for name, pred in predictors.items():
            energy[name] = [float(pred(d).reshape(-1)[0]) for d in path]
    max_jump, excess, ratio = {}, {}, {}
    for name, e in energy.items():
        de = torch.tensor(e, dtype=torch.float64).diff()
        max_jump[name] = float((de.abs() / torch.tensor(steps, dtype=torch.float64)).max())
        # The part of a step its neighbours do not explain: O(h^2) for a smooth prediction, ~the jump otherwise.
        dev = (de[1:-1] - (de[:-2] + de[2:]) / 2).abs()
        second = de.diff().abs()
        excess[name] = float(dev.max())
        ratio[name] = float(dev.max() / second.median().clamp(min=1e-12))
    return {"t": ts.tolist(), "eigengap": gaps, "step_A": steps, "crossing_index": (n_points - 1) // 2,
            "energy": energy, "max_jump_per_A": max_jump, "excess_jump": excess, "jump_ratio": ratio}


def nearest_degenerate(records: Sequence[Any], dim: int) -> tuple[int, float]:
    """Index and relative gap ``(λ1 - λ2) / λ1`` of the record whose two leading PCA variances are closest
    (exact degeneracies, gap <= 1e-6, are skipped: :func:`degenerate_path` needs distinct variances)."""
    best, gap = 0, float("inf")
    for k, rec in enumerate(records):
        p = rec.pos.to(torch.float64)
        lam = compute_frames(p, torch.zeros(p.shape[0], dtype=torch.long), 1, dim=dim).eigenvalues[0]
        g = float((lam[0] - lam[1]) / lam[0])
        if 1e-6 < g < gap:
            best, gap = k, g
    return best, gap


def sweep_model(net: torch.nn.Module, normalizer: Any, records: Sequence[Any], dim: int, *, n_draws: int = 32,
                seed: int = 0, n_points: int = 41, width: float = 0.1, uncap_neighbors: bool = False
                ) -> dict[str, Any]:
    """:func:`continuity_sweep` of a trained backbone ``net`` (modified in place: energies only, neighbour cap
    lifted when ``uncap_neighbors``) through :func:`nearest_degenerate` of ``records``, energies de-normalised
    by ``normalizer`` (a ``faenet.training.Normalizer``). Returns ``{"record_index", "initial_gap", "periodic",
    "seconds" (the sweep's wall time), **continuity_sweep(...)}``."""
    from torch_geometric.data import Batch

    from faenet.symmetry_eval import DenormalizedPredictor

    # Energies only: forces are not swept, and -dE/dpos would double the cost. The energy is the same function.
    net.regress_forces = ""
    if uncap_neighbors and hasattr(net, "max_num_neighbors"):
        # The data's neighbour cap ranks equidistant periodic images (2x2 slabs), so the backbone itself jumps
        # along any strain; without it the `none` row measures the backbone, and FA rows the frames.
        net.max_num_neighbors = None
    k, gap0 = nearest_degenerate(records, dim)
    data = Batch.from_data_list([records[k]])
    periodic = bool(getattr(records[k], "pbc", torch.zeros(3)).bool().any())

    def wrap(w: SymmetryWrapper) -> Predictor:
        p = DenormalizedPredictor(w, normalizer)
        return lambda d: p(d)["energy"]

    preds = symmetry_predictors(net, dim, n_draws=n_draws, seed=seed, periodic=periodic, wrap=wrap)
    t0 = time.perf_counter()
    res = continuity_sweep(preds, data, dim, n_points=n_points, width=width)
    return {"record_index": k, "initial_gap": gap0, "periodic": periodic, "seconds": time.perf_counter() - t0,
            **res}
