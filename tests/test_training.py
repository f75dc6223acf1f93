"""faenet.training: exact losses on hand-computed cases, the warm-up/cosine schedule, and exact resume."""

import math

import pytest
import torch
from torch import nn
from torch_geometric.data import Data

from faenet.graph import edge_vectors, radius_graph
from faenet.training import Normalizer, TrainSettings, compute_loss, evaluate, lr_factor, mae_metrics, train


class PairModel(nn.Module):
    """Tiny invariant model: E = sum_i a[z_i] + sum_edges MLP(|r_ij|); forces either direct or -dE/dx."""

    def __init__(self, regress_forces: str = ""):
        super().__init__()
        self.regress_forces = regress_forces
        self.atom = nn.Embedding(100, 1)
        nn.init.zeros_(self.atom.weight)
        self.pair = nn.Sequential(nn.Linear(1, 16), nn.SiLU(), nn.Linear(16, 1))
        self.force_head = nn.Linear(3, 3)

    def forward(self, data):
        pos = data.pos
        if self.regress_forces == "from_energy":
            pos.requires_grad_(True)
        d = edge_vectors(pos, data.edge_index, data.cell_offsets, data.cell, data.batch).norm(dim=-1, keepdim=True)
        e_atom = self.atom(data.atomic_numbers).squeeze(-1)
        e_edge = self.pair(d).squeeze(-1)
        e_node = e_atom.index_add(0, data.edge_index[1], e_edge)
        energy = torch.zeros(data.num_graphs, dtype=pos.dtype).index_add(0, data.batch, e_node)
        out = {"energy": energy}
        if self.regress_forces == "from_energy":
            out["forces"] = -torch.autograd.grad(energy.sum(), pos, create_graph=self.training)[0]
        elif self.regress_forces:
            out["forces"] = self.force_head(pos)
        return out


def _records(n: int, seed: int, forces: bool = False) -> list[Data]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        na = 4 + k % 3
        pos = torch.randn(na, 3, generator=g) * 1.2
        ei, off = radius_graph(pos, 5.0, 10)
        z = torch.randint(1, 9, (na,), generator=g)
        d = torch.cdist(pos, pos)
        y = float(z.float().sum() * 0.1 + torch.exp(-d[d > 0]).sum())
        rec = Data(pos=pos, atomic_numbers=z, natoms=na, tags=torch.full((na,), -1),
                   fixed=torch.zeros(na, dtype=torch.long),
                   cell=torch.zeros(1, 3, 3), pbc=torch.zeros(1, 3, dtype=torch.bool), edge_index=ei,
                   cell_offsets=off, y=y)
        if forces:
            rec.force = torch.randn(na, 3, generator=g)
        out.append(rec)
    return out


def test_loss_matches_hand_computation_with_energy_gradient_term():
    from torch_geometric.data import Batch

    batch = Batch.from_data_list(_records(2, 0, forces=True))
    batch.fixed[0] = 1  # a fixed atom is excluded from the force terms
    n = batch.num_nodes
    out = {"energy": torch.tensor([1.0, 2.0]), "forces": torch.ones(n, 3),
           "forces_grad_target": torch.zeros(n, 3)}
    s = TrainSettings(energy_coef=2.0, force_coef=3.0, energy_grad_coef=5.0, loss="mae")
    norm = Normalizer(mean=1.0, std=2.0)
    loss, parts = compute_loss(out, batch, s, norm, needs_forces=True)
    y = (batch.y - 1.0) / 2.0
    e = ((torch.tensor([1.0, 2.0]) - y).abs()).mean()
    free = batch.fixed == 0
    f = (torch.ones(n, 3)[free] - batch.force[free] / 2.0).abs().sum(-1).mean()
    eg = torch.tensor(3.0)  # |1 - 0| summed over 3 components, each free atom
    assert math.isclose(float(loss), float(2 * e + 3 * f + 5 * eg), rel_tol=1e-6)
    assert math.isclose(parts["loss_energy_grad"], 3.0, rel_tol=1e-6)


def test_warmup_then_cosine_schedule():
    s = TrainSettings(warmup_steps=10, warmup_factor=0.2, scheduler="cosine")
    assert lr_factor(0, s, 110) == pytest.approx(0.2)
    assert lr_factor(5, s, 110) == pytest.approx(0.6)
    assert lr_factor(10, s, 110) == pytest.approx(1.0)
    assert lr_factor(60, s, 110) == pytest.approx(0.5)
    assert lr_factor(110, s, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(50, TrainSettings(scheduler="plateau"), 100) == 1.0


def test_training_learns_and_resume_after_kill_gives_identical_results(tmp_path):
    train_set, val_set = _records(24, 1), _records(8, 2)
    s = TrainSettings(epochs=12, batch_size=4, lr=3e-2, scheduler="cosine", warmup_steps=2, seed=3)

    def run(ckpt, stop=None):
        torch.manual_seed(0)
        model = PairModel()
        res = train(model, train_set, {"val_id": val_set}, s, False, checkpoint_path=ckpt, progress=False,
                    stop_after_epoch=stop)
        return model, res

    model_a, res_a = run(tmp_path / "a" / "last.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b" / "last.pt", stop=5)
    model_b, res_b = run(tmp_path / "b" / "last.pt")
    assert res_b.resumed_from_epoch == 5
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert res_a.final_val == res_b.final_val
    # it learned something: val MAE below that of predicting the training mean
    ys = torch.tensor([r.y for r in val_set])
    baseline = float((ys - torch.tensor([r.y for r in train_set]).mean()).abs().mean())
    assert res_a.final_val["val_id"]["energy_mae"] < baseline


def test_resume_refuses_checkpoint_from_other_settings(tmp_path):
    data = _records(6, 1)
    ckpt = tmp_path / "last.pt"
    train(PairModel(), data, {}, TrainSettings(epochs=1, batch_size=3), False, checkpoint_path=ckpt, progress=False)
    with pytest.raises(ValueError, match="other training settings"):
        train(PairModel(), data, {}, TrainSettings(epochs=2, batch_size=3), False, checkpoint_path=ckpt,
              progress=False)


def test_conservative_forces_evaluated_in_eval_mode():
    data = _records(4, 5, forces=True)
    m = PairModel("from_energy")
    res = evaluate(m, data, 2, Normalizer(), needs_forces=True)
    assert set(res) == {"energy_mae", "energy_ewt", "force_mae"} and all(math.isfinite(v) for v in res.values())


def test_mae_and_ewt_on_hand_computed_errors():
    # errors 0.01, 0.03, 0.005, 0.5 eV: MAE 0.13625, EwT (|error| < 0.02 eV) 2 of 4
    pred = {"energy": torch.tensor([1.01, 2.03, -0.005, 0.5]), "y": torch.tensor([1.0, 2.0, 0.0, 0.0])}
    m = mae_metrics(pred)
    assert m["energy_mae"] == pytest.approx(0.13625, abs=1e-6) and m["energy_ewt"] == 0.5


def test_zero_force_reference_on_hand_computed_forces():
    # Free atoms 0 and 2 (atom 1 fixed, its 9 eV/Å ignored): |F| components 1,2,3 and 0,0.5,1.5 -> mean 8/6.
    pred = {"energy": torch.zeros(1), "y": torch.zeros(1), "forces": torch.zeros(3, 3),
            "force": torch.tensor([[1.0, -2.0, 3.0], [9.0, 9.0, 9.0], [0.0, 0.5, -1.5]]),
            "free": torch.tensor([True, False, True])}
    assert "zero_force_mae" not in mae_metrics(pred)
    m = mae_metrics(pred, zero_reference=True)
    assert m["zero_force_mae"] == pytest.approx(8.0 / 6) and m["force_mae"] == m["zero_force_mae"]  # F = 0 here
    data = _records(4, 5, forces=True)
    res = evaluate(PairModel("from_energy"), data, 2, Normalizer(), needs_forces=True, zero_reference=True)
    assert res["zero_force_mae"] == pytest.approx(float(torch.cat([r.force for r in data]).abs().mean()))


def test_element_shift_normaliser_removes_composition_energy():
    # E = 3 eV per H + 10 eV per C exactly: the least-squares shifts recover them, residuals are 0.
    from torch_geometric.data import Batch, Data

    recs = []
    for n_h, n_c in ((1, 1), (2, 1), (4, 2), (0, 3)):
        z = torch.tensor([1] * n_h + [6] * n_c)
        recs.append(Data(atomic_numbers=z, y=3.0 * n_h + 10.0 * n_c, pos=torch.zeros(len(z), 3)))
    norm = Normalizer.fit(recs, enabled=True, element_shift=True)
    assert norm.element_shift[1] == pytest.approx(3.0, abs=1e-9) and norm.element_shift[6] == pytest.approx(10.0)
    assert norm.std == 1.0  # residuals vanish: no rescaling
    batch = Batch.from_data_list(recs)
    y = torch.tensor([r.y for r in recs], dtype=torch.float64)
    assert torch.allclose(norm.normalize(y, batch), torch.zeros(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(norm.denormalize(torch.zeros(4, dtype=torch.float64), batch), y)


def test_empty_training_set_is_a_clear_error():
    with pytest.raises(ValueError, match="training set is empty"):
        train(PairModel(), [], {}, TrainSettings(), False, progress=False)
