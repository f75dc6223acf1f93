"""faenet.symmetry: FA / SFA / DA wrappers around a deliberately NON-invariant toy model (float64).

The toy model reads raw coordinates and raw edge vectors, so any invariance or equivariance measured here
comes from the frames (Eq. (1)-(5)), not from the model.
"""

import copy

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from faenet.frames import compute_frames, project, project_all, rotate_back
from faenet.graph import edge_vectors, radius_graph
from faenet.symmetry import (
    METHODS,
    SymmetryWrapper,
    apply_transform,
    random_rotation,
    stack_frames,
)

N_TRANSFORMS = 20
F64 = torch.float64


def _mlp(n_in: int, n_out: int, hidden: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


class ToyModel(nn.Module):
    """energy = sum_atoms MLP(pos, z) + sum_edges MLP(vec_ij); direct forces = MLP(pos, z, sum vec_ij w_ij).

    Follows the project model interface; ``invariant=True`` keeps only an MLP of edge LENGTHS (invariant).
    """

    def __init__(self, regress_forces: str = "", invariant: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.regress_forces = regress_forces
        self.invariant = invariant
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.atom, self.pair, self.force = _mlp(4, 1), _mlp(3, 1), _mlp(7, 3)
        self.double()

    def forward(self, data) -> dict[str, torch.Tensor]:
        pos = data.pos
        if self.regress_forces == "from_energy" and not pos.requires_grad:
            pos.requires_grad_(True)
        z = data.atomic_numbers.to(pos.dtype)[:, None] / 10
        vec = edge_vectors(pos, data.edge_index, data.cell_offsets, data.cell, data.batch)
        b = data.num_graphs
        if self.invariant:
            d = vec.norm(dim=1, keepdim=True)
            w = self.pair(torch.cat([d, d ** 2, torch.cos(d)], 1)).squeeze(-1)
            e_atom = torch.zeros(len(pos), dtype=pos.dtype)
        else:
            w = self.pair(vec).squeeze(-1)
            e_atom = self.atom(torch.cat([pos, z], 1)).squeeze(-1)
        energy = torch.zeros(b, dtype=pos.dtype).index_add(0, data.batch, e_atom)
        energy = energy.index_add(0, data.batch[data.edge_index[1]], w)
        out = {"energy": energy}
        if self.regress_forces == "direct":
            agg = torch.zeros_like(pos).index_add(0, data.edge_index[1], vec * w[:, None])
            out["forces"] = self.force(torch.cat([pos, z, agg], 1))
        elif self.regress_forces == "from_energy":
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training)
            out["forces"] = -grad
            if self.training:
                out["forces_grad_target"] = -grad.detach()
        return out


class Recorder(nn.Module):
    """Records the positions it is given (to see which frame SFA drew)."""

    regress_forces = ""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, data):
        self.seen.append(data.pos.detach().clone())
        return {"energy": torch.zeros(data.num_graphs, dtype=data.pos.dtype)}


def _record(pos: torch.Tensor, z: torch.Tensor, cell: torch.Tensor | None = None, cutoff: float = 3.5
            ) -> Data:
    n = len(pos)
    pbc = (True, True, False) if cell is not None else (False, False, False)
    ei, off = radius_graph(pos, cutoff, 50, cell, pbc)
    return Data(pos=pos, atomic_numbers=z, natoms=n, tags=torch.full((n,), -1),
                fixed=torch.zeros(n, dtype=torch.long),
                cell=(cell if cell is not None else torch.zeros(3, 3, dtype=F64)).reshape(1, 3, 3),
                pbc=torch.tensor([pbc]), edge_index=ei, cell_offsets=off, y=0.0)


def _molecules(seed: int = 0, sizes=(6, 8, 11)) -> list[Data]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        pos = torch.randn(n, 3, generator=g, dtype=F64) * torch.tensor([2.0, 1.4, 0.9], dtype=F64)
        out.append(_record(pos, torch.randint(1, 9, (n,), generator=g)))
    return out


def _slabs(seed: int = 0, sizes=(7, 9)) -> list[Data]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        a = 5.0 + torch.rand(1, generator=g).item()
        cell = torch.tensor([[a, 0, 0], [1.3, 4.6, 0], [0, 0, 20.0]], dtype=F64)
        frac = torch.rand(n, 3, generator=g, dtype=F64)
        pos = frac[:, :2] @ cell[:2, :2]
        pos = torch.cat([pos, 6 * frac[:, 2:]], 1)
        out.append(_record(pos, torch.randint(1, 9, (n,), generator=g), cell))
    return out


def _nondegenerate(recs: list[Data], dim: int) -> None:
    b = Batch.from_data_list(recs)
    assert (compute_frames(b.pos, b.batch, b.num_graphs, dim).eigengap > 0.05).all()


def _transformed_pair(recs: list[Data], dim: int, reflect: bool | str, seed: int):
    """(reference batch, transformed batch, Q per graph): N_TRANSFORMS copies of ``recs``, each copy with its
    own random rotation (+ reflection), and translation (x, y only in 2D). reflect='only': det -1 always."""
    g = torch.Generator().manual_seed(seed)
    ref = Batch.from_data_list(recs * N_TRANSFORMS)
    b = ref.num_graphs
    q = random_rotation(N_TRANSFORMS, dim, reflect=bool(reflect), generator=g)
    if reflect == "only":
        mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=F64))
        q = mirror @ random_rotation(N_TRANSFORMS, dim, reflect=False, generator=g)
    q = q.repeat_interleave(len(recs), 0)
    t = torch.randn(b, 3, generator=g, dtype=F64) * 5
    if dim == 2:
        t[:, 2] = 0
    return ref, apply_transform(ref, q, t), q


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


CASES = [("molecules", 3), ("slabs", 2)]


def _data(kind: str) -> list[Data]:
    return _molecules() if kind == "molecules" else _slabs()


@pytest.mark.parametrize("kind,dim", CASES)
@pytest.mark.parametrize("forces", ["direct", "from_energy"])
def test_full_fa_is_exactly_invariant_and_equivariant(kind, dim, forces):
    recs = _data(kind)
    _nondegenerate(recs, dim)
    ref, moved, q = _transformed_pair(recs, dim, reflect=True, seed=1)
    assert (torch.linalg.det(q) < 0).any() and (torch.linalg.det(q) > 0).any()
    model = ToyModel(forces).eval()
    fa = SymmetryWrapper(model, "full", frame_dim=dim)
    o_ref, o_mov = fa(ref), fa(moved)
    assert _rel(o_mov["energy"], o_ref["energy"]) < 1e-6
    f_expected = torch.einsum("ni,nij->nj", o_ref["forces"], q[ref.batch])  # forces rotate with the atoms
    assert _rel(o_mov["forces"], f_expected) < 1e-6
    # ... while the bare model is far from invariant: the symmetry comes from the frames
    bare_ref, bare_mov = model(copy.copy(ref)), model(copy.copy(moved))
    assert _rel(bare_mov["energy"], bare_ref["energy"]) > 1e-2


@pytest.mark.parametrize("kind,dim", CASES)
def test_se3_full_fa_is_rotation_invariant_but_not_reflection_invariant(kind, dim):
    recs = _data(kind)
    model = ToyModel("direct").eval()
    fa = SymmetryWrapper(model, "se3-full", frame_dim=dim)
    ref, rot, q = _transformed_pair(recs, dim, reflect=False, seed=2)
    o_ref, o_rot = fa(ref), fa(rot)
    assert _rel(o_rot["energy"], o_ref["energy"]) < 1e-6
    assert _rel(o_rot["forces"], torch.einsum("ni,nij->nj", o_ref["forces"], q[ref.batch])) < 1e-6
    _, refl, _ = _transformed_pair(recs, dim, reflect="only", seed=3)
    e_refl = fa(refl)["energy"]
    per_graph = (e_refl - o_ref["energy"]).detach().abs() / o_ref["energy"].detach().abs().max()
    assert float(per_graph.min()) > 1e-5  # > 10x the invariance tolerance, for every graph


@pytest.mark.parametrize("kind,dim", CASES)
@pytest.mark.parametrize("method", ["full", "se3-full"])
@pytest.mark.parametrize("forces", ["direct", "from_energy"])
def test_stacked_full_fa_equals_one_model_call_per_frame(kind, dim, method, forces):
    """The single stacked call (edge_index offset f*N, batch offset f*B) == looping over frames."""
    batch = Batch.from_data_list(_data(kind))
    model = ToyModel(forces).train()
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].num_graphs))
    got = SymmetryWrapper(model, method, frame_dim=dim).train()(batch)
    fr = compute_frames(batch.pos, batch.batch, batch.num_graphs, dim, se3=method.startswith("se3"))
    assert calls == [fr.num_frames * batch.num_graphs]
    energies, forces_l, targets = [], [], []
    for f in range(fr.num_frames):
        pos_f, cell_f, rot = project(batch.pos, batch.cell, batch.batch, fr, f)
        d = copy.copy(batch)
        d.pos, d.cell = pos_f, cell_f
        out = model(d)
        energies.append(out["energy"])
        forces_l.append(rotate_back(out["forces"], rot, batch.batch))
        if "forces_grad_target" in out:
            targets.append(rotate_back(out["forces_grad_target"], rot, batch.batch))
    assert torch.allclose(got["energy"], torch.stack(energies).mean(0), rtol=1e-12, atol=1e-12)
    assert torch.allclose(got["forces"], torch.stack(forces_l).mean(0), rtol=1e-12, atol=1e-12)
    if targets:
        assert torch.allclose(got["forces_grad_target"], torch.stack(targets).mean(0), rtol=1e-12, atol=1e-12)
    # gradients reach the parameters through the single stacked call (training works)
    (got["energy"].sum() + got["forces"].sum()).backward()
    used = [*model.atom.parameters(), *model.pair.parameters()]
    used += list(model.force.parameters()) if forces == "direct" else []
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in used)


def test_stack_frames_bookkeeping_and_extra_fields():
    recs = _slabs()
    for r in recs:
        r.charge = torch.arange(r.natoms, dtype=F64)  # an unknown node field, found via PyG's slice dict
        r.ref_energy = torch.tensor([1.5])  # an unknown graph field
    batch = Batch.from_data_list(recs)
    fr = compute_frames(batch.pos, batch.batch, batch.num_graphs, 2)
    pos_f, cell_f = project_all(batch.pos, batch.cell, batch.batch, fr)
    st = stack_frames(batch, pos_f, cell_f)
    n, e, b, nf = batch.num_nodes, batch.edge_index.shape[1], batch.num_graphs, fr.num_frames
    assert st.num_graphs == nf * b and st.pos.shape == (nf * n, 3) and st.cell.shape == (nf * b, 3, 3)
    assert torch.equal(st.batch, torch.cat([batch.batch + f * b for f in range(nf)]))
    assert torch.equal(st.edge_index, torch.cat([batch.edge_index + f * n for f in range(nf)], 1))
    assert torch.equal(st.cell_offsets, batch.cell_offsets.repeat(nf, 1))
    assert torch.equal(st.natoms, batch.natoms.repeat(nf))
    assert torch.equal(st.atomic_numbers, batch.atomic_numbers.repeat(nf))
    assert torch.equal(st.charge, batch.charge.repeat(nf))
    assert torch.equal(st.ref_energy, batch.ref_energy.repeat(nf))
    assert torch.equal(st.ptr, torch.cat([torch.zeros(1, dtype=torch.long), st.natoms.cumsum(0)]))
    # stacked edge vectors are the frame rotations of the original ones (the graph is frame-invariant)
    v = edge_vectors(batch.pos, batch.edge_index, batch.cell_offsets, batch.cell, batch.batch)
    v_st = edge_vectors(st.pos, st.edge_index, st.cell_offsets, st.cell, st.batch).view(nf, e, 3)
    src_graph = batch.batch[batch.edge_index[1]]
    assert torch.allclose(rotate_back(v_st, fr.rotations, src_graph), v.expand(nf, -1, -1), atol=1e-12)


@pytest.mark.parametrize("method,dim,expected", [("sfa", 3, 8), ("se3-sfa", 3, 4), ("sfa", 2, 4),
                                                 ("se3-sfa", 2, 2)])
def test_sfa_draws_frames_uniformly(method, dim, expected):
    """4000 draws (40 graphs x 100 passes); chi-square against uniform at p = 0.001; SE(3) draws only
    proper frames."""
    rec = _molecules(5, sizes=(9,))[0]
    batch = Batch.from_data_list([rec] * 40)
    rec_model = Recorder()
    sfa = SymmetryWrapper(rec_model, method, frame_dim=dim, generator=torch.Generator().manual_seed(0))
    for _ in range(100):
        sfa(batch)
    fr = compute_frames(rec.pos, torch.zeros(9, dtype=torch.long), 1, dim)  # all E(3)/O(2) frames
    cand, _ = project_all(rec.pos, None, torch.zeros(9, dtype=torch.long), fr)  # (F_all, 9, 3)
    seen = torch.stack(rec_model.seen).view(-1, 9, 3)  # (4000, 9, 3)
    dist = (seen[:, None] - cand[None]).abs().amax(dim=(2, 3))  # (4000, F_all)
    assert bool((dist.min(1).values < 1e-9).all())
    idx = dist.argmin(1)
    counts = torch.bincount(idx, minlength=fr.num_frames).to(F64)
    proper = torch.linalg.det(fr.rotations[0]) > 0
    if method.startswith("se3"):
        assert counts[~proper].sum() == 0
        counts = counts[proper]
    assert len(counts) == expected
    exp = 4000 / expected
    chi2 = float(((counts - exp) ** 2 / exp).sum())
    crit = {1: 10.83, 3: 16.27, 7: 24.32}[expected - 1]
    assert chi2 < crit, (counts.tolist(), chi2)
    assert (counts - exp).abs().max() < 0.15 * exp


@pytest.mark.parametrize("kind,dim", CASES)
def test_sfa_output_is_one_frame_mapped_back_and_reproducible(kind, dim):
    batch = Batch.from_data_list(_data(kind))
    model = ToyModel("direct").eval()
    fr = compute_frames(batch.pos, batch.batch, batch.num_graphs, dim)
    per_frame = []
    for f in range(fr.num_frames):
        pos_f, cell_f, rot = project(batch.pos, batch.cell, batch.batch, fr, f)
        d = copy.copy(batch)
        d.pos, d.cell = pos_f, cell_f
        out = model(d)
        per_frame.append((out["energy"], rotate_back(out["forces"], rot, batch.batch)))
    a = SymmetryWrapper(model, "sfa", dim, generator=torch.Generator().manual_seed(3))(batch)
    b = SymmetryWrapper(model, "sfa", dim, generator=torch.Generator().manual_seed(3))(batch)
    assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"])
    for g in range(batch.num_graphs):
        atoms = batch.batch == g
        match = [f for f, (e, _) in enumerate(per_frame) if torch.allclose(a["energy"][g], e[g], atol=1e-12)]
        assert match, f"graph {g}: SFA energy matches no frame"
        assert torch.allclose(a["forces"][atoms], per_frame[match[0]][1][atoms], atol=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
def test_da_maps_forces_back_and_is_off_in_eval(dim):
    recs = _data("molecules" if dim == 3 else "slabs")
    batch = Batch.from_data_list(recs)
    inv = ToyModel("from_energy", invariant=True).train()
    da = SymmetryWrapper(inv, "da", dim, generator=torch.Generator().manual_seed(1)).train()
    none = SymmetryWrapper(inv, "none", dim).train()
    o_da, o_none = da(batch), none(batch)
    # an exactly invariant model is unaffected by DA once forces are rotated back
    assert torch.allclose(o_da["energy"], o_none["energy"], rtol=1e-10, atol=1e-10)
    assert torch.allclose(o_da["forces"], o_none["forces"], rtol=1e-10, atol=1e-10)
    assert torch.allclose(o_da["forces_grad_target"], o_none["forces"], rtol=1e-10, atol=1e-10)
    # a non-invariant model does see rotated inputs in training mode ...
    toy = ToyModel("direct").train()
    da_toy = SymmetryWrapper(toy, "da", dim, generator=torch.Generator().manual_seed(1)).train()
    assert _rel(da_toy(batch)["energy"], toy(copy.copy(batch))["energy"]) > 1e-3
    # ... and the input as is in eval mode: none and eval-mode da return exactly the model's output
    toy.eval()
    expected = toy(copy.copy(batch))
    for method in ("none", "da"):
        out = SymmetryWrapper(toy, method, dim).eval()(batch)
        assert out.keys() == expected.keys()
        assert all(torch.equal(out[k], expected[k]) for k in out)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("training", [True, False])
def test_wrapper_does_not_mutate_the_input_batch(method, training):
    batch = Batch.from_data_list(_slabs())
    before = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    keys = set(batch.keys())
    pos_obj = batch.pos
    wrapped = SymmetryWrapper(ToyModel("from_energy"), method, 2, generator=torch.Generator().manual_seed(0))
    wrapped.train(training)
    out = wrapped(batch)
    out["energy"].sum().backward() if training else None
    assert batch.pos is pos_obj and not batch.pos.requires_grad and batch.pos.grad is None
    assert set(batch.keys()) == keys
    assert batch.num_graphs == 2
    for k, v in before.items():
        assert torch.equal(batch[k], v), k


def test_random_rotation_is_haar_and_respects_reflect_flag():
    g = torch.Generator().manual_seed(0)
    n = 20000
    for reflect in (True, False):
        q = random_rotation(n, 3, reflect=reflect, generator=g)
        assert torch.allclose(q @ q.transpose(1, 2), torch.eye(3, dtype=F64).expand(n, 3, 3), atol=1e-12)
        det = torch.linalg.det(q)
        frac_neg = float((det < 0).to(F64).mean())
        assert abs(frac_neg - (0.5 if reflect else 0.0)) < 0.02
        # Haar: every entry has mean 0 and second moment 1/3; the image of a fixed axis is uniform on S^2
        assert float(q.mean(0).abs().max()) < 0.02
        assert float(((q ** 2).mean(0) - 1 / 3).abs().max()) < 0.02
        axis = q[:, 0, :]  # e_x @ q
        hist = torch.histc(axis[:, 2], bins=10, min=-1, max=1)  # z-coordinate uniform on [-1, 1] (Archimedes)
        assert float((hist / n - 0.1).abs().max()) < 0.01
    q2 = random_rotation(n, 2, reflect=True, generator=g)
    e_z = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    assert torch.equal(q2[:, 2], e_z.expand(n, 3)) and torch.equal(q2[:, :, 2], e_z.expand(n, 3))
    assert abs(float((torch.linalg.det(q2) < 0).to(F64).mean()) - 0.5) < 0.02
    angle = torch.atan2(q2[:, 0, 1], q2[:, 1, 1])  # uniform on the circle
    assert float(torch.cos(angle).mean().abs()) < 0.02 and float(torch.sin(angle).mean().abs()) < 0.02
    a = random_rotation(5, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, random_rotation(5, 3, generator=torch.Generator().manual_seed(4)))


def test_apply_transform_moves_positions_cell_forces_and_keeps_edges_valid():
    recs = _slabs()
    for r in recs:
        r.force = torch.randn(r.natoms, 3, dtype=F64)
    batch = Batch.from_data_list(recs)
    snapshot = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    q = random_rotation(2, 3, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 0.5, 0.0]], dtype=F64)
    moved = apply_transform(batch, q, t)
    assert torch.allclose(moved.pos, torch.einsum("ni,nij->nj", batch.pos, q[batch.batch]) + t[batch.batch])
    assert torch.allclose(moved.cell, batch.cell @ q)
    assert torch.allclose(moved.force, torch.einsum("ni,nij->nj", batch.force, q[batch.batch]))
    v = edge_vectors(batch.pos, batch.edge_index, batch.cell_offsets, batch.cell, batch.batch)
    v2 = edge_vectors(moved.pos, moved.edge_index, moved.cell_offsets, moved.cell, moved.batch)
    assert torch.allclose(v2, torch.einsum("ei,eij->ej", v, q[batch.batch[batch.edge_index[1]]]), atol=1e-12)
    for k, val in snapshot.items():
        assert torch.equal(batch[k], val), k
    with pytest.raises(ValueError, match=r"rotations must have shape \(2, 3, 3\)"):
        apply_transform(batch, q[:1])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="allowed: none, da, sfa, full, se3-sfa, se3-full"):
        SymmetryWrapper(ToyModel(), "fa")
    with pytest.raises(ValueError, match="frame_dim must be 2"):
        SymmetryWrapper(ToyModel(), "full", frame_dim=1)
    with pytest.raises(ValueError, match="dim must be 2"):
        random_rotation(3, 4)
    w = SymmetryWrapper(ToyModel("direct"), "se3-full", 3)
    assert w.regress_forces == "direct" and w.num_frames == 4
    assert SymmetryWrapper(ToyModel(), "da", 2).num_frames == 1
