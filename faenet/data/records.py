"""The one graph schema every dataset in this project yields.

A record is a ``torch_geometric.data.Data`` with these fields (units: Å, eV, eV/Å):

==================  ==============  =========================================================
field               shape, dtype    meaning
==================  ==============  =========================================================
``pos``             (N, 3) float32  Cartesian positions, Å (IS2RE: the initial structure)
``atomic_numbers``  (N,) int64      Z
``natoms``          int             N
``tags``            (N,) int64      OC20 tags: 0 sub-surface, 1 surface, 2 adsorbate; -1 molecule
``fixed``           (N,) int64      1 = atom held fixed during relaxation
``cell``            (1, 3, 3) f32   lattice vectors as rows, Å; all zeros for a molecule
``pbc``             (1, 3) bool     periodic directions (slabs: x, y)
``edge_index``      (2, E) int64    row 0 = source j (neighbour), row 1 = target i (centre)
``cell_offsets``    (E, 3) int64    lattice image of j: ``vec_ij = pos[j] + offsets @ cell - pos[i]``
``y``               float           target energy, eV (IS2RE: relaxed adsorption energy;
                                    S2EF: total energy referenced to slab + gas references)
``force``           (N, 3) float32  S2EF only: forces, eV/Å (unconstrained values)
``sid``             int             system id; ``fid``: frame index along a trajectory (S2EF)
==================  ==============  =========================================================

Messages flow j -> i (PyG ``source_to_target``): the message from neighbour j is summed at i.
Under PyG batching, ``cell`` becomes (B, 3, 3) and ``natoms`` (B,).
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data

REQUIRED_FIELDS = ("pos", "atomic_numbers", "natoms", "tags", "fixed", "cell", "pbc",
                   "edge_index", "cell_offsets", "y")

# OC20 tag codes.
TAG_SUBSURFACE, TAG_SURFACE, TAG_ADSORBATE, TAG_MOLECULE = 0, 1, 2, -1


def validate_record(data: Data, where: str = "record") -> None:
    """Raise ``ValueError`` naming the field if ``data`` breaks the schema above."""
    missing = [f for f in REQUIRED_FIELDS if getattr(data, f, None) is None]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}; a record needs {list(REQUIRED_FIELDS)}")
    n = int(data.natoms)
    if tuple(data.pos.shape) != (n, 3):
        raise ValueError(f"{where}: pos has shape {tuple(data.pos.shape)}, expected ({n}, 3)")
    if not torch.isfinite(data.pos).all():
        raise ValueError(f"{where}: pos contains NaN or inf; regenerate or drop this structure")
    if data.atomic_numbers.shape != (n,) or data.tags.shape != (n,):
        raise ValueError(f"{where}: atomic_numbers/tags must have shape ({n},)")
    if tuple(data.cell.shape) != (1, 3, 3):
        raise ValueError(f"{where}: cell has shape {tuple(data.cell.shape)}, expected (1, 3, 3)")
    e = data.edge_index.shape[1]
    if tuple(data.cell_offsets.shape) != (e, 3):
        raise ValueError(f"{where}: cell_offsets has shape {tuple(data.cell_offsets.shape)}, expected ({e}, 3)")
    y = torch.as_tensor(data.y)
    if not torch.isfinite(y).all():
        raise ValueError(f"{where}: target y is NaN or inf")
