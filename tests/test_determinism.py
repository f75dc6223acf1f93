"""Reproducibility as the README promises it: the same seed gives bit-identical weights and metrics for every
registered model (FAENet under each symmetry method, SchNet, DimeNet++, ForceNet), energy-only and with
forces, on 2 CPU threads (multi-threaded float reductions are where run-to-run differences come from); a
killed and resumed ForceNet run equals an uninterrupted one.

The data are small periodic slabs (2x2x2 fcc(111) + adsorbate, 9 atoms, ~300 edges each), enough edges per
batch that ForceNet's per-edge tensors (E x hidden) reach the size where PyTorch's CPU kernels go parallel.
"""

import os

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111
from torch_geometric.data import Batch, Data

from baselines import build_model, get_presets
from faenet.graph import radius_graph
from faenet.symmetry import SymmetryWrapper
from faenet.training import TrainSettings, train

# Smoke-profile sizes (params.yaml), shrunk where it does not change the code path.
HPARAMS = {
    "faenet": {"hidden_channels": 48, "num_filters": 32, "num_interactions": 2, "num_gaussians": 16,
               "tag_hidden_channels": 8, "pg_hidden_channels": 8, "cutoff": 6.0},
    "schnet": get_presets("schnet")["small"],
    "dimenet_pp": {**get_presets("dimenet_pp")["small"], "num_spherical": 3},
    "forcenet": get_presets("forcenet")["small"],
}
# (model, symmetry method, regress_forces): every symmetry method of the train cells (with direct forces, whose
# loss includes the energy one), and every force mode each model supports.
CASES = [
    ("faenet", "none", ""), ("faenet", "none", "from_energy"), ("faenet", "sfa", "direct_with_gradient_target"),
    *[("faenet", sym, "direct") for sym in ("none", "sfa", "full", "da", "se3-sfa")],
    ("schnet", "none", ""), ("schnet", "none", "from_energy"),
    ("dimenet_pp", "none", ""), ("dimenet_pp", "none", "from_energy"),
    ("forcenet", "none", ""), ("forcenet", "none", "direct"), ("forcenet", "none", "from_energy"),
    ("forcenet", "sfa", ""), ("forcenet", "da", "direct"),
]
# One step of the 4 training graphs (~1300 edges: ForceNet's E x 32 per-edge tensors are above the 32768
# elements where CPU kernels split work between threads), then an evaluation.
SETTINGS = TrainSettings(epochs=1, batch_size=4, lr=2e-3, seed=7)


def _slab(k: int) -> Data:
    """A 9-atom periodic slab record with OC20 tags (0 subsurface, 1 surface, 2 adsorbate), energy and forces."""
    metal, ads = [("Cu", "O"), ("Pt", "H"), ("Cu", "N"), ("Pt", "O"), ("Ag", "H"), ("Ag", "O")][k % 6]
    atoms = fcc111(metal, (2, 2, 2), vacuum=5.0)
    add_adsorbate(atoms, ads, 1.7, "fcc")
    rng = np.random.default_rng(k)
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    ase_tags = atoms.get_tags()  # ASE: 0 adsorbate, 1 top layer, 2 the layer below
    tags = np.select([ase_tags == 0, ase_tags == 1], [2, 1], 0)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    ei, off = radius_graph(pos, 6.0, 50, cell, (True, True, False))
    n = len(atoms)
    return Data(pos=pos.float(), atomic_numbers=torch.tensor(atoms.numbers), natoms=n,
                tags=torch.tensor(tags), fixed=torch.tensor((tags == 0).astype(np.int64)),
                cell=cell.float()[None], pbc=torch.tensor(atoms.pbc)[None], edge_index=ei, cell_offsets=off,
                y=float(rng.normal()), force=torch.tensor(rng.normal(0, 0.3, (n, 3)), dtype=torch.float32))


TRAIN = [_slab(k) for k in range(4)]
VAL = [_slab(k) for k in range(4, 6)]


@pytest.fixture(scope="module")
def two_threads():
    """Two intra-op threads where the machine has them: the multi-threaded CPU kernels are the ones whose
    summation order can depend on thread timing."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


def _build(name: str, symmetry: str, mode: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)  # as pipeline.runs.build_wrapped: the seed fixes the initial weights
    net = build_model(name, **{**HPARAMS[name], "regress_forces": mode})
    return net, SymmetryWrapper(net, symmetry, frame_dim=3)


def _train(name: str, symmetry: str, mode: str, settings: TrainSettings = SETTINGS, **kw):
    net, wrapped = _build(name, symmetry, mode)
    s = TrainSettings(**{**settings.__dict__, "force_coef": 1.0 if mode else 0.0,
                         "energy_grad_coef": 0.5 if mode == "direct_with_gradient_target" else 0.0})
    res = train(wrapped, TRAIN, {"val": VAL}, s, bool(mode), progress=False, **kw)
    return net, res


def _metrics(res) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in res.history]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), f"parameter {name} differs by up to {float((pa - pb).detach().abs().max()):.3g}"


@pytest.mark.parametrize(("name", "symmetry", "mode"), CASES,
                         ids=lambda v: v or "energy")
def test_same_seed_gives_bit_identical_training(two_threads, name, symmetry, mode):
    net_a, res_a = _train(name, symmetry, mode)
    net_b, res_b = _train(name, symmetry, mode)
    assert res_a.history[0]["train_loss"] > 0  # it did train
    _assert_same_weights(net_a, net_b)
    assert _metrics(res_a) == _metrics(res_b)


def test_forcenet_resume_after_kill_equals_uninterrupted_run(two_threads, tmp_path):
    s = TrainSettings(**{**SETTINGS.__dict__, "epochs": 2})
    net_a, res_a = _train("forcenet", "none", "direct", s, checkpoint_path=tmp_path / "a" / "last.pt")
    with pytest.raises(KeyboardInterrupt):
        _train("forcenet", "none", "direct", s, checkpoint_path=tmp_path / "b" / "last.pt", stop_after_epoch=1)
    net_b, res_b = _train("forcenet", "none", "direct", s, checkpoint_path=tmp_path / "b" / "last.pt")
    assert res_b.resumed_from_epoch == 1
    _assert_same_weights(net_a, net_b)
    assert _metrics(res_a) == _metrics(res_b)


def _autograd_ops(*outputs: torch.Tensor) -> set[str]:
    seen, stack = set(), [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


@pytest.mark.parametrize(("name", "mode"), [
    ("forcenet", ""), ("forcenet", "direct"), ("forcenet", "from_energy"), ("schnet", "from_energy"),
    ("faenet", "direct"), ("faenet", "from_energy"), ("dimenet_pp", ""), ("dimenet_pp", "from_energy"),
], ids=lambda v: v or "energy")
def test_no_atomic_accumulating_index_backward(name, mode):
    """Advanced indexing with grad (``h[j]``) backpropagates through ``index_put_(accumulate=True)``, which on
    multi-threaded CPU adds with float atomics in thread-timing order (ForceNet's old non-determinism). Whether a
    race shows in a given run is luck; the autograd graph says for sure. ``from_energy`` forces are themselves a
    backward pass (``faenet.graph.edge_vectors``), so their graph is checked too.
    """
    net, _ = _build(name, "none", mode)
    out = net.train()(Batch.from_data_list(TRAIN[:2]))
    ops = _autograd_ops(*out.values())
    assert "IndexSelectBackward0" in ops  # the walk reached the per-edge gathers
    assert not ops & {"IndexBackward0", "IndexPutBackward0", "IndexPutImplBackward0"}, sorted(ops)
