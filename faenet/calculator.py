"""An ASE calculator around any trained model of the project interface (FAENet under any symmetry method,
every baseline): energy in eV and forces in eV/Å, for molecules and periodic slabs.

``ModelCalculator(model, cutoff=..., max_num_neighbors=..., ...)`` takes the model (a bare model plus
``symmetry``/``frame_dim``, or a ``faenet.symmetry.SymmetryWrapper``), the graph settings its training data were
built with, and the training ``Normalizer``; ``ModelCalculator.from_checkpoint(path, ...)`` reads a final state
written by the train stage (weights-only, ``faenet.checkpoint``). The cell-name convenience lives in
``pipeline/calculator.py`` (this module knows nothing of the pipeline).

On every call the record is rebuilt from the ``Atoms`` as the datasets build theirs (``faenet.data.records``):
positions, Z, the radius graph with periodic images (``faenet.graph.radius_graph`` at the data cutoff and
neighbour cap; for periodic cells found on wrapped positions and expressed for the positions as given,
:func:`periodic_graph`), cell and pbc, OC20 tags and ``fixed``; then the training rewiring (``remove-tag-0``: the
model sees no sub-surface atom; their forces are returned as 0).

Continuity: the neighbour cap keeps the nearest ``max_num_neighbors`` with ties broken by index. In small cells
(the embedded 2x2 slabs) periodic images tie exactly in distance, so a capped graph switches edges under any
move and the potential jumps; no model here has a smooth cutoff envelope either, so an edge crossing the
cutoff is a jump too. Both are properties of the trained models' inputs, which the calculator reproduces.

Tags (periodic systems): ``atoms.get_tags()`` when any is non-zero; otherwise atoms held by a ``FixAtoms``
constraint get tag 0 (sub-surface), ``adsorbate_indices`` tag 2 and every other atom tag 1 (surface). OC20 fixes
exactly its tag-0 atoms, so the constraint is the one piece of ``Atoms`` that says which atoms are sub-surface.
Molecules (no periodic direction) get tag -1, as in the QM7-X / QM9 records.

Energy: ``Normalizer.denormalize`` of the model's output (the training target mapping: ``E*std + mean`` plus
the per-element reference sum); direct forces are ``F*std`` (forces are trained as ``F / std``).

``forces``:

- ``"direct"``: the force head (models with ``regress_forces`` = direct / direct_with_gradient_target);
- ``"from_energy"``: ``-dE/dpos`` of the calculator's own energy by autograd, for any model (the model's own
  gradient is switched off for that pass and the energy differentiated here). Under frame averaging the frame is
  differentiated too (``SymmetryWrapper(differentiable_frames=True)``), so these forces are the exact gradient
  of the reported energy (central finite differences agree; the Jacobian is symmetric). This differs from a
  ``from_energy`` model's own output under FA, which holds the frame constant.

Default: the model's own mode (direct if it has a force head, else from_energy).

``frame_policy`` (FA methods: sfa, full, se3-sfa, se3-full):

- ``"full"`` (default): average over every frame (Eq. (1)). Deterministic and exactly E(3)-invariant, and it is
  the expectation of an SFA model's one-frame prediction (Eq. (5) draws one of these frames uniformly), i.e.
  the SFA model's prediction without sampling noise. A calculator must be a function of the positions: ASE
  caches results per geometry, optimisers' line searches compare energies of nearby geometries, and NVE can
  conserve only the energy of a fixed potential. Costs |F| (4 in 2D, 8 in 3D) x one frame.
- ``"redraw"``: a new frame drawn on every call (the paper's SFA at inference). The potential is then
  stochastic: energies and forces of the same geometry differ between calls, so NVE cannot conserve energy.
- ``"fixed"``: one frame index drawn once (from ``seed``) and used on every call: deterministic and as cheap as
  SFA, but one frame's prediction (not the average), which jumps where that frame's axes or signs switch.

``none`` and ``da`` models (DA is a training-time augmentation: the model is evaluated as is) take no frame;
asking them for ``redraw`` or ``fixed`` is an error.

Example::

    calc = ModelCalculator.from_checkpoint("models/faenet-s2ef-sfa/seed0.pt", cutoff=6.0, max_num_neighbors=30,
                                           build_model=baselines.registry.build_model, forces="from_energy")
    atoms.calc = calc  # then atoms.get_potential_energy(), ase.md.verlet.VelocityVerlet(atoms, ...), BFGS(atoms)

(``pipeline.calculator.cell_calculator(params, "faenet-s2ef-sfa")`` does the same from a cell name.)

Evaluation runs in eval mode, in ``dtype`` (default float64: energy conservation is measured to ~1e-6 eV, below
float32 rounding of total energies) on a deep copy of the model, so the caller's model is not changed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixAtoms
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from faenet.data.records import TAG_ADSORBATE, TAG_MOLECULE, TAG_SUBSURFACE, TAG_SURFACE
from faenet.graph import radius_graph
from faenet.symmetry import METHODS, SymmetryWrapper
from faenet.training import Normalizer

FRAME_POLICIES = ("full", "redraw", "fixed")
FORCE_MODES = ("direct", "from_energy")
REWIRINGS = ("none", "remove-tag-0")
#: Symmetry methods that average over frames (the only ones a frame policy applies to).
FA_METHODS = ("sfa", "full", "se3-sfa", "se3-full")
#: Model force modes with a direct force head (so ``forces="direct"`` is available).
DIRECT_HEADS = ("direct", "direct_with_gradient_target")


@contextlib.contextmanager
def _energy_only(model: nn.Module) -> Iterator[None]:
    """The model's own ``-dE/dpos`` off for one pass (``regress_forces = ""``): it would free the autograd
    graph (eval mode: no ``retain_graph``) before the calculator differentiates the de-normalised energy."""
    saved = getattr(model, "regress_forces", "")
    model.regress_forces = ""
    try:
        yield
    finally:
        model.regress_forces = saved


def atoms_tags(atoms: Any, adsorbate_indices: Sequence[int] | None = None) -> np.ndarray:
    """OC20 tags of ``atoms`` (module docstring): -1 for a molecule; its own tags if any is non-zero; else
    FixAtoms -> 0, ``adsorbate_indices`` -> 2, others -> 1."""
    n = len(atoms)
    if not any(atoms.pbc):
        return np.full(n, TAG_MOLECULE, dtype=np.int64)
    own = np.asarray(atoms.get_tags(), dtype=np.int64)
    if own.any():
        return own
    tags = np.full(n, TAG_SURFACE, dtype=np.int64)
    if adsorbate_indices is not None:
        tags[np.asarray(list(adsorbate_indices), dtype=np.int64)] = TAG_ADSORBATE
    tags[fixed_mask(atoms)] = TAG_SUBSURFACE
    return tags


def fixed_mask(atoms: Any) -> np.ndarray:
    """(N,) bool: atoms held by a ``FixAtoms`` constraint."""
    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = True
    return mask


def periodic_graph(pos: Tensor, cell: Tensor, pbc: Tensor, cutoff: float, max_num_neighbors: int
                   ) -> tuple[Tensor, Tensor]:
    """``radius_graph`` of positions that may lie outside the cell (MD never wraps them): edges are found on
    the positions wrapped into the cell along the periodic directions (``radius_graph`` enumerates the images
    a wrapped cell needs), then each offset is shifted by the wrap of its two atoms, so that
    ``pos[j] + offsets @ cell - pos[i]`` is the same vector for the positions as given. The model thus sees
    the unwrapped positions (no jump when an atom crosses a cell face) on a complete graph."""
    frac = torch.linalg.solve(cell.T, pos.T).T  # pos = frac @ cell
    shift = torch.where(pbc.reshape(1, 3), torch.floor(frac), torch.zeros_like(frac))
    edge_index, offsets = radius_graph(pos - shift @ cell, cutoff, max_num_neighbors, cell, pbc)
    n = shift.long()
    j, i = edge_index
    return edge_index, offsets - n[j] + n[i]


class ModelCalculator(Calculator):
    """ASE calculator for a trained model (module docstring for tags, forces modes and frame policies).

    Args:
        model: a project model, or a ``SymmetryWrapper`` around one (its method and frame_dim are then used).
        cutoff, max_num_neighbors: the radius graph of the training data (Å; neighbour cap per atom).
        symmetry, frame_dim: symmetry method and frame dimension (2: slabs, 3: molecules) of a bare model.
        normalizer: the training ``Normalizer`` (or its ``vars`` dict, as in checkpoints); None = identity.
        rewiring: "none" or "remove-tag-0" (the training graph rewiring).
        forces: "direct" or "from_energy"; None = the model's own mode.
        frame_policy: "full", "redraw" or "fixed" for FA methods; None = "full".
        seed: seeds the frame draws of "redraw" / "fixed".
        adsorbate_indices: atoms tagged 2 when ``atoms`` carries no tags.
        dtype: evaluation dtype (float64 default).
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, model: nn.Module, *, cutoff: float, max_num_neighbors: int, symmetry: str = "none",
                 frame_dim: int = 3, normalizer: Normalizer | Mapping[str, Any] | None = None,
                 rewiring: str = "none", forces: str | None = None, frame_policy: str | None = None,
                 seed: int = 0, adsorbate_indices: Sequence[int] | None = None,
                 dtype: torch.dtype = torch.float64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(model, SymmetryWrapper):
            symmetry, frame_dim, model = model.method, model.frame_dim, model.model
        if symmetry not in METHODS:
            raise ValueError(f"unknown symmetry method {symmetry!r}; allowed: {list(METHODS)}")
        if frame_policy is not None and frame_policy not in FRAME_POLICIES:
            raise ValueError(f"unknown frame_policy {frame_policy!r}; allowed: {list(FRAME_POLICIES)}")
        if symmetry not in FA_METHODS and frame_policy not in (None, "full"):
            raise ValueError(f"frame_policy={frame_policy!r} needs a frame-averaged model (symmetry in "
                             f"{list(FA_METHODS)}); this model's symmetry is {symmetry!r}, which uses no frame")
        if rewiring not in REWIRINGS:
            raise ValueError(f"unknown rewiring {rewiring!r}; allowed: {list(REWIRINGS)}")
        own = getattr(model, "regress_forces", "") or ""
        if forces is None:
            forces = "direct" if own in DIRECT_HEADS else "from_energy"
        if forces not in FORCE_MODES:
            raise ValueError(f"unknown forces mode {forces!r}; allowed: {list(FORCE_MODES)}")
        if forces == "direct" and own not in DIRECT_HEADS:
            raise ValueError(f"forces='direct' needs a direct force head, but {type(model).__name__} has "
                             f"regress_forces={own!r}; use forces='from_energy' (-dE/dpos)")
        if cutoff <= 0 or max_num_neighbors < 1:
            raise ValueError(f"need cutoff > 0 Å and max_num_neighbors >= 1, got {cutoff}, {max_num_neighbors}")
        self.cutoff, self.max_num_neighbors = float(cutoff), int(max_num_neighbors)
        self.symmetry, self.frame_dim, self.rewiring = symmetry, int(frame_dim), rewiring
        self.forces_mode = forces
        self.frame_policy = frame_policy or "full"
        self.seed = int(seed)
        self.adsorbate_indices = None if adsorbate_indices is None else list(adsorbate_indices)
        self.dtype = dtype
        self.normalizer = Normalizer.from_state(normalizer)
        self.model = copy.deepcopy(model).to(dtype).eval()
        self.generator = torch.Generator().manual_seed(self.seed)
        self.wrapper = SymmetryWrapper(self.model, self._method(), frame_dim=self.frame_dim,
                                       generator=self.generator, differentiable_frames=True).eval()

    def _method(self) -> str:
        if self.symmetry not in FA_METHODS:
            return "none"  # da at inference = the model as is
        prefix = "se3-" if self.symmetry.startswith("se3-") else ""
        return prefix + ("full" if self.frame_policy == "full" else "sfa")

    # -- construction from a checkpoint -------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: Any, *, cutoff: float, max_num_neighbors: int, frame_dim: int | None = None,
                        build_model: Callable[..., nn.Module] | None = None, **kwargs: Any) -> ModelCalculator:
        """A calculator for the final state at ``path`` (``model``, ``model_name``, ``hparams``, ``symmetry``,
        ``normalizer``, ``task``, ``rewiring``; read weights-only). ``build_model(name, **hparams)`` builds the
        model (default: FAENet only; pass ``baselines.registry.build_model`` for baselines); ``frame_dim``
        defaults to the task's (``faenet.tasks.FRAME_DIM``)."""
        from faenet.checkpoint import load_checkpoint
        from faenet.tasks import FRAME_DIM

        state = load_checkpoint(path)
        need = ("model", "model_name", "hparams", "symmetry")
        missing = [k for k in need if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"{path}: not a final model state (missing {missing})")
        if build_model is None:
            if state["model_name"] != "faenet":
                raise ValueError(f"{path}: model {state['model_name']!r}; pass build_model (e.g. "
                                 "baselines.registry.build_model) to build a model other than FAENet")
            from faenet.model import FAENet

            net = FAENet(**state["hparams"])
        else:
            net = build_model(state["model_name"], **state["hparams"])
        net.load_state_dict(state["model"])
        if frame_dim is None:
            frame_dim = FRAME_DIM.get(state.get("task", ""), 3)
        kwargs.setdefault("rewiring", state.get("rewiring", "none"))
        return cls(net, cutoff=cutoff, max_num_neighbors=max_num_neighbors, symmetry=state["symmetry"],
                   frame_dim=frame_dim, normalizer=state.get("normalizer"), **kwargs)

    # -- records --------------------------------------------------------------------------------------------
    def record(self, atoms: Any) -> tuple[Data, Tensor]:
        """The model's input for ``atoms`` (before batching) and the indices of the atoms it keeps."""
        from faenet.data.dataset import remove_tag0

        n = len(atoms)
        periodic = bool(any(atoms.pbc))
        pos = torch.tensor(np.asarray(atoms.positions), dtype=self.dtype)
        cell = torch.tensor(np.asarray(atoms.cell.array), dtype=self.dtype).reshape(1, 3, 3)
        if not periodic:
            cell = torch.zeros(1, 3, 3, dtype=self.dtype)
        pbc = torch.tensor(np.asarray(atoms.pbc, dtype=bool)).reshape(1, 3)
        if periodic:
            edge_index, offsets = periodic_graph(pos.detach().double(), cell[0].double(), pbc[0], self.cutoff,
                                                 self.max_num_neighbors)
        else:
            edge_index, offsets = radius_graph(pos.detach().double(), self.cutoff, self.max_num_neighbors)
        tags = torch.from_numpy(atoms_tags(atoms, self.adsorbate_indices))
        data = Data(pos=pos, atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.long), natoms=n, tags=tags,
                    fixed=torch.from_numpy(fixed_mask(atoms).astype(np.int64)), cell=cell, pbc=pbc,
                    edge_index=edge_index, cell_offsets=offsets, y=0.0)
        keep = torch.arange(n)
        if self.rewiring == "remove-tag-0":
            keep = keep[tags != TAG_SUBSURFACE]
            if keep.numel() == 0:
                raise ValueError("rewiring remove-tag-0 leaves no atom: every atom is sub-surface (tag 0); "
                                 "fix only the bottom layers, or give tags")
            data = remove_tag0(data)
        return data, keep

    # -- evaluation ------------------------------------------------------------------------------------------
    def _call(self, batch: Batch) -> dict[str, Tensor]:
        if self.frame_policy == "fixed":
            self.generator.manual_seed(self.seed)  # the same draw on every call
        return self.wrapper(batch)

    def energy_fn(self, atoms: Any) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        """``(E, keep)``: ``E(pos)`` is the energy (eV, a 0-d tensor differentiable in ``pos``) of the kept
        atoms' positions ``pos`` (K, 3), on the graph of ``atoms`` (fixed edges: a local chart of the
        potential)."""
        data, keep = self.record(atoms)
        template = Batch.from_data_list([data])

        def energy(pos: Tensor) -> Tensor:
            batch = copy.copy(template)
            batch.pos = pos
            with _energy_only(self.model):
                out = self._call(batch)
            return self.normalizer.denormalize(out["energy"].reshape(-1), batch)[0]

        return energy, keep

    def force_fn(self, atoms: Any, create_graph: bool = False) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        """``(F, keep)``: ``F(pos)`` the forces (K, 3) eV/Å of the kept atoms at positions ``pos`` (K, 3), in
        this calculator's forces mode, differentiable in ``pos`` (``create_graph`` for ``from_energy``)."""
        if self.forces_mode == "from_energy":
            energy, keep = self.energy_fn(atoms)

            def forces(pos: Tensor) -> Tensor:
                with torch.enable_grad():
                    p = pos if pos.requires_grad else pos.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(energy(p), p, create_graph=create_graph)
                return -g

            return forces, keep
        data, keep = self.record(atoms)
        template = Batch.from_data_list([data])

        def direct(pos: Tensor) -> Tensor:
            batch = copy.copy(template)
            batch.pos = pos
            return self._call(batch)["forces"] * self.normalizer.std

        return direct, keep

    def predict(self, atoms: Any) -> tuple[float, np.ndarray]:
        """``(energy eV, forces (N, 3) eV/Å)`` of ``atoms``; removed (tag-0) atoms get zero forces."""
        data, keep = self.record(atoms)
        batch = Batch.from_data_list([data])
        forces = np.zeros((len(atoms), 3))
        if self.forces_mode == "from_energy":
            with torch.enable_grad():
                batch.pos = batch.pos.detach().requires_grad_(True)
                with _energy_only(self.model):
                    out = self._call(batch)
                e = self.normalizer.denormalize(out["energy"].reshape(-1), batch)
                (g,) = torch.autograd.grad(e.sum(), batch.pos)
            f = -g
        else:
            with torch.no_grad():
                out = self._call(batch)
            e = self.normalizer.denormalize(out["energy"].reshape(-1), batch)
            f = out["forces"] * self.normalizer.std
        forces[keep.numpy()] = f.detach().to(torch.float64).numpy()
        return float(e.detach()[0]), forces

    def calculate(self, atoms: Any = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        Calculator.calculate(self, atoms, properties, system_changes)
        energy, forces = self.predict(self.atoms)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
