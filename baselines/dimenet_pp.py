"""DimeNet++ (Gasteiger et al. 2020) as run by OCP for the FAENet paper's baselines (Tables 1, 9, 10).

Built on PyG's DimeNet++ blocks (``BesselBasisLayer``, ``SphericalBasisLayer``, ``EmbeddingBlock``,
``InteractionPPBlock``, ``OutputPPBlock``), with our own forward: PyG's ``DimeNetPlusPlus.forward`` needs
``radius_graph`` (pyg-lib) and a torch_sparse ``triplets``. Here the graph is the dataset's precomputed one
and triplets come from ``faenet.graph.triplets`` (pure torch) with ``cell_offsets``, so in periodic graphs
only the true back-track k -> j -> i with k the same image as i is dropped (OCP's rule).

Angles use edge VECTORS (periodic images included), never raw positions: for triplet k -> j -> i the
angle between ``vec_ji`` (i to j) and ``vec_kj`` (j to k), as in OCP and PyG >= 2.5 DimeNet++.

OCP details kept: output blocks' up-projection has a bias; energy = per-graph sum. OCP detaches the
positions in the angle term, so its ``-dE/dx`` ignores angular forces; that is ``detach_angles=True`` here
(in the "s2ef" preset), while the default ``False`` gives exact conservative forces.

Every gather with gradients is ``index_select``, never ``x[idx]`` (PyG's ``EmbeddingBlock`` and
``InteractionPPBlock`` are overridden for that): the backward of advanced indexing (``index_put_`` with
accumulate) adds with float atomics from several CPU threads on large tensors, so training on 2 threads was not
reproducible; ``index_select``'s backward (``index_add_``) sums in index order. Same values, same parameters.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn.inits import glorot_orthogonal
from torch_geometric.nn.models.dimenet import (
    BesselBasisLayer,
    EmbeddingBlock,
    Envelope,
    InteractionPPBlock,
    OutputPPBlock,
)
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.utils import scatter

from baselines.common import check_force_mode, edge_geometry, forces_from_energy, graph_index
from baselines.registry import register
from faenet.graph import triplets

# A size that runs on 2 CPU cores (``get_presets``); the paper's configurations are params.yaml's
# ``profiles.paper.hparams.dimenet_pp``.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"hidden_channels": 16, "out_emb_channels": 32, "num_blocks": 1, "int_emb_size": 16,
              "basis_emb_size": 4, "num_spherical": 4, "num_radial": 4, "cutoff": 6.0, "regress_forces": ""},
}


def spherical_jn(order: int, x: Tensor) -> Tensor:
    """Spherical Bessel function of the first kind ``j_order(x)`` (x > 0), by the upward recurrence
    ``j_{l+1} = (2l+1)/x j_l - j_{l-1}`` from ``j_0 = sin x / x``, ``j_1 = sin x / x^2 - cos x / x``: the same
    closed forms PyG's sympy ``spherical_bessel_formulas`` expands (Rayleigh's formula)."""
    s, c = torch.sin(x), torch.cos(x)
    prev, cur = s / x, s / x**2 - c / x
    if order == 0:
        return prev
    for n in range(1, order):
        prev, cur = cur, (2 * n + 1) / x * cur - prev
    return cur


@functools.cache
def bessel_zeros(num_spherical: int, num_radial: int) -> np.ndarray:
    """First ``num_radial`` positive zeros of ``j_l`` for l < ``num_spherical``, (n, k) float32, found by
    bisection between consecutive zeros of ``j_{l-1}`` (they interlace), as PyG's ``Jn_zeros``."""
    from scipy.optimize import brentq
    from scipy.special import spherical_jn as jn

    k, n = num_radial, num_spherical
    zeros = np.zeros((n, k), dtype=np.float32)
    zeros[0] = np.arange(1, k + 1) * np.pi
    points = np.arange(1, k + n) * np.pi
    roots = np.zeros(k + n - 1, dtype=np.float32)
    for order in range(1, n):
        for m in range(k + n - 1 - order):
            roots[m] = brentq(lambda r, o=order: jn(o, r), points[m], points[m + 1])
        points = roots.copy()
        zeros[order] = roots[:k]
    return zeros


class SphericalBasis(nn.Module):
    """DimeNet's spherical basis ``a_{l,n}(d, θ) = u(d/c) N_{l,n} j_l(z_{l,n} d / c) Y_l^0(θ)``, (T, n k).

    The same functions as PyG's ``SphericalBasisLayer`` (its bessel normalisers ``N = 1/sqrt(j_{l+1}(z)^2/2)``,
    float32 zeros ``z``, ``Y_l^0 = sqrt((2l+1)/4π) P_l(cos θ)``, envelope ``u``), evaluated numerically instead of
    through sympy: PyG builds them symbolically on every construction (~15 s for 7 x 6), which dominated
    short runs. Agreement with PyG's layer is tested (1e-6 relative: PyG's symbolic coefficients carry float32
    zeros and normalisers, so the two agree to float32 rounding, the precision DimeNet++ trains in).
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int = 5):
        super().__init__()
        from scipy.special import spherical_jn as jn

        self.num_spherical, self.num_radial, self.cutoff = num_spherical, num_radial, cutoff
        self.envelope = Envelope(envelope_exponent)
        zeros = bessel_zeros(num_spherical, num_radial)
        # PyG computes the normalisers in float32 (scipy on float32 zeros); so do we, to agree to rounding.
        norm = np.stack([1.0 / np.sqrt(np.float32(0.5) * jn(order + 1, zeros[order]).astype(np.float32) ** 2)
                         for order in range(num_spherical)]).astype(np.float64)
        self.register_buffer("zeros", torch.tensor(zeros.astype(np.float64)), persistent=False)
        self.register_buffer("norm", torch.tensor(norm), persistent=False)
        pref = [math.sqrt((2 * order + 1) / (4 * math.pi)) for order in range(num_spherical)]
        self.register_buffer("prefactor", torch.tensor(pref, dtype=torch.float64), persistent=False)

    def forward(self, dist: Tensor, angle: Tensor, idx_kj: Tensor) -> Tensor:
        d = dist / self.cutoff
        dtype = d.dtype
        zeros, norm = self.zeros.to(dtype), self.norm.to(dtype)
        rbf = torch.stack([norm[order] * spherical_jn(order, d[:, None] * zeros[order])
                           for order in range(self.num_spherical)], dim=1)  # (E, n, k)
        rbf = self.envelope(d)[:, None, None] * rbf
        # Legendre P_l(cos θ) by Bonnet's recurrence, times the Y_l^0 prefactor: (T, n)
        x = torch.cos(angle)
        legendre = [torch.ones_like(x), x]
        for order in range(1, self.num_spherical - 1):
            legendre.append(((2 * order + 1) * x * legendre[order] - order * legendre[order - 1]) / (order + 1))
        cbf = torch.stack(legendre[:self.num_spherical], dim=1) * self.prefactor.to(dtype)
        n, k = self.num_spherical, self.num_radial
        # index_select, not rbf[idx_kj]: deterministic backward (module docstring).
        return (rbf.index_select(0, idx_kj) * cbf.view(-1, n, 1)).view(-1, n * k)


class DeterministicEmbeddingBlock(EmbeddingBlock):
    """PyG ``EmbeddingBlock`` (same parameters and maths) gathering ``x[i], x[j]`` with ``index_select``, whose
    backward sums in edge order (PyG's ``x[i]`` backward uses ``index_put_`` atomics on multi-threaded CPU)."""

    def forward(self, x: Tensor, rbf: Tensor, i: Tensor, j: Tensor) -> Tensor:
        x = self.emb(x)
        rbf = self.act(self.lin_rbf(rbf))
        return self.act(self.lin(torch.cat([x.index_select(0, i), x.index_select(0, j), rbf], dim=-1)))


class DeterministicInteractionPPBlock(InteractionPPBlock):
    """PyG ``InteractionPPBlock`` (same parameters and maths) gathering ``x_kj[idx_kj]`` with ``index_select``,
    whose backward sums in triplet order (PyG's indexing backward uses ``index_put_`` atomics)."""

    def forward(self, x: Tensor, rbf: Tensor, sbf: Tensor, idx_kj: Tensor, idx_ji: Tensor) -> Tensor:
        x_ji = self.act(self.lin_ji(x))
        x_kj = self.act(self.lin_kj(x))
        rbf = self.lin_rbf2(self.lin_rbf1(rbf))
        x_kj = self.act(self.lin_down(x_kj * rbf))
        sbf = self.lin_sbf2(self.lin_sbf1(sbf))
        x_kj = x_kj.index_select(0, idx_kj) * sbf
        x_kj = scatter(x_kj, idx_ji, dim=0, dim_size=x.size(0), reduce="sum")
        x_kj = self.act(self.lin_up(x_kj))
        h = x_ji + x_kj
        for layer in self.layers_before_skip:
            h = layer(h)
        h = self.act(self.lin(h)) + x
        for layer in self.layers_after_skip:
            h = layer(h)
        return h


class OutputPPBlockWithBias(OutputPPBlock):
    """PyG ``OutputPPBlock`` with OCP's biased up-projection ``lin_up`` (PyG's has none)."""

    def __init__(self, num_radial: int, hidden_channels: int, out_emb_channels: int, out_channels: int,
                 num_layers: int, act: Any, output_initializer: str = "zeros"):
        super().__init__(num_radial, hidden_channels, out_emb_channels, out_channels, num_layers, act,
                         output_initializer)
        self.lin_up = nn.Linear(hidden_channels, out_emb_channels, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        glorot_orthogonal(self.lin_up.weight, scale=2.0)
        if self.lin_up.bias is not None:
            self.lin_up.bias.data.fill_(0)


@register("dimenet_pp")
class DimeNetPP(nn.Module):
    """DimeNet++ on the precomputed (periodic) graph.

    Directional messages ``m_ji`` on edges: embedding ``m_ji = act(W[h_i, h_j, act(W rbf(d_ji))])``, then
    ``num_blocks`` interaction blocks aggregating ``m_kj`` over triplets k -> j -> i with the spherical basis
    ``sbf(d_kj, angle_kji)``; every block's output block sums ``rbf ⊙ m`` into atoms; the energy is the
    per-graph sum. Defaults are OCP's IS2RE configuration (params.yaml ``profiles.paper.hparams.dimenet_pp``).

    Args:
        hidden_channels, out_emb_channels, int_emb_size, basis_emb_size, num_blocks: DimeNet++ sizes.
        num_spherical, num_radial, envelope_exponent: bases (``num_radial`` <= 64, PyG's limit).
        num_before_skip, num_after_skip, num_output_layers: residual/output depths.
        cutoff: Å; longer edges of the precomputed graph are ignored.
        act: activation name for PyG's resolver ("swish" in OCP).
        output_initializer: "zeros" (PyG/OCP: energy starts at 0) or "glorot_orthogonal".
        detach_angles: OCP's angle detaching (forces lose their angular part); False = exact ``-dE/dx``.
        regress_forces: "" or "from_energy".
    """

    force_modes = ("", "from_energy")
    #: Atomic numbers embedded (inclusive): PyG's ``EmbeddingBlock`` has ``Embedding(95, H)``, Z = 0..94.
    supported_z = (1, 94)

    def __init__(self, hidden_channels: int = 256, out_emb_channels: int = 192, num_blocks: int = 3,
                 int_emb_size: int = 64, basis_emb_size: int = 8, num_spherical: int = 7, num_radial: int = 6,
                 cutoff: float = 6.0, envelope_exponent: int = 5, num_before_skip: int = 1,
                 num_after_skip: int = 2, num_output_layers: int = 3, act: str = "swish",
                 output_initializer: str = "zeros", detach_angles: bool = False, regress_forces: str = ""):
        super().__init__()
        if not 1 <= num_radial <= 64:
            raise ValueError(f"DimeNetPP: num_radial must be in [1, 64] (PyG's Bessel zeros), "
                             f"got {num_radial}")
        if num_spherical < 1:
            raise ValueError(f"DimeNetPP: num_spherical must be >= 1, got {num_spherical}")
        if num_blocks < 1:
            raise ValueError(f"DimeNetPP: num_blocks must be >= 1, got {num_blocks}")
        if cutoff <= 0:
            raise ValueError(f"DimeNetPP: cutoff must be > 0 Å, got {cutoff}")
        if output_initializer not in ("zeros", "glorot_orthogonal"):
            raise ValueError(f"DimeNetPP: output_initializer={output_initializer!r} is not supported; "
                             "allowed: ['zeros', 'glorot_orthogonal']")
        self.regress_forces = check_force_mode("DimeNetPP", regress_forces, self.force_modes)
        self.cutoff = cutoff
        self.detach_angles = detach_angles
        act_fn = activation_resolver(act)
        self.rbf = BesselBasisLayer(num_radial, cutoff, envelope_exponent)
        self.sbf = SphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.emb = DeterministicEmbeddingBlock(num_radial, hidden_channels, act_fn)
        self.output_blocks = nn.ModuleList([
            OutputPPBlockWithBias(num_radial, hidden_channels, out_emb_channels, 1, num_output_layers, act_fn,
                                  output_initializer)
            for _ in range(num_blocks + 1)])
        self.interaction_blocks = nn.ModuleList([
            DeterministicInteractionPPBlock(hidden_channels, int_emb_size, basis_emb_size, num_spherical,
                                            num_radial, num_before_skip, num_after_skip, act_fn)
            for _ in range(num_blocks)])

    def reset_parameters(self) -> None:
        self.rbf.reset_parameters()
        self.emb.reset_parameters()
        for block in [*self.output_blocks, *self.interaction_blocks]:
            block.reset_parameters()

    def forward(self, data: Any) -> dict[str, Tensor]:
        """``{"energy": (B,), "forces": (N, 3) if regress_forces}`` for a PyG batch of records."""
        with torch.set_grad_enabled(torch.is_grad_enabled() or bool(self.regress_forces)):
            if self.regress_forces == "from_energy" and not data.pos.requires_grad:
                data.pos.requires_grad_(True)
            batch, num_graphs = graph_index(data)
            n = data.pos.shape[0]
            edge_index, offsets, vec, dist = edge_geometry(data, self.cutoff)
            j, i = edge_index
            _, _, _, idx_kj, idx_ji = triplets(edge_index, n, offsets)
            v = vec.detach() if self.detach_angles else vec
            v_ji, v_kj = v.index_select(0, idx_ji), v.index_select(0, idx_kj)  # i -> j, j -> k (image-aware)
            angle = torch.atan2(torch.linalg.cross(v_ji, v_kj).norm(dim=-1), (v_ji * v_kj).sum(dim=-1))
            rbf = self.rbf(dist)
            sbf = self.sbf(dist, angle, idx_kj)
            x = self.emb(data.atomic_numbers.long(), rbf, i, j)
            p = self.output_blocks[0](x, rbf, i, num_nodes=n)
            for interaction, output in zip(self.interaction_blocks, self.output_blocks[1:], strict=True):
                x = interaction(x, rbf, sbf, idx_kj, idx_ji)
                p = p + output(x, rbf, i, num_nodes=n)
            energy = scatter(p, batch, dim=0, dim_size=num_graphs, reduce="sum").squeeze(-1)
            out = {"energy": energy}
            if self.regress_forces == "from_energy":
                out["forces"] = forces_from_energy(energy, data.pos, self.training)
        return out
