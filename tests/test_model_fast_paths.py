"""FAENet fast paths against their literal counterparts, in float64, gradients included:

- the chunked, in-place edge embedding of inference (every ``edge_embed_type``, one or two layers, one or
  several frames) == the literal Eq. (7);
- ``FAENet.forward_frames`` (Full FA with the frame-invariant work done once) == the model called on the
  stacked batch of frames (``stack_frames``), for energies, forces, gradient targets and parameter
  gradients, in training and evaluation mode.
"""

import itertools
import math

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

import faenet.inference as fm
from faenet.frames import compute_frames, project_all
from faenet.graph import radius_graph
from faenet.model import EDGE_EMBED_TYPES, EdgeEmbedding, FAENet, GaussianRBF
from faenet.symmetry import SymmetryWrapper, stack_frames

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _slab(seed: int, n: int = 7) -> Data:
    """A small periodic slab (x, y periodic) with sub-surface, surface and adsorbate tags."""
    g = torch.Generator().manual_seed(seed)
    cell = torch.tensor([[3.1, 0.0, 0.0], [0.9, 3.3, 0.0], [0.0, 0.0, 14.0]], dtype=F64)
    frac = torch.rand(n, 3, generator=g, dtype=F64) * torch.tensor([1.0, 1.0, 0.25], dtype=F64)
    pos = frac @ cell
    ei, off = radius_graph(pos, 4.5, 40, cell, (True, True, False))
    tags = torch.tensor([0, 0, 1, 1, 1] + [2] * (n - 5))
    return Data(pos=pos, atomic_numbers=torch.randint(20, 80, (n,), generator=g), natoms=n, tags=tags,
                fixed=(tags == 0).long(), cell=cell[None], pbc=torch.tensor([[True, True, False]]),
                edge_index=ei, cell_offsets=off, y=0.0)


def _tiny(**kw) -> FAENet:
    args = dict(hidden_channels=32, num_filters=12, num_gaussians=6, num_interactions=2, tag_hidden_channels=4,
                pg_hidden_channels=3, cutoff=4.0, force_decoder_hidden_channels=8, max_num_neighbors=9)
    args.update(kw)
    return FAENet(**args).to(F64)


@pytest.mark.parametrize("kind,second,frames", list(itertools.product(EDGE_EMBED_TYPES, [True, False], [1, 3])))
def test_edge_embedding_inference_path_equals_literal(monkeypatch, kind, second, frames):
    torch.manual_seed(0)
    emb = EdgeEmbedding(10, 6, 4.0, kind, second, 3).to(F64)
    n_edges = 23
    dist = torch.rand(n_edges, dtype=F64) * 3.5 + 0.3
    unit = torch.nn.functional.normalize(torch.randn(frames * n_edges, 3, dtype=F64), dim=-1)
    vec = unit * dist.repeat(frames)[:, None]
    literal = emb(vec.requires_grad_(True), dist, frames).detach()  # autograd: the literal path
    monkeypatch.setattr(fm, "_CHUNK_ELEMENTS", 10 * 4)  # 4 edges per chunk: many chunks and a ragged last one
    with torch.no_grad():
        fast = emb(vec.detach(), dist, frames)
    assert torch.allclose(fast, literal, rtol=1e-12, atol=1e-12), (fast - literal).abs().max()
    # frames > 1 is the same as embedding each frame on its own
    per_frame = torch.cat([emb(vec[f * n_edges:(f + 1) * n_edges], dist, 1) for f in range(frames)]).detach()
    assert torch.allclose(literal, per_frame, rtol=1e-12, atol=1e-12)


def test_edge_embedding_rejects_mismatched_frames():
    emb = EdgeEmbedding(8, 4, 4.0, "all_rij", True, 3)
    with pytest.raises(ValueError, match="frames"):
        emb(torch.randn(10, 3), torch.rand(4), 2)


def test_in_place_rbf_equals_literal():
    rbf = GaussianRBF(6.0, 11).to(F64)
    d = torch.rand(50, dtype=F64) * 6
    literal = torch.exp(rbf.coeff * (d.unsqueeze(-1) - rbf.offsets) ** 2)
    assert torch.equal(rbf(d), literal)
    assert torch.equal(rbf(d.clone().requires_grad_(True)).detach(), literal)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_in_place_rbf_flushes_only_values_near_underflow(dtype):
    """Table 7 sizes (104 Gaussians on 6 Å): most arguments are far below the exp underflow. Results below
    exp(floor) (about the smallest normal number, 1.7e-38 in float32) are set to 0; the others agree with the
    literal exp to rounding (the vectorised exp rounds a lane differently when another lane of its vector
    underflows)."""
    rbf = GaussianRBF(6.0, 104).to(dtype)
    d = torch.linspace(0.0, 6.0, 997, dtype=dtype)
    literal = torch.exp(rbf.coeff * (d.unsqueeze(-1) - rbf.offsets) ** 2)
    fast = rbf(d)
    cut = math.exp(fm._EXP_NORMAL_FLOOR[dtype]) * 1.01
    big = literal > cut
    assert torch.allclose(fast[big], literal[big], rtol=2 * torch.finfo(dtype).eps, atol=0)
    assert float((fast[~big] - literal[~big]).abs().max()) <= cut
    assert int((~big).sum()) > 0 and bool((fast[~big] == 0).any())  # the case happens


class _Stacked(nn.Module):
    """The same FAENet without ``forward_frames``: Full FA then calls it on the stacked batch."""

    def __init__(self, model: FAENet) -> None:
        super().__init__()
        self.model = model

    @property
    def regress_forces(self) -> str:
        return self.model.regress_forces

    def forward(self, data):
        return self.model(data)


VARIANTS = [
    {"mp_type": "base", "skip_co": "concat", "energy_head": "weighted-av-final-embeds", "complex_mp": True},
    {"edge_embed_type": "sh", "mp_type": "updownscale_base"},
    {"edge_embed_type": "all", "second_layer_MLP": False, "energy_head": "weighted-av-initial-embeds"},
    {"edge_embed_type": "rij", "mp_type": "attention", "skip_co": "concat_atom"},
    {"mp_type": "simple", "num_filters": 32, "skip_co": "add"},
    {"max_num_neighbors": None, "graph_norm": False, "mp_type": "edge_filter"},
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("method", ["full", "se3-full"])
def test_forward_frames_equals_stacked_batch(variant, method):
    """Energies and final states of every frame, in eval and train mode, and parameter gradients."""
    torch.manual_seed(0)
    batch = Batch.from_data_list([_slab(1), _slab(2, n=9), _slab(3)])
    model = _tiny(**variant)
    fr = compute_frames(batch.pos, batch.batch, batch.num_graphs, 2, se3=method.startswith("se3"))
    pos_f, cell_f = project_all(batch.pos, batch.cell, batch.batch, fr)
    for training in (False, True):
        model.train(training)
        grads = {}
        outs = {}
        for name in ("frames", "stacked"):
            model.zero_grad()
            with torch.random.fork_rng():  # attention dropout is 0, but keep both calls on one RNG state
                if name == "frames":
                    energy, h = model.energy_and_states(batch, pos_f.reshape(-1, 3), cell_f)
                else:
                    stacked = stack_frames(batch, pos_f, cell_f)
                    energy, h = model.energy_and_states(stacked, stacked.pos)
            (energy.sum() + h.pow(2).sum()).backward()
            outs[name] = (energy.detach(), h.detach())
            grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        for a, b in zip(outs["frames"], outs["stacked"], strict=True):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), (a - b).abs().max()
        scale = float(grads["stacked"].abs().max())
        assert torch.allclose(grads["frames"], grads["stacked"], rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("regress", ["from_energy", "direct", "direct_with_gradient_target"])
@pytest.mark.parametrize("training", [False, True])
def test_full_fa_with_forward_frames_equals_stacked_call(regress, training):
    """Through the wrapper: averaged energies, back-rotated forces and gradient targets, parameter gradients
    (``from_energy`` forces in training mode go through a double backward)."""
    torch.manual_seed(0)
    batch = Batch.from_data_list([_slab(4), _slab(5, n=8)])
    model = _tiny(regress_forces=regress, force_decoder_norm="layer", mp_type="base").train(training)
    results = {}
    for name, inner in (("frames", model), ("stacked", _Stacked(model))):
        model.zero_grad()
        out = SymmetryWrapper(inner, "full", frame_dim=2).train(training)(batch.clone())
        loss = out["energy"].sum() + out["forces"].pow(2).sum()
        if training:
            loss.backward()
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        results[name] = ({k: v.detach() for k, v in out.items()}, torch.cat(grads) if grads else None)
    (out_a, g_a), (out_b, g_b) = results["frames"], results["stacked"]
    assert set(out_a) == set(out_b)
    for k in out_a:
        assert torch.allclose(out_a[k], out_b[k], rtol=1e-10, atol=1e-10), (k, (out_a[k] - out_b[k]).abs().max())
    if training:
        assert torch.allclose(g_a, g_b, rtol=1e-10, atol=1e-10 * float(g_b.abs().max()))


def test_forward_frames_inference_path_matches_autograd_path(monkeypatch):
    """No autograd (chunked edge embedding with frames, chunked Eq. (8)) == the autograd path."""
    torch.manual_seed(0)
    batch = Batch.from_data_list([_slab(6), _slab(7)])
    model = _tiny(mp_type="base").eval()
    wrapper = SymmetryWrapper(model, "full", frame_dim=2).eval()
    ref = wrapper(batch.clone())["energy"]
    monkeypatch.setattr(fm, "_CHUNK_ELEMENTS", 16 * 5)
    with torch.inference_mode():
        fast = wrapper(batch.clone())["energy"]
    assert torch.allclose(fast, ref, rtol=1e-12, atol=1e-12)
