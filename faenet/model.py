"""FAENet (Duval et al., ICML 2023; Sec. 4, Fig. 1, App. B) in one file.

Pipeline of a forward pass (``FAENet.forward``):

1. Edge vectors ``r_ij = pos[j] + offsets @ cell - pos[i]`` in the (frame) coordinates of the batch
   (``faenet.graph.edge_vectors``); edges longer than the model ``cutoff`` are dropped and, if
   ``max_num_neighbors`` is set, each atom keeps its nearest ones (Eq. (6) graph).
2. Embedding block: atom lookups (``faenet.embedding``, App. B.1) -> Linear + swish (+ a second
   Linear + swish if ``second_layer_MLP``); edge embedding of Eq. (7)
   ``e_ij = swish([Linear(r_ij) || Linear(RBF(|r_ij|))])`` (+ second layer).
3. ``num_interactions`` interaction blocks, Eq. (8), with residual ``h <- h + block(h)``:
   ``f_ij = swish(W [e_ij || h_j || h_i])``, messages ``h_j * f_ij`` summed at i, GraphNorm (per graph),
   swish, Linear + swish (+ ``complex_mp`` Linear + swish).
4. Output block: ``y_i = Linear(swish(Linear(h_i)))``, energy head, skip ("jumping") connections.
5. Forces: a direct decoder on the final atom states, or ``-dE/dpos``.

Fixes relative to the official package (``faenet`` 0.1.3), all deliberate:
- GraphNorm is called WITH the batch vector, so its statistics are per graph. The official code omits it,
  which normalises over the whole mini-batch and makes a graph's prediction depend on its batch mates.
- Period/group embeddings sized for the whole periodic table, tags -1 (molecules) supported, Z-embedding
  covers Z = 1..100 (see ``faenet.embedding``).
- ``skip_co=True`` (silently ignored by the official code) is rejected.

Speed: Eq. (8) is computed with a per-node split of ``W [e_ij || h_j || h_i]`` (``fused=True``, default;
``fused=False`` runs the literal concatenation; same parameters, equal to rounding, tested), and without
autograd on CPU the edge embedding and Eq. (8) run chunked and in place; Full FA (``forward_frames``) computes
the model graph, distances, RBF and atom embedding once for all frames. Those paths live in
``faenet.inference``; this file holds the literal equations, the heads and the switches.

Other choices: every Linear of the embedding, interaction and output blocks is xavier-uniform with zero
bias (the official code leaves a few at PyTorch's default); force decoders keep PyTorch's default init.
Spherical harmonics (Table 6 "sh"/"all") use degrees 1..3 by default, as the official ablation code.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.conv import TransformerConv
from torch_geometric.nn.norm import GraphNorm

from faenet.embedding import MAX_ATOMIC_NUMBER, AtomEmbedding
from faenet.graph import edge_vectors
from faenet.inference import edge_embedding_chunked, endpoint_messages, frame_edges, gaussian_rbf_no_grad

MP_TYPES = ("base", "updownscale_base", "updownscale", "updown_local_env", "simple", "edge_filter",
            "attention")
EDGE_EMBED_TYPES = ("all_rij", "rij", "sh", "all")
ENERGY_HEADS = ("", "weighted-av-final-embeds", "weighted-av-initial-embeds")
SKIP_CO = ("", "concat", "add", "concat_atom")
REGRESS_FORCES = ("", "direct", "direct_with_gradient_target", "from_energy")
FORCE_DECODER_TYPES = ("mlp", "simple", "res", "res_updown")
FORCE_DECODER_NORMS = ("batch1d", "layer", "")

# Table 6 (App. B.3) rows -> arguments. The paper's MP names differ from the code's:
#   "Simple MP" (filter from e_ij only, f_ij = swish(W e_ij))          -> mp_type="edge_filter"
#   "Basic MP"  (edge embedding not transformed, m_i = sum_j h_j * e_ij) -> mp_type="simple" (package name)
#   "Updownscale MP" (down/up-projection of h around Eq. (8))           -> mp_type="updownscale_base"
#   "Attention mecha"                                                    -> mp_type="attention"
#   "No complex MP"                                                      -> complex_mp=False
TABLE6_ABLATIONS: dict[str, dict] = {
    "FAENet (baseline)": {},
    "Only r_ij": {"edge_embed_type": "rij"},
    "Only Spherical Harmonics": {"edge_embed_type": "sh"},
    "All": {"edge_embed_type": "all"},
    "1 layer in MLP": {"second_layer_MLP": False},
    "Simple MP": {"mp_type": "edge_filter"},
    "Basic MP": {"mp_type": "simple"},
    "Updownscale MP": {"mp_type": "updownscale_base"},
    "Attention mecha": {"mp_type": "attention"},
    "No complex MP": {"complex_mp": False},
    "Simple Energy Head": {"energy_head": ""},
    "No Jumping Connections": {"skip_co": ""},
}


def table6_hparams(base: dict, row: str) -> dict:
    """FAENet arguments of Table 6 row ``row``: ``base`` (the baseline configuration) plus the row's switches.

    "Basic MP" multiplies ``h_j`` by ``e_ij`` directly, so it needs ``num_filters == hidden_channels``; as the
    official code (which overrides ``num_filters`` for ``mp_type="simple"``), ``num_filters`` is set to
    ``hidden_channels`` for that row.
    """
    if row not in TABLE6_ABLATIONS:
        raise ValueError(f"unknown Table 6 row {row!r}; rows: {list(TABLE6_ABLATIONS)}")
    out = {**base, **TABLE6_ABLATIONS[row]}
    if out.get("mp_type") == "simple":
        out["num_filters"] = out.get("hidden_channels", 128)
    return out


def _check_choice(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {list(allowed)}")


def _xavier(layer: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _scatter_sum(src: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum rows of ``src`` into ``size`` bins (messages j -> i summed at i)."""
    return src.new_zeros(size, src.shape[1]).index_add_(0, index, src)


# ----------------------------------------------------------------------------------------------------
# Edge features
# ----------------------------------------------------------------------------------------------------

class GaussianRBF(nn.Module):
    """``exp(-(d - mu_k)^2 / (2 delta^2))`` with ``num_gaussians`` centres ``mu_k`` evenly on [0, cutoff]
    and ``delta`` their spacing (Eq. (7) RBF)."""

    def __init__(self, cutoff: float, num_gaussians: int) -> None:
        super().__init__()
        if num_gaussians < 2:
            raise ValueError(f"num_gaussians must be >= 2, got {num_gaussians}")
        offsets = torch.linspace(0.0, cutoff, num_gaussians)
        self.coeff = -0.5 / float(offsets[1] - offsets[0]) ** 2
        self.register_buffer("offsets", offsets)

    def forward(self, dist: Tensor) -> Tensor:
        t = dist.unsqueeze(-1) - self.offsets
        if torch.is_grad_enabled() and dist.requires_grad:
            return torch.exp(self.coeff * t ** 2)
        return gaussian_rbf_no_grad(t, self.coeff)  # same values, in place, exp's slow path skipped


def real_spherical_harmonics(unit: Tensor, lmax: int) -> Tensor:
    """Real spherical harmonics of degrees l = 1..lmax (lmax <= 3) of unit vectors, (E, lmax(lmax+2)).

    "Component" normalisation: for each l the 2l+1 components squared sum to 2l+1. The constant l = 0 term
    is left out, as in the official ablation code (which used e3nn, l = 1, 2, 3).
    """
    if lmax not in (1, 2, 3):
        raise ValueError(f"sh_lmax must be 1, 2 or 3, got {lmax}")
    x, y, z = unit.unbind(-1)
    out = [math.sqrt(3.0) * x, math.sqrt(3.0) * y, math.sqrt(3.0) * z]
    if lmax >= 2:
        s15 = math.sqrt(15.0)
        out += [s15 * x * y, s15 * y * z, math.sqrt(5.0) / 2 * (3 * z * z - 1), s15 * x * z,
                s15 / 2 * (x * x - y * y)]
    if lmax >= 3:
        a, b = math.sqrt(35.0 / 8.0), math.sqrt(21.0 / 8.0)
        out += [a * y * (3 * x * x - y * y), math.sqrt(105.0) * x * y * z, b * y * (5 * z * z - 1),
                math.sqrt(7.0) / 2 * z * (5 * z * z - 3), b * x * (5 * z * z - 1),
                math.sqrt(105.0) / 2 * z * (x * x - y * y), a * x * (x * x - 3 * y * y)]
    return torch.stack(out, dim=-1)


class EdgeEmbedding(nn.Module):
    """Eq. (7): ``e_ij = swish([Linear(r_ij) || Linear(RBF(d_ij))])``, (+ ``swish(Linear(e))``).

    ``edge_embed_type`` (Table 6): "all_rij" (default, r_ij and RBF, F//2 + F - F//2 channels), "rij"
    (r_ij only), "sh" (spherical harmonics of r_ij / d_ij only), "all" (one Linear on [r_ij || SH || RBF]).
    ``r_ij`` is the raw vector in frame coordinates (Å), not normalised.

    ``forward(vec, dist, frames)``: ``vec`` holds ``frames`` stacked copies (frame-major) of the edge
    vectors of one edge list and ``dist`` (E,) their lengths, shared by every frame (Full FA: distances are
    frame-invariant), so the RBF and its Linear are computed once for all frames. Without autograd on CPU
    the same arithmetic runs chunked and in place (``faenet.inference.edge_embedding_chunked``).
    """

    def __init__(self, num_filters: int, num_gaussians: int, cutoff: float, edge_embed_type: str,
                 second_layer: bool, sh_lmax: int) -> None:
        super().__init__()
        _check_choice("edge_embed_type", edge_embed_type, EDGE_EMBED_TYPES)
        if sh_lmax not in (1, 2, 3):
            raise ValueError(f"sh_lmax must be 1, 2 or 3, got {sh_lmax}")
        self.kind, self.sh_lmax, self.num_filters = edge_embed_type, sh_lmax, num_filters
        n_sh = sh_lmax * (sh_lmax + 2)
        self.rbf = GaussianRBF(cutoff, num_gaussians) if edge_embed_type in ("all_rij", "all") else None
        if edge_embed_type == "all_rij":
            self.lin_rij = _xavier(nn.Linear(3, num_filters // 2))
            self.lin_rbf = _xavier(nn.Linear(num_gaussians, num_filters - num_filters // 2))
        else:
            n_in = {"rij": 3, "sh": n_sh, "all": 3 + n_sh + num_gaussians}[edge_embed_type]
            self.lin = _xavier(nn.Linear(n_in, num_filters))
        self.lin_2 = _xavier(nn.Linear(num_filters, num_filters)) if second_layer else None

    def _sh(self, vec: Tensor, dist: Tensor) -> Tensor:
        return real_spherical_harmonics(vec / dist.clamp_min(1e-9).unsqueeze(-1), self.sh_lmax)

    def forward(self, vec: Tensor, dist: Tensor, frames: int = 1) -> Tensor:
        n_edges = dist.shape[0]
        if vec.shape[0] != frames * n_edges:
            raise ValueError(f"vec has {vec.shape[0]} rows, expected frames * len(dist) = {frames} * {n_edges}")
        if not vec.is_cuda and not (torch.is_grad_enabled() and (
                vec.requires_grad or dist.requires_grad or any(p.requires_grad for p in self.parameters()))):
            return edge_embedding_chunked(self, vec, dist, frames)  # faenet.inference
        if self.kind == "all_rij":
            rbf_part = self.lin_rbf(self.rbf(dist))  # frame-invariant: once for all frames
            e = torch.cat([self.lin_rij(vec), rbf_part.repeat(frames, 1) if frames > 1 else rbf_part], dim=-1)
        elif self.kind == "rij":
            e = self.lin(vec)
        else:
            d_all = dist.repeat(frames) if frames > 1 else dist
            sh = self._sh(vec, d_all)
            e = self.lin(sh if self.kind == "sh" else torch.cat([vec, sh, self.rbf(d_all)], dim=-1))
        e = F.silu(e)
        if self.lin_2 is not None:
            e = F.silu(self.lin_2(e))
        return e



# ----------------------------------------------------------------------------------------------------
# Interaction block, Eq. (8)
# ----------------------------------------------------------------------------------------------------

class InteractionBlock(nn.Module):
    """One message-passing block (Eq. (8)); returns the update added to h by the residual in FAENet.

    With H = hidden_channels, F = num_filters, j = source, i = target, ``GN`` = per-graph GraphNorm:

    - "base" (Eq. (8)): ``f_ij = swish(W_geom [e_ij || h_j || h_i])`` (F+2H -> H), ``m_i = sum_j h_j * f_ij``,
      ``m = swish(GN(m))``, ``out = swish(W_h m)``.
    - "updownscale_base": as "base" with F-wide filters applied to ``x = swish(W_down h)`` (H -> F), then
      ``swish(GN(m))`` and ``out = swish(W_up m)`` (F -> H).
    - "updownscale": ``f_ij = swish(W_geom e_ij)`` (F -> F), then as "updownscale_base".
    - "updown_local_env": ``x = swish(W_down h)``, ``chi_i = sum_j e_ij``,
      ``m_i = sum_j x_j * (W_geom e_ij)``,
      ``swish(GN(m))``, ``out = W_up [m || chi]`` (2F -> H, no activation), as the official code.
    - "simple" (the paper's "Basic MP"): ``m_i = sum_j h_j * e_ij`` (needs F = H), ``swish(GN(m))``,
      ``out = swish(W_h m)``.
    - "edge_filter" (the paper's "Simple MP"): ``f_ij = swish(W_geom e_ij)`` (F -> H), then as "base".
    - "attention" (the paper's "Attention mecha"): ``m = TransformerConv(h, e)``, i.e. messages
      ``a_ij (W_v h_j + W_e e_ij)`` with ``a_ij = softmax_j((W_q h_i) . (W_k h_j + W_e e_ij) / sqrt(H))``,
      learnt from neighbour, node and edge features (as the ocp-era code, PyG ``TransformerConv``,
      ``root_weight=False``), then ``swish(GN(m))``, ``out = swish(W_h m)``.

    ``complex_mp`` appends ``out = swish(W_o out)`` (H -> H). ``graph_norm=False`` skips ``swish(GN(.))``.
    """

    def __init__(self, hidden_channels: int, num_filters: int, mp_type: str, graph_norm: bool,
                 complex_mp: bool, att_heads: int = 1) -> None:
        super().__init__()
        _check_choice("mp_type", mp_type, MP_TYPES)
        h_dim, f_dim = hidden_channels, num_filters
        if mp_type == "simple" and f_dim != h_dim:
            raise ValueError(f"mp_type='simple' multiplies h_j by e_ij, so num_filters ({f_dim}) must equal "
                             f"hidden_channels ({h_dim})")
        self.mp_type, self.h_dim, self.f_dim = mp_type, h_dim, f_dim
        updown = mp_type.startswith("updown")
        if mp_type in ("base", "updownscale_base"):
            self.lin_geom = _xavier(nn.Linear(f_dim + 2 * h_dim, f_dim if updown else h_dim))
        elif mp_type in ("updownscale", "updown_local_env"):
            self.lin_geom = _xavier(nn.Linear(f_dim, f_dim))
        elif mp_type == "edge_filter":
            self.lin_geom = _xavier(nn.Linear(f_dim, h_dim))
        elif mp_type == "attention":
            self.attention = TransformerConv(h_dim, h_dim, heads=att_heads, concat=False, root_weight=False,
                                             edge_dim=f_dim)
        if updown:
            self.lin_down = _xavier(nn.Linear(h_dim, f_dim))
            self.lin_up = _xavier(nn.Linear(2 * f_dim if mp_type == "updown_local_env" else f_dim, h_dim))
        else:
            self.lin_h = _xavier(nn.Linear(h_dim, h_dim))
        self.norm = GraphNorm(f_dim if updown else h_dim) if graph_norm else None
        self.other_mlp = _xavier(nn.Linear(h_dim, h_dim)) if complex_mp else None

    def _endpoint_messages(self, h: Tensor, x: Tensor, e: Tensor, src: Tensor, dst: Tensor,
                           fused: bool) -> Tensor:
        """``m_i = sum_j x_j * swish(W_geom [e_ij || h_j || h_i])`` (N, out), Eq. (8)."""
        n = h.shape[0]
        if not fused:  # reference: the literal per-edge concatenation of Eq. (8)
            f = F.silu(self.lin_geom(torch.cat([e, h[src], h[dst]], dim=-1)))
            return _scatter_sum(x.index_select(0, src) * f, dst, n)
        return endpoint_messages(self.lin_geom, self.f_dim, self.h_dim, h, x, e, src, dst)  # per-node split

    def _norm(self, m: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        return m if self.norm is None else F.silu(self.norm(m, batch, num_graphs))

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int,
                fused: bool = True) -> Tensor:
        src, dst = edge_index[0], edge_index[1]
        n = h.shape[0]
        kind = self.mp_type
        if kind == "attention":
            m = self.attention(h, edge_index, edge_attr=e)
            return self._finish(F.silu(self.lin_h(self._norm(m, batch, num_graphs))))
        if kind == "updown_local_env":
            x = F.silu(self.lin_down(h))
            chi = _scatter_sum(e, dst, n)
            m = _scatter_sum(x.index_select(0, src) * self.lin_geom(e), dst, n)
            return self._finish(self.lin_up(torch.cat([self._norm(m, batch, num_graphs), chi], dim=-1)))
        x = F.silu(self.lin_down(h)) if kind.startswith("updown") else h
        if kind in ("base", "updownscale_base"):
            m = self._endpoint_messages(h, x, e, src, dst, fused)
        else:
            f = e if kind == "simple" else F.silu(self.lin_geom(e))
            m = _scatter_sum(x.index_select(0, src) * f, dst, n)
        m = self._norm(m, batch, num_graphs)
        return self._finish(F.silu(self.lin_up(m) if kind.startswith("updown") else self.lin_h(m)))

    def _finish(self, out: Tensor) -> Tensor:
        return out if self.other_mlp is None else F.silu(self.other_mlp(out))


# ----------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------

class OutputBlock(nn.Module):
    """Per-atom energies ``y_i = Linear(swish(Linear(h_i)))`` (H -> H//2 -> 1) pooled per graph.

    Energy head (what "weighted average" means here, exactly as the official code):
    - "": ``E_g = sum_{i in g} y_i`` (plain sum pooling);
    - "weighted-av-final-embeds": ``E_g = sum_{i in g} alpha_i y_i`` with ``alpha_i = Linear(H, 1)(h_i)`` of
      the h given to this block;
    - "weighted-av-initial-embeds": same with ``alpha_i`` computed by the model from the embedding-block
      output and passed in.
    The weights are unnormalised real numbers (no softmax, no division by sum alpha): a learnt weighted SUM.
    """

    def __init__(self, hidden_channels: int, energy_head: str) -> None:
        super().__init__()
        self.energy_head = energy_head
        self.lin1 = _xavier(nn.Linear(hidden_channels, hidden_channels // 2))
        self.lin2 = _xavier(nn.Linear(hidden_channels // 2, 1))
        final = energy_head == "weighted-av-final-embeds"
        self.w_lin = _xavier(nn.Linear(hidden_channels, 1)) if final else None

    def forward(self, h: Tensor, batch: Tensor, num_graphs: int, alpha: Tensor | None) -> Tensor:
        y = self.lin2(F.silu(self.lin1(h)))
        if self.w_lin is not None:
            y = y * self.w_lin(h)
        elif alpha is not None:
            y = y * alpha
        return _scatter_sum(y, batch, num_graphs).squeeze(-1)


def _norm_layer(norm: str, width: int) -> nn.Module:
    return {"batch1d": nn.BatchNorm1d, "layer": nn.LayerNorm}[norm](width) if norm else nn.Identity()


class ForceDecoder(nn.Module):
    """Direct force head on final atom states, (N, H) -> (N, 3). Lin = Linear, N = norm, a = swish:

    - "simple": Lin(H, c) a Lin(c, 3);  "mlp": Lin(H, c) N a Lin(c, 3);
    - "res": mlp3(mlp2(mlp1(h)) + h), mlp1/2 = Lin(H, H) N a, mlp3 = Lin(H, c) N a Lin(c, 3);
    - "res_updown": mlp4(mlp3(mlp2(mlp1(h))) + h) through H -> c -> c -> H, then H -> c -> 3.
    ``norm``: "batch1d" (BatchNorm1d: batch statistics in training mode, running ones in eval), "layer", "".
    """

    def __init__(self, decoder_type: str, hidden_channels: int, channels: int, norm: str) -> None:
        super().__init__()
        _check_choice("force_decoder_type", decoder_type, FORCE_DECODER_TYPES)
        _check_choice("force_decoder_norm", norm, FORCE_DECODER_NORMS)
        self.kind = decoder_type

        def block(n_in: int, n_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(n_in, n_out), _norm_layer(norm, n_out), nn.SiLU())

        def head(n_in: int) -> nn.Sequential:
            return nn.Sequential(block(n_in, channels), nn.Linear(channels, 3))

        h, c = hidden_channels, channels
        if decoder_type == "simple":
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(h, c), nn.SiLU(), nn.Linear(c, 3))])
        elif decoder_type == "mlp":
            self.layers = nn.ModuleList([head(h)])
        elif decoder_type == "res":
            self.layers = nn.ModuleList([block(h, h), block(h, h), head(h)])
        else:
            self.layers = nn.ModuleList([block(h, c), block(c, c), block(c, h), head(h)])

    def forward(self, h: Tensor) -> Tensor:
        if self.kind in ("simple", "mlp"):
            return self.layers[0](h)
        x = h
        for layer in self.layers[:-1]:
            x = layer(x)
        return self.layers[-1](x + h)


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------

def _limit_neighbors(dst: Tensor, dist: Tensor, num_nodes: int, max_num_neighbors: int) -> Tensor | None:
    """Indices of the edges to keep so each target has at most ``max_num_neighbors`` (the nearest), or
    ``None`` if no atom exceeds it. Distances are rounded to 1e-4 Å before sorting and ties keep the stored
    edge order, so the frames of a structure (equal distances up to float rounding, same edge list) keep
    the same edges even in symmetric crystals where many neighbours are equidistant."""
    deg = torch.bincount(dst, minlength=num_nodes)
    if deg.numel() == 0 or int(deg.max()) <= max_num_neighbors:
        return None
    q = torch.round(dist.detach() * 1e4)
    order = torch.argsort(q, stable=True)
    order = order[torch.argsort(dst[order], stable=True)]
    starts = torch.cumsum(deg, 0) - deg
    rank = torch.arange(order.numel(), device=dst.device) - starts[dst[order]]
    return order[rank < max_num_neighbors].sort().values


class FAENet(nn.Module):
    """FAENet energy (+ forces) model; see the module docstring. Plain keyword arguments, CPU-sized defaults.

    Args (Table 6 switches marked *):
        cutoff: model cutoff in Å (edges of the given graph longer than this are ignored; Gaussian RBF range).
        max_num_neighbors: if set, each atom keeps at most this many nearest neighbours of the given graph.
        hidden_channels (H), num_filters (F), num_gaussians, num_interactions: sizes.
        tag_hidden_channels, pg_hidden_channels, phys_embeds, phys_hidden_channels: atom embedding parts
            (``faenet.embedding.AtomEmbedding``); tag width 0 disables tags (molecules).
        *second_layer_MLP: two-layer (True) or one-layer embedding MLPs, for atoms and edges.
        *edge_embed_type: "all_rij" (Eq. (7)), "rij", "sh", "all". sh_lmax: degrees of the SH (1..3).
        *mp_type: see ``InteractionBlock``. graph_norm: per-graph GraphNorm. *complex_mp: extra layer.
        att_heads: heads for mp_type="attention".
        *energy_head: "", "weighted-av-final-embeds", "weighted-av-initial-embeds" (see ``OutputBlock``).
        *skip_co: jumping connections, one shared output block for all of them:
            "" none; "concat" ``E = Linear(L+1 -> 1)([E_0, ..., E_L])`` with E_l the energy read from the
            input of block l+1 (E_0 from the embedding, E_L final); "add" ``E = sum_l E_l``;
            "concat_atom" ``h = swish(Linear((L+1) H -> H)([h_0 .. h_L]))`` then one readout.
        regress_forces: "", "direct", "direct_with_gradient_target" (direct head, plus in training mode
            ``forces_grad_target = -dE/dpos`` detached, for Eq. (9)), "from_energy" (``-dE/dpos``).
        force_decoder_type / _hidden_channels / _norm: see ``ForceDecoder``.
        fused: compute Eq. (8) with the per-node split (fast); False runs the literal concatenation.
        element_table_cache: optional .npz path for the mendeleev table (``faenet.embedding.element_table``).
    """

    force_modes = REGRESS_FORCES  # checked by baselines.registry.check_hparams
    #: Atomic numbers embedded (inclusive): the element table and z-embedding rows 1..MAX_ATOMIC_NUMBER.
    supported_z = (1, MAX_ATOMIC_NUMBER)

    def __init__(
        self,
        cutoff: float = 6.0,
        max_num_neighbors: int | None = None,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_gaussians: int = 50,
        num_interactions: int = 4,
        tag_hidden_channels: int = 32,
        pg_hidden_channels: int = 32,
        phys_embeds: bool = True,
        phys_hidden_channels: int = 0,
        second_layer_MLP: bool = True,
        edge_embed_type: str = "all_rij",
        sh_lmax: int = 3,
        mp_type: str = "updownscale_base",
        graph_norm: bool = True,
        complex_mp: bool = False,
        att_heads: int = 1,
        energy_head: str | None = "",
        skip_co: str | bool | None = "concat",
        regress_forces: str | None = "",
        force_decoder_type: str = "mlp",
        force_decoder_hidden_channels: int = 128,
        force_decoder_norm: str | None = "batch1d",
        fused: bool = True,
        element_table_cache: str | None = None,
    ) -> None:
        super().__init__()
        if skip_co is True:
            raise ValueError("skip_co=True is ambiguous (the official code silently ignores it); "
                             f"use one of {list(SKIP_CO)}")
        energy_head, skip_co = energy_head or "", skip_co or ""
        regress_forces, force_decoder_norm = regress_forces or "", force_decoder_norm or ""
        _check_choice("energy_head", energy_head, ENERGY_HEADS)
        _check_choice("skip_co", skip_co, SKIP_CO)
        _check_choice("regress_forces", regress_forces, REGRESS_FORCES)
        if cutoff <= 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        if max_num_neighbors is not None and max_num_neighbors < 1:
            raise ValueError(f"max_num_neighbors must be >= 1 or None, got {max_num_neighbors}")
        if num_interactions < 0 or hidden_channels < 2 or num_filters < 2:
            raise ValueError(f"need num_interactions >= 0 and hidden_channels, num_filters >= 2; got "
                             f"{num_interactions}, {hidden_channels}, {num_filters}")
        self.cutoff, self.max_num_neighbors = float(cutoff), max_num_neighbors
        self.regress_forces, self.energy_head, self.skip_co = regress_forces, energy_head, skip_co
        self.fused = fused
        self.use_tags = tag_hidden_channels > 0

        # Embedding block (Sec. 4, App. B.1) and Eq. (7).
        self.atom_embedding = AtomEmbedding(hidden_channels, tag_hidden_channels, pg_hidden_channels,
                                            phys_embeds, phys_hidden_channels, element_table_cache)
        self.atom_lin = _xavier(nn.Linear(hidden_channels, hidden_channels))
        self.atom_lin_2 = _xavier(nn.Linear(hidden_channels, hidden_channels)) if second_layer_MLP else None
        self.edge_embedding = EdgeEmbedding(num_filters, num_gaussians, cutoff, edge_embed_type,
                                            second_layer_MLP, sh_lmax)
        # Interaction blocks, Eq. (8).
        self.interactions = nn.ModuleList([
            InteractionBlock(hidden_channels, num_filters, mp_type, graph_norm, complex_mp, att_heads)
            for _ in range(num_interactions)])
        # Output block, energy head, jumping connections.
        self.output_block = OutputBlock(hidden_channels, energy_head)
        self.w_lin = (_xavier(nn.Linear(hidden_channels, 1))
                      if energy_head == "weighted-av-initial-embeds" else None)
        if skip_co == "concat":
            self.mlp_skip_co = _xavier(nn.Linear(num_interactions + 1, 1))
        elif skip_co == "concat_atom":
            self.mlp_skip_co = _xavier(nn.Linear((num_interactions + 1) * hidden_channels, hidden_channels))
        # Forces.
        self.force_decoder = (ForceDecoder(force_decoder_type, hidden_channels, force_decoder_hidden_channels,
                                           force_decoder_norm)
                              if regress_forces.startswith("direct") else None)

    # -- graph -----------------------------------------------------------------------------------------
    def _edges(self, data, pos: Tensor, batch: Tensor, cell: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Edge index, cell offsets, vectors r_ij and lengths after the model cutoff and neighbour limit."""
        edge_index, offsets = data.edge_index, data.cell_offsets
        cell = data.cell if cell is None else cell
        vec = edge_vectors(pos, edge_index, offsets, cell.reshape(-1, 3, 3), batch)
        dist = vec.norm(dim=-1)
        inside = dist <= self.cutoff
        if not bool(inside.all()):
            edge_index, offsets, vec, dist = edge_index[:, inside], offsets[inside], vec[inside], dist[inside]
        if self.max_num_neighbors is not None:
            keep = _limit_neighbors(edge_index[1], dist, pos.shape[0], self.max_num_neighbors)
            if keep is not None:
                edge_index, offsets, vec, dist = edge_index[:, keep], offsets[keep], vec[keep], dist[keep]
        return edge_index, offsets, vec, dist

    # -- forward ---------------------------------------------------------------------------------------
    def energy_and_states(self, data, pos: Tensor, cell_frames: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Graph energies (B,) and final atom states (N, H) for positions ``pos``.

        With ``cell_frames`` (F, B, 3, 3), ``pos`` (F * N, 3) holds F projected copies (frame-major) of the
        positions of ``data`` (N atoms, B graphs) and the result is that of the stacked batch of F * B graphs
        (``faenet.symmetry.stack_frames``): energies (F * B,), states (F * N, H). Frame-invariant work is done
        once: the model graph (cutoff and neighbour limit) and the distances from frame 0, the RBF of the edge
        embedding, the atom embedding block.
        """
        z = data.atomic_numbers.long()
        batch = data.batch if getattr(data, "batch", None) is not None else z.new_zeros(z.shape[0])
        num_graphs = int(data.num_graphs) if getattr(data, "num_graphs", None) is not None else 1
        frames = 1 if cell_frames is None else int(cell_frames.shape[0])
        if frames == 1:
            edge_index, _, vec, dist = self._edges(data, pos, batch, None if cell_frames is None else cell_frames[0])
        else:  # one model graph and one set of distances for every frame (faenet.inference.frame_edges)
            edge_index, vec, dist = frame_edges(self._edges, data, pos, batch, cell_frames)

        tags = getattr(data, "tags", None) if self.use_tags else None
        h = F.silu(self.atom_lin(self.atom_embedding(z, tags)))
        if self.atom_lin_2 is not None:
            h = F.silu(self.atom_lin_2(h))
        if frames > 1:  # the embedding block sees only Z and tags: frame-invariant, repeated per frame
            h = h.repeat(frames, 1)
            shift = torch.arange(frames, device=z.device)
            batch = (batch[None, :] + (shift * num_graphs)[:, None]).reshape(-1)
            num_graphs *= frames
        e = self.edge_embedding(vec, dist, frames)
        alpha = self.w_lin(h) if self.w_lin is not None else None

        skips: list[Tensor] = []
        for block in self.interactions:
            if self.skip_co == "concat_atom":
                skips.append(h)
            elif self.skip_co:
                skips.append(self.output_block(h, batch, num_graphs, alpha))
            h = h + block(h, e, edge_index, batch, num_graphs, fused=self.fused)

        if self.skip_co == "concat_atom":
            h = F.silu(self.mlp_skip_co(torch.cat(skips + [h], dim=-1)))
        energy = self.output_block(h, batch, num_graphs, alpha)
        if self.skip_co == "concat":
            energy = self.mlp_skip_co(torch.stack(skips + [energy], dim=-1)).squeeze(-1)
        elif self.skip_co == "add":
            energy = torch.stack(skips + [energy]).sum(0)
        return energy, h

    def forward(self, data) -> dict[str, Tensor]:
        """``{"energy": (B,), "forces": (N, 3) if regress_forces, "forces_grad_target": (N, 3)}`` (the
        last only for "direct_with_gradient_target" in training mode; detached ``-dE/dpos``)."""
        return self._predict(data, data.pos, None)

    def forward_frames(self, data, pos_frames: Tensor, cell_frames: Tensor | None) -> dict[str, Tensor]:
        """Outputs for F projected copies of ``data`` in one pass, as ``self(stack_frames(data, pos_frames,
        cell_frames))`` (Full FA, ``faenet.symmetry``): energies (F * B,) and per-atom outputs (F * N, 3),
        frame-major, with the frame-invariant work done once (``energy_and_states``).

        ``pos_frames`` (F, N, 3), ``cell_frames`` (F, B, 3, 3) or None (then ``data.cell`` in every frame).
        ``-dE/dpos`` is taken w.r.t. the stacked positions; the distance path reaches frame 0 only, which is
        the same force once each frame's force is rotated back to the input frame (the distances of frame f
        are those of frame 0 as functions of the input positions).
        """
        n_f = pos_frames.shape[0]
        if cell_frames is None:
            cell_frames = data.cell.reshape(-1, 3, 3)[None].expand(n_f, -1, -1, -1)
        return self._predict(data, pos_frames.reshape(-1, 3), cell_frames)

    def _predict(self, data, pos: Tensor, cell_frames: Tensor | None) -> dict[str, Tensor]:
        want_grad = self.regress_forces == "from_energy" or (
            self.regress_forces == "direct_with_gradient_target" and self.training)
        if want_grad and not pos.requires_grad:
            if torch.is_inference_mode_enabled():
                raise RuntimeError(f"regress_forces={self.regress_forces!r} needs dE/dpos, which "
                                   "torch.inference_mode forbids; use torch.no_grad() or no context")
            pos.requires_grad_(True)
        with torch.enable_grad() if want_grad else contextlib.nullcontext():
            energy, h = self.energy_and_states(data, pos, cell_frames)
            out = {"energy": energy}
            if want_grad:
                # create_graph in training so a loss on -dE/dpos trains the model; retain_graph so the
                # energy loss can still back-propagate after the gradient target was taken.
                create = self.training and self.regress_forces == "from_energy"
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create,
                                              retain_graph=self.training, allow_unused=True)
                neg_grad = -grad if grad is not None else torch.zeros_like(pos)
        if self.regress_forces == "from_energy":
            out["forces"] = neg_grad
        elif self.force_decoder is not None:
            out["forces"] = self.force_decoder(h)
            if want_grad:
                out["forces_grad_target"] = neg_grad.detach()
        return out

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

