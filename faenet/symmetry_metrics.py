"""Symmetry metrics of paper App. D (Tables 11-12): Pos, Rot-I, Refl-I, %-diff, F-Rot-E, F-Refl-E.

``symmetry_metrics(predict, batches, ...)`` runs ``predict`` (any callable returning ``{"energy": (B,),
"forces"?: (N, 3)}``, e.g. a ``faenet.symmetry.SymmetryWrapper`` in eval mode) on every batch ``x`` and on
``n_transforms`` random copies ``g x`` per batch, each graph with its own transform. Transforms act on row
vectors, ``g x = x @ Q + t`` (``faenet.symmetry.apply_transform``; the cell and a ``force`` target move too):

- rotation ``R``: Haar-uniform on SO(3) (``frame_dim=3``) or a uniform angle about z (``frame_dim=2``, OC20),
  from ``faenet.symmetry.random_rotation(reflect=False)``;
- reflection ``P = I - 2 n n^T``: a true mirror (det -1) through a plane with a uniformly random unit normal
  n, on the sphere (3D) or in the xy plane (2D, a vertical plane, so z is never flipped);
- translation ``t``: Gaussian, std ``translation_scale`` Å per component.

Definitions (units: energies in meV and forces in meV/Å when the model predicts eV and eV/Å, i.e. the default
``energy_scale=1000``; averages are over (graph, transform) pairs, forces over (atom, transform) pairs):

- Rot-I  = mean |E(x) - E(R x + t)|;   Refl-I = mean |E(x) - E(P x + t)|.
- %-diff = 100 * mean |E(x) - E(R x + t)| / |y|, in PERCENT (the official code reports the fraction; the
  paper's Table 11 column is read as percent). ``y`` is the batch's ``target_key`` field (raw target, eV).
- F-Rot-E = mean over atoms of ``|| F(x) @ R - F(R x + t) ||_2`` (the prediction on x, rotated, against the
  prediction on the rotated input); F-Refl-E likewise with P. Default L2 norm per atom (rotation-invariant);
  ``force_norm="l1"`` gives the official per-atom sum of absolute components.
- Pos: the mean per-atom distance (Å) between the canonical positions that the backbone actually receives
  for x and for g x (captured from the wrapper's inner ``model`` call). For all-frame methods (full FA) the
  two SETS of projected clouds are compared, with a symmetric Chamfer distance between frame sets
  (``0.5 * (mean_k min_l d_kl + mean_l min_k d_kl)``, d_kl = mean atom distance between frame k of x and
  frame l of g x); it is 0 iff the sets coincide. ``pos_frac`` is the fraction of (graph, transform) pairs
  whose representation differs (> ``pos_tol`` Å): the paper's binary Pos (0 for Full FA; 1 otherwise).
  ``pos`` uses rotations, ``pos_refl`` reflections (SE(3) frames are not reflection-invariant). With
  ``pos_modulo_translation=True`` each cloud is compared after removing its own per-graph centroid: the 2D
  frames of slabs leave z uncentred by design (``faenet.frames``) and every backbone here reads positions only
  through differences, so the z part of a random translation would otherwise make every 2D representation
  "differ" (by |t_z|) although no model can see it (``faenet.symmetry_eval`` sets it). Pos measures the
  INPUT representation: a plain model (no FA, DA at evaluation) sees raw coordinates and gets Pos > 0, even
  an architecturally invariant one such as SchNet, which the paper sets to 0 by convention.

Differences from the official ``faenet/eval.py`` / ocp ``test_model_symmetries`` (bugs fixed, documented):
its Pos summed the projected positions over all frames before differencing, so it was trivially 0 for full
FA whatever the frames (here sets of frames are compared); its "reflection" type 3 (diag(-1, -1, 1)) is a
180° rotation (here every reflection has det -1); F-RE-graph divided F-Rot-E by the number of graphs again
(not reported here); the 3D force metric forgot to rotate F(x) (here always rotated); rotations were Euler
angles (here Haar); metrics were in normalised model units when labels were normalised (here: whatever the
predictor returns, times ``energy_scale``; give a de-normalising predictor).

Per-graph arrays (``result["per_graph"]``) let the caller split graphs whose PCA frames are degenerate
(``faenet.frames.is_degenerate``) from the others: ``split_by_mask`` / ``result["by_degeneracy"]``.
Aggregation over seeds: ``mean_std``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from faenet.frames import DEFAULT_DEGENERACY_TOL, compute_frames, is_degenerate
from faenet.symmetry import apply_transform, random_rotation

FORCE_NORMS = ("l2", "l1")
#: Per-graph metric keys; those in ``ATOM_WEIGHTED`` are averaged with weights natoms when aggregated.
METRIC_KEYS = ("pos", "pos_refl", "pos_frac", "rot_i", "refl_i", "pct_diff", "f_rot_e", "f_refl_e")
ATOM_WEIGHTED = ("f_rot_e", "f_refl_e")


def random_reflection(n: int, dim: int = 3, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64) -> Tensor:
    """``n`` mirror reflections ``I - 2 n n^T`` (det -1) with uniformly random unit normals, (n, 3, 3).

    ``dim=3``: normal uniform on the sphere. ``dim=2``: normal uniform on the circle in the xy plane (a
    vertical mirror plane), so the z row and column are those of the identity and z is never flipped.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 (vertical mirror planes) or 3, got {dim!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    normal = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    if dim == 2:
        normal[:, 2] = 0.0
    normal = normal / normal.norm(dim=1, keepdim=True).clamp(min=1e-300)
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    return (eye - 2 * normal[:, :, None] * normal[:, None, :]).to(dtype)


def draw_transforms(num_graphs: int, frame_dim: int, generator: torch.Generator | None = None,
                    translation_scale: float = 5.0, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """One draw per graph: ``{"rot": (B,3,3), "rot_t": (B,3), "refl": (B,3,3), "refl_t": (B,3)}``.

    The exact draws ``symmetry_metrics`` makes, in this order, for each batch and transform index.
    """
    if frame_dim not in (2, 3):
        raise ValueError(f"frame_dim must be 2 (rotations about z) or 3, got {frame_dim!r}")
    if translation_scale < 0:
        raise ValueError(f"translation_scale must be >= 0 Å, got {translation_scale}")
    rot = random_rotation(num_graphs, frame_dim, reflect=False, generator=generator, dtype=torch.float64)
    rot_t = torch.randn(num_graphs, 3, generator=generator, dtype=torch.float64) * translation_scale
    refl = random_reflection(num_graphs, frame_dim, generator)
    refl_t = torch.randn(num_graphs, 3, generator=generator, dtype=torch.float64) * translation_scale
    return {k: v.to(dtype) for k, v in dict(rot=rot, rot_t=rot_t, refl=refl, refl_t=refl_t).items()}


class _InputCapture:
    """Records the positions the backbone receives: a forward pre-hook on ``module``."""

    def __init__(self) -> None:
        self.calls: list[Tensor] = []

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if args and hasattr(args[0], "pos"):
            self.calls.append(args[0].pos.detach().clone())

    def take(self, n_atoms: int) -> Tensor:
        """(F, N, 3) canonical positions of the last predict call (frame-major, as stacked by full FA)."""
        if not self.calls:
            raise RuntimeError("predict did not call its backbone; cannot compute Pos")
        pos = torch.cat(self.calls)
        self.calls = []
        if pos.shape[0] % n_atoms:
            raise RuntimeError(f"backbone saw {pos.shape[0]} atoms, not a multiple of the batch's {n_atoms}")
        return pos.reshape(-1, n_atoms, 3)


@contextlib.contextmanager
def _capture(predict: Callable) -> Iterator[_InputCapture | None]:
    """Hook the inner model of a wrapper (``predict.model``), or the predictor itself if it is a module."""
    target = getattr(predict, "model", None)
    if not isinstance(target, nn.Module):
        target = predict if isinstance(predict, nn.Module) else None
    if target is None:
        yield None
        return
    cap = _InputCapture()
    handle = target.register_forward_pre_hook(cap)
    # Full FA hands a model with ``forward_frames`` (FAENet) the projected frames directly, bypassing
    # ``__call__`` and its hooks: record those positions too (frame-major, as a stacked batch would be).
    frames_fn = getattr(target, "forward_frames", None)
    if frames_fn is not None:
        def recording(data, pos_frames, cell_frames, _fn=frames_fn):
            cap.calls.append(pos_frames.detach().reshape(-1, 3).clone())
            return _fn(data, pos_frames, cell_frames)
        target.forward_frames = recording
    try:
        yield cap
    finally:
        handle.remove()
        if frames_fn is not None:
            del target.forward_frames  # the class's method again


def _per_graph_mean(values: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Mean over each graph's rows of ``values`` (..., N) -> (..., B)."""
    count = torch.bincount(batch, minlength=num_graphs).clamp(min=1).to(values.dtype)
    out = torch.zeros(*values.shape[:-1], num_graphs, dtype=values.dtype)
    return out.index_add_(-1, batch, values) / count


def _centered(c: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Frame stack (F, N, 3) with each graph's centroid (per frame) removed, float64."""
    c = c.to(torch.float64)
    mean = _per_graph_mean(c.transpose(1, 2), batch, num_graphs)  # (F, 3, B)
    return c - mean.transpose(1, 2)[:, batch]


def _set_distance(c0: Tensor, c1: Tensor, batch: Tensor, num_graphs: int, center: bool = False) -> Tensor:
    """Per graph symmetric Chamfer distance between frame sets c0 (F0, N, 3) and c1 (F1, N, 3), Å.

    ``center``: compare the clouds after removing each graph's centroid (distance modulo translation).
    """
    if center:
        c0, c1 = _centered(c0, batch, num_graphs), _centered(c1, batch, num_graphs)
    d = (c0[:, None] - c1[None, :]).norm(dim=-1)  # (F0, F1, N)
    d = _per_graph_mean(d.to(torch.float64), batch, num_graphs)  # (F0, F1, B)
    return 0.5 * (d.min(dim=1).values.mean(0) + d.min(dim=0).values.mean(0))


def _batch_vector(data) -> Tensor:
    b = getattr(data, "batch", None)
    return b if b is not None else torch.zeros(data.pos.shape[0], dtype=torch.long, device=data.pos.device)


def _num_graphs(data, batch: Tensor) -> int:
    n = getattr(data, "num_graphs", None)
    return int(n) if n is not None else int(batch.max()) + 1


def _force_error(f_ref: Tensor, f_new: Tensor, q: Tensor, batch: Tensor, norm: str) -> Tensor:
    """Per atom ``|| F(x) @ Q - F(g x) ||`` (N,), float64."""
    rotated = torch.einsum("ni,nij->nj", f_ref.to(torch.float64), q.to(torch.float64)[batch])
    diff = rotated - f_new.to(torch.float64)
    return diff.norm(dim=1) if norm == "l2" else diff.abs().sum(dim=1)


def symmetry_metrics(predict: Callable, batches: Iterable, *, n_transforms: int, frame_dim: int,
                     generator: torch.Generator | None = None,
                     degenerate_mask_fn: Callable[[object], Tensor] | None = None,
                     translation_scale: float = 5.0, energy_scale: float = 1000.0, force_norm: str = "l2",
                     target_key: str = "y", capture_positions: bool = True, pos_tol: float = 1e-4,
                     pos_modulo_translation: bool = False) -> dict:
    """App. D metrics of ``predict`` over ``batches`` (module docstring for definitions and units).

    ``generator`` drives the transforms only (the predictor's own draws, e.g. SFA frames, use its own RNG).
    ``degenerate_mask_fn(batch) -> (B,) bool`` flags graphs with ill-defined frames (e.g.
    ``frame_degeneracy_mask(frame_dim)``); then ``result["by_degeneracy"]`` holds the split summaries.
    ``capture_positions``: compute Pos from the positions the backbone receives (hooking ``predict.model``
    for a wrapper, else ``predict`` itself if it is a module); Pos keys are absent when impossible.
    ``pos_modulo_translation``: Pos compares centred clouds (module docstring); False compares them as given.
    Gradients are allowed (``from_energy`` forces need them); outputs are detached.

    Returns ``{metric: float, ..., "per_graph": {metric: (G,) float64, "natoms": (G,), "degenerate": (G,)},
    "by_degeneracy": {...} (if a mask function was given), "n_graphs": G, "n_transforms": n_transforms,
    "units": {...}}``.
    """
    if n_transforms < 1:
        raise ValueError(f"n_transforms must be >= 1, got {n_transforms}")
    if frame_dim not in (2, 3):
        raise ValueError(f"frame_dim must be 2 (rotations about z, OC20) or 3, got {frame_dim!r}")
    if force_norm not in FORCE_NORMS:
        raise ValueError(f"force_norm must be one of {FORCE_NORMS}, got {force_norm!r}")
    per: dict[str, list[Tensor]] = {k: [] for k in (*METRIC_KEYS, "natoms", "degenerate")}
    with _capture(predict) if capture_positions else contextlib.nullcontext() as cap:
        for data in batches:
            batch = _batch_vector(data)
            n_atoms = data.pos.shape[0]
            b = _num_graphs(data, batch)
            batch_cpu = batch.cpu()
            out0 = predict(data)
            e0 = out0["energy"].detach().reshape(-1).to(torch.float64).cpu()
            f0 = out0["forces"].detach().cpu() if "forces" in out0 else None
            c0 = cap.take(n_atoms).cpu() if cap is not None else None
            y = getattr(data, target_key, None)
            y = torch.as_tensor(y).reshape(-1).to(torch.float64).cpu() if y is not None else None
            acc = {k: torch.zeros(b, dtype=torch.float64) for k in METRIC_KEYS}
            for _ in range(n_transforms):
                tr = draw_transforms(b, frame_dim, generator, translation_scale)
                for kind in ("rot", "refl"):
                    q = tr[kind]
                    moved = apply_transform(data, q.to(device=data.pos.device, dtype=data.pos.dtype),
                                            tr[kind + "_t"].to(device=data.pos.device, dtype=data.pos.dtype))
                    out = predict(moved)
                    de = (e0 - out["energy"].detach().reshape(-1).to(torch.float64).cpu()).abs()
                    acc["rot_i" if kind == "rot" else "refl_i"] += de * energy_scale
                    if kind == "rot" and y is not None:
                        acc["pct_diff"] += 100.0 * de / y.abs()
                    if f0 is not None and "forces" in out:
                        err = _force_error(f0, out["forces"].detach().cpu(), q, batch_cpu, force_norm)
                        acc["f_rot_e" if kind == "rot" else "f_refl_e"] += _per_graph_mean(
                            err * energy_scale, batch_cpu, b)
                    if cap is not None:
                        dist = _set_distance(c0, cap.take(n_atoms).cpu(), batch_cpu, b, pos_modulo_translation)
                        acc["pos" if kind == "rot" else "pos_refl"] += dist
                        if kind == "rot":
                            acc["pos_frac"] += (dist > pos_tol).to(torch.float64)
            avail = {"rot_i", "refl_i"}
            if y is not None:
                avail.add("pct_diff")
            if f0 is not None:
                avail |= {"f_rot_e", "f_refl_e"}
            if cap is not None:
                avail |= {"pos", "pos_refl", "pos_frac"}
            for k in METRIC_KEYS:
                per[k].append(acc[k] / n_transforms if k in avail else torch.full((b,), math.nan,
                                                                                   dtype=torch.float64))
            per["natoms"].append(torch.bincount(batch_cpu, minlength=b))
            mask = (torch.as_tensor(degenerate_mask_fn(data)).reshape(-1).bool().cpu()
                    if degenerate_mask_fn is not None else torch.zeros(b, dtype=torch.bool))
            if mask.shape != (b,):
                raise ValueError(f"degenerate_mask_fn returned shape {tuple(mask.shape)}, expected ({b},)")
            per["degenerate"].append(mask)
    if not per["natoms"]:
        raise ValueError("batches is empty")
    per_graph = {k: torch.cat(v) for k, v in per.items()}
    # A metric is reported only if every batch could compute it (NaN columns are dropped).
    per_graph = {k: v for k, v in per_graph.items() if k not in METRIC_KEYS or not bool(torch.isnan(v).all())}
    result: dict = dict(summarize(per_graph))
    result["per_graph"] = per_graph
    if degenerate_mask_fn is not None:
        result["by_degeneracy"] = split_by_mask(per_graph, per_graph["degenerate"])
    result["n_graphs"] = int(per_graph["natoms"].numel())
    result["n_transforms"] = n_transforms
    unit_e = "meV" if energy_scale == 1000.0 else f"x{energy_scale} model units"
    result["units"] = {"rot_i": unit_e, "refl_i": unit_e, "pct_diff": "%", "f_rot_e": f"{unit_e}/Å",
                       "f_refl_e": f"{unit_e}/Å", "pos": "Å", "pos_refl": "Å", "pos_frac": "fraction"}
    return result


def summarize(per_graph: Mapping[str, Tensor], mask: Tensor | None = None) -> dict[str, float]:
    """Aggregate per-graph metrics over the graphs selected by ``mask`` (all if None).

    Energy and Pos metrics: mean over graphs. Force metrics: mean over atoms (graphs weighted by natoms).
    Empty selections give NaN.
    """
    natoms = per_graph["natoms"].to(torch.float64)
    sel = torch.ones_like(natoms, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
    if sel.shape != natoms.shape:
        raise ValueError(f"mask must have shape {tuple(natoms.shape)}, got {tuple(sel.shape)}")
    out = {}
    for k in METRIC_KEYS:
        if k not in per_graph:
            continue
        v = per_graph[k][sel]
        if v.numel() == 0:
            out[k] = math.nan
        elif k in ATOM_WEIGHTED:
            w = natoms[sel]
            out[k] = float((v * w).sum() / w.sum())
        else:
            out[k] = float(v.mean())
    out["n_graphs"] = int(sel.sum())
    return out


def split_by_mask(per_graph: Mapping[str, Tensor], mask: Tensor) -> dict[str, dict[str, float]]:
    """``{"all": ..., "degenerate": ..., "non_degenerate": ...}`` summaries for a (G,) bool mask."""
    m = torch.as_tensor(mask).bool()
    return {"all": summarize(per_graph), "degenerate": summarize(per_graph, m),
            "non_degenerate": summarize(per_graph, ~m)}


def frame_degeneracy_mask(frame_dim: int, tol: float = DEFAULT_DEGENERACY_TOL) -> Callable[[object], Tensor]:
    """A ``degenerate_mask_fn`` flagging graphs whose PCA frames are degenerate (``faenet.frames``)."""
    def fn(data) -> Tensor:
        batch = _batch_vector(data)
        return is_degenerate(compute_frames(data.pos, batch, _num_graphs(data, batch), frame_dim), tol)
    return fn


def mean_std(runs: Sequence[Mapping[str, float]], ddof: int = 0) -> dict[str, tuple[float, float]]:
    """Mean and std (``ddof`` 0: population, as the dojo; 1: sample) of every numeric key over runs/seeds.

    Keys missing from some run are aggregated over the runs that have them; non-numeric values are skipped.
    """
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof}")
    keys: list[str] = []
    for r in runs:
        keys += [k for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)
                 and k not in keys]
    out = {}
    for k in keys:
        vals = torch.tensor([float(r[k]) for r in runs if k in r], dtype=torch.float64)
        std = float(vals.std(correction=ddof)) if vals.numel() > ddof else math.nan
        out[k] = (float(vals.mean()), std)
    return out


# ----------------------------------------------------------------------------------------------------------
# Wrap-I: periodic-image invariance (beyond the paper)
# ----------------------------------------------------------------------------------------------------------

def lattice_move(data, shifts: Tensor):
    """A copy of ``data`` with atom a moved by the lattice vector ``shifts[a] @ cell`` (integer (N, 3)) and
    ``cell_offsets`` changed by ``-shifts[j] + shifts[i]``, so every edge vector (hence the crystal) is the same:
    another description of the identical periodic structure. The input is not modified."""
    batch = _batch_vector(data)
    shifts = shifts.to(device=data.pos.device, dtype=torch.long)
    if shifts.shape != data.pos.shape:
        raise ValueError(f"shifts must have shape {tuple(data.pos.shape)}, got {tuple(shifts.shape)}")
    cell = data.cell.reshape(-1, 3, 3).to(data.pos.dtype)
    out = data.clone()
    out.pos = data.pos + torch.einsum("ni,nij->nj", shifts.to(data.pos.dtype), cell[batch])
    j, i = data.edge_index
    out.cell_offsets = data.cell_offsets - shifts[j] + shifts[i]
    return out


def wrap_moves(data, generator: torch.Generator | None = None, max_offset: int = 2
               ) -> tuple[object, object]:
    """Two descriptions of each periodic structure of ``data``: (a) random integer offsets in
    ``[-max_offset, max_offset]`` per atom along its graph's periodic directions; (b) a uniform random
    translation within the cell along the periodic directions, then every atom wrapped back into the cell."""
    batch = _batch_vector(data)
    n_g = _num_graphs(data, batch)
    pbc = data.pbc.reshape(n_g, 3).to(torch.bool)[batch]
    gdev = generator.device if generator is not None else torch.device("cpu")
    rand = torch.randint(-max_offset, max_offset + 1, tuple(data.pos.shape), generator=generator, device=gdev)
    offsets = lattice_move(data, torch.where(pbc, rand.to(pbc.device), 0))
    cell = data.cell.reshape(-1, 3, 3).to(torch.float64)
    frac_t = torch.rand(n_g, 3, generator=generator, device=gdev, dtype=torch.float64).to(cell.device)
    frac_t = torch.where(data.pbc.reshape(n_g, 3).to(torch.bool), frac_t, 0.0)
    t = torch.einsum("bi,bij->bj", frac_t, cell)  # in the periodic directions only
    moved = data.clone()
    moved.pos = (data.pos.to(torch.float64) + t[batch]).to(data.pos.dtype)
    frac = torch.linalg.solve(cell[batch].transpose(1, 2), moved.pos.to(torch.float64).unsqueeze(-1)).squeeze(-1)
    wrap = torch.where(pbc, -torch.floor(frac), 0.0).long()
    return offsets, lattice_move(moved, wrap)


@torch.no_grad()
def wrap_invariance(predict: Callable, batches: Iterable, *, n_transforms: int,
                    generator: torch.Generator | None = None, max_offset: int = 2,
                    energy_scale: float = 1000.0) -> dict[str, float]:
    """Wrap-I (meV with ``energy_scale=1000``): mean |E(x) - E(x')| over graphs and ``n_transforms`` draws,
    for x' = x with atoms moved by random lattice vectors (``wrap_i_offsets``) and x translated in the cell
    plane then wrapped (``wrap_i_translate``) (:func:`wrap_moves`). Exactly 0 for a model that reads positions
    only through edge vectors; PCA frames of the stored positions change under both moves, so FA need not be."""
    sums = {"wrap_i_offsets": 0.0, "wrap_i_translate": 0.0}
    count = 0
    for data in batches:
        e0 = predict(data)["energy"].reshape(-1).to(torch.float64)
        for _ in range(n_transforms):
            a, b = wrap_moves(data, generator, max_offset)
            sums["wrap_i_offsets"] += float((predict(a)["energy"].reshape(-1) - e0).abs().sum())
            sums["wrap_i_translate"] += float((predict(b)["energy"].reshape(-1) - e0).abs().sum())
            count += e0.numel()
    if not count:
        raise ValueError("no graphs to evaluate")
    return {k: v * energy_scale / count for k, v in sums.items()}
