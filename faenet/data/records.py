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

import math

import torch
from torch_geometric.data import Data

REQUIRED_FIELDS = ("pos", "atomic_numbers", "natoms", "tags", "fixed", "cell", "pbc",
                   "edge_index", "cell_offsets", "y")

# OC20 tag codes.
TAG_SUBSURFACE, TAG_SURFACE, TAG_ADSORBATE, TAG_MOLECULE = 0, 1, 2, -1

#: Atomic numbers a record may carry (the known elements); each model narrows this (``supported_z``).
MIN_ATOMIC_NUMBER, MAX_ATOMIC_NUMBER = 1, 118
#: A periodic cell is singular when |det| of its periodic lattice vectors, divided by the product of their
#: lengths (1 for orthogonal vectors, ~0.5 for the flattest real lattices), falls below this.
SINGULAR_CELL_RATIO = 1e-6
#: Shortest periodic lattice vector accepted, Å (a zero row with pbc on in its direction).
MIN_LATTICE_VECTOR = 1e-3

_FIX = "regenerate the dataset, or drop this record"


def _periodic_cell_problem(cell: list[list[float]], pbc: list[bool]) -> str | None:
    """Why the periodic part of ``cell`` (the rows where ``pbc``) is singular, or None.

    Only the periodic rows matter: a slab's non-periodic vector (or a molecule's all-zero cell) is free.
    The measure is the volume (3 rows: |a . (b x c)|), area (2 rows: |a x b|) or length spanned by the periodic
    rows over the product of their lengths: scale-free, 1 for orthogonal vectors. Plain Python on 9 floats,
    several times cheaper than a torch determinant on one small record.
    """
    rows = [r for r, p in zip(cell, pbc, strict=True) if p]
    lengths = [(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]) ** 0.5 for r in rows]
    for r, length in zip(rows, lengths, strict=True):
        if length < MIN_LATTICE_VECTOR:
            return f"the periodic lattice vector {r} has length {length:.3g} Å"
    if len(rows) < 2:
        return None
    (a0, a1, a2), (b0, b1, b2) = rows[0], rows[1]
    x, y, z = a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0  # a x b
    if len(rows) == 2:
        spanned = (x * x + y * y + z * z) ** 0.5
    else:
        c0, c1, c2 = rows[2]
        spanned = abs(x * c0 + y * c1 + z * c2)
    prod = 1.0
    for length in lengths:
        prod *= length
    ratio = spanned / prod
    if ratio < SINGULAR_CELL_RATIO:
        return (f"its periodic lattice vectors {rows} are (nearly) linearly dependent "
                f"(|det| / product of lengths = {ratio:.3g} < {SINGULAR_CELL_RATIO:g})")
    return None


def validate_record(data: Data, where: str = "record") -> None:
    """Raise ``ValueError`` naming ``where``, the field and the fix if ``data`` breaks the schema above.

    Checked: required fields present; shapes of every per-atom / per-edge field; finite ``pos``, ``cell`` and
    ``y``; ``atomic_numbers`` integers in 1..118; ``edge_index`` in 0..N-1; a non-singular cell along the
    periodic directions (a molecule's zero cell with ``pbc`` False passes). Whether a model embeds every Z is
    checked against the model before training (``faenet.training.check_split``).
    """
    missing = [f for f in REQUIRED_FIELDS if getattr(data, f, None) is None]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}; a record needs {list(REQUIRED_FIELDS)} "
                         f"(faenet.data.records); {_FIX}")
    n = int(data.natoms)
    pos, z, cell, pbc, ei = data.pos, data.atomic_numbers, data.cell, data.pbc, data.edge_index
    if tuple(pos.shape) != (n, 3):
        raise ValueError(f"{where}: pos has shape {tuple(pos.shape)}, expected ({n}, 3) for natoms={n}; {_FIX}")
    if not math.isfinite(float(pos.sum())):  # NaN/inf propagate through the sum: one reduction, no mask
        raise ValueError(f"{where}: pos contains NaN or inf; {_FIX}")
    for name in ("atomic_numbers", "tags", "fixed"):
        shape = tuple(data[name].shape)
        if shape != (n,):
            raise ValueError(f"{where}: {name} has shape {shape}, expected ({n},) for natoms={n}; {_FIX}")
    if z.is_floating_point():
        raise ValueError(f"{where}: atomic_numbers are {z.dtype}, expected integers (int64); {_FIX}")
    zs = z.tolist()  # a Python list: min/max of a few hundred ints beat two tensor reductions
    if zs and (min(zs) < MIN_ATOMIC_NUMBER or max(zs) > MAX_ATOMIC_NUMBER):
        bad = sorted({v for v in zs if not MIN_ATOMIC_NUMBER <= v <= MAX_ATOMIC_NUMBER})
        raise ValueError(f"{where}: atomic numbers {bad} are not elements (Z must be in "
                         f"{MIN_ATOMIC_NUMBER}..{MAX_ATOMIC_NUMBER}); {_FIX}")
    if tuple(cell.shape) != (1, 3, 3):
        raise ValueError(f"{where}: cell has shape {tuple(cell.shape)}, expected (1, 3, 3); {_FIX}")
    if tuple(pbc.shape) != (1, 3) or pbc.dtype != torch.bool:
        raise ValueError(f"{where}: pbc is {pbc.dtype} of shape {tuple(pbc.shape)}, expected (1, 3) bool; {_FIX}")
    cell_rows = cell[0].tolist()
    if not all(math.isfinite(c) for r in cell_rows for c in r):
        raise ValueError(f"{where}: cell contains NaN or inf ({cell_rows}); every edge's periodic image "
                         f"would be NaN and silently dropped; {_FIX}")
    flags = pbc[0].tolist()
    if any(flags):
        problem = _periodic_cell_problem(cell_rows, flags)
        if problem is not None:
            raise ValueError(f"{where}: the cell is singular along its periodic directions (pbc={flags}): "
                             f"{problem}; give a valid lattice, set pbc False where there is none, or drop "
                             "this record")
    if ei.dim() != 2 or ei.shape[0] != 2:
        raise ValueError(f"{where}: edge_index has shape {tuple(ei.shape)}, expected (2, E); {_FIX}")
    e = ei.shape[1]
    if e:
        lo, hi = torch.aminmax(ei)
        if int(lo) < 0 or int(hi) >= n:
            raise ValueError(f"{where}: edge_index holds atom indices {int(lo)}..{int(hi)}, outside 0..{n - 1}; "
                             f"{_FIX}")
    if tuple(data.cell_offsets.shape) != (e, 3):
        raise ValueError(f"{where}: cell_offsets has shape {tuple(data.cell_offsets.shape)}, expected ({e}, 3); "
                         f"{_FIX}")
    y = data.y
    if not (math.isfinite(y) if isinstance(y, (float, int)) else bool(torch.isfinite(torch.as_tensor(y)).all())):
        raise ValueError(f"{where}: target y is NaN or inf; {_FIX}")


def check_record_atomic_numbers(data: Data, lo: int, hi: int, model: str, where: str = "record") -> None:
    """Raise ``ValueError`` naming ``where``, the Z, ``model`` and its range if a Z of ``data`` is outside
    ``lo..hi`` (the atomic numbers ``model`` embeds; its ``supported_z``)."""
    zs = data.atomic_numbers.tolist()
    if zs and (min(zs) < lo or max(zs) > hi):
        bad = sorted({v for v in zs if not lo <= v <= hi})
        raise ValueError(f"{where}: atomic numbers {bad} are outside what {model} embeds (Z = {lo}..{hi}); "
                         f"drop the records with these elements, or use a model whose supported_z covers them")
