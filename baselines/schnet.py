"""SchNet (Schütt et al. 2017) as run by OCP for the FAENet paper's baselines (Tables 1, 9, 10, 11, 12).

Built on PyG's ``torch_geometric.nn.models.SchNet`` (embedding, ``InteractionBlock``/``CFConv``,
``GaussianSmearing``, readout MLP): this class subclasses it and replaces only ``forward``, because PyG's
own ``radius_graph`` needs pyg-lib. Like OCP's ``SchNetWrap`` with ``use_pbc=True`` it reads the
precomputed graph: distances are ``|faenet.graph.edge_vectors(...)|``, periodic images included.
Energy = per-graph sum of atomic contributions (OCP); forces ``from_energy`` = ``-dE/dpos``.

The helpers every baseline uses live in ``baselines.common``; they are re-exported here so baseline files
written as ``from baselines.schnet import check_force_mode, edge_geometry, graph_index`` keep working.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn.models import SchNet as PyGSchNet

from baselines.common import check_force_mode, edge_geometry, forces_from_energy, graph_index
from baselines.registry import register

# Old home of the helpers: keep ``from baselines.schnet import ...`` working.
__all__ = ["PRESETS", "SchNet", "check_force_mode", "edge_geometry", "forces_from_energy", "graph_index"]

# A size that runs on 2 CPU cores (``get_presets``); the paper's configurations are params.yaml's
# ``profiles.paper.hparams.schnet``.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"hidden_channels": 32, "num_filters": 32, "num_interactions": 2, "num_gaussians": 16,
              "cutoff": 6.0, "regress_forces": ""},
}


class _PrecomputedGraphOnly(nn.Module):
    """Stands in for PyG's ``RadiusInteractionGraph``: this model only reads the dataset's graph."""

    def forward(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        raise RuntimeError("baselines.schnet.SchNet is called as model(batch) with a precomputed graph; "
                           "PyG's forward(z, pos, batch) would need radius_graph (pyg-lib)")


@register("schnet")
class SchNet(PyGSchNet):
    """OCP SchNet on the precomputed (periodic) graph.

    ``h_i^0 = emb(z_i)``; ``h <- h + Interaction(h, e(d), C(d))`` with Gaussian distance expansion ``e`` and
    cosine cutoff ``C`` (PyG ``CFConv``); atomic energies ``lin2(ssp(lin1(h_i)))`` summed per graph.
    Defaults are OCP's IS2RE configuration (params.yaml ``profiles.paper.hparams.schnet.is2re``).

    Args:
        hidden_channels, num_filters, num_interactions, num_gaussians: PyG SchNet sizes.
        cutoff: Å; longer edges of the precomputed graph are ignored.
        readout: "add" (OCP, extensive energy) or "mean".
        regress_forces: "" (energy only) or "from_energy" (``-dE/dpos``, OCP S2EF).
    """

    force_modes = ("", "from_energy")
    #: Atomic numbers embedded (inclusive): PyG's ``Embedding(100, H)`` has rows Z = 0..99 (0 = padding).
    supported_z = (1, 99)

    def __init__(self, hidden_channels: int = 384, num_filters: int = 128, num_interactions: int = 4,
                 num_gaussians: int = 100, cutoff: float = 6.0, readout: str = "add",
                 regress_forces: str = ""):
        if readout not in ("add", "mean"):
            raise ValueError(f"SchNet: readout={readout!r} is not supported; allowed: ['add', 'mean']")
        if cutoff <= 0:
            raise ValueError(f"SchNet: cutoff must be > 0 Å, got {cutoff}")
        super().__init__(hidden_channels=hidden_channels, num_filters=num_filters,
                         num_interactions=num_interactions, num_gaussians=num_gaussians, cutoff=cutoff,
                         interaction_graph=_PrecomputedGraphOnly(), readout=readout)
        self.regress_forces = check_force_mode("SchNet", regress_forces, self.force_modes)

    def forward(self, data: Any) -> dict[str, Tensor]:  # type: ignore[override]
        """``{"energy": (B,), "forces": (N, 3) if regress_forces}`` for a PyG batch of records."""
        with torch.set_grad_enabled(torch.is_grad_enabled() or bool(self.regress_forces)):
            if self.regress_forces == "from_energy" and not data.pos.requires_grad:
                data.pos.requires_grad_(True)
            batch, num_graphs = graph_index(data)
            edge_index, _, _, dist = edge_geometry(data, self.cutoff)
            h = self.embedding(data.atomic_numbers.long())
            edge_attr = self.distance_expansion(dist)
            for interaction in self.interactions:
                h = h + interaction(h, edge_index, dist, edge_attr)
            h = self.lin2(self.act(self.lin1(h)))
            energy = self.readout(h, batch, dim=0, dim_size=num_graphs).squeeze(-1)
            out = {"energy": energy}
            if self.regress_forces == "from_energy":
                out["forces"] = forces_from_energy(energy, data.pos, self.training)
        return out
