"""Helpers every baseline here uses (and a user's baseline file may import): ``graph_index``, ``edge_geometry``,
``forces_from_energy`` and ``check_force_mode``. Registers no model; ``baselines.schnet`` re-exports these names
for baseline files written against the old location.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from faenet.graph import edge_vectors


def check_force_mode(model_name: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` naming both."""
    if value not in allowed:
        raise ValueError(f"{model_name}: regress_forces={value!r} is not supported; allowed: {list(allowed)}")
    return value


def graph_index(data: Any) -> tuple[Tensor, int]:
    """``(batch, num_graphs)`` of a PyG ``Batch``; a single record (no ``batch``) is one graph."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.pos.shape[0], dtype=torch.long, device=data.pos.device), 1
    num_graphs = getattr(data, "num_graphs", None)
    return batch, int(num_graphs) if num_graphs is not None else int(batch.max()) + 1


def edge_geometry(data: Any, cutoff: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``edge_index, cell_offsets, vec, dist`` of the precomputed graph, edges longer than ``cutoff`` dropped.

    ``vec_ij = pos[j] + offsets @ cell - pos[i]`` (``faenet.graph.edge_vectors``), so periodic images count
    and gradients flow to ``data.pos``. The dataset graph may be built at a larger cutoff than the model's.
    """
    edge_index, offsets = data.edge_index, data.cell_offsets
    vec = edge_vectors(data.pos, edge_index, offsets, data.cell, graph_index(data)[0])
    dist = vec.norm(dim=-1)
    keep = dist <= cutoff
    if not bool(keep.all()):
        edge_index, offsets, vec, dist = edge_index[:, keep], offsets[keep], vec[keep], dist[keep]
    return edge_index, offsets, vec, dist


def forces_from_energy(energy: Tensor, pos: Tensor, training: bool) -> Tensor:
    """``F = -dE/dpos`` (conservative forces); keeps the graph in training so force losses backpropagate."""
    (grad,) = torch.autograd.grad(energy, pos, grad_outputs=torch.ones_like(energy), create_graph=training)
    return -grad
