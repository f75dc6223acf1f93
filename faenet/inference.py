"""Fast paths of FAENet (``faenet.model``): the same arithmetic as the literal Eq. (7) / (8), organised for speed.
``faenet.model`` calls them; tests/test_model.py and tests/test_model_fast_paths.py check each against the
literal path (``pipeline/benchmark.py`` measures them).

- Per-node split of Eq. (8) (``endpoint_messages``, with autograd too): ``W [e_ij || h_j || h_i]`` is computed
  as ``W_e e_ij + (W_j h)_j + (W_i h + b)_i``; the two node terms are computed once per node and gathered per
  edge, so only ``W_e e_ij`` is a per-edge matrix product.
- Without autograd on CPU (inference), Eq. (8) (``endpoint_messages``) and the edge embedding of Eq. (7)
  (``edge_embedding_chunked``) run over cache-sized chunks of edges, in place, into buffers allocated once per
  call: a fresh tensor per chunk costs page faults whenever glibc hands freed memory back to the OS, and the
  (E, F) edge features are written in place (no temporaries for the concatenation, biases or activations).
- The Gaussian RBF without autograd (``gaussian_rbf_no_grad``) skips exp's slow path for arguments whose result
  is below the smallest normal number (set to 0; most Gaussians of an edge are that far from its distance).
- Full FA (``frame_edges``): the model graph and distances are computed once, from frame 0, for all frames.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faenet.graph import edge_vectors

# Rows x channels of one edge chunk in the inference paths (about 1 MiB in float32).
_CHUNK_ELEMENTS = 1 << 18
# Just above log(smallest normal number) of each dtype: exp below it gives a denormal or 0 (flushed to 0).
_EXP_NORMAL_FLOOR = {torch.float32: -87.0, torch.float64: -708.0}


def gaussian_rbf_no_grad(t: Tensor, coeff: float) -> Tensor:
    """``exp(coeff * t^2)`` in place on ``t`` (no autograd), with results below the smallest normal float
    (< 1.2e-38 in float32) set to 0: exp of such arguments takes a much slower path on x86."""
    t.square_().mul_(coeff)
    floor = _EXP_NORMAL_FLOOR.get(t.dtype)
    if floor is None:
        return t.exp_()
    keep = t >= floor
    return t.clamp_min_(floor).exp_().mul_(keep)


def edge_embedding_chunked(emb: nn.Module, vec: Tensor, dist: Tensor, frames: int) -> Tensor:
    """``faenet.model.EdgeEmbedding``'s literal forward, chunk by chunk of edges, written in place (no
    autograd); the RBF and its Linear once per chunk for all ``frames``."""
    n_edges, n_f = dist.shape[0], emb.num_filters
    out = vec.new_empty(frames * n_edges, n_f)
    half = n_f // 2
    step = max(1, _CHUNK_ELEMENTS // n_f)
    rows_max = min(step, max(1, n_edges))
    buf = vec.new_empty(rows_max, n_f) if emb.lin_2 is not None else None  # reused by every chunk
    rbf_buf = vec.new_empty(rows_max, n_f - half) if emb.kind == "all_rij" else None
    for s0 in range(0, n_edges, step):
        s1 = min(n_edges, s0 + step)
        d = dist[s0:s1]
        rbf_part = None
        if emb.kind == "all_rij":
            rbf_part = torch.addmm(emb.lin_rbf.bias, emb.rbf(d), emb.lin_rbf.weight.t(), out=rbf_buf[: s1 - s0])
        for f in range(frames):
            rows = slice(f * n_edges + s0, f * n_edges + s1)
            v = vec[rows]
            x = out[rows] if buf is None else buf[: s1 - s0]
            if emb.kind == "all_rij":
                torch.addmm(emb.lin_rij.bias, v, emb.lin_rij.weight.t(), out=x[:, :half])
                x[:, half:] = rbf_part
            elif emb.kind == "rij":
                torch.addmm(emb.lin.bias, v, emb.lin.weight.t(), out=x)
            else:
                sh = emb._sh(v, d)
                inp = sh if emb.kind == "sh" else torch.cat([v, sh, emb.rbf(d)], dim=-1)
                torch.addmm(emb.lin.bias, inp, emb.lin.weight.t(), out=x)
            F.silu(x, inplace=True)
            if emb.lin_2 is not None:
                y = out[rows]
                torch.addmm(emb.lin_2.bias, x, emb.lin_2.weight.t(), out=y)
                F.silu(y, inplace=True)
    return out


def endpoint_messages(lin_geom: nn.Linear, f_dim: int, h_dim: int, h: Tensor, x: Tensor, e: Tensor, src: Tensor,
                      dst: Tensor) -> Tensor:
    """``m_i = sum_j x_j * swish(W [e_ij || h_j || h_i])`` (N, out) of Eq. (8) with the per-node split; chunked
    and in place without autograd (module docstring)."""
    n = h.shape[0]
    w, b = lin_geom.weight, lin_geom.bias  # (out, F + 2H) = [W_e | W_j | W_i]
    node_j = F.linear(h, w[:, f_dim:f_dim + h_dim])
    node_i = F.linear(h, w[:, f_dim + h_dim:], b)
    w_e = w[:, :f_dim].t()
    if torch.is_grad_enabled() and (h.requires_grad or e.requires_grad or w.requires_grad):
        a = e @ w_e + node_j.index_select(0, src) + node_i.index_select(0, dst)
        return x.new_zeros(n, x.shape[1]).index_add_(0, dst, x.index_select(0, src) * F.silu(a))
    # Same arithmetic, summed in the same edge order; two chunk buffers reused by every chunk. On GPUs one
    # chunk (kernel launches are the cost there).
    m = x.new_zeros(n, x.shape[1])
    n_edges = src.numel()
    step = max(1, n_edges if e.is_cuda else _CHUNK_ELEMENTS // max(1, w.shape[0]))
    a_buf = x.new_empty(min(step, n_edges), x.shape[1])
    g_buf = torch.empty_like(a_buf)
    for s0 in range(0, n_edges, step):
        s1 = min(n_edges, s0 + step)
        sj, si = src[s0:s1], dst[s0:s1]
        a, g = a_buf[: s1 - s0], g_buf[: s1 - s0]
        torch.mm(e[s0:s1], w_e, out=a)
        a += torch.index_select(node_j, 0, sj, out=g)
        a += torch.index_select(node_i, 0, si, out=g)
        F.silu(a, inplace=True)
        a *= torch.index_select(x, 0, sj, out=g)
        m.index_add_(0, si, a)
    return m


def frame_edges(edges: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]], data, pos: Tensor, batch: Tensor,
                cell_frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Edge index, vectors and distances of the stacked batch of F frames (``pos`` (F * N, 3), frame-major).

    Distances are frame-invariant (the frames are orthogonal maps of the same graph), so frame 0 decides the
    cutoff and the neighbour limit for every frame (as each frame would: the limit sorts distances rounded to
    1e-4 Å); only the edge vectors are computed per frame. ``edges``: ``FAENet._edges``. ``dist`` is (E,),
    shared by the F frames; the edge index and vectors are (2, F * E) and (F * E, 3).
    """
    n_atoms, frames = batch.shape[0], int(cell_frames.shape[0])
    edge_index, offsets, vec0, dist = edges(data, pos[:n_atoms], batch, cell_frames[0])
    vecs = [vec0] + [edge_vectors(pos[f * n_atoms:(f + 1) * n_atoms], edge_index, offsets,
                                  cell_frames[f].reshape(-1, 3, 3), batch) for f in range(1, frames)]
    shift = torch.arange(frames, device=pos.device)
    edge_index = (edge_index[:, None, :] + (shift * n_atoms)[None, :, None]).reshape(2, -1)
    return edge_index, torch.cat(vecs), dist
