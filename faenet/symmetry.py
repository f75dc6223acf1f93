"""Symmetry methods around ANY model of the project interface (paper Sec. 3.3, Eq. (1), (5); App. D).

``SymmetryWrapper(model, method, frame_dim)`` with ``method`` one of:

- ``none``: the model as is.
- ``sfa`` / ``se3-sfa`` (Stochastic FA, Eq. (5)): per graph and per forward pass one frame drawn uniformly
  from the E(3) (8 in 3D, 4 in 2D) or SE(3) (4 / 2) frames of ``faenet.frames``; positions and cell
  projected (Eq. (4)), ONE model call, per-atom vector outputs mapped back with ``F @ V^T``. Drawn in
  train and eval mode alike, as in the paper (evaluate in a seeded/forked RNG for reproducible numbers).
- ``full`` / ``se3-full`` (Full FA, Eq. (1)): every frame of every graph stacked into ONE batch of F*B
  graphs (frame-major: graph ``f*B + b`` is frame f of graph b; ``edge_index`` offset by ``f*N``) and ONE
  model call, so the cost is ~F x SFA. Edges are frame-invariant (Eq. (4) keeps ``cell_offsets``) and reused.
  A model with a ``forward_frames(data, pos_frames, cell_frames)`` method (FAENet) is given the frames
  instead of the stacked batch, and returns the same frame-major outputs with its frame-invariant work
  (graph, distances, atom embedding) done once.
  Graph outputs are averaged over frames; per-atom vectors are mapped back per frame, then averaged.
- ``da``: data augmentation, a Haar-uniform random rotation per graph (with a reflection with probability
  1/2 unless ``da_reflect=False``); in 2D a uniform angle about z (and a reflection of x with prob. 1/2).
  Applied in training mode only: DA is a training-time regulariser, and at evaluation the model must be
  judged on the input as given (App. D measures how invariant DA has made it). Differences from the
  official DA: Haar-uniform, not Euler angles; 3D rotations for ``frame_dim=3`` (the official code rotated
  about z only); reflections included by default.

Gradients: the model receives positions computed from ``data.pos`` with a constant frame, as a fresh tensor
(a leaf when ``data.pos`` does not require grad). A ``from_energy`` model thus gets ``-dE/dpos_frame``, which
the wrapper rotates back like any equivariant output; d(frame)/d(pos) is ignored (zero almost everywhere in
FA's own convention: the frame is a function of the input, not of the parameters).

The caller's batch is never mutated: the model gets a shallow copy with new ``pos`` / ``cell`` tensors.
Per-atom outputs in ``EQUIVARIANT_OUTPUTS`` are rotated back; every other output is treated as invariant
(averaged over frames in full FA, passed through otherwise).

Transforms here act on row vectors from the right: ``pos' = pos @ Q + t``, ``cell' = cell @ Q``,
``force' = force @ Q`` (Q orthogonal, per graph), the same convention as the frames (``pos @ V``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from faenet.frames import FRAME_CONSTRUCTIONS, compute_frames_by, num_frames, project, project_all, rotate_back

METHODS = ("none", "da", "sfa", "full", "se3-sfa", "se3-full")
EQUIVARIANT_OUTPUTS = ("forces", "forces_grad_target")
# Per-atom input fields that rotate with the positions (targets), in ``apply_transform``.
VECTOR_FIELDS = ("force",)

# Levels of the record schema (faenet/data/records.py) for stacking frames into one batch.
_NODE_KEYS = {"atomic_numbers", "tags", "fixed", "force"}
_EDGE_KEYS = {"cell_offsets"}
_GRAPH_KEYS = {"natoms", "pbc", "y", "sid", "fid", "neighbors"}


def split_model_name(name: str) -> tuple[str, str]:
    """A stage's model name ``<model>[-<method>]`` -> ``(model, method)``: ``"faenet-sfa"`` -> ``("faenet",
    "sfa")``, ``"faenet-se3-full"`` -> ``("faenet", "se3-full")``, ``"schnet"`` -> ``("schnet", "none")``."""
    base, _, method = name.partition("-")
    return base, method or "none"


def is_stochastic(method: str) -> bool:
    """SFA draws a frame per forward pass, also at evaluation (DA is off at evaluation, FA averages)."""
    return method.endswith("sfa")


def method_group(method: str) -> str:
    """``"SE3"`` for the SE(3) frame methods (``se3-sfa``, ``se3-full``), else ``"E3"``."""
    return "SE3" if method.startswith("se3-") else "E3"


def random_rotation(n: int, dim: int = 3, reflect: bool = True, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """``n`` random orthogonal 3x3 matrices, Haar-uniform on O(3)/SO(3) (dim 3) or O(2)/SO(2) about z (dim 2).

    3D: QR of a Gaussian matrix with the signs of diag(R) moved into Q (Haar on O(3)); without ``reflect``
    the first column of det -1 draws is negated (a measure-preserving bijection onto SO(3)). With ``reflect``
    det = -1 has probability 1/2. 2D: angle uniform in [0, 2π) about z, then (``reflect``) x negated with
    probability 1/2; the z row and column are those of the identity. Drawn on CPU (``generator``'s device
    if given), then moved to ``device``.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 (about z) or 3, got {dim!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    gdev = generator.device if generator is not None else torch.device("cpu")
    if dim == 3:
        g = torch.randn(n, 3, 3, generator=generator, device=gdev, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
        if not reflect:
            q[:, :, 0] *= torch.linalg.det(q).sign()[:, None]
    else:
        theta = torch.rand(n, generator=generator, device=gdev, dtype=torch.float64) * (2 * math.pi)
        c, s = torch.cos(theta), torch.sin(theta)
        q = torch.zeros(n, 3, 3, dtype=torch.float64, device=gdev)
        q[:, 0, 0], q[:, 0, 1], q[:, 1, 0], q[:, 1, 1], q[:, 2, 2] = c, s, -s, c, 1.0
        if reflect:
            flip = torch.rand(n, generator=generator, device=gdev, dtype=torch.float64) < 0.5
            q[:, 0, :] *= torch.where(flip, -1.0, 1.0)[:, None]  # pos @ q negates x first, then rotates
    return q.to(dtype=dtype, device=device if device is not None else gdev)


def batch_vector(data) -> Tensor:
    """``data.batch``, or zeros for a single graph without one."""
    b = getattr(data, "batch", None)
    return b if b is not None else torch.zeros(data.pos.shape[0], dtype=torch.long, device=data.pos.device)


def _num_graphs(data) -> int:
    n = getattr(data, "num_graphs", None)
    return int(n) if n is not None else int(batch_vector(data).max()) + 1


def _input_copy(data):
    """Shallow copy whose ``pos`` is a distinct tensor object, so a model calling ``pos.requires_grad_()``
    or replacing fields does not touch the caller's batch."""
    out = copy.copy(data)
    out.pos = data.pos if data.pos.requires_grad else data.pos.detach()
    return out


def apply_transform(data, rotations: Tensor, translations: Tensor | None = None):
    """A new batch with ``pos @ Q[b] + t[b]``, ``cell @ Q[b]`` and every ``VECTOR_FIELDS`` entry ``@ Q[b]``.

    ``rotations`` (B, 3, 3) orthogonal, ``translations`` (B, 3) or None. Edges and ``cell_offsets`` stay
    valid (distances are preserved and the cell moves with the atoms). The input is not modified.
    """
    batch = batch_vector(data)
    b = _num_graphs(data)
    if rotations.shape != (b, 3, 3):
        raise ValueError(f"rotations must have shape ({b}, 3, 3), got {tuple(rotations.shape)}")
    q = rotations.to(device=data.pos.device, dtype=data.pos.dtype)
    out = copy.copy(data)
    pos = torch.einsum("ni,nij->nj", data.pos, q[batch])
    if translations is not None:
        if translations.shape != (b, 3):
            raise ValueError(f"translations must have shape ({b}, 3), got {tuple(translations.shape)}")
        pos = pos + translations.to(device=pos.device, dtype=pos.dtype)[batch]
    out.pos = pos
    cell = getattr(data, "cell", None)
    if cell is not None:
        out.cell = torch.bmm(cell.to(q.dtype), q)
    for key in VECTOR_FIELDS:
        v = getattr(data, key, None)
        if isinstance(v, Tensor) and v.shape == data.pos.shape:
            out[key] = torch.einsum("ni,nij->nj", v.to(q.dtype), q[batch])
    return out


def _level(data, key: str, value: Tensor, node_sizes: Tensor, edge_sizes: Tensor) -> str | None:
    """'node' | 'edge' | 'graph' for a batch field, or None when it cannot be told or is index-valued."""
    if key in _NODE_KEYS:
        return "node"
    if key in _EDGE_KEYS:
        return "edge"
    if key in _GRAPH_KEYS:
        return "graph"
    slices = getattr(data, "_slice_dict", None) or {}
    incs = getattr(data, "_inc_dict", None) or {}
    if key not in slices or value.dim() == 0:
        return None
    inc = incs.get(key)
    if isinstance(inc, Tensor) and bool((inc != 0).any()):
        return None  # an index into nodes/edges other than edge_index: offsets unknown, not carried
    sizes = slices[key].diff().to(node_sizes.device)
    if sizes.shape != node_sizes.shape:
        return None
    if torch.equal(sizes, node_sizes):
        return "node"
    if torch.equal(sizes, edge_sizes):
        return "edge"
    if bool((sizes == 1).all()):
        return "graph"
    return None


def stack_frames(data, pos_f: Tensor, cell_f: Tensor | None) -> Batch:
    """One batch holding F projected copies of ``data`` (frame-major), for a single model call.

    ``pos_f`` (F, N, 3), ``cell_f`` (F, B, 3, 3). Node fields are repeated, ``batch`` offset by ``f*B``,
    ``edge_index`` by ``f*N``, ``cell_offsets`` and graph fields (``natoms``...) repeated. Fields whose level
    cannot be told (not in the record schema and not from PyG collation) are not carried.
    """
    n_f, n = pos_f.shape[0], pos_f.shape[1]
    batch = batch_vector(data)
    b = _num_graphs(data)
    ei = data.edge_index
    e = ei.shape[1]
    dev = batch.device
    node_sizes = torch.bincount(batch, minlength=b)
    edge_sizes = torch.bincount(batch[ei[1]], minlength=b) if e else torch.zeros_like(node_sizes)
    fr = torch.arange(n_f, device=dev)
    fields: dict = {
        "pos": pos_f.reshape(n_f * n, 3),
        "batch": (batch[None, :] + fr[:, None] * b).reshape(-1),
        "edge_index": (ei[:, None, :] + (fr * n)[None, :, None]).reshape(2, n_f * e),
    }
    counts = node_sizes.repeat(n_f)
    fields["ptr"] = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    if cell_f is not None:
        fields["cell"] = cell_f.reshape(n_f * b, *cell_f.shape[2:])
    for key in data.keys():
        if key in fields or key == "cell":
            continue
        value = data[key]
        if not isinstance(value, Tensor):
            fields[key] = list(value) * n_f if isinstance(value, list | tuple) and len(value) == b else value
            continue
        if _level(data, key, value, node_sizes, edge_sizes) is not None:
            fields[key] = value.repeat(n_f, *([1] * (value.dim() - 1)))
    out = Batch(**fields)
    out._num_graphs = n_f * b
    return out


class SymmetryWrapper(nn.Module):
    """Wrap ``model`` with a symmetry method (module docstring); ``forward(data)`` returns the model's dict.

    ``frame_dim``: 2 for slabs (frames/rotations about z only, OC20) or 3 for molecules.
    ``generator``: optional torch Generator for the frame / rotation draws (default: torch's global RNG).
    ``differentiable_frames``: keep d(frame)/d(pos) in the autograd graph (``compute_frames(differentiable=
    True)``; same outputs), so that autograd through the wrapper gives the exact gradient of its energy
    (``faenet.calculator``). Off by default: training and evaluation treat the frame as a constant.
    ``frame_construction``: how FA methods build their frames (``faenet.frames.FRAME_CONSTRUCTIONS``):
    ``pca`` (Eq. (2), the paper's), or ``lattice`` / ``edges``, invariant to moving atoms by lattice vectors
    (``faenet.frames.compute_frames_by``; ``edge_cutoff`` in Å weights the edges of ``edges``).
    """

    def __init__(self, model: nn.Module, method: str = "none", frame_dim: int = 3,
                 generator: torch.Generator | None = None, da_reflect: bool = True,
                 differentiable_frames: bool = False, frame_construction: str = "pca",
                 edge_cutoff: float = 6.0) -> None:
        super().__init__()
        if frame_construction not in FRAME_CONSTRUCTIONS:
            raise ValueError(f"unknown frame construction {frame_construction!r}; allowed: "
                             f"{', '.join(FRAME_CONSTRUCTIONS)}")
        if method not in METHODS:
            raise ValueError(f"unknown symmetry method {method!r}; allowed: {', '.join(METHODS)}")
        if frame_dim not in (2, 3):
            raise ValueError(f"frame_dim must be 2 (slabs, about z) or 3 (molecules), got {frame_dim!r}")
        self.model = model
        self.method = method
        self.frame_dim = frame_dim
        self.generator = generator
        self.da_reflect = da_reflect
        self.se3 = method.startswith("se3-")
        self.differentiable_frames = differentiable_frames
        self.frame_construction = frame_construction
        self.edge_cutoff = edge_cutoff

    @property
    def regress_forces(self) -> str:
        return getattr(self.model, "regress_forces", "")

    @property
    def num_frames(self) -> int:
        """Frames per graph for FA methods (1 for none / da)."""
        return num_frames(self.frame_dim, self.se3) if self.method.endswith(("sfa", "full")) else 1

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, frame_dim={self.frame_dim}, "
                f"frame_construction={getattr(self, 'frame_construction', 'pca')!r}")

    def draw_frames(self, num_graphs: int, device: torch.device | str = "cpu") -> Tensor:
        """(B,) frame indices, uniform in [0, num_frames) (SFA, Eq. (5))."""
        gdev = self.generator.device if self.generator is not None else torch.device("cpu")
        idx = torch.randint(self.num_frames, (num_graphs,), generator=self.generator, device=gdev)
        return idx.to(device)

    def forward(self, data) -> dict[str, Tensor]:
        m = self.method
        if m == "none" or (m == "da" and not self.training):
            return self.model(_input_copy(data))
        batch = batch_vector(data)
        b = _num_graphs(data)
        if m == "da":
            q = random_rotation(b, self.frame_dim, self.da_reflect, self.generator, data.pos.dtype,
                                data.pos.device)
            out = self.model(apply_transform(data, q))
            return _map_back(out, q, batch)
        cell = getattr(data, "cell", None)
        frames = compute_frames_by(getattr(self, "frame_construction", "pca"), data.pos, batch, b, self.frame_dim,
                                   self.se3, differentiable=getattr(self, "differentiable_frames", False),
                                   cell=cell, pbc=getattr(data, "pbc", None),
                                   edge_index=getattr(data, "edge_index", None),
                                   cell_offsets=getattr(data, "cell_offsets", None),
                                   edge_cutoff=getattr(self, "edge_cutoff", 6.0))
        if m.endswith("sfa"):
            pos_f, cell_f, rot = project(data.pos, cell, batch, frames, self.draw_frames(b, batch.device))
            moved = copy.copy(data)
            moved.pos = pos_f
            if cell_f is not None:
                moved.cell = cell_f
            return _map_back(self.model(moved), rot, batch)
        pos_f, cell_f = project_all(data.pos, cell, batch, frames)
        if hasattr(self.model, "forward_frames"):  # the model does its frame-invariant work once
            out = self.model.forward_frames(_input_copy(data), pos_f, cell_f)
        else:
            out = self.model(stack_frames(data, pos_f, cell_f))
        return _average_frames(out, frames.rotations, batch, b)


def _map_back(out: dict, rotations: Tensor, batch: Tensor) -> dict:
    """Rotate per-atom equivariant outputs back with ``v @ V^T`` (V per graph, (B, 3, 3))."""
    return {k: rotate_back(v, rotations.to(v.dtype), batch) if k in EQUIVARIANT_OUTPUTS else v
            for k, v in out.items()}


def _average_frames(out: dict, rotations: Tensor, batch: Tensor, b: int) -> dict:
    """Eq. (1)/(5) with all frames: mean over frames of graph outputs and of back-rotated per-atom vectors."""
    n_f, n = rotations.shape[1], batch.shape[0]
    res = {}
    for k, v in out.items():
        if not isinstance(v, Tensor) or v.dim() == 0:
            res[k] = v
        elif k in EQUIVARIANT_OUTPUTS:
            if v.shape[0] != n_f * n:
                raise ValueError(f"output {k!r} has {v.shape[0]} rows, expected {n_f * n} (F * atoms)")
            res[k] = rotate_back(v.reshape(n_f, n, 3), rotations.to(v.dtype), batch).mean(0)
        elif v.shape[0] == n_f * b:
            res[k] = v.reshape(n_f, b, *v.shape[1:]).mean(0)
        elif v.shape[0] == n_f * n:
            res[k] = v.reshape(n_f, n, *v.shape[1:]).mean(0)
        else:
            res[k] = v
    return res
