"""Expressivity pairs and protocols of the geometric-gnn-dojo (Joshi et al. 2022), paper App. B.2, Tables 3-5.

Each experiment is a PAIR of geometric graphs that a model must map to two different labels (binary graph
classification; label 0 for the first graph, 1 for the second). Coordinates follow the dojo notebooks
(``experiments/{kchains,rotsym,incompleteness}.ipynb`` of chaitjo/geometric-gnn-dojo):

- ``k_chain_pair(k)`` (Table 3): k collinear nodes spaced 5 Å on the y axis plus two end nodes 5 Å away at
  (∓4, -3) and (4, 5(k-1)+3), path edges; the graphs differ only in the side of the first end node
  ("trans" vs "cis"). Each graph is centred separately (as the dojo). The paper's Table 3 uses k = 4.
- ``rotsym_pair(fold)`` (Table 4): a centre and ``fold`` unit spokes in the xy plane (star edges); the
  second graph is the first rotated about z by ``q = 2π / (fold + r)``. The dojo draws ``r`` uniformly in
  1..fold without a seed; here ``r`` is an argument (default 1: q = 120°, 90°, 60°, 45° for 2, 3, 5, 7-fold).
- ``two_body_pair`` / ``three_body_pair`` / ``four_body_nonchiral_pair`` / ``four_body_chiral_pair``
  (Table 5; Pozdnyakov & Ceriotti counterexamples, star graphs around a centre at the origin). The paper's
  "4-body" column is the chiral one (Fig. 2(e)).

Record mapping (``faenet.data.records``): the dojo has one node type (feature 0, ``Embedding(1, d)``); it is
mapped to carbon, Z = 6 (``DOJO_ATOMIC_NUMBER``), so models with Z-dependent embeddings see one species.
Molecule conventions: ``cell`` zeros, ``pbc`` False, ``tags`` -1, ``fixed`` 0, ``y`` = the class label as a
float. Edges: the dojo's hand-written edge lists made undirected (``edges="dojo"``, the default; the dojo
never builds radius or complete graphs), or ``"radius"`` (``faenet.graph.radius_graph`` at ``cutoff``; the
dojo models' cutoff is 10 Å) or ``"full"`` (all ordered pairs).

Congruence (``find_congruence`` / ``are_congruent``): exact up to ``tol``. Two clouds are E(3)-congruent iff a
species-preserving permutation makes their distance matrices equal (any distance-preserving map of R^3 is an
isometry). The permutation is found by backtracking over atoms with distance pruning, then verified by an
orthogonal Procrustes (Kabsch) fit, optionally restricted to proper rotations (SE(3)). Meant for the tiny
graphs here (highly symmetric clouds of many atoms can make the search exponential).

Findings on the dojo pairs (tested in tests/test_expressivity.py): both rotsym graphs are congruent by
construction (a rotation), and so is the dojo's "4-body chiral" pair (a 180° rotation about z maps A1<->A3,
A2 -> A2, C+ -> C-). No E(3)-invariant model can separate a congruent pair; the dojo protocol ("paper") can
be passed only because it evaluates on the fixed training coordinates, so a lab-frame-dependent model
separates them. The ``"strict"`` protocol moves every evaluation graph by a random E(3) transform first.

Training protocol (dojo ``experiments/utils/train_utils.py``): Adam lr 1e-4, ``ReduceLROnPlateau(mode="max",
factor=0.9, patience=25, min_lr=1e-5)`` stepped on the validation accuracy, 100 epochs of batch-1 steps over
the two shuffled graphs, cross-entropy on 2 logits; val = test = the training pair; the reported accuracy is
the test accuracy at the last epoch whose val accuracy was >= the best so far; mean ± population std over 10
seeds. The dojo keeps ONE model object across its 10 seeds (runs 2..10 continue training); this is
``run_pair_experiment(..., reuse_model=True)``; the default re-creates the model for every seed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_undirected

from faenet.data.records import TAG_MOLECULE
from faenet.frames import DEFAULT_DEGENERACY_TOL, compute_frames, is_degenerate, project_all
from faenet.graph import radius_graph
from faenet.symmetry import apply_transform, random_rotation
from faenet.warmup import prepare_model

#: Element given to the dojo's single node type (feature 0).
DOJO_ATOMIC_NUMBER = 6
#: Cutoff of the dojo's SchNet / DimeNet++ / GVP radial bases, Å (used for ``edges="radius"``).
DOJO_CUTOFF = 10.0
EDGE_MODES = ("dojo", "radius", "full")
PROTOCOLS = ("paper", "strict")
GROUPS = ("E3", "SE3")


@dataclass(frozen=True)
class GraphPair:
    """Two records labelled 0 and 1, with the dojo experiment they come from."""

    name: str
    graphs: tuple[Data, Data]
    note: str = ""

    def batch(self, dtype: torch.dtype | None = None) -> Batch:
        """Both graphs in one batch (label 0 first), positions and cell cast to ``dtype`` if given."""
        graphs = [g.clone() for g in self.graphs]
        if dtype is not None:
            for g in graphs:
                g.pos, g.cell = g.pos.to(dtype), g.cell.to(dtype)
        return Batch.from_data_list(graphs)

    @property
    def labels(self) -> Tensor:
        return torch.tensor([0, 1])


# -- records ---------------------------------------------------------------------------------------------

def make_record(pos: Tensor, label: int, edge_index: Tensor | None = None, *, edges: str = "dojo",
                cutoff: float = DOJO_CUTOFF, atomic_number: int = DOJO_ATOMIC_NUMBER, sid: int = 0,
                dtype: torch.dtype = torch.float32) -> Data:
    """A molecule record (``faenet.data.records`` schema) for one dojo graph.

    ``edge_index`` is the dojo's directed edge list (made undirected) and is required for ``edges="dojo"``.
    """
    if edges not in EDGE_MODES:
        raise ValueError(f"edges must be one of {EDGE_MODES}, got {edges!r}")
    pos = torch.as_tensor(pos, dtype=torch.float64).reshape(-1, 3)
    n = pos.shape[0]
    if edges == "dojo":
        if edge_index is None:
            raise ValueError("edges='dojo' needs the dojo edge_index")
        ei = to_undirected(torch.as_tensor(edge_index, dtype=torch.long), num_nodes=n)
    elif edges == "radius":
        ei, _ = radius_graph(pos, cutoff, max_num_neighbors=n)
    else:
        i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        off = i != j
        ei = torch.stack([j[off], i[off]])
    return Data(pos=pos.to(dtype), atomic_numbers=torch.full((n,), atomic_number, dtype=torch.long),
                natoms=n, tags=torch.full((n,), TAG_MOLECULE, dtype=torch.long),
                fixed=torch.zeros(n, dtype=torch.long), cell=torch.zeros(1, 3, 3, dtype=dtype),
                pbc=torch.zeros(1, 3, dtype=torch.bool), edge_index=ei,
                cell_offsets=torch.zeros(ei.shape[1], 3, dtype=torch.long), y=float(label), sid=sid)


def _pair(name: str, pos0: Tensor, pos1: Tensor, edge_index: Tensor, note: str, **kw) -> GraphPair:
    return GraphPair(name, (make_record(pos0, 0, edge_index, sid=0, **kw),
                            make_record(pos1, 1, edge_index, sid=1, **kw)), note)


def _star_edges(n_leaves: int) -> Tensor:
    return torch.tensor([[0] * n_leaves, list(range(1, n_leaves + 1))])


def matrix_y(angle: float) -> Tensor:
    """Right-handed rotation about y (e3nn ``o3.matrix_y``), float64; the dojo applies it as ``row @ Q``."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def matrix_z(angle: float) -> Tensor:
    """Right-handed rotation about z (e3nn ``o3.matrix_z``), float64; ``x @ R.T`` rotates x by +angle."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def k_chain_pair(k: int = 4, **record_kw) -> GraphPair:
    """k-chains (Table 3): k+2 nodes on a path; end nodes trans (label 0) vs cis (label 1); each centred."""
    if k < 2:
        raise ValueError(f"k must be >= 2 (k+2 nodes), got {k}")
    middle = [(0.0, 5.0 * i, 0.0) for i in range(k)]
    last = (4.0, 5.0 * (k - 1) + 3.0, 0.0)
    pos0 = torch.tensor([(-4.0, -3.0, 0.0), *middle, last], dtype=torch.float64)
    pos1 = torch.tensor([(4.0, -3.0, 0.0), *middle, last], dtype=torch.float64)
    pos0, pos1 = pos0 - pos0.mean(0), pos1 - pos1.mean(0)
    edge_index = torch.tensor([list(range(k + 1)), list(range(1, k + 2))])
    return _pair(f"kchain_{k}", pos0, pos1, edge_index,
                 f"{k}-chain, (floor(k/2)+1) = {k // 2 + 1}-hop distinguishable", **record_kw)


def rotsym_pair(fold: int, r: int = 1, **record_kw) -> GraphPair:
    """``fold``-fold star (Table 4) and the same star rotated about z by ``2π / (fold + r)``, 1 <= r <= fold.
    """
    if fold < 2:
        raise ValueError(f"fold must be >= 2, got {fold}")
    if not 1 <= r <= fold:
        raise ValueError(f"r must lie in 1..fold={fold} (dojo: random.randint(1, fold)), got {r}")
    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    spokes = [x @ matrix_z(2 * math.pi * c / fold).T for c in range(fold)]
    pos0 = torch.stack([torch.zeros(3, dtype=torch.float64), *spokes])
    q = 2 * math.pi / (fold + r)
    pos1 = pos0 @ matrix_z(q).T
    return _pair(f"rotsym_{fold}", pos0, pos1, _star_edges(fold),
                 f"{fold}-fold star vs its rotation by {math.degrees(q):.1f} deg about z", **record_kw)


def two_body_pair(**record_kw) -> GraphPair:
    """2-body counterexample (Joshi et al.'s running example): equal centre distances {5, 5}."""
    pos0 = torch.tensor([[0, 0, 0], [5, 0, 0], [3, 0, 4]], dtype=torch.float64)
    pos1 = torch.tensor([[0, 0, 0], [5, 0, 0], [-5, 0, 0]], dtype=torch.float64)
    return _pair("2body", pos0, pos1, _star_edges(2), "same 2-body scalars around node 0", **record_kw)


def three_body_pair(**record_kw) -> GraphPair:
    """3-body counterexample (Pozdnyakov & Ceriotti Fig. 1(b)): neighbours A, B, B', C± around the origin."""
    common = [[0, 0, 0], [5, 0, 5], [5, 5, 5], [-5, -5, 5]]
    pos0 = torch.tensor(common + [[0, 5, 5]], dtype=torch.float64)
    pos1 = torch.tensor(common + [[0, -5, 5]], dtype=torch.float64)
    return _pair("3body", pos0, pos1, _star_edges(4), "same 2- and 3-body scalars around node 0", **record_kw)


def four_body_nonchiral_pair(**record_kw) -> GraphPair:
    """4-body non-chiral counterexample (Fig. 2(f)): A1..A3, B1..B3 @ matrix_y(2π/10), C± = (0, ±5, 0)."""
    a = torch.tensor([[3, 2, -4], [0, 2, 5], [-3, 2, -4]], dtype=torch.float64)
    b = torch.tensor([[3, -2, -4], [0, -2, 5], [-3, -2, -4]], dtype=torch.float64)
    b = b @ matrix_y(2 * math.pi / 10)
    o = torch.zeros(1, 3, dtype=torch.float64)
    pos0 = torch.cat([o, a, b, torch.tensor([[0.0, 5.0, 0.0]], dtype=torch.float64)])
    pos1 = torch.cat([o, a, b, torch.tensor([[0.0, -5.0, 0.0]], dtype=torch.float64)])
    return _pair("4body_nonchiral", pos0, pos1, _star_edges(7), "Pozdnyakov Fig. 2(f)", **record_kw)


def four_body_chiral_pair(**record_kw) -> GraphPair:
    """4-body chiral counterexample (Fig. 2(e); the paper's "4-body"): A1..A3 in the xz plane, C± (0, ±5, 0).

    Despite its name, the pair as coded is congruent (a 180° rotation about z; module docstring).
    """
    common = [[0, 0, 0], [3, 0, -4], [0, 0, 5], [-3, 0, -4]]
    pos0 = torch.tensor(common + [[0, 5, 0]], dtype=torch.float64)
    pos1 = torch.tensor(common + [[0, -5, 0]], dtype=torch.float64)
    return _pair("4body_chiral", pos0, pos1, _star_edges(4), "Pozdnyakov Fig. 2(e)", **record_kw)


def dojo_pairs(k: int = 4, folds: Sequence[int] = (2, 3, 5, 7), **record_kw) -> dict[str, GraphPair]:
    """Every pair of Tables 3-5 by name: ``kchain_{k}``, ``rotsym_{fold}``, ``2body``, ``3body``,
    ``4body_chiral`` (Table 5's "4-body"), and ``4body_nonchiral`` (dojo only)."""
    pairs = [k_chain_pair(k, **record_kw), *(rotsym_pair(f, **record_kw) for f in folds),
             two_body_pair(**record_kw), three_body_pair(**record_kw),
             four_body_chiral_pair(**record_kw), four_body_nonchiral_pair(**record_kw)]
    return {p.name: p for p in pairs}


#: Table 5's pairs by name (``pair_by_name``); ``kchain_<k>`` and ``rotsym_<fold>`` take their argument.
BODY_PAIRS: dict[str, Callable[..., GraphPair]] = {
    "2body": two_body_pair, "3body": three_body_pair, "4body_chiral": four_body_chiral_pair,
    "4body_nonchiral": four_body_nonchiral_pair}


def pair_by_name(name: str, rotsym_r: int = 1, **record_kw) -> GraphPair:
    """The pair called ``name``: ``kchain_<k>``, ``rotsym_<fold>`` (rotated by 2π / (fold + ``rotsym_r``)) or a
    ``BODY_PAIRS`` key. ``ValueError`` for any other name."""
    kind, _, arg = name.partition("_")
    if kind == "kchain" and arg.isdigit():
        return k_chain_pair(int(arg), **record_kw)
    if kind == "rotsym" and arg.isdigit():
        return rotsym_pair(int(arg), r=rotsym_r, **record_kw)
    if name not in BODY_PAIRS:
        raise ValueError(f"unknown pair {name!r}; known: kchain_<k>, rotsym_<fold>, {sorted(BODY_PAIRS)}")
    return BODY_PAIRS[name](**record_kw)


# -- invariant descriptors -----------------------------------------------------------------------------

def distance_multiset(pos: Tensor) -> Tensor:
    """Sorted pairwise distances ``|x_i - x_j|`` (i < j), float64: the full 2-body multiset of a cloud."""
    p = torch.as_tensor(pos, dtype=torch.float64).reshape(-1, 3)
    i, j = torch.triu_indices(len(p), len(p), offset=1)
    return (p[i] - p[j]).norm(dim=1).sort().values


def neighbourhood_multisets(pos: Tensor, edge_index: Tensor, decimals: int = 6) -> list[tuple[float, ...]]:
    """Sorted list over nodes of each node's sorted neighbour distances (1-hop, 2-body neighbourhoods)."""
    p = torch.as_tensor(pos, dtype=torch.float64).reshape(-1, 3)
    src, dst = edge_index
    d = (p[src] - p[dst]).norm(dim=1)
    per_node = [tuple(sorted(round(float(x), decimals) for x in d[dst == i])) for i in range(len(p))]
    return sorted(per_node)


def k_body_multiset(pos: Tensor, order: int, centre: int = 0, neighbours: Sequence[int] | None = None,
                    chiral: bool = False, decimals: int = 6) -> list[tuple[float, ...]]:
    """Multiset of the ``order``-body scalars of the neighbourhood of ``centre`` (dojo / Pozdnyakov sense).

    For every set of ``order - 1`` neighbours, the canonical form (minimum over orderings of the neighbours)
    of the tuple (distances to the centre, distances between the neighbours); for ``order == 4`` and
    ``chiral`` the signed volume ``det[x_j - c, x_k - c, x_l - c]`` of that ordering is appended, so mirror
    images differ. ``neighbours`` defaults to every other node. Orders 2, 3, 4 are supported.
    """
    if order not in (2, 3, 4):
        raise ValueError(f"order must be 2, 3 or 4, got {order}")
    p = torch.as_tensor(pos, dtype=torch.float64).reshape(-1, 3)
    nb = [i for i in range(len(p)) if i != centre] if neighbours is None else list(neighbours)
    rel = p - p[centre]
    out = []
    for subset in itertools.combinations(nb, order - 1):
        forms = []
        for perm in itertools.permutations(subset):
            key = [float(rel[i].norm()) for i in perm]
            key += [float((p[i] - p[j]).norm()) for i, j in itertools.combinations(perm, 2)]
            if chiral and order == 4:
                key.append(float(torch.linalg.det(rel[list(perm)])))
            forms.append(tuple(round(x, decimals) + 0.0 for x in key))
        out.append(min(forms))
    return sorted(out)


# -- congruence ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Congruence:
    """``pos_a @ rotation + translation ≈ pos_b[permutation]`` with max atom error ``error`` (Å)."""

    permutation: Tensor
    rotation: Tensor
    translation: Tensor
    error: float

    @property
    def proper(self) -> bool:
        return bool(torch.linalg.det(self.rotation) > 0)


def _procrustes(a: Tensor, b: Tensor, proper: bool) -> tuple[Tensor, Tensor, float]:
    """Orthogonal Q (det +1 if ``proper``) and t minimising ``|a @ Q + t - b|``; returns (Q, t, max error)."""
    ca, cb = a.mean(0), b.mean(0)
    u, _, vt = torch.linalg.svd((a - ca).T @ (b - cb))
    q = u @ vt
    if proper and torch.linalg.det(q) < 0:
        u = u.clone()
        u[:, -1] = -u[:, -1]
        q = u @ vt
    t = cb - ca @ q
    err = float((a @ q + t - b).norm(dim=1).max()) if len(a) else 0.0
    return q, t, err


def find_congruence(pos_a: Tensor, pos_b: Tensor, atomic_numbers_a: Tensor | None = None,
                    atomic_numbers_b: Tensor | None = None, tol: float = 1e-4,
                    allow_reflection: bool = True) -> Congruence | None:
    """A species-preserving permutation and E(3) (or SE(3) if not ``allow_reflection``) transform mapping
    cloud a onto cloud b within ``tol`` Å per atom, or None if there is none. See the module docstring."""
    a = torch.as_tensor(pos_a, dtype=torch.float64).reshape(-1, 3)
    b = torch.as_tensor(pos_b, dtype=torch.float64).reshape(-1, 3)
    n = len(a)
    if len(b) != n:
        return None
    za = torch.zeros(n, dtype=torch.long) if atomic_numbers_a is None else torch.as_tensor(atomic_numbers_a)
    zb = torch.zeros(n, dtype=torch.long) if atomic_numbers_b is None else torch.as_tensor(atomic_numbers_b)
    if za.shape != (n,) or zb.shape != (n,):
        raise ValueError(f"atomic numbers must have shape ({n},), got {tuple(za.shape)} and "
                         f"{tuple(zb.shape)}")
    if not torch.equal(za.sort().values, zb.sort().values):
        return None
    if n == 0:
        return Congruence(torch.zeros(0, dtype=torch.long), torch.eye(3, dtype=torch.float64),
                          torch.zeros(3, dtype=torch.float64), 0.0)
    # Distance-matrix tolerance: an atom error of tol changes a distance by at most 2 tol.
    dtol = 2 * tol
    gap = (distance_multiset(a) - distance_multiset(b)).abs()
    if gap.numel() and float(gap.max()) > dtol:
        return None
    da, db = torch.cdist(a, a), torch.cdist(b, b)
    perm = [-1] * n
    used = [False] * n

    def search(i: int) -> Congruence | None:
        if i == n:
            p = torch.tensor(perm)
            q, t, err = _procrustes(a, b[p], proper=not allow_reflection)
            return Congruence(p, q, t, err) if err <= tol else None
        for j in range(n):
            if used[j] or za[i] != zb[j]:
                continue
            if any(abs(float(da[i, k] - db[j, perm[k]])) > dtol for k in range(i)):
                continue
            perm[i], used[j] = j, True
            found = search(i + 1)
            perm[i], used[j] = -1, False
            if found is not None:
                return found
        return None

    return search(0)


def are_congruent(pos_a: Tensor, pos_b: Tensor, atomic_numbers_a: Tensor | None = None,
                  atomic_numbers_b: Tensor | None = None, tol: float = 1e-4,
                  allow_reflection: bool = True) -> bool:
    """True iff a permutation (same species) and an E(3) transform (SE(3) if not ``allow_reflection``) map
    cloud a onto cloud b within ``tol`` Å per atom."""
    found = find_congruence(pos_a, pos_b, atomic_numbers_a, atomic_numbers_b, tol, allow_reflection)
    return found is not None


def pair_congruence(pair: GraphPair, tol: float = 1e-4) -> dict[str, bool]:
    """``{"E3": ..., "SE3": ...}``: whether the two graphs of ``pair`` are congruent under E(3) / SE(3)."""
    g0, g1 = pair.graphs
    args = (g0.pos, g1.pos, g0.atomic_numbers, g1.atomic_numbers, tol)
    return {"E3": are_congruent(*args, allow_reflection=True),
            "SE3": are_congruent(*args, allow_reflection=False)}



# -- what frame averaging sees ---------------------------------------------------------------------------

def _same_graph(a: Tensor, b: Tensor, za: Tensor, zb: Tensor, ea: Tensor, eb: Tensor, tol: float) -> bool:
    """A node bijection p with ``|a_i - b_p(i)| <= tol``, equal species, and p(edges of a) = edges of b."""
    n = len(a)
    if len(b) != n:
        return False
    close = (torch.cdist(a.double(), b.double()) <= tol) & (za[:, None] == zb[None, :])
    edges_b = set(zip(*eb.tolist(), strict=True))
    edges_a = list(zip(*ea.tolist(), strict=True))
    perm = [-1] * n
    used = [False] * n

    def search(i: int) -> bool:
        if i == n:
            return {(perm[s], perm[t]) for s, t in edges_a} == edges_b
        for j in close[i].nonzero().flatten().tolist():
            if not used[j]:
                perm[i], used[j] = j, True
                if search(i + 1):
                    return True
                perm[i], used[j] = -1, False
        return False

    return search(0)


def frame_report(pair: GraphPair, tol: float = 1e-4, degeneracy_tol: float = DEFAULT_DEGENERACY_TOL) -> dict:
    """What frame averaging (3D PCA frames, ``faenet.frames``) sees of the two graphs of ``pair``.

    ``eigengap`` / ``degenerate``: the relative covariance eigengap of each graph and whether it is below
    ``degeneracy_tol`` (frames then depend on the eigensolver, not on the structure). ``inputs_match``
    (``{"E3": .., "SE3": ..}``, 8 or 4 frames): whether the SETS of frame-projected graphs (Eq. (4)) of the two
    graphs coincide up to a node relabelling within ``tol`` Å, computed from the stored positions as a model
    receives them. If they do, full FA gives both graphs the same output and SFA the same output
    distribution, so neither can beat chance on the pair, whatever the backbone. A congruent pair with a
    well-separated spectrum always matches; a congruent pair with a degenerate spectrum may not, and then FA
    separates the two fixed graphs through the eigensolver's lab-frame-dependent choice of axes.
    """
    out: dict = {"eigengap": [], "degenerate": [], "inputs_match": {}}
    for g in pair.graphs:
        frames = compute_frames(g.pos, torch.zeros(g.natoms, dtype=torch.long), 1, dim=3)
        out["eigengap"].append(float(frames.eigengap[0]))
        out["degenerate"].append(bool(is_degenerate(frames, degeneracy_tol)[0]))
    g0, g1 = pair.graphs
    for group, se3 in (("E3", False), ("SE3", True)):
        forms = []
        for g in (g0, g1):
            batch = torch.zeros(g.natoms, dtype=torch.long)
            forms.append(project_all(g.pos, None, batch, compute_frames(g.pos, batch, 1, dim=3, se3=se3))[0])

        def covered(fa: Tensor, fb: Tensor) -> bool:
            return all(any(_same_graph(x, y, g0.atomic_numbers, g1.atomic_numbers, g0.edge_index, g1.edge_index,
                                       tol) for y in fb) for x in fa)

        out["inputs_match"][group] = covered(forms[0], forms[1]) and covered(forms[1], forms[0])
    return out

# -- training and evaluation protocol --------------------------------------------------------------------

class PairClassifier(nn.Module):
    """``backbone(data)[output_key]`` (B,) or (B, d) -> ``Linear(d, 2)`` logits (B, 2).

    ``backbone`` is any model of the project interface (or a ``SymmetryWrapper`` around one); its graph-level
    output (the "energy" head by default) is read as a ``output_dim``-wide feature.
    """

    def __init__(self, backbone: nn.Module, output_key: str = "energy", output_dim: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.output_key = output_key
        self.head = nn.Linear(output_dim, 2)

    def forward(self, data) -> Tensor:
        out = self.backbone(data)[self.output_key]
        feat = out.reshape(out.shape[0], -1)
        return self.head(feat.to(self.head.weight.dtype))


@dataclass
class TrainHistory:
    loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    best_val_acc: float = float("nan")
    best_epoch: int = -1


def _needs_grad(model: nn.Module) -> bool:
    return any(getattr(m, "regress_forces", "") == "from_energy" for m in model.modules())


def _predict_logits(clf: Callable[[Batch], Tensor], batch: Batch) -> Tensor:
    needs = isinstance(clf, nn.Module) and _needs_grad(clf)
    with torch.enable_grad() if needs else torch.no_grad():
        return clf(batch).detach()


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=1).cpu() == labels.cpu()).double().mean())


def train_pair_classifier(model_factory: Callable[[], nn.Module], pair: GraphPair, *, epochs: int = 100,
                          seed: int = 0, lr: float = 1e-4, output_key: str = "energy", output_dim: int = 1,
                          select: str = "best_val", plateau: bool = True, dtype: torch.dtype = torch.float32,
                          classifier: PairClassifier | None = None, fused_adam: bool = True,
                          device: torch.device | str = "cpu", prepare: bool = True) -> PairClassifier:
    """Train a ``PairClassifier`` on the two graphs of ``pair`` with the dojo protocol (module docstring).

    ``model_factory()`` builds the backbone (called inside a forked RNG seeded with ``seed``, which also
    seeds the shuffles and any draws the model makes from torch's global RNG, e.g. SFA frames).
    ``classifier``: continue training this one instead (dojo's reuse across seeds); ``model_factory`` is then
    unused. ``select="best_val"`` returns the weights of the last epoch whose val accuracy was >= the best so
    far (the dojo reports the test accuracy of that epoch, and val = test); ``"last"`` the final weights.
    ``plateau``: the dojo's ReduceLROnPlateau(max, 0.9, 25, min_lr 1e-5). ``fused_adam``: torch's fused Adam
    kernel, the same update rule as the dojo's for-loop Adam up to float rounding, and ~5x cheaper per step for
    models of ~100 small parameter tensors (DimeNet++), where the optimiser step was ~1/3 of a training step.
    ``device``: where the classifier and the two graphs compute; the shuffles and SFA frames are drawn from
    CPU generators, so a CUDA run sees the same draws (on the CPU nothing moves). ``prepare``: run the model's
    warm-up hook (``faenet.warmup``; GemNet fits its scaling factors) on the pair before training a fresh
    classifier; off for a model meant to train without it (GemNet built with ``allow_unfitted=True``).
    Returns the classifier in eval mode with ``.history`` (a ``TrainHistory``).
    """
    device = torch.device(device)
    if select not in ("best_val", "last"):
        raise ValueError(f"select must be 'best_val' or 'last', got {select!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    graphs = [g.clone() for g in pair.graphs]
    for g in graphs:
        g.pos = g.pos.to(dtype)
        g.cell = g.cell.to(dtype)
    eval_batch = Batch.from_data_list(graphs)
    # Collated once: re-collating a 1-graph batch every step cost ~1/6 of a step (models never mutate inputs).
    singles = [Batch.from_data_list([g]) for g in graphs]
    labels = pair.labels
    if device.type != "cpu":
        eval_batch, labels = eval_batch.to(device), labels.to(device)
        singles = [b.to(device) for b in singles]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if classifier is None:
            classifier = PairClassifier(model_factory(), output_key, output_dim)
            # A model with a warm-up (GemNet's scaling factors) fits it on the pair, as on a training set.
            if prepare:
                prepare_model(classifier.backbone, [eval_batch.cpu()] if device.type != "cpu" else [eval_batch])
        clf = classifier
        clf = clf.to(dtype) if device.type == "cpu" else clf.to(device=device, dtype=dtype)
        opt = torch.optim.Adam(clf.parameters(), lr=lr, fused=fused_adam or None)
        sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.9, patience=25,
                                                            min_lr=1e-5) if plateau else None)
        hist = TrainHistory()
        best_state = None
        for epoch in range(epochs):
            clf.train()
            total = 0.0
            for idx in torch.randperm(len(graphs)).tolist():
                opt.zero_grad()
                loss = F.cross_entropy(clf(singles[idx]), labels[idx:idx + 1])
                loss.backward()
                opt.step()
                total += float(loss.detach())
            clf.eval()
            val = _accuracy(_predict_logits(clf, eval_batch), labels)
            hist.loss.append(total / len(graphs))
            hist.val_acc.append(val)
            if sched is not None:
                sched.step(val)
            if hist.best_epoch < 0 or val >= hist.best_val_acc:  # dojo: val_acc >= best_val_acc
                hist.best_val_acc, hist.best_epoch = val, epoch
                # Tensor clones, not deepcopy: the snapshot is taken at most every epoch.
                best_state = {k: v.detach().clone() for k, v in clf.state_dict().items()}
        if select == "best_val" and best_state is not None:
            clf.load_state_dict(best_state)
    clf.eval()
    clf.history = hist
    return clf


def evaluate_pair(predict: Callable[[Batch], Tensor], pair: GraphPair, protocol: str = "paper", *,
                  n_draws: int = 1, generator: torch.Generator | None = None, group: str = "E3",
                  translation_scale: float = 5.0, device: torch.device | str = "cpu") -> float:
    """Accuracy (%) of ``predict(batch) -> logits (B, 2)`` on the two graphs of ``pair``, on ``device`` (the
    transforms are drawn CPU-side from ``generator``, then moved).

    ``"paper"``: the fixed graphs as built (the dojo), evaluated ``n_draws`` times (for stochastic models such
    as SFA). ``"strict"``: in each of ``n_draws`` draws every graph is first moved by its own random
    Haar-uniform ``group`` transform (E3: rotations and reflections; SE3: rotations) and a Gaussian
    translation of std ``translation_scale`` Å. Accuracy is averaged over draws and both graphs.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    dtype = next((p.dtype for p in predict.parameters()), torch.float32) if isinstance(predict, nn.Module) \
        else torch.float32
    base = pair.batch(dtype)
    labels = pair.labels
    correct = []
    for _ in range(n_draws):
        batch = base
        if protocol == "strict":
            q = random_rotation(2, 3, reflect=group == "E3", generator=generator, dtype=dtype)
            t = torch.randn(2, 3, generator=generator, dtype=torch.float64).to(dtype) * translation_scale
            batch = apply_transform(base, q, t)
        if torch.device(device).type != "cpu":
            batch = batch.to(device)
        correct.append(_accuracy(_predict_logits(predict, batch), labels))
    return float(sum(correct) / len(correct))


@dataclass(frozen=True)
class PairResult:
    """Accuracies (%) of one pair over seeds, per protocol; ``mean`` ± ``std`` (population std, as the dojo).
    """

    accuracies: dict[str, list[float]]
    #: One ``TrainHistory`` per seed (loss and val accuracy per epoch, best epoch), in seed order.
    histories: list[TrainHistory] = field(default_factory=list)

    def mean(self, protocol: str = "paper") -> float:
        return float(torch.tensor(self.accuracies[protocol], dtype=torch.float64).mean())

    def std(self, protocol: str = "paper") -> float:
        return float(torch.tensor(self.accuracies[protocol], dtype=torch.float64).std(correction=0))


def run_pair_experiment(model_factory: Callable[[], nn.Module], pair: GraphPair, *,
                        seeds: Sequence[int] = tuple(range(10)), reuse_model: bool = False,
                        protocols: Sequence[str] = PROTOCOLS, n_draws: int = 1, n_strict_draws: int = 64,
                        eval_seed: int = 12345, device: torch.device | str = "cpu", **train_kw) -> PairResult:
    """Train on ``pair`` once per seed and evaluate with each protocol (dojo: 10 seeds, mean ± std).

    ``reuse_model``: continue training the same classifier across seeds, as the dojo notebooks do.
    ``n_draws`` repeats the "paper" evaluation, ``n_strict_draws`` the random transforms of "strict" (drawn
    from a generator seeded with ``eval_seed + seed``). ``train_kw`` go to ``train_pair_classifier``.
    """
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {p!r}")
    acc: dict[str, list[float]] = {p: [] for p in protocols}
    histories: list[TrainHistory] = []
    clf = None
    for seed in seeds:
        clf = train_pair_classifier(model_factory, pair, seed=seed,
                                    classifier=clf if reuse_model else None, device=device, **train_kw)
        for p in protocols:
            gen = torch.Generator().manual_seed(eval_seed + int(seed))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(eval_seed + int(seed))  # stochastic models (SFA) draw from the global RNG
                draws = n_strict_draws if p == "strict" else n_draws
                acc[p].append(evaluate_pair(clf, pair, p, n_draws=draws, generator=gen, device=device))
        histories.append(clf.history)  # a new TrainHistory per call, also when reuse_model
    return PairResult(acc, histories)
