"""faenet.model: every switch runs with the right shapes, the fused Eq. (8) equals the literal one,
predictions do not depend on batch mates, -dE/dpos matches finite differences, Table 7 presets build."""

import contextlib
import itertools
import math

import pytest
import torch
from torch_geometric.data import Batch, Data

from faenet.graph import radius_graph
from faenet.model import (
    EDGE_EMBED_TYPES,
    ENERGY_HEADS,
    FORCE_DECODER_NORMS,
    FORCE_DECODER_TYPES,
    MP_TYPES,
    SKIP_CO,
    TABLE6_ABLATIONS,
    FAENet,
    real_spherical_harmonics,
    table6_hparams,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _molecule(seed: int, n: int = 5, dtype=torch.float64) -> Data:
    g = torch.Generator().manual_seed(seed)
    pos = (torch.randn(n, 3, generator=g) * 1.3).to(dtype)
    ei, off = radius_graph(pos, 4.0, 20)
    return Data(pos=pos, atomic_numbers=torch.randint(1, 10, (n,), generator=g), natoms=n,
                tags=torch.full((n,), -1), fixed=torch.zeros(n, dtype=torch.long),
                cell=torch.zeros(1, 3, 3, dtype=dtype),
                pbc=torch.zeros(1, 3, dtype=torch.bool), edge_index=ei, cell_offsets=off, y=0.0)


def _crystal(seed: int, dtype=torch.float64) -> Data:
    """A 4-atom periodic slab-like cell (x, y periodic) with adsorbate-like tags."""
    g = torch.Generator().manual_seed(seed)
    cell = torch.tensor([[3.0, 0.0, 0.0], [0.8, 3.2, 0.0], [0.0, 0.0, 12.0]], dtype=dtype)
    frac = torch.tensor([[0.0, 0.0, 0.1], [0.5, 0.5, 0.1], [0.25, 0.3, 0.25], [0.6, 0.1, 0.35]], dtype=dtype)
    pos = frac @ cell + 0.1 * torch.randn(4, 3, generator=g, dtype=dtype)
    ei, off = radius_graph(pos, 4.0, 30, cell, (True, True, False))
    return Data(pos=pos, atomic_numbers=torch.tensor([29, 78, 8, 6]), natoms=4,
                tags=torch.tensor([0, 1, 2, 2]),
                fixed=torch.tensor([1, 0, 0, 0]), cell=cell[None], pbc=torch.tensor([[True, True, False]]),
                edge_index=ei, cell_offsets=off, y=0.0)


def _tiny(**kw) -> FAENet:
    args = dict(hidden_channels=32, num_filters=16, num_gaussians=8, num_interactions=2,
                tag_hidden_channels=4, pg_hidden_channels=3, cutoff=4.0, force_decoder_hidden_channels=8)
    args.update(kw)
    return FAENet(**args)


@pytest.fixture(scope="module")
def batch64():
    return Batch.from_data_list([_molecule(0), _crystal(1), _molecule(2, n=7), _crystal(3)])


def _check_shapes(model: FAENet, batch: Batch) -> dict:
    out = model(batch.clone())
    assert out["energy"].shape == (batch.num_graphs,)
    assert torch.isfinite(out["energy"]).all()
    if model.regress_forces:
        assert out["forces"].shape == (batch.num_nodes, 3)
        assert torch.isfinite(out["forces"]).all()
    else:
        assert "forces" not in out
    return out


@pytest.mark.parametrize("mp_type,skip_co,energy_head",
                         list(itertools.product(MP_TYPES, SKIP_CO, ENERGY_HEADS)))
def test_shapes_message_passing_and_heads(batch64, mp_type, skip_co, energy_head):
    torch.manual_seed(0)
    nf = 32 if mp_type == "simple" else 16  # "simple" multiplies h_j by e_ij: F must equal H
    model = _tiny(mp_type=mp_type, skip_co=skip_co, energy_head=energy_head, num_filters=nf).double()
    _check_shapes(model.eval(), batch64)


@pytest.mark.parametrize("edge_embed_type,second_layer,graph_norm,complex_mp",
                         list(itertools.product(EDGE_EMBED_TYPES, *[[True, False]] * 3)))
def test_shapes_embeddings_and_block_switches(batch64, edge_embed_type, second_layer, graph_norm, complex_mp):
    torch.manual_seed(0)
    model = _tiny(edge_embed_type=edge_embed_type, second_layer_MLP=second_layer, graph_norm=graph_norm,
                  complex_mp=complex_mp, phys_embeds=second_layer,
                  phys_hidden_channels=3 * complex_mp).double()
    _check_shapes(model.eval(), batch64)


@pytest.mark.parametrize("regress,decoder,norm", [("from_energy", "mlp", "batch1d")] + list(
    itertools.product(["direct", "direct_with_gradient_target"], FORCE_DECODER_TYPES, FORCE_DECODER_NORMS)))
def test_force_heads_shapes_and_gradient_target(batch64, regress, decoder, norm):
    torch.manual_seed(0)
    model = _tiny(regress_forces=regress, force_decoder_type=decoder, force_decoder_norm=norm).double()
    assert model.regress_forces == regress
    out = _check_shapes(model.train(), batch64)
    if regress == "direct_with_gradient_target":
        target = out["forces_grad_target"]
        assert target.shape == (batch64.num_nodes, 3) and not target.requires_grad
        # the target is -dE/dpos, and the energy graph is still usable for the loss afterwards
        b = batch64.clone()
        b.pos.requires_grad_(True)
        energy = model(b)["energy"]
        (grad,) = torch.autograd.grad(energy.sum(), b.pos, retain_graph=True)
        assert torch.allclose(target, -grad, atol=1e-12)
        (out["energy"].sum() + out["forces"].sum()).backward()
    else:
        assert "forces_grad_target" not in out
    assert "forces_grad_target" not in _check_shapes(model.eval(), batch64)


@pytest.mark.parametrize("mp_type", ["base", "updownscale_base"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_fused_interaction_equals_literal_concatenation(mp_type, dtype, tol):
    """Eq. (8): W[e||h_j||h_i] split per node gives the same energies, forces and parameter gradients."""
    torch.manual_seed(0)
    batch = Batch.from_data_list([_crystal(5, dtype), _molecule(6, n=8, dtype=dtype), _crystal(7, dtype)])
    model = _tiny(mp_type=mp_type, regress_forces="from_energy", num_interactions=3).to(dtype).train()
    results = {}
    for fused in (True, False):
        model.fused = fused
        model.zero_grad()
        out = model(batch.clone())
        (out["energy"].sum() + out["forces"].pow(2).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        with torch.no_grad():  # the chunked inference path
            model.eval()
            inference = model(batch.clone())["energy"]
            model.train()
        results[fused] = (out["energy"].detach(), out["forces"].detach(), grads, inference)
    names = ("energy", "forces", "grads", "inference")
    for name, a, b in zip(names, results[True], results[False], strict=True):
        # parameter gradients go through a double backward: compare them relative to their largest entry
        atol = tol * (float(b.abs().max()) if name == "grads" else 1.0)
        assert torch.allclose(a, b, rtol=tol, atol=atol), (name, (a - b).abs().max(), b.abs().max())
    assert torch.allclose(results[True][3], results[True][0], rtol=tol, atol=tol)


def test_inference_path_handles_many_chunks(monkeypatch):
    import faenet.inference as fm

    torch.manual_seed(0)
    batch = Batch.from_data_list([_crystal(1), _crystal(2)])
    model = _tiny().double().eval()
    with torch.no_grad():
        ref = model(batch.clone())["energy"]
        monkeypatch.setattr(fm, "_CHUNK_ELEMENTS", 16 * 7)  # 7 edges per chunk
        assert torch.allclose(model(batch.clone())["energy"], ref, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"skip_co": "concat_atom", "energy_head": "weighted-av-initial-embeds"},
                                {"mp_type": "attention"},
                                {"regress_forces": "direct", "force_decoder_norm": "layer"},
                                {"mp_type": "base", "inference": True}])
def test_prediction_independent_of_batch_mates(kw):
    """Per-graph GraphNorm: a graph's energy alone equals its energy in any batch, and copies agree."""
    torch.manual_seed(0)
    kw = dict(kw)
    with torch.no_grad() if kw.pop("inference", False) else contextlib.nullcontext():  # chunked path
        _check_batch_independence(_tiny(**kw).double().eval())


def _check_batch_independence(model: FAENet) -> None:
    graphs = [_crystal(1), _molecule(2, n=6), _crystal(3), _molecule(4, n=9)]
    alone = [model(Batch.from_data_list([g]))["energy"] for g in graphs]
    together = model(Batch.from_data_list(graphs))["energy"]
    assert torch.allclose(torch.cat(alone), together, rtol=1e-10, atol=1e-10)
    stacked = model(Batch.from_data_list([graphs[0]] * 3 + [graphs[1]] * 2))["energy"]
    assert torch.allclose(stacked[:3], alone[0].expand(3), rtol=1e-12, atol=1e-12)
    assert torch.allclose(stacked[3:], alone[1].expand(2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("graph", ["crystal", "molecule"])
def test_from_energy_forces_match_finite_differences(graph):
    torch.manual_seed(0)
    model = _tiny(regress_forces="from_energy", mp_type="base", skip_co="concat",
                  energy_head="weighted-av-final-embeds").double().eval()
    data = _crystal(3) if graph == "crystal" else _molecule(8, n=6)
    batch = Batch.from_data_list([data])
    forces = model(batch.clone())["forces"]
    eps, fd = 1e-5, torch.zeros_like(forces)
    with torch.no_grad():
        for a, k in itertools.product(range(batch.num_nodes), range(3)):
            plus, minus = batch.clone(), batch.clone()
            plus.pos[a, k] += eps
            minus.pos[a, k] -= eps
            model.regress_forces = ""
            fd[a, k] = -(model(plus)["energy"] - model(minus)["energy"]).item() / (2 * eps)
            model.regress_forces = "from_energy"
    assert torch.allclose(forces, fd, atol=1e-7, rtol=1e-6), (forces - fd).abs().max()


def test_translation_invariance_and_periodic_image_shift():
    torch.manual_seed(0)
    model = _tiny(regress_forces="from_energy").double().eval()
    data = _crystal(4)
    e0 = model(Batch.from_data_list([data]))
    moved = data.clone()
    moved.pos = moved.pos + torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    e1 = model(Batch.from_data_list([moved]))
    assert torch.allclose(e0["energy"], e1["energy"], atol=1e-12)
    assert torch.allclose(e0["forces"], e1["forces"], atol=1e-12)


def test_model_cutoff_and_neighbour_limit_match_a_smaller_graph():
    """Edges beyond the model cutoff or max_num_neighbors are dropped as if the graph were smaller."""
    torch.manual_seed(0)
    big = _crystal(2)
    small = big.clone()
    small.edge_index, small.cell_offsets = radius_graph(big.pos, 3.0, 5, big.cell[0], (True, True, False))
    assert small.edge_index.shape[1] < big.edge_index.shape[1]
    model = _tiny(cutoff=3.0, max_num_neighbors=5).double().eval()
    e_big = model(Batch.from_data_list([big]))["energy"]
    e_small = model(Batch.from_data_list([small]))["energy"]
    assert torch.allclose(e_big, e_small, atol=1e-12)


def test_spherical_harmonics_component_normalisation():
    v = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    sh = real_spherical_harmonics(v, 3)
    assert sh.shape == (50, 15)
    for lo, hi, deg in [(0, 3, 1), (3, 8, 2), (8, 15, 3)]:
        norm2 = sh[:, lo:hi].pow(2).sum(-1)
        assert torch.allclose(norm2, torch.full((50,), 2.0 * deg + 1, dtype=torch.float64))
    # orthogonality on the sphere (Monte Carlo): the Gram matrix is close to the identity
    u = torch.nn.functional.normalize(torch.randn(200_000, 3, dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(0)), dim=-1)
    y = real_spherical_harmonics(u, 3)
    gram = y.T @ y / y.shape[0]
    assert torch.allclose(gram, torch.eye(15, dtype=torch.float64), atol=0.03)


def test_bad_arguments_raise_value_error():
    for kw, match in [({"mp_type": "gat"}, "mp_type"), ({"skip_co": True}, "skip_co"),
                      ({"energy_head": "mean"}, "energy_head"),
                      ({"regress_forces": "grad"}, "regress_forces"),
                      ({"edge_embed_type": "x"}, "edge_embed_type"), ({"mp_type": "simple"}, "num_filters"),
                      ({"hidden_channels": 20}, "hidden_channels"), ({"cutoff": 0.0}, "cutoff"),
                      ({"regress_forces": "direct", "force_decoder_type": "big"}, "force_decoder_type"),
                      ({"sh_lmax": 4, "edge_embed_type": "sh"}, "sh_lmax")]:
        with pytest.raises(ValueError, match=match):
            _tiny(**kw)
    with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode():
        _tiny(regress_forces="from_energy")(Batch.from_data_list([_molecule(0, dtype=torch.float32)]))


def test_molecules_without_tags_need_tag_channels_off():
    data = _molecule(1, dtype=torch.float32)
    del data.tags
    with pytest.raises(ValueError, match="tags"):
        _tiny()(Batch.from_data_list([data]))
    assert _tiny(tag_hidden_channels=0)(Batch.from_data_list([data]))["energy"].shape == (1,)


def _table7() -> dict[str, dict]:
    """The paper's Table 7 FAENet hyperparameters of each task: params.yaml ``profiles.paper.hparams.faenet``
    (with the task's force mode), as the resolver gives them."""
    from faenet.tasks import TASKS
    from pipeline.config import load_params
    from pipeline.resolve import resolve_cell

    params = load_params()
    return {t: resolve_cell(params, "faenet", t, "sfa", profile="paper").hparams for t in TASKS}


def test_table6_ablations_and_table7_presets_build():
    table7 = _table7()
    for name, change in TABLE6_ABLATIONS.items():
        kw = {**table7["is2re"], "hidden_channels": 48, "num_filters": 48, "tag_hidden_channels": 4,
              "pg_hidden_channels": 4, "num_gaussians": 10, **change}
        out = FAENet(**kw).eval()(Batch.from_data_list([_crystal(0, torch.float32)]))
        assert out["energy"].shape == (1,), name
    sizes = {}
    for task, hp in table7.items():
        model = FAENet(**hp)
        sizes[task] = model.num_parameters()
        assert model.regress_forces == hp["regress_forces"]
        assert model.cutoff == hp["cutoff"] and len(model.interactions) == hp["num_interactions"]
    assert all(1e6 < n < 2e7 for n in sizes.values()), sizes
    # the paper's IS2RE model runs on a periodic slab; the QM9 one on a molecule
    with torch.no_grad():
        is2re = FAENet(**table7["is2re"]).eval()
        assert is2re(Batch.from_data_list([_crystal(1, torch.float32)]))["energy"].shape == (1,)
        qm9 = FAENet(**table7["qm9"]).eval()
        assert qm9(Batch.from_data_list([_molecule(2, dtype=torch.float32)]))["energy"].shape == (1,)
    assert math.isclose(table7["qm7x"]["cutoff"], 5.0)
    assert table7["s2ef"]["regress_forces"] == "direct_with_gradient_target" and table7["is2re"]["mp_type"] == "base"


def test_table6_hparams_apply_switches_and_the_basic_mp_width():
    base = {"hidden_channels": 40, "num_filters": 24, "mp_type": "base", "num_gaussians": 8, "cutoff": 4.0,
            "tag_hidden_channels": 4, "pg_hidden_channels": 4, "num_interactions": 1}
    assert table6_hparams(base, "FAENet (baseline)") == base
    assert table6_hparams(base, "Only r_ij") == {**base, "edge_embed_type": "rij"}
    basic = table6_hparams(base, "Basic MP")
    assert basic["mp_type"] == "simple" and basic["num_filters"] == 40  # h_j * e_ij needs F = H
    FAENet(**basic).eval()(Batch.from_data_list([_crystal(0, torch.float32)]))
    assert base["num_filters"] == 24  # the base is not modified
    with pytest.raises(ValueError, match="Table 6 row"):
        table6_hparams(base, "Only rij")


def test_throughput_helper_reports_timings_and_restores_mode():
    from faenet.throughput import measure_forward_throughput

    model = _tiny().train()
    batches = [Batch.from_data_list([_crystal(k, torch.float32), _molecule(k, dtype=torch.float32)])
               for k in range(2)]
    res = measure_forward_throughput(model, batches, warmup=1, repeats=3)
    assert model.training  # restored
    assert res["num_samples"] == 4 and res["num_batches"] == 2 and len(res["times_s"]) == 3
    assert res["samples_per_s"] > 0 and res["torch_num_threads"] == torch.get_num_threads()
    assert res["grad_mode"] == "inference_mode"
    grad_res = measure_forward_throughput(_tiny(regress_forces="from_energy"), batches, warmup=0, repeats=1)
    assert grad_res["grad_mode"] == "autograd"
    with pytest.raises(ValueError, match="empty"):
        measure_forward_throughput(model, [])


def test_neighbour_limit_is_the_same_in_every_frame_of_a_symmetric_crystal():
    """fcc slabs have many equidistant neighbours; a rotated frame must keep the same edges."""
    from ase.build import fcc111

    from faenet.graph import edge_vectors
    from faenet.model import _limit_neighbors

    slab = fcc111("Cu", (3, 3, 3), vacuum=6.0)
    pos = torch.tensor(slab.positions, dtype=torch.float32)
    cell = torch.tensor(slab.cell.array, dtype=torch.float32)
    ei, off = radius_graph(pos, 6.0, 100, cell, (True, True, False))
    batch = torch.zeros(len(pos), dtype=torch.long)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    kept = []
    for p, c in [(pos, cell), (pos @ q, cell @ q)]:
        dist = edge_vectors(p, ei, off, c[None], batch).norm(dim=-1)
        kept.append(_limit_neighbors(ei[1], dist, len(pos), 10))
    assert kept[0] is not None and torch.equal(kept[0], kept[1])
    assert int(torch.bincount(ei[1, kept[0]]).max()) == 10
