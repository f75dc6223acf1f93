"""Neighbour graphs in pure torch: radius graph with periodic images (Eq. 6 graph), edge vectors,
and DimeNet++ triplets. No torch_cluster / torch_sparse: neither installs with this torch. vesin (optional)
supplies candidate pairs for periodic cells; the result is the same either way.

Conventions (see ``faenet.data.records``): ``edge_index[0]`` is the source j (neighbour),
``edge_index[1]`` the target i (centre), and ``vec_ij = pos[j] + cell_offsets @ cell - pos[i]``.
Distances are invariant under E(3) and under frame projection (Eq. 4 projects the cell with the same
frame and leaves offsets unchanged), so one graph serves every frame of a structure.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:  # optional: a cell list, O(N) instead of the dense O(N^2) test (benchmarks/neighbour_list.py)
    import vesin as _vesin

    _HAVE_VESIN = True
except ImportError:  # pragma: no cover - depends on the environment
    _HAVE_VESIN = False


def _image_ranges(cell: Tensor, pbc: Tensor, cutoff: float) -> list[int]:
    """Number of lattice images needed on each side, per direction, to see every atom within cutoff."""
    reps = []
    vol = torch.abs(torch.linalg.det(cell.double())).item()
    for k in range(3):
        if not bool(pbc[k]):
            reps.append(0)
            continue
        a, b = cell[(k + 1) % 3].double(), cell[(k + 2) % 3].double()
        area = torch.linalg.norm(torch.linalg.cross(a, b)).item()
        if vol <= 1e-12 or area <= 1e-12:
            raise ValueError(f"degenerate cell (volume {vol:.3g} Å^3) with periodic direction {k}: "
                             "give three independent lattice vectors or set pbc False there")
        spacing = vol / area  # distance between lattice planes normal to direction k
        reps.append(int(math.ceil(cutoff / spacing)))
    return reps


def radius_graph(
    pos: Tensor,
    cutoff: float,
    max_num_neighbors: int = 50,
    cell: Tensor | None = None,
    pbc: Tensor | tuple[bool, bool, bool] = (False, False, False),
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Edges j -> i of ONE structure with ``0 < |vec_ij| <= cutoff``, periodic images included.

    Each centre i keeps its ``max_num_neighbors`` nearest neighbours (ties broken by index, so the
    result is deterministic). Returns ``edge_index`` (2, E) and integer ``cell_offsets`` (E, 3),
    sorted by target then distance.

    ``backend``: "torch" tests every (image, i, j) triple (dense, O(S N^2) memory); "vesin" takes candidate
    pairs from vesin's cell list (periodic cells only) and then applies the same distance test and order to
    them, so both give the same tensors (tested); "auto" uses vesin for periodic cells when it is installed.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
    if max_num_neighbors < 1:
        raise ValueError(f"max_num_neighbors must be >= 1, got {max_num_neighbors}")
    if backend not in ("auto", "torch", "vesin"):
        raise ValueError(f"backend must be auto, torch or vesin, got {backend!r}")
    if not torch.isfinite(pos).all():
        raise ValueError("positions contain NaN or inf")
    n = pos.shape[0]
    pbc_t = torch.as_tensor(pbc, dtype=torch.bool).reshape(3)
    periodic = cell is not None and bool(pbc_t.any())
    if not periodic:
        offsets = torch.zeros(1, 3, dtype=torch.long)
        cell_m = torch.zeros(3, 3, dtype=pos.dtype)
        reps = [0, 0, 0]
    else:
        cell_m = cell.reshape(3, 3).to(pos.dtype)
        reps = _image_ranges(cell_m, pbc_t, cutoff)
        axes = [torch.arange(-r, r + 1) for r in reps]
        offsets = torch.cartesian_prod(*axes).reshape(-1, 3).long()
    shifts = offsets.to(pos.dtype) @ cell_m  # (S, 3)
    if backend == "vesin" and not periodic:
        raise ValueError("backend='vesin' needs a periodic cell; use 'torch' (or 'auto') for molecules")
    use_vesin = periodic and (backend == "vesin" or (backend == "auto" and _HAVE_VESIN))
    if use_vesin:
        s_idx, i_idx, j_idx = _vesin_candidates(pos, cell_m, pbc_t, cutoff, reps)
        vec = pos[j_idx] + shifts[s_idx] - pos[i_idx]  # the dense path's arithmetic, per candidate
        dist = torch.linalg.norm(vec, dim=-1)
        mask = (dist <= cutoff) & (dist > 1e-8)
        s_idx, i_idx, j_idx, d = s_idx[mask], i_idx[mask], j_idx[mask], dist[mask]
    else:
        # vec[s, i, j] = pos[j] + shift[s] - pos[i]
        vec = pos[None, None, :, :] + shifts[:, None, None, :] - pos[None, :, None, :]
        dist = torch.linalg.norm(vec, dim=-1)  # (S, N, N)
        mask = (dist <= cutoff) & (dist > 1e-8)
        s_idx, i_idx, j_idx = mask.nonzero(as_tuple=True)
        d = dist[s_idx, i_idx, j_idx]
    # Candidates in (image, i, j) order; two stable sorts give (i, distance, image, j): deterministic,
    # and truncation to max_num_neighbors keeps the nearest.
    order = torch.argsort(d, stable=True)
    order = order[torch.argsort(i_idx[order], stable=True)]
    s_idx, i_idx, j_idx, d = s_idx[order], i_idx[order], j_idx[order], d[order]
    # Rank of each edge within its centre's neighbour list.
    counts = torch.bincount(i_idx, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(i_idx.numel()) - starts[i_idx]
    keep = rank < max_num_neighbors
    edge_index = torch.stack([j_idx[keep], i_idx[keep]])
    return edge_index, offsets[s_idx[keep]]


def _vesin_candidates(pos: Tensor, cell: Tensor, pbc: Tensor, cutoff: float, reps: list[int]
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """``(image, i, j)`` index triples, in the dense path's (image, i, j) order, of vesin's pairs within
    ``cutoff`` plus a margin (a superset of the edges: the caller re-tests distances with torch), restricted
    to the images the dense path enumerates. ``image`` indexes ``cartesian_prod`` of ``-reps..reps``."""
    if not _HAVE_VESIN:
        raise ImportError("backend='vesin' needs the vesin package (pip install vesin); or use backend='torch'")
    nl = _vesin.NeighborList(cutoff=cutoff + 1e-3, full_list=True)  # margin >> rounding of either distance
    i, j, shift = nl.compute(pos.detach().double().cpu().numpy(), cell.detach().double().cpu().numpy(),
                             [bool(p) for p in pbc], "ijS")
    i, j, shift = torch.from_numpy(i.astype("int64")), torch.from_numpy(j.astype("int64")), \
        torch.from_numpy(shift.astype("int64"))
    r = torch.tensor(reps)
    inside = ((shift >= -r) & (shift <= r)).all(dim=1)
    i, j, shift = i[inside], j[inside], shift[inside]
    width = 2 * r + 1  # cartesian_prod order: the last axis varies fastest
    s = ((shift[:, 0] + r[0]) * width[1] + shift[:, 1] + r[1]) * width[2] + shift[:, 2] + r[2]
    n = pos.shape[0]
    order = torch.argsort((s * n + i) * n + j)
    return s[order], i[order], j[order]


def edge_vectors(pos: Tensor, edge_index: Tensor, cell_offsets: Tensor, cell: Tensor,
                 batch: Tensor) -> Tensor:
    """``vec_ij = pos[j] + cell_offsets @ cell[graph] - pos[i]`` for every edge (E, 3), in Å.

    ``cell`` is (B, 3, 3) (zeros for molecules); ``batch`` maps atoms to graphs.
    """
    j, i = edge_index
    # index_select, not pos[j]: the backward of advanced indexing (index_put_ with accumulate) uses float
    # atomics from several CPU threads on large batches (E * 3 >= 32768), so -dE/dpos would not be
    # reproducible; index_select's backward (index_add_) sums in edge order. Same values forward.
    cell_e = cell.index_select(0, batch.index_select(0, i)).to(pos.dtype)
    shift = torch.bmm(cell_offsets.to(pos.dtype).unsqueeze(1), cell_e).squeeze(1)
    return pos.index_select(0, j) + shift - pos.index_select(0, i)


def triplets(edge_index: Tensor, num_nodes: int, cell_offsets: Tensor | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Angle triplets k -> j -> i for DimeNet++ (PyG's ``DimeNet.triplets`` semantics), pure torch.

    For every edge ji (j -> i) and every edge kj (k -> j), except the reverse of ji itself
    (k == i with the opposite lattice offset), returns node indices ``idx_i, idx_j, idx_k`` and edge
    indices ``idx_kj, idx_ji``. Without ``cell_offsets`` the exclusion is PyG's ``k != i``.
    """
    src, dst = edge_index
    e = src.numel()
    # Incoming edges of each node, in CSR form ordered by target.
    order = torch.argsort(dst, stable=True)
    deg_in = torch.bincount(dst, minlength=num_nodes)
    ptr = torch.cumsum(deg_in, 0) - deg_in
    # Edge ji pairs with every edge kj whose target is j = src[ji].
    n_per = deg_in[src]
    idx_ji = torch.repeat_interleave(torch.arange(e), n_per)
    base = torch.repeat_interleave(ptr[src], n_per)
    local = torch.arange(idx_ji.numel()) - torch.repeat_interleave(torch.cumsum(n_per, 0) - n_per, n_per)
    idx_kj = order[base + local]
    idx_i, idx_j, idx_k = dst[idx_ji], src[idx_ji], src[idx_kj]
    reverse = idx_k == idx_i
    if cell_offsets is not None:
        reverse &= (cell_offsets[idx_kj] == -cell_offsets[idx_ji]).all(dim=1)
    keep = ~reverse
    return idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep]
