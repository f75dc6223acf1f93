"""ForceNet (Hu et al. 2021, arXiv 2103.01436) after OCP's ``forcenet.py``: FAENet paper Tables 1, 9, 10, 11.

A message-passing GNN on RELATIVE POSITION VECTORS, deliberately not rotation-invariant: edge features
are the unit vector ``v̂_ij`` (through real spherical harmonics) and radius-corrected distances; rotation
symmetry is only learnt, from data augmentation (its paper) or imposed by frame averaging (FAENet Table 11:
ForceNet, ForceNet-DA, ForceNet-SFA). Forces come from a direct head (OCP), or from ``-dE/dpos`` here.

Pieces (OCP names): atom features ``h⁰ = Lin(Basis(atom_map[z]))`` with 9 element properties
(``feat="full"``) or an embedding (``"simple"``); edge basis (default ``sphallmul``: outer product of
Y_n^m(v̂), n < max_n, with a linear map of sines of the 4 distance features); interaction
``h <- h + mlp_trans(Σ_j x_j ⊙ W_ji + c ⊙ x_i)`` with filter ``W_ji = mlp_edge([ê_ij, h_j, h_i]) · w_ij``,
``w_ij = cos(π d_ij / (2 cutoff))``; heads ``g = act(Lin(h))``, ``E = Lin(Σ_i g_i)``, ``F_i = decoder(g_i)``.

Deliberate differences from OCP (see README): per-graph ``GraphNorm`` instead of ``BatchNorm1d`` (a graph's
prediction must not depend on its batch mates), spherical harmonics in torch (OCP: SciPy on CPU, no gradient;
same functions, so ``from_energy`` works), element properties from mendeleev with missing values filled
(OCP: NaN for some elements), no ablation switches.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import GraphNorm, MessagePassing
from torch_geometric.utils import scatter

from baselines.common import check_force_mode, edge_geometry, forces_from_energy, graph_index
from baselines.registry import register

# A size that runs on 2 CPU cores (``get_presets``); the paper's configurations are params.yaml's
# ``profiles.paper.hparams.forcenet``.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"hidden_channels": 32, "num_interactions": 2, "cutoff": 6.0, "num_freqs": 8,
              "decoder_hidden_channels": 32, "regress_forces": ""},
}

SPH_BASES = tuple(f"sph{opt}{how}" for opt in ("all", "sine", "cosine") for how in ("mul", "cat"))
SMEAR_BASES = ("powersine", "powercosine", "fouriersine", "gauss", "raw")
MAX_Z = 100  # element tables cover Z = 0..100, like OCP


class ShiftedSoftplus(nn.Module):
    """``softplus(x) - ln 2`` (OCP "ssp")."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(x) - math.log(2.0)


_ACTIVATIONS = {"swish": nn.SiLU, "ssp": ShiftedSoftplus, "relu": nn.ReLU, "sp": nn.Softplus, "elu": nn.ELU,
                "tanh": nn.Tanh}


def activation(name: str) -> nn.Module:
    """OCP ``Act`` names (without the leaky variants)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"ForceNet: activation {name!r} is not supported; allowed: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


@functools.lru_cache(maxsize=1)
def element_tables() -> tuple[Tensor, Tensor]:
    """``atom_map`` (101, 9) in [0, 1] and atomic radii (101,) in Å, indexed by Z, from mendeleev.

    Columns (OCP's ``CONTINUOUS_EMBEDDINGS`` order): group, period, Pauling electronegativity, covalent
    radius (Cordero), valence electrons, first ionisation energy, electron affinity, block (s/p/d/f = 1..4),
    atomic volume (weight / density, cm³/mol; gases at STP left missing). Each column is min-max scaled to
    [0, 1]; missing values become the column mean. Radii: mendeleev ``atomic_radius`` (pm, same values as
    OCP's ``ATOMIC_RADII``), else the covalent radius, else 1.5 Å.
    """
    from mendeleev.fetch import fetch_table  # deferred: ~1 s, only ForceNet needs it

    el = fetch_table("elements").set_index("atomic_number")
    ie = fetch_table("ionizationenergies")
    ie1 = ie[ie["ion_charge"] == 0].set_index("atomic_number")["ionization_energy"]
    z = torch.arange(1, MAX_Z + 1)
    block_code = {"s": 1.0, "p": 2.0, "d": 3.0, "f": 4.0}
    rows = []
    for zi in z.tolist():
        e = el.loc[zi]
        block = str(e["block"])
        # f-block: no IUPAC group; number them 4..17 along the row (Ce..Lu, Th..Lr) as OCP's table does.
        f_index = float(zi - (54 if zi < 86 else 86))
        group = float(e["group_id"]) if e["group_id"] == e["group_id"] else f_index
        valence = {"s": 2.0 if zi == 2 else group, "p": group - 10.0, "d": group, "f": 2.0}[block]
        density = float(e["density"]) if e["density"] == e["density"] else float("nan")
        volume = float(e["atomic_weight"]) / density if density > 0.1 else float("nan")
        rows.append([group, float(e["period"]), float(e["en_pauling"]), float(e["covalent_radius_cordero"]),
                     valence, float(ie1.get(zi, float("nan"))), float(e["electron_affinity"]),
                     block_code[block], volume])
    props = torch.tensor(rows, dtype=torch.float64)
    lo, hi = torch.nanquantile(props, 0.0, dim=0), torch.nanquantile(props, 1.0, dim=0)
    props = (props - lo) / (hi - lo)
    col_mean = torch.nanmean(props, dim=0).expand_as(props)
    props = torch.where(torch.isnan(props), col_mean, props)
    atom_map = torch.cat([torch.zeros(1, 9, dtype=torch.float64), props])  # Z = 0: padding row
    radius = torch.tensor([float(el.loc[zi, "atomic_radius"]) for zi in z.tolist()], dtype=torch.float64)
    covalent = torch.tensor([float(el.loc[zi, "covalent_radius_cordero"]) for zi in z.tolist()],
                            dtype=torch.float64)
    radius = torch.where(torch.isnan(radius), covalent, radius)
    radius = torch.where(torch.isnan(radius), torch.full_like(radius, 150.0), radius) / 100.0
    return atom_map.float(), torch.cat([torch.full((1,), 1.5, dtype=torch.float64), radius]).float()


def real_spherical_harmonics(unit: Tensor, max_n: int, option: str = "all") -> Tensor:
    """Real and imaginary parts of the complex Y_n^m(v̂), n < max_n, 0 <= m <= n, in OCP's column order.

    Output ``[Re Y_n^0 ..., Re Y_n^{m>0} ..., Im Y_n^{m>0} ...]`` ((n, m) ascending in each group), the same
    functions as ``scipy.special.sph_harm_y`` (Condon-Shortley phase) that OCP's ``SphericalSmearing`` calls.
    Computed as polynomials of (x, y, z): ``Y_n^m = N_nm (-1)^m Q_n^m(z) (x + iy)^m`` with
    ``Q_n^m = d^m P_n/dz^m``, so it is differentiable everywhere. ``option``: "all", "sine" (odd n) or
    "cosine" (even n).
    """
    x, y, zc = unit.unbind(-1)
    re_m, im_m = [torch.ones_like(x)], [torch.zeros_like(x)]  # (x + iy)^m
    for _ in range(1, max_n):
        re, im = re_m[-1], im_m[-1]
        re_m.append(re * x - im * y)
        im_m.append(re * y + im * x)
    keep_n = {"all": lambda n: True, "sine": lambda n: n % 2 == 1, "cosine": lambda n: n % 2 == 0}[option]
    zero_m, re_pos, im_pos = [], [], []
    for m in range(max_n):
        # Q_n^m for n = m .. max_n-1 by the associated Legendre recurrence without the sin^m factor.
        q_prev, q = None, torch.full_like(zc, float(math.prod(range(1, 2 * m, 2))))
        for n in range(m, max_n):
            if n == m + 1:
                q_prev, q = q, (2 * m + 1) * zc * q
            elif n > m + 1:
                q_prev, q = q, ((2 * n - 1) * zc * q - (n + m - 1) * q_prev) / (n - m)
            if not keep_n(n):
                continue
            norm = (-1) ** m * math.sqrt((2 * n + 1) / (4 * math.pi)
                                         * math.factorial(n - m) / math.factorial(n + m))
            if m == 0:
                zero_m.append((n, norm * q))
            else:
                re_pos.append((n, m, norm * q * re_m[m]))
                im_pos.append((n, m, norm * q * im_m[m]))
    cols = ([c for _, c in sorted(zero_m, key=lambda t: t[0])]
            + [c for *_, c in sorted(re_pos, key=lambda t: (t[0], t[1]))]
            + [c for *_, c in sorted(im_pos, key=lambda t: (t[0], t[1]))])
    return torch.stack(cols, dim=-1)


def sph_dim(max_n: int, option: str) -> int:
    ns = [n for n in range(max_n) if option == "all" or (n % 2 == 1) == (option == "sine")]
    return sum(2 * n + 1 for n in ns)


class Smearing(nn.Module):
    """OCP per-feature expansions: ``sin/cos(1.1^k x)`` (power), ``sin(k x)`` (fourier), Gaussians on [0, 1];
    output column ``k * in_features + c``."""

    def __init__(self, in_features: int, num_freqs: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "gauss":
            centres = torch.linspace(0.0, 1.0, num_freqs)
            self.coeff = -0.5 / float(centres[1] - centres[0]) ** 2 if num_freqs > 1 else -0.5
            grid = centres
        else:
            grid = torch.pow(1.1, torch.arange(num_freqs, dtype=torch.float64)).float() if kind.startswith(
                "power") else torch.arange(num_freqs, dtype=torch.float32)
        self.register_buffer("grid", grid.view(-1, 1).repeat(1, in_features).view(1, -1), persistent=False)
        self.out_dim = in_features * num_freqs

    def forward(self, x: Tensor) -> Tensor:
        x = x.repeat(1, self.grid.shape[1] // x.shape[1])
        if self.kind == "gauss":
            return torch.exp(self.coeff * (x - self.grid) ** 2)
        x = x * self.grid
        return torch.cos(x) if self.kind == "powercosine" else torch.sin(x)


class EdgeBasis(nn.Module):
    """OCP ``Basis`` for raw features ``[v̂ (3), distances (in_features - 3)]`` (or any features when not sph).

    ``sph*mul``: flatten(Y(v̂) ⊗ Lin(powersine(distances))) with ``in_features - 3`` linear outputs;
    ``sph*cat``: [Y(v̂), powersine(distances)]; otherwise a per-feature smearing of all features.
    """

    def __init__(self, in_features: int, num_freqs: int, basis: str, max_n: int):
        super().__init__()
        self.basis, self.max_n = basis, max_n
        if basis in SPH_BASES:
            self.sph_option = basis[3:-3]
            n_sph = sph_dim(max_n, self.sph_option)
            if n_sph == 0:
                raise ValueError(f"ForceNet: basis={basis!r} with max_n={max_n} has no spherical harmonics "
                                 "(sine keeps odd degrees only): use max_n >= 2")
            self.sine = Smearing(in_features - 3, num_freqs, "powersine")
            if basis.endswith("mul"):
                self.lin = nn.Linear(self.sine.out_dim, in_features - 3)
                self.out_dim = (in_features - 3) * n_sph
            else:
                self.out_dim = n_sph + self.sine.out_dim
        elif basis == "raw":
            self.out_dim = in_features
        else:
            self.smearing = Smearing(in_features, num_freqs, basis)
            self.out_dim = self.smearing.out_dim

    def forward(self, raw: Tensor) -> Tensor:
        if self.basis in SPH_BASES:
            sph = real_spherical_harmonics(raw[:, :3], self.max_n, self.sph_option)
            sine = self.sine(raw[:, 3:])
            if self.basis.endswith("cat"):
                return torch.cat([sph, sine], dim=1)
            return torch.einsum("ek,ej->ekj", sph, self.lin(sine)).flatten(1)
        return raw if self.basis == "raw" else self.smearing(raw)


class NormMLP(nn.Module):
    """Sequence of layers where ``GraphNorm`` layers get the graph index (per-graph statistics)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        for layer in self.layers:
            x = layer(x, batch, num_graphs) if isinstance(layer, GraphNorm) else layer(x)
        return x


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                m.bias.data.fill_(0)


class ForceNetInteraction(MessagePassing):
    """``h_i' = mlp_trans(Σ_j lin(h)_j ⊙ W_ji + center_W ⊙ lin(h)_i)``,
    ``W_ji = mlp_edge([ê_ij, h_j, h_i]) w_ij``."""

    def __init__(self, hidden: int, basis_dim: int, depth_mlp_edge: int, depth_mlp_node: int, act: str):
        super().__init__(aggr="add")
        self.lin_basis = nn.Linear(basis_dim, hidden)
        edge = [nn.Linear(3 * hidden, hidden)]
        for _ in range(depth_mlp_edge):
            edge += [activation(act), nn.Linear(hidden, hidden)]
        if depth_mlp_edge == 0:
            edge.append(GraphNorm(hidden))  # OCP: "needs normalisation, else unstable"
        self.mlp_edge = NormMLP(edge)
        self.lin = nn.Linear(hidden, hidden)
        trans: list[nn.Module] = [nn.Linear(hidden, hidden)]
        for _ in range(depth_mlp_node):
            trans += [GraphNorm(hidden), activation(act), nn.Linear(hidden, hidden)]
        if depth_mlp_node == 0:
            trans.append(GraphNorm(hidden))
        self.mlp_trans = NormMLP(trans)
        self.center_W = nn.Parameter(torch.empty(1, hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _xavier(self)
        for m in self.modules():
            if isinstance(m, GraphNorm):
                m.reset_parameters()
        nn.init.xavier_uniform_(self.center_W)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, edge_weight: Tensor, batch: Tensor,
                num_graphs: int) -> Tensor:
        j, i = edge_index
        # index_select, not h[j]: the backward of advanced indexing (index_put_ with accumulate) adds float
        # atomics from several CPU threads once E * hidden >= 32768, in a thread-timing-dependent order, so
        # training was not reproducible; index_select's backward (index_add_) sums in edge order.
        emb = torch.cat([self.lin_basis(edge_attr), h.index_select(0, j), h.index_select(0, i)], dim=1)
        w = self.mlp_edge(emb, batch[i], num_graphs) * edge_weight.unsqueeze(-1)
        x = self.lin(h)
        x = self.propagate(edge_index, x=x, W=w) + self.center_W * x
        return self.mlp_trans(x, batch, num_graphs)

    def message(self, x_j: Tensor, W: Tensor) -> Tensor:
        return x_j * W


@register("forcenet")
class ForceNet(nn.Module):
    """ForceNet on the precomputed (periodic) graph; NOT rotation-invariant by design.

    Defaults are OCP's configuration (OCP fn_forceonly.yml / the authors' fork; params.yaml
    ``profiles.paper.hparams.forcenet``; S2EF adds the direct force head).

    Args:
        hidden_channels, num_interactions: width and depth of message passing.
        cutoff: Å; longer edges of the precomputed graph are ignored; edge weight ``cos(π d / (2 cutoff))``.
        feat: "full" (9 element properties through a basis) or "simple" (``Embedding(100, H)``).
        num_freqs: frequencies per feature in the sine/Gaussian expansions.
        max_n: spherical harmonics degrees n < max_n (sph bases).
        basis: one of ``SPH_BASES`` (default "sphallmul") or ``SMEAR_BASES``.
        depth_mlp_edge, depth_mlp_node: hidden layers of the filter and node-update MLPs.
        activation_str, decoder_activation_str: OCP activation names ("swish", "ssp", ...).
        decoder_hidden_channels: width of the output heads (None: ``hidden_channels``).
        decoder_type: "mlp" or "linear" force head.
        regress_forces: "", "direct" (OCP's force head) or "from_energy" (``-dE/dpos``).
    """

    force_modes = ("", "direct", "from_energy")
    #: Atomic numbers embedded (inclusive) by both ``feat`` modes: "simple" is ``Embedding(MAX_Z, H)`` (Z < 100),
    #: "full" the element tables of Z = 0..MAX_Z.
    supported_z = (1, MAX_Z - 1)

    def __init__(self, hidden_channels: int = 512, num_interactions: int = 5, cutoff: float = 6.0,
                 feat: str = "full", num_freqs: int = 50, max_n: int = 3, basis: str = "sphallmul",
                 depth_mlp_edge: int = 2, depth_mlp_node: int = 1, activation_str: str = "swish",
                 decoder_hidden_channels: int | None = None, decoder_type: str = "mlp",
                 decoder_activation_str: str = "swish", regress_forces: str = ""):
        super().__init__()
        if feat not in ("full", "simple"):
            raise ValueError(f"ForceNet: feat={feat!r} is not supported; allowed: ['full', 'simple']")
        if basis not in SPH_BASES + SMEAR_BASES:
            raise ValueError(f"ForceNet: basis={basis!r} is not supported; "
                             f"allowed: {list(SPH_BASES + SMEAR_BASES)}")
        if decoder_type not in ("mlp", "linear"):
            raise ValueError(f"ForceNet: decoder_type={decoder_type!r} is not supported; "
                             "allowed: ['mlp', 'linear']")
        if cutoff <= 0:
            raise ValueError(f"ForceNet: cutoff must be > 0 Å, got {cutoff}")
        if max_n < 1 or num_freqs < 1 or depth_mlp_edge < 0 or depth_mlp_node < 0:
            raise ValueError(f"ForceNet: need max_n >= 1, num_freqs >= 1 and depths >= 0; got max_n={max_n}, "
                             f"num_freqs={num_freqs}, depth_mlp_edge={depth_mlp_edge}, "
                             f"depth_mlp_node={depth_mlp_node}")
        self.regress_forces = check_force_mode("ForceNet", regress_forces, self.force_modes)
        self.cutoff, self.feat, self.basis = cutoff, feat, basis
        hidden = hidden_channels
        out_dim = decoder_hidden_channels or hidden_channels
        atom_map, radii = element_tables()
        self.register_buffer("atom_map", atom_map.clone(), persistent=False)  # clone: the tables are cached
        self.register_buffer("atom_radii", radii.clone(), persistent=False)
        if feat == "simple":
            self.embedding: nn.Module = nn.Embedding(MAX_Z, hidden)
        else:
            node_basis = "powersine" if basis in SPH_BASES else basis
            node_smear = EdgeBasis(9, num_freqs, node_basis, max_n)
            self.embedding = nn.Sequential(node_smear, nn.Linear(node_smear.out_dim, hidden))
        self.basis_fun = EdgeBasis(7, num_freqs, basis, max_n)
        self.interactions = nn.ModuleList([
            ForceNetInteraction(hidden, self.basis_fun.out_dim, depth_mlp_edge, depth_mlp_node,
                                activation_str)
            for _ in range(num_interactions)])
        self.lin = nn.Linear(hidden, out_dim)
        self.activation = activation(activation_str)
        if decoder_type == "mlp":
            dec = [nn.Linear(out_dim, out_dim), GraphNorm(out_dim), activation(decoder_activation_str),
                   nn.Linear(out_dim, 3)]
        else:
            dec = [nn.Linear(out_dim, 3)]
        self.decoder = NormMLP(dec)
        self.energy_mlp = nn.Linear(out_dim, 1)
        _xavier(self.decoder)

    def _edge_features(self, data: Any, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw edge features ``[v̂, (d, d - r_j, d - r_i, d - r_j - r_i) / cutoff]`` (distances >= 1e-3)."""
        edge_index, _, vec, dist = edge_geometry(data, self.cutoff)
        j, i = edge_index
        unit = vec / dist.unsqueeze(-1)
        rj, ri = self.atom_radii[z[j]].to(dist.dtype), self.atom_radii[z[i]].to(dist.dtype)
        dists = torch.stack([dist, dist - rj, dist - ri, dist - rj - ri], dim=1) / self.cutoff
        dists = dists.clamp(min=1e-3)
        if self.basis == "gauss":
            unit = (unit + 1) / 2  # Gaussians live on [0, 1]
        weight = torch.cos(0.5 * math.pi * dist / self.cutoff)
        return edge_index, torch.cat([unit, dists], dim=1), weight

    def forward(self, data: Any) -> dict[str, Tensor]:
        """``{"energy": (B,), "forces": (N, 3) if regress_forces}`` for a PyG batch of records."""
        with torch.set_grad_enabled(torch.is_grad_enabled() or self.regress_forces == "from_energy"):
            if self.regress_forces == "from_energy" and not data.pos.requires_grad:
                data.pos.requires_grad_(True)
            batch, num_graphs = graph_index(data)
            z = data.atomic_numbers.long()
            if self.feat == "simple":
                h = self.embedding(z)
            else:
                h = self.embedding(self.atom_map[z].to(data.pos.dtype))
            edge_index, raw, weight = self._edge_features(data, z)
            edge_attr = self.basis_fun(raw)
            for interaction in self.interactions:
                h = h + interaction(h, edge_index, edge_attr, weight, batch, num_graphs)
            g = self.activation(self.lin(h))
            energy = self.energy_mlp(scatter(g, batch, dim=0, dim_size=num_graphs, reduce="sum")).squeeze(-1)
            out = {"energy": energy}
            if self.regress_forces == "direct":
                out["forces"] = self.decoder(g, batch, num_graphs)
            elif self.regress_forces == "from_energy":
                out["forces"] = forces_from_energy(energy, data.pos, self.training)
        return out
