"""GemNet-T and GemNet-Q (Gasteiger, Becker & Günnemann, NeurIPS 2021) on the dataset's precomputed graph.

Facts behind every choice: ``shared/references/gemnet_facts.md`` (section numbers "§n" below); the authors'
code is TUM-DAML/gemnet_pytorch ("TUM"), OCP's GemNet-T/dT ("OCP"). Written from those facts, pure torch.

- Directed edge embeddings ``m_ca`` (edge c -> a; the project's ``edge_index = (j, i) = (c, a)``) and atom
  embeddings ``h_a``. GemNet-T passes triplet messages b -> a <- c (distances d_ba, d_ca, angle cab);
  GemNet-Q adds quadruplet ("two-hop") messages d -> b -> a <- c with the dihedral between the planes cab and
  abd, where the b -> a link comes from the interaction graph (``int_cutoff``) and the d -> b, c -> a edges
  from the embedding graph (``cutoff``) (§1, §3).
- The graph is the dataset's (periodic images included). GemNet needs each edge's exact reverse (``id_swap``,
  §8.3): the model symmetrises the given graph (union of its edges and their reverses with negated offsets),
  so, like OCP's ``reorder_symmetric_edges``, in-degrees are no longer capped at ``max_num_neighbors``;
  unlike OCP no edge is dropped. ``int_cutoff`` beyond the dataset graph's radius has no further effect.
- Periodic images: an atom equals another node only if indices AND summed cell offsets agree (OCP GemNet-OC's
  rule, §3), so b = c as different images is a valid triplet.
- Scaling factors (§4): one scalar per scaled layer, a buffer of the state_dict, fitted by
  ``fit_scaling_factors`` (the training loop calls ``model.prepare(train_batches)``); an unfitted model refuses
  to train unless built with ``allow_unfitted=True``.
- Shared projections' gradients are divided by the number of blocks using them (TUM/OCP trainer step, §2), here
  inside the model by a gradient-only scaling of those weights, so no trainer has to know.
- Forces: ``"from_energy"`` (-dE/dpos, GemNet-T/Q) or ``"direct"`` (GemNet-dT/dQ: per-edge scalar times the
  unit edge vector, summed at the target). ``force_head``: "ocp" (OCP's head, the OC20 S2EF dT config) or
  "tum" (the authors').
- ``rbf``: "gaussian" (OCP: Gaussian smearing of d/c times the envelope, no parameters; the circular basis'
  radial part is the same functions) or "bessel" (TUM: learnable-frequency sine Bessel functions; spherical
  Bessel radial parts j_l(z_ln d/c) in the circular/spherical bases).

Angles use cosines of edge vectors (OCP), so no acos; the dihedral uses atan2 with clamped norms (TUM).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch_geometric.utils import scatter

from baselines.common import check_force_mode, forces_from_energy, graph_index
from baselines.dimenet_pp import bessel_zeros, spherical_jn
from baselines.registry import register
from faenet.graph import edge_vectors, triplets

# Sizes that run on 2 CPU cores (``get_presets``); the OC20 configurations are params.yaml's
# ``profiles.paper.hparams.gemnet_t`` / ``gemnet_q``.
_SMALL = {"num_spherical": 4, "num_radial": 8, "num_blocks": 2, "emb_size_atom": 32, "emb_size_edge": 32,
          "emb_size_trip": 16, "emb_size_rbf": 8, "emb_size_cbf": 8, "emb_size_bil_trip": 16,
          "num_before_skip": 1, "num_after_skip": 1, "num_concat": 1, "num_atom": 1, "cutoff": 6.0}
PRESETS: dict[str, dict[str, Any]] = {"small": dict(_SMALL)}
_PRESETS_Q: dict[str, dict[str, Any]] = {
    "small": {**_SMALL, "num_spherical": 3, "emb_size_quad": 8, "emb_size_sbf": 8, "emb_size_bil_quad": 8,
              "cutoff": 4.0, "int_cutoff": 6.0}}


# ---------------------------------------------------------------------------------------------------------------
# Layers (§2)
# ---------------------------------------------------------------------------------------------------------------

def he_orthogonal_(weight: Tensor) -> Tensor:
    """TUM's ``he_orthogonal_init``: orthogonal, standardised over the fan-in axes, times 1/sqrt(fan_in).
    Linear weights are (out, in): fan-in axis 1; 3-D weights (..., out): fan-in = all axes but the last."""
    with torch.no_grad():
        nn.init.orthogonal_(weight)
        axes = [0, 1] if weight.dim() == 3 else [1]
        fan_in = weight.shape[:-1].numel() if weight.dim() == 3 else weight.shape[1]
        var, mean = torch.var_mean(weight, dim=axes, unbiased=True, keepdim=True)
        weight.copy_((weight - mean) / (var + 1e-6) ** 0.5 / math.sqrt(fan_in))
    return weight


class ScaledSiLU(nn.Module):
    """SiLU(x) / 0.6 (TUM/OCP ``ScaledSiLU``: keeps the activation variance near 1)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x) / 0.6


class Dense(nn.Module):
    """Linear layer without bias (GemNet uses none), He-orthogonal init, optional ScaledSiLU."""

    def __init__(self, d_in: int, d_out: int, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(he_orthogonal_(torch.empty(d_out, d_in)))
        self.act = ScaledSiLU() if activation else nn.Identity()

    def forward(self, x: Tensor, grad_scale: float = 1.0) -> Tensor:
        return self.act(F.linear(x, _scale_grad(self.weight, grad_scale)))


class ResidualLayer(nn.Module):
    """(x + Dense_σ(Dense_σ(x))) / sqrt(2)."""

    def __init__(self, units: int):
        super().__init__()
        self.dense = nn.Sequential(Dense(units, units, True), Dense(units, units, True))

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.dense(x)) / math.sqrt(2.0)


def _residuals(units: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualLayer(units) for _ in range(n)])


class _GradScale(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward (written with differentiable ops: double backward
    of force training works)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def _scale_grad(w: Tensor, scale: float) -> Tensor:
    return w if scale == 1.0 else _GradScale.apply(w, scale)


class ScaleFactor(nn.Module):
    """A scaling factor (§4): ``forward(y, ref) = scale * y``; while fitting, an observer sees ``(ref, out)``.

    ``scale`` is a (non-trainable) buffer of the state_dict, so fitted values travel with checkpoints."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.register_buffer("scale", torch.ones(()))
        self.observer: Callable[[Tensor, Tensor], None] | None = None

    def forward(self, y: Tensor, ref: Tensor) -> Tensor:
        out = y * self.scale
        if self.observer is not None:
            self.observer(ref, out)
        return out

    def extra_repr(self) -> str:
        return f"{self.name}, scale={float(self.scale):.4g}"


class EfficientDownProjection(nn.Module):
    """Per-order radial projection: radial part (L, E, R) @ W (L, R, D) -> (E, D, L) (TUM/OCP
    ``EfficientInteractionDownProjection``; L = S orders for the triplet basis, S^2 (l, m) for quadruplets)."""

    def __init__(self, num_orders: int, num_radial: int, units: int):
        super().__init__()
        self.weight = nn.Parameter(he_orthogonal_(torch.empty(num_orders, num_radial, units)))

    def forward(self, rad: Tensor, grad_scale: float = 1.0) -> Tensor:
        w = _scale_grad(self.weight, grad_scale)
        return torch.matmul(rad, w).permute(1, 2, 0)  # (L, E, D) -> (E, D, L)


class EfficientBilinear(nn.Module):
    """out_e = sum_{k in K(e)} sum_{i,j} W[j, i, :] basis_k[i] x_k[j] (§2 "Efficient bilinear"), computed as
    ``sph @ pad(x)`` then ``rbf_W1 @ .`` so no (K, D_basis * D_in) intermediate exists. W is (D_in, D_basis, D_out)."""

    def __init__(self, d_in: int, d_basis: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(he_orthogonal_(torch.empty(d_in, d_basis, d_out)))

    def forward(self, rbf_w1: Tensor, sph: Tensor, x: Tensor, id_reduce: Tensor, ragged: Tensor) -> Tensor:
        e, kmax = sph.shape[0], sph.shape[2]
        m2 = x.new_zeros(e, kmax, x.shape[1]).index_put((id_reduce, ragged), x)  # (E, Kmax, D_in)
        sum_k = torch.matmul(sph, m2)  # (E, L, D_in)
        m = torch.matmul(rbf_w1, sum_k)  # (E, D_basis, D_in)
        d_in, d_basis, d_out = self.weight.shape
        return m.transpose(1, 2).reshape(e, d_in * d_basis) @ self.weight.reshape(d_in * d_basis, d_out)


# ---------------------------------------------------------------------------------------------------------------
# Bases (§2)
# ---------------------------------------------------------------------------------------------------------------

def envelope(x: Tensor, p: int) -> Tensor:
    """Polynomial envelope u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0."""
    u = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    return torch.where(x < 1, u, torch.zeros_like(u))


class RadialBasis(nn.Module):
    """Edge radial basis (E, R): "gaussian" (OCP: Gaussians on d/c, centres linspace(0, 1, R), width 1/(R-1),
    times the envelope) or "bessel" (TUM: u(d/c) sqrt(2/c) sin(f_n d/c) / d, f_n learnable, initialised n pi)."""

    def __init__(self, num_radial: int, cutoff: float, kind: str, exponent: int):
        super().__init__()
        self.kind, self.cutoff, self.p = kind, cutoff, exponent
        if kind == "bessel":
            self.frequencies = nn.Parameter(math.pi * torch.arange(1, num_radial + 1, dtype=torch.get_default_dtype()))
        else:
            self.register_buffer("centres", torch.linspace(0, 1, num_radial), persistent=False)

    def forward(self, d: Tensor) -> Tensor:
        x = d / self.cutoff
        u = envelope(x, self.p)[:, None]
        if self.kind == "bessel":
            return u * math.sqrt(2 / self.cutoff) * torch.sin(self.frequencies * x[:, None]) / d[:, None]
        mu = self.centres.to(d.dtype)
        width = (mu[1] - mu[0]) if mu.numel() > 1 else mu.new_tensor(1.0)
        return u * torch.exp(-0.5 * ((x[:, None] - mu) / width) ** 2)


class SphericalRadial(nn.Module):
    """Radial parts of the circular/spherical bases, (S, E, R): spherical Bessel ``N_ln j_l(z_ln d/c) c^-1.5
    u(d/c)`` ("bessel", TUM) or the edge's Gaussian basis repeated over l ("gaussian", OCP)."""

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float, kind: str, exponent: int):
        super().__init__()
        self.kind, self.cutoff, self.p, self.S = kind, cutoff, exponent, num_spherical
        if kind == "bessel":
            from scipy.special import spherical_jn as jn

            z = bessel_zeros(num_spherical, num_radial).astype("float64")
            norm = np.stack([1.0 / (0.5 * jn(order + 1, z[order]) ** 2) ** 0.5 for order in range(num_spherical)])
            self.register_buffer("zeros", torch.tensor(z), persistent=False)
            self.register_buffer("norm", torch.tensor(norm), persistent=False)
        else:
            self.gauss = RadialBasis(num_radial, cutoff, "gaussian", exponent)

    def forward(self, d: Tensor) -> Tensor:
        if self.kind != "bessel":
            g = self.gauss(d)
            return g.unsqueeze(0).expand(self.S, -1, -1)
        x = (d / self.cutoff)[:, None]
        z, norm = self.zeros.to(d.dtype), self.norm.to(d.dtype)
        u = envelope(x, self.p) * self.cutoff**-1.5
        return torch.stack([u * norm[order] * spherical_jn(order, x * z[order]) for order in range(self.S)])


def legendre_y_l0(cos: Tensor, num_spherical: int) -> Tensor:
    """Y_l^0 = sqrt((2l+1)/4pi) P_l(cos), l < S, (K, S): polynomials in cos, finite at cos = +-1."""
    p = [torch.ones_like(cos), cos]
    for order in range(1, num_spherical - 1):
        p.append(((2 * order + 1) * cos * p[order] - order * p[order - 1]) / (order + 1))
    pref = cos.new_tensor([math.sqrt((2 * order + 1) / (4 * math.pi)) for order in range(num_spherical)])
    return torch.stack(p[:num_spherical], dim=1) * pref


def real_sph_harm(polar: Tensor, azimuth: Tensor, num_spherical: int) -> Tensor:
    """Real Y_lm(polar, azimuth) for l < S, m = -l..l, (K, S^2) in (l, m) order. Associated Legendre by the
    standard recurrences in cos/sin of the angle (no sqrt of 1 - cos^2: finite gradients, §8.4)."""
    x, s = torch.cos(polar), torch.sin(polar)
    plm: dict[tuple[int, int], Tensor] = {(0, 0): torch.ones_like(x)}
    for m in range(num_spherical):
        if m > 0:
            plm[(m, m)] = -(2 * m - 1) * s * plm[(m - 1, m - 1)]
        if m + 1 < num_spherical:
            plm[(m + 1, m)] = (2 * m + 1) * x * plm[(m, m)]
        for order in range(m + 2, num_spherical):
            plm[(order, m)] = ((2 * order - 1) * x * plm[(order - 1, m)]
                               - (order + m - 1) * plm[(order - 2, m)]) / (order - m)
    out = []
    for order in range(num_spherical):
        for m in range(-order, order + 1):
            k = math.sqrt((2 * order + 1) / (4 * math.pi) * math.factorial(order - abs(m))
                          / math.factorial(order + abs(m)))
            p = plm[(order, abs(m))]
            if m == 0:
                out.append(k * p)
            elif m > 0:
                out.append(math.sqrt(2) * k * torch.cos(m * azimuth) * p)
            else:
                out.append(math.sqrt(2) * k * torch.sin(-m * azimuth) * p)
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Indices (§3)
# ---------------------------------------------------------------------------------------------------------------

def symmetric_graph(edge_index: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor, int]:
    """The union of the edges and their reverses (offset negated), ordered as [canonical half, reverses]:
    ``edge_index, offsets, H`` with edge e < H reversed by e + H (so ``id_swap = [arange(H) + H, arange(H)]``).
    Canonical: source < target, or source == target (an atom and its own image) with a lexicographically
    positive offset. Rows are sorted (``torch.unique``), a deterministic order independent of input order."""
    src, dst = edge_index
    both = torch.cat([torch.stack([src, dst], 1), offsets.long()], 1)
    rev = torch.cat([torch.stack([dst, src], 1), -offsets.long()], 1)
    rows = torch.unique(torch.cat([both, rev]), dim=0)
    s, t, o = rows[:, 0], rows[:, 1], rows[:, 2:]
    # lexicographic sign of the offset: first non-zero component
    first = torch.where(o[:, 0] != 0, o[:, 0], torch.where(o[:, 1] != 0, o[:, 1], o[:, 2]))
    canon = (s < t) | ((s == t) & (first > 0))
    half = rows[canon]
    h = half.shape[0]
    ei = torch.cat([half[:, :2].T, half[:, :2].flip(1).T], 1)
    off = torch.cat([half[:, 2:], -half[:, 2:]])
    return ei, off, h


def _ragged(group: Tensor, num_groups: int) -> tuple[Tensor, Tensor, int]:
    """Stable order sorting ``group``, the rank of each element within its group (after sorting) and the max
    group size (TUM's ``Kidx``)."""
    order = torch.argsort(group, stable=True)
    g = group[order]
    counts = torch.bincount(g, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(g.numel()) - starts[g]
    return order, rank, int(counts.max()) if counts.numel() and g.numel() else 0


def _expand(src_groups: Tensor, counts: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """For each element k of ``src_groups`` (a group id), pair it with each of the ``counts[g]`` members of
    group g (members ``starts[g] + r``): returns (k repeated, member index)."""
    n_per = counts[src_groups]
    k = torch.repeat_interleave(torch.arange(src_groups.numel()), n_per)
    local = torch.arange(k.numel()) - torch.repeat_interleave(torch.cumsum(n_per, 0) - n_per, n_per)
    return k, starts[src_groups][k] + local


def quadruplets(edge_index: Tensor, offsets: Tensor, emb_mask: Tensor, num_nodes: int) -> dict[str, Tensor]:
    """Quadruplets d -> b -> a <- c (§3, TUM ``get_quadruplets`` with OCP GemNet-OC's periodic-image masks).

    ``edge_index``/``offsets``: the symmetric interaction graph; ``emb_mask``: its embedding-graph edges.
    Edge ids returned for embedding edges are positions in the interaction graph (the caller maps them).
    Returns ``intm_db_int`` (b -> a int. edge), ``intm_db_emb`` (d -> b edge) per intermediate triplet, and per
    quadruplet ``quad_db`` (its intermediate triplet), ``quad_ca`` (its c -> a edge), ``quad_ba`` (int. edge).
    Masks: d != a, c != b, c != d as atoms-with-images (index differs or summed offset non-zero).
    """
    src, dst = edge_index
    emb_ids = emb_mask.nonzero().squeeze(1)
    # embedding edges in CSR by target
    order = emb_ids[torch.argsort(dst[emb_ids], stable=True)]
    counts = torch.bincount(dst[emb_ids], minlength=num_nodes)
    starts = torch.cumsum(counts, 0) - counts

    def members(nodes: Tensor) -> tuple[Tensor, Tensor]:
        k, pos = _expand(nodes, counts, starts)
        return k, order[pos]

    # intermediate triplets d -> b -> a: every embedding edge into b = src(ba); d is not a (same image)
    i_db, e_db = members(src)
    keep = (src[e_db] != dst[i_db]) | (offsets[e_db] + offsets[i_db]).any(1)
    i_db, e_db = i_db[keep], e_db[keep]
    # edges c -> a paired with b -> a: every embedding edge into a = dst(ba); c is not b (same image)
    i_ca, e_ca = members(dst)
    keep = (src[e_ca] != src[i_ca]) | (offsets[e_ca] != offsets[i_ca]).any(1)
    i_ca, e_ca = i_ca[keep], e_ca[keep]
    # per interaction edge, the Cartesian product of its two lists (both grouped by interaction edge)
    ne = src.numel()
    n1, n2 = torch.bincount(i_db, minlength=ne), torch.bincount(i_ca, minlength=ne)
    s1, s2 = torch.cumsum(n1, 0) - n1, torch.cumsum(n2, 0) - n2
    nq = n1 * n2
    q_int = torch.repeat_interleave(torch.arange(ne), nq)
    local = torch.arange(q_int.numel()) - torch.repeat_interleave(torch.cumsum(nq, 0) - nq, nq)
    p = s1[q_int] + torch.div(local, n2[q_int], rounding_mode="floor")
    q = s2[q_int] + local % n2[q_int].clamp(min=1)
    e_d, e_c = e_db[p], e_ca[q]
    # c != d: c at off(ca) from a, d at off(db) + off(ba)
    keep = (src[e_c] != src[e_d]) | (offsets[e_c] != offsets[e_d] + offsets[q_int]).any(1)
    return {"intm_db_int": i_db, "intm_db_emb": e_db, "quad_db": p[keep], "quad_ca": e_c[keep],
            "quad_ba": q_int[keep]}


# ---------------------------------------------------------------------------------------------------------------
# Blocks (§2)
# ---------------------------------------------------------------------------------------------------------------

class TripletInteraction(nn.Module):
    def __init__(self, i: int, de: int, dt: int, drbf: int, dcbf: int, dbil: int):
        super().__init__()
        self.dense_ba = Dense(de, de, True)
        self.mlp_rbf = Dense(drbf, de)
        self.scale_rbf = ScaleFactor(f"TripInteraction_{i}_had_rbf")
        self.down = Dense(de, dt, True)
        self.bilinear = EfficientBilinear(dt, dcbf, dbil)
        self.scale_cbf_sum = ScaleFactor(f"TripInteraction_{i}_sum_cbf")
        self.up_ca = Dense(dbil, de, True)
        self.up_ac = Dense(dbil, de, True)

    def forward(self, m: Tensor, rbf3: Tensor, cbf3: tuple[Tensor, Tensor], g: dict[str, Tensor]) -> Tensor:
        x_ba = self.dense_ba(m)
        x_ba = self.scale_rbf(x_ba * self.mlp_rbf(rbf3), ref=x_ba)
        x_ba = self.down(x_ba).index_select(0, g["id3_ba"])
        x = self.bilinear(cbf3[0], cbf3[1], x_ba, g["id3_ca"], g["ragged3"])
        x = self.scale_cbf_sum(x, ref=x_ba)
        return (self.up_ca(x) + self.up_ac(x).index_select(0, g["id_swap"])) / math.sqrt(2.0)


class QuadrupletInteraction(nn.Module):
    def __init__(self, i: int, de: int, dq: int, drbf: int, dcbf: int, dsbf: int, dbil: int):
        super().__init__()
        self.dense_db = Dense(de, de, True)
        self.mlp_rbf = Dense(drbf, de)
        self.scale_rbf = ScaleFactor(f"QuadInteraction_{i}_had_rbf")
        self.down = Dense(de, dq, True)
        self.mlp_cbf = Dense(dcbf, dq)
        self.scale_cbf = ScaleFactor(f"QuadInteraction_{i}_had_cbf")
        self.bilinear = EfficientBilinear(dq, dsbf, dbil)
        self.scale_sbf_sum = ScaleFactor(f"QuadInteraction_{i}_sum_sbf")
        self.up_ca = Dense(dbil, de, True)
        self.up_ac = Dense(dbil, de, True)

    def forward(self, m: Tensor, rbf4: Tensor, cbf4: Tensor, sbf4: tuple[Tensor, Tensor],
                g: dict[str, Tensor]) -> Tensor:
        x_db = self.dense_db(m)
        x_db = self.scale_rbf(x_db * self.mlp_rbf(rbf4), ref=x_db)
        x_db = self.down(x_db).index_select(0, g["intm_db"])  # (intermediate triplets, Dq)
        x_db2 = self.scale_cbf(x_db * self.mlp_cbf(cbf4), ref=x_db)
        x = x_db2.index_select(0, g["quad_db"])  # (Q, Dq)
        y = self.bilinear(sbf4[0], sbf4[1], x, g["quad_ca"], g["ragged4"])
        y = self.scale_sbf_sum(y, ref=x)
        return (self.up_ca(y) + self.up_ac(y).index_select(0, g["id_swap"])) / math.sqrt(2.0)


class AtomUpdate(nn.Module):
    def __init__(self, name: str, da: int, de: int, drbf: int, num_atom: int):
        super().__init__()
        self.dense_rbf = Dense(drbf, de)
        self.scale_sum = ScaleFactor(name)
        self.dense = Dense(de, da, True)
        self.res = _residuals(da, num_atom)

    def forward(self, m: Tensor, rbf: Tensor, target: Tensor, n: int) -> Tensor:
        x = scatter(m * self.dense_rbf(rbf), target, dim=0, dim_size=n, reduce="sum")
        x = self.scale_sum(x, ref=m)
        return self.res(self.dense(x))


class InteractionBlock(nn.Module):
    def __init__(self, i: int, quad: bool, da: int, de: int, dt: int, dq: int, drbf: int, dcbf: int, dsbf: int,
                 dbil_t: int, dbil_q: int, before: int, after: int, concat: int, num_atom: int):
        super().__init__()
        self.dense_ca = Dense(de, de, True)
        self.quad = QuadrupletInteraction(i, de, dq, drbf, dcbf, dsbf, dbil_q) if quad else None
        self.trip = TripletInteraction(i, de, dt, drbf, dcbf, dbil_t)
        self.before = _residuals(de, before)
        self.after = _residuals(de, after)
        self.atom_update = AtomUpdate(f"AtomUpdate_{i}_sum", da, de, drbf, num_atom)
        self.concat = Dense(2 * da + de, de, True)
        self.concat_res = _residuals(de, concat)

    def forward(self, h: Tensor, m: Tensor, bases: dict[str, Any], g: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        parts = [self.dense_ca(m), self.trip(m, bases["rbf3"], bases["cbf3"], g)]
        if self.quad is not None:
            parts.append(self.quad(m, bases["rbf4"], bases["cbf4"], bases["sbf4"], g))
        x = sum(parts) / math.sqrt(len(parts))
        x = self.before(x)
        m = (m + x) / math.sqrt(2.0)
        m = self.after(m)
        h = (h + self.atom_update(m, bases["rbf_h"], g["target"], h.shape[0])) / math.sqrt(2.0)
        m2 = self.concat_res(self.concat(torch.cat([h.index_select(0, g["source"]),
                                                    h.index_select(0, g["target"]), m], dim=-1)))
        return h, (m + m2) / math.sqrt(2.0)


class OutputBlock(nn.Module):
    def __init__(self, j: int, da: int, de: int, drbf: int, num_atom: int, direct: bool, force_head: str):
        super().__init__()
        self.dense_rbf = Dense(drbf, de)
        self.scale_sum = ScaleFactor(f"OutBlock_{j}_sum")
        self.dense = Dense(de, da, True)
        self.res = _residuals(da, num_atom)
        self.out_energy = Dense(da, 1)
        self.force_head = force_head if direct else ""
        if direct:
            self.scale_had = ScaleFactor(f"OutBlock_{j}_had")
            self.dense_f = Dense(de, de, True)
            self.res_f = _residuals(de, num_atom)
            if force_head == "ocp":
                self.dense_rbf_f = Dense(drbf, de)
            self.out_force = Dense(de, 1)

    def forward(self, m: Tensor, rbf: Tensor, target: Tensor, n: int) -> tuple[Tensor, Tensor | None]:
        rbf_emb = self.dense_rbf(rbf)
        x = m * rbf_emb
        e = self.scale_sum(scatter(x, target, dim=0, dim_size=n, reduce="sum"), ref=m)
        e = self.out_energy(self.res(self.dense(e)))
        if not self.force_head:
            return e, None
        if self.force_head == "tum":
            f = self.scale_had(x, ref=m)
            f = self.res_f(self.dense_f(f))
        else:  # OCP: MLP on m first, then the separate rbf projection, then the factor
            f0 = self.res_f(self.dense_f(m))
            f = self.scale_had(f0 * self.dense_rbf_f(rbf), ref=f0)
        return e, self.out_force(f)


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------

class _GemNet(nn.Module):
    """GemNet on the precomputed graph; GemNet-T (``quadruplets=False``) or GemNet-Q. See the module docstring
    and the subclasses for arguments."""

    force_modes = ("", "direct", "from_energy")
    supported_z = (1, 86)  # the defaults' Embedding(86) rows, Z - 1; instances narrow it to num_elements

    def __init__(self, quadruplets: bool, num_spherical: int, num_radial: int, num_blocks: int,
                 emb_size_atom: int, emb_size_edge: int, emb_size_trip: int, emb_size_quad: int,
                 emb_size_rbf: int, emb_size_cbf: int, emb_size_sbf: int, emb_size_bil_trip: int,
                 emb_size_bil_quad: int, num_before_skip: int, num_after_skip: int, num_concat: int,
                 num_atom: int, cutoff: float, int_cutoff: float, envelope_exponent: int, rbf: str,
                 num_elements: int, force_head: str, extensive: bool, scale_fit_batches: int,
                 allow_unfitted: bool, regress_forces: str):
        super().__init__()
        name = type(self).__name__
        self.regress_forces = check_force_mode(name, regress_forces, self.force_modes)
        for key, val in {"num_spherical": num_spherical, "num_radial": num_radial, "num_blocks": num_blocks,
                         "num_elements": num_elements, "scale_fit_batches": scale_fit_batches}.items():
            if val < 1:
                raise ValueError(f"{name}: {key} must be >= 1, got {val}")
        if rbf not in ("gaussian", "bessel"):
            raise ValueError(f"{name}: rbf={rbf!r} is not supported; allowed: ['gaussian', 'bessel']")
        if force_head not in ("ocp", "tum"):
            raise ValueError(f"{name}: force_head={force_head!r} is not supported; allowed: ['ocp', 'tum']")
        if cutoff <= 0 or (quadruplets and int_cutoff <= 0):
            raise ValueError(f"{name}: cutoffs must be > 0 Å, got cutoff={cutoff}, int_cutoff={int_cutoff}")
        if rbf == "gaussian" and num_radial < 2:
            raise ValueError(f"{name}: the Gaussian basis needs num_radial >= 2, got {num_radial}")
        self.quadruplets, self.cutoff, self.int_cutoff = quadruplets, cutoff, int_cutoff
        self.num_spherical, self.num_blocks, self.extensive = num_spherical, num_blocks, extensive
        self.scale_fit_batches, self.allow_unfitted = scale_fit_batches, allow_unfitted
        self.supported_z = (1, num_elements)  # embedding rows are Z - 1 (TUM/OCP convention)
        direct = regress_forces == "direct"
        S, R = num_spherical, num_radial  # noqa: N806
        # shared bases and projections (computed once per forward)
        self.radial = RadialBasis(R, cutoff, rbf, envelope_exponent)
        self.cbf_radial = SphericalRadial(S, R, cutoff, rbf, envelope_exponent)
        self.mlp_rbf3 = Dense(R, emb_size_rbf)
        self.mlp_cbf3 = EfficientDownProjection(S, R, emb_size_cbf)
        self.mlp_rbf_h = Dense(R, emb_size_rbf)
        self.mlp_rbf_out = Dense(R, emb_size_rbf)
        if quadruplets:
            self.int_radial = SphericalRadial(S, R, int_cutoff, rbf, envelope_exponent)
            self.mlp_rbf4 = Dense(R, emb_size_rbf)
            self.mlp_cbf4 = Dense(S * R, emb_size_cbf)
            self.mlp_sbf4 = EfficientDownProjection(S * S, R, emb_size_sbf)
        self.atom_emb = nn.Embedding(num_elements, emb_size_atom)
        nn.init.uniform_(self.atom_emb.weight, -math.sqrt(3), math.sqrt(3))
        self.edge_emb = Dense(2 * emb_size_atom + R, emb_size_edge, True)
        # construction order = the scaling factors' fitting order (per block Quad -> Trip -> AtomUpdate,
        # then the output blocks 0..nb), which respects their data dependencies (§4)
        self.int_blocks = nn.ModuleList([
            InteractionBlock(i + 1, quadruplets, emb_size_atom, emb_size_edge, emb_size_trip, emb_size_quad,
                             emb_size_rbf, emb_size_cbf, emb_size_sbf, emb_size_bil_trip, emb_size_bil_quad,
                             num_before_skip, num_after_skip, num_concat, num_atom)
            for i in range(num_blocks)])
        self.out_blocks = nn.ModuleList([
            OutputBlock(j, emb_size_atom, emb_size_edge, emb_size_rbf, num_atom, direct, force_head)
            for j in range(num_blocks + 1)])
        self.register_buffer("scales_fitted", torch.zeros((), dtype=torch.bool))

    # -- scaling factors ------------------------------------------------------------------------------------
    def scale_factors(self) -> list[ScaleFactor]:
        """Every scaling factor, in fitting (construction) order."""
        return [m for m in self.modules() if isinstance(m, ScaleFactor)]

    def prepare(self, train_batches: Iterable[Any]) -> dict[str, float]:
        """Training-loop hook (``faenet.training.train`` calls it once before the first epoch of a fresh run):
        fit the scaling factors on the first ``scale_fit_batches`` training batches."""
        batches = []
        for b in train_batches:
            if len(batches) >= self.scale_fit_batches:
                break
            batches.append(b)
        return fit_scaling_factors(self, batches)

    # -- forward --------------------------------------------------------------------------------------------
    def _graph(self, data: Any) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Indices (symmetric graph, triplets, quadruplets) and the embedding edges' vectors and distances."""
        n = data.pos.shape[0]
        batch = graph_index(data)[0]
        ei, off, h = symmetric_graph(data.edge_index, data.cell_offsets)
        ei, off = ei.to(data.pos.device), off.to(data.pos.device)
        # reverse vectors are the exact negatives, so both directions pass or fail the cutoff together
        vh = edge_vectors(data.pos, ei[:, :h], off[:h], data.cell, batch)
        vec = torch.cat([vh, -vh])
        dist = vec.norm(dim=-1)
        outer = self.int_cutoff if self.quadruplets else self.cutoff
        keep = dist <= max(outer, self.cutoff)
        emb = dist <= self.cutoff
        half_keep = keep[:h]
        # keep the [half, reverses] layout after masking (the masks are symmetric)
        idx = torch.cat([half_keep.nonzero().squeeze(1), half_keep.nonzero().squeeze(1) + h])
        ei, off, vec, dist, emb = ei[:, idx], off[idx], vec[idx], dist[idx], emb[idx]
        h2 = int(half_keep.sum())
        # the embedding graph: the same layout, its own ids
        emb_half = emb[:h2].nonzero().squeeze(1)
        emb_ids = torch.cat([emb_half, emb_half + h2])
        he = emb_half.numel()
        g: dict[str, Tensor] = {}
        ei_e, off_e = ei[:, emb_ids], off[emb_ids]
        g["source"], g["target"] = ei_e[0], ei_e[1]
        g["id_swap"] = torch.cat([torch.arange(he) + he, torch.arange(he)]).to(ei.device)
        _, _, _, idx_kj, idx_ji = triplets(ei_e, n, off_e)
        id3_ba, id3_ca = idx_kj, g["id_swap"][idx_ji]  # DimeNet k->j->i = GemNet b->a<-c with a = j (§3)
        order, rank, _ = _ragged(id3_ca, 2 * he)
        g["id3_ba"], g["id3_ca"], g["ragged3"] = id3_ba[order], id3_ca[order], rank
        g["emb_ids"] = emb_ids
        if self.quadruplets:
            q = quadruplets(ei, off, emb, n)
            to_emb = torch.full((ei.shape[1],), -1, dtype=torch.long, device=ei.device)
            to_emb[emb_ids] = torch.arange(emb_ids.numel(), device=ei.device)
            order4, rank4, _ = _ragged(to_emb[q["quad_ca"]], 2 * he)
            g["intm_db"] = to_emb[q["intm_db_emb"]]
            g["intm_db_int"] = q["intm_db_int"]
            g["quad_db"], g["quad_ca"] = q["quad_db"][order4], to_emb[q["quad_ca"]][order4]
            g["quad_ba"], g["ragged4"] = q["quad_ba"][order4], rank4
        return g, vec, dist

    def _bases(self, g: dict[str, Tensor], vec: Tensor, dist: Tensor) -> dict[str, Any]:
        S = self.num_spherical  # noqa: N806
        nb = self.num_blocks
        ids = g["emb_ids"]
        v_e, d_e = vec.index_select(0, ids), dist.index_select(0, ids)
        ne = d_e.shape[0]
        rbf = self.radial(d_e)
        out: dict[str, Any] = {"rbf": rbf, "dist": d_e, "vec": v_e}
        out["rbf3"] = self.mlp_rbf3(rbf, 1.0 / nb)
        out["rbf_h"] = self.mlp_rbf_h(rbf, 1.0 / nb)
        out["rbf_out"] = self.mlp_rbf_out(rbf, 1.0 / (nb + 1))
        # triplet basis: radial on d_ca (edge), Y_l0(angle cab) per triplet, padded (E, S, Kmax)
        v_ca, v_ba = v_e.index_select(0, g["id3_ca"]), v_e.index_select(0, g["id3_ba"])
        cos = ((v_ca * v_ba).sum(-1) / (d_e.index_select(0, g["id3_ca"]) * d_e.index_select(0, g["id3_ba"])))
        cbf = legendre_y_l0(cos.clamp(-1.0, 1.0), S)
        kmax = int(g["ragged3"].max()) + 1 if g["ragged3"].numel() else 0
        sph = cbf.new_zeros(ne, kmax, S).index_put((g["id3_ca"], g["ragged3"]), cbf).transpose(1, 2)
        out["cbf3"] = (self.mlp_cbf3(self.cbf_radial(d_e), 1.0 / nb), sph)
        if self.quadruplets:
            out["rbf4"] = self.mlp_rbf4(rbf, 1.0 / nb)
            # intermediate triplet d -> b -> a: radial on d_ba (interaction cutoff), Y_l0(angle abd)
            i_db, e_db = g["intm_db_int"], g["intm_db"]
            v_ba_i, d_ba_i = vec.index_select(0, i_db), dist.index_select(0, i_db)
            v_db, d_db = v_e.index_select(0, e_db), d_e.index_select(0, e_db)
            cos_abd = (-(v_ba_i * v_db).sum(-1) / (d_ba_i * d_db)).clamp(-1.0, 1.0)
            rad = self.int_radial(d_ba_i)  # (S, I, R)
            cbf4 = (rad.permute(1, 0, 2) * legendre_y_l0(cos_abd, S)[:, :, None]).reshape(d_ba_i.shape[0],
                                                                                 S * rad.shape[2])
            out["cbf4"] = self.mlp_cbf4(cbf4, 1.0 / nb)
            # quadruplet: radial on d_ca, Y_lm(angle cab, dihedral cab-abd)
            v_ca4 = v_e.index_select(0, g["quad_ca"])
            v_ba4 = vec.index_select(0, g["quad_ba"])
            v_db4 = v_db.index_select(0, g["quad_db"])
            ang_cab = _angle(v_ca4, v_ba4)
            axis = v_ba4 / v_ba4.norm(dim=-1, keepdim=True)
            r_c = v_ca4 - (v_ca4 * axis).sum(-1, keepdim=True) * axis  # rejections from the a-b axis
            r_d = v_db4 - (v_db4 * axis).sum(-1, keepdim=True) * axis
            theta = _angle(r_c, r_d)
            ylm = real_sph_harm(ang_cab, theta, S)
            kmax4 = int(g["ragged4"].max()) + 1 if g["ragged4"].numel() else 0
            sph4 = ylm.new_zeros(ne, kmax4, S * S).index_put((g["quad_ca"], g["ragged4"]), ylm).transpose(1, 2)
            rad4 = self.cbf_radial(d_e)  # (S, E, R) repeated 2l+1 times per order
            reps = torch.tensor([2 * order + 1 for order in range(S)], device=rad4.device)
            rad4 = torch.repeat_interleave(rad4, reps, dim=0)
            out["sbf4"] = (self.mlp_sbf4(rad4, 1.0 / nb), sph4)
        return out

    def _check_fitted(self) -> None:
        if self.training and not self.allow_unfitted and not bool(self.scales_fitted):
            raise RuntimeError(
                f"{type(self).__name__}: scaling factors are not fitted, so activations are not variance-"
                "stabilised (GemNet §6). Fit them first: baselines.gemnet.fit_scaling_factors(model, batches) "
                "(faenet.training.train does it via model.prepare(train_batches) on a fresh run), or load a "
                "checkpoint with fitted factors, or build the model with allow_unfitted=True to train without.")

    def forward(self, data: Any) -> dict[str, Tensor]:
        """``{"energy": (B,), "forces": (N, 3) if regress_forces}`` for a PyG batch of records."""
        self._check_fitted()
        grad_forces = self.regress_forces == "from_energy"
        with torch.set_grad_enabled(torch.is_grad_enabled() or grad_forces):
            if grad_forces and not data.pos.requires_grad:
                data.pos.requires_grad_(True)
            out = self._predict(data)
            if grad_forces:
                out["forces"] = forces_from_energy(out["energy"], data.pos, self.training)
        return out

    def _predict(self, data: Any, cache: dict[str, Any] | None = None) -> dict[str, Tensor]:
        """Energies (and direct forces). ``cache``: a dict kept per batch across calls (scaling-factor fitting
        runs every batch once per factor): the graph indices are built once and reused."""
        batch, num_graphs = graph_index(data)
        n = data.pos.shape[0]
        if cache is not None and "graph" in cache:
            g, vec, dist = cache["graph"]
        else:
            g, vec, dist = self._graph(data)
            if cache is not None:
                cache["graph"] = (g, vec, dist)
        b = self._bases(g, vec, dist)
        z = data.atomic_numbers.long() - 1
        h = self.atom_emb(z)
        m = self.edge_emb(torch.cat([h.index_select(0, g["source"]), h.index_select(0, g["target"]), b["rbf"]], -1))
        e_sum, f_sum = self.out_blocks[0](m, b["rbf_out"], g["target"], n)
        for block, outb in zip(self.int_blocks, self.out_blocks[1:], strict=True):
            h, m = block(h, m, b, g)
            e, f = outb(m, b["rbf_out"], g["target"], n)
            e_sum = e_sum + e
            f_sum = f if f_sum is None else f_sum + f
        energy = scatter(e_sum, batch, dim=0, dim_size=num_graphs, reduce="sum" if self.extensive else "mean")
        out = {"energy": energy.squeeze(-1)}
        if f_sum is not None:
            unit = -b["vec"] / b["dist"][:, None]  # V_ca: unit vector source -> target (§0)
            out["forces"] = scatter(f_sum * unit, g["target"], dim=0, dim_size=n, reduce="sum")
        return out


def _angle(u: Tensor, v: Tensor) -> Tensor:
    """Unsigned angle by atan2(max(|u x v|, 1e-9), u . v) (TUM: finite gradients when collinear)."""
    cross = torch.linalg.cross(u, v).norm(dim=-1).clamp(min=1e-9)
    return torch.atan2(cross, (u * v).sum(-1))


def fit_scaling_factors(model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """Fit every scaling factor of a GemNet ``model`` as GemNet does (§4) and mark it fitted.

    All factors are reset to 1, then fitted one at a time in construction order: with earlier factors fixed,
    forward passes (eval mode, no gradients) over ``batches`` accumulate ``mean_features(var_rows(ref)) * n`` and
    the same for the factor's output (n = output rows, unbiased variances); the factor becomes
    ``s * sqrt(var_ref / var_out)``, so the output's mean per-feature variance matches the reference's.
    Each batch's graph indices are built once and kept for all factors (memory: the triplet/quadruplet index
    lists of every batch). Returns ``{factor name: value}``."""
    batches = list(batches)
    if not batches:
        raise ValueError("fit_scaling_factors: no batches given")
    factors = model.scale_factors()
    was_training = model.training
    model.eval()
    for sf in factors:
        sf.scale.fill_(1.0)
    fitted: dict[str, float] = {}
    caches: list[dict[str, Any]] = [{} for _ in batches]  # graph indices, built once per batch
    try:
        for sf in factors:
            acc = {"in": 0.0, "out": 0.0}

            def observe(ref: Tensor, out: Tensor, acc: dict[str, float] = acc) -> None:
                n = out.shape[0]
                if n < 2 or ref.shape[0] < 2:
                    return
                acc["in"] += float(torch.var(ref, dim=0).mean()) * n
                acc["out"] += float(torch.var(out, dim=0).mean()) * n

            sf.observer = observe
            with torch.no_grad():
                for b, cache in zip(batches, caches, strict=True):
                    model._predict(b, cache)
            sf.observer = None
            if acc["out"] <= 0 or acc["in"] <= 0:
                raise ValueError(f"fit_scaling_factors: {sf.name} saw no variance on the given batches "
                                 "(too few edges/triplets/quadruplets?); give larger batches")
            sf.scale.mul_(math.sqrt(acc["in"] / acc["out"]))
            fitted[sf.name] = float(sf.scale)
    finally:
        for sf in factors:
            sf.observer = None
        model.train(was_training)
    model.scales_fitted.fill_(True)
    return fitted


def activation_variance_ratios(model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """log2 of var(output) / var(reference) of every scaling factor's layer with the model's current factors
    (fitted, or all 1 for none): the quantity §4's factors set to 0 on the batches they are fitted on.
    Same statistic as :func:`fit_scaling_factors` (mean per-feature unbiased variance, weighted by rows), all
    factors observed in the same passes (eval mode, no gradients). Returns ``{factor name: log2 ratio}``."""
    factors = model.scale_factors()
    acc = {sf.name: {"in": 0.0, "out": 0.0} for sf in factors}

    def observer(name: str) -> Callable[[Tensor, Tensor], None]:
        def observe(ref: Tensor, out: Tensor) -> None:
            n = out.shape[0]
            if n >= 2 and ref.shape[0] >= 2:
                acc[name]["in"] += float(torch.var(ref, dim=0).mean()) * n
                acc[name]["out"] += float(torch.var(out, dim=0).mean()) * n
        return observe

    was_training = model.training
    model.eval()
    try:
        for sf in factors:
            sf.observer = observer(sf.name)
        with torch.no_grad():
            for b in batches:
                model._predict(b)
    finally:
        for sf in factors:
            sf.observer = None
        model.train(was_training)
    return {k: math.log2(a["out"] / a["in"]) for k, a in acc.items() if a["in"] > 0 and a["out"] > 0}


@register("gemnet_t")
class GemNetT(_GemNet):
    """GemNet-T (triplets only). Defaults: the FAENet authors' OC20 IS2RE config (their OCP fork
    ``configs/models/gemnet_t.yaml``, 23,177,216 parameters; §5).

    Args:
        num_spherical, num_radial, num_blocks: bases and depth. emb_size_*: embedding sizes (atom, edge,
        triplet, rbf/cbf projections, triplet bilinear). num_before_skip, num_after_skip, num_concat, num_atom:
        residual layers. cutoff: Å (edges of the dataset graph beyond it are dropped). envelope_exponent: p.
        rbf: "gaussian" (OCP) or "bessel" (authors). num_elements: embedding rows (Z - 1). force_head: "ocp" or
        "tum" (direct forces only). extensive: sum (True) or mean of atom energies. scale_fit_batches: batches
        ``prepare`` fits the scaling factors on (OCP: 16). allow_unfitted: train without fitted factors.
        regress_forces: "", "direct" (GemNet-dT) or "from_energy".
    """

    def __init__(self, num_spherical: int = 7, num_radial: int = 64, num_blocks: int = 5, emb_size_atom: int = 256,
                 emb_size_edge: int = 512, emb_size_trip: int = 64, emb_size_rbf: int = 64, emb_size_cbf: int = 16,
                 emb_size_bil_trip: int = 64, num_before_skip: int = 1, num_after_skip: int = 2,
                 num_concat: int = 1, num_atom: int = 3, cutoff: float = 6.0, envelope_exponent: int = 5,
                 rbf: str = "gaussian", num_elements: int = 86, force_head: str = "ocp", extensive: bool = True,
                 scale_fit_batches: int = 16, allow_unfitted: bool = False, regress_forces: str = ""):
        super().__init__(False, num_spherical, num_radial, num_blocks, emb_size_atom, emb_size_edge, emb_size_trip,
                         1, emb_size_rbf, emb_size_cbf, 1, emb_size_bil_trip, 1, num_before_skip, num_after_skip,
                         num_concat, num_atom, cutoff, cutoff, envelope_exponent, rbf, num_elements, force_head,
                         extensive, scale_fit_batches, allow_unfitted, regress_forces)


@register("gemnet_q")
class GemNetQ(_GemNet):
    """GemNet-Q (triplets + quadruplets). OCP has no GemNet-Q; defaults are GemNetT's OC20 sizes plus the
    authors' quadruplet sizes and interaction cutoff (TUM ``config.yaml``: quad 32, sbf 32, bil_quad 32,
    int_cutoff 10 Å; §5). Extra args: emb_size_quad, emb_size_sbf, emb_size_bil_quad, int_cutoff (Å; the
    b -> a links of quadruplets, taken from the dataset graph, so capped by its radius)."""

    PRESETS = _PRESETS_Q  # this file's module PRESETS are GemNet-T's (``registry.get_presets``)

    def __init__(self, num_spherical: int = 7, num_radial: int = 64, num_blocks: int = 5, emb_size_atom: int = 256,
                 emb_size_edge: int = 512, emb_size_trip: int = 64, emb_size_quad: int = 32, emb_size_rbf: int = 64,
                 emb_size_cbf: int = 16, emb_size_sbf: int = 32, emb_size_bil_trip: int = 64,
                 emb_size_bil_quad: int = 32, num_before_skip: int = 1, num_after_skip: int = 2,
                 num_concat: int = 1, num_atom: int = 3, cutoff: float = 5.0, int_cutoff: float = 10.0,
                 envelope_exponent: int = 5, rbf: str = "gaussian", num_elements: int = 86,
                 force_head: str = "ocp", extensive: bool = True, scale_fit_batches: int = 16,
                 allow_unfitted: bool = False, regress_forces: str = ""):
        super().__init__(True, num_spherical, num_radial, num_blocks, emb_size_atom, emb_size_edge, emb_size_trip,
                         emb_size_quad, emb_size_rbf, emb_size_cbf, emb_size_sbf, emb_size_bil_trip,
                         emb_size_bil_quad, num_before_skip, num_after_skip, num_concat, num_atom, cutoff,
                         int_cutoff, envelope_exponent, rbf, num_elements, force_head, extensive,
                         scale_fit_batches, allow_unfitted, regress_forces)
