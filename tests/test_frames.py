"""faenet.frames: PCA frames (Eq. (2)-(4)), canonical projections, degeneracy flags. float64 throughout."""

import itertools

import pytest
import torch
from ase.build import molecule
from torch_geometric.data import Data

from faenet.frames import (
    DEFAULT_DEGENERACY_TOL,
    compute_frames,
    count_degenerate,
    eigengap,
    is_degenerate,
    num_frames,
    project,
    project_all,
    rotate_back,
)
from faenet.symmetry import random_rotation

N_TRANSFORMS = 24
F64 = torch.float64


def _clouds(seed: int, sizes=(7, 9, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """Anisotropic random point clouds (non-degenerate spectra), concatenated with a batch vector."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([2.5, 1.6, 0.9], dtype=F64)
    pos = [torch.randn(n, 3, generator=g, dtype=F64) * scale for n in sizes]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.cat(pos), batch


def _slab_cells(b: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cell = torch.zeros(b, 3, 3, dtype=torch.float64)
    cell[:, 0, 0] = 5 + torch.rand(b, generator=g)
    cell[:, 1, 0] = 1 + torch.rand(b, generator=g)
    cell[:, 1, 1] = 4 + torch.rand(b, generator=g)
    cell[:, 2, 2] = 20.0
    return cell


def _transform(pos, cell, batch, q, t):
    return torch.einsum("ni,nij->nj", pos, q[batch]) + t[batch], torch.bmm(cell, q)


@pytest.mark.parametrize("dim,se3,expected", [(3, False, 8), (3, True, 4), (2, False, 4), (2, True, 2)])
def test_frame_structure(dim, se3, expected):
    pos, batch = _clouds(0)
    fr = compute_frames(pos, batch, 3, dim=dim, se3=se3)
    assert fr.num_frames == expected == num_frames(dim, se3)
    r = fr.rotations
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(r @ r.transpose(-1, -2), eye.expand_as(r), atol=1e-12)
    dets = torch.linalg.det(r)
    if se3:
        assert torch.allclose(dets, torch.ones_like(dets), atol=1e-12)
    else:  # half proper, half improper for every graph
        assert ((dets > 0).sum(1) == expected // 2).all()
    # all frames distinct, descending eigenvalues, eigenvalues are those of the 1/n covariance
    assert len({tuple(x.flatten().round(decimals=8).tolist()) for x in r[0]}) == expected
    assert (fr.eigenvalues[:, :-1] >= fr.eigenvalues[:, 1:]).all()
    p0 = pos[batch == 0][:, :dim]
    cov = torch.cov(p0.T, correction=0)
    assert torch.allclose(fr.eigenvalues[0], torch.linalg.eigvalsh(cov).flip(0), atol=1e-12)
    if dim == 2:  # z untouched: z row/column are the identity's, centroid has t_z = 0
        assert torch.equal(r[..., 2, :], eye[2].expand_as(r[..., 2, :]))
        assert torch.equal(r[..., :, 2], eye[:, 2].expand_as(r[..., :, 2]))
        assert (fr.centroid[:, 2] == 0).all()
        pf, _, _ = project(pos, None, batch, fr, 1)
        assert torch.equal(pf[:, 2], pos[:, 2])
    # projected coordinates are centred and decorrelated (principal axes)
    pf, _ = project_all(pos, None, batch, fr)
    sel = pf[0][batch == 0][:, :dim]
    assert torch.allclose(sel.mean(0), torch.zeros(dim, dtype=torch.float64), atol=1e-12)
    c = torch.cov(sel.T, correction=0)
    assert torch.allclose(c, torch.diag(fr.eigenvalues[0]), atol=1e-10)


def test_frame_order_is_the_documented_sign_order():
    pos, batch = _clouds(1)
    fr = compute_frames(pos, batch, 3)
    table = torch.tensor(list(itertools.product([1.0, -1.0], repeat=3)), dtype=torch.float64)
    assert torch.equal(fr.signs[0], table)
    for f in range(8):  # frame f = frame 0 with columns scaled by the f-th sign vector
        assert torch.allclose(fr.rotations[:, f], fr.rotations[:, 0] * table[f], atol=0)
    # canonical column signs: third moments of frame-0 coordinates are >= 0
    pf, _, _ = project(pos, None, batch, fr, 0)
    m3 = torch.zeros(3, 3, dtype=torch.float64).index_add_(0, batch, pf ** 3)
    assert (m3 >= 0).all()
    se = compute_frames(pos, batch, 3, se3=True)
    for b in range(3):  # SE(3): the sign vectors with prod(s) = det(U), in the same order
        det_u = torch.linalg.det(fr.rotations[b, 0])
        assert torch.equal(se.signs[b], table[table.prod(1) * det_u > 0])
        assert torch.allclose(se.rotations[b], fr.rotations[b, 0] * se.signs[b][:, None, :], atol=0)
    again = compute_frames(pos, batch, 3)
    assert torch.equal(again.rotations, fr.rotations)


@pytest.mark.parametrize("se3", [False, True])
def test_projection_is_canonical_in_3d(se3):
    """Rotated/reflected/translated copies project to the same positions: frame by frame (canonical order)
    and hence as a set. Under SE(3) frames only rotations are allowed."""
    pos, batch = _clouds(2)
    g = torch.Generator().manual_seed(3)
    fr = compute_frames(pos, batch, 3, se3=se3)
    ref, _ = project_all(pos, None, batch, fr)
    for _ in range(N_TRANSFORMS):
        q = random_rotation(3, 3, reflect=not se3, generator=g)
        t = torch.randn(3, 3, generator=g, dtype=torch.float64) * 10
        p2 = torch.einsum("ni,nij->nj", pos, q[batch]) + t[batch]
        fr2 = compute_frames(p2, batch, 3, se3=se3)
        out, _ = project_all(p2, None, batch, fr2)
        assert torch.allclose(out, ref, atol=1e-9)
        assert _same_sets(out, ref, batch)
        # frames are equivariant: V' = Q^T V
        assert torch.allclose(fr2.rotations, q.transpose(1, 2)[:, None] @ fr.rotations, atol=1e-9)


def test_se3_projection_of_a_mirror_image_is_a_different_set():
    pos, batch = _clouds(4)
    fr = compute_frames(pos, batch, 3, se3=True)
    mirror = pos * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    fr2 = compute_frames(mirror, batch, 3, se3=True)
    ref = project_all(pos, None, batch, fr)[0]
    assert not _same_sets(project_all(mirror, None, batch, fr2)[0], ref, batch)
    full = compute_frames(pos, batch, 3), compute_frames(mirror, batch, 3)
    ref_full = project_all(pos, None, batch, full[0])[0]
    assert _same_sets(project_all(mirror, None, batch, full[1])[0], ref_full, batch)


@pytest.mark.parametrize("se3", [False, True])
def test_projection_is_canonical_for_periodic_slabs_2d(se3):
    """2D frames: rotations (and reflections unless SE(3)) about z and x, y translations; the cell moves
    with the atoms and its projection is canonical too (Eq. (4)); z is kept as is."""
    pos, batch = _clouds(5)
    pos[:, 2] = pos[:, 2].abs() * 2  # slab-like heights
    cell = _slab_cells(3, 6)
    g = torch.Generator().manual_seed(7)
    fr = compute_frames(pos, batch, 3, dim=2, se3=se3)
    ref_p, ref_c = project_all(pos, cell, batch, fr)
    for _ in range(N_TRANSFORMS):
        q = random_rotation(3, 2, reflect=not se3, generator=g)
        t = torch.randn(3, 3, generator=g, dtype=torch.float64) * 10
        t[:, 2] = 0
        p2, c2 = _transform(pos, cell, batch, q, t)
        fr2 = compute_frames(p2, batch, 3, dim=2, se3=se3)
        out_p, out_c = project_all(p2, c2, batch, fr2)
        assert torch.allclose(out_p, ref_p, atol=1e-9)
        assert torch.allclose(out_c, ref_c, atol=1e-9)
        assert _same_sets(out_p, ref_p, batch)


def test_rotate_back_inverts_projection_and_offsets_stay_valid():
    pos, batch = _clouds(8)
    cell = _slab_cells(3, 9)
    fr = compute_frames(pos, batch, 3)
    idx = torch.tensor([0, 5, 7])
    pf, cf, rot = project(pos, cell, batch, fr, idx)
    assert torch.allclose(rotate_back(pf, rot, batch) + fr.centroid[batch], pos, atol=1e-12)
    # an edge vector with a lattice offset maps to vec @ V in the frame (offsets unchanged)
    off = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    i, j = 0, 3
    vec = pos[j] + off @ cell[0] - pos[i]
    vec_f = pf[j] + off @ cf[0] - pf[i]
    assert torch.allclose(vec_f, vec @ rot[0], atol=1e-12)
    all_p, _ = project_all(pos, cell, batch, fr)
    back = rotate_back(all_p, fr.rotations, batch) + fr.centroid[batch]
    assert torch.allclose(back, pos.expand(8, -1, -1), atol=1e-12)


def test_projection_gradient_flows_to_positions_but_not_through_the_frame():
    pos, batch = _clouds(10)
    pos.requires_grad_(True)
    fr = compute_frames(pos, batch, 3)
    assert not fr.rotations.requires_grad
    pf, _, rot = project(pos, None, batch, fr, 2)
    (g,) = torch.autograd.grad((pf * pf.detach()).sum(), pos)
    assert torch.allclose(g, rotate_back(pf.detach(), rot, batch), atol=1e-12)


def _square_planar():
    d = 2.0
    return torch.tensor([[0, 0, 0], [d, 0, 0], [-d, 0, 0], [0, d, 0], [0, -d, 0]], dtype=torch.float64)


def _rotated(pos: torch.Tensor, seed: int) -> torch.Tensor:
    q = random_rotation(1, 3, generator=torch.Generator().manual_seed(seed))[0]
    return pos @ q + 1.7


def test_degenerate_inputs_are_flagged_and_generic_clouds_are_not():
    ch4 = torch.tensor(molecule("CH4").positions, dtype=torch.float64)
    co2 = torch.tensor(molecule("CO2").positions, dtype=torch.float64)
    generic, gb = _clouds(11)
    shapes = [_rotated(_square_planar(), 1), _rotated(ch4, 2), _rotated(co2, 3)]
    shapes += [generic[gb == k] for k in range(3)]
    pos = torch.cat(shapes)
    batch = torch.repeat_interleave(torch.arange(6), torch.tensor([len(s) for s in shapes]))
    fr = compute_frames(pos, batch, 6)
    flags = is_degenerate(fr)
    assert flags.tolist() == [True, True, True, False, False, False]
    assert (fr.eigengap[:3] < 1e-8).all() and (fr.eigengap[3:] > 10 * DEFAULT_DEGENERACY_TOL).all()
    assert torch.equal(is_degenerate(fr.eigengap, 0.0), torch.zeros(6, dtype=torch.bool))
    # a planar but otherwise generic molecule is fine (λ3 = 0 is a distinct eigenvalue)
    planar = generic[gb == 2].clone()
    planar[:, 2] = 0
    fr_p = compute_frames(_rotated(planar, 4), torch.zeros(len(planar), dtype=torch.long), 1)
    assert not bool(is_degenerate(fr_p)[0])
    # 2D: a square arrangement in x, y (any heights) is degenerate about z; its 3D frames need not be
    sq = torch.tensor([[1, 1, 0.0], [-1, 1, 1.0], [-1, -1, 2.0], [1, -1, 3.0]], dtype=torch.float64)
    b1 = torch.zeros(4, dtype=torch.long)
    assert bool(is_degenerate(compute_frames(sq, b1, 1, dim=2))[0])
    # a single atom: all eigenvalues 0, gap 0, no NaN
    one = compute_frames(torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.long), 1)
    assert torch.isfinite(one.rotations).all() and bool(is_degenerate(one)[0])


def test_eigengap_formula_and_count_degenerate():
    lam = torch.tensor([[4.0, 3.0, 1.0], [4.0, 4.0, 1.0], [1.0, 0.5, 0.5], [0.0, 0.0, 0.0]], dtype=F64)
    assert torch.allclose(eigengap(lam), torch.tensor([0.25, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(eigengap(lam[:, :2]), torch.tensor([0.25, 0.0, 0.5, 0.0], dtype=torch.float64))
    generic, gb = _clouds(12)
    recs = [Data(pos=_rotated(_square_planar(), 5)), Data(pos=torch.tensor(molecule("CH4").positions)),
            Data(pos=generic[gb == 0]), Data(pos=generic[gb == 1]),
            Data(pos=torch.tensor(molecule("CO2").positions))]
    assert count_degenerate(recs) == (3, 5)
    assert count_degenerate(iter(recs), chunk=2) == (3, 5)
    assert count_degenerate(recs, tol=0.0) == (0, 5)


def test_bad_inputs_raise_clear_errors():
    pos, batch = _clouds(13)
    with pytest.raises(ValueError, match="frame dim"):
        compute_frames(pos, batch, 3, dim=4)
    with pytest.raises(ValueError, match="pos must have shape"):
        compute_frames(pos[:, :2], batch, 3)
    with pytest.raises(ValueError, match="batch must have shape"):
        compute_frames(pos, batch[:-1], 3)
    fr = compute_frames(pos, batch, 3)
    with pytest.raises(ValueError, match=r"frame_index must lie in \[0, 7\]"):
        project(pos, None, batch, fr, 8)
    with pytest.raises(ValueError, match="frame_index must be an int or a"):
        project(pos, None, batch, fr, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="tol"):
        is_degenerate(fr, -1.0)


def _same_sets(a: torch.Tensor, b: torch.Tensor, batch: torch.Tensor, atol: float = 1e-9) -> bool:
    """Per graph, the set of F projected position arrays of ``a`` equals that of ``b`` (any frame order)."""
    for g in range(int(batch.max()) + 1):
        sa, sb = a[:, batch == g], b[:, batch == g]
        for x in sa:
            if not any(torch.allclose(x, y, atol=atol) for y in sb):
                return False
    return True
