"""PCA frames for frame averaging (paper Sec. 3.2-3.3, Eq. (2)-(5), App. A), batched over graphs.

Per graph b (atoms selected by ``batch == b``):

- centroid ``t_b`` = unweighted mean of the positions and covariance
  ``C_b = 1/n sum_i (x_i - t_b)(x_i - t_b)^T`` (Eq. (2); the official code omits the 1/n, which changes
  neither eigenvectors nor relative gaps; with it, eigenvalues are variances in Å^2);
- ``C_b = U diag(λ) U^T`` with ``torch.linalg.eigh`` (in float64), columns sorted by descending λ;
- frames ``V = U diag(s)`` for every sign vector ``s`` in ``{+1,-1}^dim`` (Eq. (2)): 8 in 3D (E(3));
  4 with ``se3=True`` (``det V = +1`` only, SE(3)). In 2D (OC20 slabs, z axis fixed) PCA runs on x, y only
  and ``V`` is 3x3 with the signed 2x2 eigenvectors in its top-left block and ``V[2, 2] = 1``:
  4 frames (O(2)) or 2 (SO(2), ``se3=True``).

Projection (Eq. (3)-(4)), rows are vectors: ``pos_f = (pos - t) @ V``; the cell (rows = lattice vectors)
becomes ``cell @ V``; integer ``cell_offsets`` are unchanged, so ``vec_ij = pos_j + o @ cell - pos_i`` maps to
``vec_ij @ V`` and the same graph serves every frame. Equivariant outputs (forces) map back as
``F = F_f @ V^T`` (V is orthogonal).

2D, z not centred: ``t`` has ``t_z = 0``, as in the official code. This is harmless: the 2D frames only
rotate/reflect about z, which leaves z unchanged, so equivariance needs no z centring; and every model of
this project reads positions only through edge vectors (differences), so the origin of z never reaches it.

Frame order (deterministic, documented). The sign of each eigenvector column is first fixed so that the
third moment ``sum_i ((x_i - t) . u_k)^3`` is >= 0 (an equivariant choice, unlike ``eigh``'s arbitrary
sign). Sign vectors are then enumerated in ``itertools.product([1, -1], repeat=dim)`` order, i.e.
``(+,+,+), (+,+,-), (+,-,+), ...``; the SE(3)/SO(2) sets keep those with ``prod(s) == det(U)``, in that
order. Consequence: for a structure with distinct eigenvalues and non-zero third moments, frame ``k`` of
any rotated/reflected/translated copy gives the SAME projected positions as frame ``k`` of the original
(not only the same set); when a third moment vanishes only the labelling of the frames changes.

Problems of the official implementation fixed or surfaced here (``faenet/frame_averaging.py``):

1. No handling of degenerate spectra: with repeated eigenvalues the eigenvectors (hence the frames) are not
   determined by the structure and FA is not invariant; it only printed a warning in ``check`` mode
   (λ2/λ1 > 0.9). Here every graph gets an ``eigengap``; ``is_degenerate`` / ``count_degenerate`` flag them.
2. The frame order followed ``eigh``'s arbitrary eigenvector signs; here it is canonical (above).
3. SE(3) frames were selected with ``allclose(det, 1)`` and a fallback that could return a reflection;
   here the SE(3) set is exact by construction (always 4 in 3D, 2 in 2D).
4. ``check_constraints`` was called with dim 3 in the 2D case (print-only).
5. Frames were drawn with Python's ``random`` in a dataset transform (not reproducible from torch seeds);
   see ``faenet.symmetry`` for draws with a torch Generator.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

# Relative eigengap below which a graph is flagged as near-degenerate. Justification (Davis-Kahan): a
# perturbation of relative size δ of the covariance turns the principal axes by about δ / gap. Positions
# stored in float32 (as in training) carry δ ~ 1e-7. Measured (20-atom clouds with imposed gaps, 200 random
# rotations each, float32 storage, float64 PCA): canonical-projection error ~2e-8 / gap relative to the
# cloud size; median 2e-5 and max 1.2e-4 at gap 1e-3, max 9e-4 at 1e-4. Below 1e-3 FA therefore cannot be
# invariant to float32 precision (~1e-4 relative), and sub-mÅ displacements can swap the axes.
DEFAULT_DEGENERACY_TOL = 1e-3

# Floor for λ1 (Å^2) in the relative gap, so a single atom (all λ = 0) gets gap 0, not NaN.
_EPS = 1e-12


@dataclass(frozen=True)
class Frames:
    """Frames of B graphs.

    centroid: (B, 3) translation removed before projection (``t_z = 0`` in 2D).
    rotations: (B, F, 3, 3) orthogonal frame matrices V; columns are signed principal axes.
    eigenvalues: (B, dim) covariance eigenvalues in Å^2, descending.
    eigengap: (B,) relative eigengap, see ``eigengap``.
    signs: (B, F, dim) the sign vector of each frame relative to the canonical axes.
    """

    centroid: Tensor
    rotations: Tensor
    eigenvalues: Tensor
    eigengap: Tensor
    signs: Tensor
    dim: int
    se3: bool

    @property
    def num_frames(self) -> int:
        return self.rotations.shape[1]

    @property
    def num_graphs(self) -> int:
        return self.rotations.shape[0]


def num_frames(dim: int, se3: bool = False) -> int:
    """|F|: 8 (E(3)), 4 (SE(3)), 4 (2D, O(2) about z), 2 (2D, SO(2))."""
    _check_dim(dim)
    return 2 ** dim // (2 if se3 else 1)


def _check_dim(dim: int) -> None:
    if dim not in (2, 3):
        raise ValueError(f"frame dim must be 2 (slabs: PCA on x, y; z fixed) or 3 (molecules), got {dim!r}")


def eigengap(eigenvalues: Tensor, eps: float = _EPS) -> Tensor:
    """Relative eigengap ``min_k (λ_k - λ_{k+1}) / max(λ_1, eps)`` per graph, eigenvalues (B, dim) descending.

    In 2D this is ``(λ1 - λ2) / λ1``. 0 means an exactly repeated eigenvalue (frames undefined); a planar
    molecule (λ3 = 0 < λ2 < λ1) is NOT degenerate, a linear one (λ2 = λ3 = 0) is.
    """
    if eigenvalues.dim() != 2 or eigenvalues.shape[1] < 2:
        raise ValueError(f"eigenvalues must have shape (B, dim>=2), got {tuple(eigenvalues.shape)}")
    gaps = eigenvalues[:, :-1] - eigenvalues[:, 1:]
    return gaps.min(dim=1).values.clamp(min=0) / eigenvalues[:, 0].clamp(min=eps)


def is_degenerate(frames_or_gap: Frames | Tensor, tol: float = DEFAULT_DEGENERACY_TOL) -> Tensor:
    """(B,) bool: graphs whose relative eigengap is below ``tol`` (their frames are not well defined)."""
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    gap = frames_or_gap.eigengap if isinstance(frames_or_gap, Frames) else frames_or_gap
    return gap < tol


def _sign_table(dim: int, device: torch.device) -> Tensor:
    """All sign vectors in ``itertools.product([1, -1], repeat=dim)`` order, (2^dim, dim), float64."""
    return torch.tensor(list(itertools.product([1.0, -1.0], repeat=dim)), dtype=torch.float64, device=device)


def compute_frames(pos: Tensor, batch: Tensor, num_graphs: int, dim: int = 3, se3: bool = False,
                   differentiable: bool = False) -> Frames:
    """PCA frames of every graph (Eq. (2)); no Python loop over graphs.

    ``pos`` (N, 3), ``batch`` (N,) graph index of each atom. Frames are computed from ``pos.detach()``:
    d(frame)/d(pos) is ignored (FA treats the frame as a function of the input, not a learnable map).
    ``differentiable=True`` keeps ``pos`` in the autograd graph instead (same values): the centroid and the
    eigenvectors (``eigh``'s backward, defined for distinct eigenvalues) then carry d(frame)/d(pos), so
    ``-d/dpos`` of a frame-averaged energy is its exact gradient (``faenet.calculator``; the column signs are
    piecewise constant and carry none). Linear algebra runs in float64; outputs take ``pos.dtype``.
    """
    _check_dim(dim)
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must have shape (N, 3), got {tuple(pos.shape)}")
    if batch.shape != (pos.shape[0],):
        raise ValueError(f"batch must have shape ({pos.shape[0]},), got {tuple(batch.shape)}")
    if num_graphs < 1:
        raise ValueError(f"num_graphs must be >= 1, got {num_graphs}")
    dev = pos.device
    p = (pos if differentiable else pos.detach()).to(torch.float64)[:, :dim]
    count = torch.bincount(batch, minlength=num_graphs).clamp(min=1).to(torch.float64)
    centre = torch.zeros(num_graphs, dim, dtype=torch.float64, device=dev).index_add_(0, batch, p)
    centre = centre / count[:, None]
    d = p - centre[batch]
    cov = torch.zeros(num_graphs, dim, dim, dtype=torch.float64, device=dev)
    cov = cov.index_add_(0, batch, d[:, :, None] * d[:, None, :]) / count[:, None, None]
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    # Canonical column signs: third moment of the projection >= 0 (equivariant, see module docstring).
    proj = torch.einsum("ni,nij->nj", d, evecs[batch])
    m3 = torch.zeros(num_graphs, dim, dtype=torch.float64, device=dev).index_add_(0, batch, proj ** 3)
    evecs = evecs * torch.where(m3 >= 0, 1.0, -1.0)[:, None, :]
    return _signed_frames(evecs, evals, eigengap(evals), centre, dim, se3, pos.dtype)


def _signed_frames(axes: Tensor, evals: Tensor, gap: Tensor, centre: Tensor, dim: int, se3: bool,
                   dtype: torch.dtype) -> Frames:
    """The frame set ``{U diag(s)}`` (Eq. (2)) from canonical axes ``U`` (B, dim, dim), columns = axes."""
    num_graphs, dev = axes.shape[0], axes.device
    table = _sign_table(dim, dev)
    if se3:
        det_u = torch.linalg.det(axes).sign()
        keep = table.prod(dim=1)[None, :] * det_u[:, None] > 0  # (B, 2^dim), exactly half True per row
        idx = keep.nonzero()[:, 1].view(num_graphs, -1)
        signs = table[idx]
    else:
        signs = table.expand(num_graphs, -1, -1)
    v = axes[:, None, :, :] * signs[:, :, None, :]  # (B, F, dim, dim): column k scaled by s_k
    n_f = v.shape[1]
    rot = torch.eye(3, dtype=torch.float64, device=dev).repeat(num_graphs, n_f, 1, 1)
    rot[:, :, :dim, :dim] = v  # an in-place slice copy: autograd records it (CopySlices) when differentiable
    centroid = torch.zeros(num_graphs, 3, dtype=torch.float64, device=dev)
    centroid[:, :dim] = centre
    return Frames(centroid=centroid.to(dtype), rotations=rot.to(dtype), eigenvalues=evals.to(dtype),
                  eigengap=gap.to(dtype), signs=signs.to(dtype), dim=dim, se3=se3)


#: Frame constructions: ``pca`` (Eq. (2), the paper's), ``lattice`` and ``edges`` (wrap-invariant, for
#: periodic graphs; :func:`compute_frames_by`).
FRAME_CONSTRUCTIONS = ("pca", "lattice", "edges")


def compute_frames_by(construction: str, pos: Tensor, batch: Tensor, num_graphs: int, dim: int = 3,
                      se3: bool = False, differentiable: bool = False, *, cell: Tensor | None = None,
                      pbc: Tensor | None = None, edge_index: Tensor | None = None,
                      cell_offsets: Tensor | None = None, edge_cutoff: float = 6.0) -> Frames:
    """Frames of every graph by one of ``FRAME_CONSTRUCTIONS``; the same frame set ``{U diag(s)}`` as Eq. (2).

    Why other constructions: PCA of the stored positions changes when an atom of a periodic structure is moved
    by a lattice vector (the centroid moves by L/n, the covariance changes), although the crystal, its periodic
    graph and every edge vector are the same, so FA with PCA frames is not invariant to wrapping (Wrap-I).

    - ``pca``: :func:`compute_frames` (the paper's Eq. (2)).
    - ``lattice``: the axes are the Gram-Schmidt orthonormalisation (QR of ``M^T``, ``diag(R) > 0``) of the
      graph's lattice vectors, periodic ones first (OC20 slabs: a, b; in 2D their x, y parts, z stays the
      surface normal). A function of the cell only, so invariant to any lattice move of the atoms by
      construction, and constant in the positions (the prediction is as smooth in the positions as the model).
      E(3)-equivariant when atoms and cell rotate together (rows ``M -> M Q`` give ``U -> Q^T U``); not
      invariant to a change of the cell basis (another choice of a, b for the same lattice). Graphs with no
      periodic direction (molecules) get their PCA frames. ``eigenvalues`` are ``R_kk^2`` (Å^2) and the gap
      ``min_k R_kk^2 / R_11^2`` (0 only for a singular lattice).
    - ``edges``: PCA of the minimum-image edge vectors of the graph: ``C = sum_e w_e v_e v_e^T / sum_e w_e``,
      ``w_e = (cos(pi d_e / edge_cutoff) + 1) / 2`` inside the cutoff (so C is continuous when an edge enters
      the cutoff). Invariant to lattice moves because the periodic graph (``cell_offsets`` shifting with the
      atoms, :func:`faenet.symmetry_metrics.lattice_move`) keeps every edge vector. Edge vectors come in
      (v, -v) pairs, so their third moment vanishes; column signs use the third moment of the per-atom
      neighbour sums ``m_i = sum_j w_ij v_ij`` instead (equivariant and wrap-invariant too). Degenerate for
      lattices whose point group makes any second moment isotropic in-plane (fcc(111): 3-fold; (100): 4-fold),
      so on clean-ish OC20-like slabs it is near-degenerate: measured, see the symmetry stage.

    ``cell`` (B, 3, 3), ``pbc`` (B, 3) bool; ``edges`` also needs ``edge_index``, ``cell_offsets``. The
    centroid is the mean position for every construction: it is not wrap-invariant, but it only translates
    the projected positions, and the project's models read positions only through edge vectors.
    """
    if construction not in FRAME_CONSTRUCTIONS:
        raise ValueError(f"unknown frame construction {construction!r}; allowed: {', '.join(FRAME_CONSTRUCTIONS)}")
    pca = compute_frames(pos, batch, num_graphs, dim, se3, differentiable)
    if construction == "pca":
        return pca
    if cell is None or pbc is None:
        raise ValueError(f"frame construction {construction!r} needs the graphs' cell and pbc")
    dev = pos.device
    cell64 = cell.reshape(-1, 3, 3).to(device=dev, dtype=torch.float64)
    periodic = pbc.reshape(-1, 3).to(device=dev, dtype=torch.bool)
    if cell64.shape[0] != num_graphs or periodic.shape[0] != num_graphs:
        raise ValueError(f"cell and pbc must describe {num_graphs} graphs, got {tuple(cell.shape)}, "
                         f"{tuple(pbc.shape)}")
    has_pbc = periodic.any(dim=1)
    centre = pca.centroid.to(torch.float64)[:, :dim]
    if construction == "lattice":
        order = torch.argsort((~periodic).to(torch.int8), dim=1, stable=True)  # periodic rows first
        rows = torch.gather(cell64, 1, order[:, :, None].expand(-1, -1, 3))[:, :dim, :dim]
        eye = torch.eye(dim, dtype=torch.float64, device=dev).expand(num_graphs, -1, -1)
        rows = torch.where(has_pbc[:, None, None], rows, eye)  # molecules: any valid matrix, replaced below
        q, r = torch.linalg.qr(rows.transpose(1, 2))
        diag = torch.diagonal(r, dim1=-2, dim2=-1)
        axes = q * torch.where(diag >= 0, 1.0, -1.0)[:, None, :]
        evals = diag ** 2
        gap = evals.min(dim=1).values / evals[:, 0].clamp(min=_EPS)
    else:
        if edge_index is None or cell_offsets is None:
            raise ValueError("frame construction 'edges' needs edge_index and cell_offsets")
        from faenet.graph import edge_vectors  # local: graph.py is heavier and frames.py is imported everywhere

        p = pos if differentiable else pos.detach()
        vec = edge_vectors(p.to(torch.float64), edge_index, cell_offsets, cell64, batch)
        dist = vec.norm(dim=1)
        w = torch.where(dist < edge_cutoff, 0.5 * (torch.cos(torch.pi * dist / edge_cutoff) + 1.0), 0.0)
        v = vec[:, :dim]
        eg = batch.index_select(0, edge_index[1])
        wsum = torch.zeros(num_graphs, dtype=torch.float64, device=dev).index_add_(0, eg, w).clamp(min=_EPS)
        cov = torch.zeros(num_graphs, dim, dim, dtype=torch.float64, device=dev)
        cov = cov.index_add_(0, eg, w[:, None, None] * v[:, :, None] * v[:, None, :]) / wsum[:, None, None]
        evals, axes = torch.linalg.eigh(cov)
        evals, axes = evals.flip(-1), axes.flip(-1)
        m = torch.zeros(pos.shape[0], dim, dtype=torch.float64, device=dev).index_add_(0, edge_index[1],
                                                                                       w[:, None] * v)
        proj = torch.einsum("ni,nij->nj", m, axes[batch])
        m3 = torch.zeros(num_graphs, dim, dtype=torch.float64, device=dev).index_add_(0, batch, proj ** 3)
        axes = axes * torch.where(m3 >= 0, 1.0, -1.0)[:, None, :]
        gap = eigengap(evals)
    out = _signed_frames(axes, evals, gap, centre, dim, se3, pos.dtype)
    if bool(has_pbc.all()):
        return out
    keep = has_pbc.to(dev)  # per graph: the new construction where periodic, PCA elsewhere

    def pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(keep.reshape(-1, *([1] * (a.dim() - 1))), a, b)

    return Frames(centroid=pca.centroid, rotations=pick(out.rotations, pca.rotations),
                  eigenvalues=pick(out.eigenvalues, pca.eigenvalues), eigengap=pick(out.eigengap, pca.eigengap),
                  signs=pick(out.signs, pca.signs), dim=dim, se3=se3)


def _frame_rotations(frames: Frames, frame_index: int | Tensor) -> Tensor:
    """(B, 3, 3) rotation of each graph for an int index (same for all graphs) or a (B,) index tensor."""
    n_f, b = frames.num_frames, frames.num_graphs
    idx = torch.as_tensor(frame_index, device=frames.rotations.device).long()
    if idx.dim() == 0:
        idx = idx.expand(b)
    if idx.shape != (b,):
        raise ValueError(f"frame_index must be an int or a ({b},) tensor, got shape {tuple(idx.shape)}")
    if bool(((idx < 0) | (idx >= n_f)).any()):
        raise ValueError(f"frame_index must lie in [0, {n_f - 1}] ({n_f} frames), got {idx.tolist()}")
    return frames.rotations[torch.arange(b, device=idx.device), idx]


def project(pos: Tensor, cell: Tensor | None, batch: Tensor, frames: Frames, frame_index: int | Tensor
            ) -> tuple[Tensor, Tensor | None, Tensor]:
    """Eq. (4): ``pos_f = (pos - t) @ V``, ``cell_f = cell @ V`` with one frame per graph.

    ``frame_index`` is an int (same frame for every graph) or a (B,) long tensor. Returns
    ``(pos_f (N, 3), cell_f (B, 3, 3) or None, V (B, 3, 3))``; ``pos_f`` is differentiable w.r.t. ``pos``
    (the frame itself is a constant). Cell offsets are unchanged.
    """
    rot = _frame_rotations(frames, frame_index)
    pos_f = torch.einsum("ni,nij->nj", pos - frames.centroid[batch], rot[batch])
    cell_f = None if cell is None else torch.bmm(cell.to(rot.dtype), rot)
    return pos_f, cell_f, rot


def project_all(pos: Tensor, cell: Tensor | None, batch: Tensor, frames: Frames
                ) -> tuple[Tensor, Tensor | None]:
    """Eq. (4) for every frame at once: ``pos_f`` (F, N, 3) and ``cell_f`` (F, B, 3, 3) (or None)."""
    pos_f = torch.einsum("ni,nfij->fnj", pos - frames.centroid[batch], frames.rotations[batch])
    cell_f = None if cell is None else torch.einsum("bki,bfij->fbkj", cell.to(frames.rotations.dtype),
                                                    frames.rotations)
    return pos_f, cell_f


def rotate_back(vectors: Tensor, rotations: Tensor, batch: Tensor) -> Tensor:
    """Map per-atom equivariant vectors from frame to original coordinates: ``v @ V^T`` (Eq. (3), (5)).

    ``vectors`` (N, 3) with ``rotations`` (B, 3, 3), or (F, N, 3) with ``rotations`` (B, F, 3, 3).
    """
    if vectors.dim() == 2:
        return torch.einsum("nj,nkj->nk", vectors, rotations[batch])
    return torch.einsum("fnj,nfkj->fnk", vectors, rotations[batch])


def count_degenerate(records: Iterable, dim: int = 3, tol: float = DEFAULT_DEGENERACY_TOL,
                     chunk: int = 512) -> tuple[int, int]:
    """``(n_degenerate, n_graphs)`` over an iterable of records (anything with ``.pos`` (N, 3)).

    Frames use all atoms of each record as given (apply e.g. tag-0 removal first if the model does).
    """
    _check_dim(dim)
    n_deg = n_all = 0
    buf: list[Tensor] = []

    def flush() -> int:
        dev = buf[0].device
        sizes = torch.tensor([len(p) for p in buf], device=dev)
        batch = torch.repeat_interleave(torch.arange(len(buf), device=dev), sizes)
        fr = compute_frames(torch.cat(buf).to(torch.float64), batch, len(buf), dim=dim)
        return int(is_degenerate(fr, tol).sum())

    for rec in records:
        buf.append(rec.pos.detach().reshape(-1, 3))
        n_all += 1
        if len(buf) >= chunk:
            n_deg += flush()
            buf = []
    if buf:
        n_deg += flush()
    return n_deg, n_all
